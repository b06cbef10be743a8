"""Patching sweeps on several GPUs (or CPU processes) with Ray: one model replica per worker.

A sweep is a list of independent variants (one patch each). The batched engine
(``interp.sweep.SweepEngine``) already cuts it into chunks and runs a chunk in one forward; this
module hands those chunks to a pool of Ray actors instead of running them in one process:

    driver                               worker (a Ray actor, one GPU or a few CPU threads each)
    ------                               ------
    start Ray (or join a cluster)        load the model: load_model(name, device, dtype)
    plan: variants, chunks, key  <-----  SweepEngine(model, prompts, direction, metric, budget)
    send chunks, up to 2 per worker ---> engine.run(component, chunk) -> values of the chunk
    record each finished chunk   <-----
    in the checkpoint file
    send the self-check, once the   ---> re-run a seeded sample of cells through the reference
    sampled cells' chunks are in           loop (interp.verify), while the others run chunks

Why the numbers are the engine's own, bit for bit. Floating-point sums depend on how a chunk is
batched: the same variant computed in a chunk of 25 and in a chunk of 1 differs in the last bits
(up to ~1e-6 on SmolLM2 in fp32). So the driver does not choose its own chunks: it asks a worker's
engine for the chunks the local engine would make (same grouping by first patched position, same
chunk size from the same memory budget), and every worker runs each chunk whole, with that same
budget. A distributed sweep therefore equals ``sweep_patch`` with the same memory budget exactly on
CPU fp32, provided both use the same number of torch threads (CPU matrix products also round
differently with 1 and with 2 threads, by the same ~1e-6; the workers use ``threads`` each).

Faults. A worker that dies (its process killed, its node lost) makes Ray raise ``RayActorError``
for its unfinished chunks; the driver puts those chunks back in the queue, starts a replacement
actor (up to ``max_restarts`` times per sweep) and carries on with the live workers meanwhile. A
chunk is recorded once, when its values reach the driver. The driver writes every finished chunk
to the checkpoint file in the engine's own format (``interp.checkpoint``, keyed by the
engine's ``_key``); if the driver itself dies, running the same sweep with the same checkpoint
computes only the chunks that are not in the file.

Replicas or sharding. A worker holds a whole model, so this scales sweeps of models that fit on one
GPU: N GPUs, N replicas, about N times the throughput. A model too large for one GPU has to be
split across GPUs (``load_model(..., device="cuda", n_devices=N)``: its decoder layers in N runs);
the batched engine refuses a split model and ``interp.patch`` takes the reference loop there, in
one process. See docs/ray.md.

    >>> from interp.distributed import sweep_patch_distributed
    >>> result = sweep_patch_distributed("smollm2-135m-instruct", prompts, "head_out", workers=2)
"""
from __future__ import annotations

import collections
import contextlib
import logging
import os
import random
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from interp.errors import InterpError, VerificationError
from interp.metrics import logit_diff
from interp.result import Result
from interp import checkpoint as ckpt
from interp.components import Variant
from interp.sweep import SweepEngine
from interp.tasks.prompts import PromptSet

# Chunks sent ahead to each worker: one running and one waiting, so a worker never idles for the
# round trip to the driver.
IN_FLIGHT_PER_WORKER = 2

ModelLoader = Callable[[str], Any]  # device ("cpu", "cuda") -> a TransformerBridge


# --------------------------------------------------------------------------------------- the plan
@dataclass
class SweepPlan:
    """What the driver needs to run and reassemble a sweep, as computed by a worker's engine.

    Attributes:
        axes, index: the Result's axes and the swept indices of each (as ``SweepEngine.variants``).
        variants: every patch, in the Result's order.
        chunks: lists of indices into ``variants``; each is run whole by one worker, exactly as
            the local engine would run it.
        key: the engine's checkpoint key of this sweep.
        memory_budget: the bytes per chunk the chunks were sized from (every worker uses it).
        clean, corrupted: the metric of the unpatched clean and corrupted runs.
    """

    axes: tuple[str, ...]
    index: dict[str, list[int]]
    variants: list[Variant]
    chunks: list[list[int]]
    key: str
    memory_budget: int
    clean: float
    corrupted: float


# ---------------------------------------------------------------------------------------- workers
def _load_by_name(name: str | None, dtype: str | None, device: str):
    from interp.models import load_model

    return load_model(name, device=device, dtype=dtype)


class SweepWorker:
    """The Ray actor: one model replica and one engine (run through ``ray.remote(SweepWorker)``).

    Args:
        loader: ``loader(device)`` returns the model; every worker calls the same loader, so the
            replicas are identical (``load_model`` with one name and dtype, or a seeded builder).
        device: "cpu" or "cuda" (on a GPU worker Ray makes its one GPU ``cuda:0``).
        threads: torch's CPU threads in this process.
    """

    def __init__(self, loader: ModelLoader, device: str, threads: int):
        torch.set_num_threads(threads)
        self.model = loader(device)
        self.engine: SweepEngine | None = None

    def pid(self) -> int:
        return os.getpid()

    def setup(self, prompts: PromptSet, direction: str, metric, memory_budget: int | None) -> int:
        """Build this sweep's engine and its two cached runs; returns the engine's memory budget."""
        self.engine = SweepEngine(self.model, prompts, direction, metric, memory_budget)
        self.engine.clean_and_corrupted()  # computes both cached runs now, not in the first chunk
        return self.engine.memory_budget

    def plan(self, prompts: PromptSet, direction: str, metric, memory_budget: int | None, component: str,
             by_pos: bool, layers, heads, positions, min_chunks: int | None) -> SweepPlan:
        """``setup``, then the sweep's variants and chunks. With ``min_chunks``, the memory budget
        is halved until the sweep has at least that many chunks (or chunks of one variant)."""
        self.setup(prompts, direction, metric, memory_budget)
        engine = self.engine
        axes, index, variants = engine.variants(component, by_pos, layers, heads, positions)
        chunks = engine.chunks(variants)
        while min_chunks and len(chunks) < min_chunks and max(map(len, chunks)) > 1:
            engine.memory_budget = max(1, engine.memory_budget // 2)
            chunks = engine.chunks(variants)
        clean, corrupted = engine.clean_and_corrupted()
        return SweepPlan(tuple(axes), index, variants, chunks, engine._key(component, variants),
                         engine.memory_budget, clean, corrupted)

    def verify(self, component: str, variants: list[Variant], values: torch.Tensor) -> tuple[dict, float]:
        """Re-run ``variants`` (a sample of the sweep, with their swept ``values``) through the
        reference loop on this worker's model (``interp.verify``); the evidence, and the seconds
        it took."""
        from interp.verify import SweepCheck

        start = time.perf_counter()
        evidence = SweepCheck(self.engine, component, variants, len(variants)).check(values)
        return evidence, time.perf_counter() - start

    def run_chunk(self, component: str, variants: list[Variant], memory_budget: int) -> tuple[torch.Tensor, float]:
        """The values of one chunk, and the seconds this worker spent on it. With the plan's memory
        budget, ``run`` computes the chunk in one piece, as the local engine does (it still halves
        it on out-of-memory). The values are on the host when ``run`` returns, so the seconds
        include the device's work."""
        start = time.perf_counter()
        self.engine.memory_budget = memory_budget
        values = self.engine.run(component, variants, progress=False)
        return values, time.perf_counter() - start


def _get(ref):
    """``ray.get(ref)``; an InterpError raised in a worker (a bad index, a failed self-check) is
    raised here as itself, so that its message stays one line (Ray wraps it with the worker's
    traceback)."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as err:
        if isinstance(err.cause, InterpError):
            raise err.cause from None
        raise


# ------------------------------------------------------------------------------------ connecting
def _check_address(address: str) -> None:
    """Fail in one line, within seconds, when nothing listens at a HOST:PORT Ray address."""
    if address == "auto":
        return
    hostport = address.removeprefix("ray://")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise InterpError(f"Ray address must be 'auto', HOST:PORT or ray://HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as exc:
        raise InterpError(f"no Ray cluster reachable at {address} ({exc.strerror or exc})") from None


def _start_ray(address: str | None, num_cpus: int | None, num_gpus: int | None, runtime_env: dict | None) -> bool:
    """Connect to Ray; returns True when this call connected (and so should disconnect).

    ``address=None`` starts a local Ray (no dashboard) with ``num_cpus`` CPUs and ``num_gpus``
    GPUs; otherwise joins the cluster at ``address``. A Ray the caller already initialised is used
    as it is.
    """
    import ray

    if address is not None:
        _check_address(address)
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = dict(logging_level=logging.WARNING, runtime_env=runtime_env)
    if address is None:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False)
    else:
        kwargs.update(address=address)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = "start a local Ray" if address is None else f"connect to the Ray cluster at {address}"
        raise InterpError(f"could not {where}: {str(exc).splitlines()[0]}") from None
    return True


# ------------------------------------------------------------------------------------------ pool
@dataclass
class _Slot:
    """One worker as the driver sees it during a sweep."""

    handle: Any
    position: int  # its index in the pool's ``handles``
    ready: bool = False  # its engine is set up for this sweep
    alive: bool = True
    busy: int = 0  # chunks sent and not yet back


@dataclass
class SweepStats:
    """What happened in the last sweep: for monitoring and for the fault-tolerance tests."""

    chunks: int = 0  # chunks in the plan
    skipped: int = 0  # already in the checkpoint
    sent: list[int] = field(default_factory=list)  # chunk ids, in the order they were sent
    recorded: list[int] = field(default_factory=list)  # chunk ids, in the order they were recorded
    check_after: int | None = None  # chunks recorded when the self-check was (last) sent
    workers: list[int] = field(default_factory=list)  # the worker (pool position) of each of those
    lost: int = 0  # chunk runs lost with a dead worker (and sent again)
    replaced: int = 0  # workers replaced
    seconds: float = 0.0  # the whole sweep, as the caller waits for it
    plan_seconds: float = 0.0  # until worker 0's plan reached the driver (no chunk runs before it)
    check_seconds: float = 0.0  # the self-check on its worker (``interp.verify``)
    after_chunks_seconds: float = 0.0  # from the last chunk recorded to the end: the check's unhidden part
    busy: dict[int, float] = field(default_factory=dict)  # pool position -> seconds in chunks and the check

    @property
    def idle_seconds(self) -> float:
        """The sweep's time after the plan that the busiest worker did not spend in its tasks:
        dispatch, round trips, and the end of the sweep, when the other workers had run out of
        chunks."""
        return max(0.0, self.seconds - self.plan_seconds - max(self.busy.values(), default=0.0))


class RaySweepPool:
    """A pool of Ray actors, each holding one model replica, that runs batched patching sweeps.

    Starting the pool loads the model in every worker (in parallel); each ``sweep`` then costs
    only the sweep. Use it as a context manager, or call ``close()``.

    Args:
        model: a registered model key, local folder or hub name for ``load_model`` (None: the
            default model), or a callable ``loader(device) -> TransformerBridge`` that returns an
            identical model on every call (e.g. a seeded random-weight builder).
        workers: number of actors (replicas); >= 1.
        device: "cpu" (each worker takes ``threads`` CPUs) or "cuda" (each worker takes one GPU).
        dtype: the model's dtype name for ``load_model`` ("float32", "bfloat16"); None: its own.
        address: None starts a local Ray on this machine; "auto" joins the Ray cluster this
            machine is part of; "HOST:PORT" (or "ray://HOST:PORT") joins that cluster's head.
            If Ray is already initialised in this process it is used as it is.
        threads: torch threads per CPU worker (default: this machine's cores / workers, at least
            1, e.g. 1 each for 2 workers on 2 cores). GPU workers use one CPU each.
        max_restarts: how many dead workers a sweep may replace before it gives up.
        runtime_env: passed to ``ray.init`` (e.g. ``{"working_dir": "."}`` to ship the code to a
            cluster whose nodes lack this package).
        startup_timeout: seconds to wait for every worker to load its model.
    """

    def __init__(self, model: str | ModelLoader | None = None, workers: int = 2, device: str = "cpu",
                 dtype: str | None = None, address: str | None = None, threads: int | None = None,
                 max_restarts: int = 3, runtime_env: dict | None = None, startup_timeout: float = 900.0):
        import functools

        import ray

        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise InterpError(f"workers must be an integer >= 1, got {workers!r}")
        if device not in ("cpu", "cuda"):
            raise InterpError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if threads is not None and threads < 1:
            raise InterpError(f"threads must be >= 1, got {threads}")
        self.workers, self.device, self.max_restarts = workers, device, max_restarts
        self.loader = model if callable(model) else functools.partial(_load_by_name, model, dtype)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        gpus = torch.cuda.device_count() if device == "cuda" else None
        self._owns_ray = _start_ray(address, max(cores, workers), gpus, runtime_env)
        try:
            self.threads, self._options = self._resources(threads)
            self.handles = [self._new_actor() for _ in range(workers)]
            try:  # wait for every replica to load
                ray.get([h.pid.remote() for h in self.handles], timeout=startup_timeout)
            except ray.exceptions.GetTimeoutError:
                raise InterpError(f"the {workers} Ray workers did not start within {startup_timeout:.0f} s "
                                  "(the cluster may lack the CPUs/GPUs they need)") from None
        except BaseException:
            self.close()
            raise
        self.stats = SweepStats()

    def _resources(self, threads: int | None) -> tuple[int, dict]:
        """(torch threads per worker, Ray actor options), checked against the cluster's nodes."""
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        if self.device == "cuda":
            gpus = sum(int(n.get("GPU", 0)) for n in nodes)
            if gpus < self.workers:
                raise InterpError(f"{self.workers} GPU workers asked for, but the Ray cluster has {gpus} GPUs")
            return threads or 1, dict(num_gpus=1, num_cpus=1)
        cpus = [int(n.get("CPU", 0)) for n in nodes]
        if threads is None:  # share the cores: 1 thread each for 2 workers on 2 cores
            threads = max(1, min(sum(cpus) // self.workers, max(cpus, default=1)))
        if sum(c // threads for c in cpus) < self.workers:
            raise InterpError(f"{self.workers} workers x {threads} threads do not fit the Ray cluster's "
                              f"CPUs ({' + '.join(map(str, cpus)) or 0})")
        return threads, dict(num_cpus=threads)

    def _new_actor(self):
        import ray

        return ray.remote(SweepWorker).options(**self._options).remote(self.loader, self.device, self.threads)

    @staticmethod
    def _kill(handle) -> None:
        import ray

        try:
            ray.kill(handle, no_restart=True)
        except Exception:  # already gone
            pass

    def __enter__(self) -> "RaySweepPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the workers; shut Ray down if this pool started or joined it."""
        import ray

        for h in getattr(self, "handles", []):
            self._kill(h)
        self.handles = []
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
        self._owns_ray = False

    def pids(self) -> list[int]:
        """The worker processes' ids (for tests and monitoring)."""
        import ray

        return ray.get([h.pid.remote() for h in self.handles])

    # -- planning -------------------------------------------------------------------------------
    def plan(self, prompts: PromptSet, component: str, by_pos: bool = False, direction: str = "denoise",
             metric=logit_diff, layers=None, heads=None, positions=None, memory_budget: int | None = None,
             min_chunks: int | None = None) -> SweepPlan:
        """Set up worker 0 for this sweep and return its plan (see ``SweepPlan``). A worker 0 found
        dead is replaced (counting towards ``max_restarts``)."""
        import ray
        from ray.exceptions import RayActorError

        prompts = prompts.to("cpu")
        for _ in range(self.max_restarts + 1):
            first = self.handles[0]
            try:
                return _get(first.plan.remote(prompts, direction, metric, memory_budget, component, by_pos,
                                              layers, heads, positions, min_chunks))
            except RayActorError:
                self._kill(first)
                self.handles[0] = self._new_actor()
        raise InterpError(f"worker 0 died {self.max_restarts + 1} times while planning the sweep")

    # -- sweeping -------------------------------------------------------------------------------
    def sweep(self, prompts: PromptSet, component: str, by_pos: bool = False, direction: str = "denoise",
              metric=logit_diff, layers=None, heads=None, positions=None, checkpoint: str | Path | None = None,
              memory_budget: int | None = None, min_chunks: int | None = None, progress: bool = True,
              on_chunk: Callable[[int, int], None] | None = None, verify: int = 2, seed: int = 0) -> Result:
        """Run one patching sweep on the pool; same arguments and Result as ``sweep_patch``.

        Args:
            checkpoint: a file of finished chunks (the engine's format); an existing file of the
                same sweep is resumed: its chunks are not computed again.
            memory_budget: bytes per chunk, as for the engine (default: the engine's default on
                worker 0). The chunks, hence the exact values, are those of the local engine
                with the same budget.
            min_chunks: lower the budget until the sweep has at least this many chunks, so that
                every worker gets work (say 4 x workers on GPUs, whose default budget makes few,
                large chunks). Changes the chunks, so the values then equal the local engine's
                with ``memory_budget=result.meta["distributed"]["memory_budget"]``.
            on_chunk: ``on_chunk(chunk, worker)`` is called after each chunk is recorded, with the
                chunk's id and the position in ``handles`` of the worker that computed it.
            verify: cells re-run through the reference loop on a worker (``interp.verify``; the
                evidence is ``meta["verified"]``). Their chunks run first and the check runs
                while the other workers compute the rest; a failed check stops the sweep
                (VerificationError) and moves the checkpoint aside (``interp.checkpoint.set_aside``).
        """
        import ray
        from ray.exceptions import RayActorError

        if not self.handles:
            raise InterpError("this pool is closed; start a new RaySweepPool")
        start = time.perf_counter()
        prompts = prompts.to("cpu")
        # Workers 1.. build their engines (two cached runs each) while worker 0 plans.
        setup_args = (prompts, direction, metric, memory_budget)
        slots = [_Slot(h, position) for position, h in enumerate(self.handles)]
        refs: dict[Any, tuple[_Slot, str, int | None]] = {}  # in flight: ref -> (worker, task, chunk id)
        for slot in slots[1:]:
            refs[slot.handle.setup.remote(*setup_args)] = (slot, "setup", None)
        plan = self.plan(prompts, component, by_pos, direction, metric, layers, heads, positions,
                         memory_budget, min_chunks)
        self.stats = stats = SweepStats(plan_seconds=time.perf_counter() - start)
        slots[0] = _Slot(self.handles[0], 0, ready=True)  # (replaced if it died while planning)
        n = len(plan.variants)
        values = torch.full((n,), float("nan"))
        done = torch.zeros(n, dtype=torch.bool)
        if checkpoint is not None:
            values, done = ckpt.load(ckpt.check_path(checkpoint), plan.key, values, done)
        # The self-check re-runs a seeded sample of cells. It is sent, as one more task, as soon
        # as their chunks are in, and those chunks go first: the check then runs while the other
        # workers compute the rest, instead of after the last chunk with the other workers idle.
        sample = sorted(random.Random(seed).sample(range(n), min(max(verify, 0), n)))
        sampled = {c for c, idx in enumerate(plan.chunks) if not set(idx).isdisjoint(sample)}
        todo = collections.deque(sorted((c for c, idx in enumerate(plan.chunks) if not done[idx].all()),
                                        key=lambda c: c not in sampled))
        stats.chunks, stats.skipped = len(plan.chunks), len(plan.chunks) - len(todo)
        check = "waiting"  # -> "ready" (every sampled cell has its value) -> "sent" -> "done"
        verified, last_chunk = None, None
        bar = tqdm(total=n, initial=int(done.sum()), desc=f"sweep {component} on {self.workers} workers",
                   disable=not progress, leave=False)
        restarts = self.max_restarts
        try:
            while todo or check != "done" or any(task == "chunk" for _, task, _ in refs.values()):
                if check == "waiting" and bool(done[sample].all()):
                    check = "ready"
                for slot in slots:
                    while slot.alive and slot.ready and slot.busy < IN_FLIGHT_PER_WORKER and (todo or check == "ready"):
                        if check == "ready":
                            ref = slot.handle.verify.remote(component, [plan.variants[i] for i in sample], values[sample])
                            refs[ref], check = (slot, "check", None), "sent"
                            stats.check_after = len(stats.recorded)
                        else:
                            cid = todo.popleft()
                            chunk = [plan.variants[i] for i in plan.chunks[cid]]
                            refs[slot.handle.run_chunk.remote(component, chunk, plan.memory_budget)] = (slot, "chunk", cid)
                            stats.sent.append(cid)
                        slot.busy += 1
                if not refs:
                    left = f"{len(todo)} chunks" + (" and the self-check" if check != "done" else "")
                    raise InterpError(f"every Ray worker died and {self.max_restarts} replacements were used up; "
                                      f"{left} left (resume from the checkpoint)")
                (ref,), _ = ray.wait(list(refs), num_returns=1)
                slot, task, cid = refs.pop(ref)
                try:
                    out = _get(ref)
                except RayActorError:  # the worker is gone: its chunks (or the check) go back in the queue
                    if task == "chunk":
                        todo.appendleft(cid)
                        stats.lost += 1
                    elif task == "check":
                        check = "ready"
                    if task != "setup":
                        slot.busy -= 1
                    if slot.alive:
                        slot.alive = False
                        self._kill(slot.handle)
                        if restarts > 0:
                            restarts -= 1
                            stats.replaced += 1
                            new = _Slot(self._new_actor(), slot.position)
                            self.handles[slot.position] = new.handle
                            slots.append(new)
                            refs[new.handle.setup.remote(*setup_args)] = (new, "setup", None)
                    continue
                if task == "setup":
                    slot.ready = True
                    continue
                out, seconds = out
                stats.busy[slot.position] = stats.busy.get(slot.position, 0.0) + seconds
                slot.busy -= 1
                if task == "check":
                    verified, check, stats.check_seconds = out, "done", seconds
                    continue
                idx = torch.tensor(plan.chunks[cid])
                fresh = ~done[idx]  # a chunk partly in a checkpoint keeps its recorded values
                values[idx[fresh]], done[idx] = out[fresh], True
                last_chunk = time.perf_counter()
                if checkpoint is not None:
                    ckpt.save(checkpoint, plan.key, values, done)
                stats.recorded.append(cid)
                stats.workers.append(slot.position)
                bar.update(int(fresh.sum()))
                if on_chunk is not None:
                    on_chunk(cid, slot.position)
        except BaseException as err:  # (a failed check, a dead pool, an interrupt, the caller's on_chunk)
            bar.close()
            if checkpoint is not None and isinstance(err, VerificationError):
                ckpt.set_aside(checkpoint, err)
            for ref in refs:  # the pool's next sweep does not wait behind this one's chunks
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            raise
        bar.close()
        stats.seconds = time.perf_counter() - start
        stats.after_chunks_seconds = stats.seconds - ((last_chunk - start) if stats.recorded else stats.plan_seconds)
        return Result(values.reshape([len(plan.index[a]) for a in plan.axes]), plan.axes, component,
                      getattr(metric, "__name__", "metric"), clean=plan.clean, corrupted=plan.corrupted,
                      meta={"index": {a: plan.index[a] for a in plan.axes}, "direction": direction,
                            "n_prompts": len(prompts), "engine": "batched", "verified": verified,
                            "distributed": {"workers": self.workers, "device": self.device,
                                            "threads": self.threads, "memory_budget": plan.memory_budget,
                                            "chunks": len(plan.chunks), "lost": stats.lost,
                                            "replaced": stats.replaced}})


def sweep_patch_distributed(model: str | ModelLoader | None, prompts: PromptSet, component: str,
                            by_pos: bool = False, direction: str = "denoise", metric=logit_diff,
                            layers=None, heads=None, positions=None, workers: int = 2, device: str = "cpu",
                            dtype: str | None = None, address: str | None = None,
                            checkpoint: str | Path | None = None, memory_budget: int | None = None,
                            min_chunks: int | None = None, threads: int | None = None,
                            progress: bool = True, verify: int = 2) -> Result:
    """``interp.sweep.sweep_patch`` on a pool of Ray workers: same arguments, same Result.

    Starts ``workers`` replicas of ``model`` (``load_model(model, device, dtype)`` in each), runs
    the sweep and stops them (and the local Ray, if this call started one). For several sweeps on
    one pool, use ``RaySweepPool`` directly. See ``RaySweepPool`` and ``RaySweepPool.sweep`` for the
    arguments; ``address=None`` starts Ray on this machine.

    The values equal ``sweep_patch(load_model(model), prompts, ..., memory_budget=...)`` bit for
    bit on CPU fp32 when both use the same torch thread count (module docstring).
    """
    with RaySweepPool(model, workers=workers, device=device, dtype=dtype, address=address,
                      threads=threads) as pool:
        return pool.sweep(prompts, component, by_pos, direction, metric, layers, heads, positions,
                          checkpoint=checkpoint, memory_budget=memory_budget, min_chunks=min_chunks,
                          progress=progress, verify=verify)
