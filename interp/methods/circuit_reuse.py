"""Circuit component reuse between IOI and Colored Objects (Merullo, Eickhoff, Pavlick, ICLR 2024).

The claim: the heads a model uses for IOI are largely the ones it uses for Colored Objects (CO:
"... a red bowl, a yellow jug, and a purple cup. What color is the jug?\\nA:" -> " Yellow"), and the
IOI mechanism can be switched on in CO by an intervention. Here:

1. CO accuracy (argmax over the whole vocabulary, and over the colour tokens), and what the errors
   are: another colour of the last question's list (the only errors the intervention can fix),
   another colour, or no colour at all.
2. The same path-patching stages on both tasks (every head as the sender, all positions):
     logits        heads -> final residual at END (mover heads, and negative movers)
     mover queries heads -> the top movers' queries at END (inhibition heads; CO: content gatherers)
     inhibition    heads -> the top inhibition heads' keys/values at S2 (IOI) or OQ (CO, the
                   queried object: our choice, the paper does not say), per query head
                   (``methods.ioi.path_patch_query_heads``), not per key/value group
   The inhibition receivers are the top stage-2 heads *before* the first mover's layer. IOI is
   corrupted Merullo's way (S2 replaced by IO); CO by asking about another object.
3. Overlap per stage: the top 2% of heads (top ceil(0.02 * n_heads) by |effect|) of each task,
   |A & B| / |A | B|, and of the union over stages; against a null of random top-k sets (uniform
   over heads, and layer-matched: each head replaced by a random head of its layer).
4. Intervention heads chosen by what they do on IOI (``select_heads``): an inhibition head is a
   stage-2 head before the movers that attends from END to S2 more than to IO and whose output
   moves the movers' attention (its corrupted output at END, patched into the clean run, shifts
   the movers' attention from IO towards S, the bootstrap interval of the shift below 0); the
   negative mover is a head with a negative stage-1 effect whose negative copy score beats its
   copy score (attending to a name lowers that name's logit) and that reads names: more than
   half of its END attention on IO, S1 and S2 (``NAME_ATTENTION``). It is not required to attend
   to S2 more than to IO: Wang et al.'s negative name movers attend to IO (the name they write
   against), and so does SmolLM2's (24.4: 0.71 on IO, 0.17 on S2, negative copy score 0.97). Under
   the stricter rule (S2 above IO) no head qualifies on SmolLM2, and the intervention it would
   choose is the "inhibition only" control; ``attends_s2`` records the comparison per head.
5. Intervention at END on CO, two variants (``intervention_conditions``):
     "attend"  the row of the head's pattern := 1/2 on each of the two incorrect colours (the
               paper's suggested mechanics; the spec marks them unverified)
     "move"    mass-preserving: only the attention the head put on the S2-like positions of the
               CO prompt (the queried object OQ: the repeated entity of the last clause, as S2
               is in IOI) moves, half to each incorrect colour; the rest of the row is kept
   Controls: each component alone (inhibition heads, negative mover), the same intervention on
   random heads (>= 10 draws), blocking the CO content gatherers' attention to the question
   (row entries on the question's tokens := 0, renormalised) and the same blocking on random
   heads, and the downstream mover check (the CO movers' attention to the wrong colours and to
   the correct one, before and after).

The interventions change only the END row of some heads' patterns, so every position before END is
unchanged: ``EndRunner`` runs the prompts once and then re-runs only the END position from the first
edited layer for each condition, attending to the cached keys and values (exact; it checks itself
against the model's own hooked forward).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from interp.errors import ComponentError
from interp.hooks import check_heads, hook_name
from interp.methods.ioi import Head, copy_scores, path_effect, path_patch_query_heads, top_heads
from interp.patching import path_patch_heads
from interp.result import Result
from interp.stats import bias_corrected_interval, bootstrap_ci, jaccard, permutation_pvalue
from interp.tasks.colored_objects import co_colour_ids, co_colours
from interp.tasks.prompts import PromptSet, model_device, on_model_device

STAGE3_POSITION = {"ioi": "S2", "co": "OQ"}
WRONG = ("C_WRONG1", "C_WRONG2")


def top_share(effect: torch.Tensor, share: float = 0.02) -> list[Head]:
    """The top ceil(share * n_heads) heads by |effect| (Merullo et al.'s "top 2%")."""
    k = max(1, math.ceil(share * effect.numel()))
    idx = effect.abs().flatten().topk(k).indices
    return [(int(i) // effect.shape[1], int(i) % effect.shape[1]) for i in idx]


# -------------------------------------------------------------------------------- path patching
def stages(model, prompts: PromptSet, task: str, n_receivers: int = 3, progress: bool = True) -> dict[str, Result]:
    """The three path-patching stages of one task (see the module docstring)."""
    if task not in STAGE3_POSITION:
        raise ComponentError(f"task must be 'ioi' or 'co', got {task!r}")
    out = {"logits": path_patch_heads(model, prompts, "resid_final", progress=progress)}
    movers = top_heads(path_effect(out["logits"]), n_receivers, float("-inf"))
    # senders at or after a receiver's layer cannot reach it: each receiver layer is swept only over
    # the layers before it (exact; later senders read as no effect), not over all layers
    out["mover queries"] = path_patch_query_heads(model, prompts, [(l, h, "q") for l, h in movers],
                                                  receiver_positions="END", progress=progress)
    # Inhibition receivers: the top stage-2 heads strictly before the first mover's layer (a head
    # at or after it cannot be upstream of every mover).
    inhibition = top_heads(path_effect(out["mover queries"]), n_receivers, float("-inf"),
                           before_layer=min(l for l, _ in movers))
    out["inhibition"] = path_patch_query_heads(model, prompts, [(l, h, c) for l, h in inhibition for c in ("k", "v")],
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
        out[name] = {"ioi": sorted(a), "co": sorted(b), "both": sorted(a & b), "overlap": jaccard(a, b)}
    out["all stages"] = {"ioi": sorted(union_a), "co": sorted(union_b), "both": sorted(union_a & union_b),
                         "overlap": jaccard(union_a, union_b)}
    return out


def overlap_interval(ioi: dict[str, Result], co: dict[str, Result], share: float = 0.02, n_boot: int = 1000,
                     level: float = 0.95, seed: int = 0) -> dict:
    """A bootstrap interval over prompts of ``overlap``'s "all stages" Jaccard overlap.

    Each resample draws the IOI and the CO path-patching prompts with replacement (independently:
    two samples), takes each head's mean effect over the drawn prompts (from the sweeps' per-prompt
    values, ``meta["per_example"]``), the top-share sets per stage and their union, and the overlap.
    The receivers of stages 2 and 3 stay those chosen on all prompts (the interval is conditional on
    them: re-choosing them would mean path patching again per resample). A top-k overlap falls when
    resampling adds noise to the rankings, so the interval is the bias-corrected one
    (``interp.stats.bias_corrected_interval``). Returns {"estimate", "ci", "n_ioi", "n_co",
    "boot_median"} or {"ci": None, "why": ...} when a stage has no per-prompt values."""
    def per_prompt(stages_):  # {stage: [L, H, B] of each prompt's metric minus its clean metric}
        out = {}
        for name, r in stages_.items():
            pe = r.meta.get("per_example")
            if pe is None:
                return None
            out[name] = torch.tensor(pe["values"]) - torch.tensor(pe["clean"])
        return out

    a, b = per_prompt(ioi), per_prompt(co)
    if a is None or b is None:
        return {"ci": None, "why": "no per-prompt values (the reference engine ran): no interval"}
    n_a, n_b = next(iter(a.values())).shape[-1], next(iter(b.values())).shape[-1]

    def union_overlap(ia, ib) -> float:
        # |mean(M_b - clean_b)| ranks the heads as |path_effect| does (one common denominator per stage)
        sa = set().union(*(top_share(d[..., ia].mean(-1), share) for d in a.values()))
        sb = set().union(*(top_share(d[..., ib].mean(-1), share) for d in b.values()))
        return jaccard(sa, sb)

    estimate = union_overlap(list(range(n_a)), list(range(n_b)))
    if estimate != overlap(ioi, co, share)["all stages"]["overlap"]:
        return {"ci": None, "estimate": estimate, "n_ioi": n_a, "n_co": n_b,
                "why": "the per-prompt values rank the heads otherwise than the means do (a near-tie): no interval"}
    rng = random.Random(seed)
    boots = [union_overlap([rng.randrange(n_a) for _ in range(n_a)], [rng.randrange(n_b) for _ in range(n_b)])
             for _ in range(n_boot)]
    out = {"estimate": estimate, "n_ioi": n_a, "n_co": n_b, "boot_median": sorted(boots)[n_boot // 2]}
    try:
        _, lo, hi = bias_corrected_interval(estimate, boots, level)
        out["ci"] = [lo, hi]
    except ValueError as err:
        out.update(ci=None, why=str(err))
    return out


def overlap_null(observed: dict, n_layers: int, n_heads: int, n_draws: int = 2000, seed: int = 0) -> dict:
    """The overlap of random top-k sets, per stage and over the union: the null of ``overlap``.

    "uniform": each task's k heads of a stage drawn uniformly from all heads; "layer-matched":
    each observed head replaced by a random head of the same layer (keeps the layer profile, which
    alone makes late-layer sets overlap). Returns {stage: {null: {"mean", "q95", "p"}}}."""
    rng = random.Random(seed)
    heads = [(l, h) for l in range(n_layers) for h in range(n_heads)]
    stage_names = [s for s in observed if s != "all stages"]
    out = {s: {} for s in observed}
    for null in ("uniform", "layer-matched"):
        draws = {s: [] for s in observed}
        for _ in range(n_draws):
            ua, ub = set(), set()
            for s in stage_names:
                sets = []
                for task in ("ioi", "co"):
                    if null == "uniform":
                        sets.append(set(rng.sample(heads, len(observed[s][task]))))
                    else:
                        sets.append(_layer_matched(rng, observed[s][task], n_heads))
                a, b = sets
                ua |= a
                ub |= b
                draws[s].append(jaccard(a, b))
            draws["all stages"].append(jaccard(ua, ub))
        for s, d in draws.items():
            d = sorted(d)
            out[s][null] = {"mean": sum(d) / len(d), "q95": d[int(0.95 * (len(d) - 1))],
                            "p": permutation_pvalue(observed[s]["overlap"], d)}
    return out


def _layer_matched(rng: random.Random, heads, n_heads: int) -> set:
    """A random set with as many heads in each layer as ``heads`` has."""
    per_layer: dict[int, int] = {}
    for l, _ in heads:
        per_layer[l] = per_layer.get(l, 0) + 1
    return {(l, h) for l, k in per_layer.items() for h in rng.sample(range(n_heads), min(k, n_heads))}


# ----------------------------------------------------------------------------- head selection
#: A negative mover must put more than this share of its END attention on the names (IO, S1, S2).
NAME_ATTENTION = 0.5


def mover_attention(model, prompts: PromptSet, movers: list[Head], hooks=()) -> dict[str, torch.Tensor]:
    """The movers' mean attention from END to IO and to S (S1 + S2), per prompt: {"IO", "S"}: [batch]."""
    prompts = on_model_device(model, prompts)
    layers = sorted({l for l, _ in movers})
    names = {hook_name("pattern", l) for l in layers}
    store = {}

    def grab(pattern, hook):
        store[hook.name] = pattern.detach().float().cpu()
        return pattern

    with torch.no_grad():
        model.run_with_hooks(prompts.clean_tokens, fwd_hooks=list(hooks) + [(n, grab) for n in names])
    rows, end = torch.arange(len(prompts)), prompts.answer_pos.cpu()
    io, s = torch.zeros(len(prompts)), torch.zeros(len(prompts))
    for l, h in movers:
        row = store[hook_name("pattern", l)][:, h][rows, end]
        io += row[rows, prompts.positions["IO"].cpu()] / len(movers)
        s += (row[rows, prompts.positions["S1"].cpu()] + row[rows, prompts.positions["S2"].cpu()]) / len(movers)
    return {"IO": io, "S": s}


def select_heads(model, prompts: PromptSet, ioi_stages: dict[str, Result], n_inhibition: int = 3,
                 n_candidates: int = 8, seed: int = 0) -> dict:
    """The intervention heads, chosen by what they do on IOI (module docstring, item 4).

    ``prompts``: IOI pairs corrupted S2 -> IO (the stages' prompts). Every candidate's evidence is
    returned (``"candidates"``), accepted or not, so the report can show why."""
    from interp.interventions import fixed_patch, intervene

    prompts = on_model_device(model, prompts)
    e1, e2 = path_effect(ioi_stages["logits"]), path_effect(ioi_stages["mover queries"])
    movers = list(ioi_stages["mover queries"].meta["receiver_heads"])
    cands = top_heads(e2, n_candidates, float("-inf"), before_layer=min(l for l, _ in movers), exclude=movers)
    negs = top_heads(e1, n_candidates, float("-inf"), sign=-1)
    layers = sorted({l for l, _ in cands + negs})
    names = {hook_name("pattern", l) for l in layers} | {hook_name("z", l) for l in layers}
    with torch.no_grad():
        _, clean = model.run_with_cache(prompts.clean_tokens, names_filter=lambda n: n in names)
        _, corrupt = model.run_with_cache(prompts.corrupted_tokens, names_filter=lambda n: n in names)
    rows, end = torch.arange(len(prompts)), prompts.answer_pos.cpu()

    def attn(l, h):
        row = clean[hook_name("pattern", l)][:, h].float().cpu()[rows, end]
        return {k: float(row[rows, prompts.positions[k].cpu()].mean()) for k in ("IO", "S1", "S2")}

    base = mover_attention(model, prompts, movers)
    base_gap = base["IO"] - base["S"]
    inhibition, evidence = [], []
    for l, h in cands:
        a = attn(l, h)
        iv = fixed_patch("z", l, corrupt[hook_name("z", l)], heads=[h], positions=prompts.positions["END"])
        with intervene(model, iv):
            moved = mover_attention(model, prompts, movers)
        shift, lo, hi = bootstrap_ci((moved["IO"] - moved["S"]).tolist(), paired_with=base_gap.tolist(), seed=seed)
        ok = a["S2"] > a["IO"] and hi < 0
        evidence.append({"head": (l, h), "role": "inhibition", "path_effect": float(e2[l, h]), "attention": a,
                         "mover_shift": shift, "mover_shift_ci": [lo, hi], "accepted": ok and len(inhibition) < n_inhibition})
        if ok and len(inhibition) < n_inhibition:
            inhibition.append((l, h))
    copies = copy_scores(model, prompts, negs)
    negative = []
    for l, h in negs:
        c, nc = copies[(l, h)]
        a = attn(l, h)
        on_names = a["IO"] + a["S1"] + a["S2"]
        ok = nc > c and on_names > NAME_ATTENTION and not negative
        evidence.append({"head": (l, h), "role": "negative mover", "path_effect": float(e1[l, h]),
                         "attention": a, "on_names": on_names, "attends_s2": a["S2"] > a["IO"],
                         "copy": c, "negative_copy": nc, "accepted": ok})
        if ok:
            negative.append((l, h))
    return {"inhibition": inhibition, "negative": negative, "movers": movers, "candidates": evidence,
            "by_rank": cands[:n_inhibition] + negs[:1], "mover_attention": {k: float(v.mean()) for k, v in base.items()}}


# ----------------------------------------------------------------------- END-position re-runner
@dataclass(frozen=True)
class RowEdit:
    """An edit of one head's attention row at END.

    kind "attend": row := 1/|to| on each ``to`` position; "move": the mass on the ``frm`` positions
    moves, equally split, to the ``to`` positions (total mass kept); "block": the ``frm`` entries
    := 0 and the row is renormalised. Position names index ``EndRunner``'s positions."""

    kind: str
    to: tuple[str, ...] = ()
    frm: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in ("attend", "move", "block"):
            raise ComponentError(f"row edit kind must be attend, move or block, got {self.kind!r}")

    def apply(self, row: torch.Tensor, pos: dict[str, torch.Tensor]) -> torch.Tensor:
        """row [B, T] (one head's END row) -> the edited row."""
        rows = torch.arange(row.shape[0], device=row.device)[:, None]
        cols = lambda names: torch.cat([pos[n].reshape(row.shape[0], -1) for n in names], 1).to(row.device)  # noqa: E731
        if self.kind == "attend":
            new = torch.zeros_like(row)
            new[rows, cols(self.to)] = 1.0 / cols(self.to).shape[1]
            return new
        if self.kind == "move":
            src, dst = cols(self.frm), cols(self.to)
            mass = row[rows, src].sum(1, keepdim=True)
            new = row.clone()
            new[rows, src] = 0.0
            new[rows, dst] += mass / dst.shape[1]
            return new
        new = row.clone()
        new[rows, cols(self.frm)] = 0.0
        return new / new.sum(1, keepdim=True).clamp_min(1e-12)


Condition = list[tuple[int, int, RowEdit]]


class EndRunner:
    """The model's logits at END under edits of some heads' END attention rows, many conditions cheaply.

    Positions before END do not see an edit at END (causal attention), so one forward caches every
    layer's residual stream; each condition then re-runs only the END position from its first
    edited layer, attending to the cached keys and values (``interp.weights.Weights`` arithmetic).
    ``check`` compares the unedited re-run with the model's logits and one edited condition with
    the model's own forward with the pattern hooked; a mismatch raises."""

    def __init__(self, model, prompts: PromptSet, extra_positions: dict[str, torch.Tensor] | None = None):
        from interp.weights import Weights, rotary_tables

        self.model, self.prompts = model, prompts
        self.w = Weights.from_model(model)
        self.device = next(model.parameters()).device
        self.pos = {k: v.to(self.device) for k, v in {**prompts.positions, **(extra_positions or {})}.items()}
        T = int(prompts.answer_pos.max()) + 1
        self.cos = self.sin = None
        if self.w.rotary:
            self.cos, self.sin = rotary_tables(model, T, self.device, self.w.W_Q.dtype)
        self.rep = self.w.W_Q.shape[1] // self.w.W_K.shape[1]

    def _cache(self, rows: torch.Tensor):
        T = int(self.prompts.answer_pos[rows].max()) + 1
        tokens = self.prompts.clean_tokens[rows, :T].to(self.device)
        names = {hook_name("resid_pre", l) for l in range(self.model.cfg.n_layers)}
        with torch.no_grad():
            logits, cache = self.model.run_with_cache(tokens, names_filter=lambda n: n in names)
        return logits, [cache[hook_name("resid_pre", l)] for l in range(self.model.cfg.n_layers)]

    def _rope(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """RoPE of x [B, S, heads, dh] at absolute positions [B, S]."""
        if not self.w.rotary:
            return x
        cos, sin = self.cos[positions][:, :, None], self.sin[positions][:, :, None]
        a, b = x.chunk(2, -1)
        return x * cos + torch.cat([-b, a], -1) * sin

    def run(self, conditions: dict[str, Condition], watch: list[Head] = (), chunk: int = 32,
            check: bool = True) -> dict[str, dict[str, torch.Tensor]]:
        """{condition: {"logits": [B, vocab] at END, "attn": {head: [B, T] END rows of ``watch``}}};
        the condition "" (no edit) is added."""
        conditions = {"": [], **conditions}
        for edits in conditions.values():
            check_heads(self.model, [(l, h) for l, h, _ in edits])
        n = len(self.prompts)
        out = {name: {"logits": [], "attn": {h: [] for h in watch}} for name in conditions}
        self.verified = {}
        for start in range(0, n, chunk):
            rows = torch.arange(start, min(n, start + chunk))
            full_logits, resid = self._cache(rows)
            end = self.prompts.answer_pos[rows].to(self.device)
            kv = self._keys_values(resid, rows)
            for name, edits in conditions.items():
                logits, attn = self._end(resid, kv, rows, end, edits, watch)
                out[name]["logits"].append(logits.cpu())
                for h in watch:
                    out[name]["attn"][h].append(attn[h].cpu())
            if check and start == 0:
                self._check(rows, full_logits, out, conditions)
        T = int(self.prompts.answer_pos.max()) + 1
        pad = lambda t: torch.nn.functional.pad(t, (0, T - t.shape[-1]))  # noqa: E731
        return {name: {"logits": torch.cat(v["logits"]), "attn": {h: torch.cat([pad(t) for t in a]) for h, a in v["attn"].items()}}
                for name, v in out.items()}

    def _keys_values(self, resid, rows):
        """Per layer, the cached run's keys (after RoPE) and values at every position: [B, T, Hkv, dh]."""
        out = []
        T = resid[0].shape[1]
        positions = torch.arange(T, device=self.device).expand(len(rows), T)
        with torch.no_grad():
            for l, x in enumerate(resid):
                _, k, v = self.w.project(l, x)
                out.append((self._rope(k, positions), v))
        return out

    def _end(self, resid, kv, rows, end, edits: Condition, watch):
        w, L = self.w, self.model.cfg.n_layers
        by_layer: dict[int, list[tuple[int, RowEdit]]] = {}
        for l, h, e in edits:
            by_layer.setdefault(l, []).append((h, e))
        first = min([l for l in by_layer] + [l for l, _ in watch] + [L - 1])
        B, T = len(rows), resid[0].shape[1]
        b = torch.arange(B, device=self.device)
        pos = {k: v[rows.to(v.device)] for k, v in self.pos.items()}
        x = resid[first][b, end][:, None]  # [B, 1, d]
        mask = torch.arange(T, device=self.device)[None] > end[:, None]  # keys after END (padding)
        attn_out = {}
        with torch.no_grad():
            for l in range(first, L):
                q, k, v = w.project(l, x)  # [B, 1, heads, dh]
                q, k = self._rope(q, end[:, None]), self._rope(k, end[:, None])
                K, V = kv[l][0].clone(), kv[l][1].clone()
                K[b, end], V[b, end] = k[:, 0], v[:, 0]
                K, V = K.repeat_interleave(self.rep, 2), V.repeat_interleave(self.rep, 2)  # [B, T, H, dh]
                scores = torch.einsum("bhd,bthd->bht", q[:, 0].float(), K.float()) * w.scale
                pattern = scores.masked_fill(mask[:, None], float("-inf")).softmax(-1)  # [B, H, T]
                for h, e in by_layer.get(l, []):
                    pattern[:, h] = e.apply(pattern[:, h], pos)
                for lh in watch:
                    if lh[0] == l:
                        attn_out[lh] = pattern[:, lh[1]].clone()
                z = torch.einsum("bht,bthd->bhd", pattern, V.float()).to(x.dtype)[:, None]  # [B, 1, H, dh]
                x = x + w.out(l, z).to(x.dtype)
                x = x + w.mlp(l, x).to(x.dtype)
            logits = w.norm(x, w.ln_final) @ w.W_U
            if w.b_U is not None:
                logits = logits + w.b_U
        return logits[:, 0].float(), attn_out

    def _check(self, rows, full_logits, out, conditions, tol: float = 1e-3) -> None:
        """The unedited re-run against the model's logits; one edited condition against the
        model's forward with its pattern hooked (two prompts)."""
        end = self.prompts.answer_pos[rows]
        ref = full_logits[torch.arange(len(rows)), end.to(full_logits.device)].float().cpu()
        diff = float((out[""]["logits"][0] - ref).abs().max())
        scale = float(ref.abs().max())
        self.verified = {"unedited_max_abs_diff": diff}
        edited = next((name for name, e in conditions.items() if e), None)
        if edited is not None:
            sub = rows[:2]
            hooks = pattern_hooks(self.model, self.prompts.subset(sub.tolist()), conditions[edited],
                                  {k: v[sub.to(v.device)] for k, v in self.pos.items()})
            with torch.no_grad():
                hooked = self.model.run_with_hooks(self.prompts.clean_tokens[sub].to(self.device), fwd_hooks=hooks)
            hooked = hooked[torch.arange(len(sub)), self.prompts.answer_pos[sub]].float().cpu()
            d2 = float((out[edited]["logits"][0][: len(sub)] - hooked).abs().max())
            self.verified.update({"edited_condition": edited, "edited_max_abs_diff": d2})
            diff = max(diff, d2)
        self.verified["tolerance"] = tol * max(scale, 1.0)
        if diff > tol * max(scale, 1.0):
            from interp.errors import VerificationError

            raise VerificationError(f"EndRunner disagrees with the model's forward by {diff:.3g} "
                                    f"(tolerance {tol * max(scale, 1.0):.3g}): {self.verified}")


def pattern_hooks(model, prompts: PromptSet, edits: Condition, pos: dict[str, torch.Tensor] | None = None):
    """The same END-row edits as TransformerLens hooks on ``hook_pattern`` (for the full forward)."""
    pos = pos if pos is not None else prompts.positions
    rows = torch.arange(len(prompts))
    by_layer: dict[int, list[tuple[int, RowEdit]]] = {}
    for l, h, e in edits:
        by_layer.setdefault(l, []).append((h, e))

    def hook_for(items):
        def hook(pattern, hook=None):  # [B, H, q, k]
            pattern = pattern.clone()
            end = prompts.answer_pos.to(pattern.device)
            for h, e in items:
                row = pattern[rows, h, end]  # [B, k]
                pattern[rows, h, end] = e.apply(row, {k: v.to(pattern.device) for k, v in pos.items()})
            return pattern

        return hook

    return [(hook_name("pattern", l), hook_for(items)) for l, items in by_layer.items()]


def attend_to_hooks(model, prompts: PromptSet, heads: list[Head], targets: list[str]):
    """Hooks that make ``heads`` attend, at each prompt's END, only to the named positions (1/|J| each)."""
    check_heads(model, heads)
    return pattern_hooks(model, prompts, [(l, h, RowEdit("attend", tuple(targets))) for l, h in heads])


# -------------------------------------------------------------------------------- intervention
def question_positions(model, prompts: PromptSet) -> torch.Tensor:
    """[B, 6] positions of the last question's tokens " What color is the OBJ ?" (for blocking)."""
    oq = prompts.positions["OQ"]
    span = torch.stack([oq + d for d in range(-4, 2)], 1)
    tok = model.tokenizer
    what = tok(" What", add_special_tokens=False)["input_ids"]
    rows = torch.arange(len(prompts))
    if len(what) == 1 and not bool((prompts.clean_tokens[rows, span[:, 0]] == what[0]).all()):
        raise ComponentError("Colored Objects prompts: the last question does not start 4 tokens before OQ here")
    return span


def intervention_conditions(heads: dict, s2_like: tuple[str, ...] = ("OQ",)) -> dict[str, Condition]:
    """The intervention of ``select_heads``'s heads, per variant and per component."""
    attend, move = RowEdit("attend", WRONG), RowEdit("move", WRONG, s2_like)
    out = {}
    for variant, e in (("attend", attend), ("move", move)):
        parts = {"all": heads["inhibition"] + heads["negative"], "inhibition only": heads["inhibition"],
                 "negative mover only": heads["negative"]}
        for part, hs in parts.items():
            if hs:
                out[f"{variant}: {part}"] = [(l, h, e) for l, h in hs]
    return out


def predictions(model, logits: torch.Tensor, prompts: PromptSet) -> dict[str, torch.Tensor]:
    """Per prompt: correct over the vocabulary, correct among the colours, and the kind of answer
    given (0 correct, 1 another colour of the last question's list, 2 another colour, 3 no colour)."""
    colours = co_colour_ids(model)
    tok = model.tokenizer
    lower = torch.tensor([tok(" " + c, add_special_tokens=False)["input_ids"][0] for c in co_colours(model)])
    top = logits.argmax(-1).cpu()
    answer = prompts.answer_ids.cpu()
    rows = torch.arange(len(prompts))
    wrong_ids = torch.stack([prompts.clean_tokens[rows, prompts.positions[p]].cpu() for p in WRONG], 1)  # " red"
    # the list's wrong colours in either case: map each lower-case id to its title-case id
    title_of = dict(zip(lower.tolist(), colours.tolist()))
    wrong_title = wrong_ids.clone().apply_(lambda i: title_of.get(i, i))
    any_colour = set(colours.tolist()) | set(lower.tolist())
    kind = torch.full((len(prompts),), 3)
    kind[torch.tensor([t in any_colour for t in top.tolist()], dtype=torch.bool)] = 2
    in_list = (top[:, None] == wrong_ids).any(1) | (top[:, None] == wrong_title).any(1)
    kind[in_list] = 1
    kind[top == answer] = 0
    among = colours[logits[:, colours.to(logits.device)].argmax(-1).cpu()] == answer
    return {"correct": top == answer, "correct_colours": among, "kind": kind, "top": top}


def intervention(model, prompts: PromptSet, heads: dict, gatherers: list[Head], movers: list[Head],
                 n_random: int = 10, seed: int = 0, s2_like: tuple[str, ...] = ("OQ",), chunk: int = 32) -> dict:
    """Every intervention condition and control on the CO prompts (module docstring, item 5).

    Returns per condition the per-prompt predictions (``predictions``) and the movers' END rows;
    ``random`` lists the random-head conditions' names per control, ``random_heads`` each one's heads
    (as many as the heads they stand in for, drawn from the heads outside them)."""
    rng = random.Random(seed)
    all_heads = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    chosen = heads["inhibition"] + heads["negative"]
    conditions = intervention_conditions(heads, s2_like)
    question = {"QUESTION": question_positions(model, prompts)}
    block = RowEdit("block", frm=("QUESTION",))
    if gatherers:
        conditions["block: content gatherers"] = [(l, h, block) for l, h in gatherers]
    random_names = {"attend": [], "move": [], "block": []}
    random_heads = {}
    for i in range(n_random):
        if chosen:
            rh = rng.sample([h for h in all_heads if h not in chosen], len(chosen))
            for variant, e in (("attend", RowEdit("attend", WRONG)), ("move", RowEdit("move", WRONG, s2_like))):
                conditions[f"random {variant} {i}"] = [(l, h, e) for l, h in rh]
                random_names[variant].append(f"random {variant} {i}")
                random_heads[f"random {variant} {i}"] = rh
        if gatherers:
            rg = rng.sample([h for h in all_heads if h not in gatherers], len(gatherers))
            conditions[f"random block {i}"] = [(l, h, block) for l, h in rg]
            random_names["block"].append(f"random block {i}")
            random_heads[f"random block {i}"] = rg
    runner = EndRunner(model, prompts, question)
    runs = runner.run(conditions, watch=movers, chunk=chunk)
    out = {}
    for name, r in runs.items():
        out[name or "baseline"] = {**predictions(model, r["logits"], prompts), "attn": r["attn"]}
    return {"conditions": out, "random": random_names, "random_heads": random_heads, "heads": heads,
            "gatherers": gatherers, "movers": movers,
            "verified": runner.verified, "s2_like": list(s2_like)}


def mover_check(res: dict, prompts: PromptSet, condition: str) -> dict:
    """The movers' mean END attention to the two wrong colours (summed) and to the correct one,
    per prompt, before and after ``condition``: {"wrong": (before, after), "correct": (...)}."""
    rows = torch.arange(len(prompts))
    out = {}
    for what, names in (("wrong", WRONG), ("correct", ("C_CORRECT",))):
        vals = []
        for cond in ("baseline", condition):
            a = torch.zeros(len(prompts))
            for h, row in res["conditions"][cond]["attn"].items():
                a += sum(row[rows, prompts.positions[n]] for n in names) / len(res["conditions"][cond]["attn"])
            vals.append(a)
        out[what] = tuple(vals)
    return out


def accuracy(model, prompts: PromptSet, fwd_hooks=()) -> dict:
    """Share of prompts whose top next token is the answer: over the vocabulary and over the colours."""
    prompts = on_model_device(model, prompts)
    with torch.no_grad():
        logits = model.run_with_hooks(prompts.clean_tokens, fwd_hooks=list(fwd_hooks))
    at = logits[torch.arange(len(prompts)), prompts.answer_pos]
    p = predictions(model, at, prompts)
    return {"accuracy": float(p["correct"].float().mean()), "accuracy_colours": float(p["correct_colours"].float().mean()),
            "correct": p["correct"]}


def run(model, n_prompts: int = 16, n_intervention: int = 64, seed: int = 0, n_random: int = 10,
        share: float = 0.02, progress: bool = True, n_null: int = 2000, n_select: int = 32) -> dict:
    """The whole analysis on one model: stages of both tasks, overlap and its null, the heads
    chosen on IOI, the intervention with its controls on ``n_intervention`` CO prompts (disjoint
    from the ``n_prompts`` path-patching prompts: another seed). The intervention heads' IOI
    evidence (attention, the movers' shift with its interval, copy scores) is measured on
    ``n_select`` further IOI prompts (forwards only, so more of them than path patching gets)."""
    from interp.tasks import colored_objects_examples, ioi_examples

    ioi_ps = ioi_examples(model, n=n_prompts, seed=seed, corruption="s2_io")
    ioi_select = ioi_examples(model, n=n_select, seed=seed + 2000, corruption="s2_io")
    co_ps = colored_objects_examples(model, n=n_prompts, seed=seed)
    co_eval = colored_objects_examples(model, n=n_intervention, seed=seed + 1000)
    ioi_stages = stages(model, ioi_ps, "ioi", progress=progress)
    co_stages = stages(model, co_ps, "co", progress=progress)
    ov = overlap(ioi_stages, co_stages, share)
    heads = select_heads(model, ioi_select, ioi_stages, seed=seed)
    co_movers = list(co_stages["mover queries"].meta["receiver_heads"])
    gatherers = top_heads(path_effect(co_stages["mover queries"]), 3, float("-inf"),
                          before_layer=min(l for l, _ in co_movers))
    iv = intervention(model, co_eval, heads, gatherers, co_movers, n_random=n_random, seed=seed)
    with torch.no_grad():
        logits = model(ioi_ps.clean_tokens.to(model_device(model)))
    ioi_correct = logits[torch.arange(len(ioi_ps)), ioi_ps.answer_pos].argmax(-1).cpu() == ioi_ps.answer_ids.cpu()
    return {
        "stages": {"ioi": ioi_stages, "co": co_stages}, "overlap": ov,
        "overlap_null": overlap_null(ov, model.cfg.n_layers, model.cfg.n_heads, n_null, seed),
        "overlap_interval": overlap_interval(ioi_stages, co_stages, share, seed=seed),
        "heads": heads, "intervention": iv, "co_prompts": co_eval, "ioi_correct": ioi_correct,
        "n_prompts": n_prompts, "n_intervention": n_intervention, "n_select": n_select, "seed": seed, "share": share,
    }
