"""Repeated GPU sweeps of three shapes (random weights, bf16, head_out, verify=0): the median and
range of several calls, time against the FLOP floor, peak memory; the values saved to compare two
commits on one machine (run it on each, alternating, then `--compare`).

    python3 benchmarks/sweep_ab_gpu.py --save /tmp/new.pt
    python3 benchmarks/sweep_ab_gpu.py --compare /tmp/old.pt /tmp/new.pt
    python3 benchmarks/sweep_ab_gpu.py --rows smollm2-135m:64:pos:3,gpt2-small:16:pos:7,gpt2-small:64:pos:3
"""
import argparse
import statistics
import time

import torch

ROWS = [("gpt2-small", 16, 16, False, 9), ("gpt2-small", 16, 16, True, 9), ("smollm2-135m", 16, 64, False, 7),
        ("smollm2-135m", 16, 64, True, 3), ("qwen2.5-0.5b", 16, 64, False, 5)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--save", help="file to save the values of every row to")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="two saved files: max abs diff per row")
    p.add_argument("--rows", help="instead of the default rows: SHAPE:TOKENS:pos|all:CALLS,... (16 prompts each)")
    a = p.parse_args()
    rows = ROWS
    if a.rows:
        try:
            rows = [(shape, 16, int(tokens), where == "pos", int(calls))
                    for shape, tokens, where, calls in (row.split(":") for row in a.rows.split(","))]
        except ValueError:
            p.error(f"--rows must be SHAPE:TOKENS:pos|all:CALLS,..., got {a.rows!r}")
    if a.compare:
        x, y = (torch.load(f) for f in a.compare)
        for key in x:
            print(key, "max abs diff", (x[key] - y[key]).abs().max().item())
        return

    from interp.bench import floor_flops, random_model, random_prompts
    from interp.sweep import sweep_patch

    values = {}
    for shape, B, S, by_pos, calls in rows:
        model = random_model(shape, "cuda", torch.bfloat16)
        prompts = random_prompts(model, B, S)

        def run():
            return sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False, verify=0)

        for _ in range(2):
            run()
        times = []
        for _ in range(calls):
            torch.cuda.synchronize()
            start = time.perf_counter()
            result = run()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        torch.cuda.reset_peak_memory_stats()
        run()
        peak = torch.cuda.max_memory_allocated() / 2**30
        floor = floor_flops(model.cfg, B, S, by_pos) / 790e12
        median = statistics.median(times)
        print(f"{shape} {B}x{S} {'by pos' if by_pos else 'all pos'}: median {median * 1e3:.1f} ms "
              f"({min(times) * 1e3:.1f}-{max(times) * 1e3:.1f}), {median / floor:.2f}x floor, peak {peak:.2f} GiB",
              flush=True)
        values[f"{shape} {B}x{S} by_pos={by_pos}"] = result.values.clone()
        del model
    if a.save:
        torch.save(values, a.save)


if __name__ == "__main__":
    main()
