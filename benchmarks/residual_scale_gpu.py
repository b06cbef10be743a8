"""The self-check gap of Qwen2.5-Coder-0.5B on the safety prompts, and the size of its residual stream.

The script as it ran on the H200 (2026-11-30, `python benchmarks/residual_scale_gpu.py cuda`; `cpu`
on this project's machine): the baseline self-check (engine vs the model's own forward, no head
ablated) on the 100 fitting requests in both prompt formats, then the largest |residual| at any
position and at the answer position over all layers. Printed on the H200: chat 9.9e-5
(final residual), up to 2,182 (answer position 86); template 9.2e-5, up to 1,035 (answer position 97).
"""
import time, torch, sys
from interp.models import load_model
from interp.methods import safety_heads as sh
from interp.tasks.harmful import harmful_requests
from interp.sweep import SweepEngine, Variant
from interp.verify import SweepCheck
dev = sys.argv[1] if len(sys.argv) > 1 else "cpu"
m = load_model("qwen2.5-coder-0.5b-instruct", device=dev)
fit, held = sh.split_requests(harmful_requests(), 0)
for fmt in ("chat", "template"):
    q = sh.Queries.encode(m, fit, fmt)
    e = SweepEngine(m, q.as_prompt_set(), eps=1e-5)
    t = time.time()
    try:
        c = SweepCheck(e, "ablate_ua", [Variant(0, 0, None)], 1, readout="residual")
        print(fmt, "ok", c.baseline_diff, tuple(q.tokens.shape), f"{time.time() - t:.1f}s")
    except Exception as ex:
        print(fmt, "FAIL", ex, tuple(q.tokens.shape))
    names = [f"blocks.{l}.hook_resid_post" for l in range(m.cfg.n_layers)]
    with torch.no_grad():
        _, cache = m.run_with_cache(q.tokens.to(dev), names_filter=lambda n: n in names)
    rows = torch.arange(len(q.tokens)); pos = q.last_pos
    big = max(float(cache[n].abs().max()) for n in names)
    at = max(float(cache[n][rows, pos].abs().max()) for n in names)
    fin = float(cache[names[-1]][rows, pos].abs().max())
    print(fmt, f"max |resid| any position {big:.0f}, at the answer position over layers {at:.0f}, final {fin:.0f}")
