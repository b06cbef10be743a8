"""Every Triton kernel equals its PyTorch reference, on CPU through the Triton interpreter: fp32, and
fp16 for the low-precision path (the interpreter gets bf16 wrong; kernel_check.py says how), at every
head size the models use, and at offsets past 2^31 elements.

The interpreter must be switched on before triton is imported, so the check runs in a fresh process
(tests/kernel_check.py; tests/test_gpu_kernels.py runs it on CUDA)."""
import os
import subprocess
import sys
from pathlib import Path

import kernel_check


def test_kernels_match_references_in_the_interpreter():
    expected = [c.name for c in kernel_check.default_cases("cpu")]
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, str(Path(kernel_check.__file__)), "cpu"],
                         env=env, capture_output=True, text=True, timeout=900)
    print(out.stdout, out.stderr[-2000:])
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    # each case printed once, ok: none skipped, none failed, none unexpected
    assert kernel_check.outcomes(out.stdout) == {name: "ok" for name in expected}
    assert sum(line.startswith("ok ") for line in out.stdout.splitlines()) == len(expected)
