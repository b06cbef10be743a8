"""How long the explorer widgets take to render in the kernel (issue 8: target < 1 s each).

Measured, not asserted. Two cases, on synthetic data (no model needed):

(a) a 300-head attention panel: ``interp.widgets.attention_html`` on a [300, 20, 20] pattern
    (circuitsvis ``attention_heads``, its JavaScript inlined), put in an HTML widget, plus the
    widget state as the kernel would send it (``get_state`` + JSON encoding);
(b) the sweep viewer of a 30 x 14 (layer x head) Result: building ``SweepViewer`` (a plotly
    FigureWidget heat map), its state as sent, and a cell selection (``select``).

``--model`` adds the explorer's callbacks on the real default model (8 IOI prompts): building
the explorer, the first click on a head (one forward for the patterns, DLA of every head), a
second click (cached), and a mean ablation of the six name movers.

What the browser then does (parse the 1.3 MB circuitsvis bundle, draw) is not measured here.

    python benchmarks/widgets_render.py [--repeats 5] [--model]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Callable

import torch


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median and min wall time of ``fn`` over ``repeats`` runs (after one warm-up run)."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), min(times)


def widget_payload(widget) -> tuple[int, int]:
    """Bytes of the state a widget sends to the browser (JSON plus binary buffers), and how many
    of them are JavaScript (an anywidget's ``_esm``: plotly's bundle, sent once per widget)."""
    from ipywidgets.widgets.widget import _remove_buffers

    state, _, buffers = _remove_buffers(widget.get_state())
    esm = state.get("_esm", "")
    return len(json.dumps(state)) + sum(len(b) for b in buffers), len(esm) if isinstance(esm, str) else 0


def attention_panel(n_heads: int = 300, n_tokens: int = 20) -> dict:
    import ipywidgets as W

    from interp.widgets import attention_html

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(n_heads, n_tokens, n_tokens, generator=g)
    mask = torch.ones(n_tokens, n_tokens).tril().bool()
    pattern = scores.masked_fill(~mask, float("-inf")).softmax(-1)
    tokens = [f" tok{i}" for i in range(n_tokens)]
    names = [f"L{h // 9}H{h % 9}" for h in range(n_heads)]
    box = W.HTML()
    sizes = {}

    def render():
        box.value = attention_html(tokens, pattern, head_names=names)
        sizes["bytes"] = widget_payload(box)

    return {"case": f"attention panel, {n_heads} heads x {n_tokens} tokens", "render": render, "sizes": sizes}


def sweep_viewer(n_layers: int = 30, n_heads: int = 14) -> list[dict]:
    from interp.result import Result
    from interp.widgets import SweepViewer

    values = torch.randn(n_layers, n_heads, generator=torch.Generator().manual_seed(0))
    result = Result(values, ("layer", "head"), "head_out", clean=2.0, corrupted=-1.0)
    sizes: dict = {}
    holder: dict = {}

    def build():
        holder["viewer"] = viewer = SweepViewer(result)
        sizes["bytes"] = widget_payload(viewer.heatmap)

    build()
    return [
        {"case": f"sweep viewer {n_layers} x {n_heads}: build + state", "render": build, "sizes": sizes},
        {"case": f"sweep viewer {n_layers} x {n_heads}: click a cell (select)",
         "render": lambda: holder["viewer"].select(n_layers - 1, n_heads - 1), "sizes": {}},
    ]


def model_cases() -> list[dict]:
    import interp
    from interp.widgets import CircuitExplorer

    model = interp.load_model()
    prompts = interp.tasks.ioi_examples(model, n=8, seed=0)
    out = []

    def build():
        out.append(CircuitExplorer(model, "smollm2-135m-instruct_ioi_interp", prompts))

    t = time.perf_counter()
    build()
    rows = [{"case": "explorer: build (clean + corrupted forward)", "once": time.perf_counter() - t}]
    ex = out[-1]
    t = time.perf_counter()
    ex.select_node("L23H3")
    rows.append({"case": "explorer: first click on a head (patterns forward + DLA)", "once": time.perf_counter() - t})
    rows.append({"case": "explorer: click on another head (cached)",
                 "render": lambda: ex.select_node("L20H0", toggle=False), "sizes": {}})
    ex.select_class("name mover")
    rows.append({"case": "explorer: mean ablation of the 6 name movers", "render": lambda: ex.ablate("mean"), "sizes": {}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", action="store_true", help="also time the explorer on the real model")
    parser.add_argument("--threads", type=int, default=1 if (os.cpu_count() or 1) <= 2 else None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [attention_panel(), *sweep_viewer()]
    if args.model:
        cases += model_cases()
    print("| case | median ms | min ms | state sent to the browser |\n|---|---|---|---|")
    for case in cases:
        if "once" in case:
            print(f"| {case['case']} | {1e3 * case['once']:.0f} (once) | | |")
            continue
        median, best = timed(case["render"], args.repeats)
        size, js = case["sizes"].get("bytes", (0, 0))
        sent = f"{size / 1e6:.2f} MB" + (f" ({js / 1e6:.2f} MB of it plotly's JS)" if js else "") if size else ""
        print(f"| {case['case']} | {1e3 * median:.1f} | {1e3 * best:.1f} | {sent} |")


if __name__ == "__main__":
    main()
