"""The headline contract of a report: one row per headline number, with its interval, the paper's
number, a verdict and, for a miss, where it comes from.

A row (``numbers(res)["headline"]`` of every analysis in ``interp.reports``)::

    {"name": "faithfulness F(C)/F(M) on held-out prompts", "ours": 0.92, "ci": [0.85, 0.97],
     "n": 64, "paper": "0.87 (GPT-2 small)", "verdict": "reproduced" | "partly" | "not" | None,
     "why": "one line", "miss": None | "model" | "sample size" | "deviation: <what>"}

``miss`` says where a miss against the paper comes from, for every row whose verdict is "partly" or
"not", and is None otherwise: "sample size" when this run's 95% interval cannot tell the result from
the paper's (``miss_from``); "model" when the interval excludes the paper's result and the method is
the paper's; "deviation: <what>" when a named difference from the paper's method may explain it.
"""
from __future__ import annotations

from interp.errors import InterpError

VERDICTS = ("reproduced", "partly", "not")


MISSES = ("model", "sample size")


def miss_from(verdict: str | None, cause: str, undecided: bool) -> str | None:
    """A headline row's ``miss``: None when the row reproduces the paper or has no verdict;
    "sample size" when ``undecided`` (the run's 95% interval holds the paper's number, or, for a
    qualitative claim, the value the claim turns on: the interval is too wide to tell); otherwise
    ``cause``, the report's reading: "model" or "deviation: <what>"."""
    if verdict in ("reproduced", None):
        return None
    return "sample size" if undecided else cause


def inside(ci, value: float) -> bool:
    """Whether ``value`` lies in the interval ``ci`` ([low, high]; None: no interval, so no)."""
    return ci is not None and ci[0] <= value <= ci[1]


def _valid_miss(miss) -> bool:
    return miss in MISSES or (isinstance(miss, str) and miss.startswith("deviation: ") and len(miss) > 11)


def check_headline(name: str, num: dict) -> None:
    """The headline contract (module docstring), checked before anything is written."""
    for row in num.get("headline", []):
        missing = {"name", "ours", "ci", "paper", "verdict", "why", "miss"} - row.keys()
        if missing:
            raise InterpError(f"{name}: headline row {row.get('name')!r} lacks {sorted(missing)}")
        if row["verdict"] not in (*VERDICTS, None):
            raise InterpError(f"{name}: verdict must be one of {VERDICTS} or None, got {row['verdict']!r}")
        if row["verdict"] in ("partly", "not") and not _valid_miss(row["miss"]):
            raise InterpError(f"{name}: headline row {row['name']!r} is {row['verdict']!r} but says not where the "
                              f"miss comes from (miss: 'model', 'sample size' or 'deviation: <what>'), got {row['miss']!r}")
        if row["verdict"] not in ("partly", "not") and row["miss"] is not None:
            raise InterpError(f"{name}: headline row {row['name']!r} misses nothing ({row['verdict']!r}) but has "
                              f"miss {row['miss']!r}")


def headline_table(rows: list[dict]) -> str:
    """The rows as the HTML table every report page opens with (the index page has the same columns)."""
    from interp.reports.page import table

    def ours(r):
        if not isinstance(r["ours"], (int, float)):
            return str(r["ours"])
        if r["ci"] is None:
            return f'{r["ours"]:.3g} (no interval: see why)'
        return f'{r["ours"]:.3g} [{r["ci"][0]:.3g}, {r["ci"][1]:.3g}]'

    return table([(r["name"], ours(r), r.get("n") if r.get("n") is not None else "", r["paper"], r["verdict"] or "-",
                   r["miss"] or "-", r["why"]) for r in rows],
                 ("quantity", "ours [95% interval]", "n", "paper", "verdict", "a miss from", "why"))
