"""Scatter of patched head outputs through W_O into the residual stream, for many variants.

For variant v (a head h_v of one layer) and residual row r (example x position):
    out[v, r] = resid[r] + dz[v, r] @ W_O[h_v]
where dz = z_patched - z_base of that head ([dh]) and W_O[h] is [dh, d]. This is the residual
stream right after the patched layer's attention, for every variant at once.
"""
import torch

from interp.kernels._triton import use_triton


def head_scatter_reference(resid, dz, W_O, heads):
    """PyTorch reference. resid [R, d]; dz [V, R, dh]; W_O [H, dh, d]; heads [V] -> [V, R, d] in
    resid's dtype (an fp32 residual stream under 16-bit weights: the product stays fp32 too)."""
    if resid.dtype != dz.dtype:
        return resid[None] + torch.bmm(dz.to(resid.dtype), W_O[heads].to(resid.dtype))
    return resid[None] + torch.bmm(dz, W_O[heads])


def head_scatter(resid, dz, W_O, heads):
    """Fused version on CUDA for bf16/fp16 (Triton); the reference elsewhere. Same result.

    fp32 stays on PyTorch: an exact (IEEE) fp32 product in Triton was 25-75x slower than cuBLAS on
    the H200 (BENCHMARKS.md), and TF32 would not be exact. So do head sizes the kernel cannot tile:
    ``tl.arange(0, DH)`` needs a power of two and ``tl.dot`` at least 16; past 256 the kernel is
    untested (the set prefix_attention takes). A model with dh=80 or 96 runs on PyTorch here.
    """
    interpreted = not resid.is_cuda  # the CPU interpreter is for testing the kernel in every dtype
    if (not use_triton(resid) or (dz.dtype == torch.float32 and not interpreted)
            or dz.shape[-1] not in (16, 32, 64, 128, 256)):
        return head_scatter_reference(resid, dz, W_O, heads)
    import triton

    from interp.kernels.head_scatter_triton import head_scatter_kernel

    V, R, dh = dz.shape
    d = resid.shape[-1]
    resid, dz, W_O = resid.contiguous(), dz.contiguous(), W_O.contiguous()
    out = torch.empty(V, R, d, device=resid.device, dtype=resid.dtype)
    BLOCK_R, BLOCK_D = (64, 128) if resid.is_cuda else (128, 256)
    grid = (V, triton.cdiv(R, BLOCK_R), triton.cdiv(d, BLOCK_D))
    head_scatter_kernel[grid](
        resid, dz, W_O, heads.contiguous(), out, R, d,
        DH=dh, BLOCK_R=BLOCK_R, BLOCK_D=BLOCK_D, IEEE=dz.dtype == torch.float32,
    )
    return out
