"""The reference loop: one hooked forward of the TransformerBridge per patched cell.

This is TransformerLens's way (``patching.get_act_patch_*``): simple, slow, and honouring anything
registered on the model (hooks of any kind, interventions, edited weights), because it *is* the
model's own forward. The batched engines are held to it: ``interp.patch(engine="reference")`` runs
it whole, and every batched sweep re-runs a sample of its cells through it (``interp.verify``).

The metric contract is the same on every engine: ``metric(logits, prompts) -> [batch]`` where
``logits`` are [batch, vocab], read at each example's answer position.

Path patching (Wang et al. 2022, appendix B) is here too, in its plain two-forward form.
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from interp import checkpoint as ckpt
from interp.components import ABLATIONS, RESID_FINAL, Variant, check_receivers, get_component
from interp.errors import ComponentError
from interp.hooks import check_heads, hook_name, resolve_positions, select
from interp.interventions import Edit, edit_hook
from interp.metrics import at_answer, logit_diff
from interp.tasks.prompts import PromptSet, model_device, on_model_device

READOUTS = ("metric", "per_example", "residual")


def final_residual_name(model) -> str:
    """The hook of the residual stream after the last block (the final norm's input)."""
    return hook_name("resid_post", model.cfg.n_layers - 1)


def readout(model, tokens, prompts: PromptSet, metric=logit_diff, hooks=(), what: str = "metric") -> torch.Tensor:
    """One hooked forward of ``tokens`` read at each example's answer position.

    what: "metric" (the mean, a 0-d tensor), "per_example" ([batch]) or "residual" (the final
    residual stream, [batch, d_model])."""
    if what not in READOUTS:
        raise ComponentError(f"readout must be one of {', '.join(READOUTS)}, got {what!r}")
    hooks = list(hooks)
    kept = {}
    if what == "residual":
        def keep(act, hook=None):
            kept["x"] = act[torch.arange(act.shape[0], device=act.device), prompts.answer_pos.to(act.device)]
        hooks.append((final_residual_name(model), keep))
    with torch.no_grad():
        logits = model.run_with_hooks(tokens.to(model_device(model)), fwd_hooks=hooks)
    if what == "residual":
        return kept["x"].float().cpu()
    values = metric(at_answer(logits, prompts.answer_pos), prompts).float().cpu()
    return values.mean() if what == "metric" else values


def source_cache(model, tokens, names, hooks=(), keep_logits: bool = False) -> dict[str, torch.Tensor]:
    """The activations ``names`` of one hooked forward of ``tokens`` (and its "logits")."""
    names = set(names)
    cache = {}

    def store(name):
        def hook(act, hook=None):
            cache[name] = act.detach().clone()
        return hook

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=list(hooks) + [(n, store(n)) for n in names])
    if keep_logits:
        cache["logits"] = logits
    return cache


def variant_hook_names(component: str, variants: list[Variant]) -> set[str]:
    """The source activations a patch of ``variants`` reads (none for ablations)."""
    if component in ABLATIONS:
        return set()
    kind = get_component(component).kind
    return {hook_name(kind, v.layer) for v in variants}


def variant_hooks(component: str, variant: Variant, source: dict | None = None, eps: float = 1e-5):
    """The hooks that apply one variant: the source's activation patched in at (head, pos), or
    the head's ablation (``ablate_ua``, ``ablate_sc``, ``ablate_zero``)."""
    l, h, p = variant.layer, variant.head, variant.pos
    if component in ABLATIONS:
        mode = ABLATIONS[component]
        e = Edit("q" if mode == "ua" else "z", l, (h,), factor=0.0 if mode == "zero" else eps)
        return [(e.hook_name, edit_hook(e))]
    kind = get_component(component).kind
    name = hook_name(kind, l)
    return [(name, _patch_hook(source[name], h, p, head_dim=1 if kind == "pattern" else 2))]


def run_cells(model, prompts: PromptSet, component: str, variants: list[Variant], direction: str = "denoise",
              metric=logit_diff, what: str = "metric", hooks=(), eps: float = 1e-5, source=None,
              progress: bool = False, checkpoint=None, key: str | None = None) -> torch.Tensor:
    """The readout of every variant, one hooked forward each: [n] ("metric"), [n, batch]
    ("per_example") or [n, batch, d_model] ("residual").

    ``hooks`` run before each variant's own hook (explicit interventions); ``source`` is a cache
    of the source run's activations (computed here if None). With ``checkpoint`` (and its ``key``)
    finished cells are saved after each forward, and a rerun resumes."""
    prompts = on_model_device(model, prompts)
    if direction not in ("denoise", "noise"):
        raise ComponentError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    base, src = ((prompts.corrupted_tokens, prompts.clean_tokens) if direction == "denoise"
                 else (prompts.clean_tokens, prompts.corrupted_tokens))
    if source is None:
        source = source_cache(model, src, variant_hook_names(component, variants), hooks)
    B, d = len(prompts), model.cfg.d_model
    shape = {"metric": (), "per_example": (B,), "residual": (B, d)}[what]
    values = torch.full((len(variants), *shape), float("nan"))
    done = torch.zeros(len(variants), dtype=torch.bool)
    if checkpoint is not None:
        values, done = ckpt.load(ckpt.check_path(checkpoint), key, values, done)
    todo = [i for i in range(len(variants)) if not done[i]]
    for i in tqdm(todo, desc=f"patch {component} (reference)", disable=not progress, leave=False):
        values[i] = readout(model, base, prompts, metric, list(hooks) + variant_hooks(component, variants[i], source, eps), what)
        done[i] = True
        if checkpoint is not None:
            ckpt.save(checkpoint, key, values, done)
    return values


def _patch_hook(source: torch.Tensor, head: int | None, pos: int | None, head_dim: int = 2):
    """A hook writing ``source`` into the activation at (head, pos); None means all."""

    def hook(act, hook=None):
        act = act.clone()
        heads = None if head is None else [head]
        if pos is None and heads is None:
            return source.to(act.dtype)
        pos_ix = None if pos is None else torch.full((act.shape[0],), pos, dtype=torch.long)
        ix = select(act, heads, pos_ix, head_dim=head_dim)
        act[ix] = source[ix].to(act.dtype)
        return act

    return hook


# ------------------------------------------------------------------------------ path patching
def path_patch(
    model,
    prompts: PromptSet,
    senders: list[tuple[int, int | None]],
    receivers: str | list[tuple[int, int, str]] = RESID_FINAL,
    sender_positions=None,
    receiver_positions=None,
    freeze_mlps: bool = False,
    metric=logit_diff,
    _caches: tuple | None = None,
) -> float:
    """Exact path patching (Wang et al. 2022, appendix B); returns the mean metric of the final run.

    x = clean prompts, x' = corrupted prompts.
      1. run x', cache the senders' outputs;  2. run x, cache every head's output (and MLP's);
      3. run x with every head's output frozen to its x value except the senders, whose outputs at
         ``sender_positions`` take their x' values; MLPs recompute (or are frozen, ``freeze_mlps``).
         Cache the receivers' inputs;
      4. run x with only the receivers' inputs set to their step-3 values; read the metric.
    With ``receivers="resid_final"`` step 4 is step 3's own output (the final residual feeds only
    the unembedding). The effect is usually reported as (M - M_clean) / (M_corrupt - M_clean).
    Interventions registered on the model act in every run (before the freezing and patching).

    Args:
        senders: (layer, head) pairs; (layer, None) is the MLP of that layer.
        receivers: "resid_final", or (layer, head, "q"|"k"|"v") triples. For k/v of a GQA model
            ``head`` is the key/value head, shared by its group of query heads.
        sender_positions, receiver_positions: None (all), an int, a named position ("END", "S2"),
            or a [batch] tensor.
        freeze_mlps: freeze every MLP (but sender MLPs) to its clean output too.
    """
    prompts = on_model_device(model, prompts)
    n_layers = model.cfg.n_layers
    head_senders = check_heads(model, [s for s in senders if s[1] is not None])
    mlp_senders = sorted({int(s[0]) for s in senders if s[1] is None})
    if any(not 0 <= l < n_layers for l in mlp_senders):
        raise ComponentError(f"MLP sender layer out of range (0..{n_layers - 1})")
    receivers = check_receivers(model, receivers)
    s_pos = resolve_positions(sender_positions, prompts)
    r_pos = resolve_positions(receiver_positions, prompts)
    clean_cache, corrupt_cache = _caches or path_patch_caches(model, prompts)

    # Step 3: freeze all heads (and optionally MLPs) to clean, senders to corrupted.
    freeze = []
    by_layer: dict[int, list[int]] = {}
    for l, h in head_senders:
        by_layer.setdefault(l, []).append(h)
    for layer in range(n_layers):
        z = hook_name("z", layer)
        freeze.append((z, _frozen_hook(clean_cache[z], corrupt_cache[z], by_layer.get(layer), s_pos)))
        if freeze_mlps or layer in mlp_senders:
            m = hook_name("mlp_out", layer)
            senders_here = [0] if layer in mlp_senders else None
            base = clean_cache[m] if freeze_mlps else None
            freeze.append((m, _frozen_hook(base, corrupt_cache[m], senders_here, s_pos, whole=True)))
    if receivers == RESID_FINAL:
        return float(readout(model, prompts.clean_tokens, prompts, metric, freeze))

    recv_names = {hook_name(k, l) for l, _, k in receivers}
    stored = source_cache(model, prompts.clean_tokens, recv_names, freeze)
    # Step 4: only the receivers' inputs take their step-3 values.
    groups: dict[str, list[int]] = {}
    for l, h, k in receivers:
        groups.setdefault(hook_name(k, l), []).append(h)
    patch_hooks = [(n, _write_hook(stored[n], hs, r_pos)) for n, hs in groups.items()]
    return float(readout(model, prompts.clean_tokens, prompts, metric, patch_hooks))


def path_patch_cache_names(n_layers: int) -> frozenset[str]:
    """The activations path patching caches from the clean and corrupted runs: every head's z and
    every MLP's output."""
    return frozenset(hook_name(kind, l) for l in range(n_layers) for kind in ("z", "mlp_out"))


def path_patch_caches(model, prompts: PromptSet):
    """Steps 1-2 of path patching: clean and corrupted caches of head and MLP outputs."""
    prompts = on_model_device(model, prompts)
    names = path_patch_cache_names(model.cfg.n_layers)
    with torch.no_grad():
        _, clean = model.run_with_cache(prompts.clean_tokens, names_filter=lambda n: n in names)
        _, corrupt = model.run_with_cache(prompts.corrupted_tokens, names_filter=lambda n: n in names)
    return clean, corrupt


def _frozen_hook(base, sender_values, senders, pos, whole: bool = False):
    """Set the activation to ``base`` (None: keep it), then write the senders' values at ``pos``."""

    def hook(act, hook=None):
        act = act.clone() if base is None else base.clone().to(act.dtype)
        if senders is not None:
            ix = select(act, None if whole else senders, pos)
            act[ix] = sender_values[ix].to(act.dtype)
        return act

    return hook


def _write_hook(values, heads, pos):
    def hook(act, hook=None):
        act = act.clone()
        ix = select(act, heads, pos)
        act[ix] = values[ix].to(act.dtype)
        return act

    return hook


# ------------------------------------------------------------------------------ edge patching
EDGE_HOOKS = {"q": "blocks.{}.hook_q_input", "k": "blocks.{}.hook_k_input", "v": "blocks.{}.hook_v_input",
              "mlp": "blocks.{}.hook_mlp_in"}


class _edge_inputs:
    """Context: the bridge exposes each head's q/k/v input and each MLP's input as hook points
    (TransformerLens's split-qkv and mlp-in hooks), restored on exit."""

    def __init__(self, model):
        self.model = model

    def __enter__(self):
        cfg = self.model.cfg
        self.before = (bool(getattr(cfg, "use_split_qkv_input", False)), bool(getattr(cfg, "use_hook_mlp_in", False)))
        self.model.set_use_split_qkv_input(True)
        self.model.set_use_hook_mlp_in(True)
        return self.model

    def __exit__(self, *exc):
        self.model.set_use_split_qkv_input(self.before[0])
        self.model.set_use_hook_mlp_in(self.before[1])


def sender_contributions(model, tokens, hooks=()) -> dict:
    """c_s of every sender on ``tokens``: "embed" [B, T, d], ("head", l) [B, T, H, d] (z_h W_O[h],
    no output bias), ("mlp", l) [B, T, d]; and each layer's ("z", l) [B, T, H, dh]."""
    L = model.cfg.n_layers
    names = {hook_name("resid_pre", 0)} | {hook_name("z", l) for l in range(L)} | \
        {hook_name("mlp_out", l) for l in range(L)}
    cache = source_cache(model, tokens, names, hooks)
    W_O = model.W_O.detach()  # [L, H, dh, d]
    out = {"embed": cache[hook_name("resid_pre", 0)]}
    for l in range(L):
        out["z", l] = cache[hook_name("z", l)]
        out["head", l] = torch.einsum("bthe,hed->bthd", out["z", l], W_O[l])
        out["mlp", l] = cache[hook_name("mlp_out", l)]
    return out


def edge_patch_reference(model, prompts: PromptSet, edges_, direction: str = "denoise", metric=logit_diff,
                         progress: bool = False) -> torch.Tensor:
    """metric(patched) - metric(base) for each edge (``interp.edges``), one hooked forward each:
    the sender's change c_s(source) - c_s(base), from two cached runs, is added to the receiver's
    input hook (a head's q/k/v input, an MLP's input, or the final residual stream)."""
    prompts = on_model_device(model, prompts)
    base_tokens, src_tokens = ((prompts.corrupted_tokens, prompts.clean_tokens) if direction == "denoise"
                               else (prompts.clean_tokens, prompts.corrupted_tokens))
    c_base, c_src = sender_contributions(model, base_tokens), sender_contributions(model, src_tokens)

    def delta(s):
        if s.kind == "embed":
            return c_src["embed"] - c_base["embed"]
        if s.kind == "mlp":
            return c_src["mlp", s.layer] - c_base["mlp", s.layer]
        return c_src["head", s.layer][:, :, s.head] - c_base["head", s.layer][:, :, s.head]

    def add(d, head):
        def hook(act, hook=None):
            act = act.clone()
            if head is None:
                act += d.to(act.dtype)
            else:
                act[:, :, head] += d.to(act.dtype)
            return act
        return hook

    base = float(readout(model, base_tokens, prompts, metric))
    out = torch.empty(len(edges_))
    with _edge_inputs(model):
        for i, edge in enumerate(tqdm(edges_, desc="edge patching (reference)", disable=not progress, leave=False)):
            r = edge.receiver
            if r.kind == "logits":
                name, head = hook_name("resid_post", model.cfg.n_layers - 1), None
            else:
                name, head = EDGE_HOOKS[r.kind].format(r.layer), (None if r.kind == "mlp" else r.head)
            out[i] = float(readout(model, base_tokens, prompts, metric, [(name, add(delta(edge.sender), head))])) - base
    return out
