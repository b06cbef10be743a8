"""The edge graph of a model: which component writes into which component's input.

Edge-level circuits (EAP, Syed et al. 2023; EAP-IG, Hanna et al. 2024; auto-circuit; the MIB
benchmark) score the *edges* of the residual stream, not its nodes:

* senders write into the residual stream: ``embed`` (token and position embedding), every head
  ``L{l}H{h}`` (its z times its W_O, without the shared output bias) and every ``MLP{l}``;
* receivers read from it: every head's query input ``L{l}H{h}.q`` (per query head), key and value
  inputs ``L{l}H{g}.k`` / ``.v`` (per key/value head g under grouped-query attention), every MLP's
  input ``MLP{l}``, and the ``logits`` (the final residual stream);
* an edge runs from each sender to each later receiver: layer l's heads write after layer l's
  attention reads, so they feed layer l's MLP and everything after it.

An edge s -> r is **patched** (denoising, the default) by adding the sender's change to that one
receiver's input: x_r := x_r(base) + c_s(source) - c_s(base), with base = the corrupted run and
source = the clean run; every other input stays as in the base run, and everything downstream of
the receiver is recomputed. Its score is metric(patched) - metric(base), averaged over prompts.
``interp.edge_sweep`` computes it exactly for many edges per forward; ``interp.reference`` by one
hooked forward per edge; ``interp.edge_attribution`` approximates it (EAP, EAP-IG).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from interp.errors import ComponentError


@dataclass(frozen=True)
class Sender:
    """A component writing into the residual stream. kind: embed, head or mlp."""

    kind: str
    layer: int = -1
    head: int | None = None

    @property
    def name(self) -> str:
        return "embed" if self.kind == "embed" else f"L{self.layer}H{self.head}" if self.kind == "head" else f"MLP{self.layer}"

    @property
    def time(self) -> int:
        """Order in the forward: embed 0, layer l's heads 2l+1, its MLP 2l+2."""
        return 0 if self.kind == "embed" else 2 * self.layer + (1 if self.kind == "head" else 2)


@dataclass(frozen=True)
class Receiver:
    """A component reading the residual stream. kind: q, k, v (a head's input; k and v index
    key/value heads), mlp (an MLP's input) or logits (the final residual stream)."""

    kind: str
    layer: int = -1
    head: int | None = None

    @property
    def name(self) -> str:
        if self.kind in ("q", "k", "v"):
            return f"L{self.layer}H{self.head}.{self.kind}"
        return f"MLP{self.layer}" if self.kind == "mlp" else "logits"

    def time(self, n_layers: int) -> int:
        """Order in the forward: layer l's attention reads at 2l+1, its MLP at 2l+2."""
        if self.kind == "logits":
            return 2 * n_layers + 1
        return 2 * self.layer + (1 if self.kind in ("q", "k", "v") else 2)


@dataclass(frozen=True)
class Edge:
    sender: Sender
    receiver: Receiver

    @property
    def name(self) -> str:
        return f"{self.sender.name}->{self.receiver.name}"


def senders(cfg) -> list[Sender]:
    """embed, then per layer its heads and its MLP, in forward order."""
    out = [Sender("embed")]
    for l in range(cfg.n_layers):
        out += [Sender("head", l, h) for h in range(cfg.n_heads)]
        out.append(Sender("mlp", l))
    return out


def receivers(cfg) -> list[Receiver]:
    """Per layer: the query inputs, key inputs, value inputs of its heads, then its MLP input;
    then the logits."""
    Hkv = cfg.n_key_value_heads or cfg.n_heads
    out = []
    for l in range(cfg.n_layers):
        out += [Receiver("q", l, h) for h in range(cfg.n_heads)]
        out += [Receiver(kind, l, g) for kind in ("k", "v") for g in range(Hkv)]
        out.append(Receiver("mlp", l))
    out.append(Receiver("logits"))
    return out


def edges(cfg, receivers_: list[Receiver] | None = None) -> list[Edge]:
    """Every edge (into ``receivers_``, default all), receiver by receiver, senders in order."""
    L = cfg.n_layers
    ss = senders(cfg)
    return [Edge(s, r) for r in (receivers_ if receivers_ is not None else receivers(cfg))
            for s in ss if s.time < r.time(L)]


def parse_receiver(cfg, name: str) -> Receiver:
    """"L23H3.q", "L5H1.k", "MLP7", "logits" -> a Receiver of this model (a clear error if not)."""
    Hkv = cfg.n_key_value_heads or cfg.n_heads
    if name == "logits":
        return Receiver("logits")
    try:
        if name.startswith("MLP"):
            r = Receiver("mlp", int(name[3:]))
        else:
            head, kind = name.split(".")
            layer, h = head[1:].split("H")
            r = Receiver(kind, int(layer), int(h))
    except ValueError:
        raise ComponentError(f"bad receiver {name!r}: write L{{layer}}H{{head}}.q|k|v, MLP{{layer}} or logits") from None
    if r.kind not in ("q", "k", "v", "mlp") or not 0 <= r.layer < cfg.n_layers:
        raise ComponentError(f"receiver {name!r} does not exist in a {cfg.n_layers}-layer model")
    if r.kind != "mlp" and not 0 <= r.head < (cfg.n_heads if r.kind == "q" else Hkv):
        raise ComponentError(f"receiver {name!r}: head {r.head} does not exist "
                             f"({cfg.n_heads} query heads, {Hkv} key/value heads)")
    return r


def head_inputs(cfg, layer: int, head: int) -> list[Receiver]:
    """The three receivers of query head ``head``: its query, and the key and value of its
    key/value head under grouped-query attention."""
    group = head // (cfg.n_heads // (cfg.n_key_value_heads or cfg.n_heads))
    return [Receiver("q", layer, head), Receiver("k", layer, group), Receiver("v", layer, group)]


def parse_sender(cfg, name: str) -> Sender:
    """"embed", "L9H6", "MLP7" -> a Sender of this model (a clear error if not)."""
    if name == "embed":
        return Sender("embed")
    try:
        if name.startswith("MLP"):
            s = Sender("mlp", int(name[3:]))
        else:
            layer, h = name[1:].split("H") if name.startswith("L") else ("x", "x")
            s = Sender("head", int(layer), int(h))
    except ValueError:
        raise ComponentError(f"bad sender {name!r}: write embed, L{{layer}}H{{head}} or MLP{{layer}}") from None
    if not 0 <= s.layer < cfg.n_layers or (s.kind == "head" and not 0 <= s.head < cfg.n_heads):
        raise ComponentError(f"sender {name!r} does not exist in a {cfg.n_layers}-layer model "
                             f"with {cfg.n_heads} heads per layer")
    return s


def parse_edge(cfg, sender: str, receiver: str) -> Edge:
    """The edge ``sender -> receiver`` by names; an error if the sender does not run before it."""
    e = Edge(parse_sender(cfg, sender), parse_receiver(cfg, receiver))
    if e.sender.time >= e.receiver.time(cfg.n_layers):
        raise ComponentError(f"no edge {e.name}: {sender} does not write before {receiver} reads")
    return e


@dataclass
class EdgeScores:
    """Scores of edges: ``values[i]`` for ``edges[i]`` (metric(patched) - metric(base), or a
    method's estimate of it), with the baselines and what produced them."""

    edges: list[Edge]
    values: torch.Tensor  # [n_edges]
    method: str
    direction: str = "denoise"
    clean: float | None = None
    corrupted: float | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        self.values = self.values.detach().float().cpu()
        if self.values.shape != (len(self.edges),):
            raise ValueError(f"{len(self.edges)} edges but values of shape {tuple(self.values.shape)}")

    def __len__(self) -> int:
        return len(self.edges)

    def by_name(self) -> dict[str, float]:
        return {e.name: float(v) for e, v in zip(self.edges, self.values)}

    def top(self, k: int) -> list[Edge]:
        """The k edges with the largest |score|."""
        idx = self.values.abs().argsort(descending=True)[:k]
        return [self.edges[i] for i in idx.tolist()]

    def restrict(self, edges_: list[Edge]) -> "EdgeScores":
        """The scores of ``edges_`` only (each must be scored here)."""
        at = {e: i for i, e in enumerate(self.edges)}
        missing = [e.name for e in edges_ if e not in at]
        if missing:
            raise ComponentError(f"{len(missing)} edges are not scored here, e.g. {missing[0]}")
        return EdgeScores(list(edges_), self.values[[at[e] for e in edges_]], self.method, self.direction,
                          self.clean, self.corrupted, dict(self.meta))

    def to_circuit(self, model_key: str, task: str, top: int | None = None, **provenance):
        """The edges (all, or the ``top`` by |score|) as an ``interp.circuit/1`` graph with their scores."""
        from interp import graph

        chosen = self.top(top) if top else list(self.edges)
        score = self.by_name()
        return graph.from_edges([(e.sender.name, e.receiver.name, score[e.name]) for e in chosen], model=model_key,
                                task=task, metric=self.meta.get("metric", "logit_diff"),
                                method=f"edge patching: {self.method} ({self.direction})", provenance=provenance)

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"method": self.method, "direction": self.direction, "clean": self.clean,
                                          "corrupted": self.corrupted, "meta": self.meta,
                                          "edges": [e.name for e in self.edges], "values": self.values.tolist()}))
