"""Notebook 02_safety_heads.ipynb runs headless with its test parameters (``notebook_run.SMOKE``)."""
import json

import pytest

from notebook_run import execute


def test_safety_heads_notebook_executes(tmp_path):
    """The quick setting made smaller (SMOKE), on Qwen2.5-Coder-0.5B: figures and numbers saved;
    the three outcome rates of the baseline add up to one; Sahara runs under UA and SC and grows one
    head per step; the Table-3 grid has the dataset-level SC row and the random-head control;
    estimates lie in their intervals."""
    execute("02_safety_heads.ipynb", tmp_path)
    out = tmp_path / "reports" / "notebooks" / "02_safety_heads"
    for name in ("grid.png", "outcomes.png", "perplexity.png", "sahara.png"):
        assert (out / name).stat().st_size > 1000, name
    numbers = json.loads((out / "numbers.json").read_text())
    fmt = numbers["meta"]["formats"][0]
    F = numbers["formats"][fmt]
    base = F["decodings"]["greedy"]["baseline"]
    assert sum(base[o][0] for o in ("refused", "complied", "degenerate")) == pytest.approx(1, abs=1e-6)
    assert set(F["groups"]) == {"ua", "sc"}
    assert [len(step["group"]) for step in F["sahara"]["ua"]] == [1, 2]
    grid = F["decodings"]["greedy"]["grid"]
    assert "dataset SC" in grid and "random UA (pooled draws)" in grid
    for row in numbers["headline"]:
        assert row["ci"] is None or row["ci"][0] <= row["ours"] <= row["ci"][1], row["name"]
