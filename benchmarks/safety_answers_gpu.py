"""The safety-heads answers step on a GPU: one batch of requests answered under their ablation
variants and judged, timed; then a profile of 16 decoding steps (host time against GPU time).

Qwen2.5-Coder-0.5B-Instruct, the paper's ``## Query:`` template, 128 new tokens, greedy; 49
variants per request as the evaluation makes them (Sahara-like groups at k = 1..5 in UA and SC,
19 random sets at k = 3 and 5 at every other k). The groups are fixed stand-ins: the time does
not depend on which heads are ablated.

    python benchmarks/safety_answers_gpu.py
"""
from __future__ import annotations

import time

import torch

from interp.methods import safety_heads as sh
from interp.models import load_model
from interp.tasks.harmful import harmful_requests


def main() -> None:
    model = load_model("qwen2.5-coder-0.5b-instruct", device="cuda")
    _, held = sh.split_requests(harmful_requests(), 0)
    queries = sh.Queries.encode(model, held[:16], "template")
    groups = {"ua": [(0, i) for i in range(5)], "sc": [(1, i) for i in range(5)]}
    randoms = {k: [sh.random_heads(model, k, seed=100 * k + d) for d in range(19 if k == 3 else 5)] for k in range(1, 6)}
    variants = sh.evaluation_variants(groups, range(1, 6), randoms)
    print("variants per request", len(variants))
    for n in (8, 16):
        rows = list(range(n))
        torch.cuda.synchronize()
        t0 = time.time()
        answers = sh.respond(model, queries, [variants] * n, max_new=128, progress=False, rows=rows)
        torch.cuda.synchronize()
        t1 = time.time()
        sh.judge_responses(model, queries, answers, None, rows=rows)
        torch.cuda.synchronize()
        t2 = time.time()
        lengths = [len(model.tokenizer(x)["input_ids"]) for a in answers for x in a.values()]
        print(f"requests {n}: respond {t1 - t0:.1f} s, judge {t2 - t1:.1f} s, "
              f"mean answer tokens {sum(lengths) / len(lengths):.0f}", flush=True)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        sh.respond(model, queries, [variants] * 8, max_new=16, progress=False, rows=list(range(8)))
    print(prof.key_averages().table(sort_by="cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
