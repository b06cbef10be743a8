"""Where the time of the small GPU sweeps goes (GPT-2-small shape, random weights, 16 x 16,
head_out at all positions and by position): median wall time, then torch.profiler's table of the
kernels by GPU time (its footer gives the total GPU and host time of one sweep).

    python3 benchmarks/profile_sweep.py
"""
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from interp.bench import random_model, random_prompts
from interp.sweep import sweep_patch

model = random_model("gpt2-small", "cuda", torch.bfloat16)
prompts = random_prompts(model, 16, 16)


def sweep(by_pos):
    return sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False)


def wall_ms(by_pos, repeats=7):
    for _ in range(2):
        sweep(by_pos)
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        sweep(by_pos)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


walls = {by_pos: wall_ms(by_pos) for by_pos in (False, True)}
for by_pos in (False, True):
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        sweep(by_pos)
        torch.cuda.synchronize()
    print("=== by position" if by_pos else "=== all positions")
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=50))
for by_pos, ms in walls.items():
    print(f"{'by position' if by_pos else 'all positions':14s} median wall {ms:7.1f} ms")
