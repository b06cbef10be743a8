"""The gated MLP's activation, fused: SiLU of the gate times the up projection.

    post = silu(gate) * up,   silu(g) = g / (1 + exp(-g))
(Shazeer 2020, "GLU Variants Improve Transformer": SwiGLU, the MLP of Llama, Qwen2, Mistral). The
engine computes gate and up as one product, h @ [W_gate | W_in], so this kernel reads that product
once and writes the activation once; in eager PyTorch it is two kernels and three trips through
memory over the MLP's widest tensors. It rounds as the reference does (silu to the dtype, then the
product), so the two agree to the last bit up to the last bits of fp32's exp.
"""
import torch
import torch.nn.functional as F

from interp.kernels._triton import use_triton

BLOCK = 1024


def silu_mul_reference(gate_up):
    """PyTorch reference. gate_up [..., 2n] (gate, then up) -> silu(gate) * up [..., n]."""
    gate, up = gate_up.chunk(2, -1)
    return F.silu(gate) * up


def silu_mul(gate_up):
    """Fused version on CUDA (Triton); the reference elsewhere. Same argument and result."""
    n2 = gate_up.shape[-1]
    if not use_triton(gate_up) or n2 % 2 or gate_up.numel() == 0:
        return silu_mul_reference(gate_up)
    import triton

    from interp.kernels.silu_mul_triton import silu_mul_kernel

    n = n2 // 2
    rows = gate_up.reshape(-1, n2)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()
    out = torch.empty(*gate_up.shape[:-1], n, dtype=gate_up.dtype, device=gate_up.device)
    silu_mul_kernel[(rows.shape[0], triton.cdiv(n, BLOCK))](rows, out, n, rows.stride(0), BLOCK=BLOCK, num_warps=4)
    return out
