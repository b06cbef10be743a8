"""Benchmarks: the batched engine against TransformerLens's patching loop, in one run.

    interp bench                          # CPU: the real default model, 8 IOI prompts
    interp bench --device cuda            # GPU: random-weight models of the papers' shapes

Speed does not depend on weight values, so the GPU benchmark uses real architectures with random
weights (no weights can be brought to that machine). Each row times TransformerLens 4.3's
``patching.get_act_patch_attn_head_out_*`` and ``interp``'s engine on the same bridge and prompts,
checks they agree, and reports the FLOP floor of the exact recomputation (``floor_flops``), the achieved TFLOP/s
and the peak memory. Where a TransformerLens sweep would take too long its time per patched
forward is measured on a sample of cells and multiplied out (marked "extrapolated").

Our side is timed twice: the first call of a sweep (a new engine: its cached runs computed, the
sweep run eagerly) and the same sweep repeated (the engine kept on the model reuses its cached
runs and, on a GPU, replays the sweep as a CUDA graph; ``interp.graphs``). Both are medians of
``repeats`` calls with their min-max.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import torch

from interp.metrics import logit_diff
from interp.random_models import SHAPES, random_model, random_prompts  # noqa: F401 (re-exported)
from interp.tasks.prompts import PromptSet

def floor_flops(cfg, batch: int, n_pos: int, by_pos: bool, positions=None, attention: bool = True) -> float:
    """FLOPs of the exact recomputation a head-output sweep needs, layer by layer (by position: of
    the patches at ``positions``, default all): what "time vs floor" in BENCHMARKS.md divides by.

    A patch of head h at layer l recomputes layer l's MLP and every later layer, and two logits per
    example. By position (at p): layer l's MLP at position p alone (the head's output changed there
    only), the later layers at positions >= p (attending to all earlier keys).
    ``attention=False``: the matrix products with the weights alone, without attention's scores
    and weighted sums.

    Not the least work an exact method could do: three savings below it are known and not built.
    By position, the first recomputed layer's q/k/v products at positions > p read an unchanged
    residual stream (1-4% of the floor: GPT-2 small 4%, SmolLM2 1%, Llama-2-7B 1.5%); the last layer
    is needed at the answer position only (up to ~1/n_layers); an all-position patch changes nothing
    before the first position where the two prompts differ.
    """
    d, H, dh, L = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.n_layers
    Hkv = cfg.n_key_value_heads or H
    mlp = 2 * d * cfg.d_mlp * (3 if cfg.gated_mlp else 2)
    proj = 2 * d * dh * (2 * H + 2 * Hkv)
    total = 0.0
    for p0 in ((range(n_pos) if positions is None else positions) if by_pos else [0]):
        S = n_pos - p0
        ctx = sum(range(p0 + 1, n_pos + 1))  # keys seen by the recomputed queries
        attn_layer = S * proj + 4 * H * dh * ctx * attention
        for l in range(L):
            per_variant = (1 if by_pos else S) * mlp + (L - 1 - l) * (S * mlp + attn_layer) + 4 * d
            total += H * batch * per_variant
    return total


@dataclass
class Row:
    """One benchmark row: both sides timed ``repeats`` times in one run, and their accuracy.

    ``ours_err`` and ``tl_err`` are (mean, max) |value - fp32 truth| over the cells TransformerLens
    ran, for a 16-bit row: the truth is the fp32 sweep of the same weights (the 16-bit model holds
    the fp32 model's weights rounded), so they say how much each side loses to the dtype."""

    shape: str
    dtype: str
    batch: int
    n_pos: int
    sweep: str
    tl_times: list
    tl_extrapolated: bool
    ours_times: list
    max_abs_diff: float
    floor_tflop: float
    peak_gib: float
    ours_err: tuple | None = None
    tl_err: tuple | None = None
    first_times: list | None = None  # a new engine each call: no cached runs, no CUDA graph

    @property
    def tl_s(self) -> float:
        return statistics.median(self.tl_times)

    @property
    def ours_s(self) -> float:
        return statistics.median(self.ours_times)

    @property
    def speedup(self) -> float:
        return self.tl_s / self.ours_s

    @property
    def first_speedup(self) -> float | None:
        return self.tl_s / statistics.median(self.first_times) if self.first_times else None

    def markdown(self, peak_tflops: float | None) -> str:
        achieved = self.floor_tflop / self.ours_s
        vs_floor = f"{peak_tflops / achieved:.1f}x" if peak_tflops else "-"
        spread = lambda ts, f: f"{f(statistics.median(ts))} ({f(min(ts))}-{f(max(ts))})"  # noqa: E731
        tl = spread(self.tl_times, lambda x: f"{x:.2f}") + ("*" if self.tl_extrapolated else "")
        ours = spread(self.ours_times, lambda x: f"{x:.3f}")
        x = lambda r: f"{r:.1f}x" if r < 10 else f"{r:.0f}x"  # noqa: E731
        first = spread(self.first_times, lambda x: f"{x:.3f}") if self.first_times else "-"
        first_ratio = x(self.first_speedup) if self.first_times else "-"
        err = lambda e: "-" if e is None else f"{e[0]:.1e} / {e[1]:.1e}"  # noqa: E731
        return (f"| {self.shape} | {self.dtype} | {self.batch}x{self.n_pos} | {self.sweep} | {tl} | {first} | {ours} | "
                f"{first_ratio} | **{x(self.speedup)}** | {self.max_abs_diff:.1e} | {err(self.ours_err)} | {err(self.tl_err)} | "
                f"{self.floor_tflop:.3f} | {achieved:.2f} | {vs_floor} | {self.peak_gib:.1f} |")


HEADER = ("| model shape | dtype | prompts | sweep | TransformerLens s, median (min-max) "
          "| interp s, first call, median (min-max) | interp s, repeated, median (min-max) "
          "| speed-up, first call | speed-up, repeated | max abs diff | interp error vs fp32, mean / max "
          "| TransformerLens error vs fp32, mean / max "
          "| FLOP floor (TFLOP) | achieved TFLOP/s (repeated) | time vs floor (repeated) | peak GiB |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")


def host_cpu() -> str:
    """The host CPU's model name (small GPU sweeps are bound by host work: ratios move with it)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def _sync(device):
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _times(fn, device, repeats: int = 5):
    """Wall times of ``repeats`` runs of fn() after one warm-up (one run if the warm-up took over
    60 s); returns (seconds list, last result)."""
    _sync(device)
    t = time.perf_counter()
    out = fn()
    _sync(device)
    if time.perf_counter() - t > 60:
        repeats = 1
    times = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        out = fn()
        _sync(device)
        times.append(time.perf_counter() - t)
    return times, out


def _timed(fn, device, repeats: int = 3):
    """Median wall time of fn() (see ``_times``); returns (seconds, last result)."""
    times, out = _times(fn, device, repeats)
    return statistics.median(times), out


def bench_sweep(model, prompts: PromptSet, by_pos: bool, max_tl_cells: int | None = None, repeats: int = 5,
                truth: torch.Tensor | None = None) -> dict:
    """Time TransformerLens's head-output sweep and ours on the same model and prompts.

    Returns tl_times (extrapolated from ``max_tl_cells`` sampled cells when the sweep has more),
    extrapolated, ours_times (with ``verify=0``: the self-check is timed apart, ``verify_s``),
    max_abs_diff between the two on the sampled cells, peak GiB, ours (our values) and, given the
    fp32 ``truth`` of every cell, ours_err and tl_err: (mean, max) absolute error on the sampled
    cells."""
    import pandas as pd
    from transformer_lens import patching

    from interp.sweep import release, sweep_patch

    device = model.cfg.device
    L, H, T = model.cfg.n_layers, model.cfg.n_heads, prompts.n_pos
    metric = lambda logits: logit_diff(logits, prompts).mean()  # noqa: E731
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(prompts.clean_tokens)
    fn = patching.get_act_patch_attn_head_out_by_pos if by_pos else patching.get_act_patch_attn_head_out_all_pos
    axes = ("layer", "pos", "head") if by_pos else ("layer", "head")
    cells = pd.MultiIndex.from_product([range(L)] + ([range(T)] if by_pos else []) + [range(H)]).to_frame(index=False)
    cells.columns = list(axes)
    sample = cells if max_tl_cells is None or len(cells) <= max_tl_cells else cells.sample(max_tl_cells, random_state=0)
    with torch.no_grad():
        tl_times, tl_vals = _times(lambda: fn(model, prompts.corrupted_tokens, clean_cache, metric,
                                              index_axis_names=None, index_df=sample), device, repeats)
    tl_times = [t * len(cells) / len(sample) for t in tl_times]
    if device != "cpu" and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    def first_call():  # what a sweep of new prompts costs: a new engine, eager
        release(model, engine_only=True)
        return sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False, verify=0)

    first_times, _ = _times(first_call, device, repeats)
    ours_times, result = _times(lambda: sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False,
                                                    verify=0), device, repeats)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device != "cpu" and torch.cuda.is_available() else float("nan")
    t = time.perf_counter()
    verified = sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False, verify=2).meta["verified"]
    verify_s = time.perf_counter() - t - statistics.median(ours_times)
    at = tuple(torch.as_tensor(sample[a].to_numpy().copy()) for a in axes)
    ours = result.values[at]
    out = dict(tl_times=tl_times, extrapolated=len(sample) < len(cells), ours_times=ours_times, first_times=first_times,
               cuda_graph=result.meta.get("cuda_graph"),
               max_abs_diff=(ours - tl_vals.float().cpu()).abs().max().item(), peak=peak, ours=result.values,
               verified=verified, verify_s=verify_s)
    if truth is not None:
        error = lambda v: ((v - truth[at]).abs().mean().item(), (v - truth[at]).abs().max().item())  # noqa: E731
        out.update(ours_err=error(ours), tl_err=error(tl_vals.float().cpu()))
    return out


def run_gpu(shapes=("gpt2-small", "smollm2-135m", "qwen2.5-0.5b", "llama-2-7b"), seqs=(16, 64),
            dtype=torch.bfloat16, batch: int = 16, max_tl_cells: int = 96, repeats: int = 5) -> list[Row]:
    """Rows for random-weight models of ``shapes`` on the GPU. A 16-bit row also runs the fp32
    model of the same weights, for the error columns (skipped where fp32 does not fit)."""
    print(f"(host CPU: {host_cpu()}; GPU: {torch.cuda.get_device_name()})", flush=True)
    rows = []
    for shape in shapes:
        model = random_model(shape, "cuda", dtype)
        exact = None
        if dtype != torch.float32 and shape != "llama-2-7b":
            exact = random_model(shape, "cuda", torch.float32)
        for T in seqs:
            prompts = random_prompts(model, batch, T)
            for by_pos in (False, True):
                from interp.sweep import sweep_patch

                truth = None if exact is None else sweep_patch(exact, prompts, "head_out", by_pos=by_pos,
                                                               progress=False).values
                full = shape == "gpt2-small" and T == 16 and not by_pos
                r = bench_sweep(model, prompts, by_pos, None if full else max_tl_cells, repeats, truth)
                rows.append(Row(shape, str(dtype).replace("torch.", ""), batch, T,
                                "head_out by pos" if by_pos else "head_out all pos", r["tl_times"], r["extrapolated"],
                                r["ours_times"], r["max_abs_diff"], floor_flops(model.cfg, batch, T, by_pos) / 1e12,
                                r["peak"], r.get("ours_err"), r.get("tl_err"), r["first_times"]))
                print(rows[-1].markdown(790.0), flush=True)
                print(f"  (self-check: {r['verified']['cells']} cells re-run, max abs diff "
                      f"{r['verified']['max_abs_diff']:.1e}, {r['verify_s']:.2f} s; CUDA graph: {r['cuda_graph']})",
                      flush=True)
        del model, exact
        torch.cuda.empty_cache()
    return rows


def cpu_matmul_tflops() -> float:
    """This CPU's fp32 matrix-product rate on an engine-sized product (the "peak" of the CPU rows):
    median of 10 products [12240, 576] x [576, 1536] (SmolLM2's MLP over a chunk of variants)."""
    a, b = torch.randn(12240, 576), torch.randn(576, 1536)
    seconds, _ = _timed(lambda: a @ b, "cpu", 10)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / seconds / 1e12


def run_cpu(n_prompts: int = 8, repeats: int = 5) -> list[Row]:
    """The real default model on this CPU, IOI prompts, fp32. "time vs floor" is against this CPU's
    own measured matrix-product rate; TransformerLens's time over the floor's at that rate is the
    largest speed-up any exact method could show here."""
    from interp.models import load_model
    from interp.tasks import ioi_examples

    model = load_model()
    model.set_use_attn_result(False)  # both sides skip per-head results: a fair loop
    prompts = ioi_examples(model, n=n_prompts, seed=0)
    peak = cpu_matmul_tflops()
    print(f"(this CPU: {peak * 1e3:.0f} GFLOP/s fp32 on an engine-sized matrix product)")
    print(f"(host CPU: {host_cpu()})")
    rows = []
    for by_pos in (False, True):
        r = bench_sweep(model, prompts, by_pos, max_tl_cells=None if not by_pos else 270, repeats=repeats)
        rows.append(Row("smollm2-135m (real)", "float32", n_prompts, prompts.n_pos,
                        "head_out by pos" if by_pos else "head_out all pos", r["tl_times"], r["extrapolated"],
                        r["ours_times"], r["max_abs_diff"],
                        floor_flops(model.cfg, n_prompts, prompts.n_pos, by_pos) / 1e12, float("nan"),
                        first_times=r["first_times"]))
        print(rows[-1].markdown(peak), flush=True)
        bound = rows[-1].tl_s / (rows[-1].floor_tflop / peak)
        print(f"(at that rate the floor takes {rows[-1].floor_tflop / peak:.1f} s: at most {bound:.1f}x "
              f"against TransformerLens for an exact method)", flush=True)
    return rows


def _kernel_row(name: str, dtype, shape: str, reference, fused, args, device) -> str:
    """Time ``reference(*args)`` and ``fused(*args)`` (medians of 20 calls): a markdown row, printed."""
    t_ref, _ = _timed(lambda: reference(*args), device, 20)
    t_tri, _ = _timed(lambda: fused(*args), device, 20)
    row = f"| {name} | {str(dtype)[6:]} | {shape} | {t_ref * 1e6:.0f} | {t_tri * 1e6:.0f} | {t_ref / t_tri:.2f}x |"
    print(row, flush=True)
    return row


def bench_kernels(device: str = "cuda") -> list[str]:
    """Each Triton kernel against its PyTorch reference on engine-sized inputs: markdown rows."""
    from interp.kernels import (add_norm, add_norm_reference, head_scatter, head_scatter_reference, norm_logit_diff,
                                norm_logit_diff_reference, prefix_attention, prefix_attention_reference, rope,
                                rope_reference, silu_mul, silu_mul_reference)

    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for d, dh, V, R in [(768, 64, 144, 16 * 16), (4096, 128, 64, 16 * 64)]:
            x = torch.randn(V * 16, d, device=device, dtype=dtype)
            w = torch.ones(d, device=device, dtype=dtype)
            D = torch.randn(16, d, device=device, dtype=dtype)
            idx = torch.arange(16, device=device).repeat(V)
            bias = torch.zeros(16, device=device)
            rows.append(_kernel_row("norm_logit_diff", dtype, f"rows={V * 16} d={d}", norm_logit_diff_reference,
                                    norm_logit_diff, (x, w, D, idx, bias, 1e-5, False), device))
            resid = torch.randn(R, d, device=device, dtype=dtype)
            dz = torch.randn(V, R, dh, device=device, dtype=dtype)
            W_O = torch.randn(max(V // 4, 1), dh, d, device=device, dtype=dtype)
            heads = torch.arange(V, device=device) % W_O.shape[0]
            rows.append(_kernel_row("head_scatter", dtype, f"V={V} rows={R} dh={dh} d={d}", head_scatter_reference,
                                    head_scatter, (resid, dz, W_O, heads), device))
    for dtype in (torch.float32, torch.bfloat16):
        for R, d, center in [(144 * 16 * 16, 768, True), (64 * 16 * 16, 4096, False)]:
            x, delta = torch.randn(2, R, d, device=device, dtype=dtype)
            w = torch.rand(d, device=device, dtype=dtype)
            b = torch.rand(d, device=device, dtype=dtype) if center else None
            rows.append(_kernel_row("add_norm", dtype, f"rows={R} d={d}", add_norm_reference, add_norm,
                                    (x, delta, w, b, 1e-5, center), device))
    for N, S, P, H, Hkv in [(144, 16, 0, 12, 12), (144, 8, 8, 12, 12), (144, 1, 15, 9, 3), (32, 32, 32, 32, 32)]:
        dtype, B, dh = torch.bfloat16, 16, 64 if H != 32 else 128
        q = torch.randn(N, B, S, H, dh, device=device, dtype=dtype)
        k, v = torch.randn(2, N, B, S, Hkv, dh, device=device, dtype=dtype)
        k_pre, v_pre = torch.randn(2, B, P, Hkv, dh, device=device, dtype=dtype)
        rows.append(_kernel_row("prefix_attention", dtype, f"N={N} B={B} S={S} P={P} H={H}/{Hkv} dh={dh}",
                                prefix_attention_reference, prefix_attention, (q, k, v, k_pre, v_pre, dh ** -0.5),
                                device))
    # RoPE on a view of the fused q/k/v product, SiLU x up on the fused gate/up product: the shapes of
    # SmolLM2's all-position head sweep at 16 x 64 (270 variants) and Llama-2-7B's at 16 x 128
    for N, S, H, Hkv, dh, n in [(270, 64, 9, 3, 64, 1536), (32, 128, 32, 32, 128, 11008)]:
        dtype, B = torch.bfloat16, 16
        qkv = torch.randn(N, B, S, (H + 2 * Hkv) * dh, device=device, dtype=dtype)
        q = qkv[..., :H * dh].unflatten(-1, (H, dh))
        cos, sin = torch.randn(2, S, dh, device=device, dtype=dtype)
        rows.append(_kernel_row("rope", dtype, f"N={N} B={B} S={S} H={H}/{Hkv} dh={dh}", rope_reference, rope,
                                (q, cos, sin), device))
        gate_up = torch.randn(N * B * S, 2 * n, device=device, dtype=dtype)
        rows.append(_kernel_row("silu_mul", dtype, f"rows={N * B * S} n={n}", silu_mul_reference, silu_mul,
                                (gate_up,), device))
        del qkv, gate_up
    return rows
