"""Hook names and the small tensor edits every primitive is built from.

Hook names are TransformerLens's (compatibility mode): ``blocks.{layer}.attn.hook_z`` etc. Head
activations are [batch, pos, head, d] (q and z have all query heads; k and v only the key/value
heads of a GQA model); patterns are [batch, head, query_pos, key_pos].
"""
from __future__ import annotations

import torch

from interp.errors import ComponentError

HOOK_NAMES = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "resid_mid": "blocks.{}.hook_resid_mid",
    "resid_post": "blocks.{}.hook_resid_post",
    "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "q": "blocks.{}.attn.hook_q",
    "k": "blocks.{}.attn.hook_k",
    "v": "blocks.{}.attn.hook_v",
    "z": "blocks.{}.attn.hook_z",
    "pattern": "blocks.{}.attn.hook_pattern",
    "result": "blocks.{}.attn.hook_result",
}


def hook_name(kind: str, layer: int) -> str:
    """``hook_name("z", 3) == "blocks.3.attn.hook_z"``."""
    return HOOK_NAMES[kind].format(layer)


def n_heads_of(model, kind: str) -> int:
    """Heads along the head axis of ``kind``: key/value heads for k and v (GQA), else query heads."""
    if kind in ("k", "v"):
        return int(model.cfg.n_key_value_heads or model.cfg.n_heads)
    return int(model.cfg.n_heads)


def check_heads(model, heads, kind: str = "z") -> list[tuple[int, int]]:
    """Validate (layer, head) pairs against the model, with a clear error."""
    out = []
    n_layers, n_heads = model.cfg.n_layers, n_heads_of(model, kind)
    for item in heads:
        try:
            layer, head = (int(x) for x in item)
        except (TypeError, ValueError):
            raise ComponentError(f"a head is a (layer, head) pair, got {item!r}") from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ComponentError(
                f"head {layer}.{head} does not exist: the model has {n_layers} layers x {n_heads} heads"
            )
        out.append((layer, head))
    return out


def parse_heads(text: str) -> list[tuple[int, int]]:
    """"9.6,10.0" -> [(9, 6), (10, 0)]."""
    heads = []
    for item in filter(None, (s.strip() for s in text.split(","))):
        parts = item.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ComponentError(f"bad head {item!r}: write heads as LAYER.HEAD, e.g. 9.6,10.0")
        heads.append((int(parts[0]), int(parts[1])))
    if not heads:
        raise ComponentError("no heads given: write heads as LAYER.HEAD, e.g. 9.6,10.0")
    return heads


def resolve_positions(positions, prompts) -> torch.Tensor | None:
    """None (all positions), an int, a named position of ``prompts`` or a [batch] tensor -> [batch] or None."""
    if positions is None:
        return None
    if isinstance(positions, str):
        if positions not in prompts.positions:
            raise ComponentError(
                f"unknown named position {positions!r}: this prompt set has {', '.join(prompts.positions)}"
            )
        return prompts.positions[positions]
    if isinstance(positions, int):
        if not -prompts.n_pos <= positions < prompts.n_pos:
            raise ComponentError(f"position {positions} is outside the {prompts.n_pos}-token prompts")
        return torch.full((len(prompts),), positions % prompts.n_pos, dtype=torch.long)
    return torch.as_tensor(positions, dtype=torch.long)


def select(act: torch.Tensor, heads: list[int] | None, pos: torch.Tensor | None, head_dim: int = 2):
    """An index tuple into ``act`` [batch, pos, head, ...] (or [batch, head, q, k] with head_dim=1).

    ``pos`` is [batch] (one position per example) or None (all positions).
    """
    batch = act.shape[0]
    heads_ix = slice(None) if heads is None else torch.as_tensor(heads, device=act.device)
    if pos is None:
        return (slice(None), heads_ix) if head_dim == 1 else (slice(None), slice(None), heads_ix)
    rows = torch.arange(batch, device=act.device)
    pos = pos.to(act.device)[:batch]
    if heads is None:
        return (rows, slice(None), pos) if head_dim == 1 else (rows, pos)
    rows, heads_ix = rows[:, None], heads_ix[None, :]
    return (rows, heads_ix, pos[:, None]) if head_dim == 1 else (rows, pos[:, None], heads_ix)


def sweep_index(model, kind: str, n_pos: int, layers=None, heads=None, positions=None) -> dict[str, list[int]]:
    """The indices a sweep visits on each axis (default: all), checked against the model and prompts."""

    def checked(chosen, size: int, axis: str) -> list[int]:
        if chosen is None:
            return list(range(size))
        chosen = [int(c) for c in chosen]
        bad = [c for c in chosen if not 0 <= c < size]
        if bad:
            raise ComponentError(f"{axis} index {bad[0]} out of range (0..{size - 1})")
        return chosen

    return {"layer": checked(layers, model.cfg.n_layers, "layer"),
            "head": checked(heads, n_heads_of(model, kind), "head"),
            "pos": checked(positions, n_pos, "pos")}
