"""Distributed sweeps on a local Ray with 2 CPU workers (SmolLM2, fp32): the same bits as the
single-process engine, no chunk lost or duplicated when a worker is killed mid-sweep, a crashed
driver resumed from its checkpoint, and one-line errors for bad input.

One local Ray and one pool of two workers serve the whole module (starting them takes ~45 s on
2 busy cores): the pool starts Ray and shuts it down when the module ends; the CLI's test runs the
command's sweep on it.
"""
import json
import os
import random
import signal

import pytest
import torch

import ray

from interp.cli import main
from interp.distributed import RaySweepPool
from interp.errors import ComponentError, InterpError, VerificationError
from interp.checkpoint import save as _save_checkpoint
from interp.sweep import sweep_patch
from interp.tasks import PromptSet, ioi_examples

# 4 layers x 9 heads; an 8 MiB budget cuts them into 12 chunks of 3 (the default makes 2 chunks).
SWEEP = dict(component="head_out", layers=[26, 27, 28, 29], memory_budget=8 << 20, progress=False)


def _one_thread(fn):
    """Run fn with torch on 1 thread, like each worker: CPU GEMMs round differently on 2 threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ioi4(model):
    return ioi_examples(model, n=4, seed=0)


@pytest.fixture(scope="module")
def reference(model, ioi4):
    """The single-process engine's result, with the workers' thread count."""
    return _one_thread(lambda: sweep_patch(model, ioi4, **SWEEP))


@pytest.fixture(scope="module")
def pool():
    """The module's pool: it starts a local Ray itself (address None) and shuts it down on close."""
    assert not ray.is_initialized()
    pool = RaySweepPool(None, workers=2, threads=1)  # as on 2 cores, whatever this machine has
    assert ray.is_initialized() and pool._owns_ray
    yield pool
    pool.close()
    assert not ray.is_initialized()


def test_same_bits_as_the_local_engine(pool, model, ioi4, reference):
    assert pool.threads == 1  # 2 workers on 2 cores
    result = pool.sweep(ioi4, **SWEEP)
    assert torch.equal(result.values, reference.values)
    assert (result.clean, result.corrupted) == (reference.clean, reference.corrupted)
    assert result.axes == reference.axes and result.meta["index"] == reference.meta["index"]
    stats = pool.stats
    assert stats.chunks == 12 and sorted(stats.recorded) == list(range(12))
    assert set(stats.workers) == {0, 1}  # both workers computed chunks
    # The self-check's cells are in the chunks sent first, and the check was sent before the last
    # chunk came back (not after the sweep, with the other worker idle).
    plan = pool.plan(ioi4, "head_out", layers=SWEEP["layers"], memory_budget=SWEEP["memory_budget"])
    sample = random.Random(0).sample(range(len(plan.variants)), 2)
    first = {c for c, idx in enumerate(plan.chunks) if set(idx) & set(sample)}
    assert set(stats.sent[:len(first)]) == first and stats.check_after < stats.chunks
    assert result.meta["verified"]["cells"] == 2 and len(stats.sent) == 12

    # by position: chunks grouped by first patched position, as the local engine groups them
    by_pos = dict(component="head_out", by_pos=True, layers=[28, 29], positions=[2, 9, ioi4.n_pos - 1],
                  memory_budget=4 << 20, progress=False)
    local = _one_thread(lambda: sweep_patch(model, ioi4, **by_pos))
    assert torch.equal(pool.sweep(ioi4, **by_pos).values, local.values)


def test_killed_worker_loses_and_duplicates_no_chunk(pool, model, ioi4):
    sweep = dict(SWEEP, memory_budget=3 << 20)  # 36 chunks of one variant
    reference = _one_thread(lambda: sweep_patch(model, ioi4, **sweep))
    victim = pool.pids()[1]

    def kill_once(chunk, worker):
        # Worker 1's first chunk is back: the second one sent with it is running now.
        if worker == 1 and pool.stats.workers.count(1) == 1:
            os.kill(victim, signal.SIGKILL)

    result = pool.sweep(ioi4, **sweep, on_chunk=kill_once)
    stats = pool.stats
    assert stats.lost >= 1 and stats.replaced == 1, f"the kill should cost a running chunk: {stats}"
    assert sorted(stats.recorded) == list(range(stats.chunks))  # each chunk recorded exactly once
    assert torch.equal(result.values, reference.values)
    assert victim not in pool.pids()  # the replacement is a new process


def test_crashed_driver_resumes_from_checkpoint(pool, ioi4, reference, tmp_path):
    ckpt = tmp_path / "sweep.ckpt"

    def crash_after_three(chunk, worker):
        if len(pool.stats.recorded) == 3:
            raise RuntimeError("driver crash")

    with pytest.raises(RuntimeError, match="driver crash"):
        pool.sweep(ioi4, **SWEEP, checkpoint=ckpt, on_chunk=crash_after_three)
    first = list(pool.stats.recorded)
    plan = pool.plan(ioi4, "head_out", layers=SWEEP["layers"], memory_budget=SWEEP["memory_budget"])

    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as f:
        values, done = f.get_tensor("values"), f.get_tensor("done").bool()
    saved = sorted(i for c in first for i in plan.chunks[c])
    assert done.nonzero().flatten().tolist() == saved
    # Mark the saved values: a resumed sweep must keep them, not compute them again.
    values[saved] = 1234.0
    _save_checkpoint(ckpt, plan.key, values, done)

    result = pool.sweep(ioi4, **SWEEP, checkpoint=ckpt, verify=0)  # (the marks would fail the check)
    assert pool.stats.skipped == 3 and sorted(pool.stats.recorded + first) == list(range(12))
    flat, expected = result.values.flatten(), reference.values.flatten()
    assert (flat[saved] == 1234.0).all()
    rest = torch.ones(len(flat), dtype=torch.bool)
    rest[saved] = False
    assert torch.equal(flat[rest], expected[rest])

    # The self-check reads the checkpoint's values too: a wrong one at a sampled cell fails it.
    sample = random.Random(0).sample(range(len(flat)), 2)
    values, done = result.values.flatten().clone(), torch.ones(len(flat), dtype=torch.bool)
    values[sample] = 1234.0
    _save_checkpoint(ckpt, plan.key, values, done)
    with pytest.raises(VerificationError, match="disagrees with the reference loop") as failed:
        pool.sweep(ioi4, **SWEEP, checkpoint=ckpt)
    assert pool.stats.skipped == 12 and pool.stats.sent == []
    # ... and the file is set aside: a rerun starts over rather than reading those values unchecked.
    aside = ckpt.with_name(ckpt.name + ".failed")
    assert not ckpt.exists() and aside.exists() and str(aside) in "".join(failed.value.__notes__)


def test_bad_input_is_one_line(pool, ioi4):
    # raised on worker 0 while it plans: the error itself, not Ray's wrapper with its traceback
    with pytest.raises(ComponentError, match=r"layer index 99 out of range \(0\.\.29\)") as bad:
        pool.sweep(ioi4, "head_out", layers=[99], progress=False)
    assert type(bad.value) is ComponentError and "\n" not in str(bad.value)
    with pytest.raises(InterpError, match="workers must be an integer >= 1"):
        RaySweepPool(None, workers=0)
    with pytest.raises(InterpError, match="no Ray cluster reachable at 127.0.0.1:1"):
        RaySweepPool(None, workers=1, address="127.0.0.1:1")  # a closed port on this machine
    with pytest.raises(InterpError, match="HOST:PORT"):
        RaySweepPool(None, workers=1, address="no-port")
    with pytest.raises(InterpError, match="GPU workers"):
        RaySweepPool(None, workers=2, device="cuda")  # this Ray has no GPU
    from interp.models import load_model

    with pytest.raises(InterpError, match="n_devices=2 needs device='cuda'"):
        load_model(n_devices=2)


def test_cli_workers(pool, model, ioi4, tmp_path, capsys, monkeypatch):
    path = tmp_path / "p.jsonl"
    decode = model.tokenizer.decode
    path.write_text("\n".join(json.dumps({"clean": c, "corrupted": x, "answer": decode(a), "distractor": decode(d)})
                              for c, x, a, d in zip(ioi4.clean_text, ioi4.corrupted_text,
                                                    ioi4.answer_ids.tolist(), ioi4.distractor_ids.tolist())))
    base = ["patch", "--prompts", str(path), "--component", "attn_out"]
    for bad, message in [(["--workers", "0"], "--workers must be >= 1"),
                         (["--ray-address", "auto"], "--ray-address needs --workers")]:
        assert main(base + bad) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert len(err) == 1 and message in err[0], err

    # The command's pool is the module's (a second pool would start and load two more workers):
    # what the command asks for is recorded, and its sweep runs on the module's workers.
    asked = []

    class Borrowed:
        def __init__(self, model, **kwargs):
            asked.append({"model": model, **kwargs})

        def __enter__(self):
            return pool

        def __exit__(self, *exc):
            pass  # the module's pool stays open

    import interp.distributed

    monkeypatch.setattr(interp.distributed, "RaySweepPool", Borrowed)
    out = tmp_path / "r.json"
    assert main(base + ["--workers", "2", "--out", str(out)]) == 0
    assert asked == [{"model": None, "workers": 2, "device": "cpu", "dtype": "float32", "address": None,
                      "threads": None}]
    got = json.loads(out.read_text())
    assert got["axes"] == ["layer"] and len(got["values"]) == 30
    prompts = PromptSet.from_jsonl(path, model.tokenizer, prepend_bos=bool(model.cfg.default_prepend_bos))
    local = _one_thread(lambda: sweep_patch(model, prompts, "attn_out", progress=False))
    assert torch.equal(torch.tensor(got["values"]), local.values)

