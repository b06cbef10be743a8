"""Path patching of every head as a sender, exactly, in batches (the engine behind ``path_patch_heads``).

The reference (``interp.patching.path_patch``) runs the model twice per sender. Here all senders of a
chunk run together, using what path patching freezes (Wang et al. 2022, appendix B):

* In step 3 every head but the sender is frozen to its clean output, so attention mixes nothing new
  between positions: the sender's change of the residual stream, Δ = (z'_s - z_s) W_O[s] at the
  sender positions, travels along its own position only, changed on the way by the recomputed MLPs
  (Δ += MLP(x + Δ) - MLP(x)), or not at all with frozen MLPs. Only the positions where receivers read
  are computed: the answer position for the final residual, e.g. END or S2 for q/k/v receivers.
* Step 4 changes the receivers' q/k/v at their positions (>= p0) only: each variant reruns positions
  p0.. from the first receiver layer, attending to the clean run's cached keys/values before p0.

Same numbers as the reference to float rounding (the tests compare them, and every sweep re-runs a
sample of its senders through the reference: ``interp.verify``); same architectures and the same
registered interventions as the activation-patching engine (``interp.sweep``). Interventions on
q, k or v act on the receivers' inputs before they are stored, as the reference's hooks do.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from interp.components import RESID_FINAL, check_receivers
from interp.hooks import resolve_positions, sweep_index
from interp.metrics import logit_diff
from interp.reference import path_patch_cache_names
from interp.result import Result
from interp.sweep import SweepEngine
from interp.tasks.prompts import PromptSet
from interp.verify import SweepCheck, check_path_sweep


def sweep_path_patch_heads(
    model,
    prompts: PromptSet,
    receivers: str | list[tuple[int, int, str]] = RESID_FINAL,
    sender_positions=None,
    receiver_positions=None,
    freeze_mlps: bool = False,
    metric=logit_diff,
    layers: list[int] | None = None,
    memory_budget: int | None = None,
    progress: bool = True,
    verify: int = 2,
    seed: int = 0,
) -> Result:
    """``path_patch_heads`` through the batched engine: Result[layer, head] of the mean metric.
    ``verify`` senders (drawn with ``seed``) are re-run through ``interp.reference.path_patch``.
    ``meta["per_example"]``: {"values": [layer][head][prompt], "clean": [prompt]}, the metric of
    each prompt (the mean over prompts is ``values``), for intervals over prompts."""
    engine = SweepEngine(model, prompts, "noise", metric, memory_budget)  # base = clean x, source = x'
    # the clean and corrupted runs vs the bridge's; those forwards also keep the reference's caches
    baselines = SweepCheck(engine, "head_out", [], 0, baselines=verify > 0,
                           keep=path_patch_cache_names(model.cfg.n_layers))
    ps, cfg = engine.prompts, model.cfg
    B, T = ps.clean_tokens.shape
    receivers = check_receivers(model, receivers)
    layers = sweep_index(model, "z", T, layers=layers)["layer"]
    senders = [(l, h) for l in layers for h in range(cfg.n_heads)]

    # The positions receivers read: [B, P] absolute indices (the answer position for resid_final).
    r_pos = ps.answer_pos if receivers == RESID_FINAL else resolve_positions(receiver_positions, ps)
    read = torch.arange(T, device=engine.device).expand(B, T) if r_pos is None else r_pos.to(engine.device)[:, None]
    s_pos = resolve_positions(sender_positions, ps)
    sender_mask = torch.ones(B, T, dtype=torch.bool, device=engine.device)
    if s_pos is not None:
        sender_mask = torch.zeros_like(sender_mask)
        sender_mask[torch.arange(B), s_pos.to(engine.device)] = True
    live = torch.gather(sender_mask, 1, read)  # [B, P]: where a sender's change can be read

    clean, corrupted = engine.clean_and_corrupted()
    # A sender at or after the last receiver layer reaches no receiver: its run is the clean run.
    last = cfg.n_layers if receivers == RESID_FINAL else max(l for l, _, _ in receivers)
    clean_each = engine.cache("base").metric.float().cpu()  # [B]: the clean run of each prompt
    each = clean_each.expand(len(senders), B).clone()  # [senders, B]
    todo = [i for i, (l, _) in enumerate(senders) if l < last]
    p0 = 0 if r_pos is None else int(r_pos.min())
    chunk = engine._chunk_size(T - p0)
    bar = tqdm(total=len(todo), desc="path patch", disable=not progress, leave=False)
    with torch.no_grad():
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            each[part] = _run_chunk(engine, [senders[j] for j in part], receivers, read, live, p0,
                                    freeze_mlps).float().cpu()
            bar.update(len(part))
    bar.close()
    values = torch.full((len(senders),), clean)  # a sender that reaches no receiver: exactly the clean run
    values[todo] = each[todo].mean(1)
    verified = check_path_sweep(baselines.model, prompts, senders, values, dict(
        receivers=receivers, sender_positions=sender_positions, receiver_positions=receiver_positions,
        freeze_mlps=freeze_mlps, metric=metric), engine.w.W_Q.dtype, verify, seed,
        caches=(baselines.kept["base"], baselines.kept["source"]) if baselines.kept else None,
        logit_scale=baselines.logit_scale)
    clean, corrupted = engine.clean_and_corrupted()
    return Result(
        values.reshape(len(layers), cfg.n_heads), ("layer", "head"),
        "path:" + (receivers if isinstance(receivers, str) else "heads"), getattr(metric, "__name__", "metric"),
        clean=clean, corrupted=corrupted,
        meta={"index": {"layer": layers, "head": list(range(cfg.n_heads))}, "freeze_mlps": freeze_mlps,
              "n_prompts": len(prompts), "engine": "batched", "verified": verified,
              "receivers": receivers if isinstance(receivers, str) else [list(r) for r in receivers],
              "per_example": {"values": each.reshape(len(layers), cfg.n_heads, B).tolist(), "clean": clean_each.tolist()}},
    )


def _gather(t: torch.Tensor, read: torch.Tensor) -> torch.Tensor:
    """t [B, T, ...] at positions read [B, P] -> [B, P, ...]."""
    idx = read.reshape(*read.shape, *([1] * (t.ndim - 2))).expand(*read.shape, *t.shape[2:])
    return torch.gather(t, 1, idx)


def _run_chunk(engine: SweepEngine, senders, receivers, read, live, p0: int, freeze_mlps: bool):
    """The metric after path patching each sender of the chunk, per prompt: [n_senders, B]."""
    w, base, src = engine.w, engine.cache("base"), engine.cache("source")
    L = engine.cfg.n_layers
    s_layer = torch.tensor([l for l, _ in senders], device=engine.device)
    s_head = torch.tensor([h for _, h in senders], device=engine.device)
    live = live[None, :, :, None].to(base.resid_pre[0].dtype)  # [1, B, P, 1]
    recv_layers = sorted({l for l, _, _ in receivers}) if receivers != RESID_FINAL else []
    stop = max(recv_layers) if recv_layers else L

    # Step 3: the senders' change of the residual stream at the read positions, layer by layer.
    delta = torch.zeros(len(senders), *read.shape, w.W_E.shape[1], device=engine.device, dtype=live.dtype)
    stored = {}  # receiver layer -> (q, k, v) of the frozen run at the read positions, [N, B, P, heads, dh]
    for layer in range(min([int(s_layer.min())] + recv_layers), stop):
        if layer in recv_layers:
            stored[layer] = _receiver_inputs(engine, layer, _gather(base.resid_pre[layer], read)[None] + delta, read)
        joins = (s_layer == layer).nonzero().flatten()
        if len(joins):
            dz = _gather(src.z[layer] - base.z[layer], read)[:, :, s_head[joins]]  # [B, P, n, dh]
            dz = dz.permute(2, 0, 1, 3)
            delta[joins] += torch.einsum("nbpe,ned->nbpd", dz, w.W_O[layer, s_head[joins]]) * live
        if not freeze_mlps:
            mid = _gather(base.resid_mid[layer], read)
            change = w.mlp(layer, mid[None] + delta) - _gather(base.mlp_out[layer], read)[None]
            delta = delta + change * (s_layer <= layer)[:, None, None, None] * live
    if receivers == RESID_FINAL:  # read = the answer positions: the metric directly
        final = _gather(base.resid_mid[L - 1] + base.mlp_out[L - 1], read)[None] + delta  # [N, B, 1, d]
        return engine.metric_at(final[:, :, 0])
    if stop in recv_layers:
        stored[stop] = _receiver_inputs(engine, stop, _gather(base.resid_pre[stop], read)[None] + delta, read)

    # Step 4: rerun positions p0.. from the first receiver layer with the receivers' q/k/v replaced.
    N = len(senders)
    x = base.resid_pre[recv_layers[0]][:, p0:].expand(N, *base.resid_pre[0][:, p0:].shape).clone()
    rows = torch.arange(read.shape[0], device=engine.device)[:, None].expand_as(read)
    cols = read - p0
    normed = w.norm(x, w.ln1[recv_layers[0]])  # what the next sublayer reads
    for layer in range(recv_layers[0], L):
        edit = None
        if layer in recv_layers:
            edit = _receiver_edit(stored[layer], [(h, k) for l, h, k in receivers if l == layer], rows, cols)
        x, normed = w.add_norm(x, engine._attention(layer, normed, p0, edit), w.ln2[layer])
        x, normed = w.add_norm(x, w.mlp_normed(layer, normed), w.ln1_after(layer))
    return engine._final_metric(x, p0)


def _receiver_inputs(engine: SweepEngine, layer: int, x, read):
    """q, k, v of residuals x [N, B, P, d] at positions read [B, P], with the registered edits."""
    return tuple(engine.edits.apply(kind, layer, t, at_positions=read)
                 for kind, t in zip("qkv", engine.w.project(layer, x)))


def _receiver_edit(stored, heads_kinds, rows, cols):
    """An ``edit`` for SweepEngine._attention writing the stored q/k/v of the receivers."""

    def edit(q, k, v):
        out = {"q": q.clone(), "k": k.clone(), "v": v.clone()}
        for h, kind in heads_kinds:
            new = stored["qkv".index(kind)]  # [N, B, P, heads, dh]
            out[kind][:, rows, cols, h] = new[:, :, :, h]
        return out["q"], out["k"], out["v"]

    return edit
