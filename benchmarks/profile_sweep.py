"""Where the time of one small GPU sweep goes (GPT-2-small shape, 16 x 16, head_out all positions):
cProfile of the Python side, with a CUDA sync at the end.

    python3 benchmarks/profile_sweep.py [--by-pos]
"""
import cProfile
import pstats
import sys
import time

import torch

from interp.bench import random_model, random_prompts
from interp.sweep import sweep_patch

by_pos = "--by-pos" in sys.argv
model = random_model("gpt2-small", "cuda", torch.bfloat16)
prompts = random_prompts(model, 16, 16)
for _ in range(3):
    sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False)
torch.cuda.synchronize()
t = time.perf_counter()
for _ in range(5):
    sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False)
torch.cuda.synchronize()
print(f"mean {(time.perf_counter() - t) / 5 * 1e3:.1f} ms per sweep")
prof = cProfile.Profile()
prof.enable()
sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False)
torch.cuda.synchronize()
prof.disable()
stats = pstats.Stats(prof)
stats.sort_stats("tottime").print_stats(25)
stats.sort_stats("cumtime").print_stats(30)
