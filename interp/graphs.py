"""CUDA graphs of a sweep: capture its chunks once, replay them with no host work.

A small sweep is bound by kernel launches and host work, not by FLOPs: GPT-2 small's head-output
sweep over 16 prompts x 16 tokens took 39 ms on a first call for 7.4 ms of GPU time (H200,
BENCHMARKS.md, "Repeated sweeps"). A CUDA graph records those launches once; replaying it costs one
launch from the host, and the GPU runs the recorded kernels back to back.

A graph reads its inputs at the addresses they had when it was recorded, so a replay is only
right if nothing it reads has changed. ``SweepEngine`` keeps that promise: a graph belongs to one
engine and one sweep (component, readout, the variants in order, the chunks), the engine's cached
runs and stacked weights are never rewritten, and ``interp.sweep.shared_engine`` hands an engine
to a new call only when the weights (by value), the hooks and edits on the model and the prompts
are what the engine was built from. The first replay is compared with the eager run of the same
sweep before a graph is kept (``CapturedSweep.check``); a graph that disagrees is dropped with a
warning and the eager numbers stand.

A repeated ``sweep_patch`` launches the kept engine's graph first, on a stream of its own, and only
then checks that the engine still matches the model and the prompts; the checks' host work (~4 ms on
GPT-2 small) runs while the GPU replays, and a failed check discards the replay's values (it wrote
only into the graph's own buffers).

Only sweeps whose every step can be recorded are captured (``interp.sweep.SweepEngine.graph_key``):
the logit-difference metric, no residual readout, edits that scale (no replacement values, whose
checks read the device), no checkpoint (it copies each chunk to the host).
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch


class CapturedSweep:
    """The chunks of one sweep recorded as one CUDA graph.

    Args:
        body: ``body() -> [N, ...]`` runs every chunk and returns the values of all variants in
            order (on the device); it is run once on a side stream to warm up, then recorded.
    """

    def __init__(self, body: Callable[[], torch.Tensor]):
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # lazy initialisation (cuBLAS workspaces) outside the capture
            body()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = body()
        self.launches = 0  # replays started
        self.replays = 0  # replays whose values were collected (a discarded launch is not one)

    def launch(self) -> None:
        """Queue the recorded kernels on the current stream and return at once (``collect`` waits
        for them)."""
        self.graph.replay()
        self.launches += 1

    def collect(self) -> torch.Tensor:
        """The values of the last launch (a host copy, float32; waits for the GPU)."""
        self.replays += 1
        return self.out.float().cpu()

    def replay(self) -> torch.Tensor:
        """Run the recorded kernels again; the values (a host copy, float32)."""
        self.launch()
        return self.collect()

    def check(self, eager: torch.Tensor, tolerance: float) -> tuple[bool, float, torch.Tensor]:
        """Replay once and compare with the eager values of the same sweep: (agrees, max |diff|,
        the replayed values)."""
        values = self.replay()
        diff = (values - eager.float()).abs().max().item() if eager.numel() else 0.0
        return diff <= tolerance, diff, values  # NaN fails


def capture(body: Callable[[], torch.Tensor], eager: torch.Tensor,
            tolerance: float) -> tuple[CapturedSweep | None, dict, torch.Tensor | None]:
    """Record ``body`` and check its first replay against ``eager``: (graph or None, evidence,
    the checked replay's values or None).

    None (with a warning) when recording fails or the replay disagrees: the caller keeps running
    the sweep eagerly."""
    try:
        graph = CapturedSweep(body)
    except Exception as err:  # an operation that cannot be recorded: eager it stays
        warnings.warn(f"this sweep could not be recorded as a CUDA graph ({type(err).__name__}: {err}); "
                      "it runs without one", stacklevel=3)
        return None, {"captured": False, "error": f"{type(err).__name__}: {err}"}, None
    ok, diff, values = graph.check(eager, tolerance)
    evidence = {"captured": ok, "replay_vs_eager_max_abs_diff": diff, "tolerance": tolerance}
    if not ok:
        warnings.warn(f"a CUDA graph of this sweep replayed values {diff:.3g} away from the eager run "
                      f"(tolerance {tolerance:.2g}): the graph is dropped and the sweep runs without one",
                      stacklevel=3)
        return None, evidence, None
    return graph, evidence, values
