"""Edge-level circuits: how much of the behaviour a set of edges carries, and the curve over sizes.

A circuit C is a set of edges (``interp.edges``). It is evaluated as MIB (Mueller et al. 2025) and
EAP-IG (Hanna et al. 2024) do: run the clean prompts, and give every edge *outside* C its
corrupted value, i.e. each receiver's input becomes

    x_r := x_r - sum over senders s of edges s -> r not in C of (c_s(now) - c_s(corrupted)),

c_s(now) being the sender's output in this very run (so what flows along the kept edges is
recomputed) and c_s(corrupted) its output on the corrupted prompts. With C = every edge the run is
the clean run; with C empty every receiver reads its corrupted input and the run is the corrupted
one. The faithfulness of C is

    f(C) = (M(C) - M(empty)) / (M(all) - M(empty)).

``faithfulness_curve`` ranks edges by |score| (of any method: exact, EAP, EAP-IG), keeps the top
fraction p of them for p on a grid, and returns f at each p with two areas over the grid
(trapezoids on the fraction axis): MIB's CPR, the area under f (higher: a smaller circuit carries
more), and CMD, the area under |1 - f| (lower: closer to the model at every size). ``scope``
restricts the ablations to some edges (the rest always keep their clean value), for a curve over
the edges a CPU run scored exactly.
"""
from __future__ import annotations

import torch

from interp import edges as E
from interp.errors import ComponentError
from interp.hooks import hook_name
from interp.metrics import logit_diff
from interp.reference import EDGE_HOOKS, _edge_inputs, readout, sender_contributions
from interp.tasks.prompts import PromptSet, on_model_device

FRACTIONS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def circuit_metric(model, prompts: PromptSet, keep: set[E.Edge], scope: list[E.Edge], metric=logit_diff,
                   corrupted_contributions: dict | None = None) -> float:
    """M(C): the mean metric of the clean prompts with every edge of ``scope`` not in ``keep``
    carrying its corrupted value (module docstring).

    One forward: each sender's change c_s(now) - c_s(corrupted) is written into one buffer
    [senders, batch, pos, d_model] as the sender runs, and each receiver subtracts the sum of its
    ablated senders' rows (one gather and sum per receiver, not one operation per edge)."""
    prompts = on_model_device(model, prompts)
    L = model.cfg.n_layers
    corr = corrupted_contributions or sender_contributions(model, prompts.corrupted_tokens)
    ablated: dict[E.Receiver, list[E.Sender]] = {}
    for e in scope:
        if e not in keep:
            ablated.setdefault(e.receiver, []).append(e.sender)
    if not ablated:
        return float(readout(model, prompts.clean_tokens, prompts, metric))
    # a row of the buffer for every sender some receiver reads ablated, in forward order (a fixed
    # order of the sums, so the same circuit gives the same bits in every process)
    read = {s for ss in ablated.values() for s in ss}
    slot = {s: i for i, s in enumerate(s for s in E.senders(model.cfg) if s in read)}
    rows = {r: torch.tensor(sorted(slot[s] for s in ss), device=corr["embed"].device) for r, ss in ablated.items()}
    heads_of = {l: [(s.head, i) for s, i in slot.items() if s.kind == "head" and s.layer == l] for l in range(L)}
    W_O = model.W_O.detach()
    delta = corr["embed"].new_zeros((len(slot), *corr["embed"].shape))  # [senders, batch, pos, d_model]

    def write(i, change):
        delta[i] = change

    def capture(key):
        def hook(act, hook=None):
            if key == "embed":
                if E.Sender("embed") in slot:
                    write(slot[E.Sender("embed")], act - corr["embed"])
            elif key[0] == "head":
                pairs = heads_of[key[1]]
                if pairs:
                    hs = [h for h, _ in pairs]
                    now = torch.einsum("bthe,hed->bthd", act[:, :, hs], W_O[key[1]][hs])
                    change = now - corr["head", key[1]][:, :, hs]
                    for j, (_, i) in enumerate(pairs):
                        write(i, change[:, :, j])
            elif E.Sender("mlp", key[1]) in slot:
                write(slot[E.Sender("mlp", key[1])], act - corr["mlp", key[1]])
        return hook

    def correct(r: E.Receiver, head: int | None):
        idx = rows[r]

        def hook(act, hook=None):
            change = delta.index_select(0, idx).sum(0).to(act.dtype)
            act = act.clone()
            if head is None:
                act -= change
            else:
                act[:, :, head] -= change
            return act
        return hook

    hooks = [(hook_name("resid_pre", 0), capture("embed"))]
    for l in range(L):
        hooks += [(hook_name("z", l), capture(("head", l))), (hook_name("mlp_out", l), capture(("mlp", l)))]
    for r in ablated:
        if r.kind == "logits":
            hooks.append((hook_name("resid_post", L - 1), correct(r, None)))
        else:
            hooks.append((EDGE_HOOKS[r.kind].format(r.layer), correct(r, None if r.kind == "mlp" else r.head)))
    # the capture hooks must see each sender before any receiver reads it: TransformerLens runs the
    # hooks of one point in order, and a sender's point fires before its receivers' in the forward
    with _edge_inputs(model):
        return float(readout(model, prompts.clean_tokens, prompts, metric, hooks))


def faithfulness_curve(model, prompts: PromptSet, scores: E.EdgeScores, fractions=FRACTIONS,
                       scope: list[E.Edge] | None = None, metric=logit_diff) -> dict:
    """f(C_p) for C_p = the top fraction p of ``scores``' edges by |score|, with CPR and CMD."""
    prompts = on_model_device(model, prompts)
    scope = list(scores.edges) if scope is None else list(scope)
    missing = set(scope) - set(scores.edges)
    if missing:
        raise ComponentError(f"{len(missing)} edges of the scope have no score, e.g. {next(iter(missing)).name}")
    ranked = scores.restrict(scope).top(len(scope))
    corr = sender_contributions(model, prompts.corrupted_tokens)
    full = circuit_metric(model, prompts, set(scope), scope, metric, corr)
    empty = circuit_metric(model, prompts, set(), scope, metric, corr)
    points = []
    for p in fractions:
        n = round(p * len(scope))
        m = full if n == len(scope) else empty if n == 0 else circuit_metric(model, prompts, set(ranked[:n]), scope,
                                                                            metric, corr)
        points.append({"fraction": p, "n_edges": n, "metric": m, "faithfulness": (m - empty) / (full - empty)})
    f = [pt["faithfulness"] for pt in points]
    xs = list(fractions)
    area = lambda ys: sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))  # noqa: E731
    return {"method": scores.method, "points": points, "full": full, "empty": empty, "n_scope": len(scope),
            "cpr": area(f), "cmd": area([abs(1 - y) for y in f])}
