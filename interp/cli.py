"""The ``interp`` command. Every subcommand prints one clear line and exits 2 on bad input.

    interp models
    interp patch --prompts p.jsonl --component head_out [--by-pos] [--out r.json] [--workers 2]
    interp dla --prompts p.jsonl
    interp edges --prompts p.jsonl [--method exact|eap|eap-ig] [--receivers logits,L23H3.q] [--top N] --out g.json
    interp ablate --prompts p.jsonl --heads 9.6,10.0 --mode mean
    interp reproduce quickstart --out reports
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
from pathlib import Path

from interp.errors import InterpError

COMPONENT_CHOICES = ["resid_pre", "attn_out", "mlp_out", "head_out", "head_q", "head_k", "head_v", "head_pattern"]
ANALYSES = ["quickstart", "ioi", "circuit-reuse", "correct-letter", "retrieval-heads", "safety-heads", "edges",
            "papers", "all"]


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _non_negative(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return int(text)


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

    p = sub.add_parser("models", help="the registered models and whether their weights are installed")
    p.add_argument("--prepare", nargs="*", metavar="KEY", default=None,
                   help="de-quantise these registered models' weights (none named: every installed one) into "
                        "the cache now; set-up does this once, so that no analysis or test waits for it")

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
    p.add_argument("--verify", type=_non_negative, default=2, metavar="K",
                   help="re-run K random cells of a batched sweep through the reference loop and refuse "
                        "the result if one disagrees (default 2; 0: off); the JSON's \"verified\" says how it went")

    p = sub.add_parser("dla", help="direct logit attribution of answer - distractor at the last position")
    _add_prompts_arg(p)
    _add_model_args(p, device=True)

    p = sub.add_parser("edges", help="edge scores (exact edge patching, EAP or EAP-IG) as an interp.circuit/1 graph")
    p.add_argument("--prompts", required=True, type=Path,
                   help='JSONL: one {"clean", "corrupted", "answer", "distractor"} per line')
    p.add_argument("--out", type=Path, required=True, help="the circuit file to write (interp.circuit/1)")
    p.add_argument("--method", default="exact", choices=["exact", "eap", "eap-ig", "eap-ig-activations", "atp"])
    p.add_argument("--direction", default="denoise", choices=["denoise", "noise"])
    p.add_argument("--top", type=_non_negative, default=None, metavar="N", help="keep the N edges with the largest |score|")
    p.add_argument("--receivers", default=None,
                   help="only the edges into these receivers, e.g. logits,L23H3.q,MLP7 (default: every edge)")
    p.add_argument("--steps", type=_non_negative, default=5, help="EAP-IG: points on the integration path")
    _add_model_args(p, device=True)

    p = sub.add_parser("ablate", help="the metric with some heads ablated, and without")
    _add_prompts_arg(p)
    p.add_argument("--heads", required=True, help="LAYER.HEAD list, e.g. 9.6,10.0")
    p.add_argument("--mode", default="zero", choices=["zero", "mean", "ua", "sc"])
    _add_model_args(p, device=True)

    p = sub.add_parser("bench", help="the batched engine vs TransformerLens's patching loop (BENCHMARKS.md)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--shapes", default="gpt2-small,smollm2-135m,qwen2.5-0.5b,llama-2-7b",
                   help="GPU only: random-weight architectures to time")
    p.add_argument("--seqs", default="16,64", help="GPU only: prompt lengths")
    p.add_argument("--kernels", action="store_true", help="GPU only: also time each Triton kernel vs its reference")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"], help="GPU only")

    p = sub.add_parser("reproduce", help="run a paper analysis end to end and write a report")
    p.add_argument("analysis", choices=ANALYSES,
                   help="one analysis; papers: the five paper reproductions (what make run runs); all: every analysis")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_const", dest="setting", const="quick",
                      help="the smallest setting (for tests and a first look)")
    size.add_argument("--full", action="store_const", dest="setting", const="full",
                      help="the paper-scale setting on this CPU (hours: README)")
    p.set_defaults(setting="standard")
    p.add_argument("--out", type=Path, default=Path("reports"))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda runs an analysis's GPU setting (safety-heads: the paper's scale)")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute analyses already finished with the same model, settings and code")
    p.add_argument("--jobs", type=_non_negative, default=None, metavar="N",
                   help="analyses run side by side in N worker processes (default: one per CPU core, up to 4; "
                        "1 on a GPU)")
    _add_model_args(p)
    return parser


# ------------------------------------------------------------------------- checks before work
def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (what a mkdir -p would start from)."""
    path = path.absolute()
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    return path


def _check_writable_folder(folder: Path, flag: str, path: Path) -> None:
    """``folder`` exists as a folder we may write in, or could be created in one."""
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise InterpError(f"{flag} {path}: {base} is a file, not a folder; choose another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise InterpError(f"{flag} {path}: no permission to write in {base}; choose another path")


def _check_out_file(path: Path | None, flag: str = "--out") -> None:
    """An output file we can write: not a folder, in a folder that exists or can be created."""
    if path is None:
        return
    if path.is_dir():
        raise InterpError(f"{flag} {path} is a folder; give a file path, e.g. {path / 'result.json'}")
    _check_writable_folder(path.parent, flag, path)


def _check_out_folder(path: Path, flag: str = "--out") -> None:
    """An output folder we can write in (created if missing): not an existing file."""
    if path.exists() and not path.is_dir():
        raise InterpError(f"{flag} {path} is a file; reports go into a folder: give a folder path")
    _check_writable_folder(path, flag, path)


def _check_checkpoint(path: Path) -> None:
    """A checkpoint file in a folder that exists and that we may write in; an existing one must be
    readable (the sweep resumes from it)."""
    if path.is_dir():
        raise InterpError(f"--checkpoint {path} is a folder; give a file path, e.g. {path / 'sweep.ckpt'}")
    folder = path.absolute().parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise InterpError(f"--checkpoint {path}: {folder} {what}; create the folder first or choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InterpError(f"--checkpoint {path}: no permission to write in {folder}; choose another path")
    if path.exists() and not os.access(path, os.R_OK | os.W_OK):
        raise InterpError(f"--checkpoint {path}: no permission to read and write it; choose another path")


def _registered_tokenizer(key: str | None):
    """(tokenizer, prepend_bos, limits) of a registered model, read without its weights (about half
    a second, against 5-10 s for the model) so that prompts are checked before the model loads;
    ``limits.cfg`` has the n_ctx and d_vocab of its config.json, for ``check_prompts``. All None for
    a local folder or hub name: their prompts are checked once the model is loaded. An unknown key
    raises UnknownModelError here."""
    from types import SimpleNamespace

    from interp.models import _quiet, hf_folder, resolve_spec

    spec = resolve_spec(key)
    if spec is None:
        return None, None, None
    from transformers import AutoConfig, AutoTokenizer

    folder = hf_folder(spec)
    with _quiet():
        tokenizer, config = AutoTokenizer.from_pretrained(folder), AutoConfig.from_pretrained(folder)
    limits = SimpleNamespace(cfg=SimpleNamespace(n_ctx=config.max_position_embeddings, d_vocab=config.vocab_size))
    return tokenizer, spec.prepend_bos, limits


def _load(args):
    """Check what a prompts command was given, cheapest first, then load the model.

    In order: the output and checkpoint paths; the prompts file (UTF-8, one JSON object per line,
    the four fields as strings); the model name and device; tokenization (one-token answers, equal
    clean/corrupted lengths, context length and vocabulary from config.json) with the tokenizer
    alone; then the model, and the same checks against the loaded model's own tokenizer and config.
    Nothing runs a forward before all of them pass.
    """
    import torch

    from interp.models import load_model
    from interp.tasks.prompts import PromptSet, check_prompts, read_prompts_jsonl

    _check_out_file(args.out)
    if getattr(args, "checkpoint", None) is not None:
        _check_checkpoint(args.checkpoint)
    if not args.prompts.exists():
        raise InterpError(f"prompts file not found: {args.prompts}")
    examples, names = read_prompts_jsonl(args.prompts)
    device = getattr(args, "device", "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InterpError("--device cuda requested but no CUDA device is available; use --device cpu")
    tokenizer, prepend_bos, limits = _registered_tokenizer(args.model)
    if tokenizer is not None:
        check_prompts(limits, PromptSet.from_examples(tokenizer, examples, prepend_bos=prepend_bos, names=names), names)
    model = load_model(args.model, device=device, dtype=getattr(args, "dtype", None))
    prompts = PromptSet.from_examples(model.tokenizer, examples, prepend_bos=bool(model.cfg.default_prepend_bos),
                                      names=names)
    check_prompts(model, prompts, names)
    return model, prompts.to(model.cfg.device)


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file in ``path``'s folder and rename it over ``path``: an
    interrupted write leaves the old file (or none), never half a file. A path that is not a
    regular file (/dev/null, a pipe) is written directly; a symlink is written through."""
    path = Path(os.path.realpath(path))
    if path.exists() and not path.is_file():
        with open(path, "w") as f:
            f.write(text)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; give it an ordinary file's mode
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _emit(obj: dict, out: Path | None) -> None:
    text = json.dumps(obj)
    if out is None:
        print(text)
        return
    try:
        _write_atomic(out, text)
    except OSError as exc:
        raise InterpError(f"cannot write {out}: {exc.strerror or exc}") from None
    print(f"wrote {out}", file=sys.stderr)


def cmd_models(args) -> None:
    import time

    from interp.models import DEFAULT_MODEL, REGISTRY, cached_folder, hf_folder, weights_present

    if args.prepare is not None:
        unknown = [k for k in args.prepare if k not in REGISTRY]
        if unknown:
            raise InterpError(f"unknown model {unknown[0]!r}: registered models are {', '.join(REGISTRY)}")
        for key, spec in REGISTRY.items():
            if weights_present(spec) and (not args.prepare or key in args.prepare):
                t = time.time()
                hf_folder(spec)  # verifies the cache; builds it when missing or damaged
                print(f"{key}: de-quantised weights ready in {time.time() - t:.0f} s ({cached_folder(spec)})",
                      file=sys.stderr)
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
        result = patch(model, prompts, args.component, by_pos=args.by_pos, checkpoint=args.checkpoint,
                       verify=args.verify)
    else:
        if args.workers < 1:
            raise InterpError(f"--workers must be >= 1, got {args.workers}")
        from interp.distributed import sweep_patch_distributed

        # The driver's copy only tokenizes the prompts (on the CPU); the workers load their own.
        model, prompts = _load(argparse.Namespace(**{**vars(args), "device": "cpu", "dtype": None}))
        result = sweep_patch_distributed(args.model, prompts, args.component, by_pos=args.by_pos,
                                         workers=args.workers, device=args.device, dtype=args.dtype,
                                         address=args.ray_address, checkpoint=args.checkpoint,
                                         verify=args.verify)
    _emit({"component": args.component, "metric": "logit_diff", "axes": list(result.axes),
           "values": result.values.tolist(), "clean": result.clean, "corrupted": result.corrupted,
           "model": model.interp_key, "n_prompts": len(prompts), "engine": result.meta["engine"],
           "verified": result.meta["verified"]}, args.out)


def cmd_dla(args) -> None:
    from interp.attribution import direct_logit_attribution

    model, prompts = _load(args)
    dla = direct_logit_attribution(model, prompts)
    _emit({**dla.to_dict(), "metric": "logit_diff", "model": model.interp_key, "n_prompts": len(prompts)}, args.out)


RECEIVER = r"(logits|MLP\d+|L\d+H\d+\.[qkv])"


def cmd_edges(args) -> None:
    import re

    from interp import edges as E
    from interp.edge_attribution import edge_attribution
    from interp.edge_sweep import edge_patch

    names = None
    if args.receivers is not None:
        names = [x.strip() for x in args.receivers.split(",") if x.strip()]
        bad = [x for x in names if not re.fullmatch(RECEIVER, x)]
        if bad or not names:
            raise InterpError(f"bad receiver {bad[0] if bad else args.receivers!r}: write logits, MLP{{layer}} or "
                              "L{layer}H{head}.q|k|v, separated by commas")
    if args.steps < 1:
        raise InterpError("--steps must be at least 1")
    model, prompts = _load(args)
    receivers = None if names is None else [E.parse_receiver(model.cfg, x) for x in names]
    edges_ = E.edges(model.cfg, receivers)
    if args.method == "exact":
        scores = edge_patch(model, prompts, edges_, direction=args.direction)
    else:
        scores = edge_attribution(model, prompts, edges_, args.method, args.direction, steps=args.steps)
    circuit = scores.to_circuit(model.interp_key, "edges of the prompts' task", top=args.top,
                                n_prompts=len(prompts), ablation=f"edge patching ({args.direction})")
    _write_circuit(circuit, args.out)
    print(f"wrote {args.out}: {len(circuit.edges)} of {len(edges_)} edges ({scores.method})", file=sys.stderr)


def _write_circuit(circuit, out: Path) -> None:
    import os

    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    circuit.save(tmp)
    os.replace(tmp, out)


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
    from interp.reports import runner

    names = {"all": list(runner.ANALYSES), "papers": list(runner.PAPERS)}.get(args.analysis, [args.analysis])
    _check_out_folder(args.out)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise InterpError("--device cuda requested but no CUDA device is available")
    for name in names:  # every setting checked before the first analysis starts
        runner.settings_of(name, args.setting, args.device)
    if args.jobs == 0:
        raise InterpError("--jobs must be at least 1")
    pages = runner.reproduce_all(names, args.out, args.setting, args.model, args.device,
                                 use_cache=not args.no_cache, jobs=args.jobs)
    print(f"index: {Path(args.out) / 'index.html'}")
    return pages


def _parse_seqs(text: str) -> tuple[int, ...]:
    """"16,64" -> (16, 64): positive prompt lengths."""
    try:
        seqs = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        seqs = ()
    if not seqs or min(seqs) < 1:
        raise InterpError(f"--seqs takes positive whole numbers separated by commas (e.g. 16,64), got {text!r}")
    return seqs


def _parse_shapes(text: str, known) -> list[str]:
    """"gpt2-small,llama-2-7b" -> the names, each one of ``known``."""
    shapes = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in shapes if s not in known]
    if unknown or not shapes:
        what = f"unknown shape {unknown[0]!r}" if unknown else "no shape"
        raise InterpError(f"{what} in --shapes: use one or more of {', '.join(known)}, separated by commas")
    return shapes


def cmd_bench(args) -> None:
    import torch

    from interp import bench

    shapes, seqs = _parse_shapes(args.shapes, bench.SHAPES), _parse_seqs(args.seqs)  # both, on any device
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise InterpError("--device cuda requested but no CUDA device is available")
        if args.kernels:
            print("| kernel | dtype | shape | PyTorch us | Triton us | speed-up |\n|---|---|---|---|---|---|")
            bench.bench_kernels("cuda")
        print(bench.HEADER)
        bench.run_gpu(shapes, seqs, dtype=getattr(torch, args.dtype))
    else:
        print(bench.HEADER)
        bench.run_cpu()
    print("(* = TransformerLens time extrapolated from a sample of cells; time vs floor = how many "
          "times the FLOP floor at 790 TFLOP/s our run takes)")


COMMANDS = {"models": cmd_models, "patch": cmd_patch, "dla": cmd_dla, "edges": cmd_edges, "ablate": cmd_ablate,
            "reproduce": cmd_reproduce, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except InterpError as exc:
        message = "; ".join([str(exc), *getattr(exc, "__notes__", [])])  # (a note: a checkpoint set aside)
        print(f"interp {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interp {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
