"""A sweep engine kept on the model between calls (``interp.sweep.shared_engine``) and its CUDA
graphs (``interp.graphs``): reused only when everything it was built from is unchanged, never a
stale number."""
import pytest
import torch

import interp
from interp.random_models import random_model, random_prompts
from interp.reference import run_cells
from interp.sweep import kept_engine, release, shared_engine, sweep_patch


@pytest.fixture
def tiny():
    model = random_model("tiny-llama", "cpu", torch.float32)
    return model, random_prompts(model, batch=3, n_pos=6)


def _down_proj(model, layer: int):
    return next(p for n, p in model.named_parameters() if f"layers.{layer}." in n and "down_proj" in n)


def _reference(model, prompts, values):
    """The reference loop's value of every cell of an all-position head-output sweep."""
    from interp.components import Variant

    L, H = values.shape
    cells = [Variant(l, h, None) for l in range(L) for h in range(H)]
    return run_cells(model, prompts, "head_out", cells).reshape(L, H)


def test_a_repeated_sweep_reuses_the_engine_and_its_cached_runs(tiny):
    model, prompts = tiny
    first = sweep_patch(model, prompts, "head_out", progress=False)
    engine = shared_engine(model, prompts)
    cached = engine.cache("base")
    again = sweep_patch(model, prompts, "head_out", progress=False)
    assert shared_engine(model, prompts) is engine and engine.cache("base") is cached  # not recomputed
    torch.testing.assert_close(again.values, first.values, atol=0, rtol=0)
    release(model)
    assert shared_engine(model, prompts) is not engine


def test_changed_weights_hooks_or_prompts_get_a_new_engine_and_the_right_numbers(tiny):
    model, prompts = tiny
    before = sweep_patch(model, prompts, "head_out", progress=False)
    engine = shared_engine(model, prompts)

    with torch.no_grad():  # an in-place edit through .data: a fresh version counter, caught by value
        _down_proj(model, 0).data.mul_(3.0)
    edited = sweep_patch(model, prompts, "head_out", progress=False)
    assert shared_engine(model, prompts) is not engine
    assert (edited.values - before.values).abs().max() > 1e-3  # the edit moved the numbers
    torch.testing.assert_close(edited.values, _reference(model, prompts, edited.values), atol=1e-5, rtol=0)

    engine = shared_engine(model, prompts)
    with interp.ablate(model, [(0, 1)], "zero"):  # a hook registered on the model
        ablated = sweep_patch(model, prompts, "head_out", progress=False)
        assert shared_engine(model, prompts) is not engine
        torch.testing.assert_close(ablated.values, _reference(model, prompts, ablated.values), atol=1e-5, rtol=0)
    assert (ablated.values - edited.values).abs().max() > 1e-3  # the hook moved the numbers

    other = random_prompts(model, batch=3, n_pos=6, seed=1)
    engine = shared_engine(model, prompts)
    assert shared_engine(model, other) is not engine
    moved = sweep_patch(model, other, "head_out", progress=False)
    torch.testing.assert_close(moved.values, _reference(model, other, moved.values), atol=1e-5, rtol=0)


def test_the_same_prompts_by_value_reuse_the_engine(tiny):
    model, prompts = tiny
    engine = shared_engine(model, prompts)
    copy = prompts.to("cpu")
    copy.clean_tokens = prompts.clean_tokens.clone()
    assert shared_engine(model, copy) is engine
    copy.clean_tokens[0, 2] = (copy.clean_tokens[0, 2] + 1) % model.cfg.d_vocab  # one token differs
    assert shared_engine(model, copy) is not engine


def test_the_same_tokens_with_other_answers_are_other_prompts(tiny, tmp_path):
    """Tokens alone do not fix a sweep's numbers: another answer (or answer position) is another
    prompt set for the kept engine and for a checkpoint, which must not resume the old numbers."""
    from dataclasses import replace

    model, prompts = tiny
    other = replace(prompts, answer_ids=prompts.distractor_ids, distractor_ids=prompts.answer_ids)
    assert other.digest() != prompts.digest() and prompts.to("cpu").digest() == prompts.digest()
    engine = shared_engine(model, prompts)
    assert shared_engine(model, other) is not engine
    path = tmp_path / "sweep.pt"
    first = sweep_patch(model, prompts, "head_out", checkpoint=path, progress=False)
    with pytest.raises(interp.errors.InterpError, match="different sweep"):
        sweep_patch(model, other, "head_out", checkpoint=path, progress=False)
    swapped = sweep_patch(model, other, "head_out", progress=False)
    torch.testing.assert_close(swapped.values, -first.values, atol=1e-5, rtol=0)  # swapped answers: minus


def test_the_module_walk_finds_every_parameter_buffer_and_hook():
    """``interp.module_walk`` (one walk per call, no names) sees what ``parameters()``,
    ``buffers()`` and ``modules()`` see, and a foreign PyTorch hook is still named in the error."""
    from interp.interventions import ForeignHookError, model_edits
    from interp.module_walk import submodules, tensors

    model = random_model("tiny-llama", "cpu", torch.float32)
    assert sorted(map(id, submodules(model))) == sorted(map(id, model.modules()))
    expected = list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]
    assert sorted(map(id, tensors(model))) == sorted(map(id, expected))
    mlp = model.blocks[1].mlp
    handle = mlp.register_forward_hook(lambda m, i, o: o * 2)
    try:
        with pytest.raises(ForeignHookError, match=r"on module blocks\.1\..*mlp"):
            model_edits(model)
    finally:
        handle.remove()


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("by_pos", [False, True])
def test_cuda_graph_replays_equal_the_eager_sweep(dtype, by_pos):
    """The first run is eager, the second records the graph and checks its replay against the
    first, later runs replay it; every run's numbers are the eager run's."""
    model = random_model("tiny-llama", "cuda", dtype)
    prompts = random_prompts(model, batch=4, n_pos=8)
    runs = [sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False) for _ in range(4)]
    assert "cuda_graph" not in runs[0].meta
    evidence = runs[1].meta.get("cuda_graph")
    assert evidence is not None and evidence["captured"], evidence
    assert evidence["replay_vs_eager_max_abs_diff"] <= evidence["tolerance"]
    if dtype == torch.float32:  # the same kernels in the same order (16-bit products may pick other algorithms)
        assert evidence["replay_vs_eager_max_abs_diff"] == 0.0
    for r in runs[1:]:
        torch.testing.assert_close(r.values, runs[0].values, atol=evidence["tolerance"], rtol=0)
        torch.testing.assert_close(r.values, runs[1].values, atol=0, rtol=0)  # every replay alike
    assert runs[-1].meta["cuda_graph"]["replays"] == 3  # the check's replay (run 2's values), runs 3 and 4


@cuda
def test_cuda_graph_is_not_replayed_after_an_edit():
    """An in-place weight edit after a graph was recorded: a new engine, eager, right numbers."""
    model = random_model("tiny-llama", "cuda", torch.float32)
    prompts = random_prompts(model, batch=4, n_pos=8)
    for _ in range(3):
        sweep_patch(model, prompts, "head_out", progress=False)
    with torch.no_grad():
        _down_proj(model, 0).data.mul_(3.0)
    graph, n = _graph(model), _graph(model).launches
    used = graph.replays
    after = sweep_patch(model, prompts, "head_out", progress=False)
    assert graph.launches == n + 1 and graph.replays == used  # launched ahead, then discarded
    assert "cuda_graph" not in after.meta
    torch.testing.assert_close(after.values, _reference(model, prompts, after.values), atol=1e-4, rtol=0)


def _graph(model):
    """The one recorded graph of the engine kept on ``model``."""
    (rec,) = kept_engine(model)._recorded.values()
    return rec.graph


@cuda
def test_a_speculative_replay_is_discarded_when_the_prompts_or_the_hooks_changed():
    """``sweep_patch`` launches the kept graph before checking that it may (its host checks overlap
    the replay). Other prompts of the same length, or a foreign hook: the replay ran, its values are
    not used; the numbers are the eager ones of what was handed over, or the error of the hook."""
    from interp.interventions import ForeignHookError

    model = random_model("tiny-llama", "cuda", torch.float32)
    prompts = random_prompts(model, batch=4, n_pos=8)
    for _ in range(3):
        first = sweep_patch(model, prompts, "head_out", progress=False)
    graph, n, used = _graph(model), _graph(model).launches, _graph(model).replays
    other = random_prompts(model, batch=4, n_pos=8, seed=1)
    moved = sweep_patch(model, other, "head_out", progress=False)
    assert graph.launches == n + 1 and graph.replays == used  # launched, then discarded
    assert "cuda_graph" not in moved.meta
    torch.testing.assert_close(moved.values, _reference(model, other, moved.values), atol=1e-4, rtol=0)
    assert (moved.values - first.values).abs().max() > 1e-3  # the prompts' numbers differ: a real test

    for _ in range(2):
        sweep_patch(model, prompts, "head_out", progress=False)
    graph, n, used = _graph(model), _graph(model).launches, _graph(model).replays
    handle = model.blocks[1].mlp.register_forward_hook(lambda module, args, out: out * 2)
    try:
        with pytest.raises(ForeignHookError):
            sweep_patch(model, prompts, "head_out", progress=False)
        assert graph.launches == n + 1 and graph.replays == used
    finally:
        handle.remove()
    again = sweep_patch(model, prompts, "head_out", progress=False)  # the hook gone: replayed again
    assert graph.launches == n + 2 and again.meta["cuda_graph"]["replays"] == used + 1
    torch.testing.assert_close(again.values, first.values, atol=0, rtol=0)


def _slow_launches(monkeypatch):
    """Every graph launch first keeps its stream busy for ~50 ms: a missing wait between the
    streams then reads or writes at the wrong time."""
    from interp.graphs import CapturedSweep

    real = CapturedSweep.launch

    def slow(self):
        torch.cuda._sleep(100_000_000)
        real(self)

    monkeypatch.setattr(CapturedSweep, "launch", slow)


def _zero_for_a_while(W):
    """Queue on the current stream: W zeroed, ~50 ms of sleep, W restored. W is one of the engine's
    own stacked weights, which the per-call checks do not look at: a sweep that starts without
    waiting for the current stream reads zeros."""
    saved = W.clone()
    torch.cuda.synchronize()
    W.zero_()
    torch.cuda._sleep(100_000_000)
    W.copy_(saved)


@cuda
def test_the_replay_and_the_checks_wait_for_each_other(monkeypatch):
    """The replay's values are read only after it ended (the output buffer holds NaN before it),
    and the replay starts only after the work queued before the call (a weight the graph reads is
    zeroed, a 50 ms wait, then restored, all queued on the current stream before the call)."""
    model = random_model("tiny-llama", "cuda", torch.float32)
    prompts = random_prompts(model, batch=4, n_pos=8)
    for _ in range(3):
        first = sweep_patch(model, prompts, "head_out", progress=False, verify=0)
    _slow_launches(monkeypatch)
    _graph(model).out.fill_(float("nan"))
    slow = sweep_patch(model, prompts, "head_out", progress=False, verify=0)
    assert "cuda_graph" in slow.meta
    torch.testing.assert_close(slow.values, first.values, atol=0, rtol=0)

    monkeypatch.undo()
    _zero_for_a_while(kept_engine(model).w.W_O)
    late = sweep_patch(model, prompts, "head_out", progress=False, verify=0)
    assert "cuda_graph" in late.meta
    torch.testing.assert_close(late.values, first.values, atol=0, rtol=0)


@cuda
def test_an_error_after_the_launch_and_release_wait_for_the_replay(monkeypatch):
    """A launched replay has ended when an error after it reaches the caller, and when ``release``
    returns: nothing it reads is freed while it runs."""
    from interp.errors import InterpError
    from interp.sweep import SweepEngine

    model = random_model("tiny-llama", "cuda", torch.float32)
    prompts = random_prompts(model, batch=4, n_pos=8)
    for _ in range(3):
        sweep_patch(model, prompts, "head_out", progress=False, verify=0)
    engine = kept_engine(model)
    _slow_launches(monkeypatch)

    def full(self, component):
        raise InterpError("no memory left (test)")

    monkeypatch.setattr(SweepEngine, "check_memory", full)
    with pytest.raises(InterpError, match="test"):
        sweep_patch(model, prompts, "head_out", progress=False, verify=0)
    assert _graph(model).launches == 3 and engine._side.query()  # launched, and ended
    monkeypatch.undo()

    _slow_launches(monkeypatch)
    assert engine.launch("head_out", engine.variants("head_out", False)[2]) is not None
    assert not engine._side.query()  # still sleeping
    release(model)
    assert engine._side.query() and kept_engine(model) is None


def test_a_kept_engine_of_shorter_prompts_does_not_judge_longer_ones(tiny):
    """The kept engine's variants are only planned ahead for prompts of its own length: position 7
    is valid for 8-token prompts even if the engine kept on the model was built for 6 tokens."""
    model, prompts = tiny
    sweep_patch(model, prompts, "head_out", progress=False)
    longer = random_prompts(model, batch=3, n_pos=8)
    result = sweep_patch(model, longer, "head_out", by_pos=True, positions=[7], progress=False)
    assert result.values.shape[result.axes.index("pos")] == 1 and torch.isfinite(result.values).all()
    release(model)


@cuda
def test_a_sweep_with_a_recomputed_cache_drops_its_graph():
    """A head-pattern sweep recomputes the cached runs (with patterns): graphs recorded on the old
    cached runs are dropped, not replayed over freed memory."""
    model = random_model("tiny-llama", "cuda", torch.float32)
    prompts = random_prompts(model, batch=4, n_pos=8)
    for _ in range(2):
        first = sweep_patch(model, prompts, "head_out", progress=False)
    sweep_patch(model, prompts, "head_pattern", progress=False)
    again = sweep_patch(model, prompts, "head_out", progress=False)
    assert "cuda_graph" not in again.meta
    torch.testing.assert_close(again.values, first.values, atol=1e-5, rtol=0)


def test_copies_for_the_reference_side_leave_the_kept_engine_behind():
    """A 16-bit sweep's self-check copies the model to fp32 (``verify._twin``): the engine kept on
    the model (on a GPU, with CUDA graphs, which cannot be copied) must not come along."""
    from interp.verify import _twin

    model = random_model("tiny-llama", "cpu", torch.bfloat16)
    prompts = random_prompts(model, batch=3, n_pos=6)
    first = sweep_patch(model, prompts, "head_out", progress=False)
    assert shared_engine(model, prompts) is not None
    twin = _twin(model, torch.float32)
    assert all(twin.__dict__.get(name) is None for name in ("_interp_engine", "_interp_weights", "_interp_twin"))
    again = sweep_patch(model, prompts, "head_out", progress=False)  # checked against a fresh fp32 twin
    assert again.meta["verified"]["cells"] == 2
    torch.testing.assert_close(again.values, first.values, atol=0, rtol=0)


def test_the_fp32_copy_of_a_16_bit_model_is_kept_between_self_checks_while_nothing_changes(monkeypatch):
    """A bf16 sweep's self-check runs on an fp32 copy of the model; the copy is kept for the next
    check, and made anew after a weight edit or under an ablation (whose hooks it must carry), so
    the check always runs on the model as it is."""
    import interp.verify
    from interp.interventions import model_edits

    model = random_model("tiny-llama", "cpu", torch.bfloat16)
    prompts = random_prompts(model, batch=3, n_pos=6)
    first = sweep_patch(model, prompts, "head_out", progress=False)
    twin = model.__dict__["_interp_twin"][-1]
    again = sweep_patch(model, prompts, "head_out", progress=False)
    assert model.__dict__["_interp_twin"][-1] is twin
    assert again.meta["verified"] == first.meta["verified"]

    with torch.no_grad():
        _down_proj(model, 0).data.mul_(3.0)
    edited = sweep_patch(model, prompts, "head_out", progress=False)
    fresh = model.__dict__["_interp_twin"][-1]
    assert fresh is not twin
    torch.testing.assert_close(_down_proj(fresh, 0), _down_proj(model, 0).float(), atol=0, rtol=0)
    assert (edited.values - first.values).abs().max() > 1e-3

    with interp.ablate(model, [(1, 0)], "zero"):
        ablated = sweep_patch(model, prompts, "head_out", progress=False)  # checked on a copy with the hook
        assert model.__dict__["_interp_twin"][-1] is not fresh
        assert len(model_edits(model.__dict__["_interp_twin"][-1]).edits) == 1
    after = sweep_patch(model, prompts, "head_out", progress=False)
    assert not model_edits(model.__dict__["_interp_twin"][-1]).edits
    assert (ablated.values - after.values).abs().max() > 1e-3
    torch.testing.assert_close(after.values, edited.values, atol=0, rtol=0)

    kept = model.__dict__["_interp_twin"][-1]
    model.train()  # train/eval is part of what the copy must share
    try:
        assert interp.verify.fp32_reference(model, torch.bfloat16) is not kept
    finally:
        model.eval()

    assert all(model.__dict__.get(name) is not None for name in interp.verify.KEPT_ON_MODEL)
    release(model)  # the engine, the stacked weights and the fp32 copy
    assert all(model.__dict__.get(name) is None for name in interp.verify.KEPT_ON_MODEL)
    torch.testing.assert_close(sweep_patch(model, prompts, "head_out", progress=False).values, after.values,
                               atol=0, rtol=0)  # built again, the same numbers
    release(model)
    monkeypatch.setattr(interp.verify, "KEEP_TWIN_SHARE", 0.0)  # too large to keep: made per check
    sweep_patch(model, prompts, "head_out", progress=False)
    assert model.__dict__.get("_interp_twin") is None


def test_the_kept_fp32_copy_is_compared_with_the_model_exactly():
    """The copy is reused only if every weight equals the model's: one weight moved by one bf16 step
    (what a 16-bit checksum could miss) gets a new copy holding the new value."""
    from interp.verify import fp32_reference

    model = random_model("tiny-llama", "cpu", torch.bfloat16)
    twin = fp32_reference(model, torch.bfloat16)
    assert fp32_reference(model, torch.bfloat16) is twin
    w = _down_proj(model, 1)
    with torch.no_grad():
        w.data[3, 5] = torch.nextafter(w.data[3, 5].float(), torch.tensor(10.0)).to(w.dtype) + 0.0078125
    fresh = fp32_reference(model, torch.bfloat16)
    assert fresh is not twin
    assert _down_proj(fresh, 1)[3, 5] == w[3, 5].float()


def test_the_weight_fingerprint_sees_single_small_edits_in_16_bit():
    """Each of 40 single-weight edits of 0.01 in a bf16 model changes the fingerprint (its checksum
    is computed in fp32; in bf16 a quarter of such edits went unseen)."""
    from interp.weights import same_fingerprint, weights_fingerprint

    model = random_model("tiny-llama", "cpu", torch.bfloat16)
    params = [p for p in model.parameters() if p.ndim == 2]
    g = torch.Generator().manual_seed(0)
    for i in range(40):
        p = params[i % len(params)]
        before = weights_fingerprint(model)
        r, c = (int(torch.randint(n, (1,), generator=g)) for n in p.shape)
        with torch.no_grad():
            old = p.data[r, c].clone()
            p.data[r, c] = old + 0.01
            if p.data[r, c] == old:  # below this weight's bf16 step: no edit to see
                continue
        assert not same_fingerprint(before, weights_fingerprint(model)), (i, r, c)


def _no_graphs(monkeypatch):
    """Every sweep too large for a CUDA graph, as a 16 x 64 SmolLM2 sweep is on an H200."""
    import interp.sweep

    monkeypatch.setattr(interp.sweep, "GRAPH_MAX_SHARE", 0.0)


@cuda
@pytest.mark.parametrize("by_pos", [False, True])
def test_a_sweep_without_a_graph_starts_before_the_checks_and_gives_the_eager_numbers(monkeypatch, by_pos):
    """A repeated sweep too large for a graph runs eagerly on the side stream before the checks
    (``SweepEngine.launch``); its values are those of the first, checked, run, bit for bit. A sweep
    the engine has not run to the end before, a user's metric, or a sweep over ``LAUNCH_MAX_FLOPS``
    is not started ahead."""
    import interp.sweep

    _no_graphs(monkeypatch)
    model = random_model("tiny-llama", "cuda", torch.float32)
    prompts = random_prompts(model, batch=4, n_pos=8)
    first = sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False)
    engine = kept_engine(model)
    assert engine.eager_launches == 0 and engine.last_launched is None  # nothing was kept to start
    for n in (1, 2):
        again = sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False)
        assert kept_engine(model) is engine and engine.eager_launches == n and engine.last_launched == "eager"
        assert "cuda_graph" not in again.meta and again.meta["verified"]["cells"] == 2
        torch.testing.assert_close(again.values, first.values, atol=0, rtol=0)
    for n in (2, 3):  # another sweep on the same engine starts ahead only once it ran to the end
        sweep_patch(model, prompts, "head_out", by_pos=not by_pos, progress=False)
        assert engine.eager_launches == n and engine.last_launched == (None if n == 2 else "eager")

    def metric(logits, prompts):
        from interp.metrics import logit_diff
        return logit_diff(logits, prompts)

    sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False, metric=metric)
    sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False, metric=metric)
    assert kept_engine(model).eager_launches == 0 and kept_engine(model).last_launched is None
    sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False)
    monkeypatch.setattr(interp.sweep, "LAUNCH_MAX_FLOPS", 0.0)
    sweep_patch(model, prompts, "head_out", by_pos=by_pos, progress=False)
    assert kept_engine(model).eager_launches == 0 and kept_engine(model).last_launched is None


@cuda
def test_a_launched_eager_sweep_is_discarded_when_the_weights_prompts_or_hooks_changed(monkeypatch):
    """The eager sweep started ahead ran on the kept engine; after an in-place edit, other prompts
    of the same length or a foreign hook, its values are not used: the numbers are those of what
    was handed over (the reference loop's), or the hook's error."""
    from interp.interventions import ForeignHookError

    _no_graphs(monkeypatch)
    model = random_model("tiny-llama", "cuda", torch.float32)
    prompts = random_prompts(model, batch=4, n_pos=8)
    for _ in range(2):
        first = sweep_patch(model, prompts, "head_out", progress=False)
    engine, n = kept_engine(model), kept_engine(model).eager_launches
    with torch.no_grad():
        _down_proj(model, 0).data.mul_(3.0)
    edited = sweep_patch(model, prompts, "head_out", progress=False)
    assert engine.eager_launches == n + 1 and kept_engine(model) is not engine  # started, then dropped
    assert kept_engine(model).last_launched is None and engine._launched_eager is None
    torch.testing.assert_close(edited.values, _reference(model, prompts, edited.values), atol=1e-4, rtol=0)
    assert (edited.values - first.values).abs().max() > 1e-3  # the edit moves the numbers: a real test

    sweep_patch(model, prompts, "head_out", progress=False)
    engine, n = kept_engine(model), kept_engine(model).eager_launches
    other = random_prompts(model, batch=4, n_pos=8, seed=1)
    moved = sweep_patch(model, other, "head_out", progress=False)
    assert engine.eager_launches == n + 1 and kept_engine(model).last_launched is None
    torch.testing.assert_close(moved.values, _reference(model, other, moved.values), atol=1e-4, rtol=0)
    assert (moved.values - edited.values).abs().max() > 1e-3

    sweep_patch(model, prompts, "head_out", progress=False)
    engine, n = kept_engine(model), kept_engine(model).eager_launches
    handle = model.blocks[1].mlp.register_forward_hook(lambda module, args, out: out * 2)
    try:
        with pytest.raises(ForeignHookError):
            sweep_patch(model, prompts, "head_out", progress=False)
        assert engine.eager_launches == n + 1 and engine._launched_eager is None and engine._side.query()
    finally:
        handle.remove()


@cuda
def test_a_launched_eager_sweep_and_the_checks_wait_for_each_other(monkeypatch):
    """The values of an eager sweep started ahead are read only after it ended (its side stream
    first sleeps ~50 ms, over memory that held NaN), and it starts only after the work queued
    before the call (a weight it reads is zeroed, a wait, then restored on the current stream)."""
    from interp.sweep import SweepEngine

    _no_graphs(monkeypatch)
    model = random_model("tiny-llama", "cuda", torch.float32)
    prompts = random_prompts(model, batch=4, n_pos=8)
    first = sweep_patch(model, prompts, "head_out", progress=False, verify=0)
    engine = kept_engine(model)
    engine._side = torch.cuda.Stream(engine.device)
    with torch.cuda.stream(engine._side):  # the side stream's free memory: NaN
        [torch.full((1 << 16,), float("nan"), device="cuda") for _ in range(64)]
    real = SweepEngine._chunk_runs

    def slow(self, *args):
        torch.cuda._sleep(100_000_000)
        yield from real(self, *args)

    monkeypatch.setattr(SweepEngine, "_chunk_runs", slow)
    late = sweep_patch(model, prompts, "head_out", progress=False, verify=0)
    assert engine.last_launched == "eager"
    torch.testing.assert_close(late.values, first.values, atol=0, rtol=0)

    monkeypatch.setattr(SweepEngine, "_chunk_runs", real)
    _zero_for_a_while(engine.w.W_O)
    after = sweep_patch(model, prompts, "head_out", progress=False, verify=0)
    assert engine.last_launched == "eager"
    torch.testing.assert_close(after.values, first.values, atol=0, rtol=0)
