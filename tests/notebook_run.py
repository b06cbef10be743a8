"""Running a notebook headless in a test: its papermill parameters injected, every cell run, no
error output.

Two ways: ``execute`` runs it in a Jupyter kernel (nbclient), as a user's Jupyter would: the
quick-start notebook's test does. ``execute_in_process`` runs its cells in an IPython shell inside
the test process, with ``interp.load_model`` answering from the session's models and the reports'
``run`` shared with the analysis's own tests (``shared_runs``): the notebook's test then sits in the
analysis's test file and costs only what the notebook adds (its figures, tables and files). The
JupyterLab test (test_browser.py) covers the kernel, widgets and the browser.
"""
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def _read(name: str, parameters: dict):
    """The notebook with a cell setting ``parameters`` after its parameters cell (as papermill)."""
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "outputs must be stripped in git"
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert tagged, "needs a papermill parameters cell"
    if parameters:
        for key in parameters:
            assert f"{key} = " in nb.cells[tagged[0]].source, f"{name} has no parameter {key}"
        nb.cells.insert(tagged[0] + 1, nbformat.v4.new_code_cell("\n".join(f"{k} = {v!r}" for k, v in parameters.items())))
    return nb


def execute_in_process(name: str, folder: Path, parameters: dict, monkeypatch, models: dict, reports=()) -> dict:
    """Run every code cell of the notebook in an IPython shell in this process, from ``folder``;
    ``interp.load_model(key)`` gives ``models[key]`` (the session's; others load), and the
    ``reports`` run through ``shared_runs``. The process's state the notebooks change (grad mode,
    threads, figures, working directory, and ``sys.modules['__main__']``, which IPython's shell
    replaces with a module that multiprocessing's spawn cannot start workers from) is restored.
    Returns the notebook's namespace."""
    import sys

    import matplotlib
    import torch
    from IPython.core.interactiveshell import InteractiveShell

    import interp
    from shared_runs import share_runs

    matplotlib.use("Agg")
    load = interp.load_model
    monkeypatch.setattr(interp, "load_model", lambda key=None, *a, **kw: models[key] if key in models else load(key, *a, **kw))
    share_runs(monkeypatch, *reports)
    monkeypatch.chdir(folder)
    nb = _read(name, parameters)
    main = sys.modules["__main__"]
    shell = InteractiveShell.instance()
    shell.reset(new_session=False)
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    try:
        for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
            result = shell.run_cell(cell.source, store_history=False, silent=True)
            error = result.error_before_exec or result.error_in_exec
            assert error is None, f"{name}, code cell {i}: {type(error).__name__}: {error}"
        return dict(shell.user_ns)
    finally:
        import matplotlib.pyplot as plt

        plt.close("all")
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
        shell.reset(new_session=False)
        sys.modules["__main__"] = main


def execute(name: str, folder: Path, parameters: dict | None = None):
    """Run the notebook headless in a Jupyter kernel; ``parameters`` as in ``_read``."""
    nb = _read(name, parameters or {})
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(folder)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors[0].get("evalue")
    return nb
