"""The circuit explorer in a real browser: JupyterLab + Debian's Chromium, driven by Playwright.

What a user does, end to end: open ``notebooks/05_circuit_explorer.ipynb`` in JupyterLab, run all
cells, click the name mover L23H3 in the graph, see its attention pattern in the head panel,
press *Ablate* and see the logit difference change. This is the one execution of notebook 05 in
the suite: the numbers it saves are checked here too. The index page of the reports is opened in
the same browser by ``test_index_page_in_chromium``. The widgets' JavaScript (plotly's
FigureWidget, ipywidgets, circuitsvis in an iframe) must load with no network at all.

JupyterLab runs on 127.0.0.1 on a free port, with no token or password, from a temporary root
folder holding a copy of the notebook (its outputs go there too), and is stopped at the end even
when the test fails. Playwright drives ``/usr/bin/chromium`` (apt package ``chromium``, installed
by ``make test``); Playwright's own browser download is not used. Without that browser the test
fails with a message saying how to install it: it is part of the set-up, not optional.

Screenshots after the click and after the ablation go to ``test-artifacts/`` (git-ignored).
``INTERP_UPDATE_SCREENSHOTS=1`` also copies them to ``docs/screenshots/`` (the committed ones).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "test-artifacts"
NOTEBOOK = "05_circuit_explorer.ipynb"
NODE = "L23H3"  # the strongest name mover of the shipped SmolLM2 circuit
# Run All Cells: model load, explorer, class table, quick sweep (about a minute on 2 cores).
RUN_TIMEOUT_MS = int(os.environ.get("INTERP_BROWSER_RUN_TIMEOUT_MS", 240_000))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url + "api/status", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"JupyterLab did not answer at {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def serve_jupyterlab(tmp_path: Path) -> Iterator[str]:
    """A JupyterLab server on a free local port serving a temporary folder with notebook 05.

    Settings and workspaces live in the temporary folder too, so nothing of a user's JupyterLab
    state is read or written; the news pop-up is off and the notebook's kernel starts without the
    "Select Kernel" dialog. Yields the base URL.
    """
    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(ROOT / "notebooks" / NOTEBOOK, root / NOTEBOOK)
    settings = tmp_path / "settings"
    for plugin, values in {"apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
                           "notebook-extension/tracker": {"autoStartDefaultKernel": True}}.items():
        path = settings / "@jupyterlab" / f"{plugin}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    runtime = tmp_path / "runtime"
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(settings),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces"),
           "JUPYTER_RUNTIME_DIR": str(runtime), "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    port = _free_port()
    log = tmp_path / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", "--allow-root", "--IdentityProvider.token=", "--ServerApp.password=",
           f"--ServerApp.root_dir={root}", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_server(url, proc, log)
        yield url
    finally:
        _stop(proc, runtime)


def _stop(proc: subprocess.Popen, runtime: Path) -> None:
    """Stop the server (SIGTERM: it shuts its kernels down), then any kernel it left behind.

    The server runs in its own session, so its process group holds nothing else; kernels start
    sessions of their own, and are found by their connection file in our runtime folder.
    """
    import psutil

    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for p in psutil.process_iter(["cmdline"]):
        if any(str(runtime) in arg for arg in p.info["cmdline"] or []):
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


def _run_all_cells(page) -> None:
    """Run > Run All Cells, until the first code cell shows it is queued or ran ([*] or [1])."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    started = ("() => /\\[(\\*|\\d+)\\]/.test("
               "document.querySelector('.jp-CodeCell .jp-InputPrompt').innerText)")
    for _ in range(3):
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
        try:
            page.wait_for_function(started, timeout=15_000)
            return
        except PlaywrightTimeout:
            page.keyboard.press("Escape")  # close whatever took the click, and try again
    raise AssertionError("Run > Run All Cells did not start the notebook")


def _metric_text(page) -> str:
    return page.locator(".interp-explorer .interp-metric").inner_text()


def test_explorer_in_jupyterlab(tmp_path):
    assert CHROMIUM.exists(), (
        f"{CHROMIUM} is missing: the browser test needs Debian's Chromium. Install it with "
        "`apt-get install -y chromium` (as root; `make test` does this), then rerun.")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with serve_jupyterlab(tmp_path) as jupyterlab, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1500, "height": 1700})
        try:
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(jupyterlab + "lab/tree/" + NOTEBOOK, wait_until="domcontentloaded")
            page.locator(".jp-Notebook").wait_for(timeout=60_000)
            page.get_by_text(re.compile(r"Python 3 \(ipykernel\) \| Idle")).wait_for(timeout=60_000)
            _run_all_cells(page)
            page.get_by_text(re.compile(r"notebook ran in \d+ s")).wait_for(timeout=RUN_TIMEOUT_MS)

            explorer = page.locator(".interp-explorer")
            explorer.scroll_into_view_if_needed()
            metric_before = _metric_text(page)
            assert "clean" in metric_before and "ablated" not in metric_before, metric_before

            # Click the node: its label is drawn at the marker's centre.
            label = explorer.locator("g.textpoint text", has_text=re.compile(f"^{NODE}$"))
            label.wait_for(timeout=30_000)
            box = label.bounding_box()
            assert box, f"node {NODE} is not drawn"
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)

            panel = explorer.locator(".interp-head-panel")
            panel.get_by_text(NODE).first.wait_for(timeout=60_000)
            panel.get_by_text("name mover").wait_for(timeout=60_000)  # the node's class, from the circuit
            frame = panel.frame_locator("iframe.interp-attention")
            frame.locator("canvas").first.wait_for(timeout=60_000)  # circuitsvis drew the pattern
            page.wait_for_timeout(500)
            after_click = ARTIFACTS / "explorer_after_click.png"
            explorer.screenshot(path=str(after_click))

            explorer.locator("button.interp-ablate").click()
            page.wait_for_function(
                "() => document.querySelector('.interp-explorer .interp-metric').innerText.includes('ablated')",
                timeout=60_000)
            metric_after = _metric_text(page)
            assert metric_after != metric_before and f"(mean: {NODE})" in metric_after, metric_after
            clean = float(re.search(r"clean ([-+][\d.]+)", metric_after).group(1))
            ablated = float(re.search(r"\) ([-+][\d.]+) \(Δ", metric_after).group(1))
            assert ablated < clean, f"mean-ablating the name mover {NODE} should lower the logit difference: {metric_after}"
            page.wait_for_timeout(300)
            after_ablate = ARTIFACTS / "explorer_after_ablation.png"
            explorer.screenshot(path=str(after_ablate))
            widget_errors = [e for e in errors if re.search(r"plotly|anywidget|widget|circuitsvis", e, re.I)]
            assert not widget_errors, widget_errors
            assert page.locator(".interp-sweep-viewer").count() >= 1, "the sweep viewer should display too"
            # What the notebook computed in this run (it is executed only here, not again headless):
            # ablating the name movers lowers the logit difference, the negative name movers raise it.
            numbers = json.loads((tmp_path / "root" / "reports" / "notebooks" / "05_circuit_explorer"
                                  / "numbers.json").read_text())
            by_class = numbers["ablate_by_class"]
            assert by_class["name mover"]["mean"] < numbers["clean"] < by_class["negative name mover"]["mean"]
            assert len(numbers["sweep_top5"]) == 5
        except Exception:
            page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)  # what the page showed
            raise
        finally:
            browser.close()

    if os.environ.get("INTERP_UPDATE_SCREENSHOTS"):
        docs = ROOT / "docs" / "screenshots"
        docs.mkdir(parents=True, exist_ok=True)
        for shot in (after_click, after_ablate):
            shutil.copy(shot, docs / shot.name)


def test_index_page_in_chromium(quickstart_report):
    """The main job's index page as a reader sees it: the summary table opens the page, each row
    has its number with an interval and a verdict column, and every link opens its report."""
    assert CHROMIUM.exists(), f"{CHROMIUM} is missing: install it with `apt-get install -y chromium` (make test does)"
    from playwright.sync_api import sync_playwright

    index = quickstart_report.parent.parent / "index.html"
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                     args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        try:
            page.goto(index.as_uri())
            first = page.locator("body > *").nth(2)  # h1, the note, then the table
            assert first.get_attribute("id") == "summary", "the summary table must open the page"
            headers = page.locator("#summary th").all_inner_texts()
            assert headers[:3] == ["analysis", "quantity", "ours [95% interval]"]
            assert {"paper", "verdict", "a miss from", "why"} <= set(headers), headers
            rows = page.locator("#summary tr").all()[1:]
            assert rows, "no headline rows"
            cells = rows[0].locator("td").all_inner_texts()
            assert cells[0] == "quickstart" and re.search(r"[-\d.]+ \[[-\d.]+, [-\d.]+\]", cells[2]), cells
            page.screenshot(path=str(ARTIFACTS / "index.png"), full_page=True)
            hrefs = page.locator("a").evaluate_all("els => els.map(e => e.href)")
            assert hrefs and all(Path(h.removeprefix("file://")).is_file() for h in hrefs), hrefs
            rows[0].locator("a").click()
            page.wait_for_load_state()
            assert page.locator("h1").inner_text() == "IOI quick-start report"
        finally:
            browser.close()


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


class Recomputed(Exception):
    pass


def test_a_changed_run_key_forces_a_recompute(quickstart_report, monkeypatch):
    """The cache is reused only for the same key: another seed, a changed setting, another model
    (its GGUF's sha256), changed package code or use_cache=False each run the analysis again; the
    cached files are left as they were until the new run has finished."""
    from interp.reports import runner

    out = quickstart_report.parent.parent
    before = {f: (quickstart_report.parent / f).read_bytes() for f in ("run.json", "numbers.json", "report.html")}

    def recompute(*args):
        raise Recomputed

    monkeypatch.setattr("interp.reports.quickstart.run", recompute)
    assert runner.reproduce("quickstart", out, "quick", progress=False) == quickstart_report  # same key: cached
    changes = {
        "seed": lambda: runner.reproduce("quickstart", out, "quick", seed=1, progress=False),
        "setting": lambda: runner.reproduce("quickstart", out, "quick", progress=False, overrides={"n_prompts": 6}),
        "no cache": lambda: runner.reproduce("quickstart", out, "quick", progress=False, use_cache=False),
    }
    for what, call in changes.items():
        with pytest.raises(Recomputed):
            call()
    with monkeypatch.context() as m:
        m.setattr(runner, "_identity", lambda key: "another sha256")
        with pytest.raises(Recomputed):
            runner.reproduce("quickstart", out, "quick", progress=False)
    with monkeypatch.context() as m:
        m.setattr(runner, "code_digest", lambda: "edited code")
        with pytest.raises(Recomputed):
            runner.reproduce("quickstart", out, "quick", progress=False)
    assert before == {f: (quickstart_report.parent / f).read_bytes() for f in before}
    assert runner.reproduce("quickstart", out, "quick", progress=False) == quickstart_report  # still cached


def test_each_worker_draws_its_progress_bar_on_its_own_row(tmp_path, monkeypatch):
    """Two analyses side by side: worker i draws its bars on terminal row i (tqdm's position), so
    the bars do not overwrite each other; a failing analysis reports its error on the queue."""
    import queue

    from interp.reports import runner

    rows = []

    class Bar:
        def __init__(self, *args, position=None, **kwargs):
            rows.append(position)
            raise RuntimeError("stop after the bar")

    monkeypatch.setattr(runner, "tqdm", Bar)
    monkeypatch.setattr("interp.reports.runner.Models", lambda *a: None)
    for row in (0, 1):
        todo, done = queue.Queue(), queue.Queue()
        todo.put("quickstart")
        args = (tmp_path, "quick", None, "cpu", 0, False, True)
        runner._worker(todo, done, {"quickstart": "[1/1] "}, args, row)
        name, page, error = done.get_nowait()
        assert name == "quickstart" and page is None and "stop after the bar" in error
    assert rows == [0, 1]
