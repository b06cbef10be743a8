"""Residual add + pre-norm, fused: the step between two sublayers of a pre-norm transformer.

For each row r of the residual stream:
    x_new[r] = x[r] + delta[r]                        (delta: the sublayer's output; optional)
    h[r]     = norm(x_new[r]) * w + b                  (w, b optional)
with norm(x) = x / sqrt(mean(x^2) + eps) (RMSNorm) or (x - mean x) / sqrt(var x + eps) (LayerNorm).
In eager PyTorch this is ~10 elementwise kernels and as many trips through memory; fused, it reads
x (and delta) once and writes x_new and h once. Statistics are in fp32; x_new is rounded to x's
dtype, the normalised value and the products with w and b to ``out_dtype`` (default x's dtype: a
16-bit model's engine keeps its residual stream in fp32 and feeds its products 16-bit h), in the
same order as the reference, so the two differ only by the order of the fp32 sums.

``out=(x_out, h_out)`` writes the results into given tensors instead of new ones; x_out may be x
itself (each row is read before it is written): the engine updates its residual stream in place.
"""
import torch

from interp.kernels._triton import use_triton


def add_norm_reference(x, delta, w, b, eps: float, center: bool, out_dtype=None):
    """PyTorch reference. x [..., d]; delta [..., d] or None; w, b [d] or None -> (x_new [x's
    dtype], h [out_dtype, default x's])."""
    out_dtype = out_dtype or x.dtype
    if delta is not None:
        x = (x.float() + delta.float()).to(x.dtype) if delta.dtype != x.dtype else x + delta
    x32 = x.float()
    if center:
        x32 = x32 - x32.mean(-1, keepdim=True)
    h = (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)).to(out_dtype)
    if w is not None:
        h = h * w.to(out_dtype)
    if b is not None:
        h = h + b.to(out_dtype)
    return x, h


def add_norm(x, delta, w, b, eps: float, center: bool, out_dtype=None, out=None):
    """Fused version on CUDA (Triton); the reference elsewhere. Same arguments and result.
    ``out``: (x_out, h_out), contiguous tensors of x's shape and dtypes to write into (returned)."""
    out_dtype = out_dtype or x.dtype
    if out is not None:
        x_out, h_out = out
        if (x_out.shape != x.shape or h_out.shape != x.shape or x_out.dtype != x.dtype or h_out.dtype != out_dtype
                or not x_out.is_contiguous() or not h_out.is_contiguous()):
            raise ValueError(f"add_norm: out must be contiguous {tuple(x.shape)} tensors of {x.dtype} and "
                             f"{out_dtype}, got {tuple(x_out.shape)} {x_out.dtype}, {tuple(h_out.shape)} {h_out.dtype}")
    if not use_triton(x) or x.shape[-1] > 16384:
        x_new, h = add_norm_reference(x, delta, w, b, eps, center, out_dtype)
        if out is None:
            return x_new, h
        return x_out.copy_(x_new), h_out.copy_(h)
    import triton

    from interp.kernels.add_norm_triton import add_norm_kernel

    shape, d = x.shape, x.shape[-1]
    x2 = x.reshape(-1, d).contiguous()
    d2 = None if delta is None else delta.reshape(-1, d).contiguous()
    if out is not None:
        x_new, h = x_out.view(-1, d), h_out.view(-1, d)
        if delta is None and x_new.data_ptr() != x2.data_ptr():
            x_new.copy_(x2)
    else:
        x_new = torch.empty_like(x2) if delta is not None else x2
        h = torch.empty_like(x2, dtype=out_dtype)
    R = x2.shape[0]
    if R:
        add_norm_kernel[(R,)](
            x2, x2 if d2 is None else d2, h if w is None else w.to(out_dtype).contiguous(),
            h if b is None else b.to(out_dtype).contiguous(),
            x_new, h, d, float(eps), HAS_DELTA=d2 is not None, HAS_W=w is not None, HAS_B=b is not None,
            CENTER=center, BLOCK=triton.next_power_of_2(d), num_warps=4 if d <= 2048 else 8,
        )
    if out is not None:
        return out
    return (x if delta is None else x_new.reshape(shape)), h.reshape(shape)
