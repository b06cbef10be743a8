"""Notebook 03_retrieval_heads.ipynb runs headless with its test parameters (``notebook_run.SMOKE``)."""
import json

from notebook_run import execute


def test_retrieval_heads_notebook_executes(tmp_path):
    """The quick setting made smaller (SMOKE): figures and numbers saved; the score bins are a
    distribution, masking gives recalls on the 0-100 scale for the top and the random heads, every
    headline row has an interval."""
    execute("03_retrieval_heads.ipynb", tmp_path)
    out = tmp_path / "reports" / "notebooks" / "03_retrieval_heads"
    for name in ("scores.png", "recall_k.png", "masking.png", "stability.png", "regions.png"):
        assert (out / name).stat().st_size > 1000, name
    numbers = json.loads((out / "numbers.json").read_text())
    assert abs(sum(numbers["bins"].values()) - 1) < 1e-6 and len(numbers["top10"]) == 10
    assert numbers["meta"]["n_episodes"] == 4
    for k in ("5", "50"):
        for side in ("top", "random"):
            assert all(0 <= x <= 100 for x in numbers["masking"]["k"][k][side]), (k, side)
    for row in numbers["headline"]:
        assert row["ci"] is None or row["ci"][0] <= row["ci"][1]
        assert row["verdict"] in ("reproduced", "partly", "not", None)
