"""Analyses computed once per test process, shared by the tests and the notebook that need the same run.

An analysis's tests and its notebook's test live in one file (so that pytest-xdist's ``loadfile``
keeps them on one worker) and ask for the same setting: the first to call ``report.run`` computes
it, the others get that result. A run is identified by its report module, its settings and its
seed; the model is the session's (``conftest.py``), so the same key means the same computation.
``shared(report)`` is the memoised ``report.run``; ``share_runs(monkeypatch, *reports)`` puts it in
place of ``report.run`` for code that calls the report itself (a notebook, ``runner.reproduce``).
"""
import json

_RUNS: dict[tuple, dict] = {}
_ORIGINAL: dict[str, object] = {}


def _key(report, settings: dict, seed: int) -> tuple:
    return report.__name__, json.dumps(settings, sort_keys=True, default=str), seed


def shared(report):
    """``report.run`` with its results kept for the rest of the process."""
    original = _ORIGINAL.setdefault(report.__name__, report.run)

    def run(load, settings: dict, seed: int = 0, tick=lambda step: None) -> dict:
        key = _key(report, settings, seed)
        if key not in _RUNS:
            _RUNS[key] = original(load, settings, seed, tick)
        return _RUNS[key]

    return run


def share_runs(monkeypatch, *reports) -> None:
    for report in reports:
        monkeypatch.setattr(report, "run", shared(report))
