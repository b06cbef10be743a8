"""Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality").

A retrieval head copies the needle from a long context into the answer: while the model greedily
decodes the answer to a needle-in-a-haystack (NIAH) question, the head's strongest attention lands
on the context token that the step is about to emit.

**Score** (the paper's ``retrieval_head_detection.py``). The prompt is prefilled without its last
token; decoding step t feeds the last token so far (step 0: the prompt's last token) and emits
w_t. With the needle span [s, e) and j_t = argmax of the head's attention at step t:

    score(head, episode) = sum_t 1/(e - s) * [s <= j_t < e and prompt[j_t] == w_t]

so a head that copies the whole span token by token scores 1. The span is the paper's: the first
window of len(answer) tokens whose token set holds > 90% of the answer's (``needle_window``; for
answers of more than 10 distinct tokens it starts a token early, as in the paper). Greedy decoding
stops at a newline once the answer has begun, or after ``max_new`` (50) tokens. An episode counts
only if ROUGE-1 recall x 100 of the answer in the response is > 50; a head's score is the mean over
kept episodes, its activation frequency the share of kept episodes where it scored > 0. Retrieval
head: score > 0.1.

**Masking** (the paper's ``needle_in_haystack_with_mask.py``): query zeroing (q := 0, uniform
attention) of K heads at every decoding step, from the query that emits the first answer token
(the prompt's last token) on; the rest of the prompt is never masked. Top-K heads by score against
K random heads from outside the top quarter (the paper: outside its top 100), NIAH recall = ROUGE-1
recall x 100. Here the heads are *cross-fitted*: the needles are split in two folds, and an
episode's heads are ranked on the other fold's episodes only, so no head is chosen on the episodes
it is tested on; ``n_random`` draws per K.

Every decode is ``interp.generate.generations`` (the package's KV-cached decoder, held equal to the
bridge by tests/test_retrieval_heads.py): many episodes and masking variants run as one batch.

Deviations from the paper: ROUGE-1 without Porter stemming (``interp.tasks.rouge1_recall``; a
verbatim copy scores the same, an inflected word counts as missed here); random heads are drawn
outside the top quarter rather than the top 100 (SmolLM2 has 270 heads); the heads are
cross-fitted; contexts of 0.25K-2K tokens on the CPU (up to 8K in the "cuda" setting) with this
project's needles and filler (``interp.tasks.needle``).
"""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

import torch

from interp.errors import InterpError
from interp.generate import generations
from interp.stats import bootstrap_ci, bootstrap_indices, jaccard
from interp.tasks.needle import Episode, needle_window, rouge1_recall

Head = tuple[int, int]
BINS = ("0", "(0, 0.1]", "(0.1, 0.5]", "> 0.5")
REGIONS = ("answer span", "rest of the needle", "filler", "question and template", "first token", "answer so far")


def retrieval_score(top1: torch.Tensor, emitted, prompt: torch.Tensor, span: tuple[int, int]) -> torch.Tensor:
    """Per head [layer, head]: sum over steps of 1/(e - s) where the step's top-1 attended position
    j lies in [s, e) and prompt[j] equals the token the step emitted.

    Args:
        top1: [steps, layer, head] the top-1 attended position of the query of each step.
        emitted: [steps] the token each step emitted (the step's query is the token before it).
        prompt: [T] the prompt's tokens; positions >= T (the answer so far) never count.
        span: (s, e) the needle span.
    """
    s, e = span
    L, H = top1.shape[1:]
    if top1.shape[0] == 0:
        return torch.zeros(L, H)
    j = top1.long()
    w = torch.as_tensor(emitted, dtype=torch.long)[:, None, None]
    inside = (j >= s) & (j < e) & (j < len(prompt))
    copied = prompt.cpu()[j.clamp(max=len(prompt) - 1)] == w
    return (inside & copied).float().sum(0) / (e - s)


@dataclass
class Scored:
    """One episode decoded greedily: the answer, its recall, where each head looked, its scores."""

    episode: Episode
    tokens: list[int]
    text: str
    recall: float  # ROUGE-1 recall x 100 of the answer in the response
    span: tuple[int, int]  # the paper's needle window
    top1: torch.Tensor  # [steps, layer, head]
    score: torch.Tensor  # [layer, head]


@dataclass
class RetrievalScores:
    """Scores of every head over a set of decoded episodes (``score_heads``)."""

    scored: list[Scored]
    min_recall: float = 50.0
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def kept(self) -> list[int]:
        """Indices of the episodes retrieved (recall > min_recall): the ones that count."""
        return [i for i, s in enumerate(self.scored) if s.recall > self.min_recall]

    @property
    def per_episode(self) -> list[torch.Tensor]:
        return [self.scored[i].score for i in self.kept]

    @property
    def recall(self) -> list[float]:
        return [s.recall for s in self.scored]

    @property
    def needle_ids(self) -> list[str]:
        """Needle of each kept episode."""
        return [self.scored[i].episode.needle_id for i in self.kept]

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.scored[0].top1.shape[1:]) if self.scored else (0, 0)

    def _stack(self) -> torch.Tensor:
        if "stack" not in self._cache:
            per = self.per_episode
            self._cache["stack"] = torch.stack(per) if per else torch.zeros(0, *self.shape)
        return self._cache["stack"]

    @property
    def score(self) -> torch.Tensor:
        """[layer, head] mean over kept episodes (zeros if none was kept)."""
        st = self._stack()
        return st.mean(0) if len(st) else torch.zeros(self.shape)

    @property
    def frequency(self) -> torch.Tensor:
        """[layer, head] share of kept episodes where the head scored > 0."""
        st = self._stack()
        return (st > 0).float().mean(0) if len(st) else torch.zeros(self.shape)

    def subset(self, needles) -> "RetrievalScores":
        """The scores over the episodes of ``needles`` only."""
        needles = set(needles)
        return RetrievalScores([s for s in self.scored if s.episode.needle_id in needles], self.min_recall)

    def top(self, k: int) -> list[Head]:
        """The k heads of highest score (ties broken by activation frequency, then head order)."""
        H = self.shape[1]
        key = self.score.flatten() + 1e-6 * self.frequency.flatten()  # ties (e.g. many zeros) by frequency
        return [(int(i) // H, int(i) % H) for i in key.topk(k).indices]

    def bins(self, score: torch.Tensor | None = None) -> dict[str, float]:
        """Share of heads with score 0, (0, 0.1], (0.1, 0.5], > 0.5 (the paper's four bins)."""
        s = (self.score if score is None else score).flatten()
        n = s.numel()
        return {BINS[0]: float((s == 0).sum()) / n, BINS[1]: float(((s > 0) & (s <= 0.1)).sum()) / n,
                BINS[2]: float(((s > 0.1) & (s <= 0.5)).sum()) / n, BINS[3]: float((s > 0.5).sum()) / n}

    def bins_ci(self, n_boot: int = 1000, seed: int = 0) -> dict[str, tuple[float, float | None, float | None]]:
        """Each bin's share and the share of retrieval heads (score > 0.1), with percentile
        bootstrap intervals over the kept episodes (``interp.stats.bootstrap_indices``).

        The bins "0" and "(0, 0.1]" get no interval (None, None): a head leaves bin 0 the first time
        it copies in any episode, so these shares move with the number of distinct episodes, and a
        bootstrap sample (which repeats some episodes and drops others) has fewer: its interval lies
        beside the estimate, not around it. ``bins_by_episodes`` shows that dependence instead."""
        st = self._stack()
        if not len(st):
            raise InterpError("no episode was retrieved: no score distribution")

        def share(sample, b):
            score = st[sample].mean(0)
            return self.bins(score)[b] if b in BINS else float((score > 0.1).float().mean())

        full = self.bins()
        out: dict[str, tuple[float, float | None, float | None]] = {b: (full[b], None, None) for b in BINS[:2]}
        for b in (*BINS[2:], "retrieval heads"):
            out[b] = bootstrap_indices(len(st), lambda idx, b=b: share(idx, b), n_boot=n_boot, seed=seed)
        return out

    def bins_by_episodes(self, n_draws: int = 50, seed: int = 0) -> list[dict]:
        """The bins' shares over random subsets of m kept episodes (drawn without replacement), for
        m = n/4, n/2, 3n/4 and n: [{"episodes": m, "bins": {bin: mean share}}]. Bin 0 shrinks as m
        grows (a head leaves it at its first copy), so a share at n episodes is not comparable with
        the paper's at 586."""
        st = self._stack()
        n = len(st)
        g = torch.Generator().manual_seed(seed)
        rows = []
        for m in sorted({max(1, round(n * f)) for f in (0.25, 0.5, 0.75, 1.0)}):
            draws = 1 if m == n else n_draws
            shares = [self.bins(st[torch.randperm(n, generator=g)[:m]].mean(0)) for _ in range(draws)]
            rows.append({"episodes": m, "bins": {b: sum(x[b] for x in shares) / draws for b in BINS}})
        return rows

    def stability(self, k: int = 10, heads: list[Head] | None = None) -> dict:
        """Top-k heads per needle, their pairwise Jaccard overlaps, and the per-needle mean score of
        ``heads`` (default: the overall top 2k) as a [needle, head] table."""
        per: dict[str, list[torch.Tensor]] = {}
        for i in self.kept:
            per.setdefault(self.scored[i].episode.needle_id, []).append(self.scored[i].score)
        ids = sorted(per)
        means = {n: torch.stack(v).mean(0) for n, v in per.items()}
        H = self.shape[1]
        tops = {n: {(int(i) // H, int(i) % H) for i in m.flatten().topk(k).indices} for n, m in means.items()}
        jac = [[jaccard(tops[a], tops[b]) for b in ids] for a in ids]
        pairs = [jac[i][j] for i in range(len(ids)) for j in range(i + 1, len(ids))]
        heads = heads if heads is not None else self.top(2 * k)
        return {"needles": ids, "top": {n: sorted(tops[n]) for n in ids}, "jaccard": jac,
                "mean_jaccard": statistics.mean(pairs) if pairs else None,
                "heads": heads, "table": [[float(means[n][h]) for h in heads] for n in ids],
                "episodes": {n: len(per[n]) for n in ids}}


def score_heads(model, episodes: list[Episode], max_new: int = 50, min_recall: float = 50.0,
                progress: bool = True, batch: int = 16, verify: int = 2) -> RetrievalScores:
    """Decode every episode once (greedy, ``batch`` episodes at a time) and score every head.

    ``verify``: the first batch's first step is checked against the bridge (logits and top-1
    attention). Raises InterpError when no episode is retrieved (recall <= min_recall)."""
    from tqdm.auto import tqdm

    scored = []
    chunks = [episodes[i:i + batch] for i in range(0, len(episodes), batch)]
    for c, chunk in enumerate(tqdm(chunks, desc="retrieval scores", disable=not progress, leave=False)):
        gens = generations(model, [(ep.tokens, [("ua", [])]) for ep in chunk], max_new=max_new, top1=True,
                           stop_at_newline=True, verify=verify if c == 0 else 0)
        for ep, g in zip(chunk, gens):
            tokens = g.tokens[0]
            text = model.tokenizer.decode(tokens, skip_special_tokens=True)
            span = needle_window(ep.tokens, ep.answer_ids)
            scored.append(Scored(ep, tokens, text, rouge1_recall(text, ep.answer), span, g.top1[0],
                                 retrieval_score(g.top1[0], tokens, ep.tokens, span)))
    out = RetrievalScores(scored, min_recall)
    if not out.kept:
        raise InterpError(f"the model retrieved no needle (ROUGE-1 recall <= {min_recall} on every episode): no scores")
    return out


# ------------------------------------------------------------------------------------- masking
def folds(needle_ids, n_folds: int = 2) -> dict[str, int]:
    """needle id -> fold: the sorted ids dealt out in turn (fold i gets ids i, i + n, ...)."""
    ids = sorted(set(needle_ids))
    if len(ids) < n_folds:
        raise InterpError(f"cross-fitting needs at least {n_folds} needles, got {len(ids)}")
    return {n: i % n_folds for i, n in enumerate(ids)}


def random_heads(n_layers: int, n_heads: int, k: int, exclude, rng: random.Random) -> list[Head]:
    """k heads drawn without replacement from those not in ``exclude``."""
    banned = set(map(tuple, exclude))
    pool = [(l, h) for l in range(n_layers) for h in range(n_heads) if (l, h) not in banned]
    if k > len(pool):
        raise InterpError(f"cannot draw {k} random heads from {len(pool)} outside the excluded ones")
    return rng.sample(pool, k)


def masking_plan(scores: RetrievalScores, fold_of: dict[str, int], ks, n_random: int, seed: int = 0) -> dict:
    """Per fold: the heads to mask on its episodes, chosen from the OTHER folds' episodes only.

    Returns {fold: {"scored_on": needles, "n_episodes": kept episodes they were ranked on,
    "top": {k: heads}, "random": {k: [heads] * n_random}, "excluded": the top quarter}}."""
    L, H = scores.shape
    quarter = (L * H) // 4
    plan = {}
    for f in sorted(set(fold_of.values())):
        others = [n for n, g in fold_of.items() if g != f]
        sub = scores.subset(others)
        if not sub.kept:
            raise InterpError(f"no episode of the needles {others} was retrieved: no heads to mask on fold {f}")
        excluded = sub.top(quarter)
        rng = random.Random(f"{seed}/{f}")
        plan[f] = {"scored_on": sorted(others), "n_episodes": len(sub.kept), "excluded": excluded,
                   "top": {k: sub.top(k) for k in ks},
                   "random": {k: [random_heads(L, H, k, excluded, rng) for _ in range(n_random)] for k in ks}}
    return plan


@dataclass
class Masking:
    """NIAH recall (0-100) per episode: unmasked, top-K masked, and each random draw of K masked."""

    episodes: list[Episode]
    plan: dict
    fold_of: dict[str, int]
    unmasked: list[float]
    top: dict[int, list[float]]
    random: dict[int, list[list[float]]]  # k -> draws -> episodes
    texts: dict[str, list[str]] = field(default_factory=dict)  # condition -> responses

    @property
    def ks(self) -> list[int]:
        return list(self.top)

    def random_mean(self, k: int) -> list[float]:
        """Per episode, the mean recall over the random draws of k heads."""
        return [statistics.mean(d[i] for d in self.random[k]) for i in range(len(self.episodes))]

    def summary(self, n_boot: int = 2000, seed: int = 0) -> dict:
        """Means with bootstrap 95% intervals over episodes; the paired difference random - top."""
        out = {"n": len(self.episodes), "unmasked": bootstrap_ci(self.unmasked, n_boot=n_boot, seed=seed), "k": {}}
        for k in self.ks:
            rand = self.random_mean(k)
            out["k"][k] = {"top": bootstrap_ci(self.top[k], n_boot=n_boot, seed=seed),
                           "random": bootstrap_ci(rand, n_boot=n_boot, seed=seed),
                           "random_minus_top": bootstrap_ci(rand, paired_with=self.top[k], n_boot=n_boot, seed=seed),
                           "draws": [statistics.mean(d) for d in self.random[k]],
                           "sd_diff": statistics.pstdev([a - b for a, b in zip(rand, self.top[k])])}
        return out


def masking_test(model, scores: RetrievalScores, episodes: list[Episode], ks=(5, 10, 20, 50), n_random: int = 5,
                 seed: int = 0, max_new: int = 50, n_folds: int = 2, batch: int = 4, progress: bool = True,
                 verify: int = 2) -> Masking:
    """Cross-fitted masking: each episode decoded unmasked, with its fold's top-K heads masked and
    with each of ``n_random`` draws of K random heads (outside the top quarter) masked, for every
    K; all of an episode's variants (1 + len(ks) x (1 + n_random)) and ``batch`` episodes run as one
    decode. Masking = query zeroing from the query that emits the first answer token on."""
    from tqdm.auto import tqdm

    ks = sorted(set(int(k) for k in ks))
    fold_of = folds([ep.needle_id for ep in episodes] + [s.episode.needle_id for s in scores.scored], n_folds)
    plan = masking_plan(scores, fold_of, ks, n_random, seed)
    names = ["unmasked"] + [f"top-{k}" for k in ks] + [f"random-{k}/{r}" for k in ks for r in range(n_random)]
    recall = {n: [] for n in names}
    texts = {n: [] for n in names}
    chunks = [episodes[i:i + batch] for i in range(0, len(episodes), batch)]
    for c, chunk in enumerate(tqdm(chunks, desc="masking", disable=not progress, leave=False)):
        work = []
        for ep in chunk:
            p = plan[fold_of[ep.needle_id]]
            work.append((ep.tokens, [("ua", [])] + [("mask", p["top"][k]) for k in ks]
                         + [("mask", p["random"][k][r]) for k in ks for r in range(n_random)]))
        gens = generations(model, work, max_new=max_new, stop_at_newline=True, mask_from=0,
                           verify=verify if c == 0 else 0)
        for ep, g in zip(chunk, gens):
            for name, tokens in zip(names, g.tokens):
                text = model.tokenizer.decode(tokens, skip_special_tokens=True)
                recall[name].append(rouge1_recall(text, ep.answer))
                texts[name].append(text)
    return Masking(list(episodes), plan, fold_of, recall["unmasked"], {k: recall[f"top-{k}"] for k in ks},
                   {k: [recall[f"random-{k}/{r}"] for r in range(n_random)] for k in ks}, texts)


# ------------------------------------------------------------------------- where heads look
def region_of(episode: Episode, j: int, span: tuple[int, int]) -> str:
    """Which part of the prompt position j is in (REGIONS), with ``span`` the needle window;
    j >= len(prompt): the answer so far."""
    T = len(episode.tokens)
    s, e = span
    n0, n1 = episode.needle_start_sentence
    c0, c1 = episode.context_span
    if j >= T:
        return REGIONS[5]
    if j == 0:
        return REGIONS[4]
    if s <= j < e:
        return REGIONS[0]
    if n0 <= j < n1:
        return REGIONS[1]
    if c0 <= j < c1:
        return REGIONS[2]
    return REGIONS[3]


def attention_regions(scores: RetrievalScores, heads: list[Head], retrieved: bool | None = False) -> dict:
    """Where ``heads`` put their top-1 attention while decoding: the share of (step, head) pairs
    in each region, over the failed episodes (recall <= min_recall; ``retrieved=True``: the kept
    ones; None: all), and how often that position holds the token being emitted (a copy)."""
    counts = {r: 0 for r in REGIONS}
    copies, n, n_eps = 0, 0, 0
    for s in scores.scored:
        ok = s.recall > scores.min_recall
        if retrieved is not None and ok != retrieved:
            continue
        n_eps += 1
        T = len(s.episode.tokens)
        full = torch.cat([s.episode.tokens.cpu(), torch.tensor(s.tokens, dtype=torch.long)])
        for t in range(s.top1.shape[0]):
            for l, h in heads:
                j = int(s.top1[t, l, h])
                counts[region_of(s.episode, j, s.span)] += 1
                copies += int(j < len(full) and int(full[j]) == s.tokens[t] and j < T)
                n += 1
    return {"episodes": n_eps, "pairs": n, "share": {r: c / n if n else 0.0 for r, c in counts.items()},
            "copy_share": copies / n if n else 0.0}
