"""prefix_attention's two Triton kernels on the engine's shapes: which one a suffix length should take.

``prefix_attention_kernel`` runs one (variant x example, query head) per program;
``packed_prefix_attention_kernel`` puts the query heads of one key/value group, and several variants
of one example, into one program's rows (``interp.kernels.prefix_attention``). This times, per shape
(bf16, ``triton.testing.do_bench`` medians, microseconds):

- one head per program (the dispatcher's choice when fewer than 2 variants fit in 64 rows);
- packed, with as many variants as fit in 64 rows (the dispatcher's choice otherwise);
- packed, one variant per program (the key/value group's heads only);

each checked against the PyTorch reference (max abs diff). The shapes are SmolLM2-135M's heads (9
query heads over 3 key/value heads), GPT-2 small's (12/12) and Qwen2.5-0.5B's (14/2), 16 examples of
64 tokens, at the suffix lengths of a by-position sweep: 64 (all positions), 32, 8, 4 and 1 tokens.

    python3 benchmarks/prefix_attention_gpu.py
"""
import torch
from triton.testing import do_bench

from interp.kernels.prefix_attention import PACKED_ROWS, launch, prefix_attention_reference

SHAPES = [  # name, (N variants, B examples, S suffix, H, Hkv, dh, P prefix)
    ("SmolLM2, all positions", (270, 16, 64, 9, 3, 64, 0)),
    ("SmolLM2, 32 after 32", (135, 16, 32, 9, 3, 64, 32)),
    ("SmolLM2, 8 after 56", (135, 16, 8, 9, 3, 64, 56)),
    ("SmolLM2, 4 after 60", (135, 16, 4, 9, 3, 64, 60)),
    ("SmolLM2, 1 after 63", (135, 16, 1, 9, 3, 64, 63)),
    ("GPT-2 small, all positions", (72, 16, 64, 12, 12, 64, 0)),
    ("GPT-2 small, 4 after 60", (72, 16, 4, 12, 12, 64, 60)),
    ("Qwen2.5-0.5B, all positions", (168, 16, 64, 14, 2, 64, 0)),
]


def inputs(N, B, S, H, Hkv, dh, P):
    """q, k, v as views of one fused projection (as the engine makes them), the cached prefix."""
    qkv = torch.randn(N, B, S, (H + 2 * Hkv) * dh, device="cuda", dtype=torch.bfloat16)
    q, k, v = (t.unflatten(-1, (-1, dh)) for t in qkv.split([H * dh, Hkv * dh, Hkv * dh], -1))
    k_pre, v_pre = (torch.randn(B, P, Hkv, dh, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    return q, k, v, k_pre, v_pre


def main():
    kinds = ["one head per program", "packed", "packed, one variant per program"]
    print("| shape (N, B, S, H/Hkv, P) | " + " | ".join(f"{k}, us (max abs diff)" for k in kinds) + " |")
    print("|---|" + "---|" * len(kinds))
    for name, (N, B, S, H, Hkv, dh, P) in SHAPES:
        a = (*inputs(N, B, S, H, Hkv, dh, P), dh ** -0.5)
        want = prefix_attention_reference(*a).float()
        rows = S * (H // Hkv)  # query rows of one variant in a packed program
        packings = [0, max(1, min(N, PACKED_ROWS // rows)), 1]
        cells = []
        for packed in packings:
            if packed and rows > PACKED_ROWS:
                cells.append("n/a (rows over one block)")  # the packed kernel holds its rows in one block
                continue
            err = (launch(*a, packed).float() - want).abs().max().item()
            cells.append(f"{do_bench(lambda: launch(*a, packed), warmup=10, rep=60) * 1e3:.0f} ({err:.1e})")  # noqa: B023
        print(f"| {name} ({N}, {B}, {S}, {H}/{Hkv}, {P}) | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
