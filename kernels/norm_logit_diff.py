"""Final norm + answer-column logit difference, fused.

For each row r (a variant x example at its answer position):
    out[r] = (norm(x_r) * w) . D[idx_r] + bias[idx_r]
with norm(x) = x / sqrt(mean(x^2) + eps) (RMSNorm) or its centred version (LayerNorm),
D[b] = W_U[:, answer_b] - W_U[:, distractor_b] and bias[b] = b_norm . D[b] + b_U[answer_b] -
b_U[distractor_b]. Only two columns of the unembedding are read; the vocabulary is never formed.
"""
import torch

from interp.kernels._triton import use_triton


def norm_logit_diff_reference(x, w, directions, idx, bias, eps: float, center: bool):
    """PyTorch reference. x [R, d]; w [d] or None; directions [B, d]; idx [R]; bias [B] -> [R] fp32."""
    x = x.float()
    if center:
        x = x - x.mean(-1, keepdim=True)
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    if w is not None:
        x = x * w.float()
    return (x * directions.float()[idx]).sum(-1) + bias.float()[idx]


def norm_logit_diff(x, w, directions, idx, bias, eps: float, center: bool):
    """Fused version on CUDA (Triton); the reference elsewhere. Same arguments and result."""
    if not use_triton(x):
        return norm_logit_diff_reference(x, w, directions, idx, bias, eps, center)
    import triton

    from interp.kernels.norm_logit_diff_triton import norm_logit_diff_kernel

    R, d = x.shape
    x, directions = x.contiguous(), directions.contiguous()
    w = torch.ones(d, device=x.device, dtype=x.dtype) if w is None else w.contiguous()
    out = torch.empty(R, device=x.device, dtype=torch.float32)
    norm_logit_diff_kernel[(R,)](
        x, w, directions, idx.contiguous(), bias.float().contiguous(), out, d, float(eps),
        x.stride(0), directions.stride(0), CENTER=center, BLOCK=triton.next_power_of_2(d),
    )
    return out
