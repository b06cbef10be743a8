"""Notebook 01_ioi_circuit_reuse.ipynb runs headless with its test parameters (``notebook_run.SMOKE``)."""
import json

from notebook_run import SMOKE, execute


def test_ioi_circuit_reuse_notebook_executes(tmp_path):
    """Every cell runs: figures, circuit (valid interp.circuit/1) and numbers saved; the held-out
    faithfulness lies in its interval; verdicts are verdicts. (That the circuit beats random head
    sets is asserted on the quick setting in test_ioi_circuit.py.)"""
    from interp import graph

    execute("01_ioi_circuit_reuse.ipynb", tmp_path)
    out = tmp_path / "reports" / "notebooks" / "01_ioi_circuit_reuse"
    for name in ("stages.png", "circuit.png", "heldout.png", "completeness.png", "minimality.png",
                 "reuse_smollm2-135m-instruct.png"):
        assert (out / name).stat().st_size > 1000, name
    circuit = graph.Circuit.load(out / "circuit.json")
    numbers = json.loads((out / "numbers.json").read_text())
    assert set(circuit.heads()) and numbers["model"] == circuit.model
    lo, hi = numbers["faithfulness_heldout_ci"]
    assert lo <= numbers["faithfulness_heldout"] <= hi
    assert len(numbers["random_sets_kept"]) == SMOKE["01_ioi_circuit_reuse.ipynb"]["OVERRIDES"]["n_random_sets"]
    for row in numbers["headline"] + numbers["reuse_headline"]:
        assert row["verdict"] in ("reproduced", "partly", "not", None), row["name"]
    reuse = numbers["reuse"]["smollm2-135m-instruct"]
    assert 0 <= reuse["overlap"] <= 1 and len(reuse["random_attend"]) == 3
