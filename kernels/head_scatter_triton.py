"""The Triton kernel of ``head_scatter``: one [BLOCK_R, DH] x [DH, BLOCK_D] product per tile.

Offsets are int64: out is [V, R, d], and a large sweep passes 2^31 elements (a Llama-2-7B sweep by
position, V=1024 variants x R=2048 rows x d=4096, is 2^33), where int32 products would wrap."""
import triton
import triton.language as tl


@triton.jit
def head_scatter_kernel(RESID, DZ, WO, HEADS, OUT, R, d,
                        DH: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, IEEE: tl.constexpr):
    v = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    e = tl.arange(0, DH)
    h = tl.load(HEADS + v)
    rmask = rows < R
    cmask = cols < d
    dz = tl.load(DZ + (v * R + rows[:, None]) * DH + e[None, :], mask=rmask[:, None], other=0.0)
    w = tl.load(WO + (h * DH + e[:, None]) * d + cols[None, :], mask=cmask[None, :], other=0.0)
    if IEEE:
        acc = tl.dot(dz, w, input_precision="ieee")
    else:
        acc = tl.dot(dz, w)
    base = tl.load(RESID + rows[:, None] * d + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
    out = base.to(tl.float32) + acc
    tl.store(OUT + (v * R + rows[:, None]) * d + cols[None, :], out.to(OUT.dtype.element_ty),
             mask=rmask[:, None] & cmask[None, :])
