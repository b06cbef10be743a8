"""Exact scores on the CPU for every edge into the logits and into the name movers' queries.

SmolLM2-135M-Instruct (real weights), 16 IOI prompts, fp32, the shipped IOI circuit's six name
movers: the CPU target of the edge-level work (within 10 minutes on this project's 2-core machine).

    python benchmarks/edges_cpu_scope.py
"""
from __future__ import annotations

import time

import torch

import interp
from interp import edges as E
from interp import graph
from interp.edge_sweep import edge_patch


def main() -> None:
    torch.set_grad_enabled(False)
    model = interp.load_model()
    movers = graph.literature(f"{model.interp_key}_ioi_interp").by_class()["name mover"]
    prompts = interp.tasks.ioi_examples(model, n=16, seed=0)
    receivers = [E.Receiver("logits")] + [E.Receiver("q", l, h) for l, h in movers]
    edges_ = E.edges(model.cfg, receivers)
    t = time.time()
    scores = edge_patch(model, prompts, edges_, progress=False)
    print(f"{len(edges_)} edges into the logits and the queries of the name movers {movers}, 16 IOI prompts, "
          f"{torch.get_num_threads()} threads: {time.time() - t:.1f} s; re-checked: {scores.meta.get('verified')}")


if __name__ == "__main__":
    main()
