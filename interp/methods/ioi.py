"""The IOI circuit of a model: discovery by path patching, head classes, and its held-out evaluation.

Wang et al. 2022 ("Interpretability in the Wild", arXiv 2211.00593) found in GPT-2 small a circuit
that completes "When Mary and John went to the store, John gave a drink to" with " Mary". It is
traced backwards from the logits by path patching (clean x, corrupted x' = p_ABC, every head as
the sender, score = the fraction of the corruption's effect that flows through the path):

  1. heads -> final residual at END                  name movers (+), negative name movers (-)
  2. heads -> name movers' queries at END             S-inhibition heads
  3. heads -> S-inhibition keys and values at S2      induction and duplicate-token heads
  4. heads -> induction heads' keys at S1+1           previous-token heads

Stages 2-4 sweep the senders in layers before their first receiver (the only heads that can join
the circuit there); later senders read as no effect. Receivers are query heads. Under grouped-query attention (SmolLM2: 9 query heads share 3
key/value heads) a key/value receiver would be a whole group; ``path_patch_query_heads`` patches
the group's keys/values and holds every other query head of the group at its clean output, which
is path patching into the chosen query heads alone (exact, same cost).

A class needs evidence beyond the path effect. Stage-3 heads are induction or duplicate-token heads
only when their pattern score (random tokens repeated twice: attention to the token after the
earlier copy, or to the earlier copy itself) clears a threshold and beats the other score; stage-4
heads likewise need a previous-token score. The threshold is a null: every head's attention at
*arbitrary* fixed offsets (2 to T-2 back), the best offset per head; a class score must exceed the
``threshold_quantile`` (0.99) of those per-head maxima, i.e. what 99% of heads cannot reach at any
offset with no special meaning. Heads below it are "unclassified" (kept at their stage's position).

A circuit C is evaluated by knocking out everything else (Wang et al.): every head's output is
mean-ablated (means over p_ABC, per template and position) except the circuit heads at their class's
position; MLPs are untouched. F(C) = mean logit difference then, F(M) the full model. As in the
paper's code, M \\ K ablates the heads of K at their class positions only, C \\ K removes them
entirely. Evaluation runs on prompts disjoint from discovery (other names, places, objects and
templates: ``tasks.ioi_examples(split="heldout")``), with bootstrap intervals over prompts.
  faithfulness        F(C) / F(M)  (and |F(M) - F(C)|)
  incompleteness(K)   |F(C \\ K) - F(M \\ K)|,  K a class, random (each head in K with prob. 1/2,
                      as the paper's code) or greedy (the paper's sampled greedy search, fitted on
                      the discovery prompts and evaluated on the held-out ones)
  minimality(v)       |F(C \\ (K_v \\ {v})) - F(C \\ K_v)|,  K_v = v's class
Controls: random head sets of the circuit's size kept at every position; the name movers knocked
out of the model (backup name movers take over in GPT-2 small: the paper's LD drops only ~5%).
"""
from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import torch

from interp.ablation import knockout_hooks, mean_head_outputs
from interp.errors import ComponentError
from interp.hooks import hook_name
from interp.interventions import Edit, Intervention, fixed_patch, intervene
from interp.metrics import logit_diff
from interp.patching import path_patch_heads
from interp.result import Result
from interp.tasks.prompts import PromptSet, on_model_device

Head = tuple[int, int]

#: where each class acts (the position its output is kept at in the knockout)
CLASS_POSITION = {
    "name mover": "END", "negative name mover": "END", "s-inhibition": "END",
    "induction": "S2", "duplicate token": "S2", "unclassified (S2)": "S2",
    "previous token": "S1+1", "unclassified (S1+1)": "S1+1",
}
#: the path-patching stage that finds each class
STAGE_OF = {"name mover": "logits", "negative name mover": "logits", "s-inhibition": "mover queries",
            "induction": "s-inhibition keys/values", "duplicate token": "s-inhibition keys/values",
            "unclassified (S2)": "s-inhibition keys/values", "previous token": "induction keys",
            "unclassified (S1+1)": "induction keys"}


def path_effect(result: Result) -> torch.Tensor:
    """(M_path - M_clean) / (M_corrupt - M_clean) per head: 1 = the path carries the whole effect."""
    return (result.values - result.clean) / (result.corrupted - result.clean)


def top_heads(effect: torch.Tensor, k: int, min_effect: float, sign: int = 1,
              before_layer: int | None = None, exclude=()) -> list[Head]:
    """The (at most) k heads with the largest ``sign * effect`` >= min_effect, in layers < before_layer
    and not in ``exclude`` (never those, even with min_effect = -inf and k above the heads left)."""
    e = sign * effect.clone()
    if before_layer is not None:
        e[before_layer:] = float("-inf")
    for l, h in exclude:
        e[l, h] = float("-inf")
    vals, idx = e.flatten().topk(min(k, e.numel()))
    n_heads = effect.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads) for v, i in zip(vals, idx) if v >= min_effect and v > float("-inf")]


# ------------------------------------------------------------------------------------ head scores
def pattern_scores(model, seq_len: int = 40, n_seqs: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Previous-token, duplicate-token and induction scores of every head, and their null: [layer, head].

    On random tokens repeated twice (length T each), the mean attention of the second copy's
    positions to offset -1 (previous token), -T (the same token earlier: duplicate) and 1 - T (the
    token after it: induction), as TransformerLens's head_detector computes. "null": each head's
    largest mean attention at any fixed offset 2 .. T-2 back (no special relation to the key:
    neither the previous token nor the earlier copy or its successor), see ``class_threshold``.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = model.cfg.d_vocab
    lo, hi = min(1000, vocab // 4), min(10000, vocab)
    first = torch.randint(lo, hi, (n_seqs, seq_len), generator=g)
    tokens = torch.cat([first, first], 1)
    if model.cfg.default_prepend_bos and model.tokenizer.bos_token_id is not None:
        tokens = torch.cat([torch.full((n_seqs, 1), model.tokenizer.bos_token_id), tokens], 1)
    tokens = tokens.to(next(model.parameters()).device)
    off = tokens.shape[1] - 2 * seq_len
    names = [hook_name("pattern", l) for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
    rows = torch.arange(off + seq_len, off + 2 * seq_len)  # queries in the second copy
    special = {"previous token": 1, "duplicate token": seq_len, "induction": seq_len - 1}
    nulls = range(2, seq_len - 1)
    out = {k: [] for k in (*special, "null")}
    for name in names:
        p = cache[name].float().cpu()  # [n, head, q, k]
        at = lambda shift: p[:, :, rows, rows - shift].mean((0, 2))  # noqa: E731
        for key, shift in special.items():
            out[key].append(at(shift))
        out["null"].append(torch.stack([at(s) for s in nulls]).max(0).values)
    return {k: torch.stack(v) for k, v in out.items()}


def class_threshold(scores: dict[str, torch.Tensor], quantile: float = 0.99) -> float:
    """The minimum pattern score for a class: the ``quantile`` of the heads' null scores."""
    return float(scores["null"].flatten().quantile(quantile))


def classify_by_pattern(head: Head, scores: dict[str, torch.Tensor], threshold: float,
                        candidates: tuple[str, ...]) -> str | None:
    """The candidate class whose pattern score is highest for ``head``, if it is >= threshold."""
    best = max(candidates, key=lambda c: float(scores[c][head]))
    return best if float(scores[best][head]) >= threshold else None


def copy_scores(model, prompts: PromptSet, heads: list[Head], top: int = 5, position: str = "IO") -> dict:
    """Fraction of prompts whose name comes out in the top ``top`` tokens through a head's OV circuit.

    Wang et al. 2022: take the residual stream after layer 0 (embedding + first MLP) at the name's
    position, pass it through the head (its input norm, W_V, W_O), apply the final norm and the
    unembedding; success if the name is among the top 5. The negative copy score negates the OV
    output (negative name movers write the name's opposite). Returns {(l, h): (copy, negative)}.
    """
    from interp.weights import Weights

    prompts = on_model_device(model, prompts)
    w = Weights.from_model(model)
    pos = prompts.positions[position]
    names = prompts.clean_tokens[torch.arange(len(prompts)), pos]
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts.clean_tokens, names_filter=lambda n: n == hook_name("resid_post", 0))
        x = cache[hook_name("resid_post", 0)][torch.arange(len(prompts)), pos.to(cache[hook_name("resid_post", 0)].device)]
        rep = w.W_Q.shape[1] // w.W_V.shape[1]
        out = {}
        for l, h in heads:
            v = w.norm(x, w.ln1[l]) @ w.W_V[l, h // rep]
            if w.b_V is not None:
                v = v + w.b_V[l, h // rep]
            o = v @ w.W_O[l, h]
            scores = []
            for sign in (1, -1):
                logits = w.norm(sign * o, w.ln_final) @ w.W_U
                hit = (logits.topk(top, -1).indices == names.to(logits.device)[:, None]).any(-1)
                scores.append(float(hit.float().mean()))
            out[(l, h)] = tuple(scores)
    return out


def name_attention(model, prompts: PromptSet, heads: list[Head]) -> dict[Head, dict[str, float]]:
    """Mean attention of each head from END to the IO, S1 and S2 tokens: {(l, h): {"IO": .., ..}}."""
    per = mover_attention_and_logits(model, prompts, heads)
    return {h: {k: float(per[h][f"attn_{k}"].mean()) for k in ("IO", "S1", "S2")} for h in heads}


def mover_attention_and_logits(model, prompts: PromptSet, heads: list[Head]) -> dict[Head, dict[str, torch.Tensor]]:
    """Per prompt, each head's attention from END to IO, S1 and S2, and the logit its output writes
    for the IO and the S name (Wang et al. Fig. 3: a name mover's attention to a name against
    the projection of its output on that name's unembedding).

    The projection is read as DLA reads it: the head's output at END divided by the final norm's
    scale (from the same run) times the final norm's weight, dotted with W_U[:, name]. Returns
    {(l, h): {"attn_IO", "attn_S1", "attn_S2", "logit_IO", "logit_S"}: [batch] each}.
    """
    from interp.attribution import _final_norm_weight

    prompts = on_model_device(model, prompts)
    layers = sorted({l for l, _ in heads})
    names = {hook_name("pattern", l) for l in layers} | {hook_name("z", l) for l in layers} | {"ln_final.hook_scale"}
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts.clean_tokens, names_filter=lambda n: n in names)
    rows = torch.arange(len(prompts))
    end = prompts.answer_pos.cpu()
    scale = cache["ln_final.hook_scale"].float().cpu()[rows, end].reshape(-1, 1)  # [B, 1]
    W_U, W_O = model.W_U.detach().float().cpu(), model.W_O.detach().float().cpu()
    w_final = _final_norm_weight(model)
    w_final = torch.ones(W_U.shape[0]) if w_final is None else w_final.float().cpu()
    out = {}
    for l, h in heads:
        p = cache[hook_name("pattern", l)][:, h].float().cpu()[rows, end]  # [B, k]
        o = cache[hook_name("z", l)][:, :, h].float().cpu()[rows, end] @ W_O[l, h]  # [B, d]
        o = o / scale * w_final
        res = {f"attn_{k}": p[rows, prompts.positions[k].cpu()] for k in ("IO", "S1", "S2")}
        res["logit_IO"] = (o * W_U[:, prompts.answer_ids.cpu()].T).sum(-1)
        res["logit_S"] = (o * W_U[:, prompts.distractor_ids.cpu()].T).sum(-1)
        out[(l, h)] = res
    return out


# ----------------------------------------------------------------------- query-head path patching
def path_patch_query_heads(model, prompts: PromptSet, receivers: list[tuple[int, int, str]],
                           receiver_positions=None, progress: bool = False, verify: int = 2) -> Result:
    """Path patching into the q/k/v of individual *query* heads: Result[layer, head] of senders.

    ``receivers``: (layer, query head, "q"|"k"|"v"). A query receiver is a query head already;
    a key/value receiver of a grouped-query model is its key/value head, shared by the group. Here
    the group's keys/values take their path-patched values while every other query head of the
    group keeps its clean output (a fixed patch of z), so only the chosen query heads pass the
    change on. The fixed patches would also act in the corrupted run, where they must not change a
    sender's corrupted output: each sender layer therefore runs with the receivers (and fixes) of
    later layers only, which are all it can reach. ``clean`` and ``corrupted`` are the model's own.
    """
    from interp.reference import readout

    prompts = on_model_device(model, prompts)
    rep = model.cfg.n_heads // (model.cfg.n_key_value_heads or model.cfg.n_heads)
    receivers = [(int(l), int(h), str(k)) for l, h, k in receivers]
    if not receivers:
        raise ComponentError("no receivers given")
    chosen = {(l, h) for l, h, _ in receivers}
    kv_layers = sorted({l for l, _, k in receivers if k in ("k", "v")})
    clean_z = {}
    if kv_layers and rep > 1:
        names = {hook_name("z", l) for l in kv_layers}
        with torch.no_grad():
            _, cache = model.run_with_cache(prompts.clean_tokens, names_filter=lambda n: n in names)
        clean_z = {l: cache[hook_name("z", l)].detach() for l in kv_layers}

    def as_engine(rs):  # k/v receivers address key/value heads
        return sorted({(l, h if k == "q" else h // rep, k) for l, h, k in rs})

    def fixes(rs):
        out = []
        for l in sorted({l for l, _, k in rs if k in ("k", "v")}):
            if l not in clean_z:
                continue
            groups = {h // rep for ll, h, k in rs if ll == l and k in ("k", "v")}
            others = [h for h in range(model.cfg.n_heads) if h // rep in groups and (l, h) not in chosen]
            if others:
                out.append(fixed_patch("z", l, clean_z[l], heads=others))
        return out

    layers = sorted({l for l, _, _ in receivers})
    values = each = None
    complete = True
    meta = {}
    for i, lj in enumerate(layers):
        senders = list(range(layers[i - 1] if i else 0, lj))
        if not senders:
            continue
        part_receivers = [r for r in receivers if r[0] >= lj]
        with intervene(model, *fixes(part_receivers)):
            part = path_patch_heads(model, prompts, as_engine(part_receivers), receiver_positions=receiver_positions,
                                    layers=senders, progress=progress, verify=verify)
        if values is None:
            values = torch.full((model.cfg.n_layers, model.cfg.n_heads), float(part.clean))
            meta = dict(part.meta)
        values[senders] = part.values
        if "per_example" not in part.meta:  # a part fell back to the reference loop: no per-prompt values
            complete = False
        elif complete:  # the batched engine's per-prompt values
            if each is None:
                clean_each = torch.tensor(part.meta["per_example"]["clean"])
                each = clean_each.expand(model.cfg.n_layers, model.cfg.n_heads, len(clean_each)).clone()
            each[senders] = torch.tensor(part.meta["per_example"]["values"])
        meta.setdefault("parts", []).append({"sender_layers": [senders[0], senders[-1]],
                                             "verified": part.meta.get("verified"), "engine": part.meta.get("engine")})
    clean = float(readout(model, prompts.clean_tokens, prompts, logit_diff))
    corrupted = float(readout(model, prompts.corrupted_tokens, prompts, logit_diff))
    swept = [l for i, lj in enumerate(layers) for l in range(layers[i - 1] if i else 0, lj)]
    if values is None:
        values = torch.full((model.cfg.n_layers, model.cfg.n_heads), clean)
    values[[l for l in range(model.cfg.n_layers) if l not in swept]] = clean  # no path: exactly no effect
    meta.pop("per_example", None)
    if complete and each is not None:  # senders that reach no receiver: each prompt's clean run
        each[[l for l in range(model.cfg.n_layers) if l not in swept]] = clean_each
        meta["per_example"] = {"values": each.tolist(), "clean": clean_each.tolist()}
    meta.update({"index": {"layer": list(range(model.cfg.n_layers)), "head": list(range(model.cfg.n_heads))},
                 "sender_layers": list(range(layers[-1])),
                 "receivers": [list(r) for r in receivers], "receivers_are": "query heads"})
    return Result(values, ("layer", "head"), "path:heads", "logit_diff", clean=clean, corrupted=corrupted, meta=meta)


# ------------------------------------------------------------------------------------- discovery
@dataclass
class IOICircuit:
    """What discovery found: the four stages' path-patching results, the classes, the scores."""

    stages: dict[str, Result]
    classes: dict[Head, str]
    scores: dict[str, torch.Tensor]  # pattern scores, [layer, head] each
    copy: dict[Head, tuple[float, float]]
    settings: dict = field(default_factory=dict)
    threshold: float = float("nan")  # the minimum pattern score of a class (class_threshold)

    def positions(self, prompts: PromptSet) -> dict[Head, torch.Tensor]:
        """(layer, head) -> [batch] position at which the head acts (its class's position)."""
        return {h: prompts.positions[CLASS_POSITION[c]] for h, c in self.classes.items()}

    def by_class(self) -> dict[str, list[Head]]:
        out: dict[str, list[Head]] = {}
        for h, c in sorted(self.classes.items()):
            out.setdefault(c, []).append(h)
        return out


def discover(model, prompts: PromptSet, k: dict[str, int] | None = None, min_effect: float = 0.02,
             progress: bool = True, threshold_quantile: float = 0.99, verify: int = 2) -> IOICircuit:
    """Trace the IOI circuit backwards from the logits with the four path-patching stages.

    Args:
        prompts: IOI pairs with corruption "abc" (p_ABC), positions IO, S1, S1+1, S2, END.
        k: the most heads kept per class (defaults below); a head is kept only if its path effect
            is at least ``min_effect`` (fraction of the corruption's effect, see ``path_effect``).
        threshold_quantile: the null quantile a pattern score must clear (``class_threshold``).
        verify: senders of each stage re-run through the reference loop (``path_patch_heads``).

    Each stage sweeps every sender upstream of at least one receiver (senders at or after a
    receiver's layer read as no effect for it), and a stage's heads are chosen among those before
    its last receiver's layer. A name mover whose output also moves the other movers' queries
    (stage-2 effect >= ``min_effect``; SmolLM2's 20.0 on 48 prompts: 0.25, the largest) plays both
    roles: it stays a name mover and is also a receiver of stage 3, so the induction and
    duplicate-token heads feeding it are found (``settings["dual_role"]``).
    """
    for p in ("S2", "S1+1", "END"):
        if p not in prompts.positions:
            raise ComponentError(f"IOI discovery needs the named position {p!r} (use tasks.ioi_examples)")
    k = {"name mover": 6, "negative name mover": 3, "s-inhibition": 4, "induction": 3,
         "duplicate token": 3, "previous token": 3, **(k or {})}
    settings = {"k": k, "min_effect": min_effect, "n_prompts": len(prompts), "threshold_quantile": threshold_quantile,
                "verify": verify}
    stages, classes = {}, {}
    scores = pattern_scores(model)
    threshold = class_threshold(scores, threshold_quantile)

    timings = settings["cpu_s"] = {}

    def run(name, receivers, receiver_positions):
        t = time.process_time()
        stages[name] = (path_patch_heads(model, prompts, receivers, progress=progress, verify=verify)
                        if receivers == "resid_final" else
                        path_patch_query_heads(model, prompts, receivers, receiver_positions, progress,
                                               verify=verify))
        timings[name] = time.process_time() - t
        return path_effect(stages[name])

    e1 = run("logits", "resid_final", None)
    movers = top_heads(e1, k["name mover"], min_effect)
    negative = top_heads(e1, k["negative name mover"], min_effect, sign=-1)
    classes.update({h: "name mover" for h in movers})
    classes.update({h: "negative name mover" for h in negative})
    if movers:
        e2 = run("mover queries", [(l, h, "q") for l, h in movers], "END")
        inhibition = top_heads(e2, k["s-inhibition"], min_effect, before_layer=max(l for l, _ in movers),
                               exclude=classes)
        classes.update({h: "s-inhibition" for h in inhibition})
        # a mover that also moves the other movers' queries plays the S-inhibition role too: the heads
        # feeding it at S2 belong to the circuit as much as those feeding the S-inhibition heads
        dual = [h for h in movers if float(e2[h]) >= min_effect]
        settings["dual_role"] = dual
        senders_of = inhibition + [h for h in dual if h not in inhibition]
        if senders_of:
            e3 = run("s-inhibition keys/values", [(l, h, c) for l, h in senders_of for c in ("k", "v")], "S2")
            found = top_heads(e3, k["induction"] + k["duplicate token"], min_effect,
                              before_layer=max(l for l, _ in senders_of), exclude=classes)
            for head in found:
                cls = classify_by_pattern(head, scores, threshold, ("induction", "duplicate token")) or "unclassified (S2)"
                if sum(c == cls for c in classes.values()) < k.get(cls, k["induction"]):
                    classes[head] = cls
            induction = [h for h, c in classes.items() if c == "induction"]
            if induction:
                e4 = run("induction keys", [(l, h, "k") for l, h in induction], "S1+1")
                for head in top_heads(e4, k["previous token"], min_effect, before_layer=max(l for l, _ in induction),
                                      exclude=classes):
                    classes[head] = (classify_by_pattern(head, scores, threshold, ("previous token",))
                                     or "unclassified (S1+1)")
    copy = copy_scores(model, prompts, [h for h, c in classes.items() if "mover" in c]) if movers or negative else {}
    return IOICircuit(stages, classes, scores, copy, settings, threshold)


# ------------------------------------------------------------------------------------ evaluation
def circuit_metric(model, prompts: PromptSet, keep: dict[Head, torch.Tensor | None] | None,
                   means: list[torch.Tensor] | None = None, metric=logit_diff) -> float:
    """F(C): the mean metric with every head outside ``keep`` mean-ablated (``keep=None``: the model).

    ``means``: ``ablation.mean_head_outputs(model, prompts, prompts.groups)`` (computed if None)."""
    return float(circuit_metric_per_prompt(model, prompts, keep, means, metric).mean())


def circuit_metric_per_prompt(model, prompts: PromptSet, keep: dict[Head, torch.Tensor | None] | None,
                              means: list[torch.Tensor] | None = None, metric=logit_diff,
                              extra_hooks=()) -> torch.Tensor:
    """[batch]: the metric per prompt under the knockout keeping ``keep`` (None: no knockout).

    For the logit difference the forward stops at the unembedding's input and only the answer and
    distractor columns are computed at END (the full [batch, pos, vocab] logits are a fifth of a
    small model's work); any other metric reads the full logits."""
    prompts = on_model_device(model, prompts)
    with torch.no_grad():
        hooks = list(extra_hooks)
        if keep is not None:
            means = means if means is not None else mean_head_outputs(model, prompts, prompts.groups)
            hooks = knockout_hooks(model, keep, means) + hooks
        if metric is logit_diff:
            return end_logit_diff(model, prompts, hooks)
        logits = model.run_with_hooks(prompts.clean_tokens, fwd_hooks=hooks) if hooks else model(prompts.clean_tokens)
        return metric(logits, prompts).float().cpu()


class _Stop(Exception):
    pass


def end_logit_diff(model, prompts: PromptSet, hooks=()) -> torch.Tensor:
    """[batch] logit(answer) - logit(distractor) at each prompt's END under ``hooks``, read from the
    unembedding's input (the forward stops there)."""
    prompts = on_model_device(model, prompts)
    rows = torch.arange(len(prompts))
    kept = {}

    def grab(x, hook=None):
        kept["x"] = x[rows.to(x.device), prompts.answer_pos.to(x.device)].detach()
        raise _Stop

    width = int(prompts.answer_pos.max()) + 1
    with torch.no_grad():
        try:
            model.run_with_hooks(prompts.clean_tokens[:, :width], fwd_hooks=list(hooks) + [("unembed.hook_in", grab)])
        except _Stop:
            pass
        x = kept["x"].float()
        W_U = model.W_U.detach().float()
        d = (W_U[:, prompts.answer_ids.to(W_U.device)] - W_U[:, prompts.distractor_ids.to(W_U.device)]).T
        out = (x * d).sum(-1)
        b_U = getattr(model, "b_U", None)
        if b_U is not None:
            b_U = b_U.detach().float()
            out = out + b_U[prompts.answer_ids.to(b_U.device)] - b_U[prompts.distractor_ids.to(b_U.device)]
    return out.cpu()


def _all_heads(model) -> list[Head]:
    return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


class Knockouts:
    """F(.) per prompt on one prompt set, for one circuit, memoised by the set of heads removed.

    ``F_C(K)``: the circuit minus K (K removed entirely); ``F_M(K)``: the model minus K (K's heads
    mean-ablated at their class positions, as the paper's code); ``F_keep(keep)``: any knockout.
    """

    def __init__(self, model, prompts: PromptSet, circuit: IOICircuit, reference: PromptSet | None = None):
        self.model, self.prompts, self.circuit = model, prompts, circuit
        self.means = mean_head_outputs(model, reference or prompts, prompts.groups)
        self.pos = circuit.positions(prompts)
        self.n_forwards = 0
        self._memo: dict = {}

    def _run(self, key, fn) -> torch.Tensor:
        if key not in self._memo:
            self._memo[key] = fn()
            self.n_forwards += 1
        return self._memo[key]

    def model_(self) -> torch.Tensor:
        return self._run(("M",), lambda: circuit_metric_per_prompt(self.model, self.prompts, None))

    def F_keep(self, keep: dict[Head, torch.Tensor | None], tag=None) -> torch.Tensor:
        key = ("keep", tag if tag is not None else tuple(sorted(keep)))
        return self._run(key, lambda: circuit_metric_per_prompt(self.model, self.prompts, keep, self.means))

    def F_C(self, K=()) -> torch.Tensor:
        K = frozenset(K)
        return self.F_keep({h: p for h, p in self.pos.items() if h not in K}, tag=("C", K))

    def F_M(self, K=()) -> torch.Tensor:
        K = frozenset(K)
        if not K:
            return self.model_()
        edits = tuple(Edit("z", l, (h,), self.pos[(l, h)], value=self.means[l]) for l, h in sorted(K))
        hooks = Intervention("model minus K", edits).hooks()
        return self._run(("M", K), lambda: circuit_metric_per_prompt(self.model, self.prompts, None, extra_hooks=hooks))

    def incompleteness(self, K) -> float:
        return abs(float(self.F_C(K).mean() - self.F_M(K).mean()))


def greedy_sets(kn: Knockouts, runs: int = 1, iters: int = 3, samples: int = 5, seed: int = 0) -> list[list[Head]]:
    """The paper's greedy search for a K that maximises |F(C \\ K) - F(M \\ K)| (fitted on ``kn``'s prompts).

    Each run starts from K = {}; each iteration samples ``samples`` circuit heads not in K, adds
    the one that raises the incompleteness most, if it does. Returns each run's final K."""
    rng = random.Random(seed)
    heads = sorted(kn.pos)
    out = []
    for _ in range(runs if heads else 0):
        K: list[Head] = []
        best = kn.incompleteness(K)
        for _ in range(iters):
            rest = [h for h in heads if h not in K]
            if not rest:
                break
            scored = [(kn.incompleteness(K + [h]), h) for h in rng.sample(rest, min(samples, len(rest)))]
            value, h = max(scored)
            if value > best:
                K, best = K + [h], value
        out.append(sorted(K))
    return out


def _ci(values: torch.Tensor, paired_with: torch.Tensor | None = None, seed: int = 0) -> dict:
    from interp.stats import bootstrap_ci

    est, lo, hi = bootstrap_ci(values.tolist(), paired_with=None if paired_with is None else paired_with.tolist(),
                               seed=seed)
    return {"mean": est, "ci": [lo, hi]}


def ratio_ci(num: torch.Tensor, den: torch.Tensor, seed: int = 0) -> dict:
    """mean(num) / mean(den) over prompts with its bootstrap interval (prompts resampled in pairs)."""
    from interp.stats import bootstrap_ci

    a, b = num.tolist(), den.tolist()
    stat = lambda idx: sum(a[int(i)] for i in idx) / sum(b[int(i)] for i in idx)  # noqa: E731
    est, lo, hi = bootstrap_ci([float(i) for i in range(len(a))], stat=stat, seed=seed)
    return {"mean": est, "ci": [lo, hi]}


def evaluate(model, prompts: PromptSet, circuit: IOICircuit, n_random: int = 10, greedy: list[list[Head]] | None = None,
             seed: int = 0, reference: PromptSet | None = None, n_random_sets: int = 10,
             knockouts: Knockouts | None = None) -> dict:
    """Faithfulness, completeness, minimality and controls of a circuit on ``prompts``, with intervals.

    Args:
        prompts: the evaluation prompts (held out from discovery for an honest number).
        n_random: random K (each circuit head in K with probability 1/2) for the completeness scatter.
        greedy: K sets found by ``greedy_sets`` on the discovery prompts (evaluated here).
        reference: the p_ABC prompts whose per-template means replace knocked-out outputs (default:
            the corrupted side of ``prompts``); it must cover every template of ``prompts``.
        n_random_sets: random head sets of the circuit's size kept at every position (a control).

    Per-prompt values are kept (``"per_prompt"``) so the report can bootstrap anything.
    """
    kn = knockouts or Knockouts(model, prompts, circuit, reference)
    rng = random.Random(seed)
    f_model, f_circuit, f_empty = kn.model_(), kn.F_C(), kn.F_keep({}, tag="empty")
    out = {"F_model": float(f_model.mean()), "F_circuit": float(f_circuit.mean()), "F_empty": float(f_empty.mean()),
           "faithfulness": float(f_circuit.mean() / f_model.mean()),
           "faithfulness_ci": ratio_ci(f_circuit, f_model, seed)["ci"],
           "F_model_ci": _ci(f_model, seed=seed)["ci"], "F_circuit_ci": _ci(f_circuit, seed=seed)["ci"],
           "faithfulness_gap": abs(float(f_model.mean() - f_circuit.mean())),
           "faithfulness_gap_ci": _ci(f_model, f_circuit, seed)["ci"],
           "n_heads": len(kn.pos), "n_prompts": len(prompts),
           "n_head_positions": len(kn.pos) / (len(_all_heads(model)) * float(prompts.answer_pos.float().mean() + 1)),
           "per_prompt": {"F_model": f_model, "F_circuit": f_circuit, "F_empty": f_empty}}

    def completeness(K):
        fc, fm = kn.F_C(K), kn.F_M(K)
        return {"heads": sorted(K), "F_C_minus_K": float(fc.mean()), "F_M_minus_K": float(fm.mean()),
                "incompleteness": abs(float(fc.mean() - fm.mean())), "difference_ci": _ci(fc, fm, seed)["ci"]}

    by_class = circuit.by_class()
    out["classes"] = {c: completeness(set(hs)) for c, hs in by_class.items()}
    heads = sorted(kn.pos)
    out["random"] = []
    for _ in range(n_random if heads else 0):
        K = {h for h in heads if rng.random() < 0.5}
        out["random"].append(completeness(K))
    out["greedy"] = [completeness(set(K)) for K in (greedy or []) if K]
    out["minimality"] = {}
    for c, hs in by_class.items():
        without_class = kn.F_C(hs)
        for v in hs:
            kept = kn.F_C([h for h in hs if h != v])
            diff = _ci(kept, without_class, seed)
            out["minimality"][v] = {"class": c, "minimality": abs(diff["mean"]), "signed": diff["mean"],
                                    "ci": diff["ci"], "relative": abs(diff["mean"]) / abs(out["F_circuit"])
                                    if out["F_circuit"] else float("nan")}
    # Control: random head sets of the circuit's size, kept at every position.
    pool = _all_heads(model)
    out["random_sets"] = []
    for _ in range(n_random_sets if heads else 0):
        S = sorted(rng.sample(pool, len(heads)))
        f = kn.F_keep({h: None for h in S}, tag=("random set", tuple(S)))
        out["random_sets"].append({"heads": S, "F": float(f.mean()), "kept": float(f.mean() / f_model.mean())})
    out["n_forwards"] = kn.n_forwards
    return out


def backup_experiment(kn: Knockouts, movers: list[Head], seed: int = 0) -> dict:
    """Knock the name movers out of the model (mean-ablated at END) and measure what is left.

    Wang et al.: the logit difference drops only ~5% because backup name movers take over. Here:
    F(M \\ NM) / F(M) with its interval, and every head's direct effect on the logit difference at
    END (DLA) before and after; heads whose direct effect grows are the backup candidates."""
    from interp.attribution import direct_logit_attribution

    model, prompts = kn.model, kn.prompts
    f_model, f_minus = kn.model_(), kn.F_M(movers)
    dla_before = direct_logit_attribution(model, prompts).heads.values
    edits = tuple(Edit("z", l, (h,), prompts.positions["END"], value=kn.means[l]) for l, h in movers)
    with intervene(model, Intervention("name movers knocked out", edits)):
        dla_after = direct_logit_attribution(model, prompts).heads.values
    change = dla_after - dla_before
    for l, h in movers:
        change[l, h] = float("nan")
    order = torch.nan_to_num(change, nan=float("-inf")).flatten().argsort(descending=True)
    H = change.shape[1]
    top = [((int(i) // H, int(i) % H), float(change.flatten()[i])) for i in order[:8]]
    return {"movers": movers, "F_model": float(f_model.mean()), "F_minus_movers": float(f_minus.mean()),
            "kept": ratio_ci(f_minus, f_model, seed), "dla_before": dla_before, "dla_after": dla_after,
            "backup": top, "per_prompt": {"F_model": f_model, "F_minus_movers": f_minus}}


def to_circuit(found: IOICircuit, model_key: str, seed: int, n_prompts: int, date: str | None = None,
               extra_provenance: dict | None = None):
    """The discovered circuit as an ``interp.graph.Circuit`` (nodes: heads at their positions)."""
    from interp import graph

    scores = {h: float(path_effect(found.stages[STAGE_OF[c]])[h]) for h, c in found.classes.items()}
    feeds = {"previous token": ("induction",), "unclassified (S1+1)": ("induction",),
             "induction": ("s-inhibition",), "duplicate token": ("s-inhibition",), "unclassified (S2)": ("s-inhibition",),
             "s-inhibition": ("name mover",), "name mover": (), "negative name mover": ()}
    by_class = found.by_class()
    edges = [(h, "logits") for h, c in found.classes.items() if "mover" in c]
    edges += [(h, t) for h, c in found.classes.items() for tc in feeds[c] for t in by_class.get(tc, [])]
    prov = {"seed": seed, "n_prompts": n_prompts, "ablation": "mean over p_ABC per template",
            "score": "path-patching effect of the head's stage (1 = the whole effect)",
            "class_threshold": found.threshold, **(extra_provenance or {}), **({"date": date} if date else {})}
    return graph.from_heads(found.classes, model=model_key, task="ioi", method="path_patching (interp.methods.ioi)",
                            provenance=prov, scores=scores,
                            positions={h: CLASS_POSITION[c] for h, c in found.classes.items()}, edges=sorted(edges))
