"""Paper-scale runs stored with the repository: what a report shows beside the run at hand.

Some settings are too large for a 2-core machine (hundreds of prompts on two models, generation at
paper length). They ran on a GPU machine without network (``interp reproduce NAME --device cuda``),
and their ``numbers.json`` ships in ``benchmarks/``. An analysis lists its runs as
``(label, file, command)``; ``stored_runs`` reads the ones present, ``render_stored`` shows each
one's provenance and its headline table (intervals, the paper's numbers, verdicts), ``section``
does both for a report page.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

from interp.reports.headline import headline_table
from interp.reports.page import table

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def stored_runs(entries, folder: Path = BENCHMARKS) -> list[dict]:
    """The runs of ``entries`` ((label, file, command), ...) found in ``folder``: each its
    numbers.json with "label", "file" and "command" added."""
    runs = []
    for label, name, command in entries:
        path = Path(folder) / name
        if path.exists():
            runs.append(json.loads(path.read_text()) | {"label": label, "file": name, "command": command})
    return runs


def provenance(run: dict, extra: list[tuple[str, str]] = ()) -> str:
    """Where and how a stored run ran: its file, command, device, date, wall time and settings
    (and the ``extra`` rows an analysis adds)."""
    m = run["meta"]
    sizes = ", ".join(f"{k} {v}" for k, v in m.get("settings", {}).items() if isinstance(v, (int, float)))
    return table([("file", f'benchmarks/{run["file"]}'), ("command", run["command"]),
                  ("device", f'{m["device"]}, {m.get("date", "")}, {m.get("wall_s", 0):.0f} s'),
                  ("sizes", sizes), *extra])


def render_stored(runs: list[dict], entries) -> str:
    """Each run's provenance and headline table; a note naming the files when none is present."""
    if not runs:
        return ('<p class="note">No stored GPU run found: they ship in the repository\'s benchmarks/ folder '
                f"({', '.join(e[1] for e in entries)}).</p>")
    parts = []
    for r in runs:
        parts.append(f'<h3>{html.escape(r["label"])}</h3>' + provenance(r) + headline_table(r["headline"]))
        if r.get("detectable"):
            parts.append(f'<p class="note">{html.escape(r["detectable"])}.</p>')
    return "".join(parts)


def section(entries, folder: Path = BENCHMARKS) -> str:
    """A report's section on its stored runs: ``render_stored`` of the ``entries`` found in ``folder``."""
    return render_stored(stored_runs(entries, folder), entries)
