"""The quickstart notebook executes headless, and the main job's report is written."""
import json
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_quickstart_notebook_executes(tmp_path):
    nb = nbformat.read(ROOT / "notebooks" / "00_quickstart.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs must be stripped in git"
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    html = [o for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert html, "the circuitsvis attention pattern should render as HTML"


def test_quickstart_report(model, tmp_path):
    from interp.report import quickstart, write_index

    path = quickstart(out_dir=str(tmp_path), quick=True)
    numbers = json.loads((path.parent / "numbers.json").read_text())
    text = path.read_text()
    assert "smollm2-135m-instruct" in text and "<img" in text
    assert numbers and (path.parent / "patching_head_out.json").exists()
    index = write_index(tmp_path, {"quickstart": path})
    assert "quickstart/report.html" in index.read_text()
