"""The model's weights as the engines use them, and the features the engines model.

``Weights`` stacks a TransformerBridge's parameters per layer, in TransformerLens's (folded)
coordinates, and implements one pre-norm block's arithmetic on them (q/k/v, attention output, the
MLP, the norms). The batched sweep engine, path patching, generation and the retrieval decoder run
their forwards on it; the tests hold that forward equal to the bridge's.

Stacking takes seconds for a 0.5B model, so the stack is cached on the model. The cache is keyed by
a fingerprint of every parameter's *values* (``weights_fingerprint``), not only by pointers and
version counters: an in-place edit through ``param.data`` bumps neither, and must not leave the
engines computing with the old weights.

``unsupported(model, n_pos)`` names the first architectural feature the engines do not model
(parallel attention and MLP, partial or interleaved rotary, sliding-window attention over long
prompts, soft-capping, query/key norms, post-sublayer norms), or None.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from interp.errors import EngineUnsupported, InterpError
from interp.kernels import add_norm, rope, silu_mul
from interp.module_walk import tensors


# --------------------------------------------------------------------------------------- weights
def _param(model, name):
    try:
        return getattr(model, name).detach()
    except AttributeError:
        return None


def _norm_params(module):
    inner = getattr(module, "_original_component", module)
    w = getattr(inner, "weight", None)
    b = getattr(inner, "bias", None)
    return (None if w is None else w.detach()), (None if b is None else b.detach())


@dataclass
class Weights:
    """The model's parameters, stacked per layer, in TransformerLens's (folded) coordinates."""

    W_Q: torch.Tensor  # [L, H, d, dh]
    W_K: torch.Tensor  # [L, Hkv, d, dh]
    W_V: torch.Tensor
    W_O: torch.Tensor  # [L, H, dh, d]
    b_Q: torch.Tensor | None
    b_K: torch.Tensor | None
    b_V: torch.Tensor | None
    b_O: torch.Tensor | None  # [L, d]
    W_in: torch.Tensor  # [L, d, d_mlp]
    W_gate: torch.Tensor | None
    W_out: torch.Tensor  # [L, d_mlp, d]
    b_in: torch.Tensor | None
    b_out: torch.Tensor | None
    ln1: list
    ln2: list
    ln_final: tuple
    W_U: torch.Tensor
    b_U: torch.Tensor | None
    eps: float
    center: bool  # LayerNorm (centre then scale) vs RMSNorm
    act: str
    rotary: bool
    scale: float
    W_E: torch.Tensor  # [vocab, d]
    W_pos: torch.Tensor | None  # [n_ctx, d] for absolute positions
    W_qkv: torch.Tensor | None = None  # [L, d, (H + 2 Hkv) dh]: q, k, v in one matmul
    b_qkv: torch.Tensor | None = None  # [L, (H + 2 Hkv) dh]
    # [L, d, 2 d_mlp]: a gated MLP's gate and up in one matmul (GPU only; a copy, like W_qkv: +5.8 GB
    # for Llama-2-7B in bf16)
    W_gate_in: torch.Tensor | None = None
    b_gate_in: torch.Tensor | None = None  # [L, 2 d_mlp]

    def __post_init__(self):
        L, H, d, dh = self.W_Q.shape
        flat = lambda W: W.permute(0, 2, 1, 3).reshape(L, d, -1)  # noqa: E731
        self.W_qkv = torch.cat([flat(self.W_Q), flat(self.W_K), flat(self.W_V)], -1).contiguous()
        if self.b_Q is not None:
            self.b_qkv = torch.cat([self.b_Q.reshape(L, -1), self.b_K.reshape(L, -1), self.b_V.reshape(L, -1)], -1)
        self._split = [H * dh, self.W_K.shape[1] * dh, self.W_K.shape[1] * dh]
        if self.W_gate is not None and self.W_gate.is_cuda:  # on a CPU two products cost the same as one
            self.W_gate_in = torch.cat([self.W_gate, self.W_in], -1).contiguous()
            if self.b_in is not None:
                self.b_gate_in = torch.cat([torch.zeros_like(self.b_in), self.b_in], -1)

    @classmethod
    def from_model(cls, model) -> "Weights":
        """The model's weights, stacked once and cached on the model until a parameter's values
        change (``weights_fingerprint``). Raises EngineUnsupported for architectures the engines
        do not model (``unsupported``)."""
        every = tensors(model)  # one walk of the modules, shared by both checks
        reason = unsupported(model, every=every)
        if reason:
            raise EngineUnsupported(reason)
        fp = weights_fingerprint(model, every)
        cached = getattr(model, "_interp_weights", None)
        if cached is not None and same_fingerprint(cached[0], fp):
            return cached[1]
        w = cls._stack(model)
        object.__setattr__(model, "_interp_weights", (fp, w))
        return w

    @classmethod
    def _stack(cls, model) -> "Weights":
        cfg = model.cfg
        norm = str(cfg.normalization_type)
        d_head = cfg.d_head
        scale = 1 / math.sqrt(d_head) if not cfg.attn_scale or cfg.attn_scale < 0 else 1 / cfg.attn_scale
        blocks = model.blocks
        return cls(
            W_Q=model.W_Q.detach(), W_K=model.W_K.detach(), W_V=model.W_V.detach(), W_O=model.W_O.detach(),
            b_Q=_param(model, "b_Q"), b_K=_param(model, "b_K"), b_V=_param(model, "b_V"), b_O=_param(model, "b_O"),
            W_in=model.W_in.detach(), W_gate=_param(model, "W_gate") if cfg.gated_mlp else None,
            W_out=model.W_out.detach(), b_in=_param(model, "b_in"), b_out=_param(model, "b_out"),
            ln1=[_norm_params(b.ln1) for b in blocks], ln2=[_norm_params(b.ln2) for b in blocks],
            ln_final=_norm_params(model.ln_final), W_U=model.W_U.detach(), b_U=_param(model, "b_U"),
            eps=float(cfg.eps), center=norm.startswith("LN"), act=str(cfg.act_fn),
            rotary=cfg.positional_embedding_type == "rotary", scale=scale,
            W_E=model.W_E.detach(),
            W_pos=model.W_pos.detach() if cfg.positional_embedding_type == "standard" else None,
        )

    @property
    def residual_dtype(self) -> torch.dtype:
        """The residual stream's dtype: fp32 under 16-bit weights (the products stay 16-bit; the
        stream between them is not rounded to 8 significant bits at every add, as the model's
        own 16-bit forward does), else the weights' dtype."""
        return torch.float32 if self.W_Q.dtype in (torch.bfloat16, torch.float16) else self.W_Q.dtype

    def embed(self, tokens):
        x = self.W_E[tokens].to(self.residual_dtype)
        return x if self.W_pos is None else x + self.W_pos[: tokens.shape[-1]]

    def project(self, layer, x):
        """q, k, v (before RoPE) of the residual x [..., S, d]: [..., S, heads, dh] each."""
        return self.project_normed(layer, self.norm(x, self.ln1[layer]))

    def project_normed(self, layer, h):
        """q, k, v of the already normalised residual h = ln1(x) [..., S, d]."""
        qkv = _linear(h, self.W_qkv[layer], None if self.b_qkv is None else self.b_qkv[layer])
        dh = self.W_Q.shape[-1]
        return tuple(t.unflatten(-1, (-1, dh)) for t in qkv.split(self._split, -1))

    def out(self, layer, z):
        """The attention output of z [..., S, H, dh]: sum over heads of z_h W_O[h] (+ b_O)."""
        return _linear(z.flatten(-2), self.W_O[layer].flatten(0, 1), None if self.b_O is None else self.b_O[layer])

    def norm(self, x, params):
        """norm(x) * w + b in the weights' dtype, statistics in fp32 (interp.kernels.add_norm)."""
        return add_norm(x, None, *params, self.eps, self.center, self.W_Q.dtype)[1]

    def add_norm(self, x, delta, params, out=None):
        """(x + delta, norm(x + delta) * w + b) in one pass: a residual add (in x's dtype) and the
        next pre-norm (in the weights' dtype); params None after the last layer: (x + delta, None).
        ``out``: (x_out, h_out) to write into, x_out may be x (``interp.kernels.add_norm``)."""
        if params is None:
            if out is None:
                return x + delta.to(x.dtype), None
            return torch.add(x, delta.to(x.dtype), out=out[0]), None
        return add_norm(x, delta, *params, self.eps, self.center, self.W_Q.dtype, out=out)

    def ln1_after(self, layer):
        """The pre-attention norm of the layer after ``layer`` (None after the last layer)."""
        return self.ln1[layer + 1] if layer + 1 < len(self.ln1) else None

    def mlp(self, layer, x):
        return self.mlp_normed(layer, self.norm(x, self.ln2[layer]))

    def mlp_normed(self, layer, h):
        """The MLP of the already normalised residual h = ln2(x)."""
        b_in = None if self.b_in is None else self.b_in[layer]
        if self.W_gate_in is not None:  # gate and up as one product, SiLU x up in one kernel
            post = silu_mul(_linear(h, self.W_gate_in[layer], None if b_in is None else self.b_gate_in[layer]))
        elif self.W_gate is not None:
            post = F.silu(h @ self.W_gate[layer]) * _linear(h, self.W_in[layer], b_in)
        elif self.act in TANH_GELU and h.is_cuda and b_in is not None:  # bias + GELU in the matmul's epilogue
            post = torch._addmm_activation(b_in, h.reshape(-1, h.shape[-1]), self.W_in[layer],
                                           use_gelu=True).unflatten(0, h.shape[:-1])
        else:
            pre = _linear(h, self.W_in[layer], b_in)
            post = (F.gelu(pre, approximate="tanh") if self.act in TANH_GELU else
                    F.gelu(pre) if self.act == "gelu" else getattr(F, self.act)(pre))
        return _linear(post, self.W_out[layer], None if self.b_out is None else self.b_out[layer])


TANH_GELU = ("gelu_new", "gelu_fast", "gelu_pytorch_tanh")


def _linear(x, W, b):
    """x [..., k] @ W [k, n] (+ b [n]) as one 2-D product (bias in the matmul's epilogue)."""
    if b is None:
        return x @ W
    return torch.addmm(b, x.reshape(-1, x.shape[-1]), W).unflatten(0, x.shape[:-1])


def rotate(x, cos, sin):
    """RoPE, rotate-half convention: x*cos + rotate_half(x)*sin. x [..., S, heads, dh]; cos, sin
    [S, dh] (one fused kernel on a GPU, ``interp.kernels.rope``) or any shape broadcasting as
    ``cos[:, None]`` (one position per row of a decoder step: [R, 1, dh])."""
    return rope(x, cos, sin)


def rotary_tables(model, n_pos: int, device, dtype):
    """cos, sin [n_pos, d_head] of the model's RoPE, from its own Hugging Face rotary module."""
    inner = getattr(model.original_model, "model", model.original_model)
    rot = getattr(inner, "rotary_emb", None)
    if rot is None:
        raise InterpError("rotary model without a rotary_emb module: use engine='reference'")
    x = torch.zeros(1, n_pos, 1, device=device, dtype=dtype)
    cos, sin = rot(x, torch.arange(n_pos, device=device)[None])
    return cos[0].to(dtype), sin[0].to(dtype)




# ------------------------------------------------------------------------------- fingerprints
_PROBES: dict[tuple, torch.Tensor] = {}


def _probe(n: int, device, dtype) -> torch.Tensor:
    """A fixed random vector of length n (the same in every process)."""
    key = (n, str(device), dtype)
    if key not in _PROBES:
        g = torch.Generator().manual_seed(n)
        _PROBES[key] = torch.randn(n, generator=g).to(device=device, dtype=dtype)
    return _PROBES[key]


def weights_fingerprint(model, every: list[torch.Tensor] | None = None) -> tuple:
    """What the engines' cached weights depend on: every parameter's and floating buffer's pointer,
    shape and version counter, and a checksum of its values.

    The checksum of a tensor W [..., n] is W @ r for a fixed random r [n], in fp32 whatever W's
    dtype: one multiply-add per weight (about 0.1 s for SmolLM2-135M on 2 CPU cores, a millisecond
    on a GPU), and it changes when any row changes by more than its fp32 rounding (unless the change
    is orthogonal to r, which random r makes vanishingly unlikely; permuting heads changes it too).
    Computed in a 16-bit dtype it was rounded to 8 bits and missed a quarter of single-weight edits
    of 0.01 in a bf16 model. It catches what the version counters miss: an
    in-place edit through ``param.data``, which gets a fresh version counter. On a GPU the
    tensors of one dtype and last dimension are stacked (up to 256 MiB at a time) and checked in
    one product: one product per tensor was 150 launches, 8 ms for GPT-2 small on an H200.
    ``every``: the model's tensors (``interp.module_walk.tensors``), when the caller has them.
    """
    every = tensors(model) if every is None else every
    meta = tuple((t.data_ptr(), tuple(t.shape), t._version, t.dtype) for t in every)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # TF32 would round fp32 weights to 10 bits first
    try:
        with torch.no_grad():
            sums = {}  # per device: one vector of every checksum (compared with one sync)
            for group in _checksum_groups(every):
                rows = group[0] if len(group) == 1 else torch.cat(group)
                # in fp32: a 16-bit checksum is rounded to 8 or 11 bits and misses small edits
                probe = _probe(rows.shape[-1], rows.device, torch.float32)
                sums.setdefault(rows.device, []).append(rows.float() @ probe)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    return meta, {d: torch.cat(v) for d, v in sums.items()}


_STACK_BYTES = 256 << 20


def _checksum_groups(every) -> list[list[torch.Tensor]]:
    """The tensors as [rows, n] matrices, in groups that share one checksum product: one per tensor
    on a CPU (no copies), stacks of up to 256 MiB of one device, dtype and n on a GPU."""
    groups, open_ = [], {}  # open_: key -> [group, its bytes]
    for t in every:
        rows = t.detach().reshape(-1, t.shape[-1]) if t.ndim else t.detach()[None, None]
        if rows.device.type != "cuda":
            groups.append([rows])
            continue
        key = (rows.device, rows.dtype, rows.shape[-1])
        group = open_.get(key)
        if group is None or group[1] + rows.nbytes > _STACK_BYTES:
            group = open_[key] = [[], 0]
            groups.append(group[0])
        group[0].append(rows)
        group[1] += rows.nbytes
    return groups


def same_fingerprint(a: tuple, b: tuple) -> bool:
    return a[0] == b[0] and a[1].keys() == b[1].keys() and all(torch.equal(a[1][d], b[1][d]) for d in a[1])


def fingerprint_digest(fp: tuple) -> str:
    """A short hash of a fingerprint's checksums (for checkpoint keys)."""
    import hashlib

    h = hashlib.sha256()
    for d in sorted(fp[1], key=str):
        h.update(fp[1][d].cpu().numpy().tobytes())
    return h.hexdigest()[:32]


# ----------------------------------------------------------------------------------- features
def _hf_config(model):
    return getattr(getattr(model, "original_model", None), "config", None)


def sliding_window(model) -> int | None:
    """The sliding attention window of any layer (Mistral, some Qwen2 and Gemma configs), or None."""
    hf = _hf_config(model)
    window = getattr(hf, "sliding_window", None)
    if not window or getattr(hf, "use_sliding_window", True) is False:
        return None
    types = getattr(hf, "layer_types", None)
    if types is not None and "sliding_attention" not in types:
        return None
    return int(window)


def unsupported(model, n_pos: int | None = None, every: list[torch.Tensor] | None = None) -> str | None:
    """The first feature of ``model`` (run on prompts of ``n_pos`` tokens) that the engines do not
    model, or None. The engines model pre-norm decoders: RMSNorm or LayerNorm, rotary (full,
    rotate-half) or absolute positions, gated (SiLU) or plain MLPs, GQA, biases. ``every``: the
    model's tensors (``interp.module_walk.tensors``), when the caller has them."""
    cfg, hf = model.cfg, _hf_config(model)
    devices = {t.device for t in (tensors(model) if every is None else every) if isinstance(t, torch.nn.Parameter)}
    if len(devices) > 1:
        return f"weights split over {len(devices)} devices (load_model(n_devices=...))"
    norm = str(cfg.normalization_type)
    if norm not in ("RMS", "RMSPre", "LN", "LNPre"):
        return f"normalization {norm}"
    if cfg.positional_embedding_type not in ("rotary", "standard"):
        return f"{cfg.positional_embedding_type} positional embeddings"
    if getattr(cfg, "parallel_attn_mlp", False) or getattr(hf, "use_parallel_residual", False):
        return "parallel attention and MLP"
    if cfg.positional_embedding_type == "rotary":
        dims = [cfg.rotary_dim, getattr(hf, "rotary_dim", None)]
        rope = getattr(hf, "rope_parameters", None) or {}
        fracs = [getattr(hf, "partial_rotary_factor", None), getattr(hf, "rotary_pct", None),
                 rope.get("partial_rotary_factor") if isinstance(rope, dict) else None]
        if any(d is not None and d < cfg.d_head for d in dims) or any(f is not None and f < 1 for f in fracs):
            return "partial rotary embeddings"
        if getattr(cfg, "rotary_adjacent_pairs", False) or getattr(hf, "model_type", "") == "gptj":
            return "interleaved (GPT-J style) rotary embeddings"
    for name in ("attn_scores_soft_cap", "output_logits_soft_cap"):
        if (getattr(cfg, name, None) or -1) > 0:
            return "logit soft-capping"
    if getattr(hf, "attn_logit_softcapping", None) or getattr(hf, "final_logit_softcapping", None):
        return "logit soft-capping"
    for name in ("embedding_multiplier", "logits_scaling", "residual_multiplier", "attention_multiplier"):
        if getattr(hf, name, None) not in (None, 1, 1.0):
            return f"{name} (scaled residual stream or logits)"
    known = {"hook_in", "hook_out", "hook_mlp_in", "_original_component", "ln1", "ln2", "attn", "mlp"}
    extra = {n for n, _ in model.blocks[0].named_children()} - known
    if extra:  # e.g. Gemma 2/3's post-attention and post-MLP norms: the residual algebra differs
        return f"blocks with {', '.join(sorted(extra))}"
    if cfg.gated_mlp and getattr(hf, "mlp_bias", False):  # the stacked weights hold no gate bias
        return "a gated MLP with biases (mlp_bias)"
    attn = {n for n, _ in model.blocks[0].attn.named_children()}
    if attn & {"q_norm", "k_norm", "q_layernorm", "k_layernorm"}:
        return "query/key norms"
    window = sliding_window(model)
    if window is not None and n_pos is not None and n_pos > window:
        return f"sliding-window attention ({window} tokens) over {n_pos}-token prompts"
    return None
