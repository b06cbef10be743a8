"""Circuit component reuse between IOI and Colored Objects (Merullo, Eickhoff, Pavlick, ICLR 2024).

The claim: the heads a model uses for IOI are largely the ones it uses for Colored Objects (CO:
"... a red bowl, a yellow jug, and a purple cup. What color is the jug?\\nA:" -> " Yellow"), and the
IOI mechanism can be switched on in CO by an intervention. Here:

1. CO accuracy (argmax over the whole vocabulary, and over the 8 colour tokens).
2. The same path-patching stages on both tasks (every head as the sender, all positions):
     logits        heads -> final residual at END (mover heads, and negative movers)
     mover queries heads -> the top movers' queries at END (inhibition heads; CO: content gatherers)
     inhibition    heads -> the top inhibition heads' keys/values at S2 (IOI) or OQ (CO, the
                   queried object: our choice, the paper does not say)
   IOI is corrupted Merullo's way (S2 replaced by IO); CO by asking about another object.
3. Overlap per stage: the top 2% of heads (top ceil(0.02 * n_heads) by |effect|) of each task,
   |A & B| / |A | B|; and of the union over stages.
4. Intervention: at END, the model's inhibition-like heads (IOI stage 2) and its strongest
   negative mover (IOI stage 1) attend only to the two incorrect colours of the last question (1/2
   each), as they attend to the wrong name in IOI. Accuracy before and after, against the same
   number of random heads (several seeds, mean and sd).
"""
from __future__ import annotations

import math
import random
import statistics

import torch

from interp.methods.ioi import Head, path_effect, top_heads
from interp.patching import path_patch_heads
from interp.result import Result
from interp.tasks.colored_objects import co_colour_ids
from interp.tasks.prompts import PromptSet

STAGE3_POSITION = {"ioi": "S2", "co": "OQ"}


def top_share(effect: torch.Tensor, share: float = 0.02) -> list[Head]:
    """The top ceil(share * n_heads) heads by |effect| (Merullo et al.'s "top 2%")."""
    k = max(1, math.ceil(share * effect.numel()))
    idx = effect.abs().flatten().topk(k).indices
    return [(int(i) // effect.shape[1], int(i) % effect.shape[1]) for i in idx]


def accuracy(model, prompts: PromptSet, fwd_hooks=()) -> dict:
    """Share of prompts whose top next token is the answer: over the vocabulary and over the colours."""
    colours = co_colour_ids(model).to(prompts.clean_tokens.device)
    with torch.no_grad():
        logits = model.run_with_hooks(prompts.clean_tokens, fwd_hooks=list(fwd_hooks))
    at = logits[torch.arange(len(prompts)), prompts.answer_pos]
    full = (at.argmax(-1) == prompts.answer_ids).float()
    among = (colours[at[:, colours].argmax(-1)] == prompts.answer_ids).float()
    return {"accuracy": float(full.mean()), "accuracy_colours": float(among.mean()), "correct": full.bool()}


def stages(model, prompts: PromptSet, task: str, n_receivers: int = 3, progress: bool = True) -> dict[str, Result]:
    """The three path-patching stages of one task (see the module docstring)."""
    rep = model.cfg.n_heads // (model.cfg.n_key_value_heads or model.cfg.n_heads)
    out = {"logits": path_patch_heads(model, prompts, "resid_final", progress=progress)}
    movers = top_heads(path_effect(out["logits"]), n_receivers, float("-inf"))
    out["mover queries"] = path_patch_heads(model, prompts, [(l, h, "q") for l, h in movers],
                                            receiver_positions="END", progress=progress)
    before = min(l for l, _ in movers)
    e2 = path_effect(out["mover queries"]).clone()
    e2[before:] = 0
    inhibition = top_heads(e2, n_receivers, float("-inf"))
    kv = sorted({(l, h // rep) for l, h in inhibition})
    out["inhibition"] = path_patch_heads(model, prompts, [(l, g, c) for l, g in kv for c in ("k", "v")],
                                         receiver_positions=STAGE3_POSITION[task], progress=progress)
    for name, r in out.items():
        r.meta["receiver_heads"] = {"logits": None, "mover queries": movers, "inhibition": inhibition}[name]
    return out


def overlap(ioi: dict[str, Result], co: dict[str, Result], share: float = 0.02) -> dict:
    """Per stage and over the union of stages: the top-share head sets and their Jaccard overlap."""
    out, union_a, union_b = {}, set(), set()
    for name in ioi:
        a, b = set(top_share(path_effect(ioi[name]), share)), set(top_share(path_effect(co[name]), share))
        union_a |= a
        union_b |= b
        out[name] = {"ioi": sorted(a), "co": sorted(b), "both": sorted(a & b), "overlap": len(a & b) / len(a | b)}
    out["all stages"] = {"ioi": sorted(union_a), "co": sorted(union_b), "both": sorted(union_a & union_b),
                         "overlap": len(union_a & union_b) / len(union_a | union_b)}
    return out


def attend_to_hooks(model, prompts: PromptSet, heads: list[Head], targets: list[str]):
    """Hooks that make ``heads`` attend, at each prompt's END, only to the named positions (1/|J| each)."""
    from interp.hooks import check_heads, hook_name

    check_heads(model, heads)
    cols = torch.stack([prompts.positions[t] for t in targets], 1)  # [B, J]
    rows = torch.arange(len(prompts))

    def hook_for(hs):
        def hook(pattern, hook=None):  # [B, H, q, k]
            pattern = pattern.clone()
            for h in hs:
                row = torch.zeros(pattern.shape[0], pattern.shape[-1], dtype=pattern.dtype, device=pattern.device)
                row[rows[:, None], cols.to(row.device)] = 1.0 / cols.shape[1]
                pattern[rows, h, prompts.answer_pos.to(pattern.device)] = row
            return pattern

        return hook

    by_layer: dict[int, list[int]] = {}
    for l, h in heads:
        by_layer.setdefault(l, []).append(h)
    return [(hook_name("pattern", l), hook_for(hs)) for l, hs in by_layer.items()]


def intervention(model, prompts: PromptSet, heads: list[Head], n_seeds: int = 5, seed: int = 0) -> dict:
    """CO accuracy when ``heads`` attend to the incorrect colours at END, vs random heads."""
    targets = ["C_WRONG1", "C_WRONG2"]
    before = accuracy(model, prompts)
    after = accuracy(model, prompts, attend_to_hooks(model, prompts, heads, targets))
    rng = random.Random(seed)
    pool = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads) if (l, h) not in heads]
    control = [accuracy(model, prompts, attend_to_hooks(model, prompts, rng.sample(pool, len(heads)), targets))
               ["accuracy"] for _ in range(n_seeds)]
    new_mistakes = int((before["correct"] & ~after["correct"]).sum())
    return {"heads": heads, "before": before["accuracy"], "after": after["accuracy"],
            "before_colours": before["accuracy_colours"], "after_colours": after["accuracy_colours"],
            "new_mistakes": new_mistakes, "fixed": int((~before["correct"] & after["correct"]).sum()),
            "random_mean": statistics.mean(control), "random_sd": statistics.pstdev(control), "random": control}


def run(model, n_prompts: int = 32, seed: int = 0, n_seeds: int = 5, share: float = 0.02,
        progress: bool = True) -> dict:
    """The whole analysis on one model: accuracy, stages of both tasks, overlap, intervention."""
    from interp.tasks import colored_objects_examples, ioi_examples

    ioi_ps = ioi_examples(model, n=n_prompts, seed=seed, corruption="s2_io")
    co_ps = colored_objects_examples(model, n=n_prompts, seed=seed)
    ioi_stages, co_stages = stages(model, ioi_ps, "ioi", progress=progress), stages(model, co_ps, "co", progress=progress)
    negative = top_heads(path_effect(ioi_stages["logits"]), 1, float("-inf"), sign=-1)
    heads = list(ioi_stages["inhibition"].meta["receiver_heads"]) + [h for h in negative]
    return {
        "co_accuracy": {k: v for k, v in accuracy(model, co_ps).items() if k != "correct"},
        "ioi_accuracy": float((_answer_logits(model, ioi_ps).argmax(-1) == ioi_ps.answer_ids).float().mean()),
        "stages": {"ioi": ioi_stages, "co": co_stages},
        "overlap": overlap(ioi_stages, co_stages, share),
        "intervention": intervention(model, co_ps, heads, n_seeds=n_seeds, seed=seed),
        "n_prompts": n_prompts, "seed": seed, "share": share,
    }


def _answer_logits(model, prompts: PromptSet) -> torch.Tensor:
    with torch.no_grad():
        logits = model(prompts.clean_tokens)
    return logits[torch.arange(len(prompts)), prompts.answer_pos]
