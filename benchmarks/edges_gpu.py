"""Every edge of SmolLM2 exactly on one GPU: wall time, throughput against the FLOP floor, memory,
bf16 against fp32, and a sample re-run through the hooked reference.

    python benchmarks/edges_gpu.py --out d [--profile] [--limit 120] [--repeats 3]

(on the GPU machine, from a folder other than the repository root, with the project installed;
``--real`` also needs SmolLM2's GGUF installed as on the CPU, and HF_HUB_OFFLINE=1 on a machine
without network).
Random weights of the SmolLM2-135M shape (``interp.random_models.random_model``: speed does not
depend on the values), 16 random prompts of 15 tokens shaped like IOI's (three positions differ
between clean and corrupted, ragged answer positions), every edge of the model (70,651), fp32 and
bf16. Stages, each printed and written into ``--out/edges_gpu.json`` as soon as it ends (a run
stopped early keeps what it did):

1. ``--profile``: torch.profiler over the edges of the receivers of layers 10-12 and the logits,
   the sweep as it was (one ``run_suffix`` per receiver, a host copy per chunk; ``legacy_run``)
   against the current one (``EdgeSweep.run``), fp32 and bf16: the top ops by GPU time and calls;
2. per dtype, every edge: a guarded warm-up (chunk by chunk; stopped after ``--limit`` s with the
   edges/s so far), then ``--repeats`` timed runs of ``edge_patch(verify=0)`` (wall time, CUDA
   synchronised, the engine's own clean/corrupted runs included), the peak memory, edges/s and
   TFLOP/s against the FLOP floor (``edge_floor``);
3. the bf16 scores against fp32 (max abs difference, Spearman);
4. a stratified sample of edges re-run through ``interp.reference.edge_patch_reference`` (one hooked
   forward per edge, fp32 on the GPU): max abs difference, and its time per edge.

TF32 stays off (PyTorch's default): fp32 is fp32.
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

from interp import edges as E
from interp.edge_sweep import EdgeSweep, edge_patch
from interp.errors import InterpError
from interp.methods.edge_audit import spearman, top_k_overlap
from interp.random_models import random_model, random_prompts
from interp.reference import edge_patch_reference

N_PROMPTS, N_POS = 16, 15
CUDA = torch.cuda.is_available()


def say(*a) -> None:
    print(*a, flush=True)


def edge_floor(cfg, edges_, batch: int, n_pos: int) -> float:
    """FLOPs of the minimal exact recomputation of every edge: an edge into layer l's q/k/v or MLP
    recomputes layer l's MLP and every later layer at all positions (its attention projections,
    attention over the causal context, MLP); the logits receiver two logits. The receiver's own
    head or MLP input is not counted (below 1% here)."""
    d, H, dh, L = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.n_layers
    Hkv = cfg.n_key_value_heads or H
    mlp = 2 * d * cfg.d_mlp * (3 if cfg.gated_mlp else 2)
    proj = 2 * d * dh * (2 * H + 2 * Hkv)
    layer = n_pos * (mlp + proj) + 4 * H * dh * sum(range(1, n_pos + 1))
    total = 0.0
    for e in edges_:
        r = e.receiver
        total += batch * 4 * d if r.kind == "logits" else batch * (n_pos * mlp + (L - 1 - r.layer) * layer)
    return total


def legacy_run(sweep: EdgeSweep, edges_, deadline: float | None = None) -> torch.Tensor:
    """The sweep as it was before this benchmark (for the profile): one ``run_suffix`` per
    receiver and chunk, the sender changes stacked one view per edge, a host copy per chunk.
    Stops after ``deadline`` (time.perf_counter()); the edges not reached stay NaN."""
    e = sweep.engine
    base_metric = e.cache("base").metric.mean()
    by_receiver: dict = {}
    for i, edge in enumerate(edges_):
        by_receiver.setdefault(edge.receiver, []).append(i)
    out = torch.full((len(edges_),), float("nan"))
    chunk = e._chunk_size(e.prompts.n_pos)
    with torch.no_grad():
        for r, idx in by_receiver.items():
            if deadline is not None and time.perf_counter() > deadline:
                break
            for i in range(0, len(idx), chunk):
                part = idx[i:i + chunk]
                D = torch.stack([sweep.delta(edges_[j].sender) for j in part])
                where = sweep.start(r, D)
                if where[0] == "logits":
                    vals = where[1].mean(1)
                else:
                    layer, point, x = where
                    vals = e.run_suffix([(layer, point, x, list(range(len(part))))], 0)
                out[part] = (vals - base_metric).float().cpu()
    return out


def sync():
    if CUDA:
        torch.cuda.synchronize()


def sync_time(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def top_ops(prof, n: int = 15) -> list[dict]:
    rows = []
    for ev in prof.key_averages():
        dev = getattr(ev, "self_device_time_total", None)
        if dev is None:
            dev = getattr(ev, "self_cuda_time_total", 0)
        rows.append({"op": ev.key, "calls": ev.count, "self_gpu_ms": dev / 1e3, "self_cpu_ms": ev.self_cpu_time_total / 1e3})
        rows[-1]["kernel"] = str(getattr(ev, "device_type", "")).endswith("CUDA")
    kernels = [r for r in rows if r["kernel"]]
    ops = [r for r in rows if not r["kernel"]]
    return {"ops_by_gpu": sorted(ops, key=lambda r: -r["self_gpu_ms"])[:n],
            "kernels_by_gpu": sorted(kernels, key=lambda r: -r["self_gpu_ms"])[:n],
            "by_cpu": sorted(ops, key=lambda r: -r["self_cpu_ms"])[:n],
            "kernel_ms_total": sum(r["self_gpu_ms"] for r in kernels), "n_kernels": sum(r["calls"] for r in kernels)}


def compare(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Scores b (bf16) against a (fp32): max / mean abs difference, Spearman over every edge and over
    the edges whose fp32 score is at least 10x the mean difference, top-k overlap."""
    d = (a - b).abs()
    big = a.abs() >= 10 * d.mean()
    return {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()), "max_abs_fp32": float(a.abs().max()),
            "spearman": spearman(a, b), "n_large": int(big.sum()),
            "spearman_large": spearman(a[big], b[big]) if big.sum() > 2 else None,
            "top_k_overlap": {k: top_k_overlap(a, b, k) for k in (50, 200, 1000)}}


def reference_sample(model, prompts, all_edges, values: torch.Tensor, n: int, seed: int = 0) -> dict:
    """``n`` edges (as many of each receiver kind) re-run through the hooked reference, one forward
    each: the largest |difference| from ``values`` and the reference's time per edge."""
    rng = random.Random(seed)
    kinds: dict = {}
    for i, e in enumerate(all_edges):
        kinds.setdefault(e.receiver.kind, []).append(i)
    per = max(1, n // len(kinds))
    pick = sorted(i for idx in kinds.values() for i in rng.sample(idx, min(per, len(idx))))
    ref, rt = sync_time(lambda: edge_patch_reference(model, prompts, [all_edges[i] for i in pick]))
    diff = (ref.cpu() - values[pick]).abs()
    return {"n_edges": len(pick), "max_abs_diff": float(diff.max()), "max_abs_score": float(ref.abs().max()),
            "s_per_edge": rt / len(pick), "one_forward_per_edge_estimate_s": rt / len(pick) * len(all_edges),
            "worst": all_edges[pick[int(diff.argmax())]].name}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("edges-gpu"))
    ap.add_argument("--profile", action="store_true", help="stage 1: the profile of a subset")
    ap.add_argument("--limit", type=float, default=120.0, help="seconds the guarded warm-up may take per dtype")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--n-ref", type=int, default=24, help="edges re-run through the hooked reference")
    ap.add_argument("--max-edges", type=int, default=None, help="edges per forward (default: the memory budget)")
    ap.add_argument("--shape", default="smollm2-135m", help="a shape of interp.random_models (tiny-llama: a smoke test)")
    ap.add_argument("--legacy", action="store_true", help="also time the old per-receiver loop on every edge, once")
    ap.add_argument("--real", action="store_true", help="also every edge with the real SmolLM2 weights (installed)")
    ap.add_argument("--skip-random", action="store_true", help="only the real weights")
    ap.add_argument("--real-logits-only", action="store_true", help="real weights: the edges into the logits only (a smoke test)")
    ap.add_argument("--cpu-reference", type=Path, default=None,
                    help="the CPU's numbers (real_weights_gpu.py --reference): edges into the logits compared")
    args = ap.parse_args()
    dev = "cuda" if CUDA else "cpu"
    args.out.mkdir(parents=True, exist_ok=True)
    res: dict = {"shape": args.shape, "prompts": f"{N_PROMPTS}x{N_POS}", "torch": torch.__version__,
                 "device": torch.cuda.get_device_name(0) if CUDA else "cpu", "host": platform.processor() or platform.machine(),
                 "tf32": torch.backends.cuda.matmul.allow_tf32, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 "max_edges": args.max_edges}
    name_json = "edges_gpu_real.json" if args.skip_random else "edges_gpu.json"

    def save():
        (args.out / name_json).write_text(json.dumps(res, indent=1, default=str))

    if not args.skip_random:
        random_stage(args, res, save, dev)
    if args.real:
        real_stage(args, res, save, dev)
    say("done")


def real_stage(args, res: dict, save, dev: str) -> None:
    """Every edge of the real SmolLM2-135M-Instruct on 16 IOI prompts (``ioi_examples(model, 16,
    seed=0)``): one run with the self-check, one timed run, per dtype; bf16 against fp32; a sample
    against the hooked reference; the edges into the logits against the CPU's numbers."""
    import interp
    from interp.tasks import ioi_examples

    real = res.setdefault("real", {})
    scores = {}
    for name in args.dtypes.split(","):
        (model, t_load) = sync_time(lambda: interp.load_model(device=dev, dtype=name))
        prompts = ioi_examples(model, n=N_PROMPTS, seed=0)
        all_edges = E.edges(model.cfg, [E.Receiver("logits")] if args.real_logits_only else None)
        floor = edge_floor(model.cfg, all_edges, len(prompts), prompts.n_pos)
        st = real.setdefault(name, {"load_s": t_load, "prompts": f"{len(prompts)}x{prompts.n_pos}",
                                    "floor_pflop": floor / 1e15})
        say(f"real {name}: loaded in {t_load:.1f} s; {len(all_edges)} edges, prompts {st['prompts']}")
        save()
        try:
            first, t1 = sync_time(lambda: edge_patch(model, prompts, all_edges, verify=2, progress=False))
            st.update(first_s_with_self_check=t1, verified=first.meta["verified"])
            say(f"real {name}: every edge, first run with its self-check {t1:.2f} s: {first.meta['verified']}")
        except InterpError as exc:  # the self-check refused: recorded, and the sweep timed without it
            st["self_check_refused"] = str(exc)
            say(f"real {name}: the self-check refused: {exc}")
            _, t1 = sync_time(lambda: edge_patch(model, prompts, all_edges, verify=0, progress=False))
            st["first_s"] = t1
        save()
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
        out, t2 = sync_time(lambda: edge_patch(model, prompts, all_edges, verify=0, progress=False))
        st.update(n_edges=len(all_edges), s=t2, edges_per_s=len(all_edges) / t2, tflops=floor / t2 / 1e12, max_abs_score=float(out.values.abs().max()),
                  peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30 if CUDA else None,
                  clean=out.clean, corrupted=out.corrupted)
        scores[name] = out.values
        say(f"real {name}: every edge {t2:.2f} s ({len(all_edges) / t2:.0f} edges/s, {floor / t2 / 1e12:.1f} TFLOP/s of the floor)")
        save()
        if name == "float32":
            if args.n_ref:
                st["reference"] = reference_sample(model, prompts, all_edges, out.values, args.n_ref)
                say(f"real {name} reference:", st["reference"])
            if args.cpu_reference is not None and args.cpu_reference.exists():
                cpu = torch.tensor(json.loads(args.cpu_reference.read_text())["edges_logits"])
                mine = out.values[[i for i, e in enumerate(all_edges) if e.receiver.kind == "logits"]]
                st["logits_edges_vs_cpu"] = {"n": len(cpu), "max_abs_diff": float((mine - cpu).abs().max()),
                                             "max_abs": float(cpu.abs().max())}
                say(f"real {name} edges into the logits vs the CPU:", st["logits_edges_vs_cpu"])
            save()
        del model
    if "float32" in scores and "bfloat16" in scores:
        real["bf16_vs_fp32"] = compare(scores["float32"], scores["bfloat16"])
        say("real bf16 vs fp32:", real["bf16_vs_fp32"])
        save()


def random_stage(args, res: dict, save, dev: str) -> None:
    """Random weights of the SmolLM2 shape: the profile (``--profile``), every edge timed per dtype,
    the old loop once (``--legacy``), bf16 against fp32, a sample against the hooked reference."""
    SHAPE = args.shape
    models, scores = {}, {}
    for name in args.dtypes.split(","):
        dtype = getattr(torch, name)
        models[name] = random_model(SHAPE, dev, dtype, seed=0)
    m0 = next(iter(models.values()))
    prompts = random_prompts(m0, N_PROMPTS, N_POS, seed=0, ragged=True)
    cfg = m0.cfg
    all_edges = E.edges(cfg)
    floor = edge_floor(cfg, all_edges, N_PROMPTS, N_POS)
    res.update(n_edges=len(all_edges), floor_pflop=floor / 1e15)
    say(f"{SHAPE}: {len(all_edges)} edges, {N_PROMPTS}x{N_POS} prompts, FLOP floor {floor / 1e15:.3f} PFLOP")
    save()

    if args.profile:
        sub = E.edges(cfg, [r for r in E.receivers(cfg) if r.kind == "logits" or 10 <= r.layer <= 12])
        res["profile"] = {"n_edges": len(sub), "floor_tflop": edge_floor(cfg, sub, N_PROMPTS, N_POS) / 1e12}
        from torch.profiler import ProfilerActivity, profile
        for name, model in models.items():
            lm = min(11, cfg.n_layers - 1)
            small = E.edges(cfg, [E.Receiver("logits"), E.Receiver("q", lm, 0), E.Receiver("k", lm, 0),
                                  E.Receiver("mlp", lm)])
            for which in ("legacy", "batched"):
                sweep = EdgeSweep(model, prompts)
                run = ((lambda es: legacy_run(sweep, es)) if which == "legacy"
                       else (lambda es: sweep.run(es, progress=False, max_edges=args.max_edges)))
                _, warm = sync_time(lambda: run(small))  # compiles the kernels
                t = None
                if which == "batched":  # the legacy path is timed under the profiler only (it is slow)
                    _, t = sync_time(lambda: run(sub))
                with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if CUDA else [])) as prof:
                    _, tp = sync_time(lambda: run(sub))
                ops = top_ops(prof)
                res["profile"][f"{name}/{which}"] = {"warm_small_s": warm, "s": t, "profiled_s": tp,
                                                     "edges_per_s": len(sub) / (t or tp), **ops}
                say(f"profile {name} {which}: {t or tp:.3f} s ({len(sub) / (t or tp):.0f} edges/s; profiled {tp:.2f} s); "
                    f"kernels {ops['kernel_ms_total'] / 1e3:.3f} s ({ops['n_kernels']} launches)")
                for r in ops["kernels_by_gpu"][:10]:
                    say(f"   {r['self_gpu_ms']:9.1f} ms  {r['calls']:7d}x  {r['op'][:90]}")
                save()

    for name, model in models.items():
        st = res.setdefault("runs", {}).setdefault(name, {})
        sweep = EdgeSweep(model, prompts)
        chunk = sweep.engine._chunk_size(N_POS) if args.max_edges is None else args.max_edges
        plan = sweep.plan(all_edges, chunk)
        st.update(chunks=len(plan), edges_per_chunk=chunk)
        sync()
        t0 = time.perf_counter()
        done = 0
        sweep.sender_deltas()
        rows = torch.tensor([sweep._sender_row[e.sender] for e in all_edges])
        with torch.no_grad():
            for pieces in plan:
                idx = [i for _, p in pieces for i in p]
                sweep._run_chunk(pieces, rows[idx].to(dev))
                sync()
                done += len(idx)
                if time.perf_counter() - t0 > args.limit:
                    break
        t = time.perf_counter() - t0
        st.update(warmup_s=t, warmup_edges=done, warmup_edges_per_s=done / t, finished=done == len(all_edges))
        say(f"{name}: warm-up {done}/{len(all_edges)} edges in {t:.1f} s ({done / t:.0f} edges/s), {len(plan)} chunks of {chunk}")
        save()
        if done < len(all_edges):
            continue
        times = []
        for k in range(args.repeats):
            if CUDA:
                torch.cuda.reset_peak_memory_stats()
            out, dt = sync_time(lambda: edge_patch(model, prompts, verify=0, progress=False, memory_budget=None))
            times.append(dt)
            st.update(times_s=times, peak_gib=torch.cuda.max_memory_allocated() / 2 ** 30 if CUDA else None)
            say(f"{name}: run {k + 1}: {dt:.2f} s, peak {st['peak_gib']} GiB")
            save()
        med = statistics.median(times)
        st.update(median_s=med, edges_per_s=len(all_edges) / med, tflops=floor / med / 1e12,
                  max_abs_score=float(out.values.abs().max()))
        scores[name] = out.values
        say(f"{name}: median {med:.2f} s, {len(all_edges) / med:.0f} edges/s, {floor / med / 1e12:.1f} TFLOP/s of the floor")
        _, vt = sync_time(lambda: edge_patch(model, prompts, E.edges(cfg, [E.Receiver("logits")]), verify=2, progress=False))
        st["self_check_2_edges_s"] = vt
        save()
        if args.legacy:
            sweep = EdgeSweep(model, prompts)
            t0 = time.perf_counter()
            old, lt = sync_time(lambda: legacy_run(sweep, all_edges, deadline=t0 + args.limit))
            n_old = int(torch.isfinite(old).sum())
            st["legacy"] = {"s": lt, "edges": n_old, "edges_per_s": n_old / lt,
                            "max_abs_diff_vs_batched": float((old - out.values).abs().nan_to_num(0).max())}
            say(f"{name}: the old per-receiver loop: {n_old} edges in {lt:.1f} s ({n_old / lt:.0f} edges/s)")
            save()

    if "float32" in scores and "bfloat16" in scores:
        a, b = scores["float32"], scores["bfloat16"]
        res["bf16_vs_fp32"] = compare(a, b)
        say("bf16 vs fp32:", res["bf16_vs_fp32"])
        save()

    if "float32" in scores and args.n_ref:
        res["reference"] = reference_sample(models["float32"], prompts, all_edges, scores["float32"], args.n_ref)
        say("reference:", res["reference"])
        save()


if __name__ == "__main__":
    sys.exit(main())
