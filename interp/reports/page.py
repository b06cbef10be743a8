"""The building blocks of every report page: self-contained HTML, tables, figures as inline PNG.

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), so importing
this module never changes the pyplot backend of a notebook. Pages embed everything (no network).
"""
from __future__ import annotations

import base64
import html
import io
import platform
from importlib.metadata import PackageNotFoundError, version


def head_label(layer: int, head: int) -> str:
    """``head_label(9, 6) == "9.6"``: the LAYER.HEAD form the CLI's ``--heads`` accepts."""
    return f"{int(layer)}.{int(head)}"


def new_figure(width: float = 6.0, height: float = 4.0):
    """A matplotlib Figure on an Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def fig_to_img(fig, alt: str = "") -> str:
    """A matplotlib figure as an ``<img>`` tag with the PNG embedded as base64."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/>'


def versions() -> dict:
    """Versions of this package and the libraries its numbers depend on."""
    import interp

    out = {"interp": interp.__version__, "python": platform.python_version()}
    for dist in ("torch", "transformers", "transformer-lens", "circuitsvis"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 0.92em; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
.note { color: #555; font-size: 0.92em; }
td.verdict.reproduced { background: #e3f4e3; } td.verdict.partly { background: #fdf3d8; }
td.verdict.not { background: #f8dede; }
"""


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    """A self-contained HTML page: a title and (heading, html) sections."""
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def table(rows: list[tuple], header: tuple | None = None) -> str:
    """An HTML table; floats are formatted to 3 decimals and right-aligned."""
    def cell(v):
        if isinstance(v, float):
            text = f"{v:.1e}" if 0 < abs(v) < 5e-4 else f"{v:.3f}"
            return f'<td class="num">{text}</td>'
        return f"<td>{html.escape(str(v))}</td>"

    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


