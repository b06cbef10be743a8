"""Self-checks of the batched engines: every fast result carries its evidence.

A batched sweep computes what the reference loop would, by other arithmetic. Two checks make a
silent disagreement impossible:

1. **Baselines, before the sweep.** The engine's own unpatched runs (base and source) are compared
   with the TransformerBridge's forward on the same tokens, with every hook registered on the
   model: the final residual stream and the metric at each answer position. A difference means
   the engine does not model something about this model (an architecture feature, an edit):
   ``EngineUnsupported`` is raised and ``interp.patch`` falls back to the reference loop.
2. **A sample of cells, after the sweep.** k cells drawn at random (seeded) are re-run one by one
   through the reference loop (``interp.reference``); the largest difference is recorded in the
   result (``meta["verified"] = {"cells": k, "max_abs_diff": x, ...}``) and above the tolerance
   ``VerificationError`` is raised instead of returning the numbers.

**The reference of a bf16/fp16 model runs in fp32** on the same weights (a copy of the model cast
to fp32, ``fp32_reference``): that is the exact value the low-precision engine approximates. The
model's own bf16 forward is an approximation too, and not the better one: on an H200 with the real
SmolLM2 weights its logit difference was 1.76 away from the engine's while the engine was 0.1 from
fp32 (BENCHMARKS.md), so a check against it refused sweeps that were right.

The tolerance depends on the dtype: |engine - reference| <= c * eps(dtype) * (1 + scale), with
scale the largest magnitude entering the comparison (for a metric, the largest logit at the answer
positions as well as the metric itself: a logit difference is a small difference of large numbers,
and inherits their rounding), c = 128 for fp32 (the two sides sum thousands of
terms in different orders; measured differences on SmolLM2 are below 1e-5 on logit differences of
~5, against a tolerance of ~1e-4) and c = 4 for bf16/fp16 (dominated by rounding activations to 8
or 11 significant bits, not by the order of sums; BENCHMARKS.md has the measured errors).

**A float64 referee settles an fp32 gap above the tolerance** (``SweepCheck``; the decoder's
first-step check in ``interp.generate`` too). The scale above is that of the compared values, but
rounding follows the largest values the forward passes through. In Qwen2.5's residual stream some
positions reach 2,182 (chat prompts; 1,035 in the plain template) while the answer position stays
under 100; a head under undifferentiated attention (UA) reads every position evenly and brings
those values into the answer position's sums. On an H200, where the engine's and the model's sums
run in unrelated orders, Sahara's baseline check with heads under UA differed by 0.018 (tolerance
0.0033) and the decoder's first step by 6e-4 (tolerance 2.7e-4); unablated, the gap was 1e-4. Before
refusing, the same forward runs on a float64 copy of the model (``float64_referee``): the engine
passes if it is no further from the float64 values than the model's own fp32 forward is, times 2,
plus the tolerance, and the model's own distance is at most 16 tolerances (``within_referee``).
Something the engine does not model is as far from float64 as from the fp32 model and is still
refused; the sweep's evidence records both distances (the decoder's check names them when it refuses).
"""
from __future__ import annotations

import copy
import random

import torch

from interp import reference
from interp.components import ABLATIONS, Variant
from interp.errors import EngineUnsupported, VerificationError
from interp.memory import available_bytes
from interp.metrics import at_answer


LOW_PRECISION = (torch.bfloat16, torch.float16)


def _twin(model, dtype: torch.dtype):
    """A copy of ``model`` in ``dtype``: its weights as they are now, edits included; the hooks
    registered on it, i.e. the ablation contexts it is in, come along.

    TransformerBridge blocks wire capture hooks on first use (``_maybe_wire_capture_hooks``) whose
    closures point at the original block (its ``hook_mlp_in``, its attention's captured residual);
    a deep copy would keep calling them. The copy drops them and wires its own on first use."""
    # what the engines keep on the model (stacked weights, the last sweep's engine with its CUDA
    # graphs, a kept fp32 twin) stays behind: the twin builds its own
    kept = (model.__dict__.get(name) for name in KEPT_ON_MODEL)
    twin = copy.deepcopy(model, {id(v): None for v in kept if v is not None})
    for module in twin.modules():
        for key, fn in list(module._forward_pre_hooks.items()):
            if "_maybe_wire_capture_hooks" in getattr(fn, "__qualname__", ""):
                del module._forward_pre_hooks[key]
                module._forward_pre_hooks_with_kwargs.pop(key, None)
        if getattr(module, "_capture_hooks_wired", False):
            module._capture_hooks_wired = False
            module._capture_hook_handles = []
    try:
        twin = twin.to(dtype, print_details=False)  # a TransformerBridge: no "Changing model dtype" line
    except TypeError:
        twin = twin.to(dtype)
    for name in ("interp_key", "interp_spec"):
        if hasattr(model, name):
            setattr(twin, name, getattr(model, name))
    return twin


def fp32_reference(model, dtype: torch.dtype):
    """The model the reference side of a self-check runs: ``model`` itself in fp32, else an fp32
    copy of it (``_twin``).

    The copy is kept on the model for the next check (its deep copy took 2 s of each self-check of
    GPT-2 small on an H200, 7 s of SmolLM2's) and reused only when it is still the model as it is:
    every parameter and buffer equal to the model's cast to fp32 (compared exactly, at every call),
    the same edits registered (and no other hook left on the copy), the same train/eval flags. It is
    kept only when it takes at most ``KEEP_TWIN_SHARE`` of the memory free on its device;
    ``interp.sweep.release`` frees it."""
    if dtype not in LOW_PRECISION:
        return model
    key = _twin_key(model)
    held = model.__dict__.get("_interp_twin")
    if key is not None and held is not None and held[0] == key and _twin_key(held[1]) == key \
            and _same_values(model, held[1]):
        return held[1]
    object.__setattr__(model, "_interp_twin", None)  # the old copy goes before a new one is made
    twin = _twin(model, torch.float32)
    if key is not None and _bytes(twin) <= KEEP_TWIN_SHARE * available_bytes(next(twin.parameters()).device):
        object.__setattr__(model, "_interp_twin", (key, twin))
    return twin


def _twin_key(model) -> tuple | None:
    """What a kept copy must share with the model besides its values: the edits registered on it
    and the modules' train/eval flags; None when a hook is not an edit (no copy is kept then)."""
    from interp.interventions import model_edits
    from interp.module_walk import submodules

    try:
        edits = model_edits(model).digest()
    except EngineUnsupported:
        return None
    return edits, tuple(m.training for m in submodules(model))


def _same_values(model, twin) -> bool:
    """Whether every parameter and floating buffer of ``twin`` equals the model's, cast to the
    twin's dtype (exact: a cast from 16 bits to fp32 loses nothing). One host sync in all."""
    from interp.module_walk import tensors

    ours, theirs = tensors(model), tensors(twin)
    if len(ours) != len(theirs) or any(a.shape != b.shape or a.device != b.device for a, b in zip(ours, theirs)):
        return False
    with torch.no_grad():
        equal = [(a.to(b.dtype) == b).all() for a, b in zip(ours, theirs)]
        return bool(torch.stack(equal).all()) if equal else True


#: What the engines and checks keep on a model between calls (a twin copies none of them).
KEPT_ON_MODEL = ("_interp_weights", "_interp_engine", "_interp_twin")
#: The largest kept fp32 twin, as a share of the memory free on its device when it is made.
KEEP_TWIN_SHARE = 1 / 8


def _bytes(model) -> int:
    return sum(t.nbytes for t in model.parameters())


def float64_referee(model):
    """A float64 copy of the (fp32) reference model: the arbiter of an fp32 gap above the tolerance."""
    return _twin(model, torch.float64)


#: The referee's bounds: the engine may be REFEREE_FACTOR times as far from float64 as the model's
#: own fp32 forward (plus the tolerance), and only while the model's own distance is at most
#: REFEREE_CAP tolerances (beyond that the fp32 arithmetic itself is too coarse to tell an error).
REFEREE_FACTOR, REFEREE_CAP = 2.0, 16.0


def within_referee(ours: torch.Tensor, theirs: torch.Tensor, exact: torch.Tensor, tol: float) -> tuple[bool, dict]:
    """Whether ``ours`` is no further from the float64 values ``exact`` than the fp32 reference
    ``theirs`` is, times REFEREE_FACTOR, plus ``tol`` (with ``theirs`` within REFEREE_CAP x ``tol``
    of ``exact``); and the two distances (computed in float64)."""
    ours_err, theirs_err = _max_diff64(ours, exact), _max_diff64(theirs, exact)
    ok = ours_err <= REFEREE_FACTOR * theirs_err + tol and theirs_err <= REFEREE_CAP * tol
    return ok, {"engine_vs_float64": ours_err, "reference_vs_float64": theirs_err}


def _max_diff64(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double().cpu() - b.double().cpu()).abs().max()) if a.numel() else 0.0


def tolerance(dtype: torch.dtype, scale: float = 1.0) -> float:
    """The largest |engine - reference| accepted for values of magnitude ``scale`` in ``dtype``."""
    c = 4 if dtype in LOW_PRECISION else 128
    return c * torch.finfo(dtype).eps * (1.0 + float(scale))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().cpu() - b.float().cpu()).abs().max()) if a.numel() else 0.0


def _scale(*ts) -> float:
    return max(float(t.float().abs().nan_to_num().max()) if t.numel() else 0.0 for t in ts)


def _logit_scale(model, prompts) -> float:
    """The largest |logit| at the answer positions of the clean and corrupted prompts."""
    with torch.no_grad():
        return max(_scale(at_answer(model(t), prompts.answer_pos)) for t in (prompts.clean_tokens, prompts.corrupted_tokens))


class SweepCheck:
    """Checks one batched sweep of ``engine`` (an ``interp.sweep.SweepEngine``) against the bridge.

    Built before the sweep: picks the k cells to re-check (seeded), runs the bridge on the base
    and source prompts (with the engine's explicit interventions as hooks) to compare the
    baselines and to cache the source activations those cells read. ``baselines`` (default: k > 0)
    switches the baseline comparison; k = 0 with the default is no self-check at all. ``keep``: hook
    names whose activations the baseline forwards also keep (``kept["base"|"source"]``), for a
    later reference computation that needs them (path patching's caches)."""

    def __init__(self, engine, component: str, variants: list[Variant], k: int = 2, seed: int = 0,
                 readout: str = "metric", baselines: bool | None = None, keep: frozenset[str] = frozenset()):
        self.engine, self.component, self.readout, self.keep = engine, component, readout, set(keep)
        self.kept: dict[str, dict[str, torch.Tensor]] = {}
        self.logit_scale: float | None = None  # the largest |logit| at the answers, once the baselines ran
        self.hooks = [h for iv in engine.interventions for h in iv.hooks()]
        self.sample = sorted(random.Random(seed).sample(range(len(variants)), min(max(k, 0), len(variants))))
        self.variants = [variants[i] for i in self.sample]
        self.dtype = engine.w.W_Q.dtype
        checking = k > 0 if baselines is None else baselines
        # the reference side: the model in fp32 (``fp32_reference``), built only when something is checked
        self.model = fp32_reference(engine.model, self.dtype) if checking or self.sample else engine.model
        self.baseline_diff = self._baselines() if checking else None

    def _baselines(self) -> dict:
        """The engine's unpatched runs against the bridge's forward (base and source; ablation
        sweeps have only a base run). Caches the source activations the sampled cells read.
        One bridge forward per run: interventions may hold per-example values for one batch."""
        e, ps = self.engine, self.engine.prompts
        runs = [("base", e.base_tokens)]
        if self.component not in ABLATIONS:
            e.cache_both(need_pattern=self.component == "head_pattern")
            runs.append(("source", e.source_tokens))
        names = reference.variant_hook_names(self.component, self.variants)
        final = reference.final_residual_name(self.model)
        rows = torch.arange(len(ps), device=e.device)
        pos = ps.answer_pos.to(e.device)
        resid_diff = metric_diff = 0.0
        self.logit_scale = 0.0
        referee, twin = {}, None  # the float64 copy, built once if a run needs the referee
        for which, tokens in runs:
            cache = reference.source_cache(self.model, tokens,
                                           {final} | self.keep | (names if which == "source" else set()),
                                           self.hooks, keep_logits=True)
            self.kept[which] = {n: cache[n] for n in self.keep}
            if which == "source":
                self.source = {n: cache[n] for n in names}
            ours = e.cache(which)
            at = at_answer(cache["logits"], pos)
            bridge_resid, bridge_metric = cache[final][rows, pos], e.metric(at, ps)
            self.logit_scale = max(self.logit_scale, _scale(at))
            run_resid = _max_diff(ours.final[rows, pos], bridge_resid)
            run_metric = _max_diff(ours.metric, bridge_metric)
            resid_diff, metric_diff = max(resid_diff, run_resid), max(metric_diff, run_metric)
            resid_tol = tolerance(self.dtype, _scale(bridge_resid))
            metric_tol = tolerance(self.dtype, max(_scale(bridge_metric), self.logit_scale))
            if not (run_resid <= resid_tol and run_metric <= metric_tol):  # NaN fails too
                by = (f"final residual by {run_resid:.3g}, tolerance {resid_tol:.2g}; "
                      f"metric by {run_metric:.3g}, tolerance {metric_tol:.2g}")
                if self.model is not e.model:  # the reference is the fp32 copy: the gap is the low precision's
                    raise EngineUnsupported(
                        f"in {_dtype_name(e.model)} the engine's unpatched run differs from the same weights "
                        f"in float32 ({by}): this model's {_dtype_name(e.model)} error is larger than the "
                        "check accepts; run it in float32, or pass verify=0 to accept that error")
                ok, evidence = self._referee_baseline(twin, tokens, (ours.final[rows, pos], bridge_resid, resid_tol),
                                                      (ours.metric, bridge_metric, metric_tol))
                twin = evidence.pop("twin", twin)
                if not ok:
                    raise EngineUnsupported(
                        f"the engine's forward differs from the model's own ({by}{referee_words(evidence)}): "
                        "the model has something the engine does not model")
                referee[which] = evidence
        if self.component in ABLATIONS:
            self.source = {}
        out = {"final_residual": resid_diff, "metric": metric_diff}
        return out | ({"float64_referee": referee} if referee else {})

    def _referee_baseline(self, twin, tokens, resid: tuple, metric: tuple) -> tuple[bool, dict]:
        """The float64 referee of one unpatched run: (ours, fp32 reference, tolerance) for the final
        residual and for the metric at the answer positions. ``twin``: the float64 copy, or None to
        build it (returned under "twin" in the evidence, for the next run)."""
        e, ps = self.engine, self.engine.prompts
        final = reference.final_residual_name(self.model)
        rows, pos = torch.arange(len(ps), device=e.device), ps.answer_pos.to(e.device)
        try:
            twin = float64_referee(self.model) if twin is None else twin
            exact = reference.source_cache(twin, tokens, {final}, self.hooks, keep_logits=True)
        except Exception as err:  # out of memory, or an intervention that cannot run in float64: the gap stands
            return False, {"error": f"{type(err).__name__}: {err}"}
        ok_r, ev_r = within_referee(*resid[:2], exact[final][rows, pos], resid[2])
        ok_m, ev_m = within_referee(*metric[:2], e.metric(at_answer(exact["logits"], pos), ps), metric[2])
        return ok_r and ok_m, {"final_residual": ev_r, "metric": ev_m, "twin": twin}

    def check(self, values: torch.Tensor) -> dict:
        """Re-run the sampled cells through the reference loop; the evidence, or VerificationError."""
        e = self.engine
        if not self.sample:
            return {"cells": 0, "max_abs_diff": 0.0, "tolerance": None, "baselines": self.baseline_diff}
        ref = reference.run_cells(self.model, e.prompts, self.component, self.variants, e.direction, e.metric,
                                  self.readout, hooks=self.hooks, eps=e.eps, source=self.source)
        ours = values[self.sample]
        diff = _max_diff(ours, ref)
        scale = _scale(ref) if self.readout == "residual" else max(_scale(ref), self.logit_scale or 0.0)
        tol = tolerance(self.dtype, scale)
        evidence = {"cells": len(self.sample), "max_abs_diff": diff, "tolerance": tol,
                    "baselines": self.baseline_diff, "reference_dtype": _dtype_name(self.model)}
        if not diff <= tol and self.model is e.model:  # fp32: the float64 referee may settle it
            ok, evidence["float64_referee"] = self._referee_cells(ours, ref, tol)
            if ok:
                return evidence
        if not diff <= tol:  # NaN fails too
            worst = int((ours.float() - ref.float()).abs().flatten(1).amax(1).argmax()) if ours.ndim > 1 else \
                int((ours.float() - ref.float()).abs().argmax())
            raise VerificationError(
                f"the batched {self.component} sweep disagrees with the reference loop by {diff:.3g} "
                f"(tolerance {tol:.2g}{referee_words(evidence.get('float64_referee'))}) at {self.variants[worst]}: "
                "please report this; "
                "engine='reference' gives the reference numbers")
        return evidence

    def _referee_cells(self, ours: torch.Tensor, ref: torch.Tensor, tol: float) -> tuple[bool, dict]:
        """The float64 referee of the sampled cells (their source activations recomputed in float64)."""
        e = self.engine
        try:
            exact = reference.run_cells(float64_referee(self.model), e.prompts, self.component, self.variants,
                                        e.direction, e.metric, self.readout, hooks=self.hooks, eps=e.eps,
                                        source={} if self.component in ABLATIONS else None)
        except Exception as err:  # out of memory, or an intervention that cannot run in float64
            return False, {"error": f"{type(err).__name__}: {err}"}
        return within_referee(ours, ref, exact, tol)


def referee_words(evidence: dict | None) -> str:
    """The float64 referee's verdict in words, for an error message: its distances (``within_referee``'s
    evidence, or one per readout), or why it could not run ({"error": ...}); "" for none."""
    if not evidence:
        return ""
    if "error" in evidence:
        return f"; the float64 referee could not run: {evidence['error']}"
    parts = {"": evidence} if "engine_vs_float64" in evidence else {f"{k} ": v for k, v in evidence.items()}
    return "; float64 referee: " + ", ".join(
        f"{name}engine {d['engine_vs_float64']:.3g} off, model {d['reference_vs_float64']:.3g}" for name, d in parts.items())


def check_path_sweep(model, prompts, senders, values: torch.Tensor, path_kwargs: dict, dtype: torch.dtype,
                     k: int = 2, seed: int = 0, caches: tuple | None = None, logit_scale: float | None = None) -> dict:
    """Re-run k of a batched path-patching sweep's senders through ``reference.path_patch`` on
    ``model`` (the reference side: ``fp32_reference``, e.g. the baseline check's ``SweepCheck.model``).
    ``caches`` (clean, corrupted: ``reference.path_patch_caches``) and ``logit_scale`` may come from
    the bridge forwards the baseline check already ran (``SweepCheck(keep=...)``)."""
    sample = sorted(random.Random(seed).sample(range(len(senders)), min(max(k, 0), len(senders))))
    if not sample:
        return {"cells": 0, "max_abs_diff": 0.0, "tolerance": None}
    caches = caches or reference.path_patch_caches(model, prompts)
    ref = torch.tensor([reference.path_patch(model, prompts, [senders[i]], _caches=caches, **path_kwargs)
                        for i in sample])
    ours = values[sample]
    diff = _max_diff(ours, ref)
    scale = _logit_scale(model, prompts) if logit_scale is None else logit_scale
    tol = tolerance(dtype, max(_scale(ref), scale))
    if not diff <= tol:
        worst = sample[int((ours - ref).abs().argmax())]
        raise VerificationError(
            f"the batched path-patching sweep disagrees with the reference by {diff:.3g} (tolerance "
            f"{tol:.2g}) at sender {senders[worst]}: please report this; engine='reference' gives the "
            "reference numbers")
    return {"cells": len(sample), "max_abs_diff": diff, "tolerance": tol, "reference_dtype": _dtype_name(model)}


def _dtype_name(model) -> str:
    return str(next(model.parameters()).dtype).removeprefix("torch.")


def check_edges(model, prompts, edges_, values: torch.Tensor, direction: str, metric, dtype: torch.dtype,
                k: int = 2, seed: int = 0, logit_scale: float | None = None) -> dict:
    """Re-run k of a batched edge sweep's edges through ``reference.edge_patch_reference`` on
    ``model`` (the reference side, as in ``check_path_sweep``; ``logit_scale``: from the baseline
    check's forwards, when it ran)."""
    sample = sorted(random.Random(seed).sample(range(len(edges_)), min(max(k, 0), len(edges_))))
    if not sample:
        return {"cells": 0, "max_abs_diff": 0.0, "tolerance": None}
    ref = reference.edge_patch_reference(model, prompts, [edges_[i] for i in sample], direction, metric)
    ours = values[sample]
    diff = _max_diff(ours, ref)
    scale = _logit_scale(model, prompts) if logit_scale is None else logit_scale
    tol = tolerance(dtype, max(_scale(ref), scale))
    if not diff <= tol:
        worst = sample[int((ours - ref).abs().argmax())]
        raise VerificationError(f"the batched edge sweep disagrees with the reference by {diff:.3g} (tolerance "
                                f"{tol:.2g}) at edge {edges_[worst].name}: please report this")
    return {"cells": len(sample), "max_abs_diff": diff, "tolerance": tol, "reference_dtype": _dtype_name(model)}
