"""Rotary position embedding (RoPE, rotate-half convention), fused: one pass over q or k.

For a query or key vector x [dh] at position p, with a, b its two halves:
    rope(x) = x * cos[p] + rotate_half(x) * sin[p],   rotate_half(x) = [-b, a]
(Su et al. 2021, "RoFormer"; the Llama / Qwen2 / Mistral convention of Hugging Face's
``apply_rotary_pos_emb``). In eager PyTorch that is five kernels (a negation, a concatenation,
two products, a sum) over a strided view of the fused q/k/v projection; the kernel reads x once and
writes the result once. It rounds as the reference does, in the same order (x * cos, the rotated
half times sin, their sum, each to x's dtype): equal bit for bit in the Triton interpreter, within one
unit in the last place on an H200 (bf16 and fp16; BENCHMARKS.md, "Fused RoPE and SiLU x up").
"""
import torch

from interp.kernels._triton import use_triton


def rope_reference(x, cos, sin):
    """PyTorch reference. x [..., S, heads, dh]; cos, sin [S, dh], or any shape that broadcasts
    as ``cos[:, None]`` against x (e.g. [R, 1, dh] for one position per row of a decoder step)."""
    a, b = x.chunk(2, -1)
    return x * cos[:, None] + torch.cat([-b, a], -1) * sin[:, None]


def rope(x, cos, sin):
    """Fused version on CUDA (Triton) for tables of one row per position of x's S axis (cos, sin
    [S, dh], S = x.shape[-3]); the reference for any other table shape (broadcast), when the dtypes
    differ, the head size is odd, or x's last dimension is strided. Same arguments and result."""
    dh = x.shape[-1]
    if (not use_triton(x) or x.ndim < 3 or x.numel() == 0 or dh % 2 or x.stride(-1) != 1
            or cos.shape != (x.shape[-3], dh) or sin.shape != cos.shape
            or x.dtype != cos.dtype or x.dtype != sin.dtype):
        return rope_reference(x, cos, sin)
    import triton

    from interp.kernels.rope_triton import rope_kernel

    S, H = x.shape[-3], x.shape[-2]
    try:
        rows = x.view(-1, H, dh)  # [R, heads, dh]: row r is position r % S (a view of q/k/v)
    except RuntimeError:
        rows = x.contiguous().view(-1, H, dh)
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rope_kernel[(rows.shape[0],)](rows, cos.contiguous(), sin.contiguous(), out, S, H, rows.stride(0),
                                  rows.stride(1), HALF=dh // 2, BLOCK_H=triton.next_power_of_2(H),
                                  BLOCK_D=triton.next_power_of_2(dh // 2), num_warps=4 if H * dh <= 4096 else 8)
    return out
