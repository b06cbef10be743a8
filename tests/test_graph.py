"""interp.graph: the circuit JSON format, its validator, networkx round trips, compare, draw. No model."""
import json
from collections import Counter

import matplotlib

matplotlib.use("Agg")
import networkx as nx  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from interp import graph  # noqa: E402
from interp.errors import CircuitError  # noqa: E402
from interp.result import Result  # noqa: E402

SHIPPED = ["gpt2-small_ioi_wang2022", "gpt2-medium_ioi_merullo2024", "gpt2-medium_colored-objects_merullo2024"]


@pytest.fixture(scope="module")
def wang():
    return graph.literature("gpt2-small_ioi_wang2022")


def test_shipped_files_validate():
    assert set(SHIPPED) <= set(graph.list_circuits())
    for name in SHIPPED:
        c = graph.literature(name)
        assert c.provenance["source"] and "arXiv" in c.provenance["source"]
        assert c.model.startswith("gpt2-")
        n_layers = 12 if c.model == "gpt2-small" else 24
        assert all(0 <= layer < n_layers and 0 <= head < {12: 12, 24: 16}[n_layers] for layer, head in c.heads())


def test_wang_has_26_heads_in_seven_classes(wang):
    assert len(wang.heads()) == 26 and len(wang.nodes) == 27  # + logits
    counts = {c: len(h) for c, h in wang.by_class().items()}
    assert counts == {"name mover": 3, "backup name mover": 8, "negative name mover": 2, "s-inhibition": 4,
                      "induction": 4, "duplicate token": 3, "previous token": 2}
    assert (9, 9) in wang.by_class()["name mover"] and (10, 7) in wang.by_class()["negative name mover"]
    positions = Counter(n["position"] for n in wang.nodes if n["kind"] == "head")
    assert positions == {"END": 17, "S2": 7, "S1+1": 2}
    assert len(wang.edges) == 2 * 4 + 7 * 4 + 4 * 13 + 13
    assert {e["source"] for e in wang.edges if e["target"] == "logits"} == {
        f"L{l}H{h}" for c in ("name mover", "backup name mover", "negative name mover") for l, h in wang.by_class()[c]}


def test_merullo_heads():
    ioi, co = graph.literature(SHIPPED[1]), graph.literature(SHIPPED[2])
    assert len(ioi.heads()) == 12 and len(co.heads()) == 12
    assert ioi.by_class()["inhibition"] == [(12, 3), (13, 4), (13, 13), (13, 14)]
    assert co.by_class()["content gatherer"] == [(11, 6), (11, 7), (12, 15)]
    assert "UNVERIFIED" in ioi.notes and "UNVERIFIED" in co.notes
    assert graph.compare(ioi, co)["overlap"] == pytest.approx(9 / 15)  # 5 movers + 19.1 + 3 inhibition


def test_save_load_round_trip(wang, tmp_path):
    p = tmp_path / "c.json"
    wang.save(p)
    again = graph.Circuit.load(p)
    assert again == wang
    again.save(tmp_path / "d.json")
    assert (tmp_path / "d.json").read_text() == p.read_text()  # deterministic bytes
    assert p.read_text() == (graph.CIRCUITS_DIR / "gpt2-small_ioi_wang2022.json").read_text()


def test_networkx_round_trip(wang):
    G = graph.to_networkx(wang)
    assert G.number_of_nodes() == 27 and G.number_of_edges() == 101
    assert G.graph["model"] == "gpt2-small" and G.nodes["L9H9"]["class"] == "name mover"
    assert graph.from_networkx(G) == wang
    H = nx.node_link_graph(nx.node_link_data(G, edges="edges"), directed=True, multigraph=False, edges="edges")
    assert graph.from_networkx(H) == wang
    # the file itself is node-link data
    F = nx.node_link_graph(wang.to_dict(), directed=True, multigraph=False, edges="edges")
    assert set(F.edges) == set(G.edges) and F.nodes["L5H5"]["position"] == "S2"


def _head(i=0, **kw):
    return {"id": f"L1H{i}", "kind": "head", "layer": 1, "head": i, "position": None, "class": None, "score": None, **kw}


def _bad(mutate):
    def make(d):
        mutate(d)
        return d
    return make


CORRUPTIONS = {
    "wrong schema": (_bad(lambda d: d.update(schema="interp.circuit/2")), "schema"),
    "weird kind": (_bad(lambda d: d["nodes"][0].update(kind="weird")), "kind 'weird'"),
    "duplicate id": (_bad(lambda d: d["nodes"].append(_head(0))), "duplicate node id 'L1H0'"),
    "edge to missing node": (_bad(lambda d: d["edges"].append({"source": "L1H0", "target": "L9H9", "score": None})),
                             "target 'L9H9' is not a node id"),
    "head null": (_bad(lambda d: d["nodes"][1].update(head=None)), "nodes[1] (L1H1): a head node needs an integer head"),
    "string score": (_bad(lambda d: d["nodes"][0].update(score="0.5")), "score must be a finite number"),
    "nan score": (_bad(lambda d: d["nodes"][0].update(score=float("nan"))), "score must be a finite number"),
    "non-head with head": (_bad(lambda d: d["nodes"][2].update(head=3)), "head must be null for a logits node"),
    "unknown top key": (_bad(lambda d: d.update(extra=1)), "unknown keys ['extra']"),
    "bad date": (_bad(lambda d: d["provenance"].update(date="2024-13-01")), "provenance.date"),
}


@pytest.fixture
def small():
    return graph.from_heads({(1, 0): "a", (1, 1): "b"}, "toy", "ioi", edges=[((1, 0), (1, 1)), ("L1H1", "logits", 0.5)],
                            provenance={"date": "2024-01-02"})


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_corrupted_files_rejected(name, small, tmp_path):
    mutate, message = CORRUPTIONS[name]
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(mutate(small.to_dict())))  # NaN is written as the JSON extension NaN
    with pytest.raises(CircuitError) as err:
        graph.Circuit.load(p)
    text = str(err.value)
    assert message in text and str(p) in text and "\n" not in text


def test_truncated_and_missing_files_rejected(small, tmp_path):
    p = tmp_path / "cut.json"
    small.save(p)
    p.write_text(p.read_text()[:50])
    with pytest.raises(CircuitError, match="not a readable JSON file"):
        graph.Circuit.load(p)
    with pytest.raises(CircuitError, match="no circuit 'nope'.*gpt2-small_ioi_wang2022"):
        graph.literature("nope")


def test_from_heads_builds_nodes(small):
    assert [n["id"] for n in small.nodes] == ["L1H0", "L1H1", "logits"]
    assert small.edges == [{"source": "L1H0", "target": "L1H1", "score": None},
                           {"source": "L1H1", "target": "logits", "score": 0.5}]
    two = graph.from_heads([(9, 9)], "m", "t", positions={(9, 9): ["S2", "END"]})
    assert [n["id"] for n in two.nodes] == ["L9H9@S2", "L9H9@END"] and two.heads() == [(9, 9)]


def test_compare(wang, small):
    same = graph.compare(wang, wang)
    assert same["overlap"] == 1 and not same["only_a"] and len(same["both"]) == 26
    assert all(v["overlap"] == 1 for v in same["by_class"].values())
    assert graph.compare(wang, small)["overlap"] == 0
    a = graph.from_heads({(0, 1): "x", (1, 2): "x", (2, 3): "y"}, "m", "t")
    b = graph.from_heads({(1, 2): "x", (2, 3): "x", (4, 0): "y"}, "m", "t")
    c = graph.compare(a, b)
    assert c["overlap"] == pytest.approx(2 / 4)
    assert c["only_a"] == [(0, 1)] and c["only_b"] == [(4, 0)] and c["both"] == [(1, 2), (2, 3)]
    assert c["by_class"]["x"] == {"only_a": [(0, 1)], "only_b": [(2, 3)], "both": [(1, 2)], "overlap": 1 / 3}
    assert c["by_class"]["y"]["overlap"] == 0


def test_from_result_uses_real_labels():
    values = torch.ones(3, 4)  # = corrupted: normalised 0
    values[1, 2] = 3.0   # layer 5, head 2: normalised (3 - 1) / (2 - 1) = 2
    values[2, 0] = -1.5  # layer 9, head 0: normalised -2.5, the largest |score|
    values[0, 3] = 1.6   # layer 0, head 3: normalised 0.6
    r = Result(values, ("layer", "head"), "head_out", clean=2.0, corrupted=1.0,
               meta={"index": {"layer": [0, 5, 9], "head": [0, 1, 2, 3]}, "model": "toy", "n_prompts": 8})
    c = graph.from_result(r, k=2, task="ioi", method="patch")
    assert sorted(c.heads()) == [(5, 2), (9, 0)]
    assert {n["id"]: n["score"] for n in c.nodes} == {"L5H2": pytest.approx(2.0), "L9H0": pytest.approx(-2.5)}
    assert c.model == "toy" and c.provenance["n_prompts"] == 8 and c.provenance["score"] == "normalised"
    assert sorted(graph.from_result(r, threshold=0.5, task="ioi").heads()) == [(0, 3), (5, 2), (9, 0)]
    with pytest.raises(CircuitError, match="exactly one of k or threshold"):
        graph.from_result(r, task="ioi")


def test_draw_puts_later_layers_higher(wang):
    import matplotlib.pyplot as plt

    ax = graph.draw(wang, highlight=[(9, 9)])
    texts = {t.get_text(): t.get_position() for t in ax.texts if t.get_text()}
    assert len(texts) == 27
    assert texts["L9H9"][1] > texts["L2H2"][1] and texts["logits"][1] > texts["L11H10"][1]
    assert texts["L9H9"][0] > texts["L9H6"][0]  # heads along x
    assert ax.get_legend() is not None
    plt.close(ax.figure)
