"""Interventions as data: edits of activations that every engine applies the same way.

An ablation, a knockout or a fixed patch is a list of ``Edit``s. One Edit changes one activation of
one layer at some heads and positions, and nowhere else:

    act[b, t, h] := factor * act[b, t, h]     (zero ablation: factor 0; scaling contribution, or
                                               undifferentiated attention on q: factor eps)
    act[b, t, h] := value[b, t, h]            (mean or resample ablation, a fixed patch)

The positions are all of them, one per example, or every position but that one (a knockout keeps
a head at its class position only). The reference loop runs an Edit as a TransformerLens hook; the
batched engines call the same ``Edit.apply`` on their own tensors, so both compute the same thing.

Hooks made here carry their Edit (``hook.interp_edit``). That is how the engines see what is
registered on a model: ``model_edits(model)`` reads the Edits back from the model's hooks, in the
order they run, whichever way they were added (``with interp.ablate(...)``, ``model.hooks(...)``,
``model.add_hook(...)``). Any other hook is *foreign*: an engine cannot know what it does, so
``engine="auto"`` takes the reference loop and ``engine="batched"`` refuses.

    >>> iv = fixed_patch("z", 9, clean_z, heads=[6])   # head 9.6 takes its clean output
    >>> with intervene(model, iv):
    ...     result = interp.patch(model, prompts, "head_out")   # either engine honours it
"""
from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass, replace
from typing import Callable

import torch

from interp.errors import ComponentError, EngineUnsupported
from interp.hooks import hook_name
from interp.module_walk import submodules

HEAD_KINDS = ("q", "k", "v", "z")  # [batch, pos, head, d_head] (k, v: key/value heads)
RESID_KINDS = ("resid_pre", "attn_out", "mlp_out")  # [batch, pos, d_model]


class ForeignHookError(EngineUnsupported):
    """A hook on the model that is not an interp Edit: only the reference loop can honour it."""


@dataclass(frozen=True, eq=False)
class Edit:
    """One activation edit: at ``heads`` and ``positions`` of layer ``layer``'s ``kind``,
    act := factor * act, or act := value where ``value`` is given.

    Attributes:
        kind: q, k, v, z (per head) or resid_pre, attn_out, mlp_out.
        layer: the block.
        heads: head indices along the activation's head axis (None: every head). Must be None
            for the residual kinds.
        positions: [batch] one position per example (a one-element tensor applies to every
            example), or None for every position.
        invert: edit every position *except* ``positions``.
        factor: the scale where no value is given.
        value: [batch or 1, pos, (head,) d] the replacement (the run's positions must fit in it).
    """

    kind: str
    layer: int
    heads: tuple[int, ...] | None = None
    positions: torch.Tensor | None = None
    invert: bool = False
    factor: float = 0.0
    value: torch.Tensor | None = None

    def __post_init__(self):
        if self.kind not in HEAD_KINDS + RESID_KINDS:
            raise ComponentError(f"cannot edit {self.kind!r}: use one of {', '.join(HEAD_KINDS + RESID_KINDS)}")
        if self.heads is not None and self.kind in RESID_KINDS:
            raise ComponentError(f"{self.kind} has no head axis: heads must be None")
        if self.invert and self.positions is None:
            raise ComponentError("invert=True needs positions (every position but these)")
        if self.value is not None and self.value.ndim != (4 if self.kind in HEAD_KINDS else 3):
            raise ComponentError(f"a {self.kind} value must be [batch, pos, {'head, ' if self.kind in HEAD_KINDS else ''}d], "
                                 f"got shape {tuple(self.value.shape)}")

    @property
    def hook_name(self) -> str:
        return hook_name(self.kind, self.layer)

    @property
    def per_head(self) -> bool:
        return self.kind in HEAD_KINDS

    @property
    def whole_heads(self) -> bool:
        """A scaling of whole heads at every position: the same at any sequence length."""
        return self.positions is None and self.value is None

    def apply(self, act: torch.Tensor, p0: int = 0, rows: torch.Tensor | None = None,
              at_positions: torch.Tensor | None = None) -> torch.Tensor:
        """The edited activation. act: [..., batch, S, head, d] (or [..., batch, S, d]) holding
        positions p0 .. p0 + S - 1 (or the positions ``at_positions`` [batch, S]) of the examples
        ``rows`` (default 0 .. batch - 1); leading dimensions (an engine's variants) are edited
        alike."""
        nd = 4 if self.per_head else 3
        B, S = act.shape[-nd], act.shape[-nd + 1]
        if self.whole_heads:  # act * factor on the chosen heads, * 1 (exactly act) elsewhere
            if not self.per_head:
                return act * self.factor
            f = torch.ones(act.shape[-2], 1, device=act.device, dtype=act.dtype)
            f[list(self.heads) if self.heads is not None else slice(None)] = self.factor
            return act * f
        rows = torch.arange(B, device=act.device) if rows is None else rows.to(act.device)
        where = (torch.arange(p0, p0 + S, device=act.device).expand(B, S) if at_positions is None
                 else at_positions.to(act.device))  # [B, S] absolute positions
        at = torch.ones(B, S, dtype=torch.bool, device=act.device)
        if self.positions is not None:
            pos = self.positions.to(act.device)
            pos = pos.expand(B) if pos.numel() == 1 else pos[rows]
            at = where == pos[:, None]
            at = ~at if self.invert else at
        if self.per_head:
            on = torch.zeros(act.shape[-2], dtype=torch.bool, device=act.device)
            on[list(self.heads) if self.heads is not None else slice(None)] = True
            mask = (at[:, :, None] & on)[..., None]  # [B, S, H, 1]
        else:
            mask = at[..., None]  # [B, S, 1]
        if self.value is None:
            return torch.where(mask, act * self.factor, act)
        v = self.value
        if v.shape[1] <= int(where.max()):
            raise ComponentError(f"{self.hook_name}: the edit's values cover {v.shape[1]} positions, "
                                 f"the run has {int(where.max()) + 1}")
        if v.shape[0] != 1 and int(rows.max()) >= v.shape[0]:
            raise ComponentError(f"{self.hook_name}: the edit's values hold {v.shape[0]} examples, "
                                 f"the run has {int(rows.max()) + 1}")
        v = v.to(device=act.device, dtype=act.dtype)
        if at_positions is None:
            v = v[:, p0:p0 + S]
            v = v if v.shape[0] == 1 else v[rows]
        else:
            v = v[(rows if v.shape[0] != 1 else torch.zeros_like(rows))[:, None], where]  # [B, S, ...]
        return torch.where(mask, v, act)

    def to(self, device) -> "Edit":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, positions=move(self.positions), value=move(self.value))

    def digest(self) -> str:
        """A hash of everything the edit does (for checkpoint keys)."""
        h = hashlib.sha256(repr((self.kind, self.layer, self.heads, self.invert, float(self.factor))).encode())
        for t in (self.positions, self.value):
            h.update(b"-" if t is None else t.detach().float().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def describe(self) -> str:
        heads = "all heads" if self.heads is None else "heads " + ",".join(map(str, self.heads))
        what = "set" if self.value is not None else f"x{self.factor:g}"
        where = "all positions" if self.positions is None else ("all but " if self.invert else "") + "one position each"
        return f"{self.hook_name} {what} ({heads if self.per_head else 'whole'}, {where})"


def edit_hook(edit: Edit) -> Callable:
    """The TransformerLens hook that applies ``edit`` (tagged with it, so engines can read it)."""

    def hook(act, hook=None):
        return edit.apply(act)

    hook.interp_edit = edit
    return hook


@dataclass(eq=False)
class Intervention:
    """A named list of edits: one ablation, one knockout, one fixed patch."""

    name: str
    edits: tuple[Edit, ...]

    def hooks(self) -> list[tuple[str, Callable]]:
        """(hook name, hook) pairs for ``model.hooks`` / ``run_with_hooks``."""
        return [(e.hook_name, edit_hook(e)) for e in self.edits]

    def to(self, device) -> "Intervention":
        return Intervention(self.name, tuple(e.to(device) for e in self.edits))


def fixed_patch(kind: str, layer: int, value: torch.Tensor, heads=None, positions=None) -> Intervention:
    """Set an activation to fixed values: ``kind`` of ``layer`` := ``value`` at ``heads`` (None:
    all) and ``positions`` ([batch] or an int; None: all). value: [batch or 1, pos, (head,) d]."""
    if isinstance(positions, int):
        positions = torch.tensor([positions])
    edit = Edit(kind, int(layer), None if heads is None else tuple(int(h) for h in heads), positions,
                value=value.detach())
    return Intervention(f"fixed {kind} patch at layer {layer}", (edit,))


@contextlib.contextmanager
def intervene(model, *interventions: Intervention):
    """Context manager: every forward of ``model`` inside it (the bridge's, and the batched
    engines') runs with the interventions applied. Contexts nest; the inner one acts after the
    outer one at a shared activation, as hooks do."""
    hooks = [h for iv in interventions for h in iv.hooks()]
    with model.hooks(fwd_hooks=hooks):
        yield model


# ----------------------------------------------------------------------------- reading a model
class EditSet:
    """The edits to apply at each (kind, layer), in the order they run."""

    def __init__(self, edits=()):
        self.edits: list[Edit] = list(edits)
        self._at: dict[tuple[str, int], list[Edit]] = {}
        for e in self.edits:
            self._at.setdefault((e.kind, e.layer), []).append(e)

    def __bool__(self) -> bool:
        return bool(self.edits)

    def __add__(self, other: "EditSet") -> "EditSet":
        return EditSet(self.edits + other.edits)

    def at(self, kind: str, layer: int) -> list[Edit]:
        return self._at.get((kind, layer), [])

    def apply(self, kind: str, layer: int, act: torch.Tensor, p0: int = 0, rows=None,
              at_positions=None) -> torch.Tensor:
        for e in self.at(kind, layer):
            act = e.apply(act, p0, rows, at_positions)
        return act

    def kinds(self) -> set[str]:
        return {e.kind for e in self.edits}

    def to(self, device) -> "EditSet":
        return EditSet(e.to(device) for e in self.edits)

    def digest(self) -> str:
        return hashlib.sha256("".join(e.digest() for e in self.edits).encode()).hexdigest()

    @classmethod
    def of(cls, interventions) -> "EditSet":
        return cls(e for iv in interventions or () for e in iv.edits)


def _describe_hook(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)[:60]


def _hook_point_kinds(model) -> dict[int, tuple[str, int]]:
    """id(hook point) -> (kind, layer) for the activations an Edit can address."""
    hd = model.hook_dict
    out = {}
    for layer in range(model.cfg.n_layers):
        for kind in HEAD_KINDS + RESID_KINDS:
            hp = hd.get(hook_name(kind, layer))
            if hp is not None:
                out[id(hp)] = (kind, layer)
    return out


def model_edits(model) -> EditSet:
    """The Edits registered on ``model`` as hooks, in the order they run.

    Raises ForeignHookError naming the first forward hook that is not an Edit at its own
    activation (a raw TransformerLens hook, a PyTorch hook on any module, a global module hook).
    Backward hooks are ignored: they do not change a forward pass."""
    g = torch.nn.modules.module
    if g._global_forward_hooks or g._global_forward_pre_hooks:
        raise ForeignHookError("a global PyTorch forward hook is registered (torch.nn.modules.module."
                               "register_module_forward_hook)")
    where = _hook_point_kinds(model)
    edits, seen = [], set()
    for hp in model.hook_points():
        if id(hp) in seen:
            continue
        seen.add(id(hp))
        for handle in hp.fwd_hooks:
            edit = getattr(handle.user_hook, "interp_edit", None)
            if edit is None:
                raise ForeignHookError(f"hook {_describe_hook(handle.user_hook)} on {hp.name}")
            if where.get(id(hp)) != (edit.kind, edit.layer):
                raise ForeignHookError(f"an edit of {edit.hook_name} is registered on {hp.name}")
            edits.append(edit)
    for module in submodules(model):  # no names: this walk runs at every sweep call
        if not (module._forward_hooks or module._forward_pre_hooks):
            continue
        for fn in list(module._forward_hooks.values()) + list(module._forward_pre_hooks.values()):
            if not _from_library(fn):
                name = next(n for n, m in model.named_modules() if m is module)
                raise ForeignHookError(f"PyTorch forward hook {_describe_hook(fn)} on module "
                                       f"{name or type(module).__name__}")
    return EditSet(edits)


#: Libraries whose own forward hooks only read activations or move them between devices: the
#: bridge's hook points and capture wiring (a HookPoint's wrapper of a user hook is checked through
#: its user hook above), Hugging Face's output capturing, Accelerate's device placement.
LIBRARY_HOOKS = ("transformer_lens.", "transformers.", "accelerate.")


def _from_library(fn) -> bool:
    fn = getattr(fn, "func", fn)  # functools.partial
    return str(getattr(fn, "__module__", "") or "").startswith(LIBRARY_HOOKS)
