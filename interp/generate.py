"""Generation with a key/value cache: many variants of one prompt decoded side by side.

The package's one decoder, on its own forward (``interp.weights.Weights``, held equal to the
TransformerBridge by the tests). It serves two analyses:

- Ablations (Zhou et al. 2025 judge what the model *says* with heads ablated): each variant is one
  set of ablated heads, at every position, prompt and generated tokens alike -- UA: q := eps q;
  SC: z := eps z; zero: z := 0.
- Retrieval heads (Wu et al. 2024): the top-1 attended position of every head at every step
  (``top1=True``), query masking of given heads from a given decoding step on (mode ``"mask"``:
  q := 0, so the head attends uniformly), and stopping at a newline once the answer has begun
  (``stop_at_newline=True``).

Steps. The prompt [T] is prefilled *without its last token*; decoding step t feeds the token at
position T - 1 + t (step 0: the prompt's last token; step t > 0: new token t - 1) and emits new
token t. So the query that emits the first new token is a decoding step, as in the paper's code:
its attention is read out, and masking from step 0 reaches it while the rest of the prompt (the
prefill) is never masked. ``top1[v][t]`` is then the attention of the query that *emitted*
``tokens[v][t]``.

All variants share the prompt, so they run as one batch without padding; when no variant ablates
the prompt (only "mask" variants and unablated ones), the prefill runs once and its cache is shared.
Greedy variants that stop drop out of the batch. Interventions registered on the model
(``with interp.ablate(model, heads, "ua")``) act in every variant before the variant's own
ablation, as hooks would; those that depend on the position (mean, resample, position-restricted
ablations) cannot extend to generated tokens and are refused, as are hooks that are not interp
edits. The first step is checked against the bridge's hooked forward (``verify``).

    >>> texts = generate(model, tokens, [("ua", []), ("ua", [(3, 7)]), ("sc", [(3, 7)])], max_new=64)
    >>> g = generation(model, tokens, [("ua", []), ("mask", top_heads)], max_new=50, top1=True,
    ...                stop_at_newline=True)        # g.tokens, g.top1[v]: [steps, layer, head]
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from interp.ablation import ablation_factors
from interp.errors import ComponentError, EngineUnsupported
from interp.interventions import HEAD_KINDS, model_edits
from interp.kernels import prefix_attention
from interp.weights import Weights, rotary_tables, rotate, unsupported

Head = tuple[int, int]
Ablation = tuple[str, list[Head]]  # (mode, heads): mode "ua", "sc", "zero" (every position) or "mask"
MODES = ("ua", "sc", "zero", "mask")


@dataclass
class Generation:
    """What ``generation`` produced, per variant.

    Attributes:
        tokens: the new tokens of each variant (the stop token excluded).
        top1: with ``top1=True``, per variant a [len(tokens[v]), layer, head] int tensor: the key
            position each head's query attended most (argmax over positions 0 .. query, the prompt
            and the answer so far) at the step that emitted each token; else None.
        first_logits: [V, vocab] the logits that chose each variant's first token (fp32, CPU).
        prompt_len: T.
    """

    tokens: list[list[int]]
    top1: list[torch.Tensor] | None
    first_logits: torch.Tensor
    prompt_len: int


def generation(
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
    *,
    mask_from: int = 0,
    top1: bool = False,
    stop_at_newline: bool = False,
) -> Generation:
    """Decode every variant of ``prompt`` (see the module docstring).

    Args:
        prompt: [T] token ids (no padding).
        ablations: one (mode, heads) per variant; ("ua", []) is the unablated model. Modes: "ua",
            "sc", "zero" at every position; "mask": q := 0 at the queries of decoding steps
            >= ``mask_from`` only (step 0's query is the prompt's last token).
        top_k: None for greedy decoding, else sample from the top k at ``temperature``
            (the paper's second setting: top-5 at temperature 1), seeded by ``seed``.
        stop_ids: tokens that end a variant's answer (default: the tokenizer's EOS, and the chat
            end-of-turn token if it has one).
        verify: check the first step's logits of this many variants (the first one first)
            against the bridge's hooked forward, and with ``top1`` its attention readout;
            VerificationError if they disagree. 0 skips the check.
        mask_from: the first decoding step whose query the "mask" variants zero.
        top1: read out every head's top-1 attended position at every step.
        stop_at_newline: a newline token ends the answer once it has begun (non-blank so far).
    """
    return generations(model, [(prompt, ablations)], eps, max_new, top_k, temperature, seed, stop_ids, verify,
                       mask_from=mask_from, top1=top1, stop_at_newline=stop_at_newline)[0]


@torch.no_grad()
def generations(
    model,
    batch: list[tuple[torch.Tensor, list[Ablation]]],
    eps: float = 1e-5,
    max_new: int = 128,
    top_k: int | None = None,
    temperature: float = 1.0,
    seed: int = 0,
    stop_ids: set[int] | None = None,
    verify: int = 2,
    *,
    mask_from: int = 0,
    top1: bool = False,
    stop_at_newline: bool = False,
) -> list[Generation]:
    """``generation`` for several prompts at once: one (prompt [T_i], variants) pair per entry,
    one Generation each. The prompts are prefilled one by one (each with its own cache) and then
    decoded as one batch: every step's projections and MLPs run over all rows of all prompts,
    which on a CPU costs little more than one row. ``verify`` checks the first prompt's variants."""
    if max_new < 1:
        raise ComponentError(f"max_new must be >= 1, got {max_new}")
    if not batch:
        raise ComponentError("generations needs at least one (prompt, variants) pair")
    for prompt, ablations in batch:
        if not isinstance(prompt, torch.Tensor) or prompt.ndim != 1 or prompt.numel() == 0:
            raise ComponentError(f"a prompt must be a non-empty [T] token tensor, got {getattr(prompt, 'shape', prompt)!r}")
        if not ablations:
            raise ComponentError("every prompt needs at least one variant, e.g. [('ua', [])]")
    longest = max(len(p) for p, _ in batch)
    edits = generation_edits(model, longest + max_new)
    w = Weights.from_model(model)
    device = w.W_E.device
    edits = edits.to(device)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    Hkv, dh = w.W_K.shape[1], w.W_K.shape[-1]
    stop = stop_ids if stop_ids is not None else _stop_ids(model.tokenizer)
    newline = _newline_ids(model.tokenizer) if stop_at_newline else frozenset()
    cos, sin = rotary_tables(model, longest + max_new, device, w.W_Q.dtype) if w.rotary else (None, None)
    gen = torch.Generator(device=device).manual_seed(seed)

    # Per prompt (group): its factors, and its prefill of positions 0 .. T - 2 (once when its
    # variants do not differ there: only "mask" variants and unablated ones).
    q_fs, z_fs, keeps, pre_k, pre_v, shared, plen = [], [], [], [], [], [], []
    for prompt, ablations in batch:
        whole, keep = _split_masks(model, ablations, device, w.W_Q.dtype)
        q_f, z_f = ablation_factors(model, whole, eps, device)
        q_f, z_f = q_f.to(w.W_Q.dtype), z_f.to(w.W_Q.dtype)
        same = bool((q_f == q_f[:1]).all() and (z_f == z_f[:1]).all())
        k_l, v_l = _prefill(w, edits, prompt.to(device), q_f[:1] if same else q_f, z_f[:1] if same else z_f, cos, sin)
        q_fs.append(q_f), z_fs.append(z_f), keeps.append(keep), pre_k.append(k_l), pre_v.append(v_l)
        shared.append(same), plen.append(len(prompt))
    q_f, z_f, keep = torch.cat(q_fs), torch.cat(z_fs), torch.cat(keeps)
    R = q_f.shape[0]
    group = torch.cat([torch.full((len(a),), g, dtype=torch.long) for g, (_, a) in enumerate(batch)]).to(device)
    start = torch.tensor(plen, device=device)[group] - 1  # each row's first query position
    rows = torch.arange(R, device=device)  # the variants still decoding, in batch order (grouped)
    suf_k = [torch.empty(R, max_new, Hkv, dh, device=device) for _ in range(L)]
    suf_v = [torch.empty(R, max_new, Hkv, dh, device=device) for _ in range(L)]
    token = torch.cat([p[-1:].to(device).expand(len(a)) for p, a in batch])
    # When every row has a prefix of its own (no prompt's variants share one prefill, or a prompt
    # has one variant), one padded attention over all rows replaces the loop over prompts:
    # [R, P_max, Hkv, dh] per layer and a mask of each row's real prefix positions (the loop's
    # per-prompt kernels made decoding host-bound). The loop stays for shared prefixes (long
    # contexts with several "mask" variants: padding would copy the prefix once per variant) and
    # where padding would more than double the prefix keys (one long prompt among short ones).
    real = sum((p - 1) * len(a) for p, (_, a) in zip(plen, batch))
    padded = (len(batch) > 1 and max(plen) > 1 and all(not sh or len(a) == 1 for sh, (_, a) in zip(shared, batch))
              and (max(plen) - 1) * R <= 2 * real)
    if padded:
        pre_k, pre_v, pre_valid, pre_len = _pad_prefixes(pre_k, pre_v, plen, [len(a) for _, a in batch], device)
    out: list[list[int]] = [[] for _ in range(R)]
    tops: list[list[torch.Tensor]] = [[] for _ in range(R)]
    done = [False] * R
    first_logits = None
    for step in range(max_new):
        pos = start[rows] + step
        x = w.W_E[token][:, None].to(w.residual_dtype)
        if w.W_pos is not None:
            x = x + w.W_pos[pos][:, None]
        if w.rotary:
            c, s_ = cos[pos][:, None], sin[pos][:, None]  # [rows, 1, dh]
        bounds = [] if padded else _runs(group[rows].tolist())  # (group, first row, end row) in batch order
        step_top = torch.empty(len(rows), L, H, dtype=torch.long, device=device) if top1 else None
        for l in range(L):
            q, k, v = (edits.apply(kind, l, t) for kind, t in zip("qkv", w.project(l, x)))
            q = q * q_f[rows, l, None]
            if step >= mask_from:
                q = q * keep[rows, l, None]
            if w.rotary:
                q, k = rotate(q, c, s_), rotate(k, c, s_)
            suf_k[l][:, step], suf_v[l][:, step] = k[:, 0], v[:, 0]
            if padded:
                z, idx = _attend(q[:, 0], pre_k[l], pre_v[l], suf_k[l][:, :step + 1], suf_v[l][:, :step + 1],
                                 w.scale, top1, pre_valid)
                if top1:  # a new key s sits at P_max + s in the padded scores, at position T - 1 + s in the row
                    step_top[:, l] = torch.where(idx >= pre_valid.shape[1], idx - pre_valid.shape[1] + pre_len, idx)
            else:
                z = torch.empty(len(rows), H, dh, device=device)
            for g, a, b in bounds:
                z[a:b], idx = _attend(q[a:b, 0], pre_k[g][l], pre_v[g][l], suf_k[l][a:b, :step + 1],
                                      suf_v[l][a:b, :step + 1], w.scale, top1)
                if top1:  # prefix index j is position j; new key s is position T - 1 + s: idx is the position
                    step_top[a:b, l] = idx
            x = x + w.out(l, edits.apply("z", l, z[:, None].to(q.dtype)) * z_f[rows, l, None])
            x = x + w.mlp(l, x)
        logits = w.norm(x[:, -1], w.ln_final) @ w.W_U
        if w.b_U is not None:
            logits = logits + w.b_U
        if step == 0:
            first_logits = logits.float().cpu()
            n0 = len(batch[0][1])
            _check_first_step(model, batch[0][0].to(device), batch[0][1], eps, logits[:n0], verify, mask_from,
                              step_top[:n0] if top1 else None)
        token = _pick(logits.float(), top_k, temperature, gen)
        top_cpu = step_top.to(torch.int32).cpu() if top1 else None
        for i, (r, t) in enumerate(zip(rows.tolist(), token.tolist())):
            if done[r]:
                continue
            if t in stop or (t in newline and model.tokenizer.decode(out[r]).strip()):
                done[r] = True
                continue
            out[r].append(t)
            if top1:
                tops[r].append(top_cpu[i])
        alive = [i for i, r in enumerate(rows.tolist()) if not done[r]]
        if not alive or step == max_new - 1:
            break
        if len(alive) < len(rows) and top_k is None:  # greedy: stopped variants leave the batch
            sel = torch.tensor(alive, device=device)
            if padded:
                pre_k, pre_v = [t[sel] for t in pre_k], [t[sel] for t in pre_v]
                pre_valid, pre_len = pre_valid[sel], pre_len[sel]
            for g, a, b in bounds:
                if not shared[g]:
                    mine = torch.tensor([i - a for i in alive if a <= i < b], dtype=torch.long, device=device)
                    pre_k[g] = [None if p is None else p[mine] for p in pre_k[g]]
                    pre_v[g] = [None if p is None else p[mine] for p in pre_v[g]]
            rows, token = rows[sel], token[sel]
            suf_k, suf_v = [t[sel] for t in suf_k], [t[sel] for t in suf_v]
        # (sampling: every row keeps drawing, so the seeded stream does not depend on who stopped)
    results, r0 = [], 0
    for g, (prompt, ablations) in enumerate(batch):
        n = len(ablations)
        top = ([torch.stack(tops[r]) if tops[r] else torch.empty(0, L, H, dtype=torch.int32) for r in range(r0, r0 + n)]
               if top1 else None)
        results.append(Generation(out[r0:r0 + n], top, first_logits[r0:r0 + n], plen[g]))
        r0 += n
    return results


def _prefill(w, edits, prompt, q_f, z_f, cos, sin):
    """Keys and values (fp32, after RoPE) of positions 0 .. T - 2 per layer: [B, T - 1, Hkv, dh]
    each, B = q_f's rows (1 when the variants share the prefill); None per layer for T = 1."""
    L, P = len(w.ln1), prompt.shape[0] - 1
    if P == 0:
        return [None] * L, [None] * L
    B = q_f.shape[0]
    keys, values = [], []
    x = w.embed(prompt[None, :P]).expand(B, -1, -1)
    for l in range(L):
        q, k, v = (edits.apply(kind, l, t) for kind, t in zip("qkv", w.project(l, x)))
        q = q * q_f[:, l, None]
        if w.rotary:
            q, k = rotate(q, cos[:P], sin[:P]), rotate(k, cos[:P], sin[:P])
        z = prefix_attention(q[None], k[None], v[None], k[:, :0], v[:, :0], w.scale)[0]
        keys.append(k.float()), values.append(v.float())
        x = x + w.out(l, edits.apply("z", l, z) * z_f[:, l, None])
        x = x + w.mlp(l, x)
    return keys, values


def _pad_prefixes(pre_k, pre_v, plen: list[int], rows_per_group: list[int], device):
    """Every group's own per-row prefix caches stacked over all rows, padded to the longest:
    keys and values [R, P_max, Hkv, dh] per layer, ``valid`` [R, P_max] (True at a row's real
    prefix positions) and each row's prefix length [R, 1] (for the top-1 readout)."""
    L, P_max = len(pre_k[0]), max(plen) - 1
    lens = torch.tensor([p - 1 for p, n in zip(plen, rows_per_group) for _ in range(n)], device=device)
    valid = torch.arange(P_max, device=device)[None] < lens[:, None]
    keys, values = [], []
    for l in range(L):
        ref = next(k[l] for k in pre_k if k[l] is not None)
        k_l = ref.new_zeros(len(lens), P_max, *ref.shape[2:])
        v_l = ref.new_zeros(len(lens), P_max, *ref.shape[2:])
        r = 0
        for g, n in enumerate(rows_per_group):
            if pre_k[g][l] is not None:
                k_l[r:r + n, :plen[g] - 1], v_l[r:r + n, :plen[g] - 1] = pre_k[g][l], pre_v[g][l]
            r += n
        keys.append(k_l), values.append(v_l)
    return keys, values, valid, lens[:, None]


def _runs(groups: list[int]) -> list[tuple[int, int, int]]:
    """Runs of equal group ids: [(group, start, end)] over the batch's rows."""
    out, a = [], 0
    for i in range(1, len(groups) + 1):
        if i == len(groups) or groups[i] != groups[a]:
            out.append((groups[a], a, i))
            a = i
    return out


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
    **options,
) -> list[list[int]]:
    """New tokens of every variant (stop token excluded): ``generation(...).tokens``. ``options``:
    ``mask_from``, ``stop_at_newline`` (see ``generation``)."""
    return generation(model, prompt, ablations, eps, max_new, top_k, temperature, seed, stop_ids, verify,
                      **options).tokens


def generate(model, prompt: torch.Tensor, ablations: list[Ablation], **kwargs) -> list[str]:
    """``generate_tokens`` decoded to text, one string per variant."""
    return [model.tokenizer.decode(t, skip_special_tokens=True) for t in generate_tokens(model, prompt, ablations, **kwargs)]


def _split_masks(model, ablations: list[Ablation], device, dtype):
    """The every-position ablations (a "mask" variant counts as unablated there) and the query
    keep-factors of the "mask" variants: [V, L, H, 1], 0 at the masked heads, 1 elsewhere."""
    from interp.hooks import check_heads

    keep = torch.ones(len(ablations), model.cfg.n_layers, model.cfg.n_heads, 1, device=device, dtype=dtype)
    whole = []
    for i, item in enumerate(ablations):
        try:
            mode, heads = item
        except (TypeError, ValueError):
            raise ComponentError(f"a variant is a (mode, heads) pair, got {item!r}") from None
        if mode not in MODES:
            raise ComponentError(f"unknown ablation mode {mode!r}: use ua, sc, zero or mask")
        if mode == "mask":
            for l, h in check_heads(model, heads, "q"):
                keep[i, l, h] = 0.0
            whole.append(("ua", []))
        else:
            whole.append((mode, list(heads)))
    return whole, keep


def _attend(q, k_pre, v_pre, k_new, v_new, scale: float, want_top1: bool, pre_valid=None):
    """One query per row over a prefix cache and the row's own new keys, in fp32.

    q [R, H, dh]; k_pre, v_pre [1 or R, P, Hkv, dh] or None; k_new, v_new [R, S, Hkv, dh];
    ``pre_valid`` [R, P]: the prefix positions each row attends to (the others weigh 0; padding).
    Returns z [R, H, dh] and, with ``want_top1``, the argmax over the concatenated [prefix, new]
    keys [R, H] (prefix first; ties go to the first position, as a uniform row does)."""
    R, H, dh = q.shape
    Hkv = k_new.shape[2]
    qg = q.float().view(R, Hkv, H // Hkv, dh)
    scores = torch.einsum("rkgd,rskd->rkgs", qg, k_new)
    P = 0 if k_pre is None else k_pre.shape[1]
    if P:
        pre = (torch.einsum("rkgd,pkd->rkgp", qg, k_pre[0]) if k_pre.shape[0] == 1
               else torch.einsum("rkgd,rpkd->rkgp", qg, k_pre))
        if pre_valid is not None:
            pre = pre.masked_fill(~pre_valid[:, None, None, :], float("-inf"))
        scores = torch.cat([pre, scores], -1)
    scores = scores * scale
    attn = scores.softmax(-1)
    z = torch.einsum("rkgs,rskd->rkgd", attn[..., P:], v_new)
    if P:
        z = z + (torch.einsum("rkgp,pkd->rkgd", attn[..., :P], v_pre[0]) if v_pre.shape[0] == 1
                 else torch.einsum("rkgp,rpkd->rkgd", attn[..., :P], v_pre))
    top = scores.argmax(-1).view(R, H) if want_top1 else None
    return z.reshape(R, H, dh), top


def _check_first_step(model, prompt, ablations, eps, logits, k: int, mask_from: int = 0, top1=None) -> None:
    """The first step's logits (and top-1 attention) of up to k variants (0, then evenly spread)
    against the bridge's hooked forward over the whole prompt."""
    from interp.ablation import ablation_hooks
    from interp.errors import VerificationError
    from interp.hooks import hook_name
    from interp.verify import float64_referee, referee_words, tolerance, within_referee

    if k <= 0:
        return
    T = prompt.shape[0]
    picks = sorted({0, *[round(i * (len(ablations) - 1) / max(1, k - 1)) for i in range(1, k)]})[:k]
    referee = None

    def variant_hooks(m, mode, heads):
        if mode == "mask":
            return ablation_hooks(m, heads, "ua", positions=T - 1, eps=0.0) if heads and mask_from == 0 else []
        return ablation_hooks(m, heads, mode, eps=eps) if heads else []

    for i in picks:
        mode, heads = ablations[i]
        hooks = variant_hooks(model, mode, heads)
        seen: dict[int, torch.Tensor] = {}
        if top1 is not None:
            def keep_top(layer):
                def hook(pattern, hook):
                    seen[layer] = pattern[0, :, -1].argmax(-1)
                return hook
            hooks = hooks + [(hook_name("pattern", l), keep_top(l)) for l in range(model.cfg.n_layers)]
        ref = model.run_with_hooks(prompt[None], fwd_hooks=hooks)[0, -1].float()
        diff = float((logits[i].float() - ref).abs().max())
        tol = tolerance(logits.dtype, float(ref.abs().max()))
        if not diff <= tol:
            ok, far = False, None
            if logits.dtype == torch.float32:  # an fp32 gap: the float64 referee settles it (interp.verify)
                try:
                    referee = float64_referee(model) if referee is None else referee
                    exact = referee.run_with_hooks(prompt[None], fwd_hooks=variant_hooks(referee, mode, heads))[0, -1]
                except Exception as err:  # out of memory, say: no referee, the gap stands
                    far = {"error": f"{type(err).__name__}: {err}"}
                else:
                    ok, far = within_referee(logits[i], ref, exact, tol)
            if not ok:
                raise VerificationError(f"generation's first step (variant {i}: {mode} {heads}) differs from the "
                                        f"model's hooked forward by {diff:.3g} (tolerance {tol:.2g}{referee_words(far)})")
        if top1 is not None:
            bridge = torch.stack([seen[l] for l in range(model.cfg.n_layers)]).to(top1.device)
            agree = float((bridge == top1[i]).float().mean())
            if agree < 0.97:  # near-uniform rows (e.g. masked heads) may break ties differently
                raise VerificationError(f"generation's top-1 attention (variant {i}) agrees with the bridge's "
                                        f"patterns on {agree:.1%} of the heads only")


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


_NEWLINES: dict[int, frozenset[int]] = {}


def _newline_ids(tokenizer) -> frozenset[int]:
    """Tokens that contain a line break ("\\n", byte-level "Ċ", SentencePiece "<0x0A>")."""
    key = id(tokenizer)
    if key not in _NEWLINES:
        vocab = tokenizer.get_vocab()
        _NEWLINES[key] = frozenset(i for t, i in vocab.items() if "\n" in t or "Ċ" in t or t == "<0x0A>")
    return _NEWLINES[key]
