"""Whether a Triton kernel can run on a tensor: CUDA with triton installed, or the interpreter."""
import os

import torch


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(t: torch.Tensor) -> bool:
    """CUDA tensors use Triton; CPU tensors only under TRITON_INTERPRET=1 (tests)."""
    if not triton_available():
        return False
    return t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1"
