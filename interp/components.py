"""What a sweep can patch: the component table every engine shares.

A component is an activation of TransformerLens's compatibility-mode hook names (``hook_z``,
``hook_q``, ``hook_resid_pre`` ...). A *variant* is one patch of a sweep: the component at one
layer (and head, and position). The reference loop (``interp.reference``), the batched engine
(``interp.sweep``) and the self-checks (``interp.verify``) all read these tables, so they live here,
below all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

from interp.errors import ComponentError
from interp.hooks import check_heads


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

#: Single-head ablation sweeps (Zhou et al. 2025's Ships): the head's mode, at every position.
ABLATIONS = {"ablate_ua": "ua", "ablate_sc": "sc", "ablate_zero": "zero"}


def get_component(name: str) -> Component:
    if name not in COMPONENTS:
        raise ComponentError(f"unknown component {name!r}: use one of {', '.join(COMPONENTS)}")
    return COMPONENTS[name]


@dataclass(frozen=True)
class Variant:
    """One patch of a sweep: the component's layer, head (or None) and position (None = all)."""

    layer: int
    head: int | None
    pos: int | None


def cells_to_variants(axes: tuple[str, ...], cells) -> list[Variant]:
    """Result cells (tuples in ``axes`` order) as Variants."""
    out = []
    for cell in cells:
        where = dict(zip(axes, cell))
        out.append(Variant(where["layer"], where.get("head"), where.get("pos")))
    return out


# ------------------------------------------------------------------------------ path patching
RESID_FINAL = "resid_final"


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
