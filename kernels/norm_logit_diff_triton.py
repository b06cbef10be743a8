"""The Triton kernel of ``norm_logit_diff`` (one program per row)."""
import triton
import triton.language as tl


@triton.jit
def norm_logit_diff_kernel(X, W, D, IDX, BIAS, OUT, d, eps, stride_x, stride_d,
                           CENTER: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # row * stride_x passes 2^31 once the rows hold 2^31 elements
    offs = tl.arange(0, BLOCK)
    mask = offs < d
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if CENTER:
        x = tl.where(mask, x - tl.sum(x, axis=0) / d, 0.0)
    r = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / d + eps)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(IDX + row)
    direction = tl.load(D + b * stride_d + offs, mask=mask, other=0.0).to(tl.float32)
    total = tl.sum(x * w * direction, axis=0) * r + tl.load(BIAS + b)
    tl.store(OUT + row, total)
