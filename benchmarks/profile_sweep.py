"""Where the time of a GPU sweep goes (random weights, head_out at all positions and by position):
median wall time, then torch.profiler's table of the kernels by GPU time (its footer gives the total
GPU and host time of one sweep), and how much of the GPU time is in kernels shorter than 20 us (a
sweep bound by launches has most of it there).

    python3 benchmarks/profile_sweep.py                                  # GPT-2 small, 16 x 16
    python3 benchmarks/profile_sweep.py --shape smollm2-135m --tokens 64 --only by-pos --verify 0
"""
import argparse
import statistics
import time

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from interp.bench import random_model, random_prompts
from interp.sweep import sweep_patch

p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--shape", default="gpt2-small")
p.add_argument("--prompts", type=int, default=16)
p.add_argument("--tokens", type=int, default=16)
p.add_argument("--only", choices=["all-pos", "by-pos"])
p.add_argument("--verify", type=int, default=2, help="cells re-run against the reference per call (interp.patch's verify)")
args = p.parse_args()
model = random_model(args.shape, "cuda", torch.bfloat16)
prompts = random_prompts(model, args.prompts, args.tokens)
kinds = [k for k in (False, True) if args.only is None or args.only == ("by-pos" if k else "all-pos")]


def sweep(by_pos):
    return sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False, verify=args.verify)


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


walls = {by_pos: wall_ms(by_pos) for by_pos in kinds}
for by_pos in kinds:
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        sweep(by_pos)
        torch.cuda.synchronize()
    print("=== by position" if by_pos else "=== all positions")
    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=14, max_name_column_width=50))
    kernels = [e.time_range.end - e.time_range.start for e in prof.events() if e.device_type == DeviceType.CUDA]
    short = sum(t for t in kernels if t < 20)
    print(f"{len(kernels)} kernels, {sum(kernels) / 1e3:.1f} ms; shorter than 20 us: {short / 1e3:.1f} ms")
for by_pos, ms in walls.items():
    print(f"{'by position' if by_pos else 'all positions':14s} median wall {ms:7.1f} ms")
