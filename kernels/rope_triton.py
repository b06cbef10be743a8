"""The Triton kernel of ``rope`` (one program per row: every head of one position)."""
import triton
import triton.language as tl


@triton.jit
def rope_kernel(X, COS, SIN, OUT, S, H, stride_row, stride_head,
                HALF: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # row * stride_row passes 2^31 on long sweeps
    pos = row % S
    h = tl.arange(0, BLOCK_H)[:, None]
    j = tl.arange(0, BLOCK_D)[None, :]
    mask = (h < H) & (j < HALF)
    src = X + row * stride_row + h * stride_head + j
    a = tl.load(src, mask=mask, other=0.0)
    dt = a.dtype
    a = a.to(tl.float32)
    b = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    table = pos * (2 * HALF) + j
    c1 = tl.load(COS + table, mask=j < HALF, other=0.0).to(tl.float32)
    c2 = tl.load(COS + table + HALF, mask=j < HALF, other=0.0).to(tl.float32)
    s1 = tl.load(SIN + table, mask=j < HALF, other=0.0).to(tl.float32)
    s2 = tl.load(SIN + table + HALF, mask=j < HALF, other=0.0).to(tl.float32)
    # the reference's roundings, in its order: x * cos, rotate_half(x) * sin, then their sum
    lo = (a * c1).to(dt).to(tl.float32) + (-b * s1).to(dt).to(tl.float32)
    hi = (b * c2).to(dt).to(tl.float32) + (a * s2).to(dt).to(tl.float32)
    dst = OUT + row * (H * 2 * HALF) + h * (2 * HALF) + j
    tl.store(dst, lo.to(dt), mask=mask)
    tl.store(dst + HALF, hi.to(dt), mask=mask)
