"""Every submodule of a model, fast: what the per-call checks of a kept engine walk.

A repeated sweep re-reads the model at every call (its parameters' values, the hooks on it), and
``torch.nn.Module.named_modules`` builds a dotted name for each of the ~800 modules of a GPT-2
bridge: about 1 ms per walk, several walks per call, more than the GPU work of a small sweep
replayed as a CUDA graph. The walk here keeps no names (``named_modules`` is used only to name a
module in an error message).
"""
from __future__ import annotations

import torch


def submodules(root: torch.nn.Module) -> list[torch.nn.Module]:
    """``root`` and every module below it, each once, parents before children (breadth first)."""
    out, seen, i = [root], {id(root)}, 0
    while i < len(out):
        for child in out[i]._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                out.append(child)
        i += 1
    return out


def tensors(root: torch.nn.Module) -> list[torch.Tensor]:
    """Every parameter and floating-point buffer under ``root``, each once (shared ones too)."""
    out, seen = [], set()
    for m in submodules(root):
        for t in m._parameters.values():
            if t is not None and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
        for t in m._buffers.values():
            if t is not None and t.is_floating_point() and id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out
