"""The Triton kernel of ``silu_mul`` (one program per row and block of columns)."""
import triton
import triton.language as tl


@triton.jit
def silu_mul_kernel(GU, OUT, n, stride_row, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # row * stride_row passes 2^31 on long sweeps
    col = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = col < n
    g = tl.load(GU + row * stride_row + col, mask=mask, other=0.0)
    u = tl.load(GU + row * stride_row + n + col, mask=mask, other=0.0)
    dt = g.dtype
    g32 = g.to(tl.float32)
    s = (g32 / (1.0 + tl.exp(-g32))).to(dt)  # silu, rounded to the dtype as F.silu's output is
    tl.store(OUT + row * n + col, (s.to(tl.float32) * u.to(tl.float32)).to(dt), mask=mask)
