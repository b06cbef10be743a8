"""Head ablations: interventions on head outputs (or queries), over any heads and positions.

Modes (per head h at layer l; ``positions`` restricts the query positions, default all):
- "zero":     z_h := 0  (z = the head's attention-weighted values, before the output projection)
- "mean":     z_h := mean of z_h over a reference set, per position (per group, e.g. template,
              when the reference and the run carry groups; Wang et al. 2022 use p_ABC per template)
- "resample": z_h := z_h on another prompt of the reference set (a fixed random derangement)
- "ua":       undifferentiated attention (Zhou et al. 2025, "Ships"): q_h := eps * q_h. The scores
              become eps * q.k / sqrt(d), so the pattern tends to the causal uniform matrix (1/i on
              each of the i allowed keys of row i). eps = 0 is query zeroing: exactly uniform.
              Acts on the query, so under GQA only this query head changes.
- "sc":       scaling contribution (Zhou et al. 2025): z_h := eps * z_h.

An ablation is data (``interp.interventions.Intervention``): ``ablation(...)`` builds it, ``ablate``
applies it to every forward inside a ``with`` block, ``ablation_hooks`` gives its hooks. Either
engine of every primitive honours it (the hooks carry their edits).

    >>> with ablate(model, [(9, 6), (10, 0)], "mean", reference=prompts):
    ...     logits = model(prompts.clean_tokens)
    ...     result = interp.patch(model, prompts, "head_out")   # patching the ablated model
"""
from __future__ import annotations

import contextlib

import torch

from interp.errors import ComponentError
from interp.hooks import check_heads, hook_name
from interp.interventions import Edit, Intervention, intervene
from interp.tasks.prompts import PromptSet, model_device, on_model_device

MODES = ("zero", "mean", "resample", "ua", "sc")


def ablation(
    model,
    heads: list[tuple[int, int]],
    mode: str = "zero",
    positions: torch.Tensor | int | None = None,
    reference: PromptSet | torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
    eps: float = 1e-5,
    seed: int = 0,
) -> Intervention:
    """The ablation of ``heads`` as data (an Intervention both engines apply).

    Args:
        heads: (layer, head) pairs (query-head indices).
        mode: zero, mean, resample, ua, sc (see the module docstring).
        positions: query positions to ablate: None (all), an int, or a [batch] tensor.
        reference: for mean/resample: a PromptSet (its corrupted prompts are used, e.g. p_ABC)
            or a [n, pos] token tensor. Its head outputs are computed now, through whatever
            interventions are active on the model.
        groups: [batch] group ids of the prompts that will be run, for per-group means; the
            reference PromptSet's ``groups`` give the reference's.
        eps: the factor of ua and sc (paper default 1e-5).
        seed: for resample's derangement.
    """
    if mode not in MODES:
        raise ComponentError(f"unknown ablation mode {mode!r}: use one of {', '.join(MODES)}")
    heads = check_heads(model, heads)
    if isinstance(positions, int):
        positions = torch.tensor([positions])  # the same position in every example
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    name = f"{mode} ablation of " + ", ".join(f"{l}.{h}" for l, h in heads)

    if mode in ("ua", "sc", "zero"):
        factor = 0.0 if mode == "zero" else float(eps)
        kind = "q" if mode == "ua" else "z"
        return Intervention(name, tuple(Edit(kind, l, tuple(hs), positions, factor=factor)
                                        for l, hs in by_layer.items()))

    if reference is None:
        raise ComponentError(f"{mode} ablation needs a reference prompt set (e.g. the corrupted prompts)")
    if isinstance(reference, PromptSet):
        reference = on_model_device(model, reference)
        ref_tokens, ref_groups = reference.corrupted_tokens, reference.groups
    else:
        ref_tokens, ref_groups = reference.to(model_device(model)), None
    names = {hook_name("z", l) for l in by_layer}
    with torch.no_grad():
        _, cache = model.run_with_cache(ref_tokens, names_filter=lambda n: n in names)
    edits = []
    for layer, hs in by_layer.items():
        z = cache[hook_name("z", layer)]  # [n_ref, pos, head, d_head]
        if mode == "mean":
            value = _group_means(z, ref_groups, groups)
        else:
            g = torch.Generator().manual_seed(seed)
            n = z.shape[0]
            perm = (torch.arange(n) + torch.randint(1, n, (1,), generator=g)) % n if n > 1 else torch.zeros(1, dtype=torch.long)
            value = z[perm.to(z.device)]
        edits.append(Edit("z", layer, tuple(hs), positions, value=value))
    return Intervention(name, tuple(edits))


def ablation_hooks(model, heads: list[tuple[int, int]], mode: str = "zero", **kwargs) -> list[tuple[str, callable]]:
    """Forward hooks that ablate ``heads``; pass them to ``model.run_with_hooks`` or ``model.hooks``.
    Keyword arguments are those of :func:`ablation`. The hooks carry their edits, so the batched
    engines honour them too."""
    return ablation(model, heads, mode, **kwargs).hooks()


def mean_head_outputs(model, reference: PromptSet, groups: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per layer, the mean head outputs z over the reference's corrupted prompts: [batch|1, pos, head, d].

    Per group (e.g. template) when both the reference and ``groups`` (of the prompts that will be
    run) are given, as Wang et al. 2022 average over p_ABC separately per template."""
    reference = on_model_device(model, reference)
    names = [hook_name("z", l) for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(reference.corrupted_tokens, names_filter=lambda n: n in names)
    return [_group_means(cache[n], reference.groups, groups) for n in names]


def knockout(
    model,
    keep: dict[tuple[int, int], torch.Tensor | None],
    means: list[torch.Tensor],
) -> Intervention:
    """Mean-ablate every head's output except at the kept (head, position) pairs (Wang et al. 2022).

    The knockout that evaluates a circuit C: z_h(t) := its mean (``mean_head_outputs``) for every
    head h and position t, unless (h, t) is in C. MLPs are left alone.

    Args:
        keep: (layer, head) -> [batch] positions where the head keeps its own output, or None for
            all positions.
        means: ``mean_head_outputs(model, reference, groups)``.
    """
    keep = {tuple(h): p for h, p in keep.items()}
    check_heads(model, list(keep))
    edits = []
    for layer, mean in enumerate(means):
        kept = {h: p for (l, h), p in keep.items() if l == layer}
        out = tuple(h for h in range(model.cfg.n_heads) if h not in kept)
        if out:
            edits.append(Edit("z", layer, out, value=mean))
        edits += [Edit("z", layer, (h,), torch.as_tensor(p), invert=True, value=mean)
                  for h, p in kept.items() if p is not None]
    return Intervention(f"knockout of all but {len(keep)} heads", tuple(edits))


def knockout_hooks(model, keep: dict[tuple[int, int], torch.Tensor | None], means: list[torch.Tensor]):
    """``knockout(...)`` as forward hooks."""
    return knockout(model, keep, means).hooks()


def _group_means(z, ref_groups, run_groups):
    """Mean over reference examples: [1, pos, head, d], or [batch, pos, head, d] per group."""
    if ref_groups is None or run_groups is None:
        return z.mean(0, keepdim=True)
    means = {int(g): z[ref_groups == g].mean(0) for g in ref_groups.unique()}
    missing = {int(g) for g in run_groups} - means.keys()
    if missing:
        raise ComponentError(f"mean ablation: groups {sorted(missing)} have no reference examples")
    return torch.stack([means[int(g)] for g in run_groups])


@contextlib.contextmanager
def ablate(model, heads, mode: str = "zero", **kwargs):
    """Context manager: inside it, every forward of ``model`` runs with ``heads`` ablated.

    Keyword arguments are those of :func:`ablation`. Contexts nest (hooks add up). Every primitive
    run inside it honours the ablation, on either engine (the hooks carry their edits).
    """
    with intervene(model, ablation(model, heads, mode, **kwargs)):
        yield model


def ablation_factors(model, ablations: list[tuple[str, list[tuple[int, int]]]], eps: float = 1e-5, device=None):
    """Per-variant factors on the queries and on z: two [V, L, H, 1] tensors (1 = untouched)."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    q = torch.ones(len(ablations), L, H, 1, device=device)
    z = torch.ones(len(ablations), L, H, 1, device=device)
    for i, (mode, heads) in enumerate(ablations):
        if mode not in ("ua", "sc", "zero"):
            raise ComponentError(f"unknown ablation mode {mode!r}: use ua, sc or zero")
        for l, h in heads:
            if not (0 <= l < L and 0 <= h < H):
                raise ComponentError(f"head {l}.{h} does not exist (the model has {L} layers x {H} heads)")
            (q if mode == "ua" else z)[i, l, h] = 0.0 if mode == "zero" else eps
    return q, z
