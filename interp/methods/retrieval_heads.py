"""Retrieval heads (Wu et al. 2024, "Retrieval Head Mechanistically Explains Long-Context Factuality").

A retrieval head copies the needle from a long context into the answer: while the model greedily
decodes the answer to a needle-in-a-haystack question, the head's strongest attention lands on the
context token it is about to emit. The retrieval score of a head on one episode, with the needle's
answer span [s, e) in the prompt:

    score = sum over decoding steps t of  1/(e - s)  if  argmax_j attn_t(j) in [s, e)  and
                                                         prompt[argmax_j attn_t(j)] == generated_t

(so a head that copies the whole span scores 1). Episodes count only if the answer was retrieved
(ROUGE-1 recall of the answer in the response > 50); a head's score is the mean over kept episodes,
its activation frequency the share of kept episodes where it scored > 0. Retrieval heads: score > 0.1.

Masking: query-zero the top-K heads (their attention becomes uniform over the positions before the
query), only while decoding, never in the prefill, and measure NIAH recall against K random heads
from outside the top quarter.

The decoder below is this package's own forward (``interp.weights.Weights``, held equal to the
TransformerBridge by the tests) with a key/value cache: one prefill, then one token per step, the
attention of every head at every step read directly, so scoring every head costs one decode.
"""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass, field

import torch

from interp.errors import InterpError
from interp.kernels import prefix_attention
from interp.weights import Weights, rotary_tables, rotate
from interp.tasks.needle import Episode, rouge1_recall

Head = tuple[int, int]
BINS = ("0", "(0, 0.1]", "(0.1, 0.5]", "> 0.5")


@dataclass
class Decoded:
    """A greedy answer and, per step, where each head looked: top1 [steps, layer, head] positions."""

    tokens: list[int]
    text: str
    top1: torch.Tensor
    prefill_logits: torch.Tensor  # [vocab] at the last prompt position


class Decoder:
    """Greedy decoding with a key/value cache on the package's own forward (no hooks, no re-runs)."""

    def __init__(self, model):
        from interp.errors import EngineUnsupported
        from interp.interventions import model_edits

        if model_edits(model):
            raise EngineUnsupported("the retrieval decoder does not apply interventions registered on the "
                                    "model; mask heads with decode(masked=...)")
        self.model, self.w = model, Weights.from_model(model)
        self.device = next(iter(model.parameters())).device
        self.newline = {i for t, i in model.tokenizer.get_vocab().items() if "\n" in t or "Ċ" in t}
        self.eos = {model.tokenizer.eos_token_id} - {None}

    def _tables(self, n: int):
        if not self.w.rotary:
            return None, None
        return rotary_tables(self.model, n, self.device, self.w.W_Q.dtype)

    def _logits(self, x):
        logits = self.w.norm(x, self.w.ln_final) @ self.w.W_U
        return logits if self.w.b_U is None else logits + self.w.b_U

    @torch.no_grad()
    def decode(self, prompt: torch.Tensor, max_new: int = 50, masked: list[Head] = ()) -> Decoded:
        """Greedy answer to ``prompt`` [T]; stops at EOS or at a newline after the answer began. ``masked`` heads get q = 0
        (uniform attention) at every decoding step; the prefill is never masked."""
        w, L = self.w, self.model.cfg.n_layers
        prompt = prompt.to(self.device)
        T = prompt.shape[0]
        cos, sin = self._tables(T + max_new + 1)
        rep = w.W_Q.shape[1] // w.W_K.shape[1]
        mask = torch.zeros(L, w.W_Q.shape[1], dtype=torch.bool, device=self.device)
        for l, h in masked:
            mask[l, h] = True
        # prefill: the prompt's keys/values (after RoPE) per layer
        x, keys, values = w.embed(prompt[None]), [], []
        for l in range(L):
            q, k, v = w.project(l, x)
            if w.rotary:
                q, k = rotate(q, cos[:T], sin[:T]), rotate(k, cos[:T], sin[:T])
            keys.append(k[0]), values.append(v[0])
            empty = k[:, :0]
            x = x + w.out(l, prefix_attention(q[None], k[None], v[None], empty, empty, w.scale)[0])
            x = x + w.mlp(l, x)
        prefill = self._logits(x[0, -1])
        token, tokens, tops = int(prefill.argmax()), [], []
        for step in range(max_new):
            if token in self.eos or (token in self.newline and self.model.tokenizer.decode(tokens).strip()):
                break  # a newline ends the answer once it has begun
            tokens.append(token)
            pos = T + step
            x = w.W_E[torch.tensor([[token]], device=self.device)].to(w.residual_dtype)
            if w.W_pos is not None:
                x = x + w.W_pos[pos]
            top = torch.empty(L, w.W_Q.shape[1], dtype=torch.long)
            for l in range(L):
                q, k, v = w.project(l, x)  # [1, 1, heads, dh]
                if w.rotary:
                    q, k = rotate(q, cos[pos:pos + 1], sin[pos:pos + 1]), rotate(k, cos[pos:pos + 1], sin[pos:pos + 1])
                keys[l] = torch.cat([keys[l], k[0]])
                values[l] = torch.cat([values[l], v[0]])
                q = torch.where(mask[l][None, None, :, None], torch.zeros_like(q), q)
                kk = keys[l].repeat_interleave(rep, 1)  # [t, H, dh]
                scores = torch.einsum("he,the->ht", q[0, 0].float(), kk.float()) * w.scale
                attn = scores.softmax(-1)  # [H, t]
                top[l] = attn.argmax(-1).cpu()
                z = torch.einsum("ht,the->he", attn.to(v.dtype), values[l].repeat_interleave(rep, 1))
                x = x + w.out(l, z[None, None])
                x = x + w.mlp(l, x)
            tops.append(top)
            token = int(self._logits(x[0, -1]).argmax())
        top1 = torch.stack(tops) if tops else torch.empty(0, L, w.W_Q.shape[1], dtype=torch.long)
        return Decoded(tokens, self.model.tokenizer.decode(tokens), top1, prefill)


def retrieval_score(decoded: Decoded, episode: Episode) -> torch.Tensor:
    """Per head [layer, head]: sum over steps of 1/(e - s) when its top-1 attention copies from the span."""
    s, e = episode.needle_span
    prompt = episode.tokens
    if not decoded.tokens:
        return torch.zeros(decoded.top1.shape[1:])
    j = decoded.top1  # [steps, L, H]
    inside = (j >= s) & (j < e)
    copied = prompt[j.clamp(max=len(prompt) - 1)] == torch.tensor(decoded.tokens)[:, None, None]
    return ((inside & copied).float() / (e - s)).sum(0)


@dataclass
class RetrievalScores:
    """Scores of every head over a set of episodes."""

    score: torch.Tensor  # [layer, head], mean over kept episodes
    frequency: torch.Tensor  # [layer, head], share of kept episodes with score > 0
    per_episode: list[torch.Tensor]  # kept episodes' scores
    kept: list[int]  # indices of the kept episodes
    recall: list[float]  # ROUGE-1 recall of every episode's answer
    needle_ids: list[str] = field(default_factory=list)  # of the kept episodes

    def top(self, k: int) -> list[Head]:
        idx = self.score.flatten().topk(k).indices
        return [(int(i) // self.score.shape[1], int(i) % self.score.shape[1]) for i in idx]

    def bins(self) -> dict[str, float]:
        """Share of heads with score 0, (0, 0.1], (0.1, 0.5], > 0.5 (the paper's four bins)."""
        s = self.score.flatten()
        n = s.numel()
        return {BINS[0]: float((s == 0).sum()) / n, BINS[1]: float(((s > 0) & (s <= 0.1)).sum()) / n,
                BINS[2]: float(((s > 0.1) & (s <= 0.5)).sum()) / n, BINS[3]: float((s > 0.5).sum()) / n}

    def stability(self, k: int = 10) -> dict:
        """Top-k heads per needle, and the mean pairwise Jaccard overlap of those sets."""
        per: dict[str, list[torch.Tensor]] = {}
        for nid, sc in zip(self.needle_ids, self.per_episode):
            per.setdefault(nid, []).append(sc)
        tops = {}
        for nid, scores in per.items():
            mean = torch.stack(scores).mean(0)
            idx = mean.flatten().topk(k).indices
            tops[nid] = {(int(i) // mean.shape[1], int(i) % mean.shape[1]) for i in idx}
        ids = sorted(tops)
        pairs = [len(tops[a] & tops[b]) / len(tops[a] | tops[b]) for i, a in enumerate(ids) for b in ids[i + 1:]]
        return {"top": {n: sorted(t) for n, t in tops.items()}, "mean_jaccard": statistics.mean(pairs) if pairs else None}


def score_heads(model, episodes: list[Episode], max_new: int = 50, min_recall: float = 50.0,
                progress: bool = True) -> RetrievalScores:
    """Decode every episode once and score every head (see the module docstring)."""
    from tqdm.auto import tqdm

    dec = Decoder(model)
    per, kept, recalls, needles = [], [], [], []
    for i, ep in enumerate(tqdm(episodes, desc="retrieval scores", disable=not progress, leave=False)):
        out = dec.decode(ep.tokens, max_new)
        recall = rouge1_recall(out.text, ep.answer)
        recalls.append(recall)
        if recall > min_recall:
            per.append(retrieval_score(out, ep))
            kept.append(i)
            needles.append(ep.needle_id)
    if not per:
        raise InterpError("the model retrieved no needle (ROUGE-1 recall <= 50 on every episode): no scores")
    stacked = torch.stack(per)
    return RetrievalScores(stacked.mean(0), (stacked > 0).float().mean(0), per, kept, recalls, needles)


def niah_recall(model, episodes: list[Episode], masked: list[Head] = (), max_new: int = 50,
                progress: bool = True) -> list[float]:
    """ROUGE-1 recall (0-100) of each episode's greedy answer, with ``masked`` heads query-zeroed
    while decoding."""
    from tqdm.auto import tqdm

    dec = Decoder(model)
    return [rouge1_recall(dec.decode(ep.tokens, max_new, masked).text, ep.answer)
            for ep in tqdm(episodes, desc="NIAH", disable=not progress, leave=False)]


def random_heads(model, k: int, exclude: list[Head], seed: int) -> list[Head]:
    """k heads drawn at random from those not in ``exclude``."""
    pool = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads) if (l, h) not in set(exclude)]
    return random.Random(seed).sample(pool, k)


def masking_test(model, scores: RetrievalScores, episodes: list[Episode], ks=(5, 10, 20), n_random: int = 2,
                 seed: int = 0, progress: bool = True) -> dict:
    """NIAH recall per episode: unmasked, top-K retrieval heads masked, and K random heads from outside
    the top quarter masked (``n_random`` draws, a list of per-episode recalls each)."""
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    top_quarter = scores.top(n_heads // 4)
    out = {"unmasked": niah_recall(model, episodes, progress=progress), "top": {}, "random": {}}
    for k in ks:
        out["top"][k] = niah_recall(model, episodes, scores.top(k), progress=progress)
        out["random"][k] = [niah_recall(model, episodes, random_heads(model, k, top_quarter, seed + r), progress=progress)
                            for r in range(n_random)]
    return out
