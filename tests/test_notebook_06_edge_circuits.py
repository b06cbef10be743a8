"""Notebook 06_edge_circuits.ipynb runs headless with its test parameters (``notebook_run.SMOKE``)."""
import json

import pytest

from notebook_run import execute


def test_edge_circuits_notebook_executes(tmp_path):
    """The edges into the logits on 2 prompts (SMOKE): the audit's statistics are in range, the exact
    circuit is a valid circuit file with edge scores, and cutting its strongest edge moves the logit
    difference by that edge's score."""
    from interp import graph

    execute("06_edge_circuits.ipynb", tmp_path)
    out = tmp_path / "reports" / "notebooks" / "06_edge_circuits"
    for name in ("scatter.png", "curves.png"):
        assert (out / name).stat().st_size > 1000, name
    circuit = graph.Circuit.load(out / "circuit.json")
    scores = [e["score"] for e in circuit.edges]
    assert len(scores) == 30 and all(s is not None for s in scores)
    numbers = json.loads((out / "numbers.json").read_text())
    for a in numbers["cases"][0]["audits"].values():
        assert -1 <= a["spearman"] <= 1
    cut = numbers["cut"]
    assert cut["cut"] != pytest.approx(cut["clean"], abs=1e-3), "cutting the strongest edge changes the metric"
