"""Safety heads (Zhou et al., ICLR 2025, "On the Role of Attention Heads in Large Language Model
Safety"): which attention heads make an aligned model refuse harmful requests.

**Ships** (per query q, head h): how much ablating h alone moves the next-token distribution at the
last prompt token,

    Ships(q, h) = KL(p || p_h),   p = softmax(logits(q)), p_h = the same with h ablated.

**Generalized Ships** (per dataset, head set A): stack the final hidden states (after the final
norm) at the last prompt token of the N queries into M [N, d_model]; with the SVD M = U S V^T (no
centering), the score of A is the angle between the leading left singular vectors of the clean and
the ablated matrices, in degrees (the official code's r_main = 1):

    score(A) = arccos |u_1 . u_1^A|

**Sahara**: greedy growth of a head group, G := G + argmax_h score(G + {h}), up to 5 heads.

**Ablations** (per head, at every position): undifferentiated attention (UA, q := eps q: the pattern
becomes uniform over the allowed keys; the paper's default, eps = 1e-5) and scaling contribution
(SC, z := eps z).

**Evaluation**: ablate a query's own top-k Ships heads (query level) or the Sahara group (dataset
level), generate, judge with the rule-based judge; the attack success rate (ASR) is the share of
harmful requests answered. Random head sets of the same size are the control; the benign set under
the same ablations checks that the model still answers ordinary requests.

All single-head sweeps run on the batched engine (``interp.sweep``, components ``ablate_ua`` and
``ablate_sc``, reading out the final residual stream), one sweep giving both Ships and the
single-head generalized Ships; ``engine="reference"`` runs one hooked forward per head instead.
"""
from __future__ import annotations

import contextlib
import math
import random
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from interp.ablation import ablate, ablation
from interp.components import Variant
from interp.errors import ComponentError, EngineUnsupported
from interp.generate import generate
from interp.patching import fall_back
from interp.sweep import SweepEngine
from interp.verify import SweepCheck
from interp.weights import Weights
from interp.tasks.harmful import Request, encode_requests, judge_all
from interp.tasks.prompts import PromptSet

Head = tuple[int, int]
MODES = ("ua", "sc")


@dataclass
class Queries:
    """Requests formatted and tokenized for one model: tokens [B, T] right-padded, last_pos [B]."""

    requests: list[Request]
    fmt: str
    tokens: torch.Tensor
    last_pos: torch.Tensor

    @classmethod
    def encode(cls, model, requests: list[Request], fmt: str = "chat") -> "Queries":
        tokens, last_pos = encode_requests(model, requests, fmt, prepend_bos=None)
        return cls(list(requests), fmt, tokens, last_pos)

    def __len__(self) -> int:
        return len(self.requests)

    def prompt(self, i: int) -> torch.Tensor:
        """Query i's tokens without padding: [T_i]."""
        return self.tokens[i, : int(self.last_pos[i]) + 1]

    def as_prompt_set(self) -> PromptSet:
        """The queries as a PromptSet read at each last token (no answers: ids are placeholders)."""
        zeros = torch.zeros(len(self), dtype=torch.long)
        return PromptSet(self.tokens, self.tokens, zeros, zeros, self.last_pos.clone())


@dataclass
class Ships:
    """Single-head ablation scores.

    kl: [layer, head, query] Ships = KL(p || p_h) per query.
    angle: [layer, head] generalized Ships of each head alone on the whole query set (degrees).
    """

    kl: torch.Tensor
    angle: torch.Tensor
    mode: str
    eps: float
    meta: dict = field(default_factory=dict)

    def top_heads(self, query: int, k: int = 10) -> list[Head]:
        """The k heads whose ablation moves query ``query``'s next-token distribution most."""
        return _top(self.kl[:, :, query], k)

    def dataset_top(self, k: int = 10) -> list[Head]:
        """The k heads with the largest generalized Ships."""
        return _top(self.angle, k)

    def to_dict(self) -> dict:
        return {"kl": self.kl.tolist(), "angle": self.angle.tolist(), "mode": self.mode, "eps": self.eps,
                "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict) -> "Ships":
        return cls(torch.tensor(d["kl"]), torch.tensor(d["angle"]), d["mode"], d["eps"], d.get("meta", {}))


def _top(scores: torch.Tensor, k: int) -> list[Head]:
    """The k largest entries of scores [layer, head] (heads left out of a sweep, NaN, come last)."""
    H = scores.shape[1]
    flat = scores.flatten().nan_to_num(nan=float("-inf"))
    idx = flat.topk(min(k, int(torch.isfinite(flat).sum()))).indices.tolist()
    return [(i // H, i % H) for i in idx]


# ------------------------------------------------------------------------------- readouts
def kl_from_residual(w: Weights, resid: torch.Tensor, clean_logprobs: torch.Tensor) -> torch.Tensor:
    """KL(p_clean || p) of final residuals resid [N, B, d] against clean log-probs [B, vocab]: [N, B]."""
    out = torch.empty(resid.shape[:2])
    for n in range(resid.shape[0]):
        logp = _logits(w, resid[n]).log_softmax(-1)
        out[n] = (clean_logprobs.exp() * (clean_logprobs - logp)).sum(-1).cpu()
    return out


def _logits(w: Weights, resid: torch.Tensor) -> torch.Tensor:
    logits = w.norm(resid.to(device=w.W_U.device, dtype=w.W_U.dtype), w.ln_final) @ w.W_U
    return (logits if w.b_U is None else logits + w.b_U).float()


def leading_direction(hidden: torch.Tensor) -> torch.Tensor:
    """u_1 of hidden [..., N, d] = U S V^T: the leading left singular vector, [..., N]."""
    u, _, _ = torch.linalg.svd(hidden.double(), full_matrices=False)
    return u[..., :, 0]


def principal_angle(u_clean: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
    """arccos |u_1 . u_1^A| in degrees, for hidden [..., N, d] against the clean u_1 [N]."""
    cos = (leading_direction(hidden) @ u_clean.double()).abs().clamp(max=1.0)
    return torch.rad2deg(torch.arccos(cos)).float()


# ------------------------------------------------------------------------------- sweeps
def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ComponentError(f"unknown ablation {mode!r}: use ua (undifferentiated attention) or sc (scaling contribution)")


def ablated_residuals(model, queries: Queries, heads: list[Head], mode: str = "ua", eps: float = 1e-5,
                      group: list[Head] = (), checkpoint=None, progress: bool = True,
                      verify: int = 2) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Final residual stream at each query's last token with ``group`` + each of ``heads`` ablated.

    Returns (ablated [n_heads, B, d], base [B, d], verified) where base has only ``group`` ablated
    and ``verified`` is the evidence of ``verify`` heads re-run through the bridge
    (``interp.verify``). Batched engine: each head's variant starts at its layer from the cached
    base run; interventions registered on the model act too.
    """
    _check_mode(mode)
    twice = sorted(set(heads) & set(map(tuple, group)))
    if twice:
        raise ComponentError(f"head {twice[0][0]}.{twice[0][1]} is already ablated in the group")
    extra = [ablation(model, list(group), mode, eps=eps)] if group else []
    engine = SweepEngine(model, queries.as_prompt_set(), eps=eps, interventions=extra)
    variants = [Variant(l, h, None) for l, h in heads]
    check = SweepCheck(engine, f"ablate_{mode}", variants, verify, readout="residual")
    resid = engine.run(f"ablate_{mode}", variants, checkpoint=checkpoint, progress=progress, readout="residual")
    verified = check.check(resid)
    base = engine.cache("base").final
    rows = torch.arange(len(queries), device=base.device)
    return resid, base[rows, engine.prompts.answer_pos].float().cpu(), verified


def _reference_residuals(model, queries: Queries, heads: list[Head], mode, eps, group=(), progress=True):
    """The same through the TransformerBridge: one hooked forward per head (the reference)."""
    L = model.cfg.n_layers
    name = f"blocks.{L - 1}.hook_resid_post"
    rows = torch.arange(len(queries))
    device = next(iter(model.parameters())).device

    def final(extra):
        heads = list(group) + extra
        with torch.no_grad(), ablate(model, heads, mode, eps=eps) if heads else contextlib.nullcontext():
            _, cache = model.run_with_cache(queries.tokens.to(device), names_filter=lambda n: n == name)
        return cache[name][rows, queries.last_pos].float().cpu()

    base = final([])
    resid = torch.stack([final([h]) for h in tqdm(heads, desc=f"ships {mode} (reference)", disable=not progress, leave=False)])
    return resid, base


def ships(model, queries: Queries, mode: str = "ua", eps: float = 1e-5, engine: str = "auto",
          heads: list[Head] | None = None, checkpoint=None, progress: bool = True) -> Ships:
    """Ships of every head for every query, and each head's generalized Ships on the query set.

    One single-head ablation per head, all queries at once. ``heads`` restricts the sweep (the
    others get NaN).
    """
    _check_mode(mode)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads = [(l, h) for l in range(L) for h in range(H)] if heads is None else list(heads)
    if engine not in ("auto", "batched", "reference"):
        raise ComponentError(f"engine must be auto, batched or reference, got {engine!r}")
    used, verified = "reference", {"cells": 0, "max_abs_diff": 0.0, "engine": "reference"}
    if engine != "reference":
        try:
            resid, base, verified = ablated_residuals(model, queries, heads, mode, eps, checkpoint=checkpoint,
                                                      progress=progress)
            used = "batched"
        except EngineUnsupported as exc:
            if engine == "batched":
                raise
            fall_back(model, "ships", str(exc))
    if used == "reference":
        resid, base = _reference_residuals(model, queries, heads, mode, eps, progress=progress)
    w = Weights.from_model(model)
    device = w.W_U.device
    clean_logprobs = _logits(w, base.to(device)).log_softmax(-1)
    kl = torch.full((L, H, len(queries)), float("nan"))
    angle = torch.full((L, H), float("nan"))
    kl_heads = kl_from_residual(w, resid.to(device), clean_logprobs)
    u_clean = leading_direction(_normed(w, base))
    angles = principal_angle(u_clean, _normed(w, resid))
    for i, (l, h) in enumerate(heads):
        kl[l, h], angle[l, h] = kl_heads[i], angles[i]
    return Ships(kl, angle, mode, eps, meta={"n_queries": len(queries), "fmt": queries.fmt,
                                             "engine": used, "verified": verified})


def _normed(w: Weights, resid: torch.Tensor) -> torch.Tensor:
    """The final norm's output of resid [..., d] (what generalized Ships stacks)."""
    return w.norm(resid.to(device=w.W_U.device, dtype=w.W_U.dtype), w.ln_final).float().cpu()


@dataclass
class SaharaStep:
    group: list[Head]  # the group after this step
    score: float  # its generalized Ships (degrees)
    scores: dict[Head, float]  # every candidate's score at this step


def sahara(model, queries: Queries, size: int = 5, mode: str = "ua", eps: float = 1e-5,
           candidates: list[Head] | None = None, first: torch.Tensor | None = None,
           progress: bool = True) -> list[SaharaStep]:
    """Greedy head-group search on the query set (Zhou et al.'s Sahara).

    Args:
        size: the largest group (the paper: <= 5).
        candidates: heads to choose from (default: every head).
        first: the single-head generalized Ships [layer, head] if already computed (``ships``'s
            ``angle``): skips the first sweep.
    """
    _check_mode(mode)
    if not 1 <= size <= 10:
        raise ComponentError(f"group size must be 1..10, got {size}")
    L, H = model.cfg.n_layers, model.cfg.n_heads
    candidates = [(l, h) for l in range(L) for h in range(H)] if candidates is None else list(candidates)
    w = Weights.from_model(model)
    _, clean, _ = ablated_residuals(model, queries, [], mode, eps, progress=False)
    u_clean = leading_direction(_normed(w, clean))
    group: list[Head] = []
    steps: list[SaharaStep] = []
    for step in range(size):
        pool = [c for c in candidates if c not in group]
        if step == 0 and first is not None:
            scores = {c: float(first[c]) for c in pool}
        else:
            resid, _, _ = ablated_residuals(model, queries, pool, mode, eps, group=group, progress=progress)
            scores = dict(zip(pool, principal_angle(u_clean, _normed(w, resid)).tolist()))
        best = max(pool, key=lambda c: scores[c])
        group = group + [best]
        steps.append(SaharaStep(list(group), scores[best], scores))
    return steps


# ------------------------------------------------------------------------------- evaluation
def random_heads(model, k: int, seed: int, exclude: list[Head] = ()) -> list[Head]:
    """k heads drawn uniformly without replacement (seeded), none of ``exclude``."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    pool = [(l, h) for l in range(L) for h in range(H) if (l, h) not in set(exclude)]
    return random.Random(seed).sample(pool, k)


def respond(model, queries: Queries, variants: list[dict[str, tuple[str, list[Head]]]], eps: float = 1e-5,
            max_new: int = 128, top_k: int | None = None, seed: int = 0, progress: bool = True) -> list[dict[str, str]]:
    """Responses of every query under its named ablations.

    ``variants[i]`` maps a name (e.g. "query top-3 ua") to (mode, heads) for query i; all of a
    query's variants decode together. Greedy when ``top_k`` is None, else top-k sampling at
    temperature 1 (seeded per query).
    """
    out = []
    for i in tqdm(range(len(queries)), desc="generate", disable=not progress, leave=False):
        names = list(variants[i])
        texts = generate(model, queries.prompt(i), [variants[i][n] for n in names], eps=eps,
                         max_new=max_new, top_k=top_k, seed=seed + i)
        out.append(dict(zip(names, texts)))
    return out


def attack_success(responses: list[dict[str, str]], judge=None) -> dict[str, float]:
    """Per variant name, the share of responses the judge counts as complied (ASR on harmful
    requests; the answer rate on benign ones)."""
    names = list(responses[0])
    return {n: sum(v.complied for v in judge_all([r[n] for r in responses], judge)) / len(responses)
            for n in names}


def standard_variants(model, ships_: Ships, group: list[Head], n_queries: int, ks=(1, 2, 3, 4, 5),
                      n_random: int = 3, modes=MODES) -> list[dict[str, tuple[str, list[Head]]]]:
    """The paper's comparisons, per query: none; its own top-k Ships heads (query level); the first
    k Sahara heads (dataset level); k random heads (``n_random`` seeds); UA and SC for the first two."""
    out = []
    for q in range(n_queries):
        v = {"none": ("ua", [])}
        for k in ks:
            for mode in modes:
                v[f"query top-{k} {mode}"] = (mode, ships_.top_heads(q, k))
            if k <= len(group):
                v[f"sahara top-{k} ua"] = ("ua", group[:k])
            for s in range(n_random):
                v[f"random-{k} seed {s} ua"] = ("ua", random_heads(model, k, seed=1000 * k + s))
        out.append(v)
    return out


def asr_table(asr: dict[str, float], ks=(1, 2, 3, 4, 5)) -> dict[str, list[float | None]]:
    """Rows of ASR per group size: query-level ua/sc, Sahara, random (mean and std over seeds)."""
    def row(fmt):
        return [asr.get(fmt.format(k=k)) for k in ks]

    rand = [[v for n, v in asr.items() if n.startswith(f"random-{k} seed")] for k in ks]
    return {
        "query-level UA": row("query top-{k} ua"),
        "query-level SC": row("query top-{k} sc"),
        "Sahara UA": row("sahara top-{k} ua"),
        "random UA (mean)": [sum(r) / len(r) if r else None for r in rand],
        "random UA (std)": [_std(r) if r else None for r in rand],
    }


def _std(xs: list[float]) -> float:
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / max(1, len(xs) - 1))
