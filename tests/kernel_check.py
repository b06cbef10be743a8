"""Kernels vs their PyTorch references; run by test_kernels.py with TRITON_INTERPRET=1 set (CPU),
and on the GPU machine as is. Prints one line per case and exits non-zero on any mismatch."""
import sys

import torch

from interp.kernels import head_scatter, head_scatter_reference, norm_logit_diff, norm_logit_diff_reference
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
sys.exit(1 if failures else 0)
