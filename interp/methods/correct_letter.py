"""Correct-letter heads in multiple-choice answering (Lieberum et al. 2023, "Does Circuit Analysis
Interpretability Scale? Evidence from Multiple Choice Capabilities in Chinchilla").

The last step of answering "Options: A. cat B. dog C. car D. tree\\nWhich option is 'dog'?\\nAnswer:"
is to emit the label of the matching option. The paper finds "output nodes": heads that attend from
the final position to the correct option's label and copy it (correct-letter heads), helped by
content gatherers (large total, small direct effect). Here:

* accuracy (argmax over the 4 label tokens, and over the vocabulary), by correct position;
* DLA of every head and MLP onto correct-label minus the other prompt's label (interp.attribution);
* total effect of each head (noising activation patch: its output from the prompt whose correct
  label differs, everything downstream recomputed) vs its direct effect (the change of its own
  DLA, no downstream recomputation, the clean run's final-norm scale): DE(h) = DLA_corrupt(h) - DLA_clean(h);
* classes by where the head looks from the final position: correct-letter (to the correct label),
  single-letter (to one fixed label slot whatever the answer), content gatherer (to the option
  contents / the asked item), uniform (no position over twice the uniform share), other;
* subspace compression: the head's query at the final position and keys at the label positions
  projected onto their top-r singular directions (fit on the dataset), the pattern row at the final
  position recomputed from the projections; loss vs r, and the rank-r head under label mutations.
"""
from __future__ import annotations

import random
import statistics

import torch

from interp.attribution import direct_logit_attribution
from interp.hooks import hook_name
from interp.patching import patch
from interp.result import Result
from interp.weights import Weights, rotary_tables, rotate
from interp.tasks.mcq import MCQSet

Head = tuple[int, int]
LABEL_POSITIONS = [f"LABEL_{i}" for i in range(4)]
ITEM_POSITIONS = [f"ITEM_{i}" for i in range(4)]


# ------------------------------------------------------------------------------------------ metrics
def label_logits(model, mcq: MCQSet, fwd_hooks=()) -> torch.Tensor:
    """Logits of the 4 labels at the final position, [batch, 4] (option order); full logits [batch, vocab]."""
    ps = mcq.prompts
    with torch.no_grad():
        logits = model.run_with_hooks(ps.clean_tokens, fwd_hooks=list(fwd_hooks))
    at = logits[torch.arange(len(ps)), ps.answer_pos]
    return at.gather(1, mcq.label_ids.to(at.device)), at


def scores(model, mcq: MCQSet, fwd_hooks=()) -> dict:
    """Accuracy (over the 4 labels and over the vocabulary), accuracy by correct slot, mean loss
    -log p(correct) and mean logit(correct) - mean of the 4 label logits (the paper's metric is
    unstated: both are given)."""
    four, full = label_logits(model, mcq, fwd_hooks)
    correct = mcq.correct.to(four.device)
    rows = torch.arange(len(mcq))
    right = four.argmax(-1) == correct
    by_slot = {int(s): float(right[correct == s].float().mean()) for s in correct.unique()}
    return {"accuracy": float(right.float().mean()),
            "accuracy_vocab": float((full.argmax(-1) == mcq.prompts.answer_ids.to(full.device)).float().mean()),
            "accuracy_by_slot": by_slot,
            "loss": float(-full.log_softmax(-1)[rows, mcq.prompts.answer_ids.to(full.device)].mean()),
            "logit_margin": float((four[rows, correct] - four.mean(-1)).mean())}


# ------------------------------------------------------------------------------- effects of heads
def total_and_direct(model, mcq: MCQSet, progress: bool = True) -> dict[str, Result]:
    """Per head, at the final position: total effect (noising patch there: M_patched - M_clean) and
    direct effect (DLA change). When every prompt ends at the same position only that position is
    patched (the batched engine then recomputes one position per head); else all positions."""
    ps = mcq.prompts
    ends = ps.answer_pos.unique()
    if len(ends) == 1:
        by_pos = patch(model, ps, "head_out", by_pos=True, direction="noise", positions=[int(ends[0])],
                       progress=progress)
        total = Result(by_pos.values[:, 0], ("layer", "head"), "head_out", by_pos.metric, by_pos.clean,
                       by_pos.corrupted, meta={**by_pos.meta, "position": int(ends[0])})
    else:
        total = patch(model, ps, "head_out", direction="noise", progress=progress)
    clean = direct_logit_attribution(model, ps, "clean")
    corrupt = direct_logit_attribution(model, ps, "corrupted", scale_from="clean")
    te = Result(total.values - total.clean, ("layer", "head"), "total_effect", meta=dict(total.meta))
    de = Result(corrupt.heads.values - clean.heads.values, ("layer", "head"), "direct_effect",
                meta={"n_prompts": len(ps)})
    return {"total": te, "direct": de, "dla": clean.heads, "dla_mlp": clean.mlp, "patching": total}


def top_heads(values: torch.Tensor, k: int, sign: int = -1) -> list[Head]:
    """The k heads with the largest ``sign * value`` (sign -1: the effects that remove the answer)."""
    idx = (sign * values).flatten().topk(k).indices
    return [(int(i) // values.shape[1], int(i) % values.shape[1]) for i in idx]


def attention_profile(model, mcq: MCQSet, heads: list[Head]) -> dict[Head, dict[str, float]]:
    """Mean attention from the final position to: the correct label, the other labels, the option
    items, the asked item; the largest single weight; and how often the top label slot is constant."""
    ps = mcq.prompts
    names = {hook_name("pattern", l) for l, _ in heads}
    with torch.no_grad():
        _, cache = model.run_with_cache(ps.clean_tokens, names_filter=lambda n: n in names)
    rows = torch.arange(len(ps))
    labels = torch.stack([ps.positions[p] for p in LABEL_POSITIONS], 1)  # [B, 4]
    items = torch.stack([ps.positions[p] for p in ITEM_POSITIONS], 1)
    out = {}
    for l, h in heads:
        row = cache[hook_name("pattern", l)][rows, h, ps.answer_pos].float().cpu()  # [B, T]
        on_labels = row.gather(1, labels)
        correct = on_labels[rows, mcq.correct]
        slot = on_labels.argmax(-1)
        out[(l, h)] = {
            "correct_label": float(correct.mean()),
            "other_labels": float((on_labels.sum(-1) - correct).mean() / 3),
            "items": float(row.gather(1, items).sum(-1).mean()),
            "asked": float(row[rows, ps.positions["ASKED"]].mean()) if "ASKED" in ps.positions else 0.0,
            "max": float(row.max(-1).values.mean()),
            "uniform_share": float((1.0 / (ps.answer_pos.float() + 1)).mean()),
            "top_label_is_correct": float((slot == mcq.correct).float().mean()),
            "top_label_constant": float(torch.bincount(slot, minlength=4).max()) / len(ps),
        }
    return out


def classify(profile: dict[str, float]) -> str:
    """correct-letter, single-letter, content gatherer, uniform or other (see the module docstring)."""
    p = profile
    if p["max"] < 2 * p["uniform_share"]:
        return "uniform"
    if p["correct_label"] >= 0.2 and p["top_label_is_correct"] >= 0.75:
        return "correct-letter"
    if p["other_labels"] + p["correct_label"] >= 0.2 and p["top_label_constant"] >= 0.75:
        return "single-letter"
    if p["items"] + p["asked"] >= 0.2:
        return "content gatherer"
    return "other"


# ------------------------------------------------------------------------- subspace compression
class LowRankHead:
    """A head whose final-position query and label-position keys are projected to rank r.

    ``fit`` stacks the head's post-RoPE query at the final position and keys at the 4 label
    positions over a dataset and takes their top singular directions; ``hooks(mcq, r)`` replaces
    the head's attention row at the final position by softmax(scale * (P_q q) . (P_k k_j)) over
    every position j (keys of non-label positions are projected too). r = d_head is the head
    itself (same row up to float rounding)."""

    def __init__(self, model, head: Head):
        self.model, self.head = model, head
        self.w = Weights.from_model(model)
        self.rep = self.w.W_Q.shape[1] // self.w.W_K.shape[1]
        self.Vq = self.Vk = None
        self._last = None  # (prompt set, its (q, k))

    def _qk(self, mcq: MCQSet):
        """q at END [B, dh] and k at every position [B, T, dh] of the head, after RoPE (one forward
        per prompt set: ``fit`` and every ``hooks`` call on the same set reuse it)."""
        if self._last is not None and self._last[0] is mcq:
            return self._last[1]
        self._last = (mcq, self._compute_qk(mcq))
        return self._last[1]

    def _compute_qk(self, mcq: MCQSet):
        l, h = self.head
        ps, w = mcq.prompts, self.w
        name = hook_name("resid_pre", l)
        with torch.no_grad():
            _, cache = self.model.run_with_cache(ps.clean_tokens, names_filter=lambda n: n == name)
            q, k, _ = w.project(l, cache[name])
            q, k = q[:, :, h], k[:, :, h // self.rep]
            if w.rotary:
                cos, sin = rotary_tables(self.model, ps.n_pos, q.device, q.dtype)
                q = rotate(q[:, :, None], cos, sin)[:, :, 0]
                k = rotate(k[:, :, None], cos, sin)[:, :, 0]
        return q[torch.arange(len(ps)), ps.answer_pos], k

    def fit(self, mcq: MCQSet) -> "LowRankHead":
        ps = mcq.prompts
        q, k = self._qk(mcq)
        labels = torch.stack([ps.positions[p] for p in LABEL_POSITIONS], 1)
        k_labels = k[torch.arange(len(ps))[:, None], labels].reshape(-1, k.shape[-1])
        self.Vq = torch.linalg.svd(q.float()).Vh  # [dh, dh], rows = directions by singular value
        self.Vk = torch.linalg.svd(k_labels.float()).Vh
        return self

    def hooks(self, mcq: MCQSet, rank: int):
        l, h = self.head
        ps = mcq.prompts
        q, k = self._qk(mcq)
        Pq = self.Vq[:rank].T @ self.Vq[:rank]
        Pk = self.Vk[:rank].T @ self.Vk[:rank]
        qr, kr = q.float() @ Pq, k.float() @ Pk
        scores = torch.einsum("be,bte->bt", qr, kr) * self.w.scale
        T = ps.n_pos
        allowed = torch.arange(T)[None, :] <= ps.answer_pos[:, None]
        row = scores.masked_fill(~allowed, float("-inf")).softmax(-1)
        rows = torch.arange(len(ps))

        def hook(pattern, hook=None):
            pattern = pattern.clone()
            pattern[rows, h, ps.answer_pos] = row.to(pattern.dtype)
            return pattern

        return [(hook_name("pattern", l), hook)]


def rank_curve(model, head: Head, fit_on: MCQSet, evaluate_on: MCQSet, ranks) -> dict[int, dict]:
    """Scores (loss, accuracy) of ``evaluate_on`` with the head at each rank (fit on ``fit_on``)."""
    lr = LowRankHead(model, head).fit(fit_on)
    return {r: scores(model, evaluate_on, lr.hooks(evaluate_on, r)) for r in ranks}


def ablation_vs_random(model, mcq: MCQSet, heads: list[Head], n_seeds: int = 3, seed: int = 0) -> dict:
    """Accuracy with ``heads`` mean-ablated vs the same number of random heads (several seeds)."""
    from interp.ablation import ablation_hooks

    base = scores(model, mcq)["accuracy"]
    hit = scores(model, mcq, ablation_hooks(model, heads, "mean", reference=mcq.prompts))["accuracy"]
    pool = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads) if (l, h) not in heads]
    rng = random.Random(seed)
    control = [scores(model, mcq, ablation_hooks(model, rng.sample(pool, len(heads)), "mean", reference=mcq.prompts))
               ["accuracy"] for _ in range(n_seeds)]
    return {"heads": heads, "accuracy": base, "ablated": hit, "random_mean": statistics.mean(control),
            "random_sd": statistics.pstdev(control), "random": control}
