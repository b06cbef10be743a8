"""Logit attribution: direct logit attribution, the logit lens, attribution patching.

Direct logit attribution (DLA). The final residual at the answer position is a sum of components
(embedding, every head's output, every MLP's output). With the final norm's scale s frozen from the
clean run, each component c contributes

    DLA(c) = (c / s) * w_norm . (W_U[:, answer] - W_U[:, distractor])

and the contributions add up to the logit difference (minus the unembedding bias difference, zero
for the models here). TransformerLens's ``stack_head_results`` + ``apply_ln_to_stack`` compute the
same per head.

Attribution patching (AtP, Nanda 2023; Kramar et al. 2024): a first-order estimate of every
activation-patching effect from one clean forward, one corrupted forward and one backward:
    M(patched) - M(corrupt) ~ (a_clean - a_corrupt) . dM/da |_corrupt
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.errors import ComponentError, InterpError
from interp.hooks import hook_name
from interp.memory import available_bytes, format_bytes
from interp.metrics import at_answer, logit_diff
from interp.result import Result
from interp.tasks.prompts import PromptSet, check_prompts, on_model_device


@dataclass
class DLA:
    """Direct logit attribution, averaged over examples.

    heads: [layer, head]; attn, mlp: [layer]; embed: the token embedding's share;
    total: the mean logit difference; rest: total - (embed + attn + mlp) (the unembedding bias
    difference and numerical error).
    """

    heads: Result
    attn: Result
    mlp: Result
    embed: float
    total: float
    rest: float

    def to_dict(self) -> dict:
        return {"heads": self.heads.values.tolist(), "attn": self.attn.values.tolist(),
                "mlp": self.mlp.values.tolist(), "embed": self.embed, "total": self.total,
                "rest": self.rest}


def _final_norm_weight(model) -> torch.Tensor | None:
    ln = model.ln_final
    w = getattr(getattr(ln, "_original_component", ln), "weight", None)
    return None if w is None else w.detach()


def logit_diff_directions(model, prompts: PromptSet) -> torch.Tensor:
    """[batch, d_model]: (W_U[:, answer] - W_U[:, distractor]) * w_final_norm, per example."""
    W_U = model.W_U.detach()
    d = (W_U[:, prompts.answer_ids] - W_U[:, prompts.distractor_ids]).T
    w = _final_norm_weight(model)
    return d if w is None else d * w


def _check_additive_heads(model, heads_out, attn_out, layer: int):
    """The heads' outputs plus the output bias (b_O, e.g. folded value biases) make the attention output.

    ``heads_out``: [batch, head, d_model] and ``attn_out``: [batch, d_model], both at the answer
    positions."""
    heads = heads_out.sum(1)
    b_O = getattr(model, "b_O", None)
    if b_O is not None:
        heads = heads + b_O[layer].detach()
    if not torch.allclose(heads, attn_out, atol=1e-3 * (1 + attn_out.abs().max().item())):
        raise ComponentError(
            "per-head outputs do not sum to the attention output of this model (a post-attention "
            "norm, as in Gemma 3): per-head DLA through that norm is not supported yet"
        )


class _StopForward(Exception):
    """Raised by a hook to end a forward once everything needed has been read."""


def _run_at_answer(model, tokens, answer_pos, names: list[str], stop_at: str) -> dict[str, torch.Tensor]:
    """One forward of ``tokens`` that keeps each named activation at each row's answer position
    only ([batch, ...] instead of [batch, pos, ...]) and stops at hook ``stop_at`` (kept too):
    no activation cache and no [batch, pos, vocab] logits are ever held."""
    rows = torch.arange(tokens.shape[0], device=tokens.device)
    answer_pos = answer_pos.to(tokens.device)
    kept: dict[str, torch.Tensor] = {}

    def keep(name):  # key by the registered name: hook.name may be the bridge's alias target
        def hook(x, hook=None):
            # advanced indexing: a copy, the rest is freed (brought to the tokens' device: a model
            # split over GPUs computes later layers elsewhere)
            kept[name] = x[rows.to(x.device), answer_pos.to(x.device)].detach().to(rows.device)
            if name == stop_at:
                raise _StopForward

        return hook

    with torch.no_grad():
        try:
            model.run_with_hooks(tokens, fwd_hooks=[(n, keep(n)) for n in names + [stop_at]])
        except _StopForward:
            pass
    return kept


def _forward_bytes(model, n_pos: int) -> int:
    """Estimated peak memory, in bytes, of one example's forward of ``n_pos`` tokens with nothing
    cached (see ``_run_at_answer``). Layers run one at a time, so the peak is one layer's
    temporaries: eager attention materialises [heads, T, T] fp32 scores, masked scores, pattern
    and their copies (5 of them), the per-head results ``hook_result`` [T, heads, d_model] (2),
    the MLP hidden [T, d_mlp] (gate, up, product: 3) and about a dozen residual-width tensors.
    Measured on SmolLM2 (CPU, fp32): 644 MiB at T=2048 and 2.7 GiB at T=4096, estimated 0.9 and
    3.3 GiB."""
    cfg = model.cfg
    elt = torch.tensor([], dtype=cfg.dtype).element_size()
    T = int(n_pos)
    d_mlp = cfg.d_mlp or 4 * cfg.d_model
    return (5 * cfg.n_heads * T * T * 4 + 2 * T * cfg.n_heads * cfg.d_model * elt
            + 3 * T * d_mlp * elt + 12 * T * cfg.d_model * elt)


_MEMORY_FRACTION = 0.7  # of the free memory a DLA chunk may use; the estimate above has its own margin


def _memory_budget(device: torch.device) -> int:
    """Bytes one DLA chunk may use: a fraction of the device's free memory (``interp.memory``)."""
    return int(_MEMORY_FRACTION * available_bytes(device))


def _dla_chunks(model, prompts: PromptSet, budget: int | None) -> list[slice]:
    """Consecutive example ranges whose forwards fit ``budget`` bytes (default: ``_memory_budget``).

    Raises InterpError, before any forward, when one example alone does not fit."""
    budget = _memory_budget(torch.device(model.cfg.device)) if budget is None else budget
    lengths = (prompts.answer_pos + 1).tolist()  # a forward needs the tokens up to the answer only
    longest = max(range(len(lengths)), key=lambda i: lengths[i])
    need = _forward_bytes(model, lengths[longest])
    if need > budget:
        raise InterpError(
            f"DLA of example {longest} ({lengths[longest]:,} tokens) needs about {format_bytes(need)} for one "
            f"forward, more than the {format_bytes(budget)} memory budget; shorten the prompt or free memory"
        )
    chunks, start = [], 0
    for i in range(1, len(lengths)):  # grow the chunk while its widest example x its size fits
        if (i + 1 - start) * _forward_bytes(model, max(lengths[start:i + 1])) > budget:
            chunks.append(slice(start, i))
            start = i
    chunks.append(slice(start, len(lengths)))
    return chunks


def direct_logit_attribution(model, prompts: PromptSet, which: str = "clean", scale_from: str | None = None,
                             memory_budget: int | None = None) -> DLA:
    """DLA of every head, every layer's attention and MLP, and the embedding.

    Read at each example's answer position on the clean (or ``which="corrupted"``) prompts, onto
    the answer-minus-distractor direction, then averaged over examples. ``scale_from`` takes the
    frozen final-norm scale from the other run (e.g. the corrupted components over the clean
    scale: the direct effect of a noising patch), default: the same run.

    Memory: each forward keeps only the answer position of the activations it needs (hooks, not
    ``run_with_cache``) and stops after the final norm; examples run in chunks sized so that a
    chunk's forward fits ``memory_budget`` bytes (default: 70% of the free memory, see
    ``_memory_budget``). An example too long for the budget is refused before any forward.
    """
    if which not in ("clean", "corrupted") or scale_from not in (None, "clean", "corrupted"):
        raise InterpError(f"which and scale_from are 'clean' or 'corrupted', got {which!r}, {scale_from!r}")
    check_prompts(model, prompts)
    prompts = on_model_device(model, prompts)
    L = model.cfg.n_layers
    names = (["hook_embed", "ln_final.hook_scale"]
             + [hook_name(kind, l) for l in range(L) for kind in ("result", "attn_out", "mlp_out")])
    other = scale_from if scale_from not in (None, which) else None
    adapter = getattr(model, "adapter", None)
    transform = getattr(adapter, "apply_output_logits_transform", lambda x: x)
    per_example = []  # per chunk: (heads [b, L, H], attn [b, L], mlp [b, L], embed [b], total [b])
    for chunk in _dla_chunks(model, prompts, memory_budget):
        part = prompts.subset(chunk)
        width = int(part.answer_pos.max()) + 1  # right padding after the last answer is never read
        tokens = (part.clean_tokens if which == "clean" else part.corrupted_tokens)[:, :width]
        kept = _run_at_answer(model, tokens, part.answer_pos, names, stop_at="unembed.hook_in")
        scale = kept["ln_final.hook_scale"]  # [batch, 1]
        if other is not None:
            tokens = (part.clean_tokens if other == "clean" else part.corrupted_tokens)[:, :width]
            scale = _run_at_answer(model, tokens, part.answer_pos, [], stop_at="ln_final.hook_scale")[
                "ln_final.hook_scale"]
        direction = logit_diff_directions(model, part)  # [batch, d_model]

        def attribute(x):  # x: [batch, ..., d_model] at the answer position
            shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
            return ((x / scale.reshape(x.shape[0], *([1] * (x.ndim - 1)))) * direction.reshape(shape)).sum(-1)

        heads, attn, mlp = [], [], []
        for layer in range(L):
            result, attn_out = kept[hook_name("result", layer)], kept[hook_name("attn_out", layer)]
            _check_additive_heads(model, result, attn_out, layer)
            heads.append(attribute(result))
            attn.append(attribute(attn_out))
            mlp.append(attribute(kept[hook_name("mlp_out", layer)]))
        with torch.no_grad():
            logits = transform(model.unembed(kept["unembed.hook_in"][None]))[0]  # [batch, vocab]
        per_example.append((torch.stack(heads, 1), torch.stack(attn, 1), torch.stack(mlp, 1),
                            attribute(kept["hook_embed"]), logit_diff(logits, part)))
    heads_t, attn_t, mlp_t, embed, total = (torch.cat(xs).mean(0) for xs in zip(*per_example))
    meta = {"n_prompts": len(prompts), "which": which}
    return DLA(
        heads=Result(heads_t, ("layer", "head"), "dla_heads", meta=meta),
        attn=Result(attn_t, ("layer",), "dla_attn", meta=meta),
        mlp=Result(mlp_t, ("layer",), "dla_mlp", meta=meta),
        embed=float(embed),
        total=float(total),
        rest=float(total - embed - attn_t.sum() - mlp_t.sum()),
    )


def logit_lens(model, prompts: PromptSet, which: str = "clean") -> Result:
    """The logit difference read from the residual stream after each layer (nostalgebraist 2020).

    Entry 0 is the embedding (input of layer 0), entry l the residual after layer l-1; the final
    norm is recomputed for each residual (not frozen) and the unembedding applied. The last entry
    equals the model's own logit difference.
    """
    check_prompts(model, prompts)
    prompts = on_model_device(model, prompts)
    tokens = prompts.clean_tokens if which == "clean" else prompts.corrupted_tokens
    L = model.cfg.n_layers
    names = {hook_name("resid_pre", 0)} | {hook_name("resid_post", l) for l in range(L)}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n in names)
        rows = torch.arange(len(prompts))
        resid = torch.stack(
            [cache[hook_name("resid_pre", 0)][rows, prompts.answer_pos]]
            + [cache[hook_name("resid_post", l)][rows, prompts.answer_pos] for l in range(L)]
        )  # [L+1, batch, d_model]
        logits = model.unembed(model.ln_final(resid))  # [L+1, batch, vocab]
        values = torch.stack([logit_diff(lg, prompts).mean() for lg in logits])
    return Result(values, ("layer",), "logit_lens", meta={"n_prompts": len(prompts), "which": which})


ATP_COMPONENTS = {"head_out": "z", "resid_pre": "resid_pre"}


def attribution_patching(model, prompts: PromptSet, component: str = "head_out", metric=logit_diff) -> Result:
    """AtP estimate of denoising activation patching (corrupted run, clean value patched in).

    value = M(corrupt) + sum over the patched entries of (a_clean - a_corrupt) * dM/da at the
    corrupted run, so it is on the same scale as ``patch(...)``'s values.
    head_out: Result[layer, head] (all positions); resid_pre: Result[layer, pos].
    """
    if component not in ATP_COMPONENTS:
        raise ComponentError(f"AtP supports {', '.join(ATP_COMPONENTS)}, not {component!r}")
    check_prompts(model, prompts)
    prompts = on_model_device(model, prompts)
    kind = ATP_COMPONENTS[component]
    L = model.cfg.n_layers
    names = [hook_name(kind, l) for l in range(L)]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(prompts.clean_tokens, names_filter=lambda n: n in names)
    acts: dict[str, torch.Tensor] = {}

    def start_graph(x, hook=None):  # make the forward differentiable even if weights are frozen
        return x if x.requires_grad else x.detach().requires_grad_(True)

    def keep(name):  # key by the registered name: hook.name may be the bridge's alias target
        def hook(x, hook=None):
            acts[name] = x
            return x

        return hook

    with torch.enable_grad():
        logits = model.run_with_hooks(
            prompts.corrupted_tokens,
            fwd_hooks=[("hook_embed", start_graph)] + [(n, keep(n)) for n in names],
        )
        m = metric(at_answer(logits, prompts.answer_pos), prompts)  # [batch]
        # The gradient of the *sum* is each example's gradient of its own metric (examples do not
        # interact), so (a_clean - a_corrupt) . grad estimates each example's change; the mean over
        # examples then estimates the change of the mean metric, as patch() reports it.
        grads = torch.autograd.grad(m.sum(), [acts[n] for n in names])
    values = []
    for n, g in zip(names, grads):
        delta = (clean_cache[n] - acts[n].detach()) * g
        # head: sum over pos and d_head -> [batch, head]; resid: sum over d_model -> [batch, pos]
        values.append((delta.sum((1, 3)) if kind == "z" else delta.sum(-1)).mean(0))
    corrupted = float(m.detach().mean())
    with torch.no_grad():
        clean = float(metric(at_answer(model(prompts.clean_tokens), prompts.answer_pos), prompts).mean())
    axes = ("layer", "head") if kind == "z" else ("layer", "pos")
    return Result(
        torch.stack(values) + corrupted, axes, f"atp_{component}", getattr(metric, "__name__", "metric"),
        clean=clean, corrupted=corrupted,
        meta={"n_prompts": len(prompts)},
    )
