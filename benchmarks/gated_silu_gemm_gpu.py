"""Tried and not kept: a gated MLP's gate/up product with SiLU x up in its epilogue (Triton).

    post = silu(h @ W_gate) * (h @ W_in),   W_gate_in = [W_gate | W_in]  [d, 2 d_mlp]
The engine computes ``silu_mul(h @ W_gate_in)``: cuBLAS writes gate and up [rows, 2 d_mlp], the
``silu_mul`` kernel reads them back. This kernel computes a tile of gate and the same tile of up in two
fp32 accumulators and writes only the activation. It is timed here against cuBLAS + ``silu_mul`` on
the engine's shapes (bf16, medians of 20 calls, several tile configurations) and checked against it
(max abs diff). On the H200 its product was slower than cuBLAS's by more than the memory trip it
saves, except on Qwen2.5-0.5B's shape (4%), so it is not in ``interp.kernels`` (BENCHMARKS.md).

    python3 benchmarks/gated_silu_gemm_gpu.py
"""
import statistics

import torch
import triton
import triton.language as tl

from interp.kernels import silu_mul


@triton.jit
def gated_silu_kernel(H, W, OUT, M, n, K, stride_hm, stride_wk, BM: tl.constexpr, BN: tl.constexpr,
                      BK: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    tiles_m, tiles_n = tl.cdiv(M, BM), tl.cdiv(n, BN)
    group = pid // (GROUP_M * tiles_n)  # GROUP_M row tiles walk the columns together (W stays in L2)
    first_m = group * GROUP_M
    size_m = tl.minimum(tiles_m - first_m, GROUP_M)
    pid_m = first_m + (pid % (GROUP_M * tiles_n)) % size_m
    pid_n = (pid % (GROUP_M * tiles_n)) // size_m
    rm = pid_m.to(tl.int64) * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    a_ptr = H + rm[:, None] * stride_hm + rk[None, :]
    w_ptr = W + rk[:, None] * stride_wk + rn[None, :]
    acc_g = tl.zeros((BM, BN), dtype=tl.float32)
    acc_u = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, tl.cdiv(K, BK)):
        k_ok = rk < K - k * BK
        a = tl.load(a_ptr, mask=(rm[:, None] < M) & k_ok[None, :], other=0.0)
        w_mask = k_ok[:, None] & (rn[None, :] < n)
        acc_g = tl.dot(a, tl.load(w_ptr, mask=w_mask, other=0.0), acc_g)
        acc_u = tl.dot(a, tl.load(w_ptr + n, mask=w_mask, other=0.0), acc_u)
        a_ptr += BK
        w_ptr += BK * stride_wk
    dt = OUT.dtype.element_ty
    g = acc_g.to(dt).to(tl.float32)  # rounded as the product's output, then silu rounded as F.silu's
    u = acc_u.to(dt).to(tl.float32)
    s = (g / (1.0 + tl.exp(-g))).to(dt).to(tl.float32)
    tl.store(OUT + rm[:, None] * n + rn[None, :], (s * u).to(dt), mask=(rm[:, None] < M) & (rn[None, :] < n))


def gated_silu(h, W, BM, BN, BK, num_warps, num_stages):
    M, d = h.shape
    n = W.shape[1] // 2
    out = torch.empty(M, n, dtype=h.dtype, device=h.device)
    grid = (triton.cdiv(M, BM) * triton.cdiv(n, BN),)
    gated_silu_kernel[grid](h, W, out, M, n, d, h.stride(0), W.stride(0), BM=BM, BN=BN, BK=BK, GROUP_M=8,
                            num_warps=num_warps, num_stages=num_stages)
    return out


def median_us(fn, calls=20):
    for _ in range(3):
        fn()
    times = []
    for _ in range(calls):
        start, end = torch.cuda.Event(True), torch.cuda.Event(True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times)


CONFIGS = [(128, 64, 64, 4, 4), (128, 128, 64, 8, 3), (128, 128, 32, 8, 4), (64, 128, 64, 4, 4),
           (128, 64, 32, 4, 5), (256, 64, 64, 8, 3), (64, 64, 64, 4, 4), (128, 128, 64, 8, 4)]
SHAPES = [("smollm2", 65536, 576, 1536), ("smollm2", 276480, 576, 1536), ("qwen2.5-0.5b", 65536, 896, 4864),
          ("llama-2-7b", 16384, 4096, 11008), ("llama-2-7b", 65536, 4096, 11008)]

print("| shape | rows | cuBLAS + silu_mul us | cuBLAS product alone us | fused, best config us | config | max abs diff |")
print("|---|---|---|---|---|---|---|")
for name, M, d, n in SHAPES:
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(M, d, device="cuda", generator=g).bfloat16()
    W = (torch.randn(d, 2 * n, device="cuda", generator=g) / d ** 0.5).bfloat16()
    want = silu_mul(h @ W)
    reference, product = median_us(lambda: silu_mul(h @ W)), median_us(lambda: h @ W)
    timed = [(median_us(lambda: gated_silu(h, W, *c)), c) for c in CONFIGS]
    best, config = min(timed)
    diff = (gated_silu(h, W, *config).float() - want.float()).abs().max().item()
    print(f"| {name} | {M} x {d} x {n} | {reference:.0f} | {product:.0f} | {best:.0f} | {config} | {diff:.1e} |",
          flush=True)
    del h, W, want
