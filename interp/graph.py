"""Circuits as data: one JSON format (schema ``interp.circuit/1``) shared by every analysis.

A circuit is a small directed graph. Nodes are model components (attention heads, MLPs, the
embedding, the logits); edges are the paths between them. The JSON is networkx "node-link" data
with a few required fields on top, so ``networkx.node_link_graph(c.to_dict(), edges="edges")``
reads a circuit file as it is::

    {"schema": "interp.circuit/1", "model": "gpt2-small", "task": "ioi", "metric": "logit_diff",
     "method": "path_patching", "provenance": {"seed": 0, "n_prompts": 100, "ablation": "mean",
        "package_version": "0.1.0", "date": "2024-05-01", "source": null},
     "nodes": [{"id": "L9H9", "kind": "head", "layer": 9, "head": 9, "position": "END",
                "class": "name mover", "score": 0.31}, ...],
     "edges": [{"source": "L9H9", "target": "logits", "score": null}, ...]}

Edge-level circuits (``interp.edges``) name the three inputs of a head as nodes of their own:
``{"id": "L10H7.q", "kind": "head", "layer": 10, "head": 7, "input": "q", ...}`` (k and v count
key/value heads under grouped-query attention); an MLP's node stands for its input and its output.
The optional ``input`` key is null (or absent) on every other node.

    >>> from interp import graph
    >>> wang = graph.literature("gpt2-small_ioi_wang2022")
    >>> graph.compare(wang, mine)["overlap"]           # Jaccard overlap of the two head sets
"""
from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Iterable, Mapping

from interp.errors import CircuitError
from interp.stats import jaccard

SCHEMA = "interp.circuit/1"
KINDS = ("head", "mlp", "embed", "logits")
TOP_KEYS = ("schema", "model", "task", "metric", "method", "provenance", "nodes", "edges")
PROVENANCE_KEYS = ("seed", "n_prompts", "ablation", "package_version", "date", "source")
NODE_KEYS = ("id", "kind", "layer", "head", "position", "class", "score", "input")
INPUTS = ("q", "k", "v")
EDGE_KEYS = ("source", "target", "score")
CIRCUITS_DIR = Path(__file__).resolve().parents[1] / "circuits"

Head = tuple[int, int]


# ---------------------------------------------------------------------------------- validation
def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_score(x: Any) -> bool:
    return x is None or (isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x))


def validate(d: Any, origin: str | None = None) -> dict:
    """Check a circuit dict against the schema and return it normalised: every node and edge key
    present (missing optional ones become null), edges ordered by their nodes' order.

    Raises CircuitError with one line: the file (``origin``), where (``nodes[3] (L9H9)``), what.
    """
    pre = f"{origin}: " if origin else ""

    def need(ok: Any, where: str, msg: str) -> None:
        if not ok:
            raise CircuitError(f"{pre}{where}: {msg}")

    need(isinstance(d, dict), "top level", f"expected a JSON object, got {type(d).__name__}")
    need(d.get("schema") == SCHEMA, "schema", f"expected {SCHEMA!r}, got {d.get('schema')!r}")
    need(not (m := [k for k in TOP_KEYS if k not in d]), "top level", f"missing keys {m}")
    need(not (u := sorted(set(d) - set(TOP_KEYS) - {"notes"})), "top level", f"unknown keys {u}")
    for k in ("model", "task", "metric", "method"):
        need(isinstance(d[k], str) and d[k], k, f"expected a non-empty string, got {d[k]!r}")
    need(isinstance(d.get("notes", ""), str), "notes", f"expected a string, got {d.get('notes')!r}")

    prov = d["provenance"]
    need(isinstance(prov, dict), "provenance", f"expected an object, got {prov!r}")
    need(not (m := [k for k in PROVENANCE_KEYS if k not in prov]), "provenance", f"missing keys {m}")
    for k in ("seed", "n_prompts"):
        need(prov[k] is None or _is_int(prov[k]), f"provenance.{k}", f"expected an integer or null, got {prov[k]!r}")
    for k in ("ablation", "source"):
        need(prov[k] is None or isinstance(prov[k], str), f"provenance.{k}", f"expected a string or null, got {prov[k]!r}")
    need(isinstance(prov["package_version"], str), "provenance.package_version", "expected a string")
    need(_is_date(prov["date"]), "provenance.date", f"expected 'YYYY-MM-DD', got {prov['date']!r}")

    need(isinstance(d["nodes"], list), "nodes", "expected a list")
    need(isinstance(d["edges"], list), "edges", "expected a list")
    nodes: list[dict] = []
    for i, n in enumerate(d["nodes"]):
        where = f"nodes[{i}]"
        need(isinstance(n, dict), where, f"expected an object, got {n!r}")
        need(isinstance(n.get("id"), str) and n["id"], where, f"id must be a non-empty string, got {n.get('id')!r}")
        where = f"nodes[{i}] ({n['id']})"
        need(not (u := sorted(set(n) - set(NODE_KEYS))), where, f"unknown keys {u}")
        n = {k: n.get(k) for k in NODE_KEYS}
        need(n["kind"] in KINDS, where, f"kind {n['kind']!r} is not one of {', '.join(KINDS)}")
        layer_ok = _is_int(n["layer"]) and n["layer"] >= 0
        need(layer_ok or (n["layer"] is None and n["kind"] in ("embed", "logits")), where,
             f"layer must be an integer >= 0 for a {n['kind']} node, got {n['layer']!r}")
        if n["kind"] == "head":
            need(_is_int(n["head"]) and n["head"] >= 0, where,
                 f"a head node needs an integer head >= 0, got {n['head']!r}")
        else:
            need(n["head"] is None, where, f"head must be null for a {n['kind']} node, got {n['head']!r}")
        for k in ("position", "class"):
            need(n[k] is None or isinstance(n[k], str), where, f"{k} must be a string or null, got {n[k]!r}")
        need(_is_score(n["score"]), where, f"score must be a finite number or null, got {n['score']!r}")
        need(n["input"] is None or (n["input"] in INPUTS and n["kind"] == "head"), where,
             f"input must be null, or q, k or v on a head node, got {n['input']!r}")
        need(n["id"] not in {m["id"] for m in nodes}, where, f"duplicate node id {n['id']!r}")
        nodes.append(n)

    order = {n["id"]: i for i, n in enumerate(nodes)}
    edges: list[dict] = []
    pairs: set[tuple[str, str]] = set()
    for i, e in enumerate(d["edges"]):
        where = f"edges[{i}]"
        need(isinstance(e, dict), where, f"expected an object, got {e!r}")
        need(not (u := sorted(set(e) - set(EDGE_KEYS))), where, f"unknown keys {u}")
        e = {k: e.get(k) for k in EDGE_KEYS}
        for end in ("source", "target"):
            need(isinstance(e[end], str) and e[end] in order, where, f"{end} {e[end]!r} is not a node id")
        need(_is_score(e["score"]), where, f"score must be a finite number or null, got {e['score']!r}")
        need((e["source"], e["target"]) not in pairs, where, f"duplicate edge {e['source']} -> {e['target']}")
        pairs.add((e["source"], e["target"]))
        edges.append(e)
    edges.sort(key=lambda e: (order[e["source"]], order[e["target"]]))
    return {**d, "provenance": dict(prov), "nodes": nodes, "edges": edges}


def _is_date(x: Any) -> bool:
    try:
        return bool(re.fullmatch(r"\d{4}-\d{2}-\d{2}", x)) and bool(date.fromisoformat(x))
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------------------------ Circuit
@dataclass
class Circuit:
    """A validated circuit (see the module docstring for the fields). Build one with
    ``from_heads``, ``from_result``, ``Circuit.load`` or ``literature``; nodes and edges are dicts."""

    model: str
    task: str
    metric: str
    method: str
    provenance: dict
    nodes: list[dict]
    edges: list[dict] = field(default_factory=list)
    notes: str | None = None

    def __post_init__(self):
        v = validate(self.to_dict())
        self.nodes, self.edges = v["nodes"], v["edges"]

    def heads(self) -> list[Head]:
        """The (layer, head) pairs of the head nodes, in node order, each once."""
        return list(dict.fromkeys((n["layer"], n["head"]) for n in self.nodes if n["kind"] == "head"))

    def by_class(self) -> dict[str, list[Head]]:
        """class -> its (layer, head) pairs; heads without a class are left out."""
        out: dict[str, list[Head]] = {}
        for n in self.nodes:
            if n["kind"] == "head" and n["class"] is not None and (n["layer"], n["head"]) not in out.get(n["class"], []):
                out.setdefault(n["class"], []).append((n["layer"], n["head"]))
        return out

    def to_dict(self) -> dict:
        d = {"schema": SCHEMA, "model": self.model, "task": self.task, "metric": self.metric,
             "method": self.method, "provenance": self.provenance, "nodes": self.nodes, "edges": self.edges}
        if self.notes is not None:
            d["notes"] = self.notes
        return copy.deepcopy(d)

    @classmethod
    def from_dict(cls, d: Any, origin: str | None = None) -> "Circuit":
        """Validate ``d`` (errors name ``origin``) and build the Circuit."""
        v = validate(d, origin)
        return cls(**{k: v[k] for k in TOP_KEYS if k != "schema"}, notes=v.get("notes"))

    def save(self, path: str | Path) -> None:
        """Write deterministic JSON (sorted keys, indent 1; a node's ``input`` only where it has
        one); refuses to write an invalid circuit."""
        d = validate(self.to_dict())
        d["nodes"] = [{k: v for k, v in n.items() if k != "input" or v is not None} for n in d["nodes"]]
        text = json.dumps(d, indent=1, sort_keys=True, allow_nan=False)
        Path(path).write_text(text + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> "Circuit":
        """Read and validate a circuit file; anything wrong raises CircuitError naming the file."""
        try:
            d = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CircuitError(f"{path}: not a readable JSON file ({e})") from None
        return cls.from_dict(d, origin=str(path))


# ----------------------------------------------------------------------------------- builders
def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("interp")
    except metadata.PackageNotFoundError:
        return "unknown"


def _special_node(node_id: str) -> dict | None:
    """The node an edge may name without it being listed: "embed", "logits" or "MLP{layer}"."""
    blank = dict.fromkeys(NODE_KEYS)
    if node_id in ("embed", "logits"):
        return {**blank, "id": node_id, "kind": node_id}
    if m := re.fullmatch(r"MLP(\d+)", node_id):
        return {**blank, "id": node_id, "kind": "mlp", "layer": int(m.group(1))}
    return None


def from_heads(heads: Mapping[Head, str | None] | Iterable[Head], model: str, task: str,
               metric: str = "logit_diff", method: str = "manual", provenance: dict | None = None,
               scores: Mapping[Head, float] | None = None,
               positions: Mapping[Head, str | list[str]] | None = None,
               edges: Iterable[tuple] = (), notes: str | None = None) -> Circuit:
    """Build a circuit from heads: a dict (layer, head) -> class, or a plain list of (layer, head).

    Nodes come out sorted by (layer, head). A head with a list of positions gets one node per
    position, id "L9H9@END". ``edges`` are (source, target[, score]) with node ids or (layer, head)
    pairs; "embed", "logits" and "MLP{l}" nodes are added when an edge names them. ``provenance``
    overrides the defaults (nulls, this package's version, today's date).
    """
    classes = {tuple(h): c for h, c in heads.items()} if isinstance(heads, Mapping) else dict.fromkeys(map(tuple, heads))
    scores, positions = scores or {}, positions or {}
    nodes = []
    for layer, head in sorted(classes):
        pos = positions.get((layer, head))
        many = isinstance(pos, (list, tuple))
        for p in pos if many else [pos]:
            nodes.append({"id": f"L{layer}H{head}" + (f"@{p}" if many else ""), "kind": "head", "layer": layer,
                          "head": head, "position": p, "class": classes[layer, head], "score": scores.get((layer, head))})
    ids = {n["id"] for n in nodes}
    out_edges = []
    for s, t, *score in edges:
        s, t = (x if isinstance(x, str) else f"L{x[0]}H{x[1]}" for x in (s, t))
        for x in (s, t):
            if x not in ids and (extra := _special_node(x)):
                nodes.append(extra)
                ids.add(x)
        out_edges.append({"source": s, "target": t, "score": score[0] if score else None})
    prov = {"seed": None, "n_prompts": None, "ablation": None, "package_version": _package_version(),
            "date": date.today().isoformat(), "source": None, **(provenance or {})}
    return Circuit.from_dict({"schema": SCHEMA, "model": model, "task": task, "metric": metric, "method": method,
                              "provenance": prov, "nodes": nodes, "edges": out_edges,
                              **({"notes": notes} if notes is not None else {})})


def from_edges(edges: Iterable[tuple[str, str, float | None]], model: str, task: str,
               metric: str = "logit_diff", method: str = "edge patching", provenance: dict | None = None,
               notes: str | None = None) -> Circuit:
    """An edge-level circuit from (sender, receiver, score) names of ``interp.edges``: senders
    "embed", "L{l}H{h}", "MLP{l}"; receivers "L{l}H{h}.q|k|v", "MLP{l}", "logits". Nodes are made
    from the names, in forward order."""
    blank = dict.fromkeys(NODE_KEYS)
    nodes: dict[str, dict] = {}

    def node(name: str) -> dict:
        if name in ("embed", "logits"):
            return {**blank, "id": name, "kind": name}
        if m := re.fullmatch(r"MLP(\d+)", name):
            return {**blank, "id": name, "kind": "mlp", "layer": int(m.group(1))}
        if m := re.fullmatch(r"L(\d+)H(\d+)(?:\.([qkv]))?", name):
            return {**blank, "id": name, "kind": "head", "layer": int(m.group(1)), "head": int(m.group(2)),
                    "input": m.group(3)}
        raise CircuitError(f"not a node name of an edge graph: {name!r}")

    out_edges = []
    for s, t, score in edges:
        for x in (s, t):
            nodes.setdefault(x, node(x))
        out_edges.append({"source": s, "target": t, "score": None if score is None else float(score)})

    def when(n: dict) -> tuple:
        rank = {"embed": -1, "logits": 10**9}.get(n["kind"], n["layer"])
        return (rank, n["kind"] == "mlp", n["head"] if n["head"] is not None else -1, n["input"] or "")

    prov = {"seed": None, "n_prompts": None, "ablation": None, "package_version": _package_version(),
            "date": date.today().isoformat(), "source": None, **(provenance or {})}
    return Circuit.from_dict({"schema": SCHEMA, "model": model, "task": task, "metric": metric, "method": method,
                              "provenance": prov, "nodes": sorted(nodes.values(), key=when), "edges": out_edges,
                              **({"notes": notes} if notes is not None else {})})


def from_result(result, k: int | None = None, threshold: float | None = None, *, model: str | None = None,
                task: str | None = None, method: str | None = None, provenance: dict | None = None,
                notes: str | None = None) -> Circuit:
    """The heads of a ("layer", "head") Result with the largest |normalised score| as a circuit.

    Give ``k`` (top k) or ``threshold`` (|score| >= threshold). The score is ``result.normalised()``
    (raw values if the Result has no clean/corrupted baselines), stored on each node. Layer and head
    labels are the Result's real ones from ``meta["index"]`` (a sweep over layers [0, 5, 9] labels
    its rows 0, 5, 9, not 0, 1, 2).
    """
    import torch

    if (k is None) == (threshold is None):
        raise CircuitError("from_result: give exactly one of k or threshold")
    if tuple(result.axes) != ("layer", "head"):
        raise CircuitError(f"from_result needs a Result with axes ('layer', 'head'), got {tuple(result.axes)}")
    normalised = result.clean is not None and result.corrupted is not None
    vals = (result.normalised() if normalised else result.values).flatten()
    n_layers, n_heads = result.values.shape
    index = result.meta.get("index", {})
    layers = [int(x) for x in index.get("layer", range(n_layers))]
    heads = [int(x) for x in index.get("head", range(n_heads))]
    order = torch.argsort(vals.abs(), descending=True, stable=True).tolist()
    chosen = order[:k] if k is not None else [i for i in order if abs(float(vals[i])) >= threshold]
    scores = {(layers[i // n_heads], heads[i % n_heads]): float(vals[i]) for i in chosen}
    meta = result.meta
    prov = {"seed": meta.get("seed"), "n_prompts": meta.get("n_prompts"), "ablation": meta.get("ablation"),
            "score": "normalised" if normalised else "raw",
            "selection": f"top {k} by |score|" if k is not None else f"|score| >= {threshold}", **(provenance or {})}
    return from_heads(list(scores), model or meta.get("model"), task or meta.get("task"), metric=result.metric,
                      method=method or meta.get("method") or result.component, provenance=prov, scores=scores,
                      notes=notes)


# ----------------------------------------------------------------------------------- networkx
def to_networkx(circuit: Circuit):
    """A networkx DiGraph: node attributes = the node dicts, edge attribute ``score``, graph
    attributes = schema, model, task, metric, method, provenance (and notes)."""
    import networkx as nx

    d = circuit.to_dict()
    G = nx.DiGraph(**{k: v for k, v in d.items() if k not in ("nodes", "edges")})
    for n in d["nodes"]:
        G.add_node(n["id"], **n)
    for e in d["edges"]:
        G.add_edge(e["source"], e["target"], score=e["score"])
    return G


def from_networkx(G) -> Circuit:
    """The inverse of ``to_networkx``; also reads ``node_link_graph(node_link_data(G))``."""
    nodes = [{**attrs, "id": n} for n, attrs in G.nodes(data=True)]
    edges = [{**attrs, "source": s, "target": t} for s, t, attrs in G.edges(data=True)]
    return Circuit.from_dict({**G.graph, "nodes": nodes, "edges": edges})


# ------------------------------------------------------------------------------------ compare
def _overlap(A: set, B: set) -> dict:
    return {"only_a": sorted(A - B), "only_b": sorted(B - A), "both": sorted(A & B), "overlap": jaccard(A, B)}


def compare(a: Circuit, b: Circuit) -> dict:
    """Heads only in a, only in b, in both, and overlap = |A & B| / |A | B| (Jaccard, as Merullo et
    al.; 1.0 for two empty circuits). Positions are ignored. If both circuits have classes,
    ``by_class`` gives the same breakdown per class name."""
    out = _overlap(set(a.heads()), set(b.heads()))
    ca, cb = a.by_class(), b.by_class()
    if ca and cb:
        out["by_class"] = {c: _overlap(set(ca.get(c, [])), set(cb.get(c, []))) for c in sorted(set(ca) | set(cb))}
    return out


# --------------------------------------------------------------------------------------- draw
def layout(circuit: Circuit) -> dict[str, tuple[float, float]]:
    """Fixed node positions: y = layer (embed below layer 0, logits above the last layer),
    x = head index, MLPs at x = -1.5; a head at several positions is drawn side by side."""
    layers = [n["layer"] for n in circuit.nodes if n["layer"] is not None]
    top = max(layers, default=0) + 1
    mid = max((n["head"] for n in circuit.nodes if n["head"] is not None), default=0) / 2
    pos, seen = {}, {}
    for n in circuit.nodes:
        if n["kind"] in ("embed", "logits"):
            xy = (mid, -1 if n["kind"] == "embed" else top)
        elif n["kind"] == "mlp":
            xy = (-1.5, n["layer"])
        else:
            k = seen[n["layer"], n["head"]] = seen.get((n["layer"], n["head"]), -1) + 1
            xy = (n["head"] + 0.35 * k, n["layer"])
        pos[n["id"]] = (float(xy[0]), float(xy[1]))
    return pos


def draw(circuit: Circuit, ax=None, highlight: Iterable[str | Head] | None = None):
    """A static drawing: layers bottom (early) to top, heads along x, colour = class, edges as
    arrows; ``highlight`` (node ids or (layer, head)) gets a thick ring. Returns the Axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(9, 6))
    pos = layout(circuit)
    classes = sorted({n["class"] for n in circuit.nodes if n["class"] is not None})
    cmap = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    colour = {c: cmap(i % cmap.N) for i, c in enumerate(classes)}
    marked = {h if isinstance(h, str) else f"L{h[0]}H{h[1]}" for h in (highlight or ())}
    for e in circuit.edges:
        ax.annotate("", xy=pos[e["target"]], xytext=pos[e["source"]],
                    arrowprops=dict(arrowstyle="->", color="0.6", lw=0.6, shrinkA=9, shrinkB=9), zorder=1)
    for n in circuit.nodes:
        x, y = pos[n["id"]]
        hot = n["id"] in marked or n["id"].split("@")[0] in marked
        ax.scatter(x, y, s=420, color=colour.get(n["class"], "0.85"), edgecolors="black",
                   linewidths=3 if hot else 0.5, zorder=2)
        ax.text(x, y, n["id"], ha="center", va="center", fontsize=6, zorder=3)
    for c in classes:
        ax.scatter([], [], color=colour[c], label=c)
    if classes:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"{circuit.model} / {circuit.task} ({circuit.method})")
    ax.margins(0.08)
    return ax


# --------------------------------------------------------------------------------- literature
def list_circuits(folder: str | Path | None = None) -> list[str]:
    """Short names of the circuit files in ``folder`` (default: the repo's ``circuits/``)."""
    return sorted(p.stem for p in Path(folder or CIRCUITS_DIR).glob("*.json"))


def literature(name: str, folder: str | Path | None = None) -> Circuit:
    """Load a circuit by short name, e.g. ``literature("gpt2-small_ioi_wang2022")``."""
    path = Path(folder or CIRCUITS_DIR) / f"{name.removesuffix('.json')}.json"
    if not path.exists():
        raise CircuitError(f"no circuit {name!r} in {path.parent}; available: {', '.join(list_circuits(folder)) or 'none'}")
    return Circuit.load(path)
