"""Generation under head ablations: many ablated copies of one prompt decoded side by side.

Evaluating an ablation means reading what the model *says* with the heads ablated (Zhou et al.
2025 judge 128 generated tokens). Each variant here is one set of ablated heads (UA: q := eps q;
SC: z := eps z; zero: z := 0; at every position, prompt and generated tokens alike). All variants
share the prompt, so they share its length: they run as one batch with no padding, on the package's
own forward (``interp.weights.Weights``, held equal to the TransformerBridge by the tests) with a
key/value cache. Interventions registered on the model (``with interp.ablate(model, heads, "ua")``)
act in every variant before the variant's own ablation, as hooks would; those that depend on the
position (mean, resample, position-restricted ablations) cannot extend to generated tokens and are
refused, as are hooks that are not interp edits.

    >>> texts = generate(model, tokens, [("ua", []), ("ua", [(3, 7)]), ("sc", [(3, 7)])], max_new=64)
"""
from __future__ import annotations

import torch

from interp.ablation import ablation_factors
from interp.errors import ComponentError, EngineUnsupported
from interp.interventions import HEAD_KINDS, model_edits
from interp.kernels import prefix_attention
from interp.weights import Weights, rotary_tables, rotate, unsupported

Head = tuple[int, int]
Ablation = tuple[str, list[Head]]  # (mode, heads): mode "ua", "sc" or "zero"


@torch.no_grad()
def generate_tokens(
    model,
    prompt: torch.Tensor,
    ablations: list[Ablation],
    eps: float = 1e-5,
    max_new: int = 128,
    top_k: int | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    stop_ids: set[int] | None = None,
    verify: int = 2,
) -> list[list[int]]:
    """New tokens of every variant (stop token excluded).

    Args:
        prompt: [T] token ids (no padding).
        ablations: one (mode, heads) per variant; ("ua", []) is the unablated model.
        top_k: None for greedy decoding, else sample from the top k at ``temperature``
            (the paper's second setting: top-5 at temperature 1), seeded by ``seed``.
        stop_ids: tokens that end a variant's answer (default: the tokenizer's EOS, and the chat
            end-of-turn token if it has one).
        verify: check the first step's logits of this many variants (the unablated one first)
            against the bridge's hooked forward; VerificationError if they disagree.
    """
    edits = generation_edits(model, len(prompt) + max_new)
    w = Weights.from_model(model)
    device = w.W_E.device
    edits = edits.to(device)
    L, V = model.cfg.n_layers, len(ablations)
    prompt = prompt.to(device)
    T = prompt.shape[0]
    q_f, z_f = ablation_factors(model, ablations, eps, device)
    q_f, z_f = q_f.to(w.W_Q.dtype), z_f.to(w.W_Q.dtype)
    stop = stop_ids if stop_ids is not None else _stop_ids(model.tokenizer)
    cos, sin = rotary_tables(model, T + max_new, device, w.W_Q.dtype) if w.rotary else (None, None)
    gen = torch.Generator(device=device).manual_seed(seed)

    keys: list[torch.Tensor] = []
    values: list[torch.Tensor] = []

    def layer_step(l, x, p0):
        """One layer for rows x [V, S, d] at positions p0.. (the cache holds positions < p0)."""
        S = x.shape[1]
        q, k, v = (edits.apply(kind, l, t) for kind, t in zip("qkv", w.project(l, x)))
        q = q * q_f[:, l, None]
        if w.rotary:
            q, k = rotate(q, cos[p0:p0 + S], sin[p0:p0 + S]), rotate(k, cos[p0:p0 + S], sin[p0:p0 + S])
        if p0 == 0:
            keys.append(k), values.append(v)
            empty = k[:, :0]
            z = prefix_attention(q[None], k[None], v[None], empty, empty, w.scale)[0]
        else:
            k_pre, v_pre = keys[l], values[l]
            z = _attend_rows(q, k, v, k_pre, v_pre, w.scale)
            keys[l], values[l] = torch.cat([k_pre, k], 1), torch.cat([v_pre, v], 1)
        x = x + w.out(l, edits.apply("z", l, z) * z_f[:, l, None])
        return x + w.mlp(l, x)

    x = w.embed(prompt[None]).expand(V, -1, -1)
    for l in range(L):
        x = layer_step(l, x, 0)
    out: list[list[int]] = [[] for _ in range(V)]
    live = torch.ones(V, dtype=torch.bool)
    for step in range(max_new):
        logits = w.norm(x[:, -1], w.ln_final) @ w.W_U
        if w.b_U is not None:
            logits = logits + w.b_U
        if step == 0:
            _check_first_step(model, prompt, ablations, eps, logits, verify)
        token = _pick(logits.float(), top_k, temperature, gen)
        for i, t in enumerate(token.tolist()):
            if live[i]:
                if t in stop:
                    live[i] = False
                else:
                    out[i].append(t)
        if not live.any() or step == max_new - 1:
            break
        pos = T + step
        x = w.W_E[token][:, None].to(w.residual_dtype)
        if w.W_pos is not None:
            x = x + w.W_pos[pos]
        for l in range(L):
            x = layer_step(l, x, pos)
    return out


def _check_first_step(model, prompt, ablations, eps, logits, k: int) -> None:
    """The first step's logits of up to k variants (0, then evenly spread) against the bridge."""
    from interp.ablation import ablation_hooks
    from interp.errors import VerificationError
    from interp.verify import tolerance

    picks = sorted({0, *[round(i * (len(ablations) - 1) / max(1, k - 1)) for i in range(1, k)]})[:max(k, 0)]
    for i in picks:
        mode, heads = ablations[i]
        hooks = ablation_hooks(model, heads, mode, eps=eps) if heads else []
        ref = model.run_with_hooks(prompt[None], fwd_hooks=hooks)[0, -1].float()
        diff = float((logits[i].float() - ref).abs().max())
        tol = tolerance(logits.dtype, float(ref.abs().max()))
        if not diff <= tol:
            raise VerificationError(f"generation's first step (variant {i}: {mode} {heads}) differs from the "
                                    f"model's hooked forward by {diff:.3g} (tolerance {tol:.2g})")


def generation_edits(model, n_pos: int | None = None):
    """The registered edits generation can apply at every new position (whole-head scalings of
    q, k, v or z); EngineUnsupported for anything else."""
    reason = unsupported(model, n_pos)
    if reason:
        raise EngineUnsupported(f"generation does not model {reason}")
    edits = model_edits(model)
    for e in edits.edits:
        if e.kind not in HEAD_KINDS or not e.whole_heads:
            raise EngineUnsupported(f"generation cannot apply {e.describe()} to generated tokens (only "
                                    "zero, sc and ua ablations at every position extend to new tokens)")
    return edits


def generate(model, prompt: torch.Tensor, ablations: list[Ablation], **kwargs) -> list[str]:
    """``generate_tokens`` decoded to text, one string per variant."""
    return [model.tokenizer.decode(t, skip_special_tokens=True) for t in generate_tokens(model, prompt, ablations, **kwargs)]


def _attend_rows(q, k, v, k_pre, v_pre, scale):
    """Rows q [V, S, H, dh] over their own cache k_pre [V, P, Hkv, dh] and new keys k [V, S, ...]."""
    kk, vv = torch.cat([k_pre, k], 1), torch.cat([v_pre, v], 1)
    P, S = k_pre.shape[1], q.shape[1]
    mask = torch.arange(P + S, device=q.device)[None, :] <= P + torch.arange(S, device=q.device)[:, None]
    z = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2), attn_mask=mask, scale=scale,
        enable_gqa=q.shape[2] != k.shape[2])
    return z.transpose(1, 2)


def _pick(logits: torch.Tensor, top_k: int | None, temperature: float, gen: torch.Generator) -> torch.Tensor:
    """Greedy (top_k None) or top-k sampling: [V, vocab] -> [V]."""
    if top_k is None:
        return logits.argmax(-1)
    if temperature <= 0:
        raise ComponentError("temperature must be > 0 for sampling (use top_k=None for greedy)")
    vals, idx = logits.topk(top_k, -1)
    probs = (vals / temperature).softmax(-1)
    choice = torch.multinomial(probs, 1, generator=gen)
    return idx.gather(-1, choice)[:, 0]


def _stop_ids(tokenizer) -> set[int]:
    ids = {tokenizer.eos_token_id}
    for name in ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|endoftext|>"):
        i = tokenizer.convert_tokens_to_ids(name)
        if isinstance(i, int) and i != tokenizer.unk_token_id:
            ids.add(i)
    return ids - {None}
