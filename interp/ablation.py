"""Head ablations as forward hooks, composable over any set of heads and positions.

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

    >>> with ablate(model, [(9, 6), (10, 0)], "mean", reference=prompts):
    ...     logits = model(prompts.clean_tokens)
"""
from __future__ import annotations

import contextlib

import torch

from interp.errors import ComponentError
from interp.hooks import check_heads, hook_name, select
from interp.tasks.prompts import PromptSet

MODES = ("zero", "mean", "resample", "ua", "sc")


def ablation_hooks(
    model,
    heads: list[tuple[int, int]],
    mode: str = "zero",
    positions: torch.Tensor | int | None = None,
    reference: PromptSet | torch.Tensor | None = None,
    groups: torch.Tensor | None = None,
    eps: float = 1e-5,
    seed: int = 0,
) -> list[tuple[str, callable]]:
    """Forward hooks that ablate ``heads``; pass them to ``model.run_with_hooks`` or ``model.hooks``.

    Args:
        heads: (layer, head) pairs (query-head indices).
        mode: zero, mean, resample, ua, sc (see the module docstring).
        positions: query positions to ablate: None (all), an int, or a [batch] tensor.
        reference: for mean/resample: a PromptSet (its corrupted prompts are used, e.g. p_ABC)
            or a [n, pos] token tensor.
        groups: [batch] group ids of the prompts that will be run, for per-group means; the
            reference PromptSet's ``groups`` give the reference's.
        eps: the factor of ua and sc (paper default 1e-5).
        seed: for resample's derangement.
    """
    if mode not in MODES:
        raise ComponentError(f"unknown ablation mode {mode!r}: use one of {', '.join(MODES)}")
    heads = check_heads(model, heads)
    if isinstance(positions, int):
        positions = torch.tensor([positions])  # broadcast over the batch in the hook
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    if mode in ("ua", "sc", "zero"):
        factor = 0.0 if mode == "zero" else float(eps)
        kind = "q" if mode == "ua" else "z"
        return [(hook_name(kind, l), _scale_hook(hs, positions, factor)) for l, hs in by_layer.items()]

    if reference is None:
        raise ComponentError(f"{mode} ablation needs a reference prompt set (e.g. the corrupted prompts)")
    ref_tokens = reference.corrupted_tokens if isinstance(reference, PromptSet) else reference
    ref_groups = reference.groups if isinstance(reference, PromptSet) else None
    names = {hook_name("z", l) for l in by_layer}
    with torch.no_grad():
        _, cache = model.run_with_cache(ref_tokens, names_filter=lambda n: n in names)
    hooks = []
    for layer, hs in by_layer.items():
        z = cache[hook_name("z", layer)]  # [n_ref, pos, head, d_head]
        if mode == "mean":
            value = _group_means(z, ref_groups, groups)
        else:
            g = torch.Generator().manual_seed(seed)
            n = z.shape[0]
            perm = (torch.arange(n) + torch.randint(1, n, (1,), generator=g)) % n if n > 1 else torch.zeros(1, dtype=torch.long)
            value = z[perm]
        hooks.append((hook_name("z", layer), _replace_hook(hs, positions, value)))
    return hooks


def mean_head_outputs(model, reference: PromptSet, groups: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Per layer, the mean head outputs z over the reference's corrupted prompts: [batch|1, pos, head, d].

    Per group (e.g. template) when both the reference and ``groups`` (of the prompts that will be
    run) are given, as Wang et al. 2022 average over p_ABC separately per template."""
    names = [hook_name("z", l) for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(reference.corrupted_tokens, names_filter=lambda n: n in names)
    return [_group_means(cache[n], reference.groups, groups) for n in names]


def knockout_hooks(
    model,
    keep: dict[tuple[int, int], torch.Tensor | None],
    means: list[torch.Tensor],
) -> list[tuple[str, callable]]:
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
    hooks = []
    for layer, mean in enumerate(means):
        kept = {h: p for (l, h), p in keep.items() if l == layer}
        hooks.append((hook_name("z", layer), _knockout_hook(mean, kept)))
    return hooks


def _knockout_hook(mean, kept):
    def hook(act, hook=None):
        batch, n_pos, n_heads = act.shape[:3]
        if mean.shape[1] < n_pos:
            raise ComponentError(f"reference prompts have {mean.shape[1]} positions, fewer than the run's {n_pos}")
        mask = torch.zeros(batch, n_pos, n_heads, dtype=torch.bool, device=act.device)
        for h, pos in kept.items():
            if pos is None:
                mask[:, :, h] = True
            else:
                mask[torch.arange(batch, device=act.device), pos.to(act.device)[:batch], h] = True
        value = mean[:, :n_pos].to(act.dtype).expand(batch, -1, -1, -1) if mean.shape[0] == 1 else mean[:batch, :n_pos].to(act.dtype)
        return torch.where(mask[..., None], act, value)

    return hook


def _group_means(z, ref_groups, run_groups):
    """Mean over reference examples: [1, pos, head, d], or [batch, pos, head, d] per group."""
    if ref_groups is None or run_groups is None:
        return z.mean(0, keepdim=True)
    means = {int(g): z[ref_groups == g].mean(0) for g in ref_groups.unique()}
    missing = {int(g) for g in run_groups} - means.keys()
    if missing:
        raise ComponentError(f"mean ablation: groups {sorted(missing)} have no reference examples")
    return torch.stack([means[int(g)] for g in run_groups])


def _positions_for(act, positions):
    if positions is None:
        return None
    return positions.expand(act.shape[0]) if positions.numel() == 1 else positions


def _scale_hook(heads, positions, factor):
    def hook(act, hook=None):
        act = act.clone()
        ix = select(act, heads, _positions_for(act, positions))
        act[ix] = act[ix] * factor
        return act

    return hook


def _replace_hook(heads, positions, value):
    def hook(act, hook=None):
        batch, n_pos = act.shape[:2]
        if value.shape[1] < n_pos:
            raise ComponentError(
                f"reference prompts have {value.shape[1]} positions, fewer than the run's {n_pos}"
            )
        v = value[:, :n_pos].to(act.dtype).expand(batch, -1, -1, -1) if value.shape[0] == 1 else value[:batch, :n_pos].to(act.dtype)
        if v.shape[0] != batch:
            raise ComponentError(f"resample ablation: reference has {value.shape[0]} prompts, run has {batch}")
        act = act.clone()
        ix = select(act, heads, _positions_for(act, positions))
        act[ix] = v[ix]
        return act

    return hook


@contextlib.contextmanager
def ablate(model, heads, mode: str = "zero", **kwargs):
    """Context manager: inside it, every forward of ``model`` runs with ``heads`` ablated.

    Keyword arguments are those of :func:`ablation_hooks`. Contexts nest (hooks add up).
    """
    with model.hooks(fwd_hooks=ablation_hooks(model, heads, mode, **kwargs)):
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
