"""Time the Ships sweep (every head ablated alone, every query) on the batched engine against the
reference loop (one hooked TransformerBridge forward per head), in one run, and check they agree.

    python3 benchmarks/ships_gpu.py                       # GPU: Qwen2.5-0.5B shape, random weights
    python3 benchmarks/ships_gpu.py --device cpu --real   # CPU: the real Qwen2.5-Coder-0.5B-Instruct

The GPU machine cannot receive weights: there the model is the Qwen2.5-0.5B architecture with random
weights and the queries are random tokens with the lengths of our harmful set in the chat format
(110 queries, 30-44 tokens, right-padded); speed does not depend on the values. Prints a markdown
table: sweep, queries x tokens, heads, engine s, reference s, speed-up, max |KL diff|.
"""
from __future__ import annotations

import argparse
import time

import torch


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--real", action="store_true", help="the real model and our harmful requests (needs the weights)")
    ap.add_argument("--n-queries", type=int, default=110)
    ap.add_argument("--reference-heads", type=int, default=None, help="time the reference on a sample of heads")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    from interp.methods import safety_heads as sh

    dtype = getattr(torch, args.dtype)
    if args.real:
        import interp
        from interp.tasks.harmful import harmful_requests

        model = interp.load_model("qwen2.5-coder-0.5b-instruct", device=args.device, dtype=dtype)
        queries = sh.Queries.encode(model, harmful_requests()[: args.n_queries], "chat")
        name = "qwen2.5-coder-0.5b-instruct (real)"
    else:
        from interp.bench import random_model

        model = random_model("qwen2.5-0.5b", args.device, dtype)
        g = torch.Generator().manual_seed(0)
        lengths = torch.randint(30, 45, (args.n_queries,), generator=g)
        tokens = torch.randint(100, 256, (args.n_queries, int(lengths.max())), generator=g)
        for i, n in enumerate(lengths.tolist()):
            tokens[i, n:] = 0
        queries = sh.Queries([None] * args.n_queries, "chat", tokens, lengths - 1)
        name = "qwen2.5-0.5b shape (random)"
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads = [(l, h) for l in range(L) for h in range(H)]
    sample = heads if args.reference_heads is None else heads[:: max(1, len(heads) // args.reference_heads)]
    print(f"| model | dtype | device | sweep | queries x tokens | heads | engine s | reference s | speed-up | max abs KL diff |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode in ("ua", "sc"):
        sh.ships(model, queries, mode, heads=heads[:2], progress=False)  # warm-up
        _sync(args.device)
        t = time.perf_counter()
        eng = sh.ships(model, queries, mode, progress=False)
        _sync(args.device)
        t_eng = time.perf_counter() - t
        t = time.perf_counter()
        ref = sh.ships(model, queries, mode, heads=sample, engine="reference", progress=False)
        _sync(args.device)
        t_ref = (time.perf_counter() - t) * len(heads) / len(sample)
        diff = max(float((eng.kl[h] - ref.kl[h]).abs().max()) for h in sample)
        star = "" if len(sample) == len(heads) else "*"
        print(f"| {name} | {args.dtype} | {args.device} | Ships {mode} | {len(queries)}x{queries.tokens.shape[1]} | "
              f"{len(heads)} | {t_eng:.2f} | {t_ref:.2f}{star} | **{t_ref / t_eng:.1f}x** | {diff:.1e} |", flush=True)
    _sync(args.device)
    t = time.perf_counter()
    steps = sh.sahara(model, queries, size=2, progress=False)
    _sync(args.device)
    print(f"\nSahara, 2 greedy steps over all {len(heads)} heads: {time.perf_counter() - t:.2f} s "
          f"(group {steps[-1].group})")


if __name__ == "__main__":
    main()
