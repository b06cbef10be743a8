"""Causal attention of many variants over one shared cached prefix.

A sweep variant that patches position p recomputes positions p.. only; its queries attend to the
base run's keys and values of positions < p (the prefix, the same for every variant of an example)
and to its own keys and values of positions >= p (the suffix, causally):

    z[n, b, i, h] = softmax_j( q[n,b,i,h] . [k_pre[b, :, g]; k[n, b, :i+1, g]] * scale ) @ [v_pre; v]

with g = h // (H / Hkv) the key/value head of query head h (grouped-query attention). The reference
(PyTorch SDPA) has to copy the prefix once per variant and use an explicit mask; the kernel reads
each example's prefix in place and walks the keys block by block with an online softmax
(FlashAttention's recurrence), so nothing is copied and no mask is formed. A short suffix (at most
PACKED_ROWS / 2 query rows per key/value head, and at least 2 variants: the late positions of a
by-position sweep) packs the query heads of one key/value head and several variants of one example
into one program, which load
each key block once for all of them; one head per program would be mostly padding there (H200, bf16,
SmolLM2's heads, 135 variants x 16 examples: 4 tokens after 60, 161 -> 52 us; BENCHMARKS.md).
"""
import torch
import torch.nn.functional as F

from interp.kernels._triton import use_triton

PACKED_ROWS = 64  # the query rows of a packed program (variants x positions x heads of a group)


def prefix_attention_reference(q, k, v, k_pre, v_pre, scale: float):
    """PyTorch reference (SDPA). q [N, B, S, H, dh]; k, v [N, B, S, Hkv, dh];
    k_pre, v_pre [B, P, Hkv, dh] -> z [N, B, S, H, dh]. Query i (absolute position P + i) sees
    keys 0 .. P + i."""
    N, B, S, H, dh = q.shape
    Hkv, P = k.shape[3], k_pre.shape[1]
    qf = q.reshape(N * B, S, H, dh).transpose(1, 2)
    kf, vf = k.reshape(N * B, S, Hkv, dh), v.reshape(N * B, S, Hkv, dh)
    if P:
        expand = lambda t: t.to(q.dtype).expand(N, *t.shape).reshape(N * B, P, Hkv, dh)  # noqa: E731
        kf, vf = torch.cat([expand(k_pre), kf], 1), torch.cat([expand(v_pre), vf], 1)
    kf, vf = kf.transpose(1, 2), vf.transpose(1, 2)
    if P:
        mask = torch.arange(P + S, device=q.device)[None, :] <= P + torch.arange(S, device=q.device)[:, None]
        z = F.scaled_dot_product_attention(qf, kf, vf, attn_mask=mask, scale=scale, enable_gqa=H != Hkv)
    else:
        z = F.scaled_dot_product_attention(qf, kf, vf, is_causal=True, scale=scale, enable_gqa=H != Hkv)
    return z.transpose(1, 2).reshape(N, B, S, H, dh)


def prefix_attention(q, k, v, k_pre, v_pre, scale: float):
    """Fused version on CUDA for bf16/fp16 (Triton); the reference elsewhere. Same arguments and
    result. fp32 stays on SDPA on the GPU (an exact fp32 dot in Triton is slow, TF32 inexact)."""
    N, B, S, H, dh = q.shape
    interpreted = not q.is_cuda
    if (not use_triton(q) or (q.dtype == torch.float32 and not interpreted)
            or dh not in (16, 32, 64, 128, 256) or S == 0):
        return prefix_attention_reference(q, k, v, k_pre, v_pre, scale)
    packed = min(N, PACKED_ROWS // (S * (H // k.shape[3])))  # variants of one example per program
    return launch(q, k, v, k_pre, v_pre, scale, packed if packed >= 2 else 0)


def launch(q, k, v, k_pre, v_pre, scale: float, packed: int):
    """The Triton kernels themselves (``prefix_attention`` chooses ``packed``; the benchmarks
    choose it freely): ``packed`` = 0, one (variant x example, query head) per program; ``packed``
    = n >= 1, the packed kernel with n variants per program, whose n x S x H/Hkv query rows must fit
    in PACKED_ROWS (one block)."""
    import triton

    from interp.kernels.prefix_attention_triton import packed_prefix_attention_kernel, prefix_attention_kernel

    N, B, S, H, dh = q.shape
    Hkv, P = k.shape[3], k_pre.shape[1]
    group = H // Hkv
    if packed * S * group > PACKED_ROWS:
        raise ValueError(f"prefix_attention: {packed} variants of {S * group} rows do not fit one block of "
                         f"{PACKED_ROWS} rows")
    qr, kr, vr = (t.flatten(0, 1) for t in (q, k, v))  # [N*B, S, heads, dh]; a view where strides allow
    if qr.stride(-1) != 1 or kr.stride(-1) != 1 or vr.stride(-1) != 1:
        qr, kr, vr = qr.contiguous(), kr.contiguous(), vr.contiguous()
    kp, vp = k_pre.to(q.dtype), v_pre.to(q.dtype)
    if P == 0 or kp.stride(-1) != 1 or vp.stride(-1) != 1:
        kp, vp = kp.contiguous(), vp.contiguous()
    z = torch.empty(N * B, S, H, dh, device=q.device, dtype=q.dtype)
    strides = (*qr.stride()[:3], *kr.stride()[:3], *vr.stride()[:3], *kp.stride()[:3], *vp.stride()[:3])
    if packed:  # (variant, position, head of the group) rows, all in one block
        BLOCK_M = max(16, triton.next_power_of_2(packed * S * group))
        BLOCK_N = max(16, min(64, triton.next_power_of_2(max(packed * S, P))))
        packed_prefix_attention_kernel[(triton.cdiv(N, packed) * B, Hkv, 1)](
            qr, kr, vr, kp, vp, z, N, B, S, P, group, packed, float(scale), *strides,
            DH=dh, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, IEEE=q.dtype == torch.float32, num_warps=4)
    else:  # one (variant x example, head) per program
        BLOCK_M = max(16, min(64, triton.next_power_of_2(S)))
        BLOCK_N = max(16, min(64, triton.next_power_of_2(max(S, P))))
        prefix_attention_kernel[(N * B, H, triton.cdiv(S, BLOCK_M))](
            qr, kr, vr, kp, vp, z, B, S, P, group, float(scale), *strides,
            DH=dh, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, IEEE=q.dtype == torch.float32, num_warps=4)
    return z.view(N, B, S, H, dh)
