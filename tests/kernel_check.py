"""Kernels vs their PyTorch references; run by test_kernels.py with TRITON_INTERPRET=1 set (CPU),
and on the GPU machine as is. Prints one line per case and exits non-zero on any mismatch."""
import sys

import torch

from interp.kernels import (add_norm, add_norm_reference, head_scatter, head_scatter_reference, norm_logit_diff,
                           norm_logit_diff_reference, prefix_attention, prefix_attention_reference)
from interp.kernels._triton import use_triton

device = sys.argv[1] if len(sys.argv) > 1 else "cpu"
torch.manual_seed(0)
failures = 0


def check(name, got, want, atol):
    global failures
    err = (got.float() - want.float()).abs().max().item()
    ok = err <= atol
    failures += not ok
    print(f"{'ok ' if ok else 'BAD'} {name}: max abs err {err:.2e} (tol {atol:g})")


assert use_triton(torch.zeros(1, device=device)), "Triton path not active: set TRITON_INTERPRET=1 on CPU"
dtypes = [torch.float32] + ([torch.bfloat16] if device == "cuda" else [])
for dtype in dtypes:
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    for d, center in [(576, False), (768, True)]:
        R, B = 37, 5
        x = torch.randn(R, d, device=device, dtype=dtype) * 3
        w = torch.rand(d, device=device, dtype=dtype) + 0.5
        D = torch.randn(B, d, device=device, dtype=dtype)
        idx = torch.randint(0, B, (R,), device=device)
        bias = torch.randn(B, device=device)
        args = (x, w, D, idx, bias, 1e-5, center)
        check(f"norm_logit_diff d={d} center={center} {dtype}", norm_logit_diff(*args),
              norm_logit_diff_reference(*args), tol * 10)
    for dh, d, V, R, H in [(64, 576, 3, 40, 9), (128, 300, 2, 130, 4)]:
        resid = torch.randn(R, d, device=device, dtype=dtype)
        dz = torch.randn(V, R, dh, device=device, dtype=dtype)
        W_O = torch.randn(H, dh, d, device=device, dtype=dtype) / dh ** 0.5
        heads = torch.randint(0, H, (V,), device=device)
        check(f"head_scatter dh={dh} d={d} {dtype}", head_scatter(resid, dz, W_O, heads),
              head_scatter_reference(resid, dz, W_O, heads), tol * 10)
    for d, center, has_delta, has_wb in [(576, False, True, (True, False)), (768, True, True, (True, True)),
                                         (300, True, False, (False, False))]:
        x = torch.randn(3, 13, d, device=device, dtype=dtype) * 3
        delta = torch.randn(3, 13, d, device=device, dtype=dtype) if has_delta else None
        w = torch.rand(d, device=device, dtype=dtype) + 0.5 if has_wb[0] else None
        b = torch.randn(d, device=device, dtype=dtype) if has_wb[1] else None
        got, want = add_norm(x, delta, w, b, 1e-5, center), add_norm_reference(x, delta, w, b, 1e-5, center)
        check(f"add_norm d={d} center={center} delta={has_delta} {dtype}: residual", got[0], want[0], 0)
        check(f"add_norm d={d} center={center} delta={has_delta} {dtype}: normed", got[1], want[1], tol * 10)
    for N, B, S, H, Hkv, dh, P in [(3, 2, 5, 4, 2, 16, 0), (2, 3, 7, 4, 4, 32, 6), (1, 2, 70, 2, 1, 16, 67)]:
        # q, k, v as views of one fused projection, as the engine makes them (strided, not contiguous)
        qkv = torch.randn(N, B, S, (H + 2 * Hkv) * dh, device=device, dtype=dtype)
        q, k, v = (t.unflatten(-1, (-1, dh)) for t in qkv.split([H * dh, Hkv * dh, Hkv * dh], -1))
        k_pre = torch.randn(B, P, Hkv, dh, device=device, dtype=dtype)
        v_pre = torch.randn(B, P, Hkv, dh, device=device, dtype=dtype)
        args = (q, k, v, k_pre, v_pre, dh ** -0.5)
        check(f"prefix_attention N={N} B={B} S={S} H={H}/{Hkv} dh={dh} P={P} {dtype}",
              prefix_attention(*args), prefix_attention_reference(*args), tol * 10)
sys.exit(1 if failures else 0)
