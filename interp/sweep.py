"""The batched sweep engine: exact activation-patching sweeps without one forward per patch.

The reference loop (``interp.patching.patch``) runs the whole model once per patched index. This
engine computes the same numbers with far less work, using four facts:

1. A patch at layer l leaves layers < l exactly as in the cached base run: each variant starts at
   its layer from the cached residual stream.
2. Every patch is a change of the residual stream at one point (layer l, before attention or before
   the MLP), at some positions. Head-level patches (z, q, k, v, pattern) are turned into that
   residual change by recomputing only the patched head(s) of layer l.
3. A patch at position p leaves positions < p unchanged in every layer (causal attention): the
   variant recomputes positions >= p only, attending to the cached keys/values of the earlier ones.
4. The metric needs the logits of two tokens at one position per example: the final norm is applied
   there only, and only the answer and distractor columns of the unembedding are used.

Ablation sweeps use the same machinery: ablating head h of layer l (``ablate_ua``, ``ablate_sc``,
``ablate_zero``) is a change of head h's output at layer l, so each variant again starts at its
layer. ``readout="residual"`` returns each variant's final residual stream at the answer positions
instead of a metric, for readouts over the whole vocabulary or the whole batch (Ships' KL,
generalized Ships' SVD).

Interventions. The engine runs the model the user handed it: the edits registered on it as hooks
(``with interp.ablate(...)``, ``interp.interventions``) and any passed as ``interventions`` (Sahara's
growing head group) apply to the cached runs and to every variant, at the same activations and in
the same order as the hooks run in the reference loop. A variant's own patch acts after them, as a
hook passed to ``run_with_hooks`` would. A hook that is not an interp Edit, or an edit of the
residual stream, cannot be read here: the engine refuses (``EngineUnsupported``) and
``interp.patch`` takes the reference loop. Cached runs are computed on the model's current weights
(``interp.weights``, fingerprinted by value, so in-place edits are seen).

Variants with the same first recomputed position are packed into the batch dimension of one forward
(variants join the batch at their own layer: one residual stream for the whole chunk, updated in
place, whose first rows are those running). Each layer of that forward is seven launches on a
GPU: a residual add fused with the next norm (``interp.kernels.add_norm``), the q/k/v product,
attention over the shared cached prefix (``interp.kernels.prefix_attention``), the output product, a
second add + norm, and the MLP's two products with biases (and GELU) in the matmul epilogue. Rotary
models add one RoPE pass each for q and k (``interp.kernels.rope``); gated MLPs compute gate and up
as one product and SiLU x up in one pass (``interp.kernels.silu_mul``). Small sweeps are bound by
launches and host work, not FLOPs, so the count matters, and a sweep run again is replayed as a CUDA
graph (``interp.graphs``; BENCHMARKS.md), started before the per-call checks (or, too large for a
graph, run eagerly before them). Chunks are sized from a
memory budget and halved on out-of-memory; finished chunks can be checkpointed to a file so an
interrupted sweep resumes.

Supported architectures: pre-norm decoders with RMSNorm or LayerNorm, rotary or absolute positions,
gated (SiLU) or plain (GELU) MLPs: Llama, Qwen2, Mistral, GPT-2 families, in TransformerLens's
compatibility mode (folded norms); ``interp.weights.unsupported`` names what is not modelled, and
``interp.patch`` then takes the reference loop.

Every sweep checks itself (``interp.verify``): its unpatched runs against the bridge's forward, and
a random sample of its cells against the reference loop; the evidence goes into the Result.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
from dataclasses import dataclass, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp import checkpoint as ckpt
from interp.components import ABLATIONS, Variant, get_component
from interp.errors import ComponentError, EngineUnsupported, InterpError, VerificationError
from interp.hooks import sweep_index
from interp.interventions import HEAD_KINDS, EditSet, model_edits
from interp.kernels import head_scatter, norm_logit_diff, prefix_attention
from interp.memory import available_bytes, format_bytes, is_out_of_memory
from interp.metrics import logit_diff
from interp.result import Result
from interp.tasks.prompts import PromptSet
from interp.verify import KEPT_ON_MODEL, SweepCheck
from interp.weights import Weights, fingerprint_digest, rotary_tables, rotate, unsupported


# ----------------------------------------------------------------------------------------- cache
@dataclass
class RunCache:
    """What the engine needs of one full run, per layer (lists of [batch, pos, ...] tensors)."""

    resid_pre: list
    resid_mid: list
    attn_out: list
    mlp_out: list
    q: list  # before RoPE, [B, T, H, dh]
    k: list  # before RoPE, [B, T, Hkv, dh]
    v: list
    z: list
    pattern: list  # [B, H, T, T]
    metric: torch.Tensor  # [B]
    final: torch.Tensor | None = None  # the final residual stream [B, T, d]


@dataclass
class _Recorded:
    """A sweep run once eagerly: its chunks (p0, variant indices) and values, then its graph."""

    chunks: list
    eager: torch.Tensor
    graph: object = None  # interp.graphs.CapturedSweep once recorded
    evidence: dict | None = None  # the recording's check (None: not tried yet)


# ----------------------------------------------------------------------------------------- engine
READOUTS = ("metric", "per_example", "residual")
GRAPH_MAX_SHARE = 1 / 16  # the largest working set (share of GPU memory) recorded as a CUDA graph
# The most work (FLOPs, ``SweepEngine.sweep_flops``) of a sweep without a graph that ``launch``
# starts before the checks: ~0.3 s of an H200 in bf16 (a sixteenth of it in fp32). A discarded
# launch wastes at most that; a larger sweep would run before its own progress bar, and the checks'
# ~20 ms are noise beside it.
LAUNCH_MAX_FLOPS = 2e14
# By-position patches that change the residual stream before layer l's MLP at their position alone
# (a head's output, its query or its pattern at one query position, attn_out): the MLP of layer l
# runs for that position only (``SweepEngine._after_mlp``). k and v patches change the attention of
# every later position, resid_pre and mlp_out start elsewhere.
ONE_POSITION_BEFORE_MLP = ("head_out", "head_q", "head_pattern", "attn_out")


class SweepEngine:
    """Runs patching and ablation sweeps for one model and prompt set, exactly and in batches.

    Args:
        model: a TransformerBridge (``load_model``).
        prompts: the prompt set.
        direction: "denoise" (run corrupted, patch clean values in) or "noise".
        metric: ``metric(logits [batch, vocab] at the answer position, prompts) -> [batch]``;
            logit_diff uses only the two unembedding columns it needs.
        memory_budget: bytes of activation memory a chunk may use (default: 1/4 of free GPU
            memory on CUDA, 64 MiB on CPU, where cache-sized chunks are fastest).
        eps: the factor of the ``ablate_ua`` (q := eps q) and ``ablate_sc`` (z := eps z)
            components (Zhou et al. 2025; see ``interp.ablation``).
        interventions: ``interp.interventions.Intervention``s applied to the base run and every
            variant, after those registered on the model (e.g. Sahara's group, ablated while the
            next head is chosen).
        graphs: on a GPU, record a sweep asked for a second time as a CUDA graph and replay it
            from then on (``interp.graphs``; small sweeps are bound by kernel launches).

    Raises EngineUnsupported (before any work) when the model has a feature, a hook or an edit the
    engine does not model.
    """

    def __init__(self, model, prompts: PromptSet, direction: str = "denoise", metric=logit_diff,
                 memory_budget: int | None = None, eps: float = 1e-5, interventions=(), graphs: bool = True):
        if direction not in ("denoise", "noise"):
            raise ComponentError(f"direction must be 'denoise' or 'noise', got {direction!r}")
        self.model, self.metric, self.direction = model, metric, direction
        self.device = next(iter(model.parameters())).device
        self.prompts = prompts.to(self.device)
        reason = unsupported(model, prompts.n_pos)
        if reason:
            raise EngineUnsupported(reason)
        self.interventions = tuple(interventions)
        self.edits = (model_edits(model) + EditSet.of(self.interventions)).to(self.device)
        other = self.edits.kinds() - set(HEAD_KINDS)
        if other:
            raise EngineUnsupported(f"edits of {', '.join(sorted(other))} (the engine applies head-level "
                                    "edits: q, k, v, z)")
        self.w = Weights.from_model(model)
        self.cfg = model.cfg
        self.memory_budget = memory_budget or _default_budget(self.device)
        base, source = (self.prompts.corrupted_tokens, self.prompts.clean_tokens)
        if direction == "noise":
            base, source = source, base
        self.base_tokens, self.source_tokens = base, source
        self._caches: dict[str, RunCache] = {}
        self._rotated: dict[int, torch.Tensor] = {}
        self._indices: dict[tuple, torch.Tensor] = {}
        self.cos = self.sin = None
        self.eps = float(eps)
        self.graphs = graphs and self.device.type == "cuda"
        self._recorded: dict[tuple, _Recorded] = {}  # sweeps run eagerly once, by graph_key
        self.last_graph: dict | None = None  # the evidence of the last run's graph, if it replayed one
        self._side = None  # the CUDA stream of launched sweeps (``launch``)
        self._launched_eager = None  # (key, chunks on the device) of an eager sweep ``launch`` started
        self._ran: set[int] = set()  # hashes of the ``_eager_key`` of sweeps this engine ran to the end
        self.eager_launches = 0  # eager sweeps started by ``launch`` (used or discarded)
        self.last_launched: str | None = None  # "graph" or "eager": the last run's values were launched

    # -- caches ---------------------------------------------------------------------------------
    def cache(self, which: str, need_pattern: bool = False) -> RunCache:
        """The activations of the full base or source run, computed once (by this engine's own
        forward, which the tests hold equal to the bridge's)."""
        have = self._caches.get(which)
        if have is None or (need_pattern and have.pattern is None):
            tokens = self.base_tokens if which == "base" else self.source_tokens
            self._drop_graphs()  # recorded graphs read the cached runs they were recorded with
            with torch.no_grad():
                self._caches[which] = self._forward_cache(tokens, need_pattern)
        return self._caches[which]

    def join(self) -> None:
        """Wait for a sweep started by ``launch``, before anything it reads may be freed; an
        eager one's values are dropped (``run`` reads them only when handed its key)."""
        if self._side is not None:
            self._side.synchronize()
        self._launched_eager = None

    def _drop_graphs(self) -> None:
        """Forget the recorded sweeps, after any launched replay has ended."""
        self.join()
        self._recorded.clear()

    def cache_both(self, need_pattern: bool = False) -> None:
        """Compute the base and the source run together, as one forward over both batches (a
        patching sweep needs both; two small forwards cost twice the kernel launches)."""
        if all(w in self._caches and (not need_pattern or self._caches[w].pattern is not None)
               for w in ("base", "source")):
            return
        B = len(self.prompts)
        self._drop_graphs()  # recorded graphs read the cached runs they were recorded with
        with torch.no_grad():
            both = self._forward_cache(torch.cat([self.base_tokens, self.source_tokens]), need_pattern)
        for which, rows in (("base", slice(0, B)), ("source", slice(B, None))):
            part = lambda v: None if v is None else [t[rows] for t in v] if isinstance(v, list) else v[rows]  # noqa: E731
            self._caches[which] = RunCache(**{f.name: part(getattr(both, f.name)) for f in fields(RunCache)})

    def _forward_cache(self, tokens, need_pattern: bool) -> RunCache:
        """One full run of ``tokens`` (the base batch, the source batch, or both stacked)."""
        w, L = self.w, self.cfg.n_layers
        T = tokens.shape[1]
        if w.rotary and self.cos is None:
            self.cos, self.sin = rotary_tables(self.model, T, self.device, w.W_Q.dtype)
        rc = RunCache(*[[] for _ in range(9)], metric=None)
        rows = torch.arange(tokens.shape[0], device=tokens.device) % len(self.prompts)  # base and/or source
        x = w.embed(tokens)
        h = w.norm(x, w.ln1[0])  # the normalised residual the next sublayer reads
        for l in range(L):
            rc.resid_pre.append(x)
            q, k, v = (self.edits.apply(kind, l, t, 0, rows) for kind, t in zip("qkv", w.project_normed(l, h)))
            rc.q.append(q), rc.k.append(k), rc.v.append(v)  # as the hooks see them: edited
            if w.rotary:
                q, k = rotate(q, self.cos, self.sin), rotate(k, self.cos, self.sin)
            empty = k[:, :0]
            z = self.edits.apply("z", l, prefix_attention(q[None], k[None], v[None], empty, empty, w.scale)[0], 0, rows)
            rc.z.append(z)
            if need_pattern:
                rep = q.shape[2] // k.shape[2]
                scores = torch.einsum("bqhe,bkhe->bhqk", q.float(), k.repeat_interleave(rep, 2).float()) * w.scale
                causal = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
                rc.pattern.append(scores.masked_fill(causal, float("-inf")).softmax(-1).to(q.dtype))
            a = w.out(l, z)
            rc.attn_out.append(a)
            x, h = w.add_norm(x, a, w.ln2[l])
            rc.resid_mid.append(x)
            m = w.mlp_normed(l, h)
            rc.mlp_out.append(m)
            x, h = w.add_norm(x, m, w.ln1_after(l))
        if not need_pattern:
            rc.pattern = None
        rc.final = x
        B = len(self.prompts)
        rc.metric = torch.cat([self._final_metric(part[None], 0, base_metric=torch.zeros(B, device=x.device))[0]
                               for part in x.split(B)])
        return rc

    def clean_and_corrupted(self) -> tuple[float, float]:
        self.cache_both()
        base, src = self.cache("base").metric.mean().item(), self.cache("source").metric.mean().item()
        return (src, base) if self.direction == "denoise" else (base, src)

    # -- the forward over a suffix of positions ------------------------------------------------
    def _attention(self, layer, h, p0, edit=None):
        """Attention output of layer ``layer`` for rows h = ln1(x) [N, B, S, d] (the normalised
        residual stream) holding positions p0..p0+S-1.

        ``edit(q, k, v) -> (q, k, v)`` may overwrite the rows' (pre-RoPE) queries, keys and values
        (path patching's receivers)."""
        w, base = self.w, self.cache("base")
        S = h.shape[2]
        q, k, v = (self.edits.apply(kind, layer, t, p0) for kind, t in zip("qkv", w.project_normed(layer, h)))
        if edit is not None:  # after the registered edits, as run_with_hooks' hooks run after them
            q, k, v = edit(q, k, v)
        k_pre, v_pre = self._base_keys(layer)[:, :p0], base.v[layer][:, :p0]  # [B, p0, Hkv, dh]
        if w.rotary:
            q = rotate(q, self.cos[p0:p0 + S], self.sin[p0:p0 + S])
            k = rotate(k, self.cos[p0:p0 + S], self.sin[p0:p0 + S])
        z = self.edits.apply("z", layer, prefix_attention(q, k, v, k_pre, v_pre, w.scale), p0)
        return w.out(layer, z)

    def _base_keys(self, layer):
        """The base run's keys of ``layer`` after RoPE (what later positions attend to)."""
        if layer not in self._rotated:
            k = self.cache("base").k[layer]
            self._rotated[layer] = rotate(k, self.cos[:k.shape[1]], self.sin[:k.shape[1]]) if self.w.rotary else k
        return self._rotated[layer]

    def _final_metric(self, x, p0, base_metric=None):
        """Metric of rows x [N, B, S, d] (positions p0..), per variant and example: [N, B]."""
        base_metric = self.cache("base").metric if base_metric is None else base_metric
        B = x.shape[1]
        rel = self.prompts.answer_pos - p0  # [B]
        valid = rel >= 0
        vals = self.metric_at(x[:, torch.arange(B, device=x.device), rel.clamp(min=0)])  # [N, B]
        return torch.where(valid[None], vals, base_metric[None])

    def _final_residual(self, x, p0):
        """The final residual stream of rows x [N, B, S, d] at the answer positions: [N, B, d]."""
        B = x.shape[1]
        rel = self.prompts.answer_pos - p0
        at = x[:, torch.arange(B, device=x.device), rel.clamp(min=0)]
        if (rel < 0).any():  # answer before the first recomputed position: the base run's value
            base = self.cache("base").final[torch.arange(B, device=x.device), self.prompts.answer_pos]
            at = torch.where((rel < 0)[None, :, None], base[None], at)
        return at

    def metric_at(self, at: torch.Tensor) -> torch.Tensor:
        """The metric of final residuals at the answer positions, at [N, B, d] -> [N, B]."""
        ps = self.prompts
        N, B, d = at.shape
        if self.metric is logit_diff:
            w, b = self.w.ln_final
            direction = (self.w.W_U[:, ps.answer_ids] - self.w.W_U[:, ps.distractor_ids]).T  # [B, d]
            bias = torch.zeros(B, device=at.device)
            if b is not None:
                bias = bias + (direction.float() @ b.float())
            if self.w.b_U is not None:
                bias = bias + (self.w.b_U[ps.answer_ids] - self.w.b_U[ps.distractor_ids]).float()
            idx = torch.arange(B, device=at.device).repeat(N)
            vals = norm_logit_diff(at.reshape(N * B, d), w, direction, idx, bias, self.w.eps,
                                   self.w.center).reshape(N, B)
        else:
            h = self.w.norm(at, self.w.ln_final)
            logits = h @ self.w.W_U
            if self.w.b_U is not None:
                logits = logits + self.w.b_U
            vals = torch.stack([self.metric(lg, ps).float() for lg in logits])
        return vals

    def run_suffix(self, starts: list[tuple[int, str, torch.Tensor, list[int]]], p0: int,
                   readout: str = "metric") -> torch.Tensor:
        """Run blocks of variants from their own starting points; return the readout of each variant.

        ``starts``: blocks (layer, point, x [n, B, S, d], index [n]): the n variants ``index`` start
        just before ``layer``'s attention ("pre") or MLP ("mid"), or after the last layer ("final"),
        with residual stream x at positions p0... Variants join the batch at their own layer.
        ``readout``: "metric" (mean over examples, [N]), "per_example" ([N, B]) or "residual"
        (the final residual stream at the answer positions, [N, B, d]); row i is variant i of the
        indices (0..N-1 over all blocks).
        """
        L, w = self.cfg.n_layers, self.w
        blocks = sorted(starts, key=lambda s: (s[0], {"pre": 0, "mid": 1, "final": 2}[s[1]]))
        # One residual stream for all rows, in join order, updated in place: the rows running at a
        # sublayer are always its first `n` (no copy of the stream when variants join).
        first = blocks[0][2]
        x_all = torch.empty((sum(b[2].shape[0] for b in blocks), *first.shape[1:]), dtype=first.dtype,
                            device=first.device)
        h_all = torch.empty_like(x_all, dtype=w.W_Q.dtype)  # its normalisation for the next sublayer
        n = 0  # rows joined so far
        bi = 0

        def join(layer, point, norm):
            """Write the variants that start here (and their normalised residual) after the rows
            already running."""
            nonlocal bi, n
            while bi < len(blocks) and blocks[bi][0] == layer and blocks[bi][1] == point:
                new = blocks[bi][2]
                x_all[n:n + len(new)] = new
                if norm is not None:
                    h_all[n:n + len(new)] = w.norm(new, norm)
                n += len(new)
                bi += 1

        for layer in range(blocks[0][0], L):
            join(layer, "pre", w.ln1[layer])
            if n:
                x, h = x_all[:n], h_all[:n]
                w.add_norm(x, self._attention(layer, h, p0), w.ln2[layer], out=(x, h))
            join(layer, "mid", w.ln2[layer])
            if n:
                x, h = x_all[:n], h_all[:n]
                w.add_norm(x, w.mlp_normed(layer, h), w.ln1_after(layer), out=(x, h))
        join(L, "final", None)
        x = x_all
        if readout == "residual":
            values = self._final_residual(x, p0)
        else:
            values = self._final_metric(x, p0)
            values = values.mean(1) if readout == "metric" else values
        order = [i for blk in blocks for i in blk[3]]
        out = torch.empty_like(values)
        out[self._index(order)] = values
        return out

    # -- turning a patch into a change of the residual stream ----------------------------------
    def start_of(self, component: str, var: Variant) -> tuple[int, str, torch.Tensor]:
        """(layer, point, x [B, S, d]) for one variant: where its residual stream first differs.

        Head outputs (head_out) are handled a chunk at a time by ``starts``."""
        base = self.cache("base")
        src = None if component in ABLATIONS else self.cache("source", need_pattern=component == "head_pattern")
        l, h, p = var.layer, var.head, var.pos
        p0 = 0 if p is None else p
        sl = slice(p0, None)
        at = slice(None) if p is None else slice(p, p + 1)
        L = self.cfg.n_layers
        w = self.w
        if component == "resid_pre":
            x = base.resid_pre[l].clone()
            x[:, at] = src.resid_pre[l][:, at]
            return l, "pre", x[:, sl]
        if component == "attn_out":
            x = base.resid_mid[l].clone()
            x[:, at] += src.attn_out[l][:, at] - base.attn_out[l][:, at]
            return l, "mid", x[:, sl]
        if component == "mlp_out":
            nxt = base.resid_pre[l + 1] if l + 1 < L else base.resid_mid[l] + base.mlp_out[l]
            x = nxt.clone()
            x[:, at] += src.mlp_out[l][:, at] - base.mlp_out[l][:, at]
            return (l + 1, "pre", x[:, sl]) if l + 1 < L else (L, "final", x[:, sl])
        # head-level components: recompute the affected head(s) of layer l, positions >= p0
        rep = w.W_Q.shape[1] // w.W_K.shape[1]
        if component == "head_q":
            q = base.q[l].clone()
            q[:, at, h] = src.q[l][:, at, h]
            heads, z_new = [h], self._head_z(l, q[:, sl, [h]], [h // rep], None, None, p0)
        elif component in ("head_k", "head_v"):
            kv = (base.k if component == "head_k" else base.v)[l].clone()
            kv[:, at, h] = (src.k if component == "head_k" else src.v)[l][:, at, h]
            heads = list(range(h * rep, (h + 1) * rep))
            k_all = kv if component == "head_k" else base.k[l]
            v_all = kv if component == "head_v" else base.v[l]
            z_new = self._head_z(l, base.q[l][:, sl, heads], [h] * rep, k_all, v_all, p0)
        elif component in ABLATIONS:
            if p is not None:
                raise ComponentError("ablation sweeps ablate a head at all positions (pos=None)")
            heads = [h]
            if component == "ablate_ua":
                z_new = self._head_z(l, base.q[l][:, :, [h]] * self.eps, [h // rep], None, None, 0)
            else:
                z_new = base.z[l][:, :, [h]] * (self.eps if component == "ablate_sc" else 0.0)
        elif component == "head_pattern":
            pat = src.pattern[l][:, h, sl] if p is None else src.pattern[l][:, h, p:p + 1]
            v = base.v[l][:, :, h // rep]  # [B, T, dh]
            heads, z_new = [h], (pat.to(v.dtype) @ v)[:, :, None]
        else:
            raise ComponentError(f"unknown component {component!r}")
        if component not in ("ablate_sc", "ablate_zero"):  # a recomputed z: the registered z edits act on it
            z_new = self._edited(l, heads, z_new, p0)
        dz = torch.zeros_like(base.z[l][:, sl, heads])
        if p is None:
            dz = z_new - base.z[l][:, sl, heads]
        else:  # a by-position q or pattern patch changes only position p; k/v change positions >= p
            n = z_new.shape[1] if component in ("head_k", "head_v") else 1
            dz[:, :n] = z_new[:, :n] - base.z[l][:, p0:p0 + n, heads]
        delta = dz.flatten(-2) @ w.W_O[l, heads].flatten(0, 1)  # sum over the heads of dz_h W_O[h]
        return l, "mid", base.resid_mid[l][:, sl] + delta

    def starts(self, component: str, variants: list[Variant], p0: int):
        """The blocks ``run_suffix`` takes for a chunk of variants sharing p0: ``start_of`` of each,
        except head outputs, whose variants of one layer form one block through the fused scatter
        kernel (one W_O product per variant, added to the residual). A by-position patch that
        changes position p0 alone before the MLP starts after that MLP (``_after_mlp``)."""
        if component != "head_out":
            blocks = []
            for i, v in enumerate(variants):
                layer, point, x = self.start_of(component, v)
                x = x[None]
                if v.pos is not None and component in ONE_POSITION_BEFORE_MLP:
                    layer, point, x = self._after_mlp(layer, x[:, :, 0], p0)
                blocks.append((layer, point, x, [i]))
            return blocks
        base, src = self.cache("base"), self.cache("source")
        out = []
        for l in sorted({v.layer for v in variants}):
            idx = [i for i, v in enumerate(variants) if v.layer == l]
            heads = self._index([variants[i].head for i in idx])
            if variants[idx[0]].pos is not None:  # by position: the head's output changes at p0 only
                diff = (src.z[l][:, p0] - base.z[l][:, p0])[:, heads]  # [B, V, dh]
                x0 = head_scatter(base.resid_mid[l][:, p0], diff.transpose(0, 1).contiguous(), self.w.W_O[l], heads)
                out.append((*self._after_mlp(l, x0, p0), idx))
                continue
            B, T = base.z[l].shape[:2]
            dz = (src.z[l] - base.z[l])[:, :, heads].permute(2, 0, 1, 3)  # [V, B, T, dh]
            x = head_scatter(base.resid_mid[l].reshape(B * T, -1), dz.reshape(len(idx), B * T, -1), self.w.W_O[l], heads)
            out.append((l, "mid", x.reshape(len(idx), B, T, -1), idx))
        return out

    def _after_mlp(self, layer: int, x0: torch.Tensor, p0: int) -> tuple[int, str, torch.Tensor]:
        """(layer + 1, "pre", x [n, B, S, d]) for n variants whose residual stream before ``layer``'s
        MLP differs from the base run at position p0 alone (x0 [n, B, d] there): at the later
        positions the MLP reads the base run's input, so it returns the base run's output, and only
        position p0 goes through it. After the last layer: (L, "final", x)."""
        w, base, L = self.w, self.cache("base"), self.cfg.n_layers
        x0, _ = w.add_norm(x0, w.mlp_normed(layer, w.norm(x0, w.ln2[layer])), None)
        after = base.resid_pre[layer + 1] if layer + 1 < L else base.final  # [B, T, d]
        x = after[None, :, p0:].repeat(len(x0), 1, 1, 1)
        x[:, :, 0] = x0
        return (layer + 1, "pre", x) if layer + 1 < L else (L, "final", x)

    def _edited(self, l, heads, z_new, p0):
        """z_new [B, S, len(heads), dh] of ``heads`` at positions p0.. with layer l's z edits applied
        (they act on every head's z after attention, as the registered hooks do)."""
        if not self.edits.at("z", l):
            return z_new
        full = self.cache("base").z[l][:, p0:p0 + z_new.shape[1]].clone()
        full[:, :, heads] = z_new
        return self.edits.apply("z", l, full, p0)[:, :, heads]

    def _index(self, values: list[int]) -> torch.Tensor:
        """``values`` as an index tensor on the device, uploaded once per engine."""
        key = tuple(values)
        if key not in self._indices:
            self._indices[key] = torch.tensor(values, device=self.device)
        return self._indices[key]

    def _head_z(self, l, q_pre, kv_heads, k_pre_all, v_all, p0):
        """z of some query heads at positions p0.. with the given (pre-RoPE) q, k and v of layer l."""
        base, w = self.cache("base"), self.w
        k_all = base.k[l] if k_pre_all is None else k_pre_all
        v_all = base.v[l] if v_all is None else v_all
        T, S = k_all.shape[1], q_pre.shape[1]
        k = k_all[:, :, kv_heads]  # [B, T, h, dh]: one key/value head per query head
        v = v_all[:, :, kv_heads]
        q = q_pre
        if w.rotary:
            q = rotate(q, self.cos[p0:p0 + S], self.sin[p0:p0 + S])
            k = rotate(k, self.cos[:T], self.sin[:T])
        return prefix_attention(q[None], k[None, :, p0:], v[None, :, p0:], k[:, :p0], v[:, :p0], w.scale)[0]

    # -- sweeps --------------------------------------------------------------------------------
    def variants(self, component: str, by_pos: bool, layers=None, heads=None, positions=None):
        comp = get_component(component)
        axes = comp.by_pos_axes if by_pos else comp.all_pos_axes
        index = sweep_index(self.model, comp.kind, self.prompts.n_pos, layers, heads, positions)
        cells = list(itertools.product(*[index[a] for a in axes]))
        vs = []
        for cell in cells:
            where = dict(zip(axes, cell))
            vs.append(Variant(where["layer"], where.get("head"), where.get("pos")))
        return axes, index, vs

    def run(self, component: str, variants: list[Variant], checkpoint: str | Path | None = None,
            progress: bool = True, readout: str = "metric", launched: tuple | None = None) -> torch.Tensor:
        """The readout of every variant, in order: [n_variants] for the mean metric,
        [n_variants, batch] per example, [n_variants, batch, d_model] for the final residual.

        ``launched``: what ``launch`` returned for this same sweep (its graph is already running)."""
        if readout not in READOUTS:
            raise ComponentError(f"readout must be one of {', '.join(READOUTS)}, got {readout!r}")
        B = len(self.prompts)
        shape = {"metric": (), "per_example": (B,), "residual": (B, self.cfg.d_model)}[readout]
        self.last_graph = self.last_launched = None
        key = self.graph_key(component, variants, readout) if checkpoint is None else None
        if launched is not None:
            values = self._collect(launched, key, component, variants, readout, shape, checkpoint)
            if values is not None:
                if progress:
                    tqdm(total=len(variants), initial=len(variants), leave=False,
                         desc=f"sweep {component}" + (" (replayed)" if self.last_launched == "graph" else "")).close()
                return values
        if key is not None and key in self._recorded:
            replayed = self._replay(key, component, variants, readout)
            if replayed is not None:
                if progress:
                    tqdm(total=len(variants), initial=len(variants), desc=f"sweep {component} (replayed)",
                         leave=False).close()
                return replayed
        values = torch.full((len(variants), *shape), float("nan"))
        done = torch.zeros(len(variants), dtype=torch.bool)
        ckpt_key = None if checkpoint is None else self._key(component, variants, readout)
        if checkpoint is not None:
            values, done = ckpt.load(ckpt.check_path(checkpoint), ckpt_key, values, done)
        self.check_memory(component)
        if component not in ABLATIONS:
            self.cache_both(need_pattern=component == "head_pattern")
        bar = tqdm(total=len(variants), initial=int(done.sum()), desc=f"sweep {component}",
                   disable=not progress, leave=False)
        on_device = []  # finished chunks not yet copied to the host (no sync between chunks)
        for p0, part, vals in self._chunk_runs(component, variants, readout, done):
            done[part] = True
            if checkpoint is not None:  # a checkpoint holds host values: copy now
                values[part] = vals.float().cpu()
                ckpt.save(checkpoint, ckpt_key, values, done)
            else:
                on_device.append((p0, part, vals))
            bar.update(len(part))
        for _, part, vals in on_device:
            values[part] = vals.float().cpu()
        bar.close()
        if checkpoint is None and self.device.type == "cuda":  # (only a GPU launches ahead)
            self._ran.add(hash(self._eager_key(component, variants, readout)))
        if key is not None and key not in self._recorded:
            self._recorded[key] = _Recorded([(p0, part) for p0, part, _ in on_device], values.clone())
        return values

    def _collect(self, launched: tuple, key: tuple | None, component: str, variants: list[Variant], readout: str,
                 shape: tuple, checkpoint) -> torch.Tensor | None:
        """The values of the sweep that ``launch`` started (``launched``: its key), read after it
        ended; None, after waiting for it, when it is not this sweep (never read then)."""
        eager, self._launched_eager = self._launched_eager, None
        if launched[0] == "eager":
            ours = (eager is not None and eager[0] == launched and checkpoint is None
                    and launched == self._eager_key(component, variants, readout))
        else:
            rec = self._recorded.get(launched)
            ours = launched == key and rec is not None and rec.graph is not None
        if not ours:
            self.join()
            return None
        torch.cuda.current_stream(self.device).wait_stream(self._side)
        if launched[0] == "eager":
            values = torch.full((len(variants), *shape), float("nan"))
            for _, part, vals in eager[1]:
                values[part] = vals.float().cpu()
            self.last_launched = "eager"
            return values
        values = rec.graph.collect()
        self.last_graph = {**rec.evidence, "replays": rec.graph.replays}
        self.last_launched = "graph"
        return values

    def _chunk_runs(self, component: str, variants: list[Variant], readout: str, done: torch.Tensor):
        """(p0, indices, values on the device) of each chunk of the variants not ``done``, run one
        after the other: ``_chunk_size`` variants of one start position each, halved on out-of-memory."""
        for p0, idx in self.groups(variants, done).items():
            chunk = self._chunk_size(self.prompts.n_pos - p0)
            i = 0
            while i < len(idx):
                part = idx[i:i + chunk]
                try:
                    with torch.no_grad():
                        starts = self.starts(component, [variants[j] for j in part], p0)
                        vals = (self.run_suffix(starts, p0) if readout == "metric"
                                else self.run_suffix(starts, p0, readout))
                except (torch.OutOfMemoryError, RuntimeError) as exc:
                    if not is_out_of_memory(exc) or chunk == 1:
                        raise
                    chunk = max(1, chunk // 2)
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    continue
                yield p0, part, vals
                i += len(part)

    # -- CUDA graphs -----------------------------------------------------------------------------
    def graph_key(self, component: str, variants: list[Variant], readout: str) -> tuple | None:
        """What a recorded graph of this sweep is for, or None when the sweep is not recorded:
        off the GPU, ``graphs=False``, a metric other than the logit difference (its code may read
        the device), the residual readout, edits with replacement values, or a working set over
        ``GRAPH_MAX_SHARE`` of the GPU's memory (a large sweep is bound by FLOPs, not launches, and
        its graph would hold that memory until the engine is released)."""
        if not self.graphs or self.metric is not logit_diff or readout == "residual" or not variants:
            return None
        if any(e.value is not None for e in self.edits.edits):
            return None
        T = self.prompts.n_pos
        working = max(min(len(idx), self._chunk_size(T - p0)) * self._variant_bytes(T - p0)
                      for p0, idx in self.groups(variants).items())  # the largest chunk's
        if working > torch.cuda.get_device_properties(self.device).total_memory * GRAPH_MAX_SHARE:
            return None
        return self._sweep_id(component, variants, readout)

    def launch(self, component: str, variants: list[Variant], readout: str = "metric") -> tuple | None:
        """Start this sweep on the GPU without waiting for it; a key to hand to ``run``, or None
        when it cannot start ahead. A sweep with a checked CUDA graph replays it; a sweep too large
        for a graph (``graph_key`` None) runs eagerly, its values kept on the device.

        The launch is speculative: ``sweep_patch`` launches the sweep of the engine kept on the
        model before checking that the model still matches it (weights by value, hooks, edits,
        prompts), so that the checks' host work overlaps the GPU's, and discards the values when a
        check fails. A launched sweep writes only into buffers of its own (a graph's, or tensors
        it allocates), so a discarded one changes nothing."""
        key = self.graph_key(component, variants, readout)
        if key is None:
            return self._launch_eager(component, variants, readout)
        rec = self._recorded.get(key)
        if rec is None or rec.graph is None:
            return None
        # On a stream of its own: the checks' reads of the prompts and the weights (on the current
        # stream) do not wait for the replay, which waits for everything queued before it.
        with self._on_side():
            rec.graph.launch()
        return key

    @contextlib.contextmanager
    def _on_side(self):
        """Run on the side stream, after everything queued on the current stream."""
        if self._side is None:
            self._side = torch.cuda.Stream(self.device)
        self._side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(self._side):
            yield

    def sweep_flops(self, variants: list[Variant]) -> float:
        """The FLOPs of running ``variants``: per layer from the variant's on and per token from its
        first recomputed position p0 on, 2 x the weights of the layer's products plus 4 x T x
        heads x d_head for attention's scores and weighted sum over T keys (the unembedding left
        out)."""
        w = self.w
        per_layer = w.W_qkv[0].numel() + w.W_O[0].numel() + w.W_in[0].numel() + w.W_out[0].numel()
        if w.W_gate is not None:
            per_layer += w.W_gate[0].numel()
        L, B, T = self.cfg.n_layers, len(self.prompts), self.prompts.n_pos
        per_token = 2 * per_layer + 4 * T * w.W_Q.shape[1] * w.W_Q.shape[-1]
        return float(sum(per_token * (L - v.layer) * B * (T - (v.pos or 0)) for v in variants))

    @staticmethod
    def _sweep_id(component: str, variants: list[Variant], readout: str) -> tuple:
        """The sweep itself (the rest is the engine's): what its graph and its eager launch are keyed by."""
        return component, readout, tuple((v.layer, v.head, v.pos) for v in variants)

    def _eager_key(self, component: str, variants: list[Variant], readout: str) -> tuple:
        """What an eager sweep started by ``launch`` is of (compared whole before its values are read)."""
        return ("eager", *self._sweep_id(component, variants, readout))

    def _launch_eager(self, component: str, variants: list[Variant], readout: str) -> tuple | None:
        """``launch`` for a sweep without a graph: only on a GPU, for the engine's own metric (a
        user's metric could count its calls), for a sweep this engine ran to the end before (so its
        cached runs, with patterns for head_pattern, and its index tables exist, and are never
        dropped: nothing of the engine's is computed on the side stream)
        and small enough (``LAUNCH_MAX_FLOPS``, a sixteenth of it in fp32, whose products run ~16x
        slower). An error in it: None, after waiting for it (``run`` repeats the work and reports
        the error); an interrupt waits for it too."""
        key = self._eager_key(component, variants, readout)
        limit = LAUNCH_MAX_FLOPS / (1 if self.w.W_Q.dtype in (torch.bfloat16, torch.float16) else 16)
        if (self.device.type != "cuda" or self.metric is not logit_diff or component in ABLATIONS or not variants
                or hash(key) not in self._ran or self.sweep_flops(variants) > limit):
            return None
        self.join()
        try:
            with self._on_side():
                chunks = list(self._chunk_runs(component, variants, readout,
                                               torch.zeros(len(variants), dtype=torch.bool)))
        except Exception:  # noqa: BLE001 (speculative: the checked run repeats it and raises)
            with contextlib.suppress(RuntimeError):
                self.join()
            return None
        except BaseException:
            self.join()
            raise
        self._launched_eager = (key, chunks)
        self.eager_launches += 1
        return key

    def _replay(self, key, component, variants, readout) -> torch.Tensor | None:
        """The values of a sweep run before, by its graph (recorded now if this is its second run),
        or None when it cannot be recorded."""
        from interp.graphs import capture
        from interp.verify import tolerance

        rec = self._recorded[key]
        values = None
        if rec.graph is None and rec.evidence is None:  # the second run: record, check against the first
            N = len(variants)

            def body():
                with torch.no_grad():
                    parts = [self.run_suffix(self.starts(component, [variants[j] for j in part], p0), p0, readout)
                             for p0, part in rec.chunks]
                    out = torch.empty((N, *parts[0].shape[1:]), device=self.device, dtype=parts[0].dtype)
                    out[self._index([j for _, part in rec.chunks for j in part])] = torch.cat(parts)
                    return out

            scale = rec.eager.abs().max().item() if rec.eager.numel() else 0.0
            rec.graph, rec.evidence, values = capture(body, rec.eager, tolerance(self.w.W_Q.dtype, scale))
        if rec.graph is None:
            return None
        values = rec.graph.replay() if values is None else values  # the capture's checked replay serves this call
        self.last_graph = {**rec.evidence, "replays": rec.graph.replays}
        return values

    @staticmethod
    def groups(variants: list[Variant], done: torch.Tensor | None = None) -> dict[int, list[int]]:
        """Indices of the variants still to run, by first recomputed position p0 (0 for
        all-position patches), in order of first appearance: what one forward can batch."""
        out: dict[int, list[int]] = {}
        finished = [False] * len(variants) if done is None else done.tolist()  # (not done[i]: ~50 ms at 17k)
        for i, v in enumerate(variants):
            if not finished[i]:
                out.setdefault(0 if v.pos is None else v.pos, []).append(i)
        return out

    def chunks(self, variants: list[Variant]) -> list[list[int]]:
        """The chunks ``run`` makes of ``variants`` on a fresh run, in order (each group cut into
        runs of ``_chunk_size`` variants; out-of-memory halving aside)."""
        out = []
        for p0, idx in self.groups(variants).items():
            size = self._chunk_size(self.prompts.n_pos - p0)
            out += [idx[i:i + size] for i in range(0, len(idx), size)]
        return out

    def _chunk_size(self, S: int) -> int:
        return max(1, int(self.memory_budget // self._variant_bytes(S)))

    def _variant_bytes(self, S: int) -> int:
        """Activation bytes of one variant's forward over S positions."""
        c = self.cfg
        elt = torch.finfo(self.w.W_Q.dtype).bits // 8
        return len(self.prompts) * S * (6 * c.d_model + 3 * c.d_mlp + 2 * c.n_heads * (c.d_head + self.prompts.n_pos)) \
            * max(elt, 4)

    def _key(self, component, variants, readout: str = "metric") -> str:
        """What the values depend on: the sweep, the prompts, the weights' values, the edits."""
        from interp.weights import weights_fingerprint

        h = hashlib.sha256()
        extra = [readout, self.eps] if (readout != "metric" or component in ABLATIONS) else []
        h.update(json.dumps([component, self.direction, getattr(self.metric, "__name__", "metric"),
                             [(v.layer, v.head, v.pos) for v in variants], *extra]).encode())
        h.update(self.prompts.digest().encode())
        h.update(str(getattr(self.model, "interp_key", "")).encode())
        h.update(fingerprint_digest(weights_fingerprint(self.model)).encode())
        h.update(self.edits.digest().encode())
        return h.hexdigest()

    def memory_needed(self, component: str) -> int:
        """Bytes the sweep holds at once: both cached runs (every layer's residuals, q/k/v/z, the
        patterns for head_pattern) and one variant's forward."""
        c, ps = self.cfg, self.prompts
        B, T = len(ps), ps.n_pos
        elt = max(torch.finfo(self.w.W_Q.dtype).bits // 8, 4)
        Hkv = c.n_key_value_heads or c.n_heads
        per_layer = B * T * (4 * c.d_model + (2 * c.n_heads + 3 * Hkv) * c.d_head)
        if component == "head_pattern":
            per_layer += B * c.n_heads * T * T
        one_variant = B * T * (6 * c.d_model + 3 * c.d_mlp + 2 * c.n_heads * (c.d_head + T)) * elt
        return 2 * c.n_layers * per_layer * elt + one_variant

    def check_memory(self, component: str) -> None:
        """Refuse up front, saying how much memory the sweep needs, when it cannot fit."""
        need, have = self.memory_needed(component), available_bytes(self.device)
        if need > have:
            raise InterpError(f"this sweep needs about {format_bytes(need)} ({len(self.prompts)} prompts x "
                              f"{self.prompts.n_pos} tokens) and {format_bytes(have)} is available: use fewer or "
                              "shorter prompts")


def engine_unsupported(model, prompts: PromptSet | None = None) -> str | None:
    """Why the batched engine cannot run this model (with the hooks registered on it, on these
    prompts) exactly, or None."""
    try:
        reason = unsupported(model, None if prompts is None else prompts.n_pos)
        if reason:
            return reason
        other = model_edits(model).kinds() - set(HEAD_KINDS)
        if other:
            return f"edits of {', '.join(sorted(other))} (the engine applies head-level edits: q, k, v, z)"
    except EngineUnsupported as exc:
        return str(exc)
    return None


def shared_engine(model, prompts: PromptSet, direction: str = "denoise", metric=logit_diff,
                  memory_budget: int | None = None) -> SweepEngine:
    """The engine of the last sweep on ``model`` when it was built from exactly what this call
    hands over, else a new one (which is kept on the model for the next call).

    "Exactly": the same prompts (every tensor, by value), direction, metric, memory budget and
    hooks and edits on the model (by value), and weights whose values are unchanged
    (``Weights.from_model`` re-checks them at every call). A kept engine keeps its cached runs and
    its recorded CUDA graphs (``interp.graphs``), so a repeated sweep costs one graph replay. One
    engine per model is kept; ``release(model)`` frees it."""
    key = (prompts.digest(), direction, metric, memory_budget, model_edits(model).digest())
    held = getattr(model, "_interp_engine", None)
    if held is not None and held[0] == key and held[1].w is Weights.from_model(model):
        return held[1]
    release(model, engine_only=True)  # (the stacked weights and the self-checks' fp32 copy stay)
    engine = SweepEngine(model, prompts, direction, metric, memory_budget)
    object.__setattr__(model, "_interp_engine", (key, engine))
    return engine


def kept_engine(model) -> SweepEngine | None:
    """The engine kept on ``model`` by the last sweep, unchecked (``shared_engine`` checks it)."""
    held = getattr(model, "_interp_engine", None)
    return None if held is None else held[1]


def release(model, engine_only: bool = False) -> None:
    """Forget what the engines and checks keep on ``model`` between calls (``interp.verify.KEPT_ON_MODEL``):
    the last sweep's engine (its cached runs and CUDA graphs), the stacked weights (on a GPU with
    fused q/k/v and gate/up copies: 5.8 GB more for Llama-2-7B in bf16) and the fp32 copy of the
    self-checks (``interp.verify.fp32_reference``). The next sweep builds them again.
    ``engine_only``: forget the engine alone, as a sweep of other prompts does."""
    held = kept_engine(model)
    if held is not None:
        held.join()  # a launched replay ends before its graph can go
    for name in ("_interp_engine",) if engine_only else KEPT_ON_MODEL:
        if getattr(model, name, None) is not None:
            object.__setattr__(model, name, None)


def _default_budget(device) -> int:
    if device.type == "cuda":
        return int(available_bytes(device) // 4)
    # On CPU, chunks that stay near the caches win: a full SmolLM2 head sweep took 31 s with a
    # 2 GiB budget, 22 s with 256 MiB and 19 s with 64 MiB (2 cores, 8 prompts).
    return 64 << 20


def sweep_patch(model, prompts: PromptSet, component: str, by_pos: bool = False, direction: str = "denoise",
                metric=logit_diff, layers=None, heads=None, positions=None, checkpoint=None,
                memory_budget: int | None = None, progress: bool = True, verify: int = 2, seed: int = 0) -> Result:
    """``patch`` through the engine: same arguments, same Result (see ``interp.patching.patch``).

    ``verify`` cells (drawn with ``seed``) are re-run through the reference loop after the sweep,
    and the baselines are checked against the bridge before it (``interp.verify``); the evidence
    is ``meta["verified"]``. Raises EngineUnsupported before any sweep work if the engine cannot
    run this model exactly, VerificationError if a re-checked cell disagrees.

    The engine is kept on the model for the next call (``shared_engine``): asked again for the same
    sweep of the same prompts and unchanged weights and hooks, it reuses its cached runs, and on a
    GPU replays the sweep as a CUDA graph from the second repetition on (``meta["cuda_graph"]``:
    the replay's check against the eager run). That replay starts before the checks of weights,
    hooks and prompts (their host work runs while the GPU replays) and is discarded if one fails;
    a repeated sweep too large for a graph, and small enough (``LAUNCH_MAX_FLOPS``), likewise runs
    eagerly before the checks (``SweepEngine.launch``)."""
    held = kept_engine(model)
    if held is not None and held.prompts.n_pos != prompts.n_pos:
        held = None  # (the variants depend only on the model and the prompts' length)
    launched = None
    try:
        if held is not None:
            planned = held.variants(component, by_pos, layers, heads, positions)
            if checkpoint is None:  # the kept sweep runs while the checks below make sure it may
                launched = held.launch(component, planned[2])
        engine = shared_engine(model, prompts, direction, metric, memory_budget)
        if engine is not held:  # the model or the prompts changed: the replay is discarded
            launched = None  # (shared_engine waited for it before letting its engine go)
            planned = engine.variants(component, by_pos, layers, heads, positions)
        axes, index, variants = planned
        engine.check_memory(component)  # before any forward
        check = SweepCheck(engine, component, variants, verify, seed)
        values = engine.run(component, variants, checkpoint, progress, launched=launched)
    except BaseException:
        if held is not None:  # a launched sweep ends before anything it reads can be freed
            with contextlib.suppress(RuntimeError):  # (a CUDA error would only hide the first one)
                held.join()
        raise
    del held
    try:
        verified = check.check(values)
    except VerificationError as err:
        if checkpoint is not None:
            ckpt.set_aside(checkpoint, err)
        raise
    clean, corrupted = engine.clean_and_corrupted()
    meta = {"index": {a: index[a] for a in axes}, "direction": direction, "n_prompts": len(prompts),
            "engine": "batched", "verified": verified}
    if engine.last_graph is not None:
        meta["cuda_graph"] = engine.last_graph
    return Result(values.reshape([len(index[a]) for a in axes]), axes, component,
                  getattr(metric, "__name__", "metric"), clean=clean, corrupted=corrupted, meta=meta)
