"""The notebooks execute headless (notebook 05 runs in the browser test, in JupyterLab), and the
main job's runner writes a report and the index."""
import json
from pathlib import Path

import nbformat
import pytest
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


def _execute(name: str, folder: Path, parameters: dict | None = None):
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


def test_quickstart_notebook_executes(tmp_path):
    nb = _execute("00_quickstart.ipynb", tmp_path)
    html = [o for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert html, "the circuitsvis attention pattern should render as HTML"


def test_ioi_circuit_reuse_notebook_executes(tmp_path):
    """Every cell runs: figures, circuit (valid interp.circuit/1) and numbers saved; the held-out
    faithfulness lies in its interval; verdicts are verdicts. (That the circuit beats random head
    sets is asserted on the quick setting in test_ioi_circuit.py.)"""
    from interp import graph

    _execute("01_ioi_circuit_reuse.ipynb", tmp_path)
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


@pytest.mark.xdist_group("test_browser.py")  # the browser test reads the same session fixture: one worker computes it
def test_quickstart_report_and_index(quickstart_report, monkeypatch):
    """The runner writes the page, its numbers (with the headline contract) and the index's summary
    table; a second run with the same key is served from the cache."""
    from interp.reports import runner

    path = quickstart_report
    numbers = json.loads((path.parent / "numbers.json").read_text())
    text = path.read_text()
    assert "smollm2-135m-instruct" in text and "<img" in text
    assert (path.parent / "patching_head_out.json").exists()
    (row,) = numbers["headline"]
    assert row["ci"][0] <= row["ours"] <= row["ci"][1] and row["n"] == 8
    assert numbers["meta"]["setting"] == "quick" and numbers["meta"]["wall_s"] > 0
    index = (path.parent.parent / "index.html").read_text()
    assert 'id="summary"' in index and "quickstart/report.html" in index and row["name"] in index
    monkeypatch.setattr("interp.reports.quickstart.run", lambda *a: pytest.fail("recomputed a cached analysis"))
    assert runner.reproduce("quickstart", path.parent.parent, "quick", progress=False) == path


def test_retrieval_heads_notebook_executes(tmp_path):
    """The quick setting made smaller (SMOKE): figures and numbers saved; the score bins are a
    distribution, masking gives recalls on the 0-100 scale for the top and the random heads, every
    headline row has an interval."""
    _execute("03_retrieval_heads.ipynb", tmp_path)
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


def test_correct_letter_notebook_executes(tmp_path):
    """The quick setting made smaller (SMOKE): held-out accuracy per slot, the rank curve with its
    floors, three random head sets per ablation, every headline estimate inside its interval."""
    _execute("04_correct_letter_heads.ipynb", tmp_path)
    out = tmp_path / "reports" / "notebooks" / "04_correct_letter_heads"
    for name in ("slots.png", "effects.png", "ablation.png", "rank.png", "mutations.png", "key_space.png"):
        assert (out / name).stat().st_size > 1000, name
    numbers = json.loads((out / "numbers.json").read_text())
    assert numbers["scores"]["accuracy"] > 0.25 and "64" in numbers["rank_curve"]
    assert {"0", "knocked out (zero)"} <= set(numbers["rank_curve"]["joint"])
    assert len(numbers["ablation"]["zero"]["random"]["uniform"]["accuracy"]) == 3
    assert set(numbers["scores"]["accuracy_by_slot"]) == {"0", "1", "2", "3"}
    for row in numbers["headline"]:
        assert row["ci"] is None or row["ci"][0] <= row["ours"] <= row["ci"][1], row["name"]


def test_safety_heads_notebook_executes(tmp_path):
    """The quick setting made smaller (SMOKE), on Qwen2.5-Coder-0.5B: figures and numbers saved;
    the three outcome rates of the baseline add up to one; Sahara runs under UA and SC and grows one
    head per step; the Table-3 grid has the dataset-level SC row and the random-head control;
    estimates lie in their intervals."""
    _execute("02_safety_heads.ipynb", tmp_path)
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


def test_edge_circuits_notebook_executes(tmp_path):
    """The edges into the logits on 2 prompts (SMOKE): the audit's statistics are in range, the exact
    circuit is a valid circuit file with edge scores, and cutting its strongest edge moves the logit
    difference by that edge's score."""
    from interp import graph

    _execute("06_edge_circuits.ipynb", tmp_path)
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
