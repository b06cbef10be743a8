"""Every Triton kernel equals its PyTorch reference, on CPU through the Triton interpreter.

The interpreter must be switched on before triton is imported, so the check runs in a fresh
process (tests/kernel_check.py, which the GPU benchmark runs on CUDA too)."""
import os
import subprocess
import sys
from pathlib import Path


def test_kernels_match_references_in_the_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, str(Path(__file__).with_name("kernel_check.py")), "cpu"],
                         env=env, capture_output=True, text=True, timeout=900)
    print(out.stdout, out.stderr[-2000:])
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert out.stdout.count("ok ") == 13
