"""How far the fast edge scores (EAP, EAP-IG, AtP) are from exact edge patching.

Every edge-level circuit method of the field ranks edges with a gradient approximation
(``interp.edge_attribution``) because exact patching is one forward per edge. With the exact
scores at hand (``interp.edge_sweep``), each approximation is audited on the same edges:

* rank agreement: Spearman's rho (Pearson's r of the ranks, ties averaged) and Kendall's tau-b,
  over all audited edges;
* top-k overlap: |top_k(approx) & top_k(exact)| / k by |score|, k = 50, 200, 1000 (MIB ranks
  circuits by |score|; a method is useful if its top edges are the true top edges);
* where it disagrees most: the edges whose rank moves most, and the largest errors;
* "shortlist then verify": the approximation proposes its top N edges, the exact engine scores
  them, and the circuit is chosen from exact scores: the cost of N forwards-worth of variants
  instead of every edge, with exact numbers for every edge that matters.
"""
from __future__ import annotations

import random

import torch

from interp.edges import EdgeScores

TOP_KS = (50, 200, 1000)


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (1..n, ties get their mean rank), without a Python loop over the items."""
    values, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()  # the rank of each distinct value's last copy
    return (last - (counts.double() - 1) / 2)[inverse]


def spearman(x: torch.Tensor, y: torch.Tensor) -> float:
    rx, ry = _ranks(x.double()), _ranks(y.double())
    return float(torch.corrcoef(torch.stack([rx, ry]))[0, 1])


def kendall(x: torch.Tensor, y: torch.Tensor, max_pairs: int = 2_000_000, seed: int = 0) -> float:
    """Kendall's tau-b: over every pair for n(n-1)/2 <= ``max_pairs``, else over that many random
    pairs (the estimate's standard error is then below 1e-3)."""
    x, y = x.double(), y.double()
    n = len(x)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = torch.triu_indices(n, n, 1)
    else:
        g = torch.Generator().manual_seed(seed)
        i, j = torch.randint(0, n, (2, max_pairs), generator=g)
        keep = i != j
        i, j = i[keep], j[keep]
    dx, dy = torch.sign(x[i] - x[j]), torch.sign(y[i] - y[j])
    concordant = (dx * dy).sum()
    tx, ty = (dx != 0).sum(), (dy != 0).sum()
    return float(concordant / torch.sqrt(tx.double() * ty.double())) if tx and ty else float("nan")


def top_k_overlap(exact: torch.Tensor, approx: torch.Tensor, k: int) -> float:
    k = min(k, len(exact))
    a = set(exact.abs().argsort(descending=True)[:k].tolist())
    b = set(approx.abs().argsort(descending=True)[:k].tolist())
    return len(a & b) / k


def audit(exact: EdgeScores, approx: EdgeScores, ks=TOP_KS, n_worst: int = 10) -> dict:
    """Agreement of ``approx`` with ``exact`` on the edges both scored (in ``exact``'s order)."""
    approx = approx.restrict(exact.edges)
    x, y = exact.values, approx.values
    slope = float((x * y).sum() / (x * x).sum()) if (x * x).sum() > 0 else float("nan")
    rx, ry = _ranks(x.abs().double()), _ranks(y.abs().double())
    moved = (rx - ry).abs().argsort(descending=True)[:n_worst].tolist()
    errors = (y - x).abs().argsort(descending=True)[:n_worst].tolist()
    return {"method": approx.method, "n_edges": len(x), "spearman": spearman(x, y), "kendall": kendall(x, y),
            "pearson": float(torch.corrcoef(torch.stack([x, y]))[0, 1]), "slope": slope,
            "top_k_overlap": {int(k): top_k_overlap(x, y, k) for k in ks if k <= len(x)},
            "largest_errors": [{"edge": exact.edges[i].name, "exact": float(x[i]), "approx": float(y[i])} for i in errors],
            "largest_rank_moves": [{"edge": exact.edges[i].name, "exact_rank": int(len(x) + 1 - rx[i]),
                                    "approx_rank": int(len(x) + 1 - ry[i])} for i in moved]}


def shortlist_then_verify(model, prompts, approx: EdgeScores, n: int, **edge_patch_kwargs) -> EdgeScores:
    """The exact scores of ``approx``'s top ``n`` edges by |score| (``interp.edge_sweep``)."""
    from interp.edge_sweep import edge_patch

    return edge_patch(model, prompts, approx.top(n), direction=approx.direction, **edge_patch_kwargs)


def sample_edges(edges_, n: int, seed: int = 0):
    """n edges drawn uniformly without replacement (seeded), in graph order."""
    if n >= len(edges_):
        return list(edges_)
    keep = set(random.Random(seed).sample(range(len(edges_)), n))
    return [e for i, e in enumerate(edges_) if i in keep]
