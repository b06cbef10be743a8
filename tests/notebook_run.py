"""Running a notebook headless in a test: its papermill parameters injected, every cell run, no
error output. Each notebook's test is a file of its own (``test_notebook_NN_*.py``) so that the
two pytest-xdist workers share the notebooks out (``--dist loadfile``)."""
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


#: Each notebook runs its report's quick setting made smaller (the notebook parameter OVERRIDES):
#: these tests check that every cell runs and saves what it says; the analyses' properties are
#: tested on the quick settings in their own test files (test_ioi_circuit.py, test_safety_heads.py, ...).
SMOKE = {
    "01_ioi_circuit_reuse.ipynb": {"OVERRIDES": {"n_discover": 2, "n_eval": 8, "n_reference": 16, "n_random": 1,
                                                 "greedy": [1, 1, 1], "n_random_sets": 3},
                                   "REUSE_OVERRIDES": {"n_prompts": 1, "n_intervention": 8, "n_random": 3}},
    "02_safety_heads.ipynb": {"OVERRIDES": {"n_fit": 2, "n_eval": 2, "max_new": 6, "layer_step": 24, "pool": 2,
                                            "n_random": 1}},
    "03_retrieval_heads.ipynb": {"OVERRIDES": {"n_random": 1, "n_boot": 200}},
    "04_correct_letter_heads.ipynb": {"OVERRIDES": {"n_discover": 8, "n_eval": 8, "n_mutation": 4, "n_draws": 3}},
    "06_edge_circuits.ipynb": {"OVERRIDES": {"n_prompts": 2, "movers": 0, "shortlist": 20}},
}


def execute(name: str, folder: Path, parameters: dict | None = None):
    """Run the notebook headless; ``parameters`` go into a cell after its parameters cell (as papermill)."""
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs must be stripped in git"
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged, "needs a papermill parameters cell"
    parameters = SMOKE.get(name, {}) if parameters is None else parameters
    if parameters:
        for key in parameters:
            assert f"{key} = " in nb.cells[tagged[0]].source, f"{name} has no parameter {key}"
        nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items())))
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue")
    return nb
