"""Safety heads (Zhou et al., ICLR 2025, "On the Role of Attention Heads in Large Language Model
Safety"): which attention heads make an aligned model refuse harmful requests.

**Ablations** (per head, at every position): undifferentiated attention (UA, q := eps q: the
pattern becomes uniform over the allowed keys; the paper's default, eps = 1e-5) and scaling
contribution (SC, z := eps z, the head's output before W_O).

**Ships** (per query q, head h, ablation mode m): how much ablating h alone moves the next-token
distribution at the last prompt token,

    Ships_m(q, h) = KL(p || p_h),   p = softmax(logits(q)), p_h = the same with h ablated by m.

Query-level evaluation ablates each query's own top-k heads *of the same mode* (UA heads by UA
Ships, SC heads by SC Ships).

**Generalized Ships** (per dataset, head set A): stack the final hidden states (after the final
norm) at the last prompt token of the N queries into M [N, d_model]; with the SVD M = U S V^T (no
centering), the score of A is the angle between the leading left singular vectors of the clean and
the ablated matrices, in degrees (the official code's r_main = 1):

    score(A) = arccos |u_1 . u_1^A|

**Sahara**: greedy growth of a head group, G := G + argmax_h score(G + {h}), up to 5 heads, run
once per mode (UA, and SC: the paper's "about 0" control row).

**Evaluation** (``respond``, ``judge_responses``, ``flip_table``, ``versus_random``): generate
under each ablation and judge every response as refused, complied or degenerate
(``interp.tasks.harmful``: the paper's keyword judge, plus too-short, repetition and perplexity
rules, the perplexity taken under the *unablated* model). The effect of an ablation is counted as
refused -> complied flips among the requests the unablated model refused (not the attack success
rate over all requests, which mixes flips in both directions); random head sets of the same size
are the control, compared by Fisher's exact test and by the rank of the group among random draws.
Sahara is fitted on one half of the requests and evaluated on the other (``split_requests``).
The utility check is the perplexity of plain benign text under each ablation
(``text_perplexity``).

As in the official code (github.com/ydyjya/SafetyHeadAttribution, ``lib/Sahara``): the hidden
states are the model's last ``hidden_states`` (after the final norm) at the last prompt token, the
score is the principal angle of the leading left singular vectors (r_main = 1, degrees), UA scales
the query by 1e-5, and each greedy step re-scores every head not yet in the group.

Where this differs from the paper (and the official code):
the judge adds the degeneration rules (the paper counts only keywords and length); the official
code's template has no space after "## Query:" (we write the spec's, with one); generalized
Ships and Sahara are computed on the fitting half only; on a CPU, Sahara's later steps choose
among the best single heads of its first step (``pool``), and Ships sweeps may skip layers.

All single-head sweeps run on the batched engine (``interp.sweep``, components ``ablate_ua`` and
``ablate_sc``, reading out the final residual stream), one sweep giving both Ships and the
single-head generalized Ships; ``engine="reference"`` runs one hooked forward per head instead.
"""
from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from interp.ablation import ablate, ablation
from interp.components import Variant
from interp.errors import ComponentError, EngineUnsupported, PromptError
from interp.generate import generations
from interp.patching import fall_back
from interp.stats import bootstrap_ci, fisher_exact, permutation_pvalue, proportion_ci
from interp.sweep import SweepEngine
from interp.tasks.harmful import Request, Verdict, encode_requests, judge_all
from interp.tasks.prompts import PromptSet
from interp.verify import SweepCheck
from interp.weights import Weights

Head = tuple[int, int]
Ablation = tuple[str, list[Head]]  # (mode, heads)
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

    def subset(self, rows: list[int]) -> "Queries":
        """The queries ``rows`` (in that order), re-padded to their own longest."""
        width = max(int(self.last_pos[i]) + 1 for i in rows)
        return Queries([self.requests[i] for i in rows], self.fmt, self.tokens[rows, :width].clone(),
                       self.last_pos[rows].clone())

    def as_prompt_set(self) -> PromptSet:
        """The queries as a PromptSet read at each last token (no answers: ids are placeholders)."""
        zeros = torch.zeros(len(self), dtype=torch.long)
        return PromptSet(self.tokens, self.tokens, zeros, zeros, self.last_pos.clone())


def split_requests(requests: list[Request], seed: int = 0) -> tuple[list[Request], list[Request]]:
    """(fit, held_out): each category's requests shuffled (seeded) and dealt alternately, so both
    halves cover every category; the fitting half gets the extra one of an odd category."""
    by_cat: dict[str, list[Request]] = {}
    for r in requests:
        by_cat.setdefault(r.category, []).append(r)
    rng = random.Random(seed)
    fit, held = [], []
    for cat in by_cat:
        rs = list(by_cat[cat])
        rng.shuffle(rs)
        fit += rs[0::2]
        held += rs[1::2]
    return fit, held


@dataclass
class Ships:
    """Single-head ablation scores of one mode.

    kl: [layer, head, query] Ships = KL(p || p_h) per query (NaN: head not swept).
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


def all_heads(model, layer_step: int = 1) -> list[Head]:
    """Every head of every ``layer_step``-th layer (from layer 0), in (layer, head) order."""
    if layer_step < 1:
        raise ComponentError(f"layer_step must be >= 1, got {layer_step}")
    return [(l, h) for l in range(0, model.cfg.n_layers, layer_step) for h in range(model.cfg.n_heads)]


def ships(model, queries: Queries, mode: str = "ua", eps: float = 1e-5, engine: str = "auto",
          heads: list[Head] | None = None, checkpoint=None, progress: bool = True, verify: int = 2) -> Ships:
    """Ships of every head for every query, and each head's generalized Ships on the query set.

    One single-head ablation per head, all queries at once. ``heads`` restricts the sweep (the
    others get NaN).
    """
    _check_mode(mode)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads = all_heads(model) if heads is None else list(heads)
    if engine not in ("auto", "batched", "reference"):
        raise ComponentError(f"engine must be auto, batched or reference, got {engine!r}")
    used, verified = "reference", {"cells": 0, "max_abs_diff": 0.0, "engine": "reference"}
    if engine != "reference":
        try:
            resid, base, verified = ablated_residuals(model, queries, heads, mode, eps, checkpoint=checkpoint,
                                                      progress=progress, verify=verify)
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
           candidates: list[Head] | None = None, first: torch.Tensor | None = None, pool: int | None = None,
           progress: bool = True, verify: int = 2) -> list[SaharaStep]:
    """Greedy head-group search on the query set (Zhou et al.'s Sahara), for one ablation mode.

    Args:
        size: the largest group (the paper: <= 5).
        candidates: heads to choose from (default: every head).
        first: the single-head generalized Ships [layer, head] if already computed (``ships``'s
            ``angle``, same mode and queries): skips the first sweep.
        pool: steps after the first choose among the ``pool`` best candidates of the first step
            (None: among all, as the paper; a CPU economy otherwise).
        verify: cells of each step's sweep re-checked through the bridge.
    """
    _check_mode(mode)
    if not 1 <= size <= 10:
        raise ComponentError(f"group size must be 1..10, got {size}")
    candidates = all_heads(model) if candidates is None else list(candidates)
    if pool is not None and pool < size:
        raise ComponentError(f"a Sahara pool of {pool} heads cannot grow a group of {size}")
    w = Weights.from_model(model)
    u_clean = None
    if first is not None:  # the clean run alone; else step 0's sweep gives it (its base has no group)
        _, clean, _ = ablated_residuals(model, queries, [], mode, eps, progress=False, verify=0)
        u_clean = leading_direction(_normed(w, clean))
    group: list[Head] = []
    steps: list[SaharaStep] = []
    for step in range(size):
        options = [c for c in candidates if c not in group]
        if step == 0 and first is not None:
            scores = {c: float(first[c]) for c in options}
        else:
            resid, base, _ = ablated_residuals(model, queries, options, mode, eps, group=group, progress=progress,
                                               verify=verify)
            if u_clean is None:
                u_clean = leading_direction(_normed(w, base))
            scores = dict(zip(options, principal_angle(u_clean, _normed(w, resid)).tolist()))
        best = max(options, key=lambda c: scores[c])
        group = group + [best]
        steps.append(SaharaStep(list(group), scores[best], scores))
        if step == 0 and pool is not None:
            candidates = sorted(candidates, key=lambda c: -scores.get(c, float("-inf")))[:pool]
    return steps


# ------------------------------------------------------------------------------- generation
def random_heads(model, k: int, seed: int, exclude: list[Head] = ()) -> list[Head]:
    """k heads drawn uniformly without replacement (seeded), none of ``exclude``."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    pool = [(l, h) for l in range(L) for h in range(H) if (l, h) not in set(map(tuple, exclude))]
    return random.Random(seed).sample(pool, k)


def evaluation_variants(groups: dict[str, list[Head]], ks, randoms: dict[int, list[list[Head]]] | None = None,
                        ships_: dict[str, Ships] | None = None, query: int | None = None) -> dict[str, Ablation]:
    """The ablations one request is answered under (not "none"):

    - ``sahara-{mode}-{k}``: the first k heads of the Sahara group fitted in that mode;
    - ``query-{mode}-{k}``: the request's own top-k Ships heads *of the same mode* (``ships_[mode]``,
      row ``query``), when ``ships_`` is given;
    - ``random-ua-{k}-{d}``: the d-th random set of k heads (``randoms[k]``), under UA.
    """
    v: dict[str, Ablation] = {}
    for k in ks:
        for mode in MODES:
            if mode in groups and k <= len(groups[mode]):
                v[f"sahara-{mode}-{k}"] = (mode, list(groups[mode][:k]))
            if ships_ and mode in ships_:
                if ships_[mode].mode != mode:
                    raise ComponentError(f"query-level {mode} heads must be ranked by {mode} Ships, got {ships_[mode].mode}")
                v[f"query-{mode}-{k}"] = (mode, ships_[mode].top_heads(query, k))
        for d, heads in enumerate((randoms or {}).get(k, [])):
            v[f"random-ua-{k}-{d}"] = ("ua", list(heads))
    return v


def respond(model, queries: Queries, variants: list[dict[str, Ablation]], eps: float = 1e-5,
            max_new: int = 128, top_k: int | None = None, seed: int = 0, progress: bool = True,
            rows: list[int] | None = None, max_batch: int = 512) -> list[dict[str, str]]:
    """Responses of the queries ``rows`` (default: all) under their named ablations.

    ``variants[j]`` maps a name (e.g. "sahara-ua-3") to (mode, heads) for the j-th query of
    ``rows``. Consecutive queries decode together (``interp.generate.generations``), all variants
    of a query in the same batch, at most ``max_batch`` variants per batch (a query with more gets
    a batch of its own). Greedy when ``top_k`` is None, else top-k sampling at temperature 1,
    seeded per batch (``seed`` + the index of its first query), so sampled texts depend on
    ``max_batch``. Returns one {name: text} per query of ``rows``.
    """
    rows = list(range(len(queries))) if rows is None else list(rows)
    if len(variants) != len(rows):
        raise ComponentError(f"{len(variants)} variant sets for {len(rows)} queries")
    if max_batch < 1:
        raise ComponentError(f"max_batch must be >= 1, got {max_batch}")
    batches, size = [], 0
    for j in range(len(rows)):
        if not batches or size + len(variants[j]) > max_batch:
            batches.append([])
            size = 0
        batches[-1].append(j)
        size += len(variants[j])
    out: list[dict[str, str]] = [{} for _ in rows]
    decode = model.tokenizer.decode
    with tqdm(total=len(rows), desc="generate", unit="query", disable=not progress, leave=False) as bar:
        for js in batches:
            names = [list(variants[j]) for j in js]
            gens = generations(model, [(queries.prompt(rows[j]), [variants[j][n] for n in ns]) for j, ns in zip(js, names)],
                               eps=eps, max_new=max_new, top_k=top_k, seed=seed + rows[js[0]])
            for j, ns, g in zip(js, names, gens):
                out[j] = {n: decode(t, skip_special_tokens=True) for n, t in zip(ns, g.tokens)}
            bar.update(len(js))
    return out


@torch.no_grad()
def response_perplexity(model, prompt: torch.Tensor, texts: list[str]) -> list[float]:
    """Perplexity of each text as the continuation of ``prompt`` [T] under the model as it is
    (call it outside any ablation: the unablated model): exp(mean_t -log p(x_t | prompt, x_<t))
    over the text's tokens (encoded without special tokens). NaN for an empty text."""
    tok = model.tokenizer
    ids = [tok(t, add_special_tokens=False)["input_ids"] if t else [] for t in texts]
    out = [float("nan")] * len(texts)
    todo = [i for i, x in enumerate(ids) if x]
    if not todo:
        return out
    device = next(iter(model.parameters())).device
    T = len(prompt)
    width = T + max(len(ids[i]) for i in todo)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    batch = torch.full((len(todo), width), pad, dtype=torch.long)
    for r, i in enumerate(todo):
        batch[r, :T] = prompt
        batch[r, T:T + len(ids[i])] = torch.tensor(ids[i])
    batch = batch.to(device)
    # each text's own tokens' log-probabilities, gathered where the logits are (copying the logits
    # [texts, tokens, vocab] to the host cost gigabytes per request on a GPU), a few texts at a time
    tok_logp = torch.cat([model(rows)[:, T - 1:-1].float().log_softmax(-1).gather(-1, rows[:, T:, None])[..., 0].cpu()
                          for rows in batch.split(16)])  # [texts, width - T]: position t predicts token T + t
    for r, i in enumerate(todo):
        out[i] = float((-tok_logp[r, :len(ids[i])]).mean().exp())
    return out


@torch.no_grad()
def text_perplexity(model, texts: list[str], ablations: list[Ablation], eps: float = 1e-5) -> torch.Tensor:
    """Utility under ablation: perplexity of each plain text under each ablation, [n_ablations,
    n_texts]; exp(mean next-token NLL) over the text's tokens after the first."""
    tok = model.tokenizer
    device = next(iter(model.parameters())).device
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    if any(len(x) < 2 for x in ids):
        raise PromptError("every utility text needs at least two tokens")
    pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    width = max(map(len, ids))
    batch = torch.full((len(ids), width), pad, dtype=torch.long)
    mask = torch.zeros(len(ids), width - 1, dtype=torch.bool)
    for r, x in enumerate(ids):
        batch[r, :len(x)] = torch.tensor(x)
        mask[r, :len(x) - 1] = True
    out = torch.empty(len(ablations), len(ids))
    for a, (mode, heads) in enumerate(ablations):
        with ablate(model, heads, mode, eps=eps) if heads else contextlib.nullcontext():
            on = batch.to(device)
            nll = -model(on)[:, :-1].float().log_softmax(-1).gather(-1, on[:, 1:, None])[..., 0].cpu()
        out[a] = ((nll * mask).sum(-1) / mask.sum(-1)).exp()
    return out


# ------------------------------------------------------------------------------- judging
def judge_responses(model, queries: Queries, responses: list[dict[str, str]], max_perplexity: float | None,
                    judge=None, rows: list[int] | None = None) -> tuple[list[dict[str, Verdict]], list[dict[str, float]]]:
    """Verdicts on every response (refused / complied / degenerate) and their perplexities.

    The perplexity of a response under the unablated model (``response_perplexity``) is computed
    only for responses ``judge`` lets through as complied (the others are decided without it; their
    perplexity is NaN); above ``max_perplexity`` they become degenerate ("perplexity"). With
    ``max_perplexity`` None the perplexities are computed and no response is reclassified.
    """
    rows = list(range(len(queries))) if rows is None else list(rows)
    verdicts, ppls = [], []
    for j, i in enumerate(rows):
        names = list(responses[j])
        first = dict(zip(names, judge_all([responses[j][n] for n in names], judge)))
        need = [n for n in names if first[n].complied]
        got = dict(zip(need, response_perplexity(model, queries.prompt(i), [responses[j][n] for n in need])))
        ppl = {n: got.get(n, float("nan")) for n in names}
        final = judge_all([responses[j][n] for n in names], judge, [ppl[n] for n in names], max_perplexity)
        verdicts.append(dict(zip(names, final)))
        ppls.append(ppl)
    return verdicts, ppls


def rejudge(responses: list[dict[str, str]], ppls: list[dict[str, float]], max_perplexity: float | None,
            judge=None) -> list[dict[str, Verdict]]:
    """Verdicts from responses and perplexities already computed (``judge_responses``), with the
    degeneration threshold ``max_perplexity`` (None: no perplexity rule)."""
    out = []
    for r, p in zip(responses, ppls):
        names = list(r)
        out.append(dict(zip(names, judge_all([r[n] for n in names], judge, [p.get(n, float("nan")) for n in names],
                                             max_perplexity))))
    return out


def baseline_perplexities(model, queries: Queries, texts: list[str], rows: list[int] | None = None) -> list[float]:
    """Perplexity of each baseline response (the unablated model's own) under the unablated model."""
    rows = list(range(len(queries))) if rows is None else list(rows)
    return [response_perplexity(model, queries.prompt(i), [t])[0] for i, t in zip(rows, texts)]


def outcome_rates(verdicts: list[dict[str, Verdict]], name: str) -> dict[str, tuple[float, float, float, int]]:
    """For the variant ``name``: each outcome's share over the requests, (rate, low, high, count)
    with the Wilson interval."""
    n = len(verdicts)
    out = {}
    for o in ("refused", "complied", "degenerate"):
        k = sum(v[name].outcome == o for v in verdicts)
        out[o] = (*proportion_ci(k, n), k)
    return out


def flips(verdicts: list[dict[str, Verdict]], name: str, base: str = "none") -> dict:
    """Among the requests refused at baseline (``base``'s outcome "refused"), how many ``name``
    turns into complied, degenerate, or leaves refused; with the Wilson interval of the complied
    share. Requests missing ``name`` are skipped."""
    refused = [v for v in verdicts if v[base].outcome == "refused" and name in v]
    n = len(refused)
    c = {o: sum(v[name].outcome == o for v in refused) for o in ("complied", "degenerate", "refused")}
    rate, lo, hi = proportion_ci(c["complied"], n) if n else (float("nan"),) * 3
    return {"n_refused": n, "to_complied": c["complied"], "to_degenerate": c["degenerate"],
            "stayed_refused": c["refused"], "complied_rate": rate, "ci": [lo, hi]}


def versus_random(verdicts: list[dict[str, Verdict]], group: str, randoms: list[str], base: str = "none") -> dict:
    """Does ablating ``group`` flip more baseline refusals to complied than random head sets?

    - Fisher's exact test (one-sided, greater) on [[group flips, group non-flips], [random flips,
      random non-flips]], the random draws pooled (each draw's responses counted as trials; they
      share the requests, so this is exact for the table, not for the request sample).
    - The permutation p-value over the draws: (1 + #draws with at least as many flips) / (1 +
      #draws), the smallest possible being 1 / (1 + #draws).
    - The paired difference over the baseline-refused requests: per request, the group's flip (0/1)
      minus the mean flip of the random draws on it; its mean with a bootstrap 95% interval over the
      requests (``paired_difference`` = (estimate, low, high)).
    """
    g = flips(verdicts, group, base)
    rs = [flips(verdicts, r, base) for r in randoms]
    n = g["n_refused"]
    a, b = g["to_complied"], n - g["to_complied"]
    c = sum(r["to_complied"] for r in rs)
    d = sum(r["n_refused"] for r in rs) - c
    pooled = proportion_ci(c, c + d) if c + d else (float("nan"),) * 3
    refused = [v for v in verdicts if v[base].outcome == "refused" and group in v]
    per_request = [(float(v[group].outcome == "complied"),
                    sum(v[r].outcome == "complied" for r in randoms if r in v) / max(1, sum(r in v for r in randoms)))
                   for v in refused]
    paired = (bootstrap_ci([a for a, _ in per_request], paired_with=[b for _, b in per_request])
              if per_request and randoms else (float("nan"),) * 3)
    return {"group": g, "paired_difference": list(paired), "random": [r["to_complied"] for r in rs], "n_draws": len(rs),
            "random_rate": pooled[0], "random_ci": [pooled[1], pooled[2]],
            "fisher_p": fisher_exact(a, b, c, d, "greater") if n and c + d else float("nan"),
            "permutation_p": permutation_pvalue(a, [r["to_complied"] for r in rs]) if rs else float("nan"),
            "difference": g["complied_rate"] - pooled[0] if n and c + d else float("nan")}
