"""Correct-letter heads in multiple-choice answering (Lieberum et al. 2023, "Does Circuit Analysis
Interpretability Scale? Evidence from Multiple Choice Capabilities in Chinchilla"; no public code).

The last step of answering "Options: A. cat B. dog C. car D. tree\\nWhich option is 'dog'?\\nAnswer:"
is to emit the label of the matching option. The paper finds "output nodes": heads that attend
from the final position to the correct option's label and copy it (correct-letter heads), helped
by content gatherers (large total, small direct effect); the correct-letter heads' queries and keys
compress to about rank 3 and partly encode "the Nth item of an enumeration". Here, for a model
and a set of symbol-binding (or MMLU-style) items:

* ``MCQRun``: one forward of the clean prompts on the package's weights (``interp.weights``), shared
  prefixes run once (the few-shot shots every question shares, an options list asked about several
  times), keeping everything read at the final position END; ``end_logits`` re-runs END alone under
  ``EndVariant``s (zero / set z / low-rank attention of some heads), from the first layer they
  change: every intervention of the paper acts at END, so earlier positions keep their keys and
  values. Checked against the bridge's hooked forward (``verify``, ``check_end``, the tests).
* metric: margin = logit(correct) - mean of the 4 label logits (and the 4-way loss -log softmax_4
  (correct); the paper's metric is unstated, both are given); accuracy = argmax over the 4 labels.
* direct effect of a head (noising from the prompt that asks for another option of the same list):
  DE(h) = DLA(z_h corrupted) - DLA(z_h clean) onto the margin, the clean final-norm scale frozen;
  total effect TE(h): margin with z_h(END) from the corrupted prompt, everything after it at END
  recomputed, minus the clean margin.
* output nodes = the k most negative direct effects; classes by the attention row at END on the
  correctly answered items (``classify``): correct-letter, single-letter, content gatherer, uniform.
* subspace compression (``fit_lowrank``): SVD (uncentred) of the head's post-RoPE query at END and
  of its keys at the 4 label positions over one set of items; the head's attention row at END is
  recomputed from the top-r directions (every key position projected) on another set; r = 0 is
  the uniform row (the floor), the knocked-out head (z := 0 or its mean) the other.

Deviations from the paper (also in the report): a 0.5B model on symbol binding instead of Chinchilla
70B on MMLU; interventions at END only (the paper's nodes are heads at the final position); the
rank-r keys of non-label positions are projected with the label-key basis (the paper's handling of
other positions is not stated); the few-shot prefix is shared by the items of a set.
"""
from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from interp.errors import ComponentError, EngineUnsupported, PromptError, VerificationError
from interp.hooks import hook_name
from interp.interventions import HEAD_KINDS, EditSet, model_edits
from interp.stats import bootstrap_ci, bootstrap_indices, proportion_ci
from interp.tasks.mcq import MCQSet
from interp.verify import tolerance
from interp.weights import Weights, rotary_tables, rotate, unsupported

Head = tuple[int, int]
LABEL_POSITIONS = [f"LABEL_{i}" for i in range(4)]
ITEM_POSITIONS = [f"ITEM_{i}" for i in range(4)]
CLASSES = ("correct-letter", "single-letter", "content gatherer", "uniform", "other")

# ------------------------------------------------------------------------ the shared-prefix run
def prefix_levels(tokens: Int[torch.Tensor, "batch pos"], end: int, overhead: int = 16) -> list[tuple[int, int]]:
    """Segments [a, b) of positions 0..end-1, then [end, end + 1), that one forward per segment runs.

    A segment runs once per distinct prefix ``tokens[:, :b]``; the cut points minimise
    sum over segments of (distinct prefixes) x (length) + ``overhead`` (the cost of one more
    forward, in token-rows), by dynamic programming over the cut points."""
    u = [int(torch.unique(tokens[:, :t + 1], dim=0).shape[0]) for t in range(end)]
    best, cut = [0.0] + [math.inf] * end, [0] * (end + 1)
    for b in range(1, end + 1):
        for a in range(b):
            cost = best[a] + u[b - 1] * (b - a) + overhead
            if cost < best[b]:
                best[b], cut[b] = cost, a
    segs, b = [], end
    while b > 0:
        segs.append((cut[b], b))
        b = cut[b]
    return segs[::-1] + [(end, end + 1)]


@dataclass(frozen=True, eq=False)
class EndVariant:
    """A change at the final position only (earlier positions keep the run's keys and values).

    zero: heads whose output z := 0; set_z: (head, value [batch, d_head] or [d_head]) pairs,
    z := value (mean ablation, activation patching); lowrank: (head, Vq [r, d_head], Vk [r, d_head])
    triples: the head's attention row is recomputed as softmax(scale (q Vq^T Vq) . (k_j Vk^T Vk))
    over every position j (post-RoPE q and k; r = 0 gives the uniform row). Applied after the
    interventions of the run, as a hook added last would be."""

    name: str = ""
    zero: tuple = ()
    set_z: tuple = ()
    lowrank: tuple = ()

    def heads(self) -> list[Head]:
        return list(self.zero) + [h for h, _ in self.set_z] + [h for h, _, _ in self.lowrank]

    def start(self, n_layers: int) -> int:
        """The first layer the variant changes (n_layers: none)."""
        return min((l for l, _ in self.heads()), default=n_layers)


class MCQRun:
    """One forward of an MCQSet's clean prompts on the package's weights (``interp.weights``),
    keeping what the analysis reads at the final position (END), and re-runs of END alone.

    Shared prefixes run once: the few-shot shots shared by every question, an options list shared
    by the questions that ask about its items (``prefix_levels``). Every question must end at
    the same position. Everything recorded is at END: the residual before each layer (``x_pre``
    [L][B, d]), q (post-RoPE, [L][B, H, dh]), z ([L][B, H, dh]), the attention rows ([L][B, H, T]),
    each layer's attention and MLP output ([L][B, d]), the final residual, and the keys/values of
    every earlier position ([L][B, T-1, Hkv, dh], post-RoPE) that ``end`` attends to.

    ``interventions`` (``interp.interventions``: q/k/v/z edits, e.g. ``ablation(...)`` at every
    position) and the edits registered on the model act at every position, as their hooks would.
    ``verify`` items are re-run through the bridge's hooked forward; their logits must agree
    (``VerificationError``)."""

    def __init__(self, model, mcq: MCQSet, interventions=(), verify: int = 1, share: bool = True):
        ps = mcq.prompts
        if len(ps) == 0:
            raise PromptError("an empty prompt set")
        if int(ps.answer_pos.min()) != int(ps.answer_pos.max()):
            raise PromptError("MCQRun needs questions of one token length (every prompt ends at the same "
                              "position): split the set by length (mcq.subset) and run each part")
        reason = unsupported(model, ps.n_pos)
        if reason:
            raise EngineUnsupported(reason)
        self.interventions = tuple(interventions)
        edits = model_edits(model) + EditSet.of(self.interventions)
        other = edits.kinds() - set(HEAD_KINDS)
        if other:
            raise EngineUnsupported(f"edits of {', '.join(sorted(other))} (MCQRun applies q, k, v, z edits)")
        self.model, self.mcq, self.edits = model, mcq, edits
        self.w = w = Weights.from_model(model)
        cfg = model.cfg
        self.L, self.H, self.dh = cfg.n_layers, cfg.n_heads, cfg.d_head
        self.Hkv = w.W_K.shape[1]
        self.end = end = int(ps.answer_pos[0])
        self.tokens = ps.clean_tokens[:, :end + 1].to(w.W_E.device)
        self.label_ids = mcq.label_ids.to(w.W_E.device)
        self.correct = mcq.correct.to(w.W_E.device)
        self.cos = self.sin = None
        if w.rotary:
            self.cos, self.sin = rotary_tables(model, end + 1, w.W_E.device, w.W_Q.dtype)
        uniform = all(e.value is None or e.value.shape[0] == 1 for e in edits.edits) and all(
            e.positions is None or e.positions.numel() == 1 for e in edits.edits)
        self.levels = prefix_levels(self.tokens, end) if share and uniform else \
            ([(0, end)] if end else []) + [(end, end + 1)]
        with torch.no_grad():
            self._forward()
            self.logits4 = self.label_logits(self.x_final[None])[0]  # [B, 4]
            self.answer_logprob, self.vocab_right = self._vocab_readout()
        self.verified = self._verify(verify) if verify else None

    # -- the base run ---------------------------------------------------------------------------
    def _forward(self) -> None:
        w, L, end, tokens = self.w, self.L, self.end, self.tokens
        B = tokens.shape[0]
        done = []  # per level: (group of each example [B], keys [L][G, S, Hkv, dh], values)
        for a, b in self.levels:
            inv = torch.unique(tokens[:, :b], dim=0, return_inverse=True)[1]
            G = int(inv.max()) + 1
            rep = torch.full((G,), B, dtype=torch.long, device=tokens.device)
            rep.scatter_reduce_(0, inv, torch.arange(B, device=tokens.device), "amin")  # one example per group
            S = b - a
            where = torch.arange(a, b, device=tokens.device).expand(G, S)
            x = w.W_E[tokens[rep, a:b]].to(w.residual_dtype)
            if w.W_pos is not None:
                x = x + w.W_pos[a:b]
            ancestors = [(lv[0][rep], lv[1], lv[2]) for lv in done]
            last = a == end
            ks, vs = [], []
            rec = {k: [] for k in ("x_pre", "q", "z", "pattern", "k_past", "v_past", "attn", "mlp")} if last else None
            for l in range(L):
                if last:
                    rec["x_pre"].append(x[:, 0])
                q, k, v = (self.edits.apply(kind, l, t, rows=rep, at_positions=where)
                           for kind, t in zip("qkv", w.project(l, x)))
                if w.rotary:
                    q, k = rotate(q, self.cos[a:b], self.sin[a:b]), rotate(k, self.cos[a:b], self.sin[a:b])
                ks.append(k), vs.append(v)
                kp = torch.cat([K[l][g] for g, K, _ in ancestors], 1) if ancestors else k[:, :0]
                vp = torch.cat([V[l][g] for g, _, V in ancestors], 1) if ancestors else v[:, :0]
                z, pattern = _attend(q, k, v, kp, vp, w.scale)
                z = self.edits.apply("z", l, z, rows=rep, at_positions=where)
                att = w.out(l, z)
                x = x + att
                m = w.mlp(l, x)
                x = x + m
                if last:
                    rec["q"].append(q[:, 0]), rec["z"].append(z[:, 0]), rec["pattern"].append(pattern[:, :, 0])
                    rec["k_past"].append(kp), rec["v_past"].append(vp)
                    rec["attn"].append(att[:, 0]), rec["mlp"].append(m[:, 0])
            done.append((inv, ks, vs))
            if last:  # END is its own level: map its groups back to the examples
                for key, vals in rec.items():
                    setattr(self, key, [t[inv] for t in vals])
                self.x_final = x[:, 0][inv]
        e = w.W_E[tokens[:, end]].to(w.residual_dtype)
        self.embed = e if w.W_pos is None else e + w.W_pos[end]

    def label_logits(self, x_final: Float[torch.Tensor, "n batch d"]) -> Float[torch.Tensor, "n batch 4"]:
        """Logits of each example's 4 labels from final residuals at END."""
        h = self.w.norm(x_final, self.w.ln_final)
        cols = self.w.W_U[:, self.label_ids]  # [d, B, 4]
        out = torch.einsum("nbd,dbk->nbk", h.to(cols.dtype), cols)
        if self.w.b_U is not None:
            out = out + self.w.b_U[self.label_ids]
        return out.float()

    def _vocab_readout(self, chunk: int = 64):
        """log p(correct label) over the vocabulary and whether it is the argmax, per example."""
        answer = self.label_ids.gather(1, self.correct[:, None])[:, 0]
        lp, right = [], []
        for s in range(0, len(answer), chunk):
            logits = self.w.norm(self.x_final[s:s + chunk], self.w.ln_final) @ self.w.W_U
            if self.w.b_U is not None:
                logits = logits + self.w.b_U
            logits = logits.float()
            a = answer[s:s + chunk]
            lp.append(logits.log_softmax(-1).gather(1, a[:, None])[:, 0])
            right.append(logits.argmax(-1) == a)
        return torch.cat(lp), torch.cat(right)

    def _verify(self, k: int) -> dict:
        """The bridge's hooked forward on k examples: its logits of the 4 labels at END vs ours."""
        idx = torch.linspace(0, len(self.tokens) - 1, min(k, len(self.tokens))).round().long().unique()
        hooks = [h for iv in self.interventions for h in iv.hooks()]
        with torch.no_grad():
            ref = self.model.run_with_hooks(self.tokens[idx], fwd_hooks=hooks)[:, self.end]
        ref4 = ref.gather(1, self.label_ids[idx]).float()
        diff = float((ref4 - self.logits4[idx]).abs().max())
        tol = tolerance(self.w.W_Q.dtype, float(ref.abs().max()))
        if not diff <= tol:
            raise VerificationError(f"MCQRun's label logits differ from the bridge's by {diff:.3g} "
                                    f"(tolerance {tol:.2g}) on examples {idx.tolist()}")
        return {"examples": len(idx), "max_abs_diff": diff, "tolerance": tol}

    # -- re-running the final position --------------------------------------------------------
    def end_logits(self, variants: list[EndVariant], max_rows: int = 2048) -> Float[torch.Tensor, "n batch 4"]:
        """The 4 label logits of every example under each variant: [n_variants, batch, 4].

        Only END is recomputed, from the first layer a variant changes (causal attention: the
        earlier positions are untouched). Variants start at their own layer, ``max_rows``
        (variants x examples) at a time."""
        B, L = len(self.tokens), self.L
        out = torch.empty(len(variants), B, 4)
        order = sorted(range(len(variants)), key=lambda i: variants[i].start(L))
        per = max(1, max_rows // B)
        with torch.no_grad():
            for s in range(0, len(order), per):
                part = order[s:s + per]
                out[part] = self._end_chunk([variants[i] for i in part]).cpu()
        return out

    def _end_chunk(self, vs: list[EndVariant]) -> torch.Tensor:
        w, L, B, end = self.w, self.L, len(self.tokens), self.end
        starts = [v.start(L) for v in vs]  # non-decreasing
        rep, Hkv, dh = self.H // self.Hkv, self.Hkv, self.dh
        x = None
        for l in range(min(starts), L):
            new = [i for i, s in enumerate(starts) if s == l]
            if new:
                fresh = self.x_pre[l][None].expand(len(new), -1, -1)
                x = fresh if x is None else torch.cat([x, fresh])
            n = x.shape[0]
            q, k, v = (self.edits.apply(kind, l, t[:, :, None], end)[:, :, 0]
                       for kind, t in zip("qkv", w.project(l, x)))  # [n, B, heads, dh]
            if w.rotary:
                c, s_ = self.cos[end:end + 1], self.sin[end:end + 1]
                q, k = rotate(q, c, s_), rotate(k, c, s_)
            qg = q.view(n, B, Hkv, rep, dh)
            past = torch.einsum("nbjrd,btjd->nbjrt", qg, self.k_past[l])
            own = torch.einsum("nbjrd,nbjd->nbjr", qg, k)[..., None]
            p = (torch.cat([past, own], -1) * w.scale).float().softmax(-1).to(q.dtype)
            z = (torch.einsum("nbjrt,btjd->nbjrd", p[..., :end], self.v_past[l])
                 + p[..., end:] * v[:, :, :, None]).reshape(n, B, self.H, dh)
            for i in range(n):
                for (hl, hh), Vq, Vk in vs[i].lowrank:
                    if hl == l:
                        j = hh // rep
                        keys = torch.cat([self.k_past[l][:, :, j], k[i, :, j, None]], 1)  # [B, T, dh]
                        vals = torch.cat([self.v_past[l][:, :, j], v[i, :, j, None]], 1)
                        z[i, :, hh] = lowrank_attention(q[i, :, hh], keys, vals, Vq, Vk, w.scale)
            z = self.edits.apply("z", l, z[:, :, None], end)[:, :, 0]
            for i in range(n):
                for hl, hh in vs[i].zero:
                    if hl == l:
                        z[i, :, hh] = 0
                for (hl, hh), value in vs[i].set_z:
                    if hl == l:
                        z[i, :, hh] = value.to(z.dtype)
            x = x + w.out(l, z)
            x = x + w.mlp(l, x)
        if x is None:
            return self.logits4[None].expand(len(vs), -1, -1)
        return self.label_logits(x)

    def check_end(self, variant: EndVariant, k: int = 1) -> dict:
        """One zero/set_z variant on k examples through the bridge's hooked forward (its edits at
        END as hooks on z); VerificationError if the label logits disagree."""
        if variant.lowrank:
            raise ComponentError("check_end checks zero and set_z variants (lowrank: see the tests)")
        idx = torch.linspace(0, len(self.tokens) - 1, min(k, len(self.tokens))).round().long().unique()
        end = self.end

        def hook_for(layer):
            def hook(z, hook=None):
                z = z.clone()
                for hl, hh in variant.zero:
                    if hl == layer:
                        z[:, end, hh] = 0
                for (hl, hh), value in variant.set_z:
                    if hl == layer:
                        z[:, end, hh] = (value[idx] if value.ndim == 2 else value).to(z.dtype)
                return z
            return hook

        layers = sorted({l for l, _ in variant.heads()})
        hooks = [h for iv in self.interventions for h in iv.hooks()]
        hooks += [(hook_name("z", l), hook_for(l)) for l in layers]
        with torch.no_grad():
            ref = self.model.run_with_hooks(self.tokens[idx], fwd_hooks=hooks)[:, end]
        ref4 = ref.gather(1, self.label_ids[idx]).float()
        ours = self.end_logits([variant])[0, idx.cpu()]
        diff = float((ref4.cpu() - ours).abs().max())
        tol = tolerance(self.w.W_Q.dtype, float(ref.abs().max()))
        if not diff <= tol:
            raise VerificationError(f"END re-run {variant.name!r} differs from the bridge's by {diff:.3g} "
                                    f"(tolerance {tol:.2g})")
        return {"variant": variant.name, "examples": len(idx), "max_abs_diff": diff, "tolerance": tol}

    def subset(self, examples) -> "MCQRun":
        """The same run restricted to some examples (a shallow copy; nothing is recomputed)."""
        if any(e.value is not None and e.value.shape[0] > 1 for e in self.edits.edits):
            raise ComponentError("a run with per-example intervention values cannot be subset")
        idx = torch.as_tensor(list(examples) if not isinstance(examples, torch.Tensor) else examples,
                              dtype=torch.long)
        d = idx.to(self.tokens.device)
        new = copy.copy(self)
        new.mcq = self.mcq.subset(idx.tolist())
        for name in ("tokens", "label_ids", "correct", "x_final", "embed", "logits4", "answer_logprob", "vocab_right"):
            setattr(new, name, getattr(self, name)[d.to(getattr(self, name).device)])
        for name in ("x_pre", "q", "z", "pattern", "k_past", "v_past", "attn", "mlp"):
            setattr(new, name, [t[d] for t in getattr(self, name)])
        return new

    # -- readouts at END -------------------------------------------------------------------------
    def keys_at(self, layer: int, kv_head: int, positions: Int[torch.Tensor, "batch m"]) -> torch.Tensor:
        """Post-RoPE keys of one key/value head at positions < END: [batch, m, dh]."""
        k = self.k_past[layer][:, :, kv_head]
        return k[torch.arange(len(k), device=k.device)[:, None], positions.to(k.device)]

    def head_out(self, layer: int, head: int, z: torch.Tensor | None = None) -> Float[torch.Tensor, "batch d"]:
        """The head's output z_h W_O[h] at END (its own z, or ``z`` [batch, dh])."""
        z = self.z[layer][:, head] if z is None else z
        return z.to(self.w.W_O.dtype) @ self.w.W_O[layer, head]

    def margin_direction(self) -> Float[torch.Tensor, "batch d"]:
        """d(margin)/d(normed residual): W_U[:, correct] - mean of W_U over the 4 labels, times
        the final norm's weight; margin = logit(correct) - mean of the 4 label logits."""
        cols = self.w.W_U[:, self.label_ids].float()  # [d, B, 4]
        rows = torch.arange(len(self.tokens), device=cols.device)
        d = (cols[:, rows, self.correct] - cols.mean(-1)).T
        wn = self.w.ln_final[0]
        return d if wn is None else d * wn.float()

    def dla(self, parts: Float[torch.Tensor, "batch ... d"]) -> torch.Tensor:
        """Direct logit attribution onto the margin of components at END (the final norm's scale
        frozen from this run): (c - mean(c) for LayerNorm) / scale . direction, per example."""
        x = self.x_final.float()
        if self.w.center:
            x = x - x.mean(-1, keepdim=True)
        scale = (x.pow(2).mean(-1) + self.w.eps).sqrt()  # [B]
        c = parts.float()
        if self.w.center:
            c = c - c.mean(-1, keepdim=True)
        shape = (len(x),) + (1,) * (c.ndim - 2)
        return (c / scale.reshape(shape)[..., None] * self.margin_direction().reshape(*shape, -1)).sum(-1)

    def partners(self, corrupted: torch.Tensor) -> torch.Tensor | None:
        """For each example, the example whose clean prompt is its corrupted prompt, or None if
        some corrupted prompt is not in the set."""
        index = {tuple(r.tolist()): i for i, r in enumerate(self.tokens.cpu())}
        got = [index.get(tuple(r.tolist())) for r in corrupted[:, :self.end + 1].cpu()]
        return None if any(g is None for g in got) else torch.tensor(got)


def _attend(q, k, v, kp, vp, scale):
    """Rows q [G, S, H, dh] over cached keys kp/vp [G, P, Hkv, dh] and their own k/v (causal):
    z [G, S, H, dh] and the pattern [G, H, S, P + S]."""
    G, S, H, dh = q.shape
    Hkv, P = k.shape[2], kp.shape[1]
    kk, vv = torch.cat([kp, k], 1), torch.cat([vp, v], 1)
    qg = q.reshape(G, S, Hkv, H // Hkv, dh)
    scores = torch.einsum("gsjrd,gtjd->gjrst", qg, kk) * scale
    allowed = torch.arange(P + S, device=q.device)[None, :] <= P + torch.arange(S, device=q.device)[:, None]
    p = scores.float().masked_fill(~allowed, float("-inf")).softmax(-1).to(q.dtype)
    z = torch.einsum("gjrst,gtjd->gsjrd", p, vv).reshape(G, S, H, dh)
    return z, p.reshape(G, H, S, P + S)


def lowrank_attention(q: Float[torch.Tensor, "batch dh"], keys: Float[torch.Tensor, "batch pos dh"],
                      values: Float[torch.Tensor, "batch pos dh"], Vq: torch.Tensor, Vk: torch.Tensor,
                      scale: float, pattern: bool = False) -> torch.Tensor:
    """z of one head at END with q and k projected onto the rows of Vq [r, dh] and Vk [r, dh]:
    softmax_j(scale * (q Vq^T Vq) . (k_j Vk^T Vk)) @ v (or the row itself with ``pattern``)."""
    qr = (q.float() @ Vq.T.float()) @ Vq.float()
    kr = (keys.float() @ Vk.T.float()) @ Vk.float()
    p = (torch.einsum("bd,btd->bt", qr, kr) * scale).softmax(-1)
    return p if pattern else torch.einsum("bt,btd->bd", p.to(values.dtype), values)


# ------------------------------------------------------------------------------ per-item metrics
def item_scores(logits4: Float[torch.Tensor, "... batch 4"], correct: Int[torch.Tensor, " batch"]) -> dict:
    """Per example (and variant): margin = logit(correct) - mean of the 4, loss4 = -log softmax_4
    (correct), right = argmax over the 4 labels is the correct one."""
    correct = correct.to(logits4.device)
    c = correct.expand(logits4.shape[:-1])[..., None]
    at = logits4.gather(-1, c)[..., 0]
    return {"margin": at - logits4.mean(-1), "loss4": -logits4.log_softmax(-1).gather(-1, c)[..., 0],
            "right": (logits4.argmax(-1) == correct).float()}


def clusters_of(mcq: MCQSet) -> Int[torch.Tensor, " batch"]:
    """Cluster id per example: examples whose prompts agree up to the asked item share an options
    list (``asked_per_list``) and are not independent; intervals resample clusters."""
    ps = mcq.prompts
    if "ASKED" not in ps.positions or int(ps.positions["ASKED"].min()) != int(ps.positions["ASKED"].max()):
        return torch.arange(len(ps))
    cut = int(ps.positions["ASKED"][0])
    return torch.unique(ps.clean_tokens[:, :cut], dim=0, return_inverse=True)[1]


def cluster_mean_ci(values: torch.Tensor, clusters: torch.Tensor, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean over examples and its 95% bootstrap interval over clusters
    (``interp.stats.bootstrap_ci`` of the cluster means, weighted by cluster size)."""
    v = values.float().cpu()
    ids = clusters.cpu()
    sums = torch.zeros(int(ids.max()) + 1).index_add_(0, ids, v)
    counts = torch.zeros_like(sums).index_add_(0, ids, torch.ones_like(v))
    return ratio_ci(sums, counts, seed)


def ratio_ci(num: torch.Tensor, den: torch.Tensor, seed: int = 0) -> tuple[float, float, float]:
    """(sum(num) / sum(den), low, high) with a 95% bootstrap interval over the rows (clusters):
    ``interp.stats.bootstrap_ci`` resamples row indices and the statistic is the ratio of sums."""
    num, den = num.double().tolist(), den.double().tolist()

    def stat(idx):
        d = sum(den[int(i)] for i in idx)
        return sum(num[int(i)] for i in idx) / d if d else float("nan")

    est, lo, hi = bootstrap_ci(list(range(len(num))), stat=stat, seed=seed)
    return float(est), float(lo), float(hi)


def by_cluster(values: torch.Tensor, clusters: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum, count) of ``values`` [..., batch] per cluster along the last axis."""
    ids = clusters.cpu()
    v = values.float().cpu()
    sums = torch.zeros(*v.shape[:-1], int(ids.max()) + 1).index_add_(-1, ids, v)
    counts = torch.zeros(int(ids.max()) + 1).index_add_(0, ids, torch.ones(len(ids)))
    return sums, counts


def accuracy_summary(run: MCQRun, clusters: torch.Tensor | None = None, seed: int = 0) -> dict:
    """Accuracy (4-way and over the vocabulary), margin, 4-way loss, -log p(correct) over the
    vocabulary, accuracy by correct slot: estimates with 95% intervals (over clusters)."""
    s = item_scores(run.logits4, run.correct)
    cl = torch.arange(len(run.correct)) if clusters is None else clusters
    out = {k: cluster_mean_ci(v, cl, seed) for k, v in
           (("accuracy", s["right"]), ("accuracy_vocab", run.vocab_right.float()), ("margin", s["margin"]),
            ("loss4", s["loss4"]), ("loss_vocab", -run.answer_logprob))}
    correct = run.correct.cpu()
    out["by_slot"] = {}
    for slot in range(4):
        at = correct == slot
        if at.any():
            k, n = int(s["right"].cpu()[at].sum()), int(at.sum())
            out["by_slot"][slot] = (*proportion_ci(k, n), n)
    out["n"] = len(correct)
    out["predicted_slot_share"] = torch.bincount(run.logits4.argmax(-1).cpu(), minlength=4).float().div(len(correct)).tolist()
    return out


# ------------------------------------------------------------------------------- effects of heads
def direct_effects(run: MCQRun, partner: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per head and example ([L, H, B]): DLA of the clean output onto the margin, and the direct
    effect of noising DE = DLA(z_h of the partner's run) - DLA(z_h clean), the clean scale frozen
    (Lieberum et al.'s direct effect: only the path head -> logits). Also MLP and attention DLA
    per layer ([L, B]) and the embedding's ([B])."""
    L, H = run.L, run.H
    dla, de = torch.zeros(L, H, len(partner)), torch.zeros(L, H, len(partner))
    for l in range(L):
        out = torch.einsum("bhe,hed->bhd", run.z[l].to(run.w.W_O.dtype), run.w.W_O[l])  # [B, H, d]
        clean = run.dla(out)  # [B, H]
        noised = run.dla(out[partner.to(out.device)])
        dla[l], de[l] = clean.T.cpu(), (noised - clean).T.cpu()
    mlp = torch.stack([run.dla(m) for m in run.mlp]).cpu()
    attn = torch.stack([run.dla(a) for a in run.attn]).cpu()
    return {"dla": dla, "direct": de, "mlp": mlp, "attn": attn, "embed": run.dla(run.embed).cpu()}


def total_effects(run: MCQRun, partner: torch.Tensor, heads: list[Head] | None = None,
                  examples=None) -> torch.Tensor:
    """Total effect of noising each head at END on the margin, per example: [n_heads, n] (all heads
    in (layer, head) order when ``heads`` is None; the examples ``examples``, default all): the
    head's z at END from the partner's run (its corrupted prompt), END recomputed after it."""
    heads = heads or [(l, h) for l in range(run.L) for h in range(run.H)]
    sub = run if examples is None else run.subset(examples)
    src = (partner if examples is None else partner[torch.as_tensor(examples)]).to(run.z[0].device)
    vs = [EndVariant(f"TE {l}.{h}", set_z=(((l, h), run.z[l][src, h]),)) for l, h in heads]
    base = item_scores(sub.logits4, sub.correct)["margin"].cpu()
    return item_scores(sub.end_logits(vs), sub.correct.cpu())["margin"] - base


def top_heads(values: torch.Tensor, k: int, sign: int = -1) -> list[Head]:
    """The k heads with the largest ``sign * value`` of a [L, H] tensor."""
    idx = (sign * values).flatten().topk(k).indices
    return [(int(i) // values.shape[1], int(i) % values.shape[1]) for i in idx]


# ------------------------------------------------------------------------- attention at END
def positions_of(mcq: MCQSet, keys: list[str]) -> torch.Tensor:
    return torch.stack([mcq.prompts.positions[p] for p in keys], 1)  # [B, len(keys)]


def attention_rows(run: MCQRun, heads: list[Head]) -> Float[torch.Tensor, "heads batch pos"]:
    return torch.stack([run.pattern[l][:, h].float().cpu() for l, h in heads])


def label_attention(rows: torch.Tensor, mcq: MCQSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention on the correct label and the mean over the 3 other labels: two [..., B] tensors
    from rows [..., B, pos]."""
    labels = positions_of(mcq, LABEL_POSITIONS)  # [B, 4]
    on = rows.gather(-1, labels.expand(*rows.shape[:-2], -1, -1))  # [..., B, 4]
    correct = on.gather(-1, mcq.correct.expand(*rows.shape[:-2], -1)[..., None])[..., 0]
    return correct, (on.sum(-1) - correct) / 3


def _balanced(x: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """Mean of x [..., n] within each correct slot present, then over those slots: [...]."""
    means = [x[..., slots == c].mean(-1) for c in range(4) if (slots == c).any()]
    return torch.stack(means, -1).mean(-1)


def attention_profile(run: MCQRun, heads: list[Head], examples=None) -> dict[Head, dict]:
    """Per head, its attention row at END over ``examples`` (default all), summarised. Every share
    is slot-balanced: averaged within each correct slot, then over the slots (so a set whose
    correctly answered items are mostly "B" does not make a head that always looks at "B" look
    like it follows the answer).

    correct_label, other_labels (mean of the 3), ratio = correct_label / other_labels, items (the
    4 option items), correct_item, asked, max (largest weight), uniform_share (1 / T),
    top_label_is_correct (share of items whose most-attended label is the correct one),
    top_slot_share (the largest share of items whose most-attended label sits in one slot), n."""
    mcq = run.mcq
    idx = torch.arange(len(mcq)) if examples is None else torch.as_tensor(examples).cpu()
    if len(idx) == 0:
        return {h: {"n": 0} for h in heads}
    sub = mcq.subset(idx.tolist())
    slots = sub.correct
    rows = attention_rows(run, heads)[:, idx]  # [heads, n, T]
    labels, items = positions_of(sub, LABEL_POSITIONS), positions_of(sub, ITEM_POSITIONS)
    correct, other = label_attention(rows, sub)
    top = rows.gather(-1, labels.expand(len(heads), -1, -1)).argmax(-1)  # [heads, n]
    n = len(idx)
    bal = lambda x: _balanced(x, slots)  # noqa: E731
    out = {}
    for i, h in enumerate(heads):
        r = rows[i]
        c, o = float(bal(correct[i])), float(bal(other[i]))
        out[h] = {
            "correct_label": c, "other_labels": o, "ratio": c / o if o > 0 else float("inf"),
            "items": float(bal(r.gather(1, items).sum(-1))),
            "correct_item": float(bal(r.gather(1, sub.prompts.positions["CORRECT_ITEM"][:, None])[:, 0])),
            "asked": float(bal(r[torch.arange(n), sub.prompts.positions["ASKED"]]))
            if "ASKED" in sub.prompts.positions else 0.0,
            "max": float(bal(r.max(-1).values)), "uniform_share": 1.0 / r.shape[-1],
            "top_label_is_correct": float(bal((top[i] == slots).float())),
            "top_slot_share": max(float(bal((top[i] == s_).float())) for s_ in range(4)),
            "top_slot": max(range(4), key=lambda s_: float(bal((top[i] == s_).float()))), "n": n,
        }
    return out


def attention_ratio(run: MCQRun, heads: list[Head], examples=None, clusters=None, seed: int = 0) -> dict:
    """Attention on the correct label over attention on each other label, slot-balanced (as in
    ``attention_profile``), with a 95% bootstrap interval over clusters of items: per head
    (``"heads"``) and for the heads together (``"joint"``: their summed attention). Each value is
    (estimate, low, high)."""
    idx = torch.arange(len(run.mcq)) if examples is None else torch.as_tensor(examples).cpu()
    cl = (torch.arange(len(run.mcq)) if clusters is None else clusters.cpu())[idx]
    sub = run.mcq.subset(idx.tolist())
    correct, other = label_attention(attention_rows(run, heads)[:, idx], sub)  # [heads, n]
    series = {f"{l}.{h}": (correct[i:i + 1], other[i:i + 1]) for i, (l, h) in enumerate(heads)}
    series["joint"] = (correct.sum(0, keepdim=True), other.sum(0, keepdim=True))
    ids = torch.unique(cl, return_inverse=True)[1]
    C = int(ids.max()) + 1
    slots = sub.correct
    one = torch.nn.functional.one_hot(ids * 4 + slots, C * 4).float()  # [n, C*4]
    count = one.sum(0).reshape(C, 4)
    out = {"heads": {}, "n": len(idx), "clusters": C}
    for name, (c, o) in series.items():
        sc, so = (c[0] @ one).reshape(C, 4), (o[0] @ one).reshape(C, 4)

        def stat(pick):
            pick = torch.as_tensor([int(p) for p in pick])
            n_, a, b = count[pick].sum(0), sc[pick].sum(0), so[pick].sum(0)
            ok = n_ > 0
            bo = (b[ok] / n_[ok]).mean()
            return float((a[ok] / n_[ok]).mean() / bo) if bo > 0 else float("nan")

        est = bootstrap_ci(list(range(C)), stat=stat, seed=seed)
        (out if name == "joint" else out["heads"])[name] = tuple(float(x) for x in est)
    return out


def classify(profile: dict) -> str:
    """The head's class from its attention profile on the correctly answered items.

    Measured on correct items only, the correct label is the label the model emits, so the rule
    does not depend on how often the model is right (a share over all items would: a head that
    always looks at the emitted label scores the model's accuracy). Chance is 1/4 for each label
    share in a slot-balanced set:
    - uniform: the largest weight is under twice the uniform share 1/T;
    - correct-letter: the correct label takes >= 0.1 of the attention and is the most-attended
      label on >= 1/2 of the items (twice chance), with the Wilson 95% lower bound above 1/4
      (shares slot-balanced, see ``attention_profile``);
    - single-letter: the 4 labels take >= 0.1 and one fixed slot is the most-attended label on
      >= 1/2 of the items (lower bound above 1/4); a head meeting both is the one whose share is
      larger;
    - content gatherer: the option items and the asked item take >= 0.2;
    - other."""
    p, n = profile, profile.get("n", 0)
    if not n:
        return "other"
    if p["max"] < 2 * p["uniform_share"]:
        return "uniform"

    def beyond_chance(share):
        return share >= 0.5 and proportion_ci(round(share * n), n)[1] > 0.25

    follows_answer = p["correct_label"] >= 0.1 and beyond_chance(p["top_label_is_correct"])
    fixed_slot = p["correct_label"] + 3 * p["other_labels"] >= 0.1 and beyond_chance(p["top_slot_share"])
    if follows_answer and (not fixed_slot or p["top_label_is_correct"] >= p["top_slot_share"]):
        return "correct-letter"
    if fixed_slot:
        return "single-letter"
    if p["items"] + p["asked"] >= 0.2:
        return "content gatherer"
    return "other"


def classify_by_accuracy_rule(profile_all: dict) -> str:
    """The previous rule, applied to a profile over ALL items: correct-letter when the top label is
    the correct one on >= 0.75 of them (so never when the model is right on fewer than 0.75 of
    the items and the head follows the emitted label). Kept to show the dependence."""
    p = profile_all
    if p["max"] < 2 * p["uniform_share"]:
        return "uniform"
    if p["correct_label"] >= 0.2 and p["top_label_is_correct"] >= 0.75:
        return "correct-letter"
    if p["correct_label"] + 3 * p["other_labels"] >= 0.2 and p["top_slot_share"] >= 0.75:
        return "single-letter"
    if p["items"] + p["asked"] >= 0.2:
        return "content gatherer"
    return "other"


# ------------------------------------------------------------------------- subspace compression
def fit_lowrank(run: MCQRun, head: Head) -> tuple[torch.Tensor, torch.Tensor]:
    """(Vq, Vk) [dh, dh]: the right singular vectors (by singular value) of the head's post-RoPE
    queries at END [B, dh] and of its keys at the 4 label positions [4B, dh] over ``run``'s items."""
    l, h = head
    q = run.q[l][:, h].float()
    k = run.keys_at(l, h // (run.H // run.Hkv), positions_of(run.mcq, LABEL_POSITIONS)).reshape(-1, run.dh).float()
    return torch.linalg.svd(q, full_matrices=True).Vh, torch.linalg.svd(k, full_matrices=True).Vh


def lowrank_variant(fits: dict[Head, tuple[torch.Tensor, torch.Tensor]], rank: int, name: str = "") -> EndVariant:
    """The heads of ``fits`` with their queries/keys projected to rank ``rank`` (0: uniform)."""
    return EndVariant(name or f"rank {rank}", lowrank=tuple((h, Vq[:rank], Vk[:rank]) for h, (Vq, Vk) in fits.items()))


def lowrank_rows(run: MCQRun, head: Head, fit: tuple[torch.Tensor, torch.Tensor], rank: int) -> torch.Tensor:
    """The rank-r attention row of the head at END on ``run``'s items (clean upstream): [B, T]."""
    l, h = head
    j = h // (run.H // run.Hkv)
    keys = torch.cat([run.k_past[l][:, :, j], _end_key(run, l, j)[:, None]], 1)
    return lowrank_attention(run.q[l][:, h], keys, keys, fit[0][:rank], fit[1][:rank], run.w.scale, pattern=True).cpu()


def _end_key(run: MCQRun, layer: int, kv_head: int) -> torch.Tensor:
    """The post-RoPE key at END of one key/value head: [B, dh]."""
    w = run.w
    _, k, _ = w.project(layer, run.x_pre[layer][:, None])
    k = run.edits.apply("k", layer, k[:, None], run.end)[:, 0] if run.edits.at("k", layer) else k
    if w.rotary:
        k = rotate(k, run.cos[run.end:run.end + 1], run.sin[run.end:run.end + 1])
    return k[:, 0, kv_head]


def key_space(run: MCQRun, head: Head, fit: tuple[torch.Tensor, torch.Tensor], rank: int = 3) -> dict:
    """The head's keys at the 4 label positions projected on the top ``rank`` key directions:
    coords [B, 4, rank], with each key's ordinal (option slot 0-3) and label string."""
    l, h = head
    k = run.keys_at(l, h // (run.H // run.Hkv), positions_of(run.mcq, LABEL_POSITIONS)).float().cpu()
    coords = k @ fit[1][:rank].T.float().cpu()
    ordinal = torch.arange(4).expand(len(k), 4)
    return {"coords": coords, "ordinal": ordinal, "label": [list(r) for r in run.mcq.labels]}


def variance_explained(coords: torch.Tensor, groups: torch.Tensor, clusters: torch.Tensor | None = None,
                       seed: int = 0) -> tuple[float, float | None, float | None]:
    """Adjusted eta^2 (epsilon^2): the share of the variance of points [B, 4, r] explained by their
    group [B, 4], (SS_between - (k - 1) SS_within / (N - k)) / SS_total with k groups and N points
    (plain eta^2 grows with the number of groups: 4 ordinals vs up to 26 random letters), with a
    95% bootstrap interval over clusters of items (duplicates in a resample counted once).

    A resample keeps ~63% of the clusters, and with many small groups (random letters) the adjusted
    eta^2 of fewer points drifts upwards, so the interval is Efron's bias-corrected one
    (``interp.stats.bias_corrected_interval``); when even that misses the estimate the bounds are
    None (no valid interval) rather than an interval beside the estimate."""
    B = coords.shape[0]
    cl = torch.arange(B) if clusters is None else clusters.cpu()
    ids = sorted(set(cl.tolist()))
    members = {c: (cl == c).nonzero()[:, 0] for c in ids}

    def eta(idx):
        # each resampled cluster once: a duplicated item would be its own group-mate and inflate
        # eta^2 by construction (the interval is that of a random ~63% subsample of the clusters)
        rows = torch.cat([members[ids[int(i)]] for i in sorted(set(int(j) for j in idx))])
        x, g = coords[rows].reshape(-1, coords.shape[-1]), groups[rows].reshape(-1)
        total = ((x - x.mean(0)) ** 2).sum()
        uniq = g.unique()
        between = sum(((x[g == u].mean(0) - x.mean(0)) ** 2).sum() * (g == u).sum() for u in uniq)
        k, N = len(uniq), len(g)
        within = (total - between) / max(N - k, 1)
        return float((between - (k - 1) * within) / total) if total > 0 else float("nan")

    try:
        est, lo, hi = bootstrap_indices(len(ids), eta, n_boot=500, seed=seed, bias_corrected=True)
    except ValueError:
        return float(eta(range(len(ids)))), None, None
    return float(est), float(lo), float(hi)


# ------------------------------------------------------------------------------ causal tests
def random_head_sets(n_layers: int, n_heads: int, heads: list[Head], n_draws: int, seed: int = 0,
                     same_layers: bool = False) -> list[list[Head]]:
    """``n_draws`` random sets of len(heads) heads outside ``heads``: uniform over the model, or one
    head from each chosen head's own layer (``same_layers``)."""
    rng = random.Random(seed)
    chosen = set(heads)
    out = []
    for _ in range(n_draws):
        if same_layers:
            pick, used = [], set(chosen)
            for l, _ in heads:
                h = rng.choice([(l, j) for j in range(n_heads) if (l, j) not in used])
                used.add(h)
                pick.append(h)
        else:
            pick = rng.sample([(l, j) for l in range(n_layers) for j in range(n_heads) if (l, j) not in chosen],
                              len(heads))
        out.append(sorted(pick))
    return out


def mean_z(run: MCQRun, head: Head) -> torch.Tensor:
    """The head's mean output z at END over the run's items: [dh]."""
    l, h = head
    return run.z[l][:, h].mean(0)


def ablation_variants(run: MCQRun, heads: list[Head], mode: str, name: str) -> EndVariant:
    """z := 0 ("zero") or z := its mean over the run's items ("mean") at END for ``heads``."""
    if mode == "zero":
        return EndVariant(name, zero=tuple(heads))
    if mode == "mean":
        return EndVariant(name, set_z=tuple((h, mean_z(run, h)) for h in heads))
    raise ComponentError(f"ablation mode must be zero or mean, got {mode!r}")


def ablation_test(run: MCQRun, heads: list[Head], n_draws: int = 20, seed: int = 0, modes=("zero", "mean"),
                  clusters: torch.Tensor | None = None) -> dict:
    """Accuracy and margin with ``heads`` ablated at END vs random head sets of the same size
    (uniform over the model, and from the same layers), ``n_draws`` each: per mode, the chosen
    heads' accuracy with its interval, the paired drop with its interval (over clusters), each
    random draw's accuracy, and the share of random draws dropping at least as much (a
    permutation p-value)."""
    cl = torch.arange(len(run.correct)) if clusters is None else clusters
    base = item_scores(run.logits4, run.correct)
    draws = {"uniform": random_head_sets(run.L, run.H, heads, n_draws, seed),
             "same layers": random_head_sets(run.L, run.H, heads, n_draws, seed + 1, same_layers=True)}
    out = {"heads": heads, "accuracy": cluster_mean_ci(base["right"], cl, seed), "n": len(run.correct), "modes": {}}
    for mode in modes:
        vs = [ablation_variants(run, heads, mode, f"{mode} chosen")]
        for kind, sets in draws.items():
            vs += [ablation_variants(run, s, mode, f"{mode} {kind} {i}") for i, s in enumerate(sets)]
        s = item_scores(run.end_logits(vs), run.correct.cpu())
        chosen = s["right"][0]
        drop = base["right"].cpu() - chosen
        row = {"accuracy": cluster_mean_ci(chosen, cl, seed), "drop": cluster_mean_ci(drop, cl, seed),
               "margin": cluster_mean_ci(s["margin"][0], cl, seed), "random": {}}
        for i, (kind, sets) in enumerate(draws.items()):
            accs = s["right"][1 + i * n_draws: 1 + (i + 1) * n_draws].mean(-1)
            drops = float(base["right"].mean()) - accs
            row["random"][kind] = {
                "accuracy": accs.tolist(), "heads": [[f"{l}.{h}" for l, h in st] for st in sets],
                "mean": float(accs.mean()), "min": float(accs.min()), "max": float(accs.max()),
                "p_value": _share_at_least(float(drop.mean()), drops.tolist())}
        out["modes"][mode] = row
    return out


def _share_at_least(observed: float, null: list[float]) -> float:
    from interp.stats import permutation_pvalue

    return permutation_pvalue(observed, null)


def rank_curve(run: MCQRun, fits: dict[Head, tuple[torch.Tensor, torch.Tensor]], ranks, clusters=None,
               seed: int = 0) -> dict:
    """Margin, 4-way loss and accuracy on ``run``'s items with the heads of ``fits`` (fit on other
    items) at each rank, and with the heads knocked out (z := 0, z := mean) at END; "full" is the
    unchanged model. Each point with a 95% interval over clusters; recovery at each rank =
    (loss(r=0) - loss(r)) / (loss(r=0) - loss(full)) with its interval."""
    cl = torch.arange(len(run.correct)) if clusters is None else clusters
    heads = list(fits)
    vs = [lowrank_variant(fits, r) for r in ranks]
    vs += [ablation_variants(run, heads, "zero", "knocked out (zero)"),
           ablation_variants(run, heads, "mean", "knocked out (mean)")]
    s = item_scores(run.end_logits(vs), run.correct.cpu())
    base = item_scores(run.logits4, run.correct)
    names = [str(r) for r in ranks] + ["knocked out (zero)", "knocked out (mean)"]
    out = {"full": {k: cluster_mean_ci(base[k].cpu(), cl, seed) for k in ("margin", "loss4", "right")}}
    for i, name in enumerate(names):
        out[name] = {k: cluster_mean_ci(s[k][i], cl, seed) for k in ("margin", "loss4", "right")}
    if 0 in ranks:
        floor = s["loss4"][list(ranks).index(0)]
        gap_s, _ = by_cluster(floor - base["loss4"].cpu(), cl)
        for i, r in enumerate(ranks):
            num, _ = by_cluster(floor - s["loss4"][i], cl)
            out[str(r)]["recovery"] = ratio_ci(num, gap_s, seed)
    return out
