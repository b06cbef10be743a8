"""Circuit explorers that run in the kernel: click a head, see what it does, knock it out.

Two widgets, both built from ipywidgets and driven by Python callbacks:

``CircuitExplorer(model, circuit, prompts)``
    The circuit's graph (layers bottom to top, heads along x, colour = class). Clicking a node
    *focuses* it (the head panel shows it) and toggles it in the *ablation set* (drawn with a black
    ring). The controls ablate the set (zero / mean / undifferentiated attention "ua", through
    ``interp.ablation.ablation_hooks``), re-run the model on the prompt set and show the metric
    (mean logit difference) next to the clean and corrupted baselines, and the top next-token
    predictions of the chosen prompt before and after. A form takes a new prompt (clean,
    corrupted, answer, distractor) and makes it the prompt set.

    Edges are drawn by their score (width ~ |score|, red positive, blue negative; grey when the
    circuit has no edge scores). Clicking an edge's midpoint marks it for *cutting* (dashed
    black); "Cut edges" re-runs the prompts with every marked edge carrying its corrupted value
    and everything else clean (``interp.edge_circuits.circuit_metric``: the receiver's input loses
    the sender's clean contribution and gets its corrupted one). An edge into a head without an
    input letter (a node-level circuit's "L8H1 -> L19H2") is cut into all three of its q, k, v inputs.

``SweepViewer(result, model, prompts)``
    A ("layer", "head") ``Result`` (a head patching sweep) as a heat map; clicking a cell selects
    that head and opens the head panel on it.

``HeadPanel(model, prompts)``
    Shared by both: for one head, its class and score (from the circuit node, or the sweep cell),
    its direct logit attribution (``interp.direct_logit_attribution``, mean over the prompt set,
    with its rank among all heads) and its attention pattern on the chosen prompt, drawn by
    circuitsvis.

    >>> from interp.widgets import CircuitExplorer
    >>> explorer = CircuitExplorer(model, "smollm2-135m-instruct_ioi_interp", prompts)
    >>> explorer                                  # displays the widget in a notebook
    >>> explorer.select_node("L23H3"); explorer.ablate("mean")
    >>> explorer.metric.value                     # the text the user sees
    >>> explorer.select_edge("L23H3", "logits"); explorer.cut_edges()

Everything a user can do with the mouse is a public method (``select_node``, ``select_class``,
``ablate``, ``select_edge``, ``cut_edges``, ``reset``, ``run_prompt``, ``select_example``, ``SweepViewer.select``), and the state
lives in ordinary widget objects (``explorer.metric.value``, ``explorer.panel.title.value``,
``viewer.selected``), so tests drive the widgets without a browser. Errors a user can cause
(prompts of unequal token length, an answer that is several tokens: ``InterpError``) are shown
as one line in the widget's error box, never raised out of a callback; anything unexpected is
shown there too, as its type and message.

Why plotly's ``FigureWidget`` for the graph and the heat map. It is maintained (plotly 7.1,
2026) and, since plotly 6, an anywidget: its JavaScript ships inside the Python wheel and is
loaded by the widget itself, so it needs no JupyterLab extension, no CDN and no build step, and
works with JupyterLab 4.6 / ipywidgets 8.1.9 offline. Its ``trace.on_click`` brings point clicks
back to Python. ipycytoscape was the other candidate: its last release (1.3.3) is from April
2022 and its JupyterLab extension requires ``@jupyter-widgets/base`` up to 4, while ipywidgets 8
provides version 6, so JupyterLab 4 cannot render it.

Attention patterns are circuitsvis's self-contained HTML (``RenderedHTML.local_src``: its
JavaScript inlined, about 1.3 MB, never the CDN), shown in an ``<iframe srcdoc=...>``. An HTML
widget sets ``innerHTML``, which does not run ``<script>`` tags; an iframe's document does, in
JupyterLab, in VS Code and in an exported page alike.
"""
from __future__ import annotations

import contextlib
import html
import logging
import math
from pathlib import Path
from typing import Any, Iterator

import ipywidgets as W
import plotly.graph_objects as go
import torch

from interp import edges as E
from interp import graph
from interp.ablation import ablation_hooks
from interp.attribution import direct_logit_attribution
from interp.errors import ComponentError, InterpError
from interp.metrics import at_answer, logit_diff
from interp.result import Result
from interp.tasks.prompts import PromptSet, prompts_for

log = logging.getLogger(__name__)

Head = tuple[int, int]
ABLATION_MODES = ("zero", "mean", "ua")
TOP_K = 5
EDGE_TRACE, CUT_TRACE, RING_TRACE, FOCUS_TRACE = "edges (click to mark)", "edges to cut", "ablation set", "focused"
GRAPH_WIDTH = 560  # pixels: a fixed width, so the graph never spills under the head panel
CLASS_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf")


# ------------------------------------------------------------------------------ rendering helpers
def attention_html(tokens: list[str], pattern: torch.Tensor, head_names: list[str] | None = None,
                   height: int | None = None) -> str:
    """circuitsvis's drawing of attention, offline, as an ``<iframe>`` tag.

    Args:
        tokens: the prompt's tokens as strings (the pattern's query and key axes).
        pattern: [query, key] for one head (``attention_pattern``: a heat map with hover), or
            [head, query, key] for several (``attention_heads``: thumbnails, click one to enlarge).
        head_names: labels of the heads of a 3-D pattern, e.g. ["L23H3", ...].
        height: the iframe's height in pixels (an iframe does not size itself to its content);
            default 600 for one head (circuitsvis draws it as a square as wide as the panel), 900
            for several.

    The page inside is circuitsvis's ``local_src``: its React bundle is inlined, so it draws
    without network access.
    """
    import circuitsvis as cv

    pattern = pattern.detach().float().cpu()
    if pattern.ndim == 2:
        vis = cv.attention.attention_pattern(tokens=tokens, attention=pattern)
    elif pattern.ndim == 3:
        vis = cv.attention.attention_heads(attention=pattern, tokens=tokens, attention_head_names=head_names)
    else:
        raise ComponentError(f"attention_html draws [query, key] or [head, query, key], got shape {tuple(pattern.shape)}")
    height = height or (600 if pattern.ndim == 2 else 900)
    page = f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{vis.local_src}</body></html>"
    return (f'<iframe class="interp-attention" title="attention pattern" srcdoc="{html.escape(page, quote=True)}" '
            f'style="width:100%;height:{height}px;border:0"></iframe>')


def _fmt(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:+.{digits}f}"


def _head_id(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


class _Busy:
    """A progress bar and label shown while a callback computes.

    The kernel sends each widget change to the browser at once, so updating the bar between the
    steps of a long callback shows progress even though the kernel is busy until it returns.
    """

    def __init__(self) -> None:
        self.bar = W.IntProgress(value=0, min=0, max=1, layout=W.Layout(width="160px", visibility="hidden"))
        self.label = W.Label("")
        self.widget = W.HBox([self.bar, self.label])
        self.widget.add_class("interp-progress")

    @contextlib.contextmanager
    def run(self, what: str, steps: int) -> Iterator[Any]:
        """Show ``what`` with a bar of ``steps``; the block calls the yielded ``step(label)``."""
        self.bar.max, self.bar.value = max(steps, 1), 0
        self.bar.layout.visibility = "visible"
        self.label.value = f"{what}…"

        def step(label: str) -> None:
            self.bar.value = min(self.bar.value + 1, self.bar.max)
            self.label.value = f"{what}: {label}…"

        try:
            yield step
        finally:
            self.bar.layout.visibility = "hidden"
            self.label.value = ""


@contextlib.contextmanager
def _shown_errors(box: W.HTML, what: str) -> Iterator[None]:
    """Run a callback body; an exception becomes one red line in ``box`` instead of propagating.

    ``InterpError`` messages are written for users and shown as they are; anything else is shown
    as "what failed: Type: message" and logged with its traceback.
    """
    box.value = ""
    try:
        yield
    except InterpError as exc:
        box.value = f'<span style="color:#b00020">{html.escape(str(exc))}</span>'
    except Exception as exc:  # a widget callback must not die with a traceback nobody sees
        log.exception("%s failed", what)
        box.value = f'<span style="color:#b00020">{html.escape(f"{what} failed: {type(exc).__name__}: {exc}")}</span>'


# ------------------------------------------------------------------------------------ head panel
class HeadPanel:
    """One attention head on the current prompts: class and score, DLA, attention pattern.

    ``show(layer, head, info)`` fills the panel; ``info`` may carry "class", "score" and
    "position" (a circuit node's attributes) or anything else worth a line ("sweep value").
    The attention patterns of every layer on the chosen prompt come from one forward and are
    cached, as is the DLA of every head on the prompt set, so moving between heads is instant.

    Attributes (widgets): ``title``, ``details`` (class, score, DLA), ``attention`` (the
    circuitsvis iframe), ``widget`` (all of them, to display).
    """

    def __init__(self, model, prompts: PromptSet, example: int = 0, busy: _Busy | None = None) -> None:
        self.model = model
        self.busy = busy or _Busy()
        self.title = W.HTML("<b>Head panel</b>: click a head")
        self.details = W.HTML("")
        self.attention = W.HTML("")
        self.error = W.HTML("")
        self.widget = W.VBox([self.title, self.details, self.attention, self.error],
                             layout=W.Layout(width="100%", min_width="360px"))
        self.widget.add_class("interp-head-panel")
        self.head: Head | None = None
        self.info: dict = {}
        self.set_prompts(prompts, example)

    def set_prompts(self, prompts: PromptSet, example: int = 0) -> None:
        """Use another prompt set (caches dropped) and redraw the current head, if any."""
        self.prompts, self.example = prompts, example
        self._patterns: dict[int, torch.Tensor] = {}
        self._dla: Result | None | str = None
        if self.head is not None:
            self.show(*self.head, info=self.info)

    def set_example(self, example: int) -> None:
        """Draw the attention pattern on prompt ``example`` of the set."""
        self.example = example
        if self.head is not None:
            self.show(*self.head, info=self.info)

    def tokens(self, example: int) -> list[str]:
        """The clean prompt's tokens as strings, without right padding."""
        n = int(self.prompts.answer_pos[example]) + 1
        return self.model.to_str_tokens(self.prompts.clean_tokens[example, :n])

    def patterns(self, example: int) -> torch.Tensor:
        """[layer, head, query, key] attention on the clean prompt ``example`` (one forward, cached)."""
        if example not in self._patterns:
            n = int(self.prompts.answer_pos[example]) + 1
            names = [f"blocks.{l}.attn.hook_pattern" for l in range(self.model.cfg.n_layers)]
            with torch.no_grad():
                _, cache = self.model.run_with_cache(self.prompts.clean_tokens[example:example + 1, :n],
                                                     names_filter=lambda name: name in names)
            self._patterns[example] = torch.stack([cache[name][0] for name in names]).cpu()
        return self._patterns[example]

    def dla(self) -> Result | str:
        """DLA of every head (mean over the prompt set), or the reason it is not available."""
        if self._dla is None:
            try:
                self._dla = direct_logit_attribution(self.model, self.prompts).heads
            except InterpError as exc:  # e.g. a post-attention norm (Gemma 3)
                self._dla = str(exc)
        return self._dla

    def show(self, layer: int, head: int, info: dict | None = None) -> None:
        """Fill the panel for head ``layer``.``head``; errors go to the panel's error line."""
        with _shown_errors(self.error, f"showing L{layer}H{head}"):
            with self.busy.run(f"head L{layer}H{head}", 2) as step:
                self.head, self.info = (int(layer), int(head)), dict(info or {})
                if not (0 <= layer < self.model.cfg.n_layers and 0 <= head < self.model.cfg.n_heads):
                    raise ComponentError(f"head {layer}.{head} does not exist in this model")
                self.title.value = f"<b>{_head_id(layer, head)}</b> &nbsp; layer {layer}, head {head}"
                step("direct logit attribution")
                self.details.value = self._details_html(layer, head)
                step("attention pattern")
                pattern = self.patterns(self.example)[layer, head]
                toks = self.tokens(self.example)
                self.attention.value = (
                    f"<div>attention pattern on prompt {self.example} (query = row, key = column):</div>"
                    + attention_html(toks, pattern))

    def _details_html(self, layer: int, head: int) -> str:
        rows = []
        for key in ("class", "score", "position"):
            if key in self.info:
                v = self.info[key]
                rows.append((key, _fmt(v) if isinstance(v, float) else html.escape(str(v))))
        for key, v in self.info.items():
            if key not in ("class", "score", "position", "id", "kind", "layer", "head"):
                rows.append((key, _fmt(v) if isinstance(v, float) else html.escape(str(v))))
        dla = self.dla()
        if isinstance(dla, Result):
            values = dla.values
            value = float(values[layer, head])
            rank = int((values.flatten().abs() > abs(value)).sum()) + 1
            rows.append(("DLA", f"{value:+.3f} (mean over {len(self.prompts)} prompts; rank {rank} of "
                                f"{values.numel()} by |DLA|)"))
        else:
            rows.append(("DLA", html.escape(dla)))
        return "<table>" + "".join(f"<tr><td><i>{k}</i></td><td>{v}</td></tr>" for k, v in rows) + "</table>"


# ------------------------------------------------------------------------------ circuit explorer
class CircuitExplorer:
    """The circuit's graph, a head panel, ablation controls and a prompt form, live on a model.

    Args:
        model: a TransformerBridge from ``interp.load_model``.
        circuit: an ``interp.graph.Circuit``, a path to a circuit JSON file, or the short name of
            one in ``circuits/`` ("smollm2-135m-instruct_ioi_interp").
        prompts: the prompt set the metric is averaged over (e.g. ``interp.tasks.ioi_examples``).
        example: which prompt of the set the attention pattern and predictions show.
        mode: the initial ablation mode (zero, mean, ua).

    The metric is the mean logit difference (answer minus distractor) on the clean prompts.
    "mean" replaces the heads' outputs with their mean over the set's corrupted prompts (per
    template when the prompts carry groups, as Wang et al. 2022); for a single typed prompt that
    is its own corrupted prompt. Ablations act on every position; a circuit node's "position"
    attribute is shown, not used.
    """

    def __init__(self, model, circuit: graph.Circuit | str | Path, prompts: PromptSet, example: int = 0,
                 mode: str = "mean") -> None:
        if mode not in ABLATION_MODES:
            raise ComponentError(f"unknown ablation mode {mode!r}: use one of {', '.join(ABLATION_MODES)}")
        self.model = model
        self.circuit = _as_circuit(circuit)
        self.nodes = {n["id"]: n for n in self.circuit.nodes}
        self.prompts = prompts
        self.example = example
        self.selected: list[str] = []          # node ids in the ablation set, in click order
        self.focused: str | None = None        # the node the head panel shows
        self.applied: tuple[str, list[Head]] | None = None  # the ablation behind the metric, if any
        self.clean_value = self.corrupted_value = self.ablated_value = None
        self.marked_edges: list[tuple[str, str]] = []  # (source, target) marked for cutting, in click order
        self.cut: list[tuple[str, str]] | None = None  # the edges behind cut_value, if any
        self.cut_value: float | None = None
        self._clean_last = self._ablated_last = None  # [batch, vocab] logits at the answer

        self.busy = _Busy()
        self.error = W.HTML("")
        self.error.add_class("interp-error")
        self.panel = HeadPanel(model, prompts, example, busy=self.busy)
        self.graph = self._build_graph()
        self.mode = W.ToggleButtons(options=list(ABLATION_MODES), value=mode, description="ablation",
                                    tooltips=["z := 0", "z := mean over the corrupted prompts",
                                              "undifferentiated attention: q := 1e-5 q"],
                                    style={"button_width": "60px"})
        classes = sorted(self.circuit.by_class())
        self.class_picker = W.Dropdown(options=[("add a class…", "")] + [(c, c) for c in classes], value="",
                                       layout=W.Layout(width="180px"))
        self.class_picker.observe(self._on_class, names="value")
        self.selection_text = W.HTML("")
        self.ablate_button = W.Button(description="Ablate", button_style="danger", icon="scissors",
                                      tooltip="ablate the heads of the ablation set and re-run")
        self.ablate_button.add_class("interp-ablate")
        self.reset_button = W.Button(description="Reset", tooltip="back to the unablated model")
        self.clear_button = W.Button(description="Clear", tooltip="empty the ablation set")
        self.ablate_button.on_click(lambda _: self.ablate())
        self.reset_button.on_click(lambda _: self.reset())
        self.clear_button.on_click(lambda _: self.clear_selection())
        self.cut_button = W.Button(description="Cut edges", icon="unlink",
                                   tooltip="re-run with the marked edges carrying their corrupted value")
        self.cut_button.add_class("interp-cut")
        self.cut_button.on_click(lambda _: self.cut_edges())
        self.metric = W.HTML("")
        self.metric.add_class("interp-metric")
        self.predictions = W.HTML("")
        self.predictions.add_class("interp-predictions")
        self.example_picker = W.Dropdown(description="prompt", layout=W.Layout(width="100%"))
        self.example_picker.observe(self._on_example, names="value")
        self._quiet = False  # True while the code itself changes the picker
        self.clean_box = W.Text(description="clean", layout=W.Layout(width="100%"))
        self.corrupted_box = W.Text(description="corrupted", layout=W.Layout(width="100%"))
        self.answer_box = W.Text(description="answer", layout=W.Layout(width="220px"))
        self.distractor_box = W.Text(description="distractor", layout=W.Layout(width="220px"))
        self.run_button = W.Button(description="Run prompt", icon="play",
                                   tooltip="make this prompt the prompt set and re-run")
        self.run_button.on_click(lambda _: self.run_prompt(self.clean_box.value, self.corrupted_box.value,
                                                           self.answer_box.value, self.distractor_box.value))
        self.widget = self._layout()
        self.widget.add_class("interp-explorer")
        with _shown_errors(self.error, "starting the explorer"):
            if getattr(model, "interp_key", self.circuit.model) != self.circuit.model:
                self.error.value = (f"note: this circuit was found on {html.escape(self.circuit.model)}, "
                                    f"the model is {html.escape(str(model.interp_key))}")
            self._use_prompts(prompts, example)

    # ------------------------------------------------------------------------ public callbacks
    def select_node(self, node_id: str, toggle: bool = True) -> None:
        """What a click on a node does: focus it in the head panel and, for a head, toggle it in
        the ablation set (``toggle=False`` only focuses). Unknown ids show an error."""
        with _shown_errors(self.error, f"selecting {node_id}"):
            if node_id not in self.nodes:
                raise ComponentError(f"no node {node_id!r} in this circuit")
            node = self.nodes[node_id]
            self.focused = node_id
            if node["kind"] == "head":
                if toggle:
                    if node_id in self.selected:
                        self.selected.remove(node_id)
                    else:
                        self.selected.append(node_id)
                self._redraw_marks()
                self.panel.show(node["layer"], node["head"], info={k: node[k] for k in ("class", "score", "position")
                                                                   if node[k] is not None})
            else:
                self._redraw_marks()
                self.panel.head = None
                self.panel.title.value = f"<b>{html.escape(node_id)}</b> ({node['kind']}): not an attention head"
                self.panel.details.value = self.panel.attention.value = ""

    def select_class(self, name: str) -> None:
        """Add every head of class ``name`` to the ablation set."""
        with _shown_errors(self.error, f"selecting class {name}"):
            ids = [n["id"] for n in self.circuit.nodes if n["kind"] == "head" and n["class"] == name]
            if not ids:
                raise ComponentError(f"no heads of class {name!r} in this circuit")
            self.selected += [i for i in ids if i not in self.selected]
            self._redraw_marks()

    def clear_selection(self) -> None:
        """Empty the ablation set and the marked edges (the metric keeps showing the last result
        until Reset, Ablate or Cut edges)."""
        self.selected = []
        self.marked_edges = []
        self._redraw_marks()

    def select_edge(self, source: str, target: str) -> None:
        """What a click on an edge does: mark it for cutting, or unmark it."""
        with _shown_errors(self.error, f"selecting the edge {source} -> {target}"):
            if (source, target) not in self._edge_pos:
                raise ComponentError(f"no edge {source} -> {target} in this circuit")
            self.edge_targets(source, target)  # an edge the model cannot cut is refused at the click
            key = (source, target)
            if key in self.marked_edges:
                self.marked_edges.remove(key)
            else:
                self.marked_edges.append(key)
            self._redraw_marks()

    def edge_targets(self, source: str, target: str) -> list[E.Edge]:
        """The model's edges behind a drawn edge: itself, or, into a head named without an input
        letter, the edges into its q, k and v inputs (k and v of its key/value head)."""
        cfg = self.model.cfg
        node = self.nodes.get(target)
        if node is not None and node["kind"] == "head" and not node.get("input"):
            names = [r.name for r in E.head_inputs(cfg, node["layer"], node["head"])]
        else:
            names = [target]
        return [E.parse_edge(cfg, source, t) for t in names]

    def cut_edges(self) -> float | None:
        """Re-run the prompt set with every marked edge carrying its corrupted value; returns the
        mean logit difference (None if it failed: the error is shown in the widget)."""
        with _shown_errors(self.error, "cutting edges"):
            if not self.marked_edges:
                raise ComponentError("no edges are marked: click an edge's midpoint in the graph first")
            self._cut(list(self.marked_edges))
            return self.cut_value
        return None

    @property
    def selected_heads(self) -> list[Head]:
        """The (layer, head) pairs of the ablation set, each once."""
        return list(dict.fromkeys((self.nodes[i]["layer"], self.nodes[i]["head"]) for i in self.selected))

    def ablate(self, mode: str | None = None) -> float | None:
        """Ablate the selected heads with ``mode`` (default: the toggle's), re-run the prompt set,
        update the metric and the predictions; returns the ablated mean logit difference (None
        if it failed: the error is shown in the widget)."""
        with _shown_errors(self.error, "ablation"):
            mode = mode or self.mode.value
            if mode not in ABLATION_MODES:
                raise ComponentError(f"unknown ablation mode {mode!r}: use one of {', '.join(ABLATION_MODES)}")
            heads = self.selected_heads
            if not heads:
                raise ComponentError("the ablation set is empty: click heads in the graph (or add a class) first")
            self.mode.value = mode
            self._apply(mode, heads)
            return self.ablated_value
        return None

    def reset(self) -> None:
        """Forget the ablation: the metric and predictions show the unablated model again."""
        self.applied, self.ablated_value, self._ablated_last = None, None, None
        self.cut, self.cut_value = None, None
        self._refresh_text()

    def run_prompt(self, clean: str, corrupted: str, answer: str, distractor: str) -> bool:
        """Make one typed example the prompt set and re-run (the active ablation, if any, too).

        Returns False (the reason shown in the error box) when the example is unusable: clean and
        corrupted of different token lengths, or an answer/distractor that is not one token.
        """
        with _shown_errors(self.error, "running the prompt"):
            prompts = prompts_for(self.model, [{"clean": clean, "corrupted": corrupted, "answer": answer,
                                                "distractor": distractor}], names=["typed prompt"])
            self._use_prompts(prompts, 0)
            return True
        return False

    def select_example(self, example: int) -> None:
        """Show prompt ``example`` of the set in the head panel and the predictions table."""
        with _shown_errors(self.error, "selecting the prompt"):
            if not 0 <= example < len(self.prompts):
                raise ComponentError(f"prompt {example} does not exist: the set has {len(self.prompts)}")
            self.example = example
            self._quiet = True
            try:
                self.example_picker.value = example
            finally:
                self._quiet = False
            self._fill_prompt_form()
            self.panel.set_example(example)
            self._refresh_text()

    # --------------------------------------------------------------------------------- display
    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # ------------------------------------------------------------------------------- internals
    def _use_prompts(self, prompts: PromptSet, example: int) -> None:
        with self.busy.run("running the prompts", 3 if self.applied else 2) as step:
            step("clean")
            clean_logits = self._run(prompts.clean_tokens)
            step("corrupted")
            corrupted_logits = self._run(prompts.corrupted_tokens)
            self.prompts, self.example = prompts, example
            self._clean_last = at_answer(clean_logits, prompts.answer_pos)
            self.clean_value = float(logit_diff(clean_logits, prompts).mean())
            self.corrupted_value = float(logit_diff(corrupted_logits, prompts).mean())
            self.ablated_value = self._ablated_last = self.cut_value = None
            texts = prompts.clean_text or [f"prompt {i}" for i in range(len(prompts))]
            self._quiet = True
            try:
                self.example_picker.options = [(f"{i}: {t}", i) for i, t in enumerate(texts)]
                self.example_picker.value = example
            finally:
                self._quiet = False
            self._fill_prompt_form()
        self.panel.set_prompts(prompts, example)
        if self.applied:
            self._apply(*self.applied)
        if self.cut:
            self._cut(self.cut)
        self._refresh_text()

    def _apply(self, mode: str, heads: list[Head]) -> None:
        with self.busy.run(f"{mode} ablation of {len(heads)} heads", 2) as step:
            step("hooks")
            hooks = ablation_hooks(self.model, heads, mode, reference=self.prompts, groups=self.prompts.groups)
            step("forward")
            logits = self._run(self.prompts.clean_tokens, hooks)
            self.applied = (mode, list(heads))
            self._ablated_last = at_answer(logits, self.prompts.answer_pos)
            self.ablated_value = float(logit_diff(logits, self.prompts).mean())
        self._refresh_text()

    def _cut(self, marked: list[tuple[str, str]]) -> None:
        from interp.edge_circuits import circuit_metric

        edges_ = list(dict.fromkeys(e for s, t in marked for e in self.edge_targets(s, t)))
        with self.busy.run(f"cutting {len(edges_)} edges", 1) as step:
            step("forward")
            self.cut_value = circuit_metric(self.model, self.prompts, keep=set(), scope=edges_)
            self.cut = list(marked)
        self._refresh_text()

    def _run(self, tokens: torch.Tensor, hooks: list | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.model.run_with_hooks(tokens, fwd_hooks=hooks or []).float().cpu()

    def _fill_prompt_form(self) -> None:
        p, i, tok = self.prompts, self.example, self.model.tokenizer
        if p.clean_text:
            self.clean_box.value, self.corrupted_box.value = p.clean_text[i], p.corrupted_text[i]
        self.answer_box.value = tok.decode([int(p.answer_ids[i])])
        self.distractor_box.value = tok.decode([int(p.distractor_ids[i])])

    def _refresh_text(self) -> None:
        n = len(self.prompts)
        parts = [f"<b>logit diff</b> (mean over {n} prompt{'s' * (n != 1)}): clean {_fmt(self.clean_value)}",
                 f"corrupted {_fmt(self.corrupted_value)}"]
        if self.applied and self.ablated_value is not None:
            mode, heads = self.applied
            names = ", ".join(_head_id(*h) for h in heads)
            delta = self.ablated_value - self.clean_value
            parts.append(f"<b>ablated</b> ({mode}: {names}) <b>{_fmt(self.ablated_value)}</b> (Δ {delta:+.3f})")
        if self.cut and self.cut_value is not None:
            names = ", ".join(f"{a}→{b}" for a, b in self.cut)
            delta = self.cut_value - self.clean_value
            parts.append(f"<b>edges cut</b> ({names}) <b>{_fmt(self.cut_value)}</b> (Δ {delta:+.3f})")
        self.metric.value = " &nbsp;·&nbsp; ".join(parts)
        self.predictions.value = self._predictions_html()

    def _predictions_html(self) -> str:
        tok = self.model.tokenizer
        columns = [("clean model", self._clean_last)]
        if self._ablated_last is not None:
            columns.append(("ablated", self._ablated_last))
        lines = []
        for title, last in columns:
            top = last[self.example].softmax(-1).topk(TOP_K)
            items = " &nbsp; ".join(f"<code>{html.escape(repr(tok.decode([int(t)])))}</code> {float(p):.3f}"
                                    for p, t in zip(top.values, top.indices))
            lines.append(f"<div><b>{title}</b>: {items}</div>")
        answer = html.escape(repr(tok.decode([int(self.prompts.answer_ids[self.example])])))
        return f"<div>top {TOP_K} next tokens of prompt {self.example} (answer {answer}):</div>" + "".join(lines)

    def _on_example(self, change: dict) -> None:
        if not self._quiet and change["new"] is not None:
            self.select_example(change["new"])

    def _on_class(self, change: dict) -> None:
        if change["new"]:
            self.select_class(change["new"])
            self.class_picker.value = ""

    # ---------------------------------------------------------------------------------- graph
    def _build_graph(self) -> go.FigureWidget:
        """Edges as line traces (one per width bin and sign), their midpoints as one clickable
        marker trace, nodes as one scatter trace per class (the legend), and three overlay traces:
        the marked edges (dashed black), the ablation set (black rings), the focused node (a red ring)."""
        pos = graph.layout(self.circuit)
        biggest = max((abs(e["score"]) for e in self.circuit.edges if e["score"] is not None), default=0.0)
        bins: dict[tuple[str, float], tuple[list, list]] = {}
        self._edge_pos = {}
        mids: tuple[list, list, list, list] = ([], [], [], [])
        for e in self.circuit.edges:
            (x0, y0), (x1, y1) = pos[e["source"]], pos[e["target"]]
            self._edge_pos[e["source"], e["target"]] = (x0, y0, x1, y1)
            if e["score"] is None or biggest == 0:
                key = ("#bbbbbb", 1.0)
            else:  # four widths, so a few traces draw any number of edges
                key = ("#d62728" if e["score"] > 0 else "#1f77b4", 1.0 + 1.5 * math.ceil(4 * abs(e["score"]) / biggest))
            xs, ys = bins.setdefault(key, ([], []))
            xs += [x0, x1, None]
            ys += [y0, y1, None]
            mids[0].append((x0 + x1) / 2)
            mids[1].append((y0 + y1) / 2)
            mids[2].append(f"{e['source']}->{e['target']}")
            mids[3].append(f"{e['source']} → {e['target']}<br>score {_fmt(e['score'])}<br>click to mark for cutting")
        traces: list[go.Scatter] = [
            go.Scatter(x=xs, y=ys, mode="lines", hoverinfo="skip", line=dict(color=colour, width=width),
                       opacity=0.6, showlegend=False, name=f"edges {colour} {width}")
            for (colour, width), (xs, ys) in sorted(bins.items(), key=lambda kv: kv[0][1])]
        traces.append(go.Scatter(x=mids[0], y=mids[1], mode="markers", name=EDGE_TRACE, customdata=mids[2],
                                 hovertext=mids[3], hoverinfo="text", showlegend=False,
                                 marker=dict(size=7, color="#666666", opacity=0.35)))
        groups: dict[str, list[dict]] = {}
        for n in self.circuit.nodes:
            groups.setdefault(n["class"] or n["kind"], []).append(n)
        for i, (name, nodes) in enumerate(groups.items()):
            traces.append(go.Scatter(
                x=[pos[n["id"]][0] for n in nodes], y=[pos[n["id"]][1] for n in nodes], mode="markers+text",
                name=name, text=[n["id"] for n in nodes], customdata=[n["id"] for n in nodes],
                textposition="middle center", textfont=dict(size=8),
                marker=dict(size=30, color=CLASS_COLOURS[i % len(CLASS_COLOURS)], opacity=0.85,
                            line=dict(color="white", width=1)),
                hovertext=[f"{n['id']}<br>{n['class'] or n['kind']}<br>score {_fmt(n['score'])}" for n in nodes],
                hoverinfo="text"))
        traces.append(go.Scatter(x=[], y=[], mode="lines", name=CUT_TRACE, hoverinfo="skip",
                                 line=dict(color="black", width=3, dash="dash")))
        for name, colour, width in ((RING_TRACE, "black", 3), (FOCUS_TRACE, "#e00000", 2)):
            traces.append(go.Scatter(x=[], y=[], mode="markers", name=name, hoverinfo="skip", customdata=[],
                                     marker=dict(size=38, symbol="circle-open", color=colour, line=dict(width=width))))
        fig = go.FigureWidget(traces, layout=go.Layout(
            title=dict(text=f"{self.circuit.model} · {self.circuit.task}: click a head or an edge",
                       font=dict(size=13)),
            width=GRAPH_WIDTH, height=640, margin=dict(l=50, r=10, t=40, b=40), plot_bgcolor="white", dragmode=False,
            xaxis=dict(title="head", zeroline=False, gridcolor="#eeeeee"),
            yaxis=dict(title="layer", zeroline=False, gridcolor="#eeeeee"),
            legend=dict(font=dict(size=10), orientation="h", yanchor="top", y=-0.12, x=0)))
        for trace in fig.data:
            if trace.customdata is not None:
                trace.on_click(self._on_graph_click)
        self._pos = pos
        return fig

    def _trace(self, name: str):
        return next(t for t in self.graph.data if t.name == name)

    def _on_graph_click(self, trace, points, state) -> None:
        if not points.point_inds:  # plotly calls every trace's handlers; only the clicked one has points
            return
        item = trace.customdata[points.point_inds[0]]
        if trace.name == EDGE_TRACE:
            self.select_edge(*item.split("->"))
        else:
            self.select_node(item)

    def _redraw_marks(self) -> None:
        rings, focus, cut = self._trace(RING_TRACE), self._trace(FOCUS_TRACE), self._trace(CUT_TRACE)
        with self.graph.batch_update():
            rings.x = [self._pos[i][0] for i in self.selected]
            rings.y = [self._pos[i][1] for i in self.selected]
            rings.customdata = list(self.selected)
            ids = [self.focused] if self.focused else []
            focus.x = [self._pos[i][0] for i in ids]
            focus.y = [self._pos[i][1] for i in ids]
            focus.customdata = ids
            xs: list[float | None] = []
            ys: list[float | None] = []
            for key in self.marked_edges:
                x0, y0, x1, y1 = self._edge_pos[key]
                xs += [x0, x1, None]
                ys += [y0, y1, None]
            cut.x, cut.y = xs, ys
        heads = ", ".join(_head_id(*h) for h in self.selected_heads) or "none (click heads in the graph)"
        text = f"<b>ablation set</b>: {heads}"
        if self.marked_edges:
            text += " &nbsp;·&nbsp; <b>edges to cut</b>: " + ", ".join(f"{a}→{b}" for a, b in self.marked_edges)
        self.selection_text.value = text

    def _layout(self) -> W.Widget:
        controls = W.HBox([self.mode, self.class_picker, self.clear_button, self.ablate_button, self.cut_button,
                           self.reset_button],
                          layout=W.Layout(flex_flow="row wrap", align_items="center"))
        prompt_form = W.VBox([
            self.clean_box, self.corrupted_box,
            W.HBox([self.answer_box, self.distractor_box, self.run_button], layout=W.Layout(flex_flow="row wrap")),
        ])
        graph_box = W.Box([self.graph], layout=W.Layout(width=f"{GRAPH_WIDTH + 10}px", flex="0 0 auto"))
        panel_box = W.Box([self.panel.widget], layout=W.Layout(flex="1 1 auto", min_width="380px"))
        return W.VBox([
            W.HBox([graph_box, panel_box], layout=W.Layout(width="100%")),
            self.selection_text, controls, self.busy.widget, self.metric, self.predictions,
            self.example_picker,
            W.HTML("<b>new prompt</b> (clean and corrupted of equal token length; answer and distractor one token each):"),
            prompt_form, self.error, self.panel.error,
        ])


def _as_circuit(circuit: graph.Circuit | str | Path) -> graph.Circuit:
    """A Circuit from itself, a JSON path, or a short name in ``circuits/``."""
    if isinstance(circuit, graph.Circuit):
        return circuit
    path = Path(circuit)
    if path.suffix == ".json" and path.exists():
        return graph.Circuit.load(path)
    return graph.literature(str(circuit))


# ---------------------------------------------------------------------------------- sweep viewer
class SweepViewer:
    """A ("layer", "head") Result as a clickable heat map; a click opens the head panel.

    Args:
        result: e.g. ``interp.patch(model, prompts, "head_out")``; rows are labelled with the
            real layer indices of ``result.meta["index"]`` (a sweep over a subset of layers).
        model, prompts: for the head panel (attention pattern, DLA); without them the viewer
            only reports the clicked cell.
        normalise: show ``result.normalised()`` (1 = restores the clean metric); default: when
            the result has both baselines.

    ``selected`` is the clicked (layer, head); ``select(layer, head)`` does what a click does.
    """

    def __init__(self, result: Result, model=None, prompts: PromptSet | None = None,
                 normalise: bool | None = None, panel: HeadPanel | None = None) -> None:
        if tuple(result.axes) != ("layer", "head"):
            raise ComponentError(f"SweepViewer needs a Result with axes ('layer', 'head'), got {tuple(result.axes)}")
        self.result = result
        can_normalise = result.clean is not None and result.corrupted is not None and result.clean != result.corrupted
        self.normalise = can_normalise if normalise is None else bool(normalise and can_normalise)
        index = result.meta.get("index", {})
        n_layers, n_heads = result.values.shape
        self.layers = [int(x) for x in index.get("layer", range(n_layers))]
        self.heads = [int(x) for x in index.get("head", range(n_heads))]
        self.selected: Head | None = None
        self.error = W.HTML("")
        self.info = W.HTML("<b>click a cell</b> to open its head")
        self.info.add_class("interp-sweep-info")
        self.panel = panel or (HeadPanel(model, prompts) if model is not None and prompts is not None else None)
        self.heatmap = self._build_heatmap()
        parts: list[W.Widget] = [self.heatmap, self.info, self.error]
        if self.panel is not None:
            parts += [self.panel.busy.widget, self.panel.widget, self.panel.error]
        self.widget = W.VBox(parts)
        self.widget.add_class("interp-sweep-viewer")

    def values(self) -> torch.Tensor:
        """The shown values: normalised or raw, [layer, head]."""
        return self.result.normalised() if self.normalise else self.result.values

    def select(self, layer: int, head: int) -> None:
        """What a click on cell (layer, head) does: mark it, report its value, open its head."""
        with _shown_errors(self.error, f"selecting L{layer}H{head}"):
            layer, head = int(layer), int(head)
            if layer not in self.layers or head not in self.heads:
                raise ComponentError(f"head {layer}.{head} is not in this sweep (layers {self.layers[0]}..{self.layers[-1]}"
                                     f" of {len(self.layers)}, heads {self.heads[0]}..{self.heads[-1]})")
            self.selected = (layer, head)
            raw = float(self.result.values[self.layers.index(layer), self.heads.index(head)])
            shown = float(self.values()[self.layers.index(layer), self.heads.index(head)])
            mark = self.heatmap.data[1]
            with self.heatmap.batch_update():
                mark.x, mark.y = [head], [layer]
            what = f"{self.result.component} {self.result.metric}"
            text = f"<b>{_head_id(layer, head)}</b>: {what} {raw:+.4f}"
            if self.normalise:
                text += f" (normalised {shown:+.3f})"
            self.info.value = text
            if self.panel is not None:
                info = {"sweep value": raw}
                if self.normalise:
                    info["sweep value, normalised"] = shown
                self.panel.show(layer, head, info=info)

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _build_heatmap(self) -> go.FigureWidget:
        vals = self.values()
        lim = float(vals.abs().max()) or 1.0
        label = ("normalised " if self.normalise else "") + self.result.metric
        heat = go.Heatmap(z=vals.tolist(), x=self.heads, y=self.layers, colorscale="RdBu", zmin=-lim, zmax=lim,
                          colorbar=dict(title=dict(text=label)),
                          hovertemplate="L%{y}H%{x}: %{z:.3f}<extra></extra>")
        mark = go.Scatter(x=[], y=[], mode="markers", hoverinfo="skip", showlegend=False,
                          marker=dict(symbol="square-open", size=16, color="black", line=dict(width=3)))
        fig = go.FigureWidget([heat, mark], layout=go.Layout(
            title=dict(text=f"{self.result.component}: {label} (click a cell)", font=dict(size=13)),
            height=max(320, 18 * len(self.layers) + 120), width=max(360, 40 * len(self.heads) + 160),
            margin=dict(l=50, r=10, t=40, b=40), dragmode=False,
            xaxis=dict(title="head", type="category"), yaxis=dict(title="layer", type="category")))
        fig.data[0].on_click(self._on_cell_click)
        return fig

    def _on_cell_click(self, trace, points, state) -> None:
        if points.xs:
            self.select(int(points.ys[0]), int(points.xs[0]))
