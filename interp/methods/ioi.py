"""The IOI circuit of a model: discovery by path patching, head classes, and its evaluation.

Wang et al. 2022 ("Interpretability in the Wild", arXiv 2211.00593) found in GPT-2 small a circuit
that completes "When Mary and John went to the store, John gave a drink to" with " Mary". It is
traced backwards from the logits by path patching (clean x, corrupted x' = p_ABC, every head as
the sender, score = the fraction of the corruption's effect that flows through the path):

  1. heads -> final residual at END                  name movers (+), negative name movers (-)
  2. heads -> name movers' queries at END             S-inhibition heads
  3. heads -> S-inhibition keys and values at S2      induction and duplicate-token heads
  4. heads -> induction heads' keys at S1+1           previous-token heads

Classes are confirmed by attention-pattern scores on repeated random tokens (previous-token,
duplicate-token, induction) and by copy scores (name movers copy the name they attend to).

A circuit C is evaluated by knocking out everything else: every head's output is mean-ablated
(means over p_ABC, per template and position) except the circuit heads at their class's position;
MLPs are untouched. F(C) = mean logit difference then. F(M) is the full model.
  faithfulness        F(C) / F(M)  (and |F(M) - F(C)| as the paper reports it)
  incompleteness(K)   |F(C \\ K) - F(M \\ K)|,  K a class, a random subset or a greedy set
  minimality(v)       |F(C \\ (K_v \\ {v})) - F(C \\ K_v)|,  K_v = v's class

Under grouped-query attention (SmolLM2: 9 query heads share 3 key/value heads) a key or value
receiver is a key/value head, so stage 3 and 4 receive at the whole group of the chosen heads.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from interp.ablation import knockout_hooks, mean_head_outputs
from interp.errors import ComponentError
from interp.hooks import hook_name
from interp.metrics import logit_diff
from interp.patching import path_patch_heads
from interp.result import Result
from interp.tasks.prompts import PromptSet

Head = tuple[int, int]

#: where each class acts (the position its output is kept at in the knockout)
CLASS_POSITION = {
    "name mover": "END", "negative name mover": "END", "s-inhibition": "END",
    "induction": "S2", "duplicate token": "S2", "previous token": "S1+1",
}


def path_effect(result: Result) -> torch.Tensor:
    """(M_path - M_clean) / (M_corrupt - M_clean) per head: 1 = the path carries the whole effect."""
    return (result.values - result.clean) / (result.corrupted - result.clean)


def top_heads(effect: torch.Tensor, k: int, min_effect: float, sign: int = 1,
              before_layer: int | None = None, exclude=()) -> list[Head]:
    """The (at most) k heads with the largest ``sign * effect`` >= min_effect, in layers < before_layer."""
    e = sign * effect.clone()
    if before_layer is not None:
        e[before_layer:] = float("-inf")
    for l, h in exclude:
        e[l, h] = float("-inf")
    vals, idx = e.flatten().topk(min(k, e.numel()))
    n_heads = effect.shape[1]
    return [(int(i) // n_heads, int(i) % n_heads) for v, i in zip(vals, idx) if v >= min_effect]


# ------------------------------------------------------------------------------------ head scores
def pattern_scores(model, seq_len: int = 40, n_seqs: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Previous-token, duplicate-token and induction scores of every head: [layer, head] each.

    On random tokens repeated twice (length T each), the mean attention of the second copy's
    positions to offset -1 (previous token), -T (the same token earlier: duplicate) and 1 - T (the
    token after it: induction), as TransformerLens's head_detector computes.
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
    out = {"previous token": [], "duplicate token": [], "induction": []}
    for name in names:
        p = cache[name].float().cpu()  # [n, head, q, k]
        for key, shift in (("previous token", 1), ("duplicate token", seq_len), ("induction", seq_len - 1)):
            out[key].append(p[:, :, rows, rows - shift].mean((0, 2)))
    return {k: torch.stack(v) for k, v in out.items()}


def copy_scores(model, prompts: PromptSet, heads: list[Head], top: int = 5, position: str = "IO") -> dict:
    """Fraction of prompts whose name comes out in the top ``top`` tokens through a head's OV circuit.

    Wang et al. 2022: take the residual stream after layer 0 (embedding + first MLP) at the name's
    position, pass it through the head (its input norm, W_V, W_O), apply the final norm and the
    unembedding; success if the name is among the top 5. The negative copy score negates the OV
    output (negative name movers write the name's opposite). Returns {(l, h): (copy, negative)}.
    """
    from interp.weights import Weights

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
    layers = sorted({l for l, _ in heads})
    names = {hook_name("pattern", l) for l in layers}
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts.clean_tokens, names_filter=lambda n: n in names)
    rows = torch.arange(len(prompts))
    out = {}
    for l, h in heads:
        p = cache[hook_name("pattern", l)][:, h].float().cpu()  # [B, q, k]
        at_end = p[rows, prompts.answer_pos.cpu()]
        out[(l, h)] = {k: float(at_end[rows, prompts.positions[k].cpu()].mean()) for k in ("IO", "S1", "S2")}
    return out


# ------------------------------------------------------------------------------------- discovery
@dataclass
class IOICircuit:
    """What discovery found: the four stages' path-patching results, the classes, the scores."""

    stages: dict[str, Result]
    classes: dict[Head, str]
    scores: dict[str, torch.Tensor]  # pattern scores, [layer, head] each
    copy: dict[Head, tuple[float, float]]
    settings: dict = field(default_factory=dict)

    def positions(self, prompts: PromptSet) -> dict[Head, torch.Tensor]:
        """(layer, head) -> [batch] position at which the head acts (its class's position)."""
        return {h: prompts.positions[CLASS_POSITION[c]] for h, c in self.classes.items()}

    def by_class(self) -> dict[str, list[Head]]:
        out: dict[str, list[Head]] = {}
        for h, c in sorted(self.classes.items()):
            out.setdefault(c, []).append(h)
        return out


def discover(model, prompts: PromptSet, k: dict[str, int] | None = None, min_effect: float = 0.02,
             progress: bool = True) -> IOICircuit:
    """Trace the IOI circuit backwards from the logits with the four path-patching stages.

    Args:
        prompts: IOI pairs with corruption "abc" (p_ABC), positions IO, S1, S1+1, S2, END.
        k: the most heads kept per class (defaults below); a head is kept only if its path effect
            is at least ``min_effect`` (fraction of the corruption's effect, see ``path_effect``).
    """
    for p in ("S2", "S1+1", "END"):
        if p not in prompts.positions:
            raise ComponentError(f"IOI discovery needs the named position {p!r} (use tasks.ioi_examples)")
    k = {"name mover": 6, "negative name mover": 3, "s-inhibition": 4, "induction": 3,
         "duplicate token": 3, "previous token": 3, **(k or {})}
    rep = model.cfg.n_heads // (model.cfg.n_key_value_heads or model.cfg.n_heads)
    stages, classes = {}, {}

    def run(name, receivers, receiver_positions):
        stages[name] = path_patch_heads(model, prompts, receivers, receiver_positions=receiver_positions,
                                        progress=progress)
        return path_effect(stages[name])

    e1 = run("logits", "resid_final", None)
    movers = top_heads(e1, k["name mover"], min_effect)
    negative = top_heads(e1, k["negative name mover"], min_effect, sign=-1)
    classes.update({h: "name mover" for h in movers})
    classes.update({h: "negative name mover" for h in negative})
    if not movers:
        return IOICircuit(stages, classes, pattern_scores(model), {}, {"k": k, "min_effect": min_effect})

    e2 = run("mover queries", [(l, h, "q") for l, h in movers], "END")
    inhibition = top_heads(e2, k["s-inhibition"], min_effect, before_layer=min(l for l, _ in movers),
                           exclude=classes)
    classes.update({h: "s-inhibition" for h in inhibition})
    scores = pattern_scores(model)

    if inhibition:
        kv = sorted({(l, h // rep) for l, h in inhibition})
        e3 = run("s-inhibition keys/values", [(l, g, c) for l, g in kv for c in ("k", "v")], "S2")
        found = top_heads(e3, k["induction"] + k["duplicate token"], min_effect,
                          before_layer=min(l for l, _ in inhibition), exclude=classes)
        for l, h in found:
            cls = "induction" if scores["induction"][l, h] >= scores["duplicate token"][l, h] else "duplicate token"
            if sum(c == cls for c in classes.values()) < k[cls]:
                classes[(l, h)] = cls
        induction = [h for h, c in classes.items() if c == "induction"]
        if induction:
            kv = sorted({(l, h // rep) for l, h in induction})
            e4 = run("induction keys", [(l, g, "k") for l, g in kv], "S1+1")
            prev = top_heads(e4, k["previous token"], min_effect, before_layer=min(l for l, _ in induction),
                             exclude=classes)
            classes.update({h: "previous token" for h in prev})
    copy = copy_scores(model, prompts, [h for h, c in classes.items() if "mover" in c])
    return IOICircuit(stages, classes, scores, copy, {"k": k, "min_effect": min_effect, "n_prompts": len(prompts)})


# ------------------------------------------------------------------------------------ evaluation
def circuit_metric(model, prompts: PromptSet, keep: dict[Head, torch.Tensor | None] | None,
                   means: list[torch.Tensor] | None = None, metric=logit_diff) -> float:
    """F(C): the mean metric with every head outside ``keep`` mean-ablated (``keep=None``: the model).

    ``means``: ``ablation.mean_head_outputs(model, prompts, prompts.groups)`` (computed if None)."""
    with torch.no_grad():
        if keep is None:
            return float(metric(model(prompts.clean_tokens), prompts).mean())
        means = means if means is not None else mean_head_outputs(model, prompts, prompts.groups)
        logits = model.run_with_hooks(prompts.clean_tokens, fwd_hooks=knockout_hooks(model, keep, means))
        return float(metric(logits, prompts).mean())


def _all_heads(model) -> list[Head]:
    return [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]


def evaluate(model, prompts: PromptSet, circuit: IOICircuit, n_random: int = 5, greedy_steps: int = 3,
             seed: int = 0, reference: PromptSet | None = None) -> dict:
    """Faithfulness, completeness (classes, random subsets, greedy) and minimality of a circuit.

    The knockout of M \\ K removes K from the full model (all other heads keep all positions).
    ``reference``: the p_ABC prompts whose per-template means replace the knocked-out outputs
    (default: the corrupted side of ``prompts``); it must cover every template of ``prompts``.
    """
    pos = circuit.positions(prompts)
    everything = {h: None for h in _all_heads(model)}
    means = mean_head_outputs(model, reference or prompts, prompts.groups)
    F = lambda keep: circuit_metric(model, prompts, keep, means)  # noqa: E731
    f_model, f_circuit, f_empty = F(None), F(pos), F({})
    out = {"F_model": f_model, "F_circuit": f_circuit, "F_empty": f_empty,
           "faithfulness": f_circuit / f_model, "faithfulness_gap": abs(f_model - f_circuit),
           "n_heads": len(pos), "n_head_positions": len(pos) / (len(everything) * prompts.n_pos)}

    def incompleteness(K):
        c_minus = {h: p for h, p in pos.items() if h not in K}
        m_minus = {h: p for h, p in everything.items() if h not in K}
        fc, fm = F(c_minus), F(m_minus)
        return {"F_C_minus_K": fc, "F_M_minus_K": fm, "incompleteness": abs(fc - fm)}

    by_class = circuit.by_class()
    out["classes"] = {c: {"heads": hs, **incompleteness(set(hs))} for c, hs in by_class.items()}
    rng = random.Random(seed)
    heads = sorted(pos)
    out["random"] = []
    for _ in range(n_random if heads else 0):
        K = set(rng.sample(heads, rng.randint(1, len(heads))))
        out["random"].append({"heads": sorted(K), **incompleteness(K)})
    # Greedy: grow K one head at a time, each step taking the head that most increases incompleteness.
    K: set[Head] = set()
    out["greedy"] = []
    for _ in range(min(greedy_steps, len(heads))):
        best = max((h for h in heads if h not in K), key=lambda h: incompleteness(K | {h})["incompleteness"])
        K.add(best)
        out["greedy"].append({"heads": sorted(K), **incompleteness(K)})
    out["minimality"] = {}
    for c, hs in by_class.items():
        without_class = F({h: p for h, p in pos.items() if h not in hs})
        for v in hs:
            kept = F({h: p for h, p in pos.items() if h not in hs or h == v})
            out["minimality"][v] = {"class": c, "minimality": abs(kept - without_class),
                                    "relative": abs(kept - without_class) / abs(f_circuit) if f_circuit else float("nan")}
    return out


def to_circuit(found: IOICircuit, model_key: str, seed: int, n_prompts: int, date: str | None = None):
    """The discovered circuit as an ``interp.graph.Circuit`` (nodes: heads at their positions)."""
    from interp import graph

    stage_of = {"name mover": "logits", "negative name mover": "logits", "s-inhibition": "mover queries",
                "induction": "s-inhibition keys/values", "duplicate token": "s-inhibition keys/values",
                "previous token": "induction keys"}
    scores = {h: float(path_effect(found.stages[stage_of[c]])[h]) for h, c in found.classes.items()}
    feeds = {"previous token": ("induction",), "induction": ("s-inhibition",), "duplicate token": ("s-inhibition",),
             "s-inhibition": ("name mover",), "name mover": (), "negative name mover": ()}
    by_class = found.by_class()
    edges = [(h, "logits") for h, c in found.classes.items() if "mover" in c]
    edges += [(h, t) for h, c in found.classes.items() for tc in feeds[c] for t in by_class.get(tc, [])]
    prov = {"seed": seed, "n_prompts": n_prompts, "ablation": "mean over p_ABC per template",
            "score": "path-patching effect of the head's stage (1 = the whole effect)",
            **({"date": date} if date else {})}
    return graph.from_heads(found.classes, model=model_key, task="ioi", method="path_patching (interp.methods.ioi)",
                            provenance=prov, scores=scores,
                            positions={h: CLASS_POSITION[c] for h, c in found.classes.items()}, edges=sorted(edges))
