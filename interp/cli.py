"""The ``interp`` command. Every subcommand prints one clear line and exits 2 on bad input.

    interp models
    interp patch --prompts p.jsonl --component head_out [--by-pos] [--out r.json] [--workers 2]
    interp dla --prompts p.jsonl
    interp ablate --prompts p.jsonl --heads 9.6,10.0 --mode mean
    interp reproduce quickstart --out reports
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from interp.errors import InterpError

COMPONENT_CHOICES = ["resid_pre", "attn_out", "mlp_out", "head_out", "head_q", "head_k", "head_v", "head_pattern"]
ANALYSES = ["quickstart", "ioi", "circuit-reuse", "safety-heads", "retrieval-heads", "correct-letter", "all"]
AVAILABLE_ANALYSES = ["quickstart", "ioi", "circuit-reuse", "safety-heads", "retrieval-heads", "correct-letter"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_model_args(p: argparse.ArgumentParser, device: bool = False) -> None:
    p.add_argument("--model", default=None, help="registered key, local folder or hub name (default: the default model)")
    if device:
        p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
        p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


def _add_prompts_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompts", required=True, type=Path,
                   help='JSONL: one {"clean", "corrupted", "answer", "distractor"} per line')
    p.add_argument("--out", type=Path, default=None, help="write the JSON result here (default: stdout)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="interp", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    sub.add_parser("models", help="the registered models and whether their weights are installed")

    p = sub.add_parser("patch", help="activation patching sweep (TransformerLens semantics)")
    _add_prompts_arg(p)
    p.add_argument("--component", required=True, choices=COMPONENT_CHOICES)
    p.add_argument("--by-pos", action="store_true", help="patch one position at a time")
    _add_model_args(p, device=True)
    p.add_argument("--checkpoint", type=Path, default=None,
                   help="save finished chunks here; rerunning with the same file resumes the sweep")
    p.add_argument("--workers", type=int, default=None,
                   help="run the sweep on N Ray workers, one model replica each (docs/ray.md)")
    p.add_argument("--ray-address", default=None,
                   help="with --workers: join this Ray cluster (auto or HOST:PORT) instead of starting one")

    p = sub.add_parser("dla", help="direct logit attribution of answer - distractor at the last position")
    _add_prompts_arg(p)
    _add_model_args(p)

    p = sub.add_parser("ablate", help="the metric with some heads ablated, and without")
    _add_prompts_arg(p)
    p.add_argument("--heads", required=True, help="LAYER.HEAD list, e.g. 9.6,10.0")
    p.add_argument("--mode", default="zero", choices=["zero", "mean", "ua", "sc"])
    _add_model_args(p)

    p = sub.add_parser("bench", help="the batched engine vs TransformerLens's patching loop (BENCHMARKS.md)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--shapes", default="gpt2-small,smollm2-135m,qwen2.5-0.5b,llama-2-7b",
                   help="GPU only: random-weight architectures to time")
    p.add_argument("--seqs", default="16,64", help="GPU only: prompt lengths")
    p.add_argument("--kernels", action="store_true", help="GPU only: also time each Triton kernel vs its reference")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="GPU only")

    p = sub.add_parser("reproduce", help="run a paper analysis end to end and write a report")
    p.add_argument("analysis", choices=ANALYSES)
    p.add_argument("--quick", action="store_true", help="the small setting (minutes on a CPU)")
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="safety-heads only: cuda runs the paper-scale setting (all requests, every Sahara candidate)")
    _add_model_args(p)
    return parser


def _load(args):
    from interp.models import load_model
    from interp.tasks.prompts import PromptSet

    if not args.prompts.is_file():
        raise InterpError(f"prompts file not found: {args.prompts}")
    model = load_model(args.model, device=getattr(args, "device", "cpu"), dtype=getattr(args, "dtype", None))
    prompts = PromptSet.from_jsonl(args.prompts, model.tokenizer, prepend_bos=bool(model.cfg.default_prepend_bos))
    return model, prompts.to(model.cfg.device)


def _emit(obj: dict, out: Path | None) -> None:
    text = json.dumps(obj)
    if out is None:
        print(text)
    else:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        print(f"wrote {out}", file=sys.stderr)


def cmd_models(args) -> None:
    from interp.models import DEFAULT_MODEL, REGISTRY, cached_folder, weights_present

    for key, spec in REGISTRY.items():
        present = weights_present(spec)
        mark = "*" if key == DEFAULT_MODEL else " "
        state = "weights installed" if present else f"weights missing: {spec.install_command}"
        cached = " (de-quantised cache ready)" if present and cached_folder(spec).is_dir() else ""
        print(f"{mark} {key:30s} {state}{cached}\n    {spec.title}")
    print(f"(* = default: {DEFAULT_MODEL})")


def cmd_patch(args) -> None:
    from interp.patching import patch

    if args.workers is None:
        if args.ray_address is not None:
            raise InterpError("--ray-address needs --workers N")
        model, prompts = _load(args)
        result = patch(model, prompts, args.component, by_pos=args.by_pos, checkpoint=args.checkpoint)
    else:
        from interp.distributed import sweep_patch_distributed

        if args.workers < 1:
            raise InterpError(f"--workers must be >= 1, got {args.workers}")
        # The driver's copy only tokenizes the prompts (on the CPU); the workers load their own.
        model, prompts = _load(argparse.Namespace(**{**vars(args), "device": "cpu", "dtype": None}))
        result = sweep_patch_distributed(args.model, prompts, args.component, by_pos=args.by_pos,
                                         workers=args.workers, device=args.device, dtype=args.dtype,
                                         address=args.ray_address, checkpoint=args.checkpoint)
    _emit({"component": args.component, "metric": "logit_diff", "axes": list(result.axes),
           "values": result.values.tolist(), "clean": result.clean, "corrupted": result.corrupted,
           "model": model.interp_key, "n_prompts": len(prompts)}, args.out)


def cmd_dla(args) -> None:
    from interp.attribution import direct_logit_attribution

    model, prompts = _load(args)
    dla = direct_logit_attribution(model, prompts)
    _emit({**dla.to_dict(), "metric": "logit_diff", "model": model.interp_key, "n_prompts": len(prompts)}, args.out)


def cmd_ablate(args) -> None:
    import torch

    from interp.ablation import ablation_hooks
    from interp.hooks import parse_heads
    from interp.metrics import logit_diff

    heads = parse_heads(args.heads)
    model, prompts = _load(args)
    hooks = ablation_hooks(model, heads, args.mode, reference=prompts, groups=prompts.groups)
    with torch.no_grad():
        baseline = logit_diff(model(prompts.clean_tokens), prompts).mean()
        ablated = logit_diff(model.run_with_hooks(prompts.clean_tokens, fwd_hooks=hooks), prompts).mean()
    _emit({"heads": [f"{l}.{h}" for l, h in heads], "mode": args.mode, "metric": "logit_diff",
           "baseline": float(baseline), "ablated": float(ablated), "model": model.interp_key,
           "n_prompts": len(prompts)}, args.out)


def cmd_reproduce(args) -> None:
    from interp import report

    names = AVAILABLE_ANALYSES if args.analysis == "all" else [args.analysis]
    if args.analysis not in AVAILABLE_ANALYSES + ["all"]:
        raise InterpError(f"analysis {args.analysis!r} is not implemented yet; available: {', '.join(AVAILABLE_ANALYSES)}")
    reports = {}
    for name in names:
        reports[name] = _run_analysis(name, args)
        print(f"{name}: {reports[name]}")
    print(f"index: {report.write_index(args.out, reports)}")


def _run_analysis(name: str, args):
    """Run one analysis by name; returns the path of its report."""
    from interp import report
    from interp.reports.circuit_reuse import circuit_reuse_report
    from interp.reports.correct_letter import correct_letter_report
    from interp.reports.ioi import ioi_report
    from interp.reports.retrieval_heads import retrieval_heads_report

    out = str(args.out)
    device = getattr(args, "device", "cpu")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InterpError("--device cuda requested but no CUDA device is available")
        if name != "safety-heads":
            raise InterpError(f"--device cuda is supported by safety-heads only; run {name} on the CPU")
    if name == "safety-heads":
        from interp.reports.safety_heads import safety_heads_report

        return safety_heads_report(args.model, out_dir=out, quick=args.quick, device=device)
    if name == "quickstart":
        return report.quickstart(args.model, out_dir=out, quick=args.quick)
    if name == "ioi":
        return ioi_report(args.model, out_dir=out, quick=args.quick)
    if name == "retrieval-heads":
        return retrieval_heads_report(args.model, out_dir=out, quick=args.quick)
    if name == "correct-letter":
        return correct_letter_report(args.model, out_dir=out, quick=args.quick)
    return circuit_reuse_report([args.model] if args.model else None, out_dir=out, quick=args.quick)


def cmd_bench(args) -> None:
    import torch

    from interp import bench

    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise InterpError("--device cuda requested but no CUDA device is available")
        if args.kernels:
            print("| kernel | dtype | shape | PyTorch us | Triton us | speed-up |\n|---|---|---|---|---|---|")
            bench.bench_kernels("cuda")
        shapes = [s for s in args.shapes.split(",") if s]
        unknown = [s for s in shapes if s not in bench.SHAPES]
        if unknown:
            raise InterpError(f"unknown shape {unknown[0]!r}: use {', '.join(bench.SHAPES)}")
        print(bench.HEADER)
        bench.run_gpu(shapes, tuple(int(x) for x in args.seqs.split(",")), dtype=getattr(torch, args.dtype))
    else:
        print(bench.HEADER)
        bench.run_cpu()
    print("(* = TransformerLens time extrapolated from a sample of cells; time vs floor = how many "
          "times the FLOP floor at 790 TFLOP/s our run takes)")


COMMANDS = {"models": cmd_models, "patch": cmd_patch, "dla": cmd_dla, "ablate": cmd_ablate,
            "reproduce": cmd_reproduce, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except InterpError as exc:
        print(f"interp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interp {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
