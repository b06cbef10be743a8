"""Checkpoints of long sweeps: the finished values, written atomically, so a rerun resumes.

A checkpoint is a safetensors file (no pickle) with the values, a done-mask and the sweep's key in
its metadata. The key is a hash of everything the values depend on (the component, the variants,
the prompts, the weights' fingerprint, the interventions, the engine): a file of another sweep, or
of the same sweep on edited weights, is refused instead of silently reused.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from interp.errors import InterpError


def check_path(path) -> Path:
    """The checkpoint path, refused up front (before any work) if it cannot be written there."""
    path = Path(path)
    if path.is_dir():
        raise InterpError(f"checkpoint {path} is a directory; give a file name")
    if not path.parent.is_dir():
        raise InterpError(f"checkpoint folder {path.parent} does not exist; create it first")
    if not os.access(path.parent, os.W_OK):
        raise InterpError(f"checkpoint folder {path.parent} is not writable")
    return path


def save(path, key: str, values: torch.Tensor, done: torch.Tensor) -> None:
    """Atomically write finished values with the sweep's key."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({"values": values.contiguous(), "done": done.to(torch.uint8)}, str(tmp), metadata={"key": key})
    os.replace(tmp, path)


def set_aside(path, failure: Exception) -> Path:
    """Move the checkpoint at ``path`` to ``<name>.failed`` because its sweep's values failed their
    self-check (``failure``, an ``interp.verify`` VerificationError, gets a note saying where the
    file went): the file stays there to look at, and the next run of the sweep starts over instead
    of resuming those values (with the check off, it would return them unchecked). Returns the
    new path."""
    path = Path(path)
    failed = path.with_name(path.name + ".failed")
    if path.exists():
        os.replace(path, failed)
    failure.add_note(f"the checkpoint was moved to {failed}: its values failed the check")
    return failed


def load(path, key: str, values: torch.Tensor, done: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, done) from the file at ``path`` if it exists and belongs to this sweep, else the
    ones given."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        return values, done
    try:
        with safe_open(str(path), "pt") as f:
            if f.metadata().get("key") != key:
                raise InterpError(f"checkpoint {path} belongs to a different sweep; delete it or pick another path")
            v, d = f.get_tensor("values"), f.get_tensor("done").bool()
    except InterpError:
        raise
    except Exception as exc:  # a torn or foreign file
        raise InterpError(f"checkpoint {path} is unreadable ({exc}); delete it to start over") from exc
    if v.shape != values.shape:
        raise InterpError(f"checkpoint {path} has {v.numel()} values, this sweep {values.numel()}")
    return v, d
