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

from interp.errors import ComponentError
from interp.hooks import hook_name
from interp.metrics import at_answer, logit_diff
from interp.result import Result
from interp.tasks.prompts import PromptSet


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


def _check_additive_heads(model, cache, layer: int, rows, pos):
    """The heads' outputs plus the output bias (b_O, e.g. folded value biases) make the attention output."""
    heads = cache[hook_name("result", layer)][rows, pos].sum(1)
    b_O = getattr(model, "b_O", None)
    if b_O is not None:
        heads = heads + b_O[layer].detach()
    out = cache[hook_name("attn_out", layer)][rows, pos]
    if not torch.allclose(heads, out, atol=1e-3 * (1 + out.abs().max().item())):
        raise ComponentError(
            "per-head outputs do not sum to the attention output of this model (a post-attention "
            "norm, as in Gemma 3): per-head DLA through that norm is not supported yet"
        )


def direct_logit_attribution(model, prompts: PromptSet, which: str = "clean", scale_from: str | None = None) -> DLA:
    """DLA of every head, every layer's attention and MLP, and the embedding.

    Read at each example's answer position on the clean (or ``which="corrupted"``) prompts, onto
    the answer-minus-distractor direction, then averaged over examples. ``scale_from`` takes the
    frozen final-norm scale from the other run (e.g. the corrupted components over the clean
    scale: the direct effect of a noising patch), default: the same run.
    """
    tokens = prompts.clean_tokens if which == "clean" else prompts.corrupted_tokens
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    rows = torch.arange(len(prompts))
    pos = prompts.answer_pos
    scale = cache["ln_final.hook_scale"][rows, pos]  # [batch, 1]
    if scale_from is not None and scale_from != which:
        other = prompts.clean_tokens if scale_from == "clean" else prompts.corrupted_tokens
        with torch.no_grad():
            _, sc = model.run_with_cache(other, names_filter=lambda n: n == "ln_final.hook_scale")
        scale = sc["ln_final.hook_scale"][rows, pos]
    direction = logit_diff_directions(model, prompts)  # [batch, d_model]

    def attribute(x):  # x: [batch, ..., d_model] at the answer position
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        return ((x / scale.reshape(x.shape[0], *([1] * (x.ndim - 1)))) * direction.reshape(shape)).sum(-1)

    L = model.cfg.n_layers
    heads, attn, mlp = [], [], []
    for layer in range(L):
        _check_additive_heads(model, cache, layer, rows, pos)
        heads.append(attribute(cache[hook_name("result", layer)][rows, pos]).mean(0))
        attn.append(attribute(cache[hook_name("attn_out", layer)][rows, pos]).mean(0))
        mlp.append(attribute(cache[hook_name("mlp_out", layer)][rows, pos]).mean(0))
    embed = attribute(cache["hook_embed"][rows, pos]).mean(0)
    total = logit_diff(logits, prompts).mean()
    attn_t, mlp_t = torch.stack(attn), torch.stack(mlp)
    meta = {"n_prompts": len(prompts), "which": which}
    return DLA(
        heads=Result(torch.stack(heads), ("layer", "head"), "dla_heads", meta=meta),
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
        m = metric(logits, prompts).mean()
        grads = torch.autograd.grad(m, [acts[n] for n in names])
    values = []
    for n, g in zip(names, grads):
        delta = (clean_cache[n] - acts[n].detach()) * g
        # head: sum over pos and d_head -> [batch, head]; resid: sum over d_model -> [batch, pos]
        values.append((delta.sum((1, 3)) if kind == "z" else delta.sum(-1)).mean(0))
    corrupted = float(m.detach())
    with torch.no_grad():
        clean = float(metric(model(prompts.clean_tokens), prompts).mean())
    axes = ("layer", "head") if kind == "z" else ("layer", "pos")
    return Result(
        torch.stack(values) + corrupted, axes, f"atp_{component}", getattr(metric, "__name__", "metric"),
        clean=clean, corrupted=corrupted,
        meta={"n_prompts": len(prompts)},
    )
