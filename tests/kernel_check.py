"""Every kernel against its PyTorch reference: one line per case, `ok` or `BAD`, with the path the
dispatcher took (triton or reference), the max abs error and the tolerance it is held to.

    TRITON_INTERPRET=1 python tests/kernel_check.py cpu    # the Triton interpreter (tests/test_kernels.py)
    python tests/kernel_check.py cuda                      # on a GPU (tests/test_gpu_kernels.py)
    python tests/kernel_check.py cuda --dtypes bfloat16 --sizes large
    python tests/kernel_check.py cpu --list                # the case names, nothing run

Sizes: `small` fits the interpreter (~8 ms per program per loop step) and covers every head size the
models use (16, 32, 64 for SmolLM2 / Qwen2.5-0.5B / GPT-2, 128 for Llama-2-7B, 80 for the fallback);
`large` is the engine's shapes, for the GPU; `int64` puts offsets past 2^31 elements (on the GPU in
real memory, in the interpreter in address space that is reserved but never touched). Exit status 1
on any BAD line.
"""
import argparse
import dataclasses
import math
import mmap
import sys
import zlib
from contextlib import contextmanager
from typing import Callable

import torch

from interp.kernels import (add_norm, add_norm_reference, head_scatter, head_scatter_reference, norm_logit_diff,
                           norm_logit_diff_reference, prefix_attention, prefix_attention_reference, rope,
                           rope_reference, silu_mul, silu_mul_reference)
from interp.kernels.prefix_attention import PACKED_ROWS

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SIZES = ("small", "large", "int64")
DEFAULTS = {"cpu": (("float32", "float16", "bfloat16"), ("small", "int64")),
            "cuda": (("float32", "bfloat16", "float16"), ("small", "large", "int64"))}

# The Triton interpreter (3.9) runs bf16 wrongly on CPU, and says nothing: numpy has no bf16, so it
# keeps bf16 as uint16, and (1) tl.dot multiplies the raw uint16 bit patterns (head_scatter in bf16
# was off by 9.2e10, prefix_attention by 8.0e8) and (2) a cast from fp32 to bf16 truncates instead of
# rounding to nearest even (add_norm's residual x + delta in bf16 was 0.031 away from PyTorch's).
# numpy's float16 does both right, so the interpreter checks the low-precision path in fp16, and in
# bf16 only the kernel that just widens bf16 to fp32 (norm_logit_diff); the GPU runs all in bf16.
INTERPRETER_BF16 = {"norm_logit_diff"}

# Tolerances. Kernel and reference compute in fp32 from the same inputs and round the same values to
# the model's dtype; they differ only in the order of fp32 sums and in roundings that those last-bit
# differences push one unit in the last place (ulp) apart. An ulp of x is at most eps * |x|, eps =
# torch.finfo(dtype).eps (2^-23 fp32, 2^-10 fp16, 2^-7 bf16). So a case's tolerance is
#     ulps * eps(dtype) * rounded  +  ACC * eps(fp32) * sqrt(K) * summed
# with `rounded` the size of the values rounded to dtype, `ulps` the rounding steps a difference can
# pass through (each kernel's section says which), K the length of a fp32 sum and `summed` the size
# (rms) of its value, ~sqrt(K) * the size of its terms when their signs are random. ACC: summed in
# sequence, each of the K partial sums is rounded by up to eps/2 of itself; as random errors they add
# in quadrature to eps / (2 sqrt 6) * sqrt(K) * summed = 0.2 eps sqrt(K) summed per side (pairwise
# and tree orders do better). sqrt(2) for two sides, 5 standard deviations for the largest of 10^6
# outputs, 2 for the sums in the tail beyond their rms: 0.2 * 1.41 * 5 * 2 = 2.8, and ACC = 8 leaves
# a margin of ~3 for orders this does not model. A wrong kernel (a shifted mask, a wrong row or head,
# fp32 products through TF32, low-precision sums or softmax weights) is off by far more.
ACC = 8
EPS32 = torch.finfo(torch.float32).eps


def tolerance(dtype, rounded, ulps, K=0, summed=0.0):
    """ulps * eps(dtype) * rounded + ACC * eps(fp32) * sqrt(K) * summed (see above)."""
    return ulps * torch.finfo(dtype).eps * float(rounded) + ACC * EPS32 * math.sqrt(K) * float(summed)


def rms(t):
    return t.float().pow(2).mean().sqrt().item()


def amax(t):
    return t.float().abs().max().item()


def max_abs_err(got, want):
    """max |got - want|, a slice of 2^26 elements at a time (the int64 cases are 2^31 elements); NaN
    anywhere gives NaN."""
    assert got.shape == want.shape and got.dtype == want.dtype, (got.shape, got.dtype, want.shape, want.dtype)
    g, w = got.reshape(-1), want.reshape(-1)
    err = 0.0
    for i in range(0, g.numel(), 1 << 26):
        e = (g[i:i + (1 << 26)].float() - w[i:i + (1 << 26)].float()).abs().max().item()
        err = e if e != e or err != err else max(err, e)
    return err


@dataclasses.dataclass
class Case:
    """One line of the report. ``run()`` returns {output name: (got, want, tol)}; ``triton`` says
    whether ``kernel``'s Triton kernel must be launched (False: the dispatcher must fall back to the
    reference); ``via``, which one, where the dispatcher has several. The interpreter's int64 cases
    launch the kernel themselves, on a few programs of a grid too large to run whole."""
    name: str
    kernel: str
    triton: bool
    run: Callable[[], dict]
    via: str | None = None


class Launches:
    """Counts launches (``kernel[grid](...)``) of a dispatcher's Triton kernels (one or more in its
    module), to tell which path it took. The dispatchers import their kernels when called, so they
    pick up the counting wrappers."""

    def __init__(self, module, *names):
        self.n, self.last = 0, None  # launches, and the name of the last kernel launched
        for name in names:
            setattr(module, name, _Counted(getattr(module, name), name, self))


class _Counted:
    def __init__(self, kernel, name, launches):
        self.kernel, self.name, self.launches = kernel, name, launches

    def __getitem__(self, grid):
        self.launches.n += 1
        self.launches.last = self.name
        return self.kernel[grid]


def reserved(numel, dtype):
    """A CPU tensor of ``numel`` elements over anonymous memory mapped with MAP_NORESERVE: the address
    space is there, but only the pages written (or read) take memory, so a kernel can be pointed at
    offsets past 2^31 elements in a few MB. Linux."""
    nbytes = numel * torch.empty(0, dtype=dtype).element_size()
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | getattr(mmap, "MAP_NORESERVE", 0x4000)
    return torch.frombuffer(mmap.mmap(-1, nbytes, flags=flags), dtype=dtype)


@contextmanager
def int32_overflow_raises():
    """Turn on Triton's overflow sanitizer in the interpreter (its debug mode): an int32 add, sub or
    mul that overflows raises instead of wrapping, so an int32 offset past 2^31 fails loudly before
    the load or store it feeds, rather than reading or writing somewhere else."""
    from triton.runtime import interpreter
    builder = interpreter.interpreter_builder
    old = builder.options
    builder.options = dataclasses.replace(old, debug=True, sanitize_overflow=True)
    try:
        yield
    finally:
        builder.options = old


def _seed(name):
    torch.manual_seed(zlib.crc32(name.encode()))


def _on(device, dtype, kernel):
    """Whether the kernel runs (rather than being skipped) in this dtype on this device."""
    return device != "cpu" or dtype != torch.bfloat16 or kernel in INTERPRETER_BF16


def _low_precision_triton(device, dtype):
    """head_scatter and prefix_attention take Triton in bf16/fp16 on CUDA and in every dtype in the
    interpreter; fp32 on CUDA stays on cuBLAS / SDPA."""
    return device == "cpu" or dtype != torch.float32


# --- norm_logit_diff ------------------------------------------------------------------------------
# Everything after the (exact) widening of x, w and D is fp32 on both sides, whatever the input dtype,
# so the tolerance is fp32's. Two sums over d (K = d) in other orders: the dot product of x_hat * w
# with D (summed = rms(out)) and mean(x^2), whose relative error, halved by the rsqrt, scales the whole
# output (summed = max|out| / 2); ulps=2 for the product with rsqrt and the bias added after.

def _norm_logit_diff_tol(want, d):
    return tolerance(torch.float32, amax(want), 2, d, rms(want) + amax(want) / 2)


def _norm_logit_diff(device, dtype, R, d, B, center):
    def run():
        x = torch.randn(R, d, device=device, dtype=dtype) * 3
        w = torch.rand(d, device=device, dtype=dtype) + 0.5
        D = torch.randn(B, d, device=device, dtype=dtype)
        idx = torch.randint(0, B, (R,), device=device)
        bias = torch.randn(B, device=device)
        args = (x, w, D, idx, bias, 1e-5, center)
        want = norm_logit_diff_reference(*args)
        return {"out": (norm_logit_diff(*args), want, _norm_logit_diff_tol(want, d))}
    return run


def _norm_logit_diff_int64(dtype, d=576):
    """Interpreter: 3 rows 2^30 elements apart, so row 2 starts at 2^31 (row * stride_x in int32 would
    overflow); launched directly, since the dispatcher makes x contiguous."""
    def run():
        from interp.kernels.norm_logit_diff_triton import norm_logit_diff_kernel
        stride = 1 << 30
        x = reserved(2 * stride + d, dtype).as_strided((3, d), (stride, 1))
        x.copy_(torch.randn(3, d, dtype=dtype) * 3)
        w, D = torch.rand(d, dtype=dtype) + 0.5, torch.randn(2, d, dtype=dtype)
        idx, bias = torch.tensor([0, 1, 1]), torch.randn(2)
        out = torch.empty(3)
        with int32_overflow_raises():
            norm_logit_diff_kernel[(3,)](x, w, D, idx, bias, out, d, 1e-5, stride, D.stride(0),
                                         CENTER=False, BLOCK=1024)
        want = norm_logit_diff_reference(x, w, D, idx, bias, 1e-5, False)
        return {"out": (out, want, _norm_logit_diff_tol(want, d))}
    return run


# --- head_scatter ---------------------------------------------------------------------------------
# out = resid + dz @ W_O[h]: the product is a fp32 sum over dh (K = dh, summed = sqrt(dh) * rms(dz) *
# rms(W_O), the size of a product of independent random inputs); the reference rounds the product to
# dtype and then the sum, the kernel only the sum: ulps=2 of |out|.

def _head_scatter_inputs(device, dtype, V, R, dh, d, H):
    resid = torch.randn(R, d, device=device, dtype=dtype)
    dz = torch.randn(V, R, dh, device=device, dtype=dtype)
    W_O = torch.randn(H, dh, d, device=device, dtype=dtype) / dh ** 0.5
    heads = torch.randint(0, H, (V,), device=device)
    return resid, dz, W_O, heads


def _head_scatter(device, dtype, V, R, dh, d, H, exact=False):
    def run():
        args = _head_scatter_inputs(device, dtype, V, R, dh, d, H)
        want = head_scatter_reference(*args)
        tol = 0.0 if exact else tolerance(dtype, amax(want), 2, dh, dh ** 0.5 * rms(args[1]) * rms(args[2]))
        return {"out": (head_scatter(*args), want, tol)}
    return run


def _head_scatter_fp32_resid(device, dtype, V, R, dh, d, H):
    """The engine under 16-bit weights: an fp32 residual stream, 16-bit dz and W_O. Both sides sum
    the product in fp32 and round once, to fp32."""
    def run():
        resid, dz, W_O, heads = _head_scatter_inputs(device, dtype, V, R, dh, d, H)
        args = (resid.float(), dz, W_O, heads)
        want = head_scatter_reference(*args)
        tol = tolerance(torch.float32, amax(want), 2, dh, dh ** 0.5 * rms(dz) * rms(W_O))
        return {"out": (head_scatter(*args), want, tol)}
    return run


def _head_scatter_int64(dtype, R=1 << 19, d=4096, dh=16, BLOCK_R=128, BLOCK_D=256):
    """Interpreter: variant 1 of out [2, R, d] starts at R * d = 2^31 elements. Launched directly on the
    first (row, column) tile of both variants (the whole grid is 2 x 4096 x 16 programs); out and dz
    are reserved address space, of which only those tiles are touched."""
    def run():
        from interp.kernels.head_scatter_triton import head_scatter_kernel
        V = 2
        resid = torch.randn(BLOCK_R, d, dtype=dtype)  # only rows < BLOCK_R are read
        dz = reserved(V * R * dh, dtype).view(V, R, dh)
        dz[:, :BLOCK_R] = torch.randn(V, BLOCK_R, dh, dtype=dtype)
        W_O = torch.randn(3, dh, d, dtype=dtype) / dh ** 0.5
        heads = torch.tensor([2, 1])
        out = reserved(V * R * d, dtype).view(V, R, d)
        with int32_overflow_raises():
            head_scatter_kernel[(V, 1, 1)](resid, dz, W_O, heads, out, R, d, DH=dh, BLOCK_R=BLOCK_R,
                                           BLOCK_D=BLOCK_D, IEEE=dtype == torch.float32)
        got = out[:, :BLOCK_R, :BLOCK_D]
        want = head_scatter_reference(resid[:, :BLOCK_D], dz[:, :BLOCK_R], W_O[:, :, :BLOCK_D], heads)
        tol = tolerance(dtype, amax(want), 2, dh, dh ** 0.5 * rms(dz[:, :BLOCK_R]) * rms(W_O))
        return {"out": (got, want, tol)}
    return run


# --- add_norm -------------------------------------------------------------------------------------
# The residual x + delta is one rounding of the same fp32 sum on both sides: equal, bit for bit. The
# normed value mirrors the reference's three roundings (x_hat, x_hat * w, + b), each of which can land
# one ulp apart from fp32 statistics that differ in their last bits: ulps=3 of |h|. Those statistics
# are sums over d (K = d) of squares in another order, a relative error that the rsqrt halves and that
# scales h (summed = max|h| / 2); it shows in fp32 only.

def _add_norm(device, dtype, shape, center, has_delta, has_w, has_b, fp32_residual=False, in_place=False):
    """``fp32_residual``: the engine under 16-bit weights, x (and x_new) fp32, delta and h 16-bit.
    ``in_place``: as the engine calls it, out=(x, h) with x the input itself (rows of a larger
    buffer whose other rows must stay as they were)."""
    def run():
        d = shape[-1]
        x = torch.randn(*shape, device=device, dtype=torch.float32 if fp32_residual else dtype) * 3
        delta = torch.randn(*shape, device=device, dtype=dtype) if has_delta else None
        w = torch.rand(d, device=device, dtype=dtype) + 0.5 if has_w else None
        b = torch.randn(d, device=device, dtype=dtype) if has_b else None
        want = add_norm_reference(x, delta, w, b, 1e-5, center, dtype)
        if in_place:
            buf = torch.cat([x, x[:1] + 1])  # one more row after x, not to be touched
            h_buf = torch.full_like(buf, 7.0, dtype=dtype)
            x_in, h_out = buf[: len(x)], h_buf[: len(x)]
            got = add_norm(x_in, delta, w, b, 1e-5, center, dtype, out=(x_in, h_out))
            assert got[0].data_ptr() == buf.data_ptr() and got[1].data_ptr() == h_buf.data_ptr()
            assert torch.equal(buf[len(x):], x[:1] + 1) and bool((h_buf[len(x):] == 7).all()), "wrote past out"
        else:
            got = add_norm(x, delta, w, b, 1e-5, center, dtype)
        assert got[0].dtype == x.dtype and got[1].dtype == dtype, (got[0].dtype, got[1].dtype)
        h_max = amax(want[1])
        return {"residual": (got[0], want[0], 0.0),
                "normed": (got[1], want[1], tolerance(dtype, h_max, 3, d, h_max / 2))}
    return run


# --- prefix_attention -----------------------------------------------------------------------------
# z = softmax(q . k * scale) @ v. The scores are fp32 sums over dh (K = dh, of size scale * sqrt(dh) *
# rms(q) * rms(k)); an error e in the scores moves z by at most e * 2 max|v| (dz/ds_j = p_j (v_j - z)),
# hence summed = scale * sqrt(dh) * rms(q) * rms(k) * 2 max|v|. Both sides round the softmax weights
# to dtype for the product with v (a relative eps/2 each: at most eps/2 * max|v| in z), and z itself,
# and the online softmax rescales by fp32 factors: ulps=3 of max|v|.

def _prefix_attention_inputs(device, dtype, N, B, S, H, Hkv, dh, P):
    # q, k, v as views of one fused projection, as the engine makes them (strided, not contiguous)
    qkv = torch.randn(N, B, S, (H + 2 * Hkv) * dh, device=device, dtype=dtype)
    q, k, v = (t.unflatten(-1, (-1, dh)) for t in qkv.split([H * dh, Hkv * dh, Hkv * dh], -1))
    k_pre = torch.randn(B, P, Hkv, dh, device=device, dtype=dtype)
    v_pre = torch.randn(B, P, Hkv, dh, device=device, dtype=dtype)
    return q, k, v, k_pre, v_pre, dh ** -0.5


def _prefix_attention_tol(dtype, q, k, v, v_pre, scale, exact=False):
    if exact:
        return 0.0
    vmax = max(amax(v), amax(v_pre) if v_pre.numel() else 0.0)
    dh = q.shape[-1]
    return tolerance(dtype, vmax, 3, dh, scale * dh ** 0.5 * rms(q[:8]) * rms(k[:8]) * 2 * vmax)


def _prefix_attention(device, dtype, N, B, S, H, Hkv, dh, P, exact=False):
    def run():
        args = _prefix_attention_inputs(device, dtype, N, B, S, H, Hkv, dh, P)
        want = prefix_attention_reference(*args)
        tol = _prefix_attention_tol(dtype, args[0], args[1], args[2], args[4], args[5], exact)
        return {"z": (prefix_attention(*args), want, tol)}
    return run


ONE_HEAD, PACKED = "prefix_attention_kernel", "packed_prefix_attention_kernel"


def _prefix_via(N, S, H, Hkv):
    """The kernel the dispatcher must take: packed when at least 2 variants' rows (S x H/Hkv each)
    fit in PACKED_ROWS."""
    return PACKED if min(N, PACKED_ROWS // (S * (H // Hkv))) >= 2 else ONE_HEAD


def _prefix_attention_past_n(device, dtype, N=7, B=2, S=4, H=9, Hkv=3, dh=64, P=21):
    """q, k, v as views of the first N variants of a buffer whose next ones are NaN: the packed
    programs' last variants are padding, and must read nothing past N."""
    def run():
        W = (H + 2 * Hkv) * dh
        big = torch.randn(N + 8, B, S, W, device=device, dtype=dtype)
        big[N:] = float("nan")
        q, k, v = (t.unflatten(-1, (-1, dh)) for t in big[:N].split([H * dh, Hkv * dh, Hkv * dh], -1))
        k_pre, v_pre = torch.randn(2, B, P, Hkv, dh, device=device, dtype=dtype)
        args = (q, k, v, k_pre, v_pre, dh ** -0.5)
        return {"z": (prefix_attention(*args), prefix_attention_reference(*args),
                      _prefix_attention_tol(dtype, q, k, v, v_pre, dh ** -0.5))}
    return run


def _prefix_attention_inf(device, dtype, N=7, B=2, S=4, H=9, Hkv=3, dh=64, P=21):
    """An inf in one variant's suffix v (variant 3, example 1, position 2, key/value head 1, dim 5):
    one product serves all the variants of a packed program, and 0 x inf is NaN, so the kernel must
    keep it out of the other variants' rows (each variant is its own forward in the reference). The
    rows that see it (positions >= 2, heads 3-5, dim 5) must not be finite."""
    def run():
        q, k, v, k_pre, v_pre, scale = _prefix_attention_inputs(device, dtype, N, B, S, H, Hkv, dh, P)
        tol = _prefix_attention_tol(dtype, q, k, v, v_pre, scale)
        v[3, 1, 2, 1, 5] = float("inf")
        got, want = prefix_attention(q, k, v, k_pre, v_pre, scale), prefix_attention_reference(q, k, v, k_pre, v_pre, scale)
        seen = torch.isfinite(got[3, 1, 2:, 3:6, 5].float())
        others = torch.ones(N, B, dtype=torch.bool)
        others[3, 1] = False
        return {"z of the other variants": (got[others], want[others], tol),
                "finite where the inf is seen": (seen.float(), torch.zeros_like(seen, dtype=torch.float), 0.0)}
    return run


def _prefix_attention_first_programs(device, dtype, N=12, B=2, S=4, H=9, Hkv=3, dh=64, P=21):
    """The packed kernel launched directly on its first programs only (the first VARS = 5 variants of
    every example) into a NaN output: their rows are right, and nothing past them is written (a
    padding row stored without its mask would land in the next program's variant)."""
    def run():
        from interp.kernels import prefix_attention_triton
        q, k, v, k_pre, v_pre, scale = _prefix_attention_inputs(device, dtype, N, B, S, H, Hkv, dh, P)
        group = H // Hkv
        VARS = PACKED_ROWS // (S * group)
        qr, kr, vr = (t.flatten(0, 1) for t in (q, k, v))
        z = torch.full((N * B, S, H, dh), float("nan"), device=device, dtype=dtype)
        strides = [st for t in (qr, kr, vr, k_pre, v_pre) for st in t.stride()[:3]]
        prefix_attention_triton.packed_prefix_attention_kernel[(B, Hkv, 1)](
            qr, kr, vr, k_pre, v_pre, z, N, B, S, P, group, VARS, scale, *strides,
            DH=dh, BLOCK_M=PACKED_ROWS, BLOCK_N=64, IEEE=dtype == torch.float32, num_warps=4)
        z = z.view(N, B, S, H, dh)
        untouched = torch.isnan(z[VARS:].float())
        return {"z of the first programs": (z[:VARS], prefix_attention_reference(q, k, v, k_pre, v_pre, scale)[:VARS],
                                            _prefix_attention_tol(dtype, q, k, v, v_pre, scale)),
                "NaN past them": (untouched.float(), torch.ones_like(untouched, dtype=torch.float), 0.0)}
    return run


def _prefix_attention_int64_prefix(dtype, N=2, B=3, S=1, H=2, Hkv=1, dh=16, P=4):
    """Interpreter: the cached prefix's examples 2^30 elements apart, so example 2 starts at 2^31
    (example * stride in int32 would overflow), through the packed kernel (both variants in one program)."""
    def run():
        q, k, v, _, _, scale = _prefix_attention_inputs("cpu", dtype, N, B, S, H, Hkv, dh, P)
        stride = 1 << 30
        pre = []
        for _ in range(2):
            t = reserved((B - 1) * stride + P * Hkv * dh, dtype).as_strided((B, P, Hkv, dh), (stride, Hkv * dh, dh, 1))
            t.copy_(torch.randn(B, P, Hkv, dh, dtype=dtype))
            pre.append(t)
        args = (q, k, v, *pre, scale)
        with int32_overflow_raises():
            got = prefix_attention(*args)
        want = prefix_attention_reference(*args)
        return {"z": (got, want, _prefix_attention_tol(dtype, q, k, v, pre[1], scale))}
    return run


def _prefix_attention_int64(dtype, N=3, S=20, H=2, Hkv=1, dh=16, P=5):
    """Interpreter: the engine's fused q/k/v, one variant every 2^30 elements, so variant 2 starts at
    2^31 (variant * stride in int32 would overflow). Through the dispatcher: S=20, one head per
    program; S=2, the three variants in one packed program."""
    def run():
        W, stride = (H + 2 * Hkv) * dh, 1 << 30
        qkv = reserved((N - 1) * stride + S * W, dtype).as_strided((N, 1, S, W), (stride, S * W, W, 1))
        qkv.copy_(torch.randn(N, 1, S, W, dtype=dtype))
        q, k, v = (t.unflatten(-1, (-1, dh)) for t in qkv.split([H * dh, Hkv * dh, Hkv * dh], -1))
        k_pre, v_pre = torch.randn(1, P, Hkv, dh, dtype=dtype), torch.randn(1, P, Hkv, dh, dtype=dtype)
        args = (q, k, v, k_pre, v_pre, dh ** -0.5)
        with int32_overflow_raises():
            got = prefix_attention(*args)
        want = prefix_attention_reference(*args)
        return {"z": (got, want, _prefix_attention_tol(dtype, q, k, v, v_pre, dh ** -0.5))}
    return run


# --- rope -----------------------------------------------------------------------------------------
# Both sides round x * cos, rotate_half(x) * sin and their sum to the dtype, from products that are
# exact in fp32 for 16-bit inputs: equal bit for bit in the interpreter, one ulp apart at most on an
# H200 (the GPU compiler's order of the last steps). In fp32 the kernel may fuse a product and the
# sum into one multiply-add (one rounding fewer): ulps=2 of |out|.

def _rope_inputs(device, dtype, N, B, S, H, Hkv, dh, p0):
    """q and k as views of the engine's fused projection, and tables sliced at position p0."""
    qkv = torch.randn(N, B, S, (H + 2 * Hkv) * dh, device=device, dtype=dtype)
    q, k, _ = (t.unflatten(-1, (-1, dh)) for t in qkv.split([H * dh, Hkv * dh, Hkv * dh], -1))
    angles = torch.randn(p0 + S, dh, device=device) * 3
    return q, k, angles.cos().to(dtype)[p0:], angles.sin().to(dtype)[p0:]


def _rope(device, dtype, N, B, S, H, Hkv, dh, p0=0):
    def run():
        q, k, cos, sin = _rope_inputs(device, dtype, N, B, S, H, Hkv, dh, p0)
        out = {}
        for name, x in (("q", q), ("k", k)):
            want = rope_reference(x, cos, sin)
            out[name] = (rope(x, cos, sin), want, tolerance(dtype, amax(want), 2))
        return out
    return run


def _rope_mixed_dtypes(device, dtype):
    """fp32 tables with 16-bit (or fp64 with fp32) x: PyTorch promotes; the dispatcher must fall back."""
    def run():
        q, _, cos, sin = _rope_inputs(device, dtype, 1, 2, 5, 4, 2, 16, 0)
        wide = torch.float64 if dtype == torch.float32 else torch.float32
        want = rope_reference(q, cos.to(wide), sin.to(wide))
        return {"q": (rope(q, cos.to(wide), sin.to(wide)), want, 0.0)}
    return run


def _rope_broadcast_tables(device, dtype, layout):
    """The callers' other table shapes, which broadcast (the dispatcher must take the reference,
    exactly): "decoder", one position per row (generate: x [R, 1, H, dh], tables [R, 1, dh]);
    "no S axis" (the multiple-choice end chunk: x [n, B, H, dh], tables [1, dh])."""
    def run():
        angles = torch.randn(5, 16, device=device) * 3
        if layout == "decoder":
            x, angles = torch.randn(5, 1, 4, 16, device=device, dtype=dtype), angles[:, None]
        else:
            x, angles = torch.randn(3, 5, 4, 16, device=device, dtype=dtype), angles[:1]
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        want = rope_reference(x, cos, sin)
        return {"x": (rope(x, cos, sin), want, 0.0)}
    return run


def _rope_int64(dtype, H=2, dh=16):
    """Interpreter: 3 rows (positions) 2^30 elements apart, so row 2 starts at 2^31."""
    def run():
        stride = 1 << 30
        x = reserved(2 * stride + H * dh, dtype).as_strided((3, H, dh), (stride, dh, 1))
        x.copy_(torch.randn(3, H, dh, dtype=dtype))
        angles = torch.randn(3, dh) * 3
        cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
        with int32_overflow_raises():
            got = rope(x, cos, sin)
        want = rope_reference(x, cos, sin)
        return {"x": (got, want, tolerance(dtype, amax(want), 2))}
    return run


# --- silu_mul -------------------------------------------------------------------------------------
# Both sides round silu(gate) to the dtype, then its product with up. silu goes through exp and a
# division, whose fp32 values may differ in their last bits between the two. A fast exp computes
# 2^(g log2 e), and the rounding of g log2 e is a relative error of up to ~|g| ulps in exp(g), which
# silu passes on where exp dominates (g << 0); the division adds ~2 ulps. So each output is compared
# relative to its reference value (|out| below 1e-3 counts as 1e-3) and to 1 + |gate|: 8 ulps of the
# dtype (in 16 bits the rounded silu can move one ulp, and the product with it). A wrong gate/up
# split, row or column is off by far more; so is an error on small outputs, which a bound on max|out|
# would let through.

def _relative(got, want, scale, floor=1e-3):
    """got and want divided by max(|want|, floor) * scale, element by element (a relative bound)."""
    denom = want.float().abs().clamp_min(floor) * scale
    return got.float() / denom, want.float() / denom


def _silu_mul_compared(got, want, gate_up, dtype):
    gate = gate_up[..., :gate_up.shape[-1] // 2].float().abs() + 1
    return {"out / (|ref| (1+|gate|))": (*_relative(got, want, gate), 8 * torch.finfo(dtype).eps)}


def _silu_mul(device, dtype, shape):
    def run():
        gate_up = torch.randn(*shape, device=device, dtype=dtype) * 4
        want = silu_mul_reference(gate_up)
        return _silu_mul_compared(silu_mul(gate_up), want, gate_up, dtype)
    return run


def _silu_mul_int64(dtype, n=1100):
    """Interpreter: 3 rows 2^30 elements apart, so row 2 starts at 2^31."""
    def run():
        stride = 1 << 30
        gate_up = reserved(2 * stride + 2 * n, dtype).as_strided((3, 2 * n), (stride, 1))
        gate_up.copy_(torch.randn(3, 2 * n, dtype=dtype) * 4)
        with int32_overflow_raises():
            got = silu_mul(gate_up)
        want = silu_mul_reference(gate_up)
        return _silu_mul_compared(got, want, gate_up, dtype)
    return run


def cases(device, dtypes, sizes):
    """The cases for this device, dtypes (torch dtypes) and sizes, in order. Builds no tensor."""
    out = []
    for dtype in dtypes:
        dn = str(dtype).removeprefix("torch.")
        low = _low_precision_triton(device, dtype)

        def add(kernel, desc, triton, run, via=None):
            if _on(device, dtype, kernel):
                out.append(Case(f"{kernel} {desc} {dn}", kernel, triton, run, via))

        if "small" in sizes:
            for d, center in [(576, False), (768, True)]:
                add("norm_logit_diff", f"R=37 d={d} center={center}", True,
                    _norm_logit_diff(device, dtype, 37, d, 5, center))
            for V, R, dh, d, H in [(3, 40, 64, 576, 9), (2, 130, 128, 300, 4)]:
                add("head_scatter", f"V={V} R={R} dh={dh} d={d}", low, _head_scatter(device, dtype, V, R, dh, d, H))
            # dh=80 is no power of two: the dispatcher must fall back to the reference (exactly)
            add("head_scatter", "V=2 R=9 dh=80 d=160 (fallback)", False,
                _head_scatter(device, dtype, 2, 9, 80, 160, 3, exact=True))
            for d, center, has_delta, wb in [(576, False, True, (True, False)), (768, True, True, (True, True)),
                                              (300, True, False, (False, False))]:
                add("add_norm", f"[3,13,{d}] center={center} delta={has_delta} w,b={wb}", True,
                    _add_norm(device, dtype, (3, 13, d), center, has_delta, *wb))
            add("add_norm", "[3,13,768] center=True in place", True,
                _add_norm(device, dtype, (3, 13, 768), True, True, True, True, in_place=True))
            # (N, B, S, H, Hkv, dh, P): one head per program, S > 64 spans query blocks (BLOCK_M <= 64);
            # Hkv < H is GQA; a short suffix (S x H/Hkv <= 32, N >= 2) takes the packed kernel, N not a
            # multiple of its packing: 3 at 10 per program (S=5), 7 at 5 (S=4), 30 at 21 (S=1), 14 at
            # 10 (S=2, no prefix), 25 at 21 (S=3, one head per group)
            for N, B, S, H, Hkv, dh, P in [(1, 2, 5, 4, 2, 16, 0), (3, 2, 5, 4, 2, 16, 0), (2, 3, 7, 4, 4, 32, 6),
                                           (1, 2, 70, 2, 1, 16, 67), (1, 2, 70, 4, 2, 64, 37),
                                           (1, 1, 80, 4, 1, 128, 50), (7, 2, 4, 9, 3, 64, 21),
                                           (30, 2, 1, 9, 3, 64, 63), (14, 3, 2, 6, 2, 32, 0), (25, 2, 3, 4, 4, 32, 5),
                                           (3, 2, 25, 9, 3, 64, 9)]:
                add("prefix_attention", f"N={N} B={B} S={S} H={H}/{Hkv} dh={dh} P={P}", low,
                    _prefix_attention(device, dtype, N, B, S, H, Hkv, dh, P), _prefix_via(N, S, H, Hkv))
            add("prefix_attention", "packed, NaN in the variants past N", low, _prefix_attention_past_n(device, dtype),
                PACKED)
            add("prefix_attention", "packed, inf in one variant's v, the others untouched", low,
                _prefix_attention_inf(device, dtype), PACKED)
            if low:
                add("prefix_attention", "packed, the first programs only, rows past them unwritten", True,
                    _prefix_attention_first_programs(device, dtype), PACKED)
            add("prefix_attention", "N=1 B=2 S=6 H=2/1 dh=80 P=3 (fallback)", False,
                _prefix_attention(device, dtype, 1, 2, 6, 2, 1, 80, 3, exact=True))
            # (N, B, S, H, Hkv, dh, p0): SmolLM2, Qwen2.5-0.5B, Llama-2-7B heads; dh=80 no power of two
            for N, B, S, H, Hkv, dh, p0 in [(2, 3, 7, 4, 2, 16, 0), (1, 2, 5, 9, 3, 64, 3), (1, 1, 4, 14, 2, 64, 0),
                                            (1, 1, 3, 32, 32, 128, 9), (1, 2, 3, 3, 1, 80, 1)]:
                add("rope", f"N={N} B={B} S={S} H={H}/{Hkv} dh={dh} p0={p0}", True,
                    _rope(device, dtype, N, B, S, H, Hkv, dh, p0))
            add("rope", "tables in a wider dtype (fallback)", False, _rope_mixed_dtypes(device, dtype))
            for layout in ("decoder", "no S axis"):
                add("rope", f"{layout} tables (fallback)", False, _rope_broadcast_tables(device, dtype, layout))
            for shape in [(3, 13, 2 * 1536), (2, 5, 2 * 1100), (37, 2 * 4864)]:
                add("silu_mul", f"{list(shape)}", True, _silu_mul(device, dtype, shape))
            if dtype != torch.float32:  # the engine's fp32 residual stream under 16-bit weights
                add("add_norm", "[3,13,576] fp32 residual", True,
                    _add_norm(device, dtype, (3, 13, 576), False, True, True, False, fp32_residual=True))
                add("add_norm", "[3,13,576] fp32 residual, in place", True,
                    _add_norm(device, dtype, (3, 13, 576), False, True, True, False, fp32_residual=True,
                              in_place=True))
                add("head_scatter", "V=3 R=40 dh=64 d=576 fp32 residual", low,
                    _head_scatter_fp32_resid(device, dtype, 3, 40, 64, 576, 9))
        if "large" in sizes:  # the engine's shapes (interp bench's, BENCHMARKS.md)
            for R, d, center in [(4096, 576, False), (8192, 4096, False), (4096, 768, True)]:
                add("norm_logit_diff", f"R={R} d={d} center={center}", True,
                    _norm_logit_diff(device, dtype, R, d, 64, center))
            for V, R, dh, d, H in [(144, 256, 64, 768, 12), (64, 1024, 128, 4096, 32), (135, 512, 64, 576, 9)]:
                add("head_scatter", f"V={V} R={R} dh={dh} d={d}", low, _head_scatter(device, dtype, V, R, dh, d, H))
            add("head_scatter", "V=64 R=1024 dh=80 d=2560 (fallback)", False,
                _head_scatter(device, dtype, 64, 1024, 80, 2560, 32, exact=True))
            for shape, center in [((64, 512, 4096), False), ((144, 256, 768), True), ((135, 512, 576), False)]:
                add("add_norm", f"{list(shape)} center={center}", True,
                    _add_norm(device, dtype, shape, center, True, True, center))
            # SmolLM2 (9/3, 64), Qwen2.5-0.5B (14/2, 64), GPT-2 (12/12, 64), Llama-2-7B (32/32, 128)
            for N, B, S, H, Hkv, dh, P in [(64, 8, 40, 9, 3, 64, 60), (32, 8, 200, 14, 2, 64, 300),
                                           (64, 4, 100, 12, 12, 64, 0), (16, 4, 300, 32, 32, 128, 700),
                                           (135, 16, 4, 9, 3, 64, 60), (72, 16, 1, 12, 12, 64, 63)]:
                add("prefix_attention", f"N={N} B={B} S={S} H={H}/{Hkv} dh={dh} P={P}", low,
                    _prefix_attention(device, dtype, N, B, S, H, Hkv, dh, P), _prefix_via(N, S, H, Hkv))
            for N, B, S, H, Hkv, dh in [(64, 16, 64, 9, 3, 64), (16, 16, 128, 32, 32, 128)]:
                add("rope", f"N={N} B={B} S={S} H={H}/{Hkv} dh={dh}", True, _rope(device, dtype, N, B, S, H, Hkv, dh))
            for shape in [(135 * 16 * 64, 2 * 1536), (16 * 16 * 128, 2 * 11008)]:
                add("silu_mul", f"{list(shape)}", True, _silu_mul(device, dtype, shape))
        if "int64" in sizes:
            if device == "cpu":
                add("rope", "rows 2^30 apart (row 2 at 2^31)", True, _rope_int64(dtype))
                add("silu_mul", "rows 2^30 apart (row 2 at 2^31)", True, _silu_mul_int64(dtype))
                add("norm_logit_diff", "rows 2^30 apart (row 2 at 2^31), direct launch", True,
                    _norm_logit_diff_int64(dtype))
                add("head_scatter", "out [2, 2^19, 4096] (variant 1 at 2^31), direct launch", True,
                    _head_scatter_int64(dtype))
                add("prefix_attention", "variants 2^30 apart (variant 2 at 2^31)", True,
                    _prefix_attention_int64(dtype), ONE_HEAD)
                add("prefix_attention", "variants 2^30 apart (variant 2 at 2^31), packed", True,
                    _prefix_attention_int64(dtype, S=2), PACKED)
                add("prefix_attention", "prefix examples 2^30 apart (example 2 at 2^31), packed", True,
                    _prefix_attention_int64_prefix(dtype), PACKED)
            elif low:  # real memory: 2^31-element tensors (4 GB in bf16; ~50 GB at the peak, of the
                # H200's 141). The index arithmetic is the same in every dtype; fp32 would double that.
                add("norm_logit_diff", "R=2^19+1 d=4096 (x past 2^31)", True,
                    _norm_logit_diff(device, dtype, (1 << 19) + 1, 4096, 64, False))
                add("head_scatter", "V=65 R=8192 dh=128 d=4096 (out past 2^31)", True,
                    _head_scatter(device, dtype, 65, 8192, 128, 4096, 32))
                add("add_norm", "[2^19+1, 4096] (x past 2^31)", True,
                    _add_norm(device, dtype, ((1 << 19) + 1, 4096), False, True, True, False))
                add("prefix_attention", "N=520 B=8 S=128 H=32/32 dh=128 P=64 (q past 2^31)", True,
                    _prefix_attention(device, dtype, 520, 8, 128, 32, 32, 128, 64), ONE_HEAD)
                add("prefix_attention", "N=2 B=4097 S=1 H=32/32 dh=128 P=128 (prefix past 2^31), packed", True,
                    _prefix_attention(device, dtype, 2, 4097, 1, 32, 32, 128, 128), PACKED)
                add("rope", "N=1 B=4097 S=128 H=32/32 dh=128 (q and out past 2^31)", True,
                    _rope(device, dtype, 1, 4097, 128, 32, 32, 128))
                add("silu_mul", "[2^19+1, 2*4096] (out past 2^31)", True,
                    _silu_mul(device, dtype, ((1 << 19) + 1, 2 * 4096)))
    names = [c.name for c in out]
    assert len(set(names)) == len(names) and not any(": " in n for n in names), names
    return out


def default_cases(device):
    """The cases ``kernel_check.py DEVICE`` runs with no --dtypes or --sizes."""
    dtypes, sizes = DEFAULTS[device]
    return cases(device, [DTYPES[s] for s in dtypes], sizes)


def outcomes(stdout):
    """{case name: 'ok' or 'BAD'} from the lines a run printed."""
    lines = stdout.splitlines()
    return {line[4:].split(": ")[0]: line[:3].strip() for line in lines if line[:4] in ("ok  ", "BAD ")}


def run_case(case, launches):
    """Runs one case and prints its line; True if ok."""
    _seed(case.name)
    before = launches[case.kernel].n
    try:
        outputs = case.run()
    except Exception as exc:  # a crash (an int32 overflow in the interpreter, say) is a failure
        print(f"BAD {case.name}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        return False
    took = "triton" if launches[case.kernel].n > before else "reference"
    ok = took == ("triton" if case.triton else "reference")
    if case.via is not None and took == "triton":
        took = launches[case.kernel].last
        ok &= took == case.via
    parts = []
    for label, (got, want, tol) in outputs.items():
        err = max_abs_err(got, want)
        ok &= err <= tol  # NaN fails
        parts.append(f"{label} max abs err {err:.2e} (tol {tol:.2e})")
    print(f"{'ok ' if ok else 'BAD'} {case.name}: [{took}] " + ", ".join(parts), flush=True)
    return ok


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("device", nargs="?", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtypes", help=f"comma-separated, of {','.join(DTYPES)} (default: cpu "
                   f"{','.join(DEFAULTS['cpu'][0])}; cuda {','.join(DEFAULTS['cuda'][0])})")
    p.add_argument("--sizes", help=f"comma-separated, of {','.join(SIZES)} (default: cpu "
                   f"{','.join(DEFAULTS['cpu'][1])}; cuda {','.join(DEFAULTS['cuda'][1])})")
    p.add_argument("--list", action="store_true", help="print the case names and stop")
    a = p.parse_args(argv)
    dtypes = [DTYPES[s] for s in (a.dtypes.split(",") if a.dtypes else DEFAULTS[a.device][0])]
    sizes = a.sizes.split(",") if a.sizes else DEFAULTS[a.device][1]
    assert all(s in SIZES for s in sizes), sizes
    todo = cases(a.device, dtypes, sizes)
    if a.list:
        print("\n".join(c.name for c in todo))
        return 0

    from interp.kernels._triton import use_triton
    assert use_triton(torch.zeros(1, device=a.device)), "Triton path not active: set TRITON_INTERPRET=1 on CPU"
    from interp.kernels import (add_norm_triton, head_scatter_triton, norm_logit_diff_triton,
                                prefix_attention_triton, rope_triton, silu_mul_triton)
    launches = {"norm_logit_diff": Launches(norm_logit_diff_triton, "norm_logit_diff_kernel"),
                "head_scatter": Launches(head_scatter_triton, "head_scatter_kernel"),
                "add_norm": Launches(add_norm_triton, "add_norm_kernel"),
                "prefix_attention": Launches(prefix_attention_triton, "prefix_attention_kernel",
                                                     "packed_prefix_attention_kernel"),
                "rope": Launches(rope_triton, "rope_kernel"),
                "silu_mul": Launches(silu_mul_triton, "silu_mul_kernel")}
    failures = 0
    for case in todo:
        failures += not run_case(case, launches)
        if a.device == "cuda":
            torch.cuda.empty_cache()
    print(f"{len(todo) - failures} of {len(todo)} cases ok")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
