"""The batched sweep engine: equal to the reference loop on whole sweeps, under memory pressure,
through out-of-memory and through a kill -9."""
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import interp
from interp import patch
from interp.errors import InterpError, VerificationError
from interp.metrics import answer_prob, logit_diff
from interp.sweep import SweepEngine, sweep_patch


def test_full_head_sweep_equals_reference(model, prompts):
    """Every head of every layer, all positions: the whole 30 x 9 grid of the batched engine, held
    to the hooked reference on 30 cells that cover every layer and every head index (a diagonal
    pattern; the subset tests against TransformerLens's loop are in test_patching_vs_transformerlens)."""
    from interp.components import Variant
    from interp.reference import run_cells

    eng = patch(model, prompts, "head_out", engine="batched", progress=False)
    assert eng.values.shape == (30, 9)
    cells = [(l, (2 * l) % 9) for l in range(30)]
    assert {l for l, _ in cells} == set(range(30)) and {h for _, h in cells} == set(range(9))
    ref = run_cells(model, prompts, "head_out", [Variant(l, h, None) for l, h in cells])
    torch.testing.assert_close(torch.stack([eng.values[l, h] for l, h in cells]), ref, atol=1e-4, rtol=0)
    with torch.no_grad():  # the baselines, against the bridge's own forwards
        clean = logit_diff(model(prompts.clean_tokens), prompts).mean().item()
        corrupted = logit_diff(model(prompts.corrupted_tokens), prompts).mean().item()
    assert (clean, corrupted) == pytest.approx((eng.clean, eng.corrupted), abs=1e-4)


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


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory (simulated)"),
                                   RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: "
                                                "can't allocate memory: you tried to allocate 9663676416 bytes")],
                         ids=["cuda", "cpu"])
def test_out_of_memory_halves_the_chunk(model, prompts, monkeypatch, error):
    engine = SweepEngine(model, prompts)
    _, _, variants = engine.variants("head_out", False, layers=[10, 20])
    expected = engine.run("head_out", variants, progress=False)
    real, sizes = SweepEngine.run_suffix, []

    def fragile(self, starts, p0):
        n = sum(len(block[2]) for block in starts)  # blocks of variants
        if n > 4:
            raise error
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
    engine.run("head_out", variants, checkpoint=sys.argv[1], progress=False)
""")


def test_resume_after_kill_gives_identical_results(model, tmp_path, monkeypatch):
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
    # Resumed and uninterrupted, in this process (same model, prompts, chunking and thread count):
    # the resumed sweep computes only the chunks the killed one had not saved.
    prompts = interp.tasks.ioi_examples(model, n=3, seed=1)
    engine = SweepEngine(model, prompts, memory_budget=1)
    _, _, variants = engine.variants("head_out", True, layers=[27, 28, 29], positions=[4, 10])
    computed = []
    run_suffix = SweepEngine.run_suffix

    def counted(self, starts, p0, *args, **kwargs):
        computed.append(sum(len(index) for *_, index in starts))
        return run_suffix(self, starts, p0, *args, **kwargs)

    monkeypatch.setattr(SweepEngine, "run_suffix", counted)
    resumed = engine.run("head_out", variants, checkpoint=ckpt, progress=False)
    assert sum(computed) == int((~partial).sum()), "the resumed sweep recomputed saved cells"
    monkeypatch.undo()
    fresh = SweepEngine(model, prompts, memory_budget=1).run("head_out", variants, progress=False)
    torch.testing.assert_close(resumed, fresh, atol=0, rtol=0)


def test_checkpoint_of_another_sweep_is_refused(model, prompts, tmp_path):
    ckpt = tmp_path / "c.ckpt"
    sweep_patch(model, prompts, "head_out", layers=[29], checkpoint=ckpt, progress=False)
    with pytest.raises(InterpError, match="different sweep"):
        sweep_patch(model, prompts, "head_out", layers=[28], checkpoint=ckpt, progress=False)
    ckpt.write_bytes(b"garbage")
    with pytest.raises(InterpError, match="unreadable"):
        sweep_patch(model, prompts, "head_out", layers=[29], checkpoint=ckpt, progress=False)


def test_checkpoint_that_fails_the_check_is_set_aside(model, prompts, tmp_path):
    """Wrong values in a checkpoint (here written by hand at every cell) fail the self-check of the
    sweep that resumes it, and the file is moved to .failed: a rerun with the check off would
    otherwise return them unchecked."""
    from safetensors import safe_open

    from interp.checkpoint import save

    ckpt = tmp_path / "c.ckpt"
    sweep = dict(layers=[29], checkpoint=ckpt, progress=False)
    sweep_patch(model, prompts, "head_out", **sweep)
    with safe_open(str(ckpt), "pt") as f:
        key, values, done = f.metadata()["key"], f.get_tensor("values"), f.get_tensor("done").bool()
    save(ckpt, key, values + 1.0, done)
    with pytest.raises(VerificationError, match="disagrees with the reference loop") as failed:
        sweep_patch(model, prompts, "head_out", **sweep)
    aside = tmp_path / "c.ckpt.failed"
    assert not ckpt.exists() and aside.exists() and str(aside) in "".join(failed.value.__notes__)
    again = sweep_patch(model, prompts, "head_out", **dict(sweep, checkpoint=ckpt), verify=0)
    assert torch.equal(again.values.flatten(), values)  # computed again, not read from the file


@pytest.mark.parametrize("act", ["gelu", "gelu_new", "relu"])
def test_mlp_uses_the_models_own_activation(act):
    """Exact-erf GELU for act_fn="gelu" (BERT-style), the tanh form only for the tanh variants:
    the engine's MLP equals W_out(act(h W_in + b_in)) + b_out with TransformerLens's function."""
    from transformer_lens.utilities.activation_functions import gelu_new

    from interp.sweep import Weights

    torch.manual_seed(0)
    L, H, d, dh, m = 1, 2, 8, 4, 16
    r = lambda *s: torch.randn(*s, dtype=torch.float64)  # noqa: E731
    w = Weights(W_Q=r(L, H, d, dh), W_K=r(L, H, d, dh), W_V=r(L, H, d, dh), W_O=r(L, H, dh, d),
                b_Q=None, b_K=None, b_V=None, b_O=None, W_in=r(L, d, m), W_gate=None, W_out=r(L, m, d),
                b_in=r(L, m), b_out=r(L, d), ln1=[(None, None)], ln2=[(None, None)], ln_final=(None, None),
                W_U=r(d, 5), b_U=None, eps=1e-5, center=True, act=act, rotary=False, scale=0.5,
                W_E=r(5, d), W_pos=None)
    h = r(3, d) * 3
    fn = {"gelu": torch.nn.functional.gelu, "gelu_new": gelu_new, "relu": torch.relu}[act]
    want = fn(h @ w.W_in[0] + w.b_in[0]) @ w.W_out[0] + w.b_out[0]
    torch.testing.assert_close(w.mlp_normed(0, h), want, rtol=0, atol=1e-12)
    if act == "gelu":  # the two GELUs differ by more than the tolerance on these inputs
        tanh = torch.nn.functional.gelu(h @ w.W_in[0] + w.b_in[0], approximate="tanh") @ w.W_out[0] + w.b_out[0]
        assert (tanh - want).abs().max() > 1e-6


def test_a_sweep_that_cannot_fit_is_refused_before_any_forward(model, prompts, monkeypatch):
    import interp.sweep

    monkeypatch.setattr(interp.sweep, "available_bytes", lambda device: 1 << 20)
    forwards = []
    monkeypatch.setattr(type(model), "forward", lambda *a, **k: forwards.append(1))
    monkeypatch.setattr(SweepEngine, "_forward_cache", lambda *a, **k: forwards.append(1))
    with pytest.raises(InterpError, match=r"needs about .* and 1 MiB is available"):
        sweep_patch(model, prompts, "head_pattern", progress=False)
    assert not forwards


def test_an_unrelated_runtime_error_is_not_taken_for_out_of_memory(model, prompts, monkeypatch):
    engine = SweepEngine(model, prompts)
    _, _, variants = engine.variants("head_out", False, layers=[29])

    def broken(self, starts, p0):
        raise RuntimeError("shape mismatch")

    monkeypatch.setattr(SweepEngine, "run_suffix", broken)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        engine.run("head_out", variants, progress=False)


@pytest.mark.parametrize("family", ["tiny-gpt2", "tiny-llama"])
@pytest.mark.parametrize("by_pos", [False, True], ids=["all_pos", "by_pos"])
def test_the_flop_floor_is_the_engines_work(family, by_pos):
    """The matrix products a head sweep runs (torch's FLOP counter) are the floor that BENCHMARKS.md
    divides by (``interp.bench.floor_flops``), plus at most 3% (the W_O product of the patched head
    and the readout): a floor above them would flatter every "time vs floor" ratio, and work far
    above it (layer l's MLP at every later position of a by-position patch) would be waste."""
    from torch.utils.flop_counter import FlopCounterMode

    from interp.bench import floor_flops
    from interp.random_models import random_model, random_prompts

    model = random_model(family, "cpu", torch.float32)
    prompts = random_prompts(model, batch=3, n_pos=12)
    engine = SweepEngine(model, prompts)
    engine.cache_both()  # the two cached runs are not the sweep's work
    _, _, variants = engine.variants("head_out", by_pos)
    with FlopCounterMode(display=False) as counter:  # attention runs as one fused op, not counted
        engine.run("head_out", variants, progress=False)
    floor = floor_flops(model.cfg, 3, 12, by_pos, attention=False)
    assert floor <= counter.get_total_flops() <= 1.03 * floor
