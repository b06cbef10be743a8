"""The Triton kernel of ``add_norm`` (one program per row)."""
import triton
import triton.language as tl


@triton.jit
def add_norm_kernel(X, DELTA, W, B, XNEW, H, d, eps, HAS_DELTA: tl.constexpr, HAS_W: tl.constexpr,
                    HAS_B: tl.constexpr, CENTER: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < d
    dtype = H.dtype.element_ty
    x = tl.load(X + row * d + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_DELTA:
        x = x + tl.load(DELTA + row * d + offs, mask=mask, other=0.0).to(tl.float32)
        x = x.to(XNEW.dtype.element_ty)  # the residual in its own dtype (fp32 under a 16-bit model)
        tl.store(XNEW + row * d + offs, x, mask=mask)
        x = x.to(tl.float32)
    if CENTER:
        x = tl.where(mask, x - tl.sum(x, axis=0) / d, 0.0)
    h = (x * (1.0 / tl.sqrt(tl.sum(x * x, axis=0) / d + eps))).to(dtype).to(tl.float32)
    if HAS_W:
        h = (h * tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)).to(dtype).to(tl.float32)
    if HAS_B:
        h = h + tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(H + row * d + offs, h.to(dtype), mask=mask)
