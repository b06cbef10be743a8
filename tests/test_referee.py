"""The float64 referee of the self-checks (``interp.verify``): an fp32 gap above the tolerance is
settled by the same forward in float64, so rounding passes and a real difference is still refused.

The tolerance is shrunk to make the fp32 rounding of a tiny random model exceed it (the situation
Qwen2.5 meets on a GPU, where its sums run in other orders than on this CPU)."""
import pytest
import torch

import interp.sweep
import interp.verify
import interp.weights
from interp import patch
from interp.errors import EngineUnsupported, VerificationError
from interp.random_models import random_model, random_prompts
from interp.sweep import SweepEngine, Variant
from interp.verify import SweepCheck, within_referee


@pytest.fixture()
def tight(monkeypatch):
    """A tolerance far below fp32 rounding (1e-12 of the scale): every fp32 comparison goes to the
    referee, whose cap (the model's own distance from float64 in tolerances) is lifted with it; the
    cap has its own test (``test_rule_compares_distances_from_float64``)."""
    monkeypatch.setattr(interp.verify, "tolerance", lambda dtype, scale=1.0: 1e-12 * (1.0 + float(scale)))
    monkeypatch.setattr(interp.verify, "REFEREE_CAP", float("inf"))


def test_rule_compares_distances_from_float64():
    exact = torch.zeros(3)
    ok, ev = within_referee(torch.full((3,), 3e-6), torch.full((3,), 1e-6), exact, tol=1e-7)
    assert not ok and ev == pytest.approx({"engine_vs_float64": 3e-6, "reference_vs_float64": 1e-6}), "3x > 2x + tol"
    assert within_referee(torch.full((3,), 2e-6), torch.full((3,), 1e-6), exact, tol=1e-7)[0]
    assert within_referee(torch.full((3,), 3e-6), torch.full((3,), 1e-6), exact, tol=1.5e-6)[0]
    assert not within_referee(torch.full((3,), float("nan")), torch.zeros(3), exact, tol=1.0)[0]
    # the model's own fp32 forward 20 tolerances from float64: too coarse to referee, refused
    assert not within_referee(torch.full((3,), 2e-6), torch.full((3,), 2e-6), exact, tol=1e-7)[0]


def test_rounding_above_the_tolerance_is_settled_and_recorded(tight, monkeypatch):
    model = random_model("tiny-qwen2", "cpu", torch.float32)
    prompts = random_prompts(model, batch=3, n_pos=7)
    built = []
    real = interp.verify.float64_referee
    monkeypatch.setattr(interp.verify, "float64_referee", lambda m: built.append(1) or real(m))
    res = patch(model, prompts, "head_out", engine="batched", progress=False, verify=2)
    assert len(built) == 2, "one float64 copy for both baseline runs, one for the sampled cells"
    ref = patch(model, prompts, "head_out", engine="reference", progress=False)
    torch.testing.assert_close(res.values, ref.values, atol=1e-5, rtol=0)
    v = res.meta["verified"]
    assert v["max_abs_diff"] > v["tolerance"], "the shrunk tolerance must send the cells to the referee"
    cells = v["float64_referee"]
    assert cells["engine_vs_float64"] <= 2 * cells["reference_vs_float64"] + v["tolerance"]
    assert 0 < cells["reference_vs_float64"] < 1e-5  # the fp32 model's own rounding, measured
    base = v["baselines"]["float64_referee"]["base"]
    assert set(base) == {"final_residual", "metric"} and base["final_residual"]["reference_vs_float64"] > 0


def test_a_wrong_cell_is_still_refused(tight):
    model = random_model("tiny-qwen2", "cpu", torch.float32)
    engine = SweepEngine(model, random_prompts(model, batch=2, n_pos=6))
    variants = [Variant(l, h, None) for l in range(2) for h in range(4)]
    check = SweepCheck(engine, "ablate_zero", variants, k=3)
    values = engine.run("ablate_zero", variants, progress=False)
    assert check.check(values)["float64_referee"]["engine_vs_float64"] < 1e-5
    with pytest.raises(VerificationError, match="float64 referee: engine 0.001 off"):
        check.check(values + 1e-3)


def test_an_unmodelled_feature_is_still_refused(tight, monkeypatch):
    """Gemma 2's soft-capping and post-norms with the static feature list off: far from float64 too."""
    model = random_model("tiny-gemma2", "cpu", torch.float32)
    monkeypatch.setattr(interp.sweep, "unsupported", lambda model, n_pos=None, every=None: None)
    monkeypatch.setattr(interp.weights, "unsupported", lambda model, n_pos=None, every=None: None)
    with pytest.raises(EngineUnsupported, match=r"differs from the model's own .*float64 referee: final_residual engine"):
        patch(model, random_prompts(model, batch=2, n_pos=7), "head_out", layers=[1], engine="batched", progress=False)


def test_generation_first_step_is_settled_or_refused(tight, monkeypatch):
    """The decoder's first-step check (``interp.generate``) takes the same referee: its own fp32
    rounding passes under the shrunk tolerance, logits moved by 1e-3 do not."""
    from interp.generate import _check_first_step, generations

    model = random_model("tiny-llama", "cpu", torch.float32)
    prompt = torch.randint(0, 200, (9,), generator=torch.Generator().manual_seed(0))
    variants = [("ua", []), ("ua", [(0, 1), (1, 2)]), ("sc", [(1, 0)])]
    called = []
    real = interp.verify.float64_referee
    monkeypatch.setattr(interp.verify, "float64_referee", lambda m: called.append(1) or real(m))
    out = generations(model, [(prompt, variants)], max_new=2, verify=3, stop_ids=set())
    assert len(out) == 1 and len(out[0].tokens) == 3
    assert called, "the decoder's fp32 rounding must exceed the shrunk tolerance and reach the referee"
    with torch.no_grad():
        logits = model(prompt[None])[0, -1][None]  # variant 0 is the unablated model
    with pytest.raises(VerificationError, match=r"float64 referee: engine 0.001 off"):
        _check_first_step(model, prompt, variants[:1], 1e-5, logits + 1e-3, k=1)


def test_the_float64_copy_owns_its_capture_hooks():
    """TransformerBridge blocks wire capture hooks whose closures point at the block they were wired
    on; the referee's copy must not call the original's (nor write its float64 residual into it)."""
    from interp.verify import float64_referee

    model = random_model("tiny-qwen2", "cpu", torch.float32)
    tokens = random_prompts(model, batch=2, n_pos=6).clean_tokens
    with torch.no_grad():
        ours = model(tokens)  # wires the original's hooks
        twin = float64_referee(model)
        exact = twin(tokens)
    assert exact.dtype == torch.float64 and next(model.parameters()).dtype == torch.float32
    torch.testing.assert_close(exact.float(), ours, atol=1e-5, rtol=0)
    leaked = [n for n, m in model.named_modules()
              if getattr(m, "_captured_pre_ln_residual", None) is not None and m._captured_pre_ln_residual.dtype == torch.float64]
    assert not leaked, leaked
    originals = {id(m) for m in model.modules()}
    for m in twin.modules():
        for fn in m._forward_pre_hooks.values():
            for cell in getattr(fn, "__closure__", None) or ():
                target = cell.cell_contents
                target = getattr(target, "__self__", target)
                assert id(target) not in originals, f"{type(m).__name__} calls into the original model"
