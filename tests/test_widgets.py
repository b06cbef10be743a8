"""The explorers' Python side, without a browser: callbacks called directly, state read from widgets.

A click in the browser reaches Python as the message plotly's FigureWidget JavaScript sends
(``_js2py_pointsCallback``); ``_click`` sends the same message, so these tests go through the
same ``trace.on_click`` wiring as a real click. The browser itself is tested in test_browser.py.
"""
import pytest
import torch

from interp import graph
from interp.errors import ComponentError
from interp.result import Result
from interp.tasks import ioi_examples
from interp.widgets import CircuitExplorer, SweepViewer, attention_html

CIRCUIT = "smollm2-135m-instruct_ioi_interp"


def _click(fig, trace_index: int, point_index, x, y) -> None:
    """Deliver a plotly_click on one point, as the browser's FigureWidget view does."""
    fig._js2py_pointsCallback = {
        "event_type": "plotly_click", "device_state": None, "selector": None,
        "points": {"trace_indexes": [trace_index], "point_indexes": [point_index], "xs": [x], "ys": [y]},
    }


def _click_node(explorer: CircuitExplorer, node_id: str) -> None:
    for i, trace in enumerate(explorer.graph.data):
        ids = list(trace.customdata or [])
        if node_id in ids and trace.name not in ("ablation set", "focused"):
            j = ids.index(node_id)
            _click(explorer.graph, i, j, trace.x[j], trace.y[j])
            return
    raise AssertionError(f"{node_id} is not drawn")


@pytest.fixture(scope="module", autouse=True)
def one_thread_on_small_machines():
    """On 2 cores or fewer, PyTorch's threads stall each other when the host is busy
    (``interp.reports.runner.default_threads``); these tests run many small forwards: one thread there."""
    from interp.reports.runner import cpu_threads, default_threads

    with cpu_threads(default_threads()):
        yield


@pytest.fixture(scope="module")
def ioi8(model):
    return ioi_examples(model, n=8, seed=0)


@pytest.fixture
def explorer(model, ioi8):
    return CircuitExplorer(model, CIRCUIT, ioi8)


def test_attention_html_is_offline_circuitsvis():
    page = attention_html(["a", "b", "c"], torch.tril(torch.ones(3, 3)) / torch.arange(1, 4)[:, None])
    assert page.startswith("<iframe") and "CircuitsVis.render" in page and "AttentionPattern" in page
    assert "unpkg" not in page and "cdn." not in page, "circuitsvis must not load its JavaScript from a CDN"
    assert len(page) > 500_000, "the circuitsvis bundle should be inlined"
    several = attention_html(["a", "b"], torch.ones(3, 2, 2) / 2, head_names=["x", "y", "z"])
    assert "AttentionHeads" in several
    with pytest.raises(ComponentError):
        attention_html(["a"], torch.ones(1))


def test_explorer_starts_with_baselines(explorer, ioi8):
    assert explorer.clean_value > 1 > explorer.corrupted_value  # the model does IOI
    text = explorer.metric.value
    assert f"{explorer.clean_value:+.3f}" in text and "ablated" not in text
    assert "clean model" in explorer.predictions.value and explorer.error.value == ""
    assert len(explorer.example_picker.options) == len(ioi8)
    assert explorer.clean_box.value == ioi8.clean_text[0]


def test_click_on_a_node_opens_the_head_panel(explorer):
    _click_node(explorer, "L23H3")
    assert explorer.focused == "L23H3" and explorer.selected == ["L23H3"]
    panel = explorer.panel
    assert "L23H3" in panel.title.value and "name mover" in panel.details.value
    assert "+0.696" in panel.details.value  # the circuit node's score
    assert "DLA" in panel.details.value and "rank" in panel.details.value
    assert "iframe" in panel.attention.value and "CircuitsVis.render" in panel.attention.value
    assert list(explorer.graph.data[-2].customdata) == ["L23H3"]  # the ring of the ablation set
    assert "L23H3" in explorer.selection_text.value
    explorer.select_node("L23H3")  # a second click takes it out of the ablation set
    assert explorer.selected == [] and explorer.focused == "L23H3"


def test_attention_pattern_is_the_heads(explorer, model, ioi8):
    """The panel's pattern is the model's own hook_pattern for that head and prompt."""
    explorer.select_node("L17H4")
    n = int(ioi8.answer_pos[0]) + 1
    _, cache = model.run_with_cache(ioi8.clean_tokens[:1, :n], names_filter="blocks.17.attn.hook_pattern")
    assert torch.allclose(explorer.panel.patterns(0)[17, 4], cache["blocks.17.attn.hook_pattern"][0, 4], atol=1e-6)
    explorer.select_example(2)
    assert "prompt 2" in explorer.panel.attention.value and explorer.example_picker.value == 2


def test_ablating_the_name_movers_lowers_the_logit_difference(explorer):
    before = explorer.metric.value
    explorer.select_class("name mover")
    assert set(explorer.selected_heads) == set(graph.literature(CIRCUIT).by_class()["name mover"])
    labels: list[str] = []
    explorer.busy.label.observe(lambda ch: labels.append(ch["new"]), names="value")
    value = explorer.ablate("mean")
    assert value is not None and value < explorer.clean_value - 1.5, (value, explorer.clean_value)
    assert any("mean ablation" in s for s in labels), "progress should be shown while computing"
    assert explorer.busy.bar.layout.visibility == "hidden"
    assert explorer.metric.value != before and "ablated" in explorer.metric.value
    assert f"{value:+.3f}" in explorer.metric.value and "<b>ablated</b>" in explorer.predictions.value
    for mode in ("zero", "ua"):
        assert explorer.ablate(mode) < explorer.clean_value - 1.5
        assert f"({mode}:" in explorer.metric.value
    explorer.reset()
    assert "ablated" not in explorer.metric.value


def test_ablating_the_negative_name_movers_raises_it(explorer):
    explorer.select_class("negative name mover")
    assert explorer.ablate("mean") > explorer.clean_value


def test_buttons_and_errors_stay_in_the_widget(explorer):
    explorer.ablate_button.click()  # empty ablation set: a message, not an exception
    assert "empty" in explorer.error.value and explorer.applied is None
    explorer.select_node("nonexistent")
    assert "no node" in explorer.error.value
    explorer.select_node("logits")
    assert "not an attention head" in explorer.panel.title.value and explorer.selected == []


def test_bad_prompts_show_a_message(explorer):
    good = "When Mary and John went to the store, John gave a drink to"
    clean_value = explorer.clean_value
    assert not explorer.run_prompt(good, "When Mary went to the store, Mary gave a drink to", " Mary", " John")
    assert "different token lengths" in explorer.error.value
    assert not explorer.run_prompt(good, good, " Maryland Smith", " John")
    assert "must be exactly one" in explorer.error.value
    assert explorer.clean_value == clean_value and len(explorer.prompts) == 8  # nothing changed


def test_run_prompt_reruns_with_the_ablation(explorer):
    explorer.select_node("L23H3")
    explorer.ablate("zero")
    assert explorer.run_prompt("When Mary and John went to the store, John gave a drink to",
                               "When Anna and Paul went to the store, Mark gave a drink to", " Mary", " John")
    assert explorer.error.value == "" and len(explorer.prompts) == 1
    assert "mean over 1 prompt)" in explorer.metric.value and "ablated" in explorer.metric.value
    assert explorer.clean_value > 2 and explorer.ablated_value is not None
    assert "&#x27; Mary&#x27;" in explorer.predictions.value
    assert "L23H3" in explorer.panel.title.value and "When" in explorer.panel.attention.value


@pytest.fixture
def sweep():
    """A synthetic head sweep over layers 3, 23 and 29 (rows labelled by the real layers)."""
    values = torch.zeros(3, 9)
    values[1, 3] = 2.0
    return Result(values, ("layer", "head"), "head_out", clean=2.0, corrupted=-1.0,
                  meta={"index": {"layer": [3, 23, 29], "head": list(range(9))}})


def test_sweep_viewer_click_opens_the_head(model, ioi8, sweep):
    viewer = SweepViewer(sweep, model, ioi8)
    heat = viewer.heatmap.data[0]
    assert list(heat.y) == [3, 23, 29] and viewer.normalise
    _click(viewer.heatmap, 0, [1, 3], 3, 23)  # heat map points are [row, column]
    assert viewer.selected == (23, 3)
    assert "L23H3" in viewer.info.value and "+2.0000" in viewer.info.value and "+1.000" in viewer.info.value
    assert "L23H3" in viewer.panel.title.value and "iframe" in viewer.panel.attention.value
    assert (list(viewer.heatmap.data[1].x), list(viewer.heatmap.data[1].y)) == ([3], [23])
    viewer.select(5, 0)  # layer 5 was not swept
    assert "not in this sweep" in viewer.error.value and viewer.selected == (23, 3)


def test_sweep_viewer_without_a_model(sweep):
    viewer = SweepViewer(sweep, normalise=False)
    viewer.select(29, 8)
    assert viewer.selected == (29, 8) and viewer.panel is None and "+0.0000" in viewer.info.value
    with pytest.raises(ComponentError):
        SweepViewer(Result(torch.zeros(4), ("layer",), "attn_out"))


def _click_edge(explorer: CircuitExplorer, source: str, target: str) -> None:
    trace_index, trace = next((i, t) for i, t in enumerate(explorer.graph.data) if t.name.startswith("edges (click"))
    j = list(trace.customdata).index(f"{source}->{target}")
    _click(explorer.graph, trace_index, j, trace.x[j], trace.y[j])


def test_cutting_an_edge_is_exact_edge_patching(explorer, model, ioi8):
    """A click on the L23H3 -> logits edge marks it; cutting it gives the clean run with that one
    edge at its corrupted value: clean + the exact engine's noising score of the edge."""
    from interp.edge_sweep import edge_patch
    from interp.edges import parse_edge

    _click_edge(explorer, "L23H3", "logits")
    assert explorer.marked_edges == [("L23H3", "logits")] and "edges to cut" in explorer.selection_text.value
    assert list(explorer._trace("edges to cut").x)[:2] != [], "the marked edge is drawn"
    value = explorer.cut_edges()
    exact = edge_patch(model, ioi8, [parse_edge(model.cfg, "L23H3", "logits")], direction="noise", progress=False)
    assert value == pytest.approx(explorer.clean_value + float(exact.values[0]), abs=1e-4)
    assert value < explorer.clean_value - 0.1 and "edges cut" in explorer.metric.value
    # an edge into a whole head of a node-level circuit is cut into its q, k and v inputs
    edges_ = explorer.edge_targets("L8H1", "L19H2")
    assert [e.receiver.name for e in edges_] == ["L19H2.q", "L19H2.k", "L19H2.v"][:1] + \
        [f"L19H{2 // (model.cfg.n_heads // model.cfg.n_key_value_heads)}.{x}" for x in "kv"]
    explorer.select_edge("L23H3", "nowhere")
    assert "no edge" in explorer.error.value
    explorer.reset()
    assert "edges cut" not in explorer.metric.value


def test_scored_edges_are_drawn_by_weight(model, ioi8):
    from interp import edges as E

    scores = E.EdgeScores([E.parse_edge(model.cfg, s, t) for s, t in
                           (("L23H3", "logits"), ("L8H1", "L19H2.q"), ("MLP0", "logits"))],
                          torch.tensor([2.0, -0.1, 0.5]), "exact")
    explorer = CircuitExplorer(model, scores.to_circuit(model.interp_key, "ioi"), ioi8)
    drawn = {(t.line.color, t.line.width) for t in explorer.graph.data if t.name.startswith("edges #")}
    assert ("#d62728", 7.0) in drawn and ("#1f77b4", 2.5) in drawn and ("#d62728", 2.5) in drawn, drawn
    assert len(explorer._edge_pos) == 3 and not any(colour == "#bbbbbb" for colour, _ in drawn)
