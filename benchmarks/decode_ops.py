"""Operators and wall time per decoding step of the safety-heads answers (``respond``'s workload).

A batch of requests decoded together, each under its own ablation variants (every variant ablates
the prompt, so no two share a prefill): the decoder's per-step cost in PyTorch operators (each one
kernel launch on a GPU, where the decoder is host-bound at this size) and in wall time.

    python benchmarks/decode_ops.py [--model KEY] [--requests 8] [--variants 12] [--steps 8]
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

import interp
from interp.generate import generations
from interp.methods import safety_heads as sh
from interp.tasks.harmful import harmful_requests


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--variants", type=int, default=12)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = interp.load_model(args.model, device=args.device)
    _, held = sh.split_requests(harmful_requests(), 0)
    q = sh.Queries.encode(model, held[: args.requests], "template")
    batch = [(q.prompt(i), [("ua", sh.random_heads(model, 3, seed=100 * i + v)) for v in range(args.variants)])
             for i in range(args.requests)]
    run = lambda n: generations(model, batch, max_new=n, verify=0, stop_ids=set())  # noqa: E731
    run(2)  # warm-up

    def count(n: int) -> tuple[int, int]:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            run(n)
        ev = prof.key_averages()
        return (sum(e.count for e in ev if e.key.startswith("aten::")),
                sum(e.count for e in ev if e.key == "aten::einsum"))

    (ops1, ein1), (opsn, einn) = count(1), count(1 + args.steps)
    ops, einsums = opsn - ops1, einn - ein1  # the decoding steps after the first, prefill excluded
    times = []
    for _ in range(3):
        t = time.perf_counter()
        run(args.steps)
        times.append(time.perf_counter() - t)
    times.sort()
    rows = args.requests * args.variants
    print(f"{args.model}, {args.requests} requests x {args.variants} variants = {rows} rows, prompts "
          f"{min(len(p) for p, _ in batch)}-{max(len(p) for p, _ in batch)} tokens, {args.steps} steps, {args.device}:")
    print(f"  aten operators per decoding step {ops / args.steps:.0f} (einsum {einsums / args.steps:.0f}); "
          f"wall per run median {times[1]:.2f} s (min {times[0]:.2f}, max {times[2]:.2f})")


if __name__ == "__main__":
    main()
