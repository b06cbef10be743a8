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

import html

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


COLUMNS = ("quantity", "ours [95% interval]", "n", "paper", "verdict", "a miss from", "why")


def ours_text(row: dict) -> str:
    """A row's number with its interval: "0.92 [0.85, 0.97]", or the reason it has none."""
    def fmt(x) -> str:
        return (f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}") if isinstance(x, (int, float)) else str(x)

    if not isinstance(row["ours"], (int, float)):
        return str(row["ours"])
    if row.get("ci") is None:
        return f"{fmt(row['ours'])} (no interval: see why)"
    return f"{fmt(row['ours'])} [{fmt(row['ci'][0])}, {fmt(row['ci'][1])}]"


def headline_table(rows: list[dict], before: list[str] | None = None, after: list[str] | None = None,
                   header: tuple[tuple[str, ...], tuple[str, ...]] = ((), ()), table_id: str | None = None) -> str:
    """The rows as the HTML table every report page opens with. The index page adds columns:
    ``before[i]`` / ``after[i]`` are HTML cells (already escaped) put before / after row i's own,
    under the ``header`` names (before, after)."""
    esc = html.escape
    head = "".join(f"<th>{esc(h)}</th>" for h in (*header[0], *COLUMNS, *header[1]))
    body = []
    for i, r in enumerate(rows):
        verdict = r["verdict"] or "-"
        n = r.get("n")
        cells = (f'<td class="num">{esc(ours_text(r))}</td><td class="num">{"" if n is None else esc(str(n))}</td>'
                 f'<td>{esc(str(r["paper"]))}</td><td class="verdict {esc(verdict)}">{esc(verdict)}</td>'
                 f'<td class="miss">{esc(r.get("miss") or "-")}</td><td>{esc(str(r["why"]))}</td>')
        body.append("<tr>" + (before[i] if before else "") + f"<td>{esc(r['name'])}</td>" + cells
                    + (after[i] if after else "") + "</tr>")
    ident = f' id="{esc(table_id)}"' if table_id else ""
    return f"<table{ident}><tr>{head}</tr>{''.join(body)}</table>"
