"""How a patching sweep scales over GPUs with Ray: N GPUs (N actors, one replica each) vs 1 GPU.

    python benchmarks/ray_scaling.py            # 2 GPUs: Llama-2-7B shape (random weights), bf16,
                                                # head_out by position, 16 prompts x 16 tokens
    python benchmarks/ray_scaling.py --device cpu --shape gpt2-small --batch 4 --seq 12
                                                # 2 CPU processes of one thread each vs one
    python benchmarks/ray_scaling.py --smoke    # CPU, a tiny random Llama: checks that it runs

Three ways of running the same sweep, each after one untimed run of that sweep (CUDA context,
and Triton kernels compiled for every chunk shape: a kernel first met in a timed sweep would add
its compile time to one side only) and with the models already loaded, each timed ``--repeat`` times (median, min-max). The
one-process replica stays loaded beside the pools (on the first GPU, which one worker shares), and
each pool sweep is paired with a one-process sweep run just before or after it (alternately): a
machine's speed drifts over minutes, so a speed-up is the median of these pairs' ratios.

    1 device, one process    interp.sweep.sweep_patch, what a user runs without Ray
    Ray, 1 worker            the same through RaySweepPool (shows Ray's own overhead)
    Ray, N workers           the sweep spread over N devices

Every timed sweep builds its engine (its two cached runs) and runs its self-check, on both sides:
the one-process engine kept from the previous sweep is released first, as each Ray sweep sets up
its workers' engines anew. All three use the same chunks (the N-worker plan's memory budget), so
their values must agree; the table shows the largest difference from the one-process run.
Scaling efficiency is the speed-up over the number of devices (target: speed-up >= 1.8 on 2
GPUs); the self-check column is each run's own evidence (``meta["verified"]``: its sampled cells
against TransformerLens's hooked forward, on the fp32 copy for a bf16 model). A second table splits each Ray sweep's
time (``SweepStats``): planning on worker 0, the busiest worker's seconds in chunks and the
self-check, the idle rest, and the self-check with the part of it still running after the last
chunk (it runs beside the chunks, on one worker). Random weights: speed does not depend on
weight values, and no weights can reach the GPU machine (interp.bench builds the same models).
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from interp import bench  # noqa: E402
from interp.distributed import RaySweepPool  # noqa: E402
from interp.sweep import release, sweep_patch  # noqa: E402


def build(shape: str, dtype: torch.dtype, device: str):
    """The random-weight bridge of ``shape`` (seeded: every call gives the same weights); runs in
    each Ray worker."""
    from interp import bench

    model = bench.random_model(shape, device, dtype)
    if device == "cuda":  # building it peaked at ~4x its bf16 size: give the rest back for the other replica
        torch.cuda.empty_cache()
    return model


def timed(fn, device: str) -> tuple[float, object]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def spread(times: list[float]) -> str:
    return f"{statistics.median(times):.2f} ({min(times):.2f}-{max(times):.2f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, tiny-llama, 4 prompts x 8 tokens, one repetition: check that it runs")
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"],
                        help="cpu: each worker and the one process use one thread")
    parser.add_argument("--shape", default="llama-2-7b", choices=sorted(bench.SHAPES))
    parser.add_argument("--workers", type=int, default=2, help="devices (actors) of the distributed run")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"],
                        help="on CPU always float32")
    parser.add_argument("--batch", type=int, default=16, help="prompts")
    parser.add_argument("--seq", type=int, default=16, help="tokens per prompt")
    parser.add_argument("--repeat", type=int, default=3, help="timed sweeps of each way")
    parser.add_argument("--all-pos", action="store_true", help="head_out at all positions (default: by position)")
    parser.add_argument("--positions", default=None, metavar="A-B",
                        help="by position, only positions A..B (a part of a long-prompt sweep)")
    parser.add_argument("--min-chunks", type=int, default=None, help="default: 8 per worker")
    parser.add_argument("--warmup", default="sweep", choices=["sweep", "layer"],
                        help="untimed run before the timed ones: the whole sweep (default), or its last "
                             "layer only (long sweeps, where a compile is small beside the run)")
    parser.add_argument("--no-one-worker", action="store_true", help="skip the Ray run with 1 worker")
    parser.add_argument("--verify", type=int, default=2,
                        help="cells of each sweep's self-check (0: none, on both sides; random bf16 weights "
                             "can exceed the check's bf16 tolerance, and then every sweep refuses)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.shape, args.batch, args.seq, args.repeat = "cpu", "tiny-llama", 4, 8, 1
    if args.repeat < 1 or args.workers < 1:
        parser.error("--repeat and --workers must be >= 1")
    positions = None
    if args.positions is not None:
        first, _, last = args.positions.partition("-")
        if args.all_pos or not (first.isdigit() and last.isdigit() and int(first) <= int(last) < args.seq):
            parser.error(f"--positions must be A-B with 0 <= A <= B < --seq, by position, got {args.positions!r}")
        positions = list(range(int(first), int(last) + 1))
    device = args.device
    dtype = torch.float32 if device == "cpu" else getattr(torch, args.dtype)
    if device == "cuda" and torch.cuda.device_count() < args.workers:
        print(f"need {args.workers} GPUs, found {torch.cuda.device_count()} (use --device cpu)", file=sys.stderr)
        return 2
    if device == "cpu":
        torch.set_num_threads(1)  # as each CPU worker
    shape = args.shape
    by_pos = not args.all_pos
    loader = functools.partial(build, shape, dtype)
    spec = bench.SHAPES[shape][1]
    vocab = spec["vocab_size"]
    prompts = bench.random_prompts(SimpleNamespace(cfg=SimpleNamespace(d_vocab=vocab, device="cpu")),
                                   args.batch, args.seq)
    sweep = dict(component="head_out", by_pos=by_pos, positions=positions, progress=False, verify=args.verify)
    min_chunks = args.min_chunks or 8 * args.workers
    layers = spec.get("num_hidden_layers", spec.get("n_layer"))
    warm = sweep if args.warmup == "sweep" else dict(sweep, layers=[layers - 1])

    import ray

    ray.init(num_cpus=max(2, args.workers), num_gpus=torch.cuda.device_count() if device == "cuda" else None,
             include_dashboard=False, logging_level="WARNING")
    runs = {}  # name -> (devices, [sweep seconds], Result, seconds to start, [SweepStats])
    pairs = {}  # run -> [one-process seconds / its seconds], of sweeps run one after the other

    def one_process(budget: int) -> float:
        """One timed sweep_patch on the driver's replica, with an engine built for it, as the workers do."""
        release(model, engine_only=True)
        seconds, runs["one process"][2] = timed(lambda: sweep_patch(model, prompts, **sweep, memory_budget=budget),
                                                device)
        runs["one process"][1].append(seconds)
        return seconds

    try:
        t0 = time.perf_counter()
        model = loader(device)  # the one process's replica, on the first GPU (which one worker shares)
        runs["one process"] = [1, [], None, time.perf_counter() - t0, []]
        for n in sorted({args.workers} if args.no_one_worker else {args.workers, 1}, reverse=True):
            t0 = time.perf_counter()
            with RaySweepPool(loader, workers=n, device=device, threads=1 if device == "cpu" else None) as pool:
                run = runs[f"Ray, {n} worker{'s' if n > 1 else ''}"] = [n, [], None, time.perf_counter() - t0, []]
                if n == args.workers:  # the chunks of every run: min_chunks of the N-worker plan
                    budget = pool.plan(prompts, "head_out", by_pos, positions=positions,
                                       min_chunks=min_chunks).memory_budget
                    sweep_patch(model, prompts, **warm, memory_budget=budget)  # the one process's warm-up
                pool.sweep(prompts, **warm, memory_budget=budget)
                for r in range(args.repeat):
                    # The machine's speed drifts over minutes (shared hosts, clocks): the pool's
                    # sweeps alternate with one-process ones and are compared in pairs, the pair's
                    # order alternating too (one process first, then the pool first, ...).
                    one = one_process(budget) if r % 2 == 0 else None
                    seconds, run[2] = timed(lambda: pool.sweep(prompts, **sweep, memory_budget=budget), "cpu")
                    run[1].append(seconds)
                    run[4].append(pool.stats)
                    one = one_process(budget) if one is None else one
                    pairs.setdefault(n, []).append(one / seconds)
    finally:
        ray.shutdown()
    local = runs["one process"][2]
    runs = dict(sorted(runs.items(), key=lambda item: (item[0] != "one process", item[1][0])))
    cells = local.values.numel()
    chunks = next(r.meta["distributed"]["chunks"] for _, _, r, _, _ in runs.values() if "distributed" in r.meta)
    where = "GPUs" if device == "cuda" else "CPU processes of 1 thread"
    part = f" {positions[0]}-{positions[-1]}" if positions else ""
    print(f"\n(host CPU: {bench.host_cpu()}{'; GPU: ' + torch.cuda.get_device_name() if device == 'cuda' else ''})")
    print(f"\nhead_out {'by position' + part if by_pos else 'at all positions'}: {shape} ({str(dtype)[6:]}, random "
          f"weights), {args.batch} prompts x {args.seq} tokens, {cells} patches in {chunks} chunks (memory budget "
          f"{budget / 2**20:.2f} MiB), on {where}; {args.repeat} timed sweeps each, median (min-max)\n")
    print("| run | devices | sweep s | speed-up | scaling efficiency | max abs diff vs one process | "
          "self-check vs the reference loop | start s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, (n, times, result, start_s, _) in runs.items():
        diff = (result.values - local.values).abs().max().item()
        speed = statistics.median(pairs[n]) if name != "one process" else 1.0
        check = result.meta["verified"]
        checked = (f"{check['max_abs_diff']:.1e} ({check['cells']} cells, {check.get('reference_dtype', '?')})"
                   if check["cells"] else "none")
        print(f"| {name} | {n} | {spread(times)} | {speed:.2f}x | {speed / n:.0%} | {diff:.1e} | {checked} | "
              f"{start_s:.1f} |")
    print("\nEach Ray speed-up is the median over pairs of sweeps run one after the other (in alternating "
          "order): " + ", ".join(f"{n} worker{'s' if n > 1 else ''} {min(r):.2f}x-{max(r):.2f}x"
                                for n, r in sorted(pairs.items())) + ".")
    print("\nwhere each Ray sweep's time went, median seconds (SweepStats):\n")
    print("| run | plan | busiest worker (chunks, check) | idle | self-check | of it after the last chunk | "
          "all workers |")
    print("|---|---|---|---|---|---|---|")
    for name, (n, _, _, _, stats) in runs.items():
        if not stats:
            continue
        med = lambda f: statistics.median(map(f, stats))  # noqa: E731
        print(f"| {name} | {med(lambda s: s.plan_seconds):.2f} | {med(lambda s: max(s.busy.values())):.2f} | "
              f"{med(lambda s: s.idle_seconds):.2f} | {med(lambda s: s.check_seconds):.2f} | "
              f"{med(lambda s: s.after_chunks_seconds):.2f} | {med(lambda s: sum(s.busy.values())):.2f} |")
    speedup = statistics.median(pairs[args.workers])
    target = 0.9 * args.workers
    print(f"\n{args.workers} workers: {speedup:.2f}x the one-process speed, "
          f"{'meets' if speedup >= target else 'misses'} the {target:.1f}x target"
          f"{' (smoke run: the times mean nothing)' if args.smoke else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
