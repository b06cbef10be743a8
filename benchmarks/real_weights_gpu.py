"""Real weights on a GPU (SmolLM2-135M-Instruct, or ``--model KEY``): agreement with the CPU, and
every edge exactly.

    python benchmarks/real_weights_gpu.py --reference ref.json        # on the CPU: the reference numbers
    python benchmarks/real_weights_gpu.py --out d                     # on the GPU (weights installed)
    python benchmarks/real_weights_gpu.py --model qwen2.5-coder-0.5b-instruct --reference ref.json  # etc.

On 16 IOI prompts (``interp.tasks.ioi_examples(model, 16, seed=0)``, the same on both machines):

1. ``interp.patch`` (head_out, all positions) and ``interp.direct_logit_attribution`` per head,
   and the exact scores of the 271 edges into the logits: the GPU's fp32 and bf16 numbers
   against the CPU's fp32 ones (max abs difference);
2. exact edge patching of every edge of the model (70,651 edges), fp32 and bf16, timed (the first
   run includes the kernels' compilation, the second does not), the bf16 scores against fp32;
3. EAP, EAP-IG (inputs, 5 steps), EAP-IG on activations and node-level AtP on every edge,
   audited against the exact scores (Spearman, Kendall, top-k overlap), and the faithfulness
   curves of the circuits each ranking picks (MIB's CPR and CMD) over all edges.

Writes ``edges.json`` (every method's score of every edge) and ``summary.json`` into ``--out``
and prints a table last.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import interp
from interp import edges as E
from interp.edge_attribution import edge_attribution
from interp.edge_circuits import faithfulness_curve
from interp.edge_sweep import edge_patch
from interp.errors import InterpError
from interp.methods.edge_audit import audit
from interp.tasks import ioi_examples

N_PROMPTS = 16
METHODS = ("eap", "eap-ig", "eap-ig-activations", "atp")
FRACTIONS = (0.0, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def agreement_numbers(model, prompts) -> dict:
    """The numbers compared across machines: head patching, DLA per head, edges into the logits."""
    res = interp.patch(model, prompts, "head_out", progress=False)
    dla = interp.direct_logit_attribution(model, prompts)
    logits = edge_patch(model, prompts, E.edges(model.cfg, [E.Receiver("logits")]), progress=False)
    return {"patch_head_out": res.values.float().cpu().tolist(), "dla_heads": dla.heads.values.float().cpu().tolist(),
            "edges_logits": logits.values.tolist()}


def timed(fn):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn()
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def save(folder: Path, name: str, obj) -> None:
    (folder / name).write_text(json.dumps(obj, default=str))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reference", type=Path, help="CPU: write the reference numbers here and stop")
    ap.add_argument("--out", type=Path, default=Path("gpu-edges"))
    ap.add_argument("--twice", action="store_true", help="time the fp32 sweep a second time")
    ap.add_argument("--model", default=None, help="a registered model key (default: SmolLM2-135M-Instruct)")
    args = ap.parse_args()

    if args.reference:
        model = interp.load_model(args.model)
        prompts = ioi_examples(model, n=N_PROMPTS, seed=0)
        args.reference.write_text(json.dumps(agreement_numbers(model, prompts)))
        print(f"wrote {args.reference}", file=sys.stderr)
        return

    # every stage writes its numbers as soon as it ends, so a run stopped early keeps what it did
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    model = interp.load_model(args.model, device="cuda", dtype="float32")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    prompts = ioi_examples(model, n=N_PROMPTS, seed=0)
    ours, t = timed(lambda: agreement_numbers(model, prompts))
    save(out, "agreement_float32.json", ours)
    print(f"agreement numbers (fp32): {t:.1f} s", flush=True)
    exact, t1 = timed(lambda: edge_patch(model, prompts, progress=False))
    print(f"exact, all {len(exact)} edges, fp32: {t1:.1f} s (first run); self-check {exact.meta.get('verified')}",
          flush=True)
    exact.save(out / "exact_float32.json")
    t2 = None
    if args.twice:  # the first run includes the kernels' compilation
        _, t2 = timed(lambda: edge_patch(model, prompts, progress=False))
        print(f"exact, all edges, fp32: {t2:.1f} s (second run)", flush=True)
    summary = {"device": torch.cuda.get_device_name(), "model": model.interp_key, "n_prompts": N_PROMPTS, "exact_fp32_s": [t1, t2],
               "verified": exact.meta.get("verified")}
    approxes = {}
    for method in METHODS:
        approx, t = timed(lambda: edge_attribution(model, prompts, None, method, progress=False))
        approxes[method] = approx
        approx.save(out / f"{method}.json")
        a = audit(exact, approx)
        summary[f"audit {method}"] = {**a, "seconds": t}
        print(f"{method} vs exact ({t:.1f} s): Spearman {a['spearman']:.3f}, Kendall {a['kendall']:.3f}, "
              "top-50/200/1000 overlap " + "/".join(f"{a['top_k_overlap'][k]:.2f}" for k in (50, 200, 1000)),
              flush=True)
        save(out, "summary.json", summary)
    bf16 = interp.load_model(args.model, device="cuda", dtype="bfloat16")
    bprompts = ioi_examples(bf16, n=N_PROMPTS, seed=0)
    try:
        low, t = timed(lambda: edge_patch(bf16, bprompts, progress=False))
        summary["bf16_self_check"] = low.meta.get("verified")
    except InterpError as exc:  # the self-check refused: recorded, and the sweep timed without it
        summary["bf16_self_check"] = f"refused: {exc}"
        print(f"bf16 self-check refused: {exc}", flush=True)
        low, t = timed(lambda: edge_patch(bf16, bprompts, progress=False, verify=0))
    low.save(out / "exact_bfloat16.json")
    d = (low.values - exact.values).abs()
    summary["exact_bf16_s"] = t
    summary["bf16_vs_fp32"] = [float(d.max()), float(d.mean()), float(exact.values.abs().max())]
    save(out, "summary.json", summary)
    print(f"exact, all edges, bf16: {t:.1f} s; vs fp32 max {float(d.max()):.2e} mean {float(d.mean()):.2e}",
          flush=True)
    try:
        save(out, "agreement_bfloat16.json", agreement_numbers(bf16, bprompts))
    except InterpError as exc:
        print(f"bf16 agreement numbers refused: {exc}", flush=True)
    del bf16
    curves = {"exact": faithfulness_curve(model, prompts, exact, FRACTIONS)}
    for method, approx in approxes.items():
        curves[method] = faithfulness_curve(model, prompts, approx, FRACTIONS)
    summary["curves"] = curves
    save(out, "summary.json", summary)
    print("curves: " + ", ".join(f"{m} CPR {c['cpr']:.3f} CMD {c['cmd']:.3f}" for m, c in curves.items()), flush=True)


if __name__ == "__main__":
    main()
