"""One runner for every paper analysis: load the model, run, save the numbers and the page, cache.

Each analysis is a module of ``interp.reports`` with the same parts:

    TITLE, DEFAULT_MODEL         what it is, and its model (None: the package default)
    SETTINGS                     {"quick": ..., "standard": ..., "full": ...} (and "cuda" where it
                                 has a GPU setting): the sizes of the run
    steps(settings) -> int       how many times ``run`` ticks (the progress bar's total)
    run(load, settings, seed, tick) -> res
                                 the analysis; ``load(key)`` gives a model (None: the default),
                                 ``tick(label)`` marks a finished step
    numbers(res) -> dict         everything the page shows, JSON; its "headline" list is what the
                                 index page summarises (below)
    save(res, numbers, folder) -> str
                                 writes the analysis's own files (circuit.json, ...) and returns
                                 the page's HTML

The runner writes ``numbers.json`` and ``report.html`` (atomically), then ``run.json`` with the key
of the run: a hash of the analysis, its settings, the seed, the device, the models' identities (the
GGUF's sha256) and the package's code. ``interp reproduce all`` skips an analysis whose run.json
carries the same key, so an interrupted ``make run`` resumes where it stopped.

**The headline contract** (``interp.reports.headline``): ``numbers(res)["headline"]`` is a list of
rows, each headline number with its interval, the paper's number, a verdict and, for a miss, where
it comes from (the model, the sample size or a named deviation); checked before anything is written.
And ``numbers(res)["detectable"]`` says in one line the smallest effect the run could detect.
``write_index`` puts every analysis's rows in one table at the top of ``index.html``.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import html
import json
import os
import queue
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp.errors import InterpError
from interp.reports import circuit_reuse, correct_letter, edges, ioi, quickstart, retrieval_heads, safety_heads
from interp.reports.headline import check_headline, headline_table
from interp.reports.page import CSS, versions

ANALYSES = {
    "quickstart": quickstart,
    "ioi": ioi,
    "circuit-reuse": circuit_reuse,
    "correct-letter": correct_letter,
    "retrieval-heads": retrieval_heads,
    "safety-heads": safety_heads,
    "edges": edges,
}
#: the five paper reproductions (``interp reproduce papers``, what ``make run`` runs)
PAPERS = ("ioi", "circuit-reuse", "correct-letter", "retrieval-heads", "safety-heads")
SETTINGS = ("quick", "standard", "full")


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (None: leave it), restoring it afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_threads() -> int | None:
    """1 on machines with 2 cores or fewer, else None (PyTorch's default).

    On a small virtual machine whose host throttles it to about one core, PyTorch's OpenMP threads
    stall each other: a forward of the default model takes ~10 s with 2 threads, ~0.4 s with one.
    """
    return 1 if (os.cpu_count() or 1) <= 2 else None


def analysis(name: str):
    if name not in ANALYSES:
        raise InterpError(f"unknown analysis {name!r}: use one of {', '.join(ANALYSES)} or all")
    return ANALYSES[name]


def settings_of(name: str, setting: str = "standard", device: str = "cpu", overrides: dict | None = None) -> dict:
    """The settings an analysis runs with (``setting`` on the CPU; its "cuda" setting on a GPU),
    with ``overrides`` (a notebook's OVERRIDES, e.g. ``{"n_eval": 8}``) replacing single entries.

    An override of a key the setting does not have is refused (a typo would otherwise be ignored)."""
    module = analysis(name)
    if setting not in SETTINGS:
        raise InterpError(f"unknown setting {setting!r}: use {', '.join(SETTINGS)}")
    if device == "cuda":
        if "cuda" not in module.SETTINGS:
            raise InterpError(f"{name} has no GPU setting: run it on the CPU (--device cpu)")
        settings = dict(module.SETTINGS["cuda"])
    else:
        settings = dict(module.SETTINGS[setting])
    unknown = sorted(set(overrides or {}) - set(settings))
    if unknown:
        raise InterpError(f"{name} has no setting {', '.join(map(repr, unknown))}: its settings are {', '.join(settings)}")
    return {**settings, **(overrides or {})}


class Models:
    """Models loaded once per ``reproduce all`` (several analyses share a model)."""

    def __init__(self, device: str = "cpu", override: str | None = None):
        self.device, self.override, self._loaded = device, override, {}

    def key(self, key: str | None) -> str | None:
        return self.override or key

    def __call__(self, key: str | None = None):
        import interp

        key = self.key(key)
        if key not in self._loaded:
            self._loaded[key] = interp.load_model(key, device=self.device)
        return self._loaded[key]


def _identity(key: str | None) -> str:
    """What a model's numbers depend on: the registered GGUF's sha256, or the folder / hub name."""
    from interp.models import resolve_spec

    spec = resolve_spec(key)
    return spec.sha256 if spec else str(key)


def code_digest() -> str:
    """A hash of the package's source: cached results are not reused across code changes."""
    import interp

    h = hashlib.sha256(interp.__version__.encode())
    root = Path(interp.__file__).parent
    for path in sorted(root.rglob("*.py")):
        h.update(path.relative_to(root).as_posix().encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def run_key(name: str, settings: dict, seed: int, device: str, model_keys: list) -> str:
    blob = json.dumps([name, settings, seed, device, sorted(map(_identity, model_keys), key=str), code_digest()],
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _model_keys(module, settings: dict, override: str | None) -> list:
    if override:
        return [override]
    return list(settings.get("models") or [module.DEFAULT_MODEL])


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def cached(folder: Path, key: str) -> dict | None:
    """The run.json of a finished run with this key, else None."""
    try:
        done = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None
    ok = done.get("key") == key and (folder / "report.html").is_file() and (folder / "numbers.json").is_file()
    return done if ok else None


def reproduce(name: str, out_dir: str | Path = "reports", setting: str = "standard", model_key: str | None = None,
              device: str = "cpu", seed: int = 0, use_cache: bool = True, models: Models | None = None,
              progress: bool = True, position: str = "", overrides: dict | None = None,
              bar_row: int | None = None) -> Path:
    """Run one analysis and write ``out_dir/NAME/report.html`` (+ numbers.json, run.json and the
    analysis's own files); a finished run with the same key is reused. Returns the page's path.
    ``overrides`` replace single entries of the setting (``settings_of``); ``position`` prefixes the
    progress bar's label ("[2/6] "), ``bar_row`` is its terminal row (one per worker process, so
    side-by-side analyses do not draw over each other)."""
    module = analysis(name)
    settings = settings_of(name, setting, device, overrides)
    folder = Path(out_dir) / name
    key = run_key(name, settings, seed, device, _model_keys(module, settings, model_key))
    done = cached(folder, key) if use_cache else None
    if done:
        print(f"{position}{name}: cached ({done['wall_s']:.0f} s on {done['finished']}) -> {folder / 'report.html'}",
              flush=True)
        return folder / "report.html"
    folder.mkdir(parents=True, exist_ok=True)
    models = models or Models(device, model_key)
    start = time.time()
    bar = tqdm(total=module.steps(settings), desc=f"{position}{name}", unit="step", disable=not progress,
               position=bar_row)

    def tick(label: str = "") -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    with cpu_threads(default_threads() if device == "cpu" else None):
        res = module.run(models, settings, seed, tick)
        num = module.numbers(res)
        num.setdefault("meta", {}).update({
            "analysis": name, "setting": "cuda" if device == "cuda" else setting, "overrides": overrides or {},
            "settings": settings,
            "seed": seed, "device": device, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": versions(), "wall_s": time.time() - start, "torch_threads": torch.get_num_threads()})
        check_headline(name, num)
        page = module.save(res, num, folder)
    bar.close()
    _write(folder / "numbers.json", json.dumps(num, indent=1, default=_jsonable))
    _write(folder / "report.html", page)
    wall = time.time() - start
    _write(folder / "run.json", json.dumps({"key": key, "wall_s": wall, "setting": num["meta"]["setting"], "device": device,
                                            "finished": datetime.datetime.now().isoformat(timespec="seconds")}))
    print(f"{position}{name}: {wall:.0f} s -> {folder / 'report.html'}", flush=True)
    return folder / "report.html"


def _jsonable(x):
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, (set, tuple)):
        return list(x)
    return str(x)


#: Seconds each analysis's standard setting took here (2-core CPU, two analyses side by side, one
#: thread each, 2026-11-30; safety heads with Qwen's first de-quantisation): the order in which the
#: workers take them (longest first), so the two workers finish close together.
EXPECTED_S = {"safety-heads": 380, "ioi": 295, "circuit-reuse": 280, "edges": 220, "retrieval-heads": 180,
              "correct-letter": 90, "quickstart": 60}


def default_jobs(device: str = "cpu") -> int:
    """Analyses run side by side: one per core on a CPU (each with one thread), one on a GPU."""
    return max(1, min(4, os.cpu_count() or 1)) if device == "cpu" else 1


def reproduce_all(names=None, out_dir: str | Path = "reports", setting: str = "standard",
                  model_key: str | None = None, device: str = "cpu", seed: int = 0, use_cache: bool = True,
                  progress: bool = True, jobs: int | None = None) -> dict[str, Path]:
    """Every analysis (``jobs`` at a time, in worker processes, longest first; models loaded once
    per worker), then ``index.html``; returns the pages. A failed analysis stops the others from
    starting new work and raises once the running ones are done; the finished ones stay cached."""
    names = list(names or ANALYSES)
    for name in names:  # refuse bad settings before the first analysis starts
        settings_of(name, setting, device)
    jobs = min(jobs or default_jobs(device), len(names))
    start = time.time()
    order = sorted(names, key=lambda n: -EXPECTED_S.get(n, 100))
    label = {name: f"[{i + 1}/{len(names)}] " for i, name in enumerate(order)}
    args = (out_dir, setting, model_key, device, seed, use_cache, progress)
    if jobs == 1:
        models = Models(device, model_key)
        pages = {n: reproduce(n, *args[:5], use_cache, models, progress, label[n]) for n in order}
    else:
        pages = _in_workers(order, jobs, label, args)
    pages = {n: pages[n] for n in names}
    print(f"all {len(names)} analyses: {time.time() - start:.0f} s", flush=True)
    write_index(out_dir, pages)
    return pages


def _worker(todo, done, label: dict, args: tuple, row: int = 0) -> None:
    """A worker process: take analyses off ``todo`` until it is empty (or a sentinel), report each
    page (or the error) on ``done``; its progress bars are drawn on terminal row ``row``."""
    out_dir, setting, model_key, device, seed, use_cache, progress = args
    models = Models(device, model_key)
    while True:
        name = todo.get()
        if name is None:
            return
        try:
            done.put((name, str(reproduce(name, out_dir, setting, model_key, device, seed, use_cache, models,
                                          progress, label[name], bar_row=row)), None))
        except BaseException as exc:  # reported to the parent, which raises it
            done.put((name, None, f"{type(exc).__name__}: {exc}"))
            return


def _in_workers(order: list[str], jobs: int, label: dict, args: tuple) -> dict[str, Path]:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    todo, done = ctx.Queue(), ctx.Queue()
    for name in order:
        todo.put(name)
    for _ in range(jobs):
        todo.put(None)
    workers = [ctx.Process(target=_worker, args=(todo, done, label, args, row), daemon=True) for row in range(jobs)]
    for w in workers:
        w.start()
    pages, errors = {}, []
    try:
        while len(pages) + len(errors) < len(order):
            try:
                name, page, error = done.get(timeout=1)
            except queue.Empty:  # a worker killed from outside (out of memory, a signal) reports nothing
                dead = [w.exitcode for w in workers if w.exitcode not in (None, 0)]
                if not dead:
                    if any(w.is_alive() for w in workers):
                        continue
                    break
                name, page, error = "a worker", None, (f"its process died with exit code {dead[0]}"
                                                       + (" (killed: out of memory?)" if dead[0] == -9 else ""))
                workers = [w for w in workers if w.exitcode in (None, 0)]
            if error:
                errors.append(f"{name}: {error}")
                while not todo.empty():  # no new analysis starts; the running ones finish
                    todo.get()
                for _ in range(jobs):
                    todo.put(None)
                if not any(w.is_alive() for w in workers) and done.empty():
                    break
            else:
                pages[name] = Path(page)
            if not any(w.is_alive() for w in workers) and done.empty():
                break
    except KeyboardInterrupt:
        for w in workers:
            w.terminate()
        raise
    for w in workers:
        w.join()
    if errors or len(pages) < len(order):
        missing = [n for n in order if n not in pages]
        raise InterpError("; ".join(errors) or f"workers stopped before {', '.join(missing)} ran")
    return pages


def write_index(out_dir: str | Path, pages: dict[str, Path]) -> Path:
    """``out_dir/index.html``: one summary table (each analysis's headline numbers with their
    intervals, the paper's numbers, the verdict and why), then a link to every report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, before, after, links = [], [], [], []
    for name, path in pages.items():
        path = Path(path)
        href = html.escape(Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix(), quote=True)
        title = getattr(ANALYSES.get(name), "TITLE", name)
        links.append(f'<li><a href="{href}">{html.escape(title)}</a></li>')
        try:
            num = json.loads((path.parent / "numbers.json").read_text())
        except (OSError, ValueError):
            num = {}
        meta = num.get("meta", {})
        for row in num.get("headline", []):
            rows.append(row)
            before.append(f'<td><a href="{href}">{html.escape(name)}</a></td>')
            after.append(f'<td>{html.escape(str(meta.get("model_key", "")))}, {html.escape(str(meta.get("setting", "")))}</td>')
    summary = headline_table(rows, before, after, header=(("analysis",), ("model, setting",)), table_id="summary")
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>interp reports</title>'
            f"<style>{CSS}</style></head><body>\n<h1>interp reports</h1>\n"
            f'<p class="note">Each paper analysis run here, its headline numbers with 95% intervals over prompts, '
            f"the paper's numbers beside them and a one-line verdict. The reports have the details.</p>\n"
            f"{summary}\n<h2>Reports</h2>\n<ul>\n" + "\n".join(links)
            + f'\n</ul>\n<p class="note">Written {stamp}.</p>\n</body></html>\n')
    index = out_dir / "index.html"
    _write(index, page)
    return index


__all__ = ["ANALYSES", "reproduce", "reproduce_all", "write_index", "settings_of", "cpu_threads", "PAPERS",
           "default_threads"]
