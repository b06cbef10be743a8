"""The batched sweep engine: equal to the reference loop on whole sweeps, under memory pressure,
through out-of-memory and through a kill -9."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from interp import patch
from interp.errors import InterpError
from interp.metrics import answer_prob
from interp.sweep import SweepEngine, sweep_patch


def test_full_head_sweep_equals_reference(model, prompts):
    """Every head of every layer, all positions: the whole 30 x 9 grid."""
    ref = patch(model, prompts, "head_out", engine="reference", progress=False)
    eng = patch(model, prompts, "head_out", engine="batched", progress=False)
    assert eng.values.shape == (30, 9)
    torch.testing.assert_close(eng.values, ref.values, atol=1e-4, rtol=0)
    assert (ref.clean, ref.corrupted) == pytest.approx((eng.clean, eng.corrupted), abs=1e-4)


def test_noising_and_other_metrics(model, prompts):
    kw = dict(layers=[3, 28], heads=[1, 7], progress=False)
    for by_pos in (False, True):
        pos = [2, 9] if by_pos else None
        ref = patch(model, prompts, "head_q", by_pos=by_pos, direction="noise", metric=answer_prob, engine="reference", positions=pos, **kw)
        eng = patch(model, prompts, "head_q", by_pos=by_pos, direction="noise", metric=answer_prob, engine="batched", positions=pos, **kw)
        torch.testing.assert_close(eng.values, ref.values, atol=1e-5, rtol=0)


def test_tiny_memory_budget_gives_identical_results(model, prompts):
    kw = dict(layers=[0, 15, 29], positions=[1, 8], progress=False)
    normal = sweep_patch(model, prompts, "head_out", by_pos=True, **kw)
    tiny = sweep_patch(model, prompts, "head_out", by_pos=True, memory_budget=1, **kw)
    assert SweepEngine(model, prompts, memory_budget=1)._chunk_size(prompts.n_pos) == 1
    torch.testing.assert_close(tiny.values, normal.values, atol=1e-5, rtol=0)


def test_out_of_memory_halves_the_chunk(model, prompts, monkeypatch):
    engine = SweepEngine(model, prompts)
    _, _, variants = engine.variants("head_out", False, layers=[10, 20])
    expected = engine.run("head_out", variants, progress=False)
    real, sizes = SweepEngine.run_suffix, []

    def fragile(self, starts, p0):
        n = sum(len(block[2]) for block in starts)  # blocks of variants
        if n > 4:
            raise torch.OutOfMemoryError("simulated")
        sizes.append(n)
        return real(self, starts, p0)

    monkeypatch.setattr(SweepEngine, "run_suffix", fragile)
    got = engine.run("head_out", variants, progress=False)
    assert engine._chunk_size(prompts.n_pos) >= len(variants)  # the first try was one chunk
    assert sum(sizes) == len(variants) and max(sizes) <= 4
    # different chunk sizes change the GEMM shapes, hence the last bits of fp32 rounding
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


SCRIPT = textwrap.dedent("""
    import sys, time, torch, interp
    from interp.sweep import SweepEngine
    model = interp.load_model()
    prompts = interp.tasks.ioi_examples(model, n=3, seed=1)
    engine = SweepEngine(model, prompts, memory_budget=1)   # one variant per chunk
    _, _, variants = engine.variants("head_out", True, layers=[27, 28, 29], positions=[4, 10])
    slow = SweepEngine.run_suffix
    def run_suffix(self, starts, p0):
        time.sleep(float(sys.argv[2]))
        return slow(self, starts, p0)
    SweepEngine.run_suffix = run_suffix
    values = engine.run("head_out", variants, checkpoint=sys.argv[1], progress=False)
    torch.save(values, sys.argv[1] + ".out")
""")


def test_resume_after_kill_gives_identical_results(tmp_path):
    script = tmp_path / "sweep.py"
    script.write_text(SCRIPT)
    ckpt = tmp_path / "sweep.ckpt"
    proc = subprocess.Popen([sys.executable, str(script), str(ckpt), "0.5"])
    deadline = time.time() + 300
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # let a few more chunks land
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the sweep never checkpointed"
    from safetensors.torch import load_file

    partial = load_file(str(ckpt))["done"].bool()
    assert 0 < partial.sum() < partial.numel(), "kill should land mid-sweep"
    subprocess.run([sys.executable, str(script), str(ckpt), "0"], check=True)
    resumed = torch.load(str(ckpt) + ".out")
    fresh = tmp_path / "fresh.ckpt"
    subprocess.run([sys.executable, str(script), str(fresh), "0"], check=True)
    torch.testing.assert_close(resumed, torch.load(str(fresh) + ".out"), atol=0, rtol=0)


def test_checkpoint_of_another_sweep_is_refused(model, prompts, tmp_path):
    ckpt = tmp_path / "c.ckpt"
    sweep_patch(model, prompts, "head_out", layers=[29], checkpoint=ckpt, progress=False)
    with pytest.raises(InterpError, match="different sweep"):
        sweep_patch(model, prompts, "head_out", layers=[28], checkpoint=ckpt, progress=False)
    ckpt.write_bytes(b"garbage")
    with pytest.raises(InterpError, match="unreadable"):
        sweep_patch(model, prompts, "head_out", layers=[29], checkpoint=ckpt, progress=False)
