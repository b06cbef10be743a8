"""Wall time of a repeated GPU sweep (GPT-2-small shape, random weights, bf16, 16 x 16, head_out at
all positions and by position): the median and min of 9 calls after 3 warm-up calls, without
(verify=0) and with the default self-check (verify=2, 5 calls). Run it on two commits to compare
them on one machine.

    python3 benchmarks/repeated_sweep_gpu.py
"""
import statistics
import time

import torch

from interp.bench import random_model, random_prompts
from interp.sweep import sweep_patch

model = random_model("gpt2-small", "cuda", torch.bfloat16)
prompts = random_prompts(model, 16, 16)


def timed(by_pos: bool, verify: int, calls: int) -> tuple[float, float]:
    for _ in range(3):
        sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False, verify=verify)
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False, verify=verify)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, min(times) * 1e3


for verify, calls in ((0, 9), (2, 5)):
    for by_pos in (False, True):
        median, least = timed(by_pos, verify, calls)
        print(f"{'by position' if by_pos else 'all positions':14s} verify={verify}: median {median:6.1f} ms, min {least:6.1f} ms")
