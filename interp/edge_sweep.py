"""Exact edge patching on the batched engine: every edge of a model, many per forward.

An edge s -> r is patched by adding the sender's change Delta_s = c_s(source) - c_s(base) to the
receiver's input only (``interp.edges``). Exact patching needs one forward per edge (ACDC; the
auto-circuit library batches it, for HookedTransformer and models up to about 1B); here each edge
is a variant of the engine (``interp.sweep``) that starts at its receiver's layer from the cached
base run:

* a query receiver L{l}H{h}.q: head h's query is recomputed from LN1(x_l + Delta_s) and attends to
  the base run's keys and values; the change of its z enters the residual stream through W_O;
* a key or value receiver L{l}H{g}.k|v: that key/value head is recomputed from LN1(x_l + Delta_s)
  and every query head of its group attends again;
* an MLP receiver MLP{l}: the MLP is recomputed from LN2(x_mid + Delta_s), and only its output
  enters the residual stream (the stream itself keeps the base run's value);
* the logits: the final norm and the unembedding read x_final + Delta_s (no layer runs again).

From there the variant runs the rest of the model like any sweep variant. Sender changes come from
the two cached runs (head h: (z_h(source) - z_h(base)) W_O[h], without the output bias; MLP: its
output; embed: the embedding with positions). Every sweep re-runs a sample of its edges through the
hooked two-forward reference (``interp.reference.edge_patch_reference``) and records the evidence.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from interp import edges as E
from interp.errors import EngineUnsupported
from interp.kernels import prefix_attention
from interp.metrics import logit_diff
from interp.sweep import SweepEngine
from interp.tasks.prompts import PromptSet, check_prompts
from interp.verify import SweepCheck, check_edges
from interp.weights import rotate


class EdgeSweep:
    """Exact edge patching for one model and prompt set (``edge_patch`` runs it)."""

    def __init__(self, model, prompts: PromptSet, direction: str = "denoise", metric=logit_diff,
                 memory_budget: int | None = None):
        self.engine = e = SweepEngine(model, prompts, direction, metric, memory_budget)
        if e.edits:
            raise EngineUnsupported("edge patching does not apply interventions registered on the model")
        e.cache_both()
        self.w, self.cfg = e.w, model.cfg
        self.rep = self.cfg.n_heads // (self.cfg.n_key_value_heads or self.cfg.n_heads)
        self._head_deltas: dict[int, torch.Tensor] = {}

    # -- sender changes -------------------------------------------------------------------------
    def delta(self, s: E.Sender) -> torch.Tensor:
        """c_s(source) - c_s(base): [B, T, d]."""
        base, src = self.engine.cache("base"), self.engine.cache("source")
        if s.kind == "embed":
            return src.resid_pre[0] - base.resid_pre[0]
        if s.kind == "mlp":
            return src.mlp_out[s.layer] - base.mlp_out[s.layer]
        if s.layer not in self._head_deltas:  # every head of the layer at once: [B, T, H, d]
            dz = src.z[s.layer] - base.z[s.layer]
            self._head_deltas[s.layer] = torch.einsum("bthe,hed->bthd", dz, self.w.W_O[s.layer])
        return self._head_deltas[s.layer][:, :, s.head]

    # -- one receiver, many senders -------------------------------------------------------------
    def _attend(self, l: int, q, k, v):
        """z of rows q [N, B, T, h, dh] over k, v [N, B, T, 1 or h, dh] (rotary applied here)."""
        w, T = self.w, q.shape[2]
        if w.rotary:
            q, k = rotate(q, self.engine.cos[:T], self.engine.sin[:T]), rotate(k, self.engine.cos[:T], self.engine.sin[:T])
        empty = k[0, :, :0]
        return prefix_attention(q, k, v, empty, empty, w.scale)

    def start(self, r: E.Receiver, D: torch.Tensor):
        """(layer, point, x [N, B, T, d]) where the variants with receiver inputs x_r + D[i] start,
        or ("logits", metric [N, B]) for the logits receiver."""
        e, w = self.engine, self.w
        base = e.cache("base")
        N = D.shape[0]
        l = r.layer
        if r.kind == "logits":
            return "logits", e._final_metric(base.final[None] + D, 0)
        if r.kind == "mlp":
            x = base.resid_mid[l][None] + w.mlp(l, base.resid_mid[l][None] + D)
            return (l + 1, "pre", x) if l + 1 < self.cfg.n_layers else (self.cfg.n_layers, "final", x)
        h = w.norm(base.resid_pre[l][None] + D, w.ln1[l])  # [N, B, T, d]
        expand = lambda t: t[None].expand(N, *t.shape)  # noqa: E731
        g = r.head if r.kind != "q" else r.head // self.rep
        heads = [r.head] if r.kind == "q" else list(range(g * self.rep, (g + 1) * self.rep))
        q, k, v = base.q[l][:, :, heads], base.k[l][:, :, [g]], base.v[l][:, :, [g]]
        which = {"q": (w.W_Q, w.b_Q), "k": (w.W_K, w.b_K), "v": (w.W_V, w.b_V)}[r.kind]
        new = h @ which[0][l, r.head]
        if which[1] is not None:
            new = new + which[1][l, r.head]
        new = new[:, :, :, None]  # [N, B, T, 1, dh]
        q, k, v = (new if r.kind == "q" else expand(q), new if r.kind == "k" else expand(k),
                   new if r.kind == "v" else expand(v))
        dz = self._attend(l, q, k, v) - base.z[l][:, :, heads]  # [N, B, T, heads, dh]
        return l, "mid", base.resid_mid[l] + dz.flatten(-2) @ w.W_O[l, heads].flatten(0, 1)

    def run(self, edges_: list[E.Edge], progress: bool = True) -> torch.Tensor:
        """metric(patched) - metric(base), mean over prompts, for every edge: [n_edges]."""
        e = self.engine
        base_metric = e.cache("base").metric.mean()
        by_receiver: dict[E.Receiver, list[int]] = {}
        for i, edge in enumerate(edges_):
            by_receiver.setdefault(edge.receiver, []).append(i)
        out = torch.empty(len(edges_))
        chunk = e._chunk_size(e.prompts.n_pos)
        bar = tqdm(total=len(edges_), desc="edge patching", disable=not progress, leave=False)
        with torch.no_grad():
            for r, idx in by_receiver.items():
                for i in range(0, len(idx), chunk):
                    part = idx[i:i + chunk]
                    D = torch.stack([self.delta(edges_[j].sender) for j in part])
                    where = self.start(r, D)
                    if where[0] == "logits":
                        vals = where[1].mean(1)
                    else:
                        layer, point, x = where
                        vals = e.run_suffix([(layer, point, x, list(range(len(part))))], 0)
                    out[part] = (vals - base_metric).float().cpu()
                    bar.update(len(part))
        bar.close()
        return out


def edge_patch(model, prompts: PromptSet, edges_: list[E.Edge] | None = None, direction: str = "denoise",
               metric=logit_diff, memory_budget: int | None = None, progress: bool = True, verify: int = 2,
               seed: int = 0) -> E.EdgeScores:
    """Exact scores of ``edges_`` (default: every edge of the model): metric(patched) -
    metric(base), mean over prompts (``interp.edges``). ``verify`` edges are re-run through the
    hooked reference, and the unpatched runs are compared with the bridge's (``interp.verify``).

    Raises EngineUnsupported before any work for what the engine cannot compute exactly (the
    reference, ``interp.reference.edge_patch_reference``, can)."""
    check_prompts(model, prompts)
    edges_ = E.edges(model.cfg) if edges_ is None else list(edges_)
    sweep = EdgeSweep(model, prompts, direction, metric, memory_budget)
    SweepCheck(sweep.engine, "head_out", [], 0, baselines=verify > 0)
    values = sweep.run(edges_, progress)
    verified = check_edges(model, prompts, edges_, values, direction, metric, sweep.w.W_Q.dtype, verify, seed)
    clean, corrupted = sweep.engine.clean_and_corrupted()
    return E.EdgeScores(edges_, values, "exact", direction, clean, corrupted,
                        meta={"n_prompts": len(prompts), "verified": verified,
                              "metric": getattr(metric, "__name__", "metric")})
