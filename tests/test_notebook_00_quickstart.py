"""Notebook 00_quickstart.ipynb runs headless in a Jupyter kernel (nbclient), as a user's Jupyter would."""

from notebook_run import execute


def test_quickstart_notebook_executes(tmp_path):
    nb = execute("00_quickstart.ipynb", tmp_path)
    html = [o for c in nb.cells for o in c.get("outputs", []) if "text/html" in o.get("data", {})]
    assert html, "the circuitsvis attention pattern should render as HTML"
