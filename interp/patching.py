"""Activation patching and exact path patching.

Activation patching asks how much one activation matters for a behaviour: run the model on one
input, overwrite a single activation with its value from another input, and record the metric.
Denoising (the default, as TransformerLens's ``patching.get_act_patch_*``): run the corrupted
prompt and patch in the clean value; a large recovery towards the clean metric means the
activation carries the information that distinguishes the two. Noising is the reverse.

Path patching (Wang et al. 2022, appendix B) asks how much of a sender's effect travels *directly*
to a receiver: every other head is frozen to its clean value, so the sender's change can reach the
receiver only along the direct path (and through MLPs, unless they are frozen too).

This module's loop runs one forward per patched index, like TransformerLens: simple and the
reference the batched sweep engine is tested against.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from interp.errors import ComponentError
from interp.hooks import check_heads, hook_name, resolve_positions, select, sweep_index
from interp.metrics import logit_diff
from interp.result import Result
from interp.tasks.prompts import PromptSet


@dataclass(frozen=True)
class Component:
    """A patchable activation: its hook kind, whether it has a head axis, and its result axes."""

    kind: str
    per_head: bool
    all_pos_axes: tuple[str, ...]
    by_pos_axes: tuple[str, ...]


COMPONENTS = {
    "resid_pre": Component("resid_pre", False, ("layer",), ("layer", "pos")),
    "attn_out": Component("attn_out", False, ("layer",), ("layer", "pos")),
    "mlp_out": Component("mlp_out", False, ("layer",), ("layer", "pos")),
    "head_out": Component("z", True, ("layer", "head"), ("layer", "pos", "head")),
    "head_q": Component("q", True, ("layer", "head"), ("layer", "pos", "head")),
    "head_k": Component("k", True, ("layer", "head"), ("layer", "pos", "head")),
    "head_v": Component("v", True, ("layer", "head"), ("layer", "pos", "head")),
    # Patterns are [batch, head, query_pos, key_pos]; "pos" is the query (destination) position.
    "head_pattern": Component("pattern", True, ("layer", "head"), ("layer", "head", "pos")),
}


def get_component(name: str) -> Component:
    if name not in COMPONENTS:
        raise ComponentError(f"unknown component {name!r}: use one of {', '.join(COMPONENTS)}")
    return COMPONENTS[name]


def _mean_metric(model, tokens, prompts, metric, fwd_hooks=()) -> float:
    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(fwd_hooks))
    return float(metric(logits, prompts).mean())


def patch(
    model,
    prompts: PromptSet,
    component: str,
    by_pos: bool = False,
    direction: str = "denoise",
    metric=logit_diff,
    layers: list[int] | None = None,
    heads: list[int] | None = None,
    positions: list[int] | None = None,
    progress: bool = True,
    engine: str = "auto",
    checkpoint=None,
) -> Result:
    """Patch one activation at a time and record the metric.

    For each layer (x head) (x position, with ``by_pos``) run the *base* prompts with that one
    activation replaced by its value on the *source* prompts. Denoising: base = corrupted,
    source = clean (TransformerLens's convention). Noising: base = clean, source = corrupted.

    Args:
        model: a TransformerBridge from ``load_model``.
        prompts: clean/corrupted pairs with answers.
        component: resid_pre, attn_out, mlp_out, head_out (z), head_q, head_k, head_v,
            head_pattern. With GQA, head_k/head_v index key/value heads: patching one changes
            every query head of its group.
        by_pos: one position at a time (all examples at that position), else all positions.
        metric: ``metric(logits, prompts) -> [batch]``; averaged over the batch.
        layers, heads, positions: sweep only these indices (default: all).
        engine: "batched" (``interp.sweep``: exact, many variants per forward), "reference"
            (one forward per index, as TransformerLens), or "auto" (batched where the
            architecture is supported, else reference).
        checkpoint: batched engine only: a file where finished chunks are saved; rerunning the
            same sweep with it resumes an interrupted run.

    Returns:
        Result with axes as TransformerLens orders them: (layer[, pos], head) for head vectors,
        (layer, head[, pos]) for patterns, (layer[, pos]) for whole-layer activations.
        ``meta["index"]`` lists the swept indices of each axis.
    """
    comp = get_component(component)
    if positions is not None and not by_pos:
        raise ComponentError("positions select the positions of a by_pos sweep: pass by_pos=True")
    if engine not in ("auto", "batched", "reference"):
        raise ComponentError(f"engine must be auto, batched or reference, got {engine!r}")
    if engine != "reference":
        from interp.sweep import engine_supports, sweep_patch

        if engine == "batched" or engine_supports(model):
            return sweep_patch(model, prompts, component, by_pos, direction, metric, layers, heads,
                               positions, checkpoint=checkpoint, progress=progress)
    if direction not in ("denoise", "noise"):
        raise ComponentError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    base, source = (
        (prompts.corrupted_tokens, prompts.clean_tokens)
        if direction == "denoise"
        else (prompts.clean_tokens, prompts.corrupted_tokens)
    )
    index = sweep_index(model, comp.kind, prompts.n_pos, layers, heads, positions)
    axes = comp.by_pos_axes if by_pos else comp.all_pos_axes
    names = {hook_name(comp.kind, layer) for layer in index["layer"]}
    with torch.no_grad():
        _, source_cache = model.run_with_cache(source, names_filter=lambda n: n in names)
    clean = _mean_metric(model, prompts.clean_tokens, prompts, metric)
    corrupted = _mean_metric(model, prompts.corrupted_tokens, prompts, metric)

    cells = list(itertools.product(*[index[a] for a in axes]))
    values = torch.zeros(len(cells))
    for i, cell in enumerate(tqdm(cells, desc=f"patch {component}", disable=not progress, leave=False)):
        where = dict(zip(axes, cell))
        name = hook_name(comp.kind, where["layer"])
        patched = source_cache[name]
        hook = _patch_hook(patched, where.get("head"), where.get("pos"), head_dim=1 if comp.kind == "pattern" else 2)
        values[i] = _mean_metric(model, base, prompts, metric, [(name, hook)])
    shape = [len(index[a]) for a in axes]
    return Result(
        values.reshape(shape), axes, component, getattr(metric, "__name__", "metric"),
        clean=clean, corrupted=corrupted,
        meta={"index": {a: index[a] for a in axes}, "direction": direction, "n_prompts": len(prompts),
              "engine": "reference"},
    )


def _patch_hook(source: torch.Tensor, head: int | None, pos: int | None, head_dim: int = 2):
    """A hook writing ``source`` into the activation at (head, pos); None means all."""

    def hook(act, hook=None):
        act = act.clone()
        heads = None if head is None else [head]
        if pos is None and heads is None:
            return source.to(act.dtype)
        pos_ix = None if pos is None else torch.full((act.shape[0],), pos, dtype=torch.long)
        ix = select(act, heads, pos_ix, head_dim=head_dim)
        act[ix] = source[ix].to(act.dtype)
        return act

    return hook


# ------------------------------------------------------------------------------ path patching
RESID_FINAL = "resid_final"


def path_patch(
    model,
    prompts: PromptSet,
    senders: list[tuple[int, int | None]],
    receivers: str | list[tuple[int, int, str]] = RESID_FINAL,
    sender_positions=None,
    receiver_positions=None,
    freeze_mlps: bool = False,
    metric=logit_diff,
    _caches: tuple | None = None,
) -> float:
    """Exact path patching (Wang et al. 2022, appendix B); returns the mean metric of the final run.

    x = clean prompts, x' = corrupted prompts.
      1. run x', cache the senders' outputs;  2. run x, cache every head's output (and MLP's);
      3. run x with every head's output frozen to its x value except the senders, whose outputs at
         ``sender_positions`` take their x' values; MLPs recompute (or are frozen, ``freeze_mlps``).
         Cache the receivers' inputs;
      4. run x with only the receivers' inputs set to their step-3 values; read the metric.
    With ``receivers="resid_final"`` step 4 is step 3's own output (the final residual feeds only
    the unembedding). The effect is usually reported as (M - M_clean) / (M_corrupt - M_clean).

    Args:
        senders: (layer, head) pairs; (layer, None) is the MLP of that layer.
        receivers: "resid_final", or (layer, head, "q"|"k"|"v") triples. For k/v of a GQA model
            ``head`` is the key/value head, shared by its group of query heads.
        sender_positions, receiver_positions: None (all), an int, a named position ("END", "S2"),
            or a [batch] tensor.
        freeze_mlps: freeze every MLP (but sender MLPs) to its clean output too.
    """
    n_layers = model.cfg.n_layers
    head_senders = check_heads(model, [s for s in senders if s[1] is not None])
    mlp_senders = sorted({int(s[0]) for s in senders if s[1] is None})
    if any(not 0 <= l < n_layers for l in mlp_senders):
        raise ComponentError(f"MLP sender layer out of range (0..{n_layers - 1})")
    receivers = check_receivers(model, receivers)
    s_pos = resolve_positions(sender_positions, prompts)
    r_pos = resolve_positions(receiver_positions, prompts)
    clean_cache, corrupt_cache = _caches or path_patch_caches(model, prompts)

    # Step 3: freeze all heads (and optionally MLPs) to clean, senders to corrupted.
    freeze = []
    by_layer: dict[int, list[int]] = {}
    for l, h in head_senders:
        by_layer.setdefault(l, []).append(h)
    for layer in range(n_layers):
        z = hook_name("z", layer)
        freeze.append((z, _frozen_hook(clean_cache[z], corrupt_cache[z], by_layer.get(layer), s_pos)))
        if freeze_mlps or layer in mlp_senders:
            m = hook_name("mlp_out", layer)
            senders_here = [0] if layer in mlp_senders else None
            base = clean_cache[m] if freeze_mlps else None
            freeze.append((m, _frozen_hook(base, corrupt_cache[m], senders_here, s_pos, whole=True)))
    if receivers == RESID_FINAL:
        return _mean_metric(model, prompts.clean_tokens, prompts, metric, freeze)

    recv_names = {hook_name(k, l) for l, _, k in receivers}
    stored = {}

    def store(name):  # key by the registered name: hook.name may be an alias's target
        def hook(act, hook=None):
            stored[name] = act.detach().clone()
            return act

        return hook

    with torch.no_grad():
        model.run_with_hooks(prompts.clean_tokens, fwd_hooks=freeze + [(n, store(n)) for n in recv_names])
    # Step 4: only the receivers' inputs take their step-3 values.
    groups: dict[str, list[int]] = {}
    for l, h, k in receivers:
        groups.setdefault(hook_name(k, l), []).append(h)
    patch_hooks = [(n, _write_hook(stored[n], hs, r_pos)) for n, hs in groups.items()]
    return _mean_metric(model, prompts.clean_tokens, prompts, metric, patch_hooks)


def check_receivers(model, receivers):
    """"resid_final", or a non-empty list of (layer, head, "q"|"k"|"v") within the model."""
    if receivers == RESID_FINAL:
        return receivers
    if isinstance(receivers, str):
        raise ComponentError(f"receivers must be {RESID_FINAL!r} or (layer, head, kind) triples, got {receivers!r}")
    receivers = [(int(l), int(h), str(k)) for l, h, k in receivers]
    if not receivers:
        raise ComponentError("no receivers given")
    for l, h, k in receivers:
        if k not in ("q", "k", "v"):
            raise ComponentError(f"receiver kind must be q, k or v, got {k!r}")
        check_heads(model, [(l, h)], kind=k)
    return receivers


def path_patch_caches(model, prompts: PromptSet):
    """Steps 1-2 of path patching: clean and corrupted caches of head and MLP outputs."""
    keep = lambda n: n.endswith("attn.hook_z") or n.endswith("hook_mlp_out")  # noqa: E731
    with torch.no_grad():
        _, clean = model.run_with_cache(prompts.clean_tokens, names_filter=keep)
        _, corrupt = model.run_with_cache(prompts.corrupted_tokens, names_filter=keep)
    return clean, corrupt


def _frozen_hook(base, sender_values, senders, pos, whole: bool = False):
    """Set the activation to ``base`` (None: keep it), then write the senders' values at ``pos``."""

    def hook(act, hook=None):
        act = act.clone() if base is None else base.clone().to(act.dtype)
        if senders is not None:
            ix = select(act, None if whole else senders, pos)
            act[ix] = sender_values[ix].to(act.dtype)
        return act

    return hook


def _write_hook(values, heads, pos):
    def hook(act, hook=None):
        act = act.clone()
        ix = select(act, heads, pos)
        act[ix] = values[ix].to(act.dtype)
        return act

    return hook


def path_patch_heads(
    model,
    prompts: PromptSet,
    receivers: str | list[tuple[int, int, str]] = RESID_FINAL,
    sender_positions=None,
    receiver_positions=None,
    freeze_mlps: bool = False,
    metric=logit_diff,
    layers: list[int] | None = None,
    progress: bool = True,
    engine: str = "auto",
) -> Result:
    """Path patching with every head (of ``layers``) as the single sender: Result[layer, head].

    ``clean`` and ``corrupted`` of the Result are the metric on the clean and corrupted prompts;
    score a head with ``(value - clean) / (corrupted - clean)`` (1 = the path carries the whole
    effect of the corruption). ``engine``: "batched" (``interp.path_sweep``, all senders of a chunk
    in one pass), "reference" (two forwards per sender) or "auto".
    """
    if engine not in ("auto", "batched", "reference"):
        raise ComponentError(f"engine must be auto, batched or reference, got {engine!r}")
    if engine != "reference":
        from interp.path_sweep import sweep_path_patch_heads
        from interp.sweep import engine_supports

        if engine == "batched" or engine_supports(model):
            return sweep_path_patch_heads(model, prompts, receivers, sender_positions, receiver_positions,
                                          freeze_mlps, metric, layers, progress=progress)
    caches = path_patch_caches(model, prompts)
    layers = sweep_index(model, "z", prompts.n_pos, layers=layers)["layer"]
    heads = list(range(model.cfg.n_heads))
    values = torch.zeros(len(layers), len(heads))
    cells = list(itertools.product(range(len(layers)), heads))
    for i, h in tqdm(cells, desc="path patch", disable=not progress, leave=False):
        values[i, h] = path_patch(
            model, prompts, [(layers[i], h)], receivers, sender_positions, receiver_positions,
            freeze_mlps, metric, _caches=caches,
        )
    return Result(
        values, ("layer", "head"), "path:" + (receivers if isinstance(receivers, str) else "heads"),
        getattr(metric, "__name__", "metric"),
        clean=_mean_metric(model, prompts.clean_tokens, prompts, metric),
        corrupted=_mean_metric(model, prompts.corrupted_tokens, prompts, metric),
        meta={"index": {"layer": layers, "head": heads}, "freeze_mlps": freeze_mlps,
              "n_prompts": len(prompts), "engine": "reference",
              "receivers": receivers if isinstance(receivers, str) else [list(r) for r in receivers]},
    )
