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

From there the variant runs the rest of the model like any sweep variant. The edges of many
receivers share one forward (``EdgeSweep.plan``): receivers are taken in forward order and their
edges packed into chunks as large as the memory budget allows, each edge joining the batch at its
receiver's layer (``SweepEngine.run_suffix``), and the scores stay on the device until the end.
On one H200 every edge of SmolLM2 (70,651; 16 x 15 tokens) takes ~34 s in fp32 and ~5.5 s in bf16
(BENCHMARKS.md, benchmarks/edges_gpu.py). Sender changes come from
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
from interp.memory import is_out_of_memory
from interp.metrics import logit_diff
from interp.sweep import SweepEngine
from interp.tasks.prompts import PromptSet, check_prompts, on_model_device
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
        self._all_deltas: torch.Tensor | None = None
        self._sender_row: dict[E.Sender, int] = {}

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

    def sender_deltas(self) -> torch.Tensor:
        """Every sender's change at once, in ``E.senders`` order: [n_senders, B, T, d] in the
        residual stream's dtype (the values ``delta`` gives, one gather per chunk instead of one
        stack of views per edge)."""
        if self._all_deltas is None:
            senders = E.senders(self.cfg)
            self._all_deltas = torch.stack([self.delta(s) for s in senders]).to(self.engine.w.residual_dtype)
            self._sender_row = {s: i for i, s in enumerate(senders)}
        return self._all_deltas

    def plan(self, edges_: list[E.Edge], chunk: int) -> list[list[tuple[E.Receiver, list[int]]]]:
        """The forwards of a sweep: chunks of at most ``chunk`` edges (indices into ``edges_``), each
        a list of (receiver, its edges in this chunk). Receivers are taken in the order of their
        starting point in the forward, and a receiver's edges are cut across chunks where needed, so
        that every forward but the last is full: edges of receivers at different layers share one
        ``run_suffix`` (each variant joins the batch at its own layer). The logits receiver needs no
        forward; its edges come first, in a chunk of their own."""
        L = self.cfg.n_layers
        by_receiver: dict[E.Receiver, list[int]] = {}
        for i, edge in enumerate(edges_):
            by_receiver.setdefault(edge.receiver, []).append(i)
        order = sorted(by_receiver, key=lambda r: r.time(L))
        out: list[list[tuple[E.Receiver, list[int]]]] = []
        logits = [r for r in order if r.kind == "logits"]
        for r in logits:
            idx = by_receiver[r]
            out += [[(r, idx[i:i + chunk])] for i in range(0, len(idx), chunk)]
        return out + self._split([(r, by_receiver[r]) for r in order if r.kind != "logits"], chunk)

    def _run_chunk(self, pieces: list[tuple[E.Receiver, list[int]]], senders: torch.Tensor) -> torch.Tensor:
        """metric(patched) of the edges of one chunk, in the order of ``pieces``: [n] on the device."""
        e = self.engine
        Dall = self.sender_deltas()
        blocks, logits, n = [], [], 0
        for r, part in pieces:
            D = Dall[senders[n:n + len(part)]]
            where = self.start(r, D)
            if where[0] == "logits":
                logits.append(where[1].mean(1))
            else:
                layer, point, x = where
                blocks.append((layer, point, x, list(range(n, n + len(part)))))
            n += len(part)
        if logits:
            assert not blocks, "the logits receiver's edges run in chunks of their own"
            return torch.cat(logits)
        return e.run_suffix(blocks, 0)

    def run(self, edges_: list[E.Edge], progress: bool = True, max_edges: int | None = None) -> torch.Tensor:
        """metric(patched) - metric(base), mean over prompts, for every edge: [n_edges].

        ``max_edges``: at most this many edges per forward (default: as many as the memory budget
        allows, ``SweepEngine._chunk_size``); a chunk that runs out of memory is halved. The values
        stay on the device until the end (no sync between chunks)."""
        e = self.engine
        base_metric = e.cache("base").metric.mean()
        chunk = e._chunk_size(e.prompts.n_pos)
        if max_edges is not None:
            chunk = max(1, min(chunk, int(max_edges)))
        self.sender_deltas()
        rows = torch.tensor([self._sender_row[edge.sender] for edge in edges_], dtype=torch.long)
        out = torch.empty(len(edges_), device=e.device, dtype=torch.float32)
        bar = tqdm(total=len(edges_), desc="edge patching", disable=not progress, leave=False)
        todo = self.plan(edges_, chunk)
        with torch.no_grad():
            while todo:
                pieces = todo.pop(0)
                idx = [i for _, part in pieces for i in part]
                try:
                    vals = self._run_chunk(pieces, rows[idx].to(e.device))
                except (torch.OutOfMemoryError, RuntimeError) as exc:
                    if not is_out_of_memory(exc) or len(idx) == 1:
                        raise
                    if e.device.type == "cuda":
                        torch.cuda.empty_cache()
                    half = max(1, len(idx) // 2)
                    todo = self._split(pieces, half) + todo
                    continue
                out[torch.tensor(idx, device=e.device)] = vals.float() - base_metric.float()
                bar.update(len(idx))
        bar.close()
        return out.cpu()

    @staticmethod
    def _split(pieces, size: int):
        """Pieces (receiver, edge indices), in order, cut into chunks of at most ``size`` edges, a
        receiver's edges split across chunks where needed (the plan; a chunk after an out-of-memory)."""
        out, cur, n = [], [], 0
        for r, part in pieces:
            while part:
                take = part[:size - n]
                cur.append((r, take))
                n += len(take)
                part = part[len(take):]
                if n == size:
                    out.append(cur)
                    cur, n = [], 0
        return out + ([cur] if cur else [])


def edge_patch(model, prompts: PromptSet, edges_: list[E.Edge] | None = None, direction: str = "denoise",
               metric=logit_diff, memory_budget: int | None = None, progress: bool = True, verify: int = 2,
               seed: int = 0) -> E.EdgeScores:
    """Exact scores of ``edges_`` (default: every edge of the model): metric(patched) -
    metric(base), mean over prompts (``interp.edges``). ``verify`` edges are re-run through the
    hooked reference, and the unpatched runs are compared with the bridge's (``interp.verify``).

    Raises EngineUnsupported before any work for what the engine cannot compute exactly (the
    reference, ``interp.reference.edge_patch_reference``, can)."""
    check_prompts(model, prompts)
    prompts = on_model_device(model, prompts)
    edges_ = E.edges(model.cfg) if edges_ is None else list(edges_)
    sweep = EdgeSweep(model, prompts, direction, metric, memory_budget)
    baselines = SweepCheck(sweep.engine, "head_out", [], 0, baselines=verify > 0)
    values = sweep.run(edges_, progress)
    verified = check_edges(baselines.model, prompts, edges_, values, direction, metric, sweep.w.W_Q.dtype, verify, seed,
                           logit_scale=baselines.logit_scale)
    clean, corrupted = sweep.engine.clean_and_corrupted()
    return E.EdgeScores(edges_, values, "exact", direction, clean, corrupted,
                        meta={"n_prompts": len(prompts), "verified": verified,
                              "metric": getattr(metric, "__name__", "metric")})
