"""Every fast path agrees with the model as the user handed it over, or refuses loudly.

On the real model: ablation contexts and fixed patches change the batched sweeps exactly as they
change the reference loop; in-place weight edits are seen; foreign hooks make auto fall back and
batched refuse; every batched result carries its re-checked sample, and a wrong engine is caught;
one metric contract holds on both engines.
"""
import warnings

import pytest
import torch

import interp
from interp import ablate, patch, path_patch_heads
from interp.ablation import ablation, knockout, mean_head_outputs
from interp.errors import EngineUnsupported, VerificationError
from interp.hooks import hook_name
from interp.interventions import ForeignHookError, fixed_patch, intervene, model_edits
from interp.patching import EngineFallbackWarning

LAYERS = [26, 29]


def both(model, prompts, component, **kw):
    """The batched engine (which must be used) and the reference loop on the same sweep (a few
    layers and heads: the reference loop runs one forward per cell)."""
    kw.setdefault("layers", LAYERS)
    if component.startswith("head"):
        kw.setdefault("heads", [0, 1, 2] if component in ("head_k", "head_v") else [1, 3, 4, 7])
    ours = patch(model, prompts, component, engine="batched", progress=False, **kw)
    ref = patch(model, prompts, component, engine="reference", progress=False, **kw)
    return ours, ref


@pytest.mark.parametrize("mode,component,by_pos", [
    ("zero", "head_out", False),
    ("sc", "head_v", True),
    ("ua", "head_q", False),
    ("mean", "head_pattern", True),
    ("resample", "mlp_out", False),
    ("ua", "resid_pre", True),
])
def test_ablation_context_changes_the_sweep_as_in_the_reference(model, prompts, mode, component, by_pos):
    plain = patch(model, prompts, component, by_pos=by_pos, layers=LAYERS, progress=False,
                  positions=[2, 9] if by_pos else None,
                  heads=([0, 1, 2] if component in ("head_k", "head_v") else [1, 3, 4, 7])
                  if component.startswith("head") else None)
    heads = [(20, 1), (25, 3), (26, 4)]  # before and inside the swept layers (26.4 is swept)
    with ablate(model, heads, mode, reference=prompts, eps=1e-2 if mode in ("sc", "ua") else 1e-5):
        ours, ref = both(model, prompts, component, by_pos=by_pos, positions=[2, 9] if by_pos else None)
    assert ours.meta["engine"] == "batched" and ours.meta["verified"]["cells"] == 2
    torch.testing.assert_close(ours.values, ref.values, atol=1e-4, rtol=0)
    assert (ours.clean, ours.corrupted) == pytest.approx((ref.clean, ref.corrupted), abs=1e-4)
    assert (ours.values - plain.values).abs().max() > 1e-2, "the ablation must change the sweep"


def test_position_restricted_and_knockout_interventions(model, prompts):
    means = mean_head_outputs(model, prompts)
    keep = {(21, 0): None, (26, 2): prompts.positions["END"], (29, 5): prompts.positions["S2"]}
    at_end = ablation(model, [(24, 3)], "mean", reference=prompts, positions=prompts.positions["END"])
    with intervene(model, knockout(model, keep, means), at_end):
        ours, ref = both(model, prompts, "head_out", by_pos=True, positions=[3, int(prompts.answer_pos.min())])
    torch.testing.assert_close(ours.values, ref.values, atol=1e-4, rtol=0)


def test_fixed_patch_of_a_head_output(model, prompts):
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts.clean_tokens, names_filter=hook_name("z", 24))
    clean_z = cache[hook_name("z", 24)]
    with intervene(model, fixed_patch("z", 24, clean_z, heads=[2, 7])):
        ours, ref = both(model, prompts, "head_k", by_pos=False)
    torch.testing.assert_close(ours.values, ref.values, atol=1e-4, rtol=0)


def test_path_patching_honours_the_context(model, prompts):
    with ablate(model, [(22, 1), (26, 3)], "ua"):
        ours = path_patch_heads(model, prompts, layers=[20, 24], engine="batched", progress=False)
        ref = path_patch_heads(model, prompts, layers=[20, 24], engine="reference", progress=False)
        receivers = [(27, 4, "q"), (28, 1, "v")]
        ours_q = path_patch_heads(model, prompts, receivers, receiver_positions="END", layers=[22],
                                  engine="batched", progress=False)
        ref_q = path_patch_heads(model, prompts, receivers, receiver_positions="END", layers=[22],
                                 engine="reference", progress=False)
    torch.testing.assert_close(ours.values, ref.values, atol=1e-4, rtol=0)
    torch.testing.assert_close(ours_q.values, ref_q.values, atol=1e-4, rtol=0)
    assert ours.meta["verified"]["cells"] == 2


def test_in_place_weight_edit_is_seen(model, prompts):
    """param.data edits bump no version counter; the engine's cached weights must still notice."""
    before = patch(model, prompts, "head_out", layers=[25, 29], heads=[1, 3, 4, 7], progress=False)
    param = next(p for n, p in model.named_parameters() if "layers.27." in n and "o_proj" in n)
    saved = param.data.clone()
    try:
        param.data.mul_(0)
        ours, ref = both(model, prompts, "head_out", layers=[25, 29])
        torch.testing.assert_close(ours.values, ref.values, atol=1e-4, rtol=0)
        assert (ours.values - before.values).abs().max() > 1e-2
    finally:
        param.data.copy_(saved)
    after = patch(model, prompts, "head_out", layers=[25, 29], heads=[1, 3, 4, 7], progress=False)
    torch.testing.assert_close(after.values, before.values, atol=1e-6, rtol=0)


def test_foreign_hooks_fall_back_once_or_refuse(model, prompts):
    def my_hook(act, hook=None):
        return act * 1.0

    with model.hooks(fwd_hooks=[(hook_name("resid_pre", 28), my_hook)]):
        with pytest.raises(ForeignHookError, match="my_hook"):
            patch(model, prompts, "head_out", layers=[29], engine="batched", progress=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            first = patch(model, prompts, "head_out", layers=[29], progress=False)
            patch(model, prompts, "head_out", layers=[29], progress=False)
        said = [w for w in caught if issubclass(w.category, EngineFallbackWarning)]
        assert len(said) == 1 and "my_hook" in str(said[0].message)  # once, naming the hook
        assert first.meta["engine"] == "reference"
    handle = model.original_model.model.layers[3].register_forward_hook(lambda m, i, o: o)
    try:
        with pytest.raises(ForeignHookError, match="PyTorch forward hook"):
            model_edits(model)
    finally:
        handle.remove()
    assert not model_edits(model)


def test_resid_edits_take_the_reference_loop(model, prompts):
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts.clean_tokens, names_filter=hook_name("resid_pre", 25))
    with intervene(model, fixed_patch("resid_pre", 25, cache[hook_name("resid_pre", 25)], positions=3)):
        with pytest.raises(EngineUnsupported, match="resid_pre"):
            patch(model, prompts, "head_out", layers=[29], engine="batched", progress=False)


def test_verification_catches_a_wrong_engine(model, prompts, monkeypatch):
    from interp.sweep import SweepEngine

    good = patch(model, prompts, "head_out", layers=[28, 29], progress=False)
    v = good.meta["verified"]
    assert v["cells"] == 2 and v["max_abs_diff"] <= v["tolerance"] < 1e-3
    real = SweepEngine.run

    def off_by_a_little(self, *args, **kwargs):
        return real(self, *args, **kwargs) + 1e-3

    monkeypatch.setattr(SweepEngine, "run", off_by_a_little)
    with pytest.raises(VerificationError, match="disagrees with the reference loop"):
        patch(model, prompts, "head_out", layers=[28, 29], progress=False)
    assert patch(model, prompts, "head_out", layers=[28, 29], progress=False, verify=0).meta["verified"]["cells"] == 0


def test_one_metric_contract_on_both_engines(model, prompts):
    seen = set()

    def top_minus_answer(logits, ps):
        seen.add(tuple(logits.shape))
        assert logits.ndim == 2, "metrics get [batch, vocab] at the answer position"
        rows = torch.arange(logits.shape[0])
        return logits.max(-1).values - logits[rows, ps.answer_ids.to(logits.device)]

    ours, ref = both(model, prompts, "head_out", layers=[29], metric=top_minus_answer)
    torch.testing.assert_close(ours.values, ref.values, atol=1e-4, rtol=0)
    assert {s[1] for s in seen} == {model.cfg.d_vocab}


def test_generation_honours_whole_head_ablations_and_refuses_the_rest(model, prompts):
    from interp.generate import generate_tokens

    prompt = prompts.clean_tokens[0, : int(prompts.answer_pos[0]) + 1]
    inside = generate_tokens(model, prompt, [("ua", [])], max_new=4)
    explicit = generate_tokens(model, prompt, [("zero", [(29, 1), (28, 5)])], max_new=4)
    with ablate(model, [(29, 1), (28, 5)], "zero"):
        assert generate_tokens(model, prompt, [("ua", [])], max_new=4) == explicit
    assert generate_tokens(model, prompt, [("ua", [])], max_new=4) == inside
    with ablate(model, [(29, 1)], "mean", reference=prompts):
        with pytest.raises(EngineUnsupported, match="generated tokens"):
            generate_tokens(model, prompt, [("ua", [])], max_new=2)


def test_dla_and_ablate_inside_a_context(model, prompts):
    """Primitives on the bridge's forward honour the context too (the reference for the rest)."""
    base = interp.direct_logit_attribution(model, prompts)
    with ablate(model, [(29, 1)], "zero"):
        dla = interp.direct_logit_attribution(model, prompts)
    assert dla.heads.values[29, 1] == 0 and base.heads.values[29, 1] != 0


def test_reference_loop_checkpoints_and_resumes(model, prompts, tmp_path, monkeypatch):
    """checkpoint= works on the reference loop too (it used to be ignored there), and a checkpoint
    of the same sweep on edited weights is refused rather than reused."""
    import interp.reference

    ckpt = tmp_path / "ref.ckpt"
    kw = dict(layers=[29], heads=[0, 1, 2, 3], engine="reference", progress=False, checkpoint=ckpt)
    real, calls = interp.reference.readout, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:  # the third cell's forward is interrupted
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(interp.reference, "readout", interrupted)
    with pytest.raises(KeyboardInterrupt):
        patch(model, prompts, "head_out", **kw)
    calls.clear()
    monkeypatch.setattr(interp.reference, "readout", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    resumed = patch(model, prompts, "head_out", **kw)
    assert len(calls) == 2  # only the two cells left
    fresh = patch(model, prompts, "head_out", layers=[29], heads=[0, 1, 2, 3], engine="reference", progress=False)
    torch.testing.assert_close(resumed.values, fresh.values, atol=0, rtol=0)
    param = next(p for n, p in model.named_parameters() if "layers.29." in n and "o_proj" in n)
    saved = param.data.clone()
    try:
        param.data[0, 0] += 1.0
        with pytest.raises(interp.InterpError, match="different sweep"):
            patch(model, prompts, "head_out", **kw)
    finally:
        param.data.copy_(saved)
