"""EAP/EAP-IG scoring step on the CPU: the old per-receiver stacking (kept here as the baseline) vs
``interp.edge_attribution._scores`` on every edge of SmolLM2, 4 Colored Objects prompts, random
gradients, one thread. Prints both times and their max abs difference.

    python benchmarks/eap_scores_cpu.py
"""
import time, torch, interp
from interp import edges as E
from interp.edge_attribution import _delta, _scores
from interp.reference import sender_contributions
from interp.tasks.colored_objects import colored_objects_examples
torch.set_num_threads(1)
m = interp.load_model()
p = colored_objects_examples(m, n=4, seed=0)
cb, cs = sender_contributions(m, p.corrupted_tokens), sender_contributions(m, p.clean_tokens)
edges_ = E.edges(m.cfg)
B, T = p.clean_tokens.shape
g = torch.Generator().manual_seed(0)
grads = {r: torch.randn(B, T, m.cfg.d_model, generator=g) for r in dict.fromkeys(e.receiver for e in edges_)}
def old(edges_, c_src, c_base, grads, B):
    out = torch.empty(len(edges_)); by = {}
    for i, e in enumerate(edges_): by.setdefault(e.receiver, []).append(i)
    for r, idx in by.items():
        D = torch.stack([_delta(c_src, c_base, edges_[i].sender) for i in idx]).flatten(1)
        out[idx] = (D.float() @ grads[r].flatten().float() / B).cpu()
    return out
for f in (old, _scores):
    t = time.time(); v = f(edges_, cs, cb, grads, B); print(f.__name__, round(time.time() - t, 2))
print(float((old(edges_, cs, cb, grads, B) - _scores(edges_, cs, cb, grads, B)).abs().max()))
