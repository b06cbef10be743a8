"""The kernels against their references on a CUDA GPU, the path production takes: fp32, bf16 and
fp16, every kernel, the interpreter's cases, the engine's shapes (SmolLM2, Qwen2.5-0.5B, GPT-2,
Llama-2-7B) and tensors past 2^31 elements. Run with ``pytest -m gpu``; skipped without CUDA.

Each size group runs tests/kernel_check.py in a fresh process (without TRITON_INTERPRET), as one
would by hand: ``python tests/kernel_check.py cuda``."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import kernel_check

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the kernels' production "
                       "path); on CPU, tests/test_kernels.py checks them in the Triton interpreter"),
]


@pytest.mark.parametrize("sizes", kernel_check.DEFAULTS["cuda"][1])
def test_kernels_match_references_on_the_gpu(sizes):
    dtypes = ",".join(kernel_check.DEFAULTS["cuda"][0])
    expected = [c.name for c in kernel_check.cases("cuda", [kernel_check.DTYPES[d] for d in dtypes.split(",")],
                                                   [sizes])]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(Path(kernel_check.__file__)), "cuda", "--dtypes", dtypes,
                          "--sizes", sizes], env=env, capture_output=True, text=True, timeout=1800)
    print(out.stdout, out.stderr[-2000:])
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert kernel_check.outcomes(out.stdout) == {name: "ok" for name in expected}
