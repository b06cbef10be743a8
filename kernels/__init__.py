"""Triton kernels of the sweep engine, importable as ``interp.kernels``.

Each kernel has a plain PyTorch reference beside it (``*_reference``) and a dispatcher that picks
the Triton version on CUDA tensors (or on CPU tensors under ``TRITON_INTERPRET=1``, for tests) and
the reference otherwise. A kernel ships only if it beats its reference on the H200 (BENCHMARKS.md).
"""
from interp.kernels.norm_logit_diff import norm_logit_diff, norm_logit_diff_reference
from interp.kernels.head_scatter import head_scatter, head_scatter_reference
from interp.kernels.add_norm import add_norm, add_norm_reference
from interp.kernels.prefix_attention import prefix_attention, prefix_attention_reference
from interp.kernels.rope import rope, rope_reference
from interp.kernels.silu_mul import silu_mul, silu_mul_reference

__all__ = ["norm_logit_diff", "norm_logit_diff_reference", "head_scatter", "head_scatter_reference",
           "add_norm", "add_norm_reference", "prefix_attention", "prefix_attention_reference",
           "rope", "rope_reference", "silu_mul", "silu_mul_reference"]
