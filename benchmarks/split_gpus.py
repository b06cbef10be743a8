"""``load_model(n_devices=2)`` with real weights (SmolLM2) on a machine with 2 GPUs: where the
weights went, the split model's logits, head patching (reference loop) and DLA against the same
model on one GPU, and the batched engine's refusal. Prints a table.

    python benchmarks/split_gpus.py        # SmolLM2 installed, 2 GPUs visible

Run 2026-12-01 on 2 H200s (this script; only its layout was tidied since):

| check | status | time | detail |
|---|---|---|---|
| placement | ok |  | ['cuda:0', 'cuda:1']; first block on cuda:0, last on cuda:1 |
| forward | ok | 0.5 s | max abs(logits 1 GPU - 2 GPUs) = 0.00e+00 |
| patch reference (split) | ok | 2.9 s | head_out layers 0,14,29: reference on 2 GPUs vs batched on 1: 7.45e-06 |
| patch batched (split): must refuse | EngineUnsupported | 0.0 s | weights split over 2 devices (load_model(n_devices=...)) |
| patch auto (split) | ok | 0.7 s | reference |
| dla (split) | ok | 0.2 s | DLA heads max diff 0.00e+00 |
"""
import time
import traceback

import torch

import interp
from interp.tasks import ioi_examples

rows = []


def row(name, fn):
    t = time.time()
    try:
        out = fn()
        rows.append((name, "ok", f"{time.time() - t:.1f} s", str(out)[:160]))
    except Exception as exc:
        rows.append((name, type(exc).__name__, f"{time.time() - t:.1f} s", str(exc).splitlines()[0][:160] if str(exc) else ""))
        traceback.print_exc()

print("GPUs", torch.cuda.device_count(), [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])
one = interp.load_model(device="cuda")
two = interp.load_model(device="cuda", n_devices=2)
devs = sorted({str(p.device) for p in two.parameters()})
rows.append(("placement", "ok", "", f"{devs}; first block on {next(two.blocks[0].parameters()).device}, last on {next(two.blocks[-1].parameters()).device}"))
prompts = ioi_examples(one, 8, seed=0)
def logits():
    tokens = prompts.clean_tokens.to("cuda")
    a, b = one(tokens), two(tokens)
    return f"max |logits 1 GPU - 2 GPUs| = {(a.float() - b.float().to(a.device)).abs().max().item():.2e}"
row("forward", logits)
def ref():
    r1 = interp.patch(one, prompts, "head_out", engine="batched", progress=False)
    r2 = interp.patch(two, prompts, "head_out", engine="reference", progress=False, layers=[0, 14, 29])
    d = (r1.values[[0, 14, 29]].float().cpu() - r2.values.float().cpu()).abs().max().item()
    return f"head_out layers 0,14,29: reference on 2 GPUs vs batched on 1: {d:.2e}"
row("patch reference (split)", ref)
row("patch batched (split): must refuse", lambda: interp.patch(two, prompts, "head_out", engine="batched", progress=False).meta.get("engine"))
row("patch auto (split)", lambda: interp.patch(two, prompts, "head_out", progress=False, layers=[29]).meta.get("engine"))
def dla():
    a, b = interp.direct_logit_attribution(one, prompts), interp.direct_logit_attribution(two, prompts)
    return f"DLA heads max diff {(a.heads.values.float().cpu() - b.heads.values.float().cpu()).abs().max().item():.2e}"
row("dla (split)", dla)
print()
print("| check | status | time | detail |\n|---|---|---|---|")
for r in rows:
    print("| " + " | ".join(r) + " |")
