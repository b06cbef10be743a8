"""A long-prompt head-by-position sweep on one GPU: time, peak memory, time vs the FLOP floor.

    python benchmarks/long_prompt_gpu.py                    # Llama-2-7B shape (random weights), bf16,
                                                            # 16 prompts x 128 tokens, positions 0-7
    python benchmarks/long_prompt_gpu.py --positions 0-127  # the whole sweep (~25 min on one H200)

The whole sweep in parts, in one process (one model build), each part a separate sweep over its
positions whose values, time and peak memory are saved as soon as it ends; then joined: the time is
the sum of the parts', the peak memory the largest. Parts of equal floor (~4 min each on one H200),
positions 0-7 (measured alone before) last:

    python benchmarks/long_prompt_gpu.py --parts 8-20,21-35,36-53,54-77,78-127,0-7 --save-dir /tmp/lp --no-self-check
    python benchmarks/long_prompt_gpu.py --join /tmp/lp/part_*.pt

The first positions are the longest suffixes (each patch at position p recomputes positions >= p),
so a run over positions 0-7 is the sweep's largest working set: if it fits, the whole sweep fits.
Its time against the floor of those positions (``interp.bench.floor_flops``) gives the rate, and the
whole sweep's time at that rate is printed as an estimate (labelled so). Eight cells are checked
against TransformerLens's loop (``get_act_patch_attn_head_out_by_pos``) in the same run, spread over
the positions run. The timed
sweep runs with ``verify=0``; the engine's own self-check (a fp32 twin) is run apart and reported,
refusal included. Random weights: speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _positions(text: str) -> list[int]:
    """"A-B" (or "A") as the positions A..B; [] when it is not that."""
    lo, _, hi = text.partition("-")
    hi = hi or lo
    return list(range(int(lo), int(hi) + 1)) if lo.isdigit() and hi.isdigit() else []


def main(argv=None) -> int:
    import torch

    from interp.random_models import random_model, random_prompts

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", default="llama-2-7b")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--n-pos", type=int, default=128)
    p.add_argument("--positions", default="0-7", help="first-last position patched (default 0-7)")
    p.add_argument("--save", type=Path, help="write this part's values, time and peak memory here (torch.save)")
    p.add_argument("--parts", help="several parts in one process, one model build: first-last,first-last,...; "
                                   "each part is saved to --save-dir as soon as it ends")
    p.add_argument("--save-dir", type=Path, help="with --parts: where each part's file goes")
    p.add_argument("--no-self-check", action="store_true", help="skip the engine's fp32 self-check at the end")
    p.add_argument("--join", type=Path, nargs="+", help="join saved parts into the whole sweep's row, and stop")
    a = p.parse_args(argv)
    if a.join:
        return join(a.join)
    if a.parts and not a.save_dir:
        print("error: --parts needs --save-dir", file=sys.stderr)
        return 2
    parts = [_positions(t) for t in a.parts.split(",")] if a.parts else [_positions(a.positions)]
    if not all(part and 0 <= part[0] and part[-1] < a.n_pos for part in parts):
        print(f"error: positions must be A-B with 0 <= A <= B < --n-pos ({a.n_pos}), got "
              f"{a.parts or a.positions!r}", file=sys.stderr)
        return 2
    model = random_model(a.shape, "cuda", torch.bfloat16)
    prompts = random_prompts(model, a.batch, a.n_pos)
    results = {}
    for pos in parts:
        part = run_part(model, prompts, pos, a)
        results.update({q: part["values"][:, i] for i, q in enumerate(pos)})
        path = a.save if not a.parts else a.save_dir / f"part_{pos[0]:03d}-{pos[-1]:03d}.pt"
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(part, path)
    check(model, prompts, results, a)
    return 0


def run_part(model, prompts, pos: list[int], a) -> dict:
    """One timed sweep (``verify=0``) over the patches at positions ``pos``: its values, time, peak
    memory and floor, printed as one line."""
    import torch

    from interp.bench import floor_flops
    from interp.sweep import sweep_patch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    result = sweep_patch(model, prompts, "head_out", by_pos=True, positions=pos, progress=False, verify=0)
    torch.cuda.synchronize()
    took = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30
    floor = floor_flops(model.cfg, a.batch, a.n_pos, True, pos)
    whole = floor_flops(model.cfg, a.batch, a.n_pos, True)
    print(f"{a.shape} bf16 {a.batch}x{a.n_pos} head_out by position, positions {pos[0]}-{pos[-1]}: {took:.1f} s, "
          f"peak {peak:.1f} GiB, floor {floor / 1e15:.1f} PFLOP ({floor / 790e12:.1f} s at 790 TFLOP/s), "
          f"time vs floor {took / (floor / 790e12):.2f}x ({floor / took / 1e12:.0f} TFLOP/s); "
          f"whole sweep: floor {whole / 790e12 / 60:.1f} min, estimated at this rate {whole / (floor / took) / 60:.1f} min",
          flush=True)
    return {"shape": a.shape, "batch": a.batch, "n_pos": a.n_pos, "positions": pos, "seconds": took,
            "peak_gib": peak, "floor_flops": floor, "whole_floor_flops": whole, "values": result.values}


def check(model, prompts, values: dict, a) -> None:
    """Eight cells, spread over the positions run, against TransformerLens's loop in the same
    process; then the engine's own self-check (fp32 twin, 2 cells) unless ``--no-self-check``."""
    import pandas as pd
    import torch
    from transformer_lens import patching

    from interp.errors import EngineUnsupported
    from interp.metrics import logit_diff
    from interp.sweep import sweep_patch

    metric = lambda logits: logit_diff(logits, prompts).mean()  # noqa: E731
    L, H = model.cfg.n_layers, model.cfg.n_heads
    ran = sorted(values)
    cells = pd.DataFrame({"layer": [0, 3 % L, 9 % L, 15 % L, 20 % L, 26 % L, L - 2, L - 1],
                          "pos": [ran[(i * len(ran)) // 8] for i in (0, 7, 2, 5, 1, 6, 3, 4)],
                          "head": [5 % H, 0, H - 1, 12 % H, 7 % H, 19 % H, 2 % H, H - 2]})
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts.clean_tokens)
        t = time.perf_counter()
        tl = patching.get_act_patch_attn_head_out_by_pos(model, prompts.corrupted_tokens, cache, metric,
                                                         index_axis_names=None, index_df=cells)
        torch.cuda.synchronize()
    per_cell = (time.perf_counter() - t) / len(cells)
    ours = torch.stack([values[p][l, h] for l, p, h in cells.itertuples(index=False)])
    print(f"vs TransformerLens on {len(cells)} cells (positions {sorted(set(cells.pos))}): max abs diff "
          f"{(ours - tl.float().cpu()).abs().max().item():.2e}; TransformerLens {per_cell * 1e3:.0f} ms per cell, "
          f"{per_cell * a.n_pos * L * H / 60:.0f} min for the whole sweep", flush=True)
    del cache
    torch.cuda.empty_cache()
    if a.no_self_check:
        return
    try:
        first = ran[0]
        twin = sweep_patch(model, prompts, "head_out", by_pos=True, positions=[first], layers=[0, L - 1],
                           progress=False, verify=2)
        print("self-check (fp32 twin, 2 cells):", twin.meta["verified"])
    except EngineUnsupported as err:
        print("self-check refused:", err)


def join(paths: list[Path]) -> int:
    """The whole sweep's row from its saved parts: they must be of one shape and prompt size, and cover
    positions 0..n_pos-1 once each."""
    import torch

    parts = sorted((torch.load(p, weights_only=True) for p in paths), key=lambda d: d["positions"][0])
    shape, batch, n_pos = parts[0]["shape"], parts[0]["batch"], parts[0]["n_pos"]
    if any((d["shape"], d["batch"], d["n_pos"]) != (shape, batch, n_pos) for d in parts):
        print("error: the parts are of different shapes or prompt sizes", file=sys.stderr)
        return 2
    covered = [q for d in parts for q in d["positions"]]
    if covered != list(range(n_pos)):
        print(f"error: the parts cover positions {covered[0]}..{covered[-1]} with gaps or overlaps, not 0..{n_pos - 1} "
              "once each", file=sys.stderr)
        return 2
    took = sum(d["seconds"] for d in parts)
    peak = max(d["peak_gib"] for d in parts)
    whole = parts[0]["whole_floor_flops"]
    assert abs(sum(d["floor_flops"] for d in parts) - whole) <= 1e-6 * whole  # the parts' floors add up
    values = torch.cat([d["values"] for d in parts], dim=1)  # [layer, pos, head]
    each = " + ".join(f"{d['seconds']:.0f}" for d in parts)
    print(f"{shape} bf16 {batch}x{n_pos} head_out by position, the whole sweep in {len(parts)} parts: "
          f"{took / 60:.1f} min ({each} s), peak {peak:.1f} GiB, floor {whole / 790e12 / 60:.1f} min at 790 TFLOP/s, time vs floor "
          f"{took / (whole / 790e12):.2f}x; values {tuple(values.shape)}, finite: {bool(values.isfinite().all())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
