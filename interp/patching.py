"""Activation patching and exact path patching.

Activation patching asks how much one activation matters for a behaviour: run the model on one
input, overwrite a single activation with its value from another input, and record the metric.
Denoising (the default, as TransformerLens's ``patching.get_act_patch_*``): run the corrupted
prompt and patch in the clean value; a large recovery towards the clean metric means the
activation carries the information that distinguishes the two. Noising is the reverse.

Path patching (Wang et al. 2022, appendix B) asks how much of a sender's effect travels *directly*
to a receiver: every other head is frozen to its clean value, so the sender's change can reach the
receiver only along the direct path (and through MLPs, unless they are frozen too).

Two engines compute the same numbers. The reference loop (``interp.reference``) runs the hooked
bridge once per patched cell, like TransformerLens. The batched engines (``interp.sweep``,
``interp.path_sweep``) run many patches per forward, each from its own layer and position, and
check themselves: baselines against the bridge before the sweep, a random sample of cells through
the reference loop after it (``interp.verify``; the evidence is ``result.meta["verified"]``).
``engine="auto"`` takes the batched engine where it can compute the model exactly as handed over
(its weights, its registered interventions, its hooks) and otherwise the reference loop, saying
why once; ``engine="batched"`` refuses instead (``EngineUnsupported``).

The metric contract, the same on every engine: ``metric(logits, prompts) -> [batch]`` with
``logits`` [batch, vocab] read at each example's answer position (``interp.metrics``).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import warnings

import torch
from tqdm.auto import tqdm

from interp import checkpoint as ckpt
from interp.components import COMPONENTS, RESID_FINAL, Component, cells_to_variants, check_receivers, get_component
from interp.errors import ComponentError, EngineUnsupported
from interp.hooks import sweep_index
from interp.metrics import logit_diff
from interp.path_sweep import sweep_path_patch_heads
from interp.reference import path_patch, path_patch_caches, readout, run_cells
from interp.result import Result
from interp.sweep import sweep_patch
from interp.tasks.prompts import PromptSet, check_prompts, on_model_device

__all__ = ["patch", "path_patch", "path_patch_heads", "path_patch_caches", "COMPONENTS", "Component",
           "RESID_FINAL", "get_component", "check_receivers", "EngineFallbackWarning"]

ENGINES = ("auto", "batched", "reference")
REFERENCE_EVIDENCE = {"cells": 0, "max_abs_diff": 0.0, "engine": "reference"}


class EngineFallbackWarning(UserWarning):
    """engine="auto" took the reference loop (the message says why)."""


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise ComponentError(f"engine must be auto, batched or reference, got {engine!r}")


def fall_back(model, what: str, reason: str) -> None:
    """Say once per model and reason that ``what`` takes the reference loop, and why."""
    said = model.__dict__.setdefault("_interp_fallbacks", set())
    if (what, reason) not in said:
        said.add((what, reason))
        warnings.warn(f"{what}: the batched engine cannot compute this exactly ({reason}); using the "
                      "reference loop (one forward per patch)", EngineFallbackWarning, stacklevel=3)


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
    verify: int = 2,
) -> Result:
    """Patch one activation at a time and record the metric.

    For each layer (x head) (x position, with ``by_pos``) run the *base* prompts with that one
    activation replaced by its value on the *source* prompts. Denoising: base = corrupted,
    source = clean (TransformerLens's convention). Noising: base = clean, source = corrupted.
    Interventions active on the model (``with interp.ablate(...)``) act in every run, and the
    patch after them.

    Args:
        model: a TransformerBridge from ``load_model``.
        prompts: clean/corrupted pairs with answers.
        component: resid_pre, attn_out, mlp_out, head_out (z), head_q, head_k, head_v,
            head_pattern. With GQA, head_k/head_v index key/value heads: patching one changes
            every query head of its group.
        by_pos: one position at a time (all examples at that position), else all positions.
        metric: ``metric(logits, prompts) -> [batch]``, where ``logits`` are [batch, vocab] at
            each example's answer position (the same on every engine); averaged over the batch.
        layers, heads, positions: sweep only these indices (default: all).
        engine: "batched" (``interp.sweep``: exact, many variants per forward; refuses what it
            cannot compute exactly), "reference" (one forward per index, as TransformerLens), or
            "auto" (batched where it is exact for this model, its hooks and these prompts; else
            the reference loop, with a warning saying why).
        checkpoint: a file where finished cells are saved; rerunning the same sweep with it
            resumes an interrupted run (either engine).
        verify: batched engine: re-run this many random cells through the reference loop and
            raise VerificationError if one disagrees beyond the dtype's tolerance, after
            comparing the unpatched runs with the bridge's forward (0: no self-check at all).

    Returns:
        Result with axes as TransformerLens orders them: (layer[, pos], head) for head vectors,
        (layer, head[, pos]) for patterns, (layer[, pos]) for whole-layer activations.
        ``meta["index"]`` lists the swept indices of each axis; ``meta["engine"]`` the engine
        used; ``meta["verified"]`` the evidence: ``{"cells": k, "max_abs_diff": x, ...}``.
    """
    comp = get_component(component)
    if positions is not None and not by_pos:
        raise ComponentError("positions select the positions of a by_pos sweep: pass by_pos=True")
    _check_engine(engine)
    if direction not in ("denoise", "noise"):
        raise ComponentError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    check_prompts(model, prompts)
    prompts = on_model_device(model, prompts)
    if checkpoint is not None:
        ckpt.check_path(checkpoint)
    if engine != "reference":
        try:
            return sweep_patch(model, prompts, component, by_pos, direction, metric, layers, heads,
                               positions, checkpoint=checkpoint, progress=progress, verify=verify)
        except EngineUnsupported as exc:
            if engine == "batched":
                raise
            fall_back(model, "interp.patch", str(exc))
    index = sweep_index(model, comp.kind, prompts.n_pos, layers, heads, positions)
    axes = comp.by_pos_axes if by_pos else comp.all_pos_axes
    variants = cells_to_variants(axes, itertools.product(*[index[a] for a in axes]))
    key = _reference_key(model, prompts, component, direction, metric, variants) if checkpoint is not None else None
    values = run_cells(model, prompts, component, variants, direction, metric, progress=progress,
                       checkpoint=checkpoint, key=key)
    return Result(
        values.reshape([len(index[a]) for a in axes]), axes, component, getattr(metric, "__name__", "metric"),
        clean=float(readout(model, prompts.clean_tokens, prompts, metric)),
        corrupted=float(readout(model, prompts.corrupted_tokens, prompts, metric)),
        meta={"index": {a: index[a] for a in axes}, "direction": direction, "n_prompts": len(prompts),
              "engine": "reference", "verified": dict(REFERENCE_EVIDENCE)},
    )


def _reference_key(model, prompts, component, direction, metric, variants) -> str:
    """A checkpoint key of a reference sweep: the sweep, the prompts, the weights' values and the
    hooks on the model (their edits, or their names)."""
    from interp.weights import fingerprint_digest, weights_fingerprint

    h = hashlib.sha256(json.dumps(["reference", component, direction, getattr(metric, "__name__", "metric"),
                                   [(v.layer, v.head, v.pos) for v in variants]]).encode())
    h.update(prompts.digest().encode())
    h.update(fingerprint_digest(weights_fingerprint(model)).encode())
    for hp in {id(p): p for p in model.hook_points()}.values():
        for handle in hp.fwd_hooks:
            edit = getattr(handle.user_hook, "interp_edit", None)
            h.update((hp.name + (edit.digest() if edit else getattr(handle.user_hook, "__qualname__", "?"))).encode())
    return h.hexdigest()


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
    verify: int = 2,
) -> Result:
    """Path patching with every head (of ``layers``) as the single sender: Result[layer, head].

    ``clean`` and ``corrupted`` of the Result are the metric on the clean and corrupted prompts;
    score a head with ``(value - clean) / (corrupted - clean)`` (1 = the path carries the whole
    effect of the corruption). ``engine``: "batched" (``interp.path_sweep``, all senders of a chunk
    in one pass), "reference" (two forwards per sender) or "auto". ``verify``: senders re-run
    through the reference (batched engine), as in ``patch``.
    """
    _check_engine(engine)
    check_prompts(model, prompts)
    prompts = on_model_device(model, prompts)
    if engine != "reference":
        try:
            return sweep_path_patch_heads(model, prompts, receivers, sender_positions, receiver_positions,
                                          freeze_mlps, metric, layers, progress=progress, verify=verify)
        except EngineUnsupported as exc:
            if engine == "batched":
                raise
            fall_back(model, "interp.path_patch_heads", str(exc))
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
        clean=float(readout(model, prompts.clean_tokens, prompts, metric)),
        corrupted=float(readout(model, prompts.corrupted_tokens, prompts, metric)),
        meta={"index": {"layer": layers, "head": heads}, "freeze_mlps": freeze_mlps,
              "n_prompts": len(prompts), "engine": "reference", "verified": dict(REFERENCE_EVIDENCE),
              "receivers": receivers if isinstance(receivers, str) else [list(r) for r in receivers]},
    )
