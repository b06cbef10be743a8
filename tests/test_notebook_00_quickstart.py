"""Notebook 00_quickstart.ipynb runs every cell (in this process, on the session's model; the
Jupyter kernel path is the JupyterLab test's, tests/test_browser.py), and its attention view is
circuitsvis's self-contained HTML (its JavaScript inlined: no network)."""

from notebook_run import execute_in_process


def test_quickstart_notebook_executes(model, tmp_path, monkeypatch):
    ns = execute_in_process("00_quickstart.ipynb", tmp_path, {}, monkeypatch, {None: model})
    html = ns["vis"].local_src
    assert "<script" in html and "cdn" not in html.lower() and len(html) > 10_000
    assert ns["CLEAN"] > ns["CORRUPT"] and ns["patching"].values.shape[1] == model.cfg.n_heads
    assert abs(ns["dla"].total - ns["CLEAN"]) < 1e-3  # DLA's parts add up to the logit difference
