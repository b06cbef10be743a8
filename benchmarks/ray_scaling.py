"""How a patching sweep scales over GPUs with Ray: N GPUs (N actors, one replica each) vs 1 GPU.

    python benchmarks/ray_scaling.py            # 2 GPUs: Llama-2-7B shape (random weights), bf16,
                                                # head_out by position, 16 prompts x 16 tokens
    python benchmarks/ray_scaling.py --smoke    # CPU: a tiny random Llama, 2 CPU workers (checks
                                                # that the script runs; its times mean nothing)

Three timed runs of the same sweep, each after a small warm-up sweep (CUDA context, Triton
kernels) and with the models already loaded:

    1 GPU, one process       interp.sweep.sweep_patch, what a user runs without Ray
    Ray, 1 worker            the same through RaySweepPool (shows Ray's own overhead)
    Ray, N workers           the sweep spread over N GPUs

All three use the same chunks (the N-worker plan's memory budget), so their values must agree;
the table shows the largest difference from the one-process run. Speed-up is the one-process
time over the run's time; scaling efficiency is the speed-up over the number of GPUs (target:
speed-up >= 1.8 on 2 GPUs). Random weights: speed does not depend on weight values, and no
weights can reach the GPU machine (interp.bench builds the same models).
"""
from __future__ import annotations

import argparse
import functools
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from interp import bench  # noqa: E402
from interp.distributed import RaySweepPool  # noqa: E402
from interp.sweep import sweep_patch  # noqa: E402

TINY = ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256, head_dim=16))


def build(shape: str, spec: tuple, dtype: torch.dtype, device: str):
    """The random-weight bridge of ``shape`` (seeded: every call gives the same weights). Runs in
    each Ray worker; registering ``spec`` there lets it build shapes that interp.bench lacks."""
    from interp import bench

    bench.SHAPES.setdefault(shape, spec)
    return bench.random_model(shape, device, dtype)


def timed(fn, device: str) -> tuple[float, object]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny model, 2 workers: check that it runs")
    parser.add_argument("--shape", default="llama-2-7b", choices=sorted(bench.SHAPES))
    parser.add_argument("--workers", type=int, default=2, help="GPUs (actors) of the distributed run")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--batch", type=int, default=16, help="prompts")
    parser.add_argument("--seq", type=int, default=16, help="tokens per prompt")
    parser.add_argument("--all-pos", action="store_true", help="head_out at all positions (default: by position)")
    parser.add_argument("--min-chunks", type=int, default=None, help="default: 8 per worker")
    args = parser.parse_args(argv)

    if args.smoke:
        shape, spec, device, dtype = "tiny-llama", TINY, "cpu", torch.float32
        batch, seq = 4, 8
        torch.set_num_threads(1)  # as each of the 2 CPU workers on a 2-core machine
    else:
        shape, spec, device, dtype = args.shape, bench.SHAPES[args.shape], "cuda", getattr(torch, args.dtype)
        batch, seq = args.batch, args.seq
        if torch.cuda.device_count() < args.workers:
            print(f"need {args.workers} GPUs, found {torch.cuda.device_count()} (use --smoke on a CPU)")
            return 2
    by_pos = not args.all_pos
    loader = functools.partial(build, shape, spec, dtype)
    cfg = SimpleNamespace(d_vocab=spec[1]["vocab_size"], device="cpu")
    prompts = bench.random_prompts(SimpleNamespace(cfg=cfg), batch, seq)
    sweep = dict(component="head_out", by_pos=by_pos, progress=False)
    min_chunks = args.min_chunks or 8 * args.workers
    L = spec[1]["num_hidden_layers"]
    warm = dict(sweep, layers=[L - 1])

    import ray

    ray.init(num_cpus=max(2, args.workers), num_gpus=torch.cuda.device_count() if device == "cuda" else None,
             include_dashboard=False, logging_level="WARNING")
    runs = {}  # name -> (devices, sweep seconds, Result, seconds to start the workers)
    budget = None  # the engine's default on worker 0, possibly lowered to make min_chunks chunks
    try:
        for n in sorted({args.workers, 1}, reverse=True):
            t0 = time.perf_counter()
            with RaySweepPool(loader, workers=n, device=device, threads=1 if device == "cpu" else None) as pool:
                start_s = time.perf_counter() - t0
                pool.sweep(prompts, **warm, memory_budget=budget)
                seconds, result = timed(lambda: pool.sweep(prompts, **sweep, memory_budget=budget,
                                                           min_chunks=min_chunks), "cpu")
            budget = result.meta["distributed"]["memory_budget"]  # the later runs make the same chunks
            runs[f"Ray, {n} worker{'s' if n > 1 else ''}"] = (n, seconds, result, start_s)
    finally:
        ray.shutdown()
    t0 = time.perf_counter()
    model = loader(device)
    start_s = time.perf_counter() - t0
    sweep_patch(model, prompts, **warm, memory_budget=budget)
    seconds, local = timed(lambda: sweep_patch(model, prompts, **sweep, memory_budget=budget), device)
    runs = {"one process": (1, seconds, local, start_s), **dict(reversed(runs.items()))}

    cells = local.values.numel()
    chunks = next(iter(r.meta["distributed"]["chunks"] for _, _, r, _ in runs.values() if "distributed" in r.meta))
    print(f"\nhead_out {'by position' if by_pos else 'at all positions'}: {shape} ({str(dtype)[6:]}, random weights), "
          f"{batch} prompts x {seq} tokens, {cells} patches in {chunks} chunks (memory budget {budget / 2**20:.2f} MiB), "
          f"on {'GPUs' if device == 'cuda' else 'CPU processes of 1 thread'}\n")
    print("| run | devices | sweep s | speed-up | scaling efficiency | max abs diff vs one process | start s |")
    print("|---|---|---|---|---|---|---|")
    base = runs["one process"][1]
    for name, (n, seconds, result, start_s) in runs.items():
        diff = (result.values - local.values).abs().max().item()
        print(f"| {name} | {n} | {seconds:.2f} | {base / seconds:.2f}x | {base / seconds / n:.0%} | {diff:.1e} | "
              f"{start_s:.1f} |")
    speedup = base / runs[f"Ray, {args.workers} workers"][1] if args.workers > 1 else 1.0
    target = 0.9 * args.workers
    print(f"\n{args.workers} workers: {speedup:.2f}x the one-process speed, "
          f"{'meets' if speedup >= target else 'misses'} the {target:.1f}x target"
          f"{' (smoke run on a CPU: the times mean nothing)' if args.smoke else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
