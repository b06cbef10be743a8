"""The batched engine equals TransformerLens 4.3's own patching functions on every supported family,
and refuses (falls back from) the families it does not model.

Tiny random-weight bridges (``interp.random_models``): GPT-2 (LayerNorm, absolute positions,
biases), Qwen2 (q/k/v biases, GQA) and Llama (RMSNorm, RoPE, GQA); ragged prompts; every
component, all positions and by position; fp32 within 1e-5. Unsupported features (parallel
attention + MLP, partial or interleaved rotary, soft-capping with post-norms, query/key norms,
sliding windows over longer prompts) must not reach the engine: ``engine="auto"`` takes the
reference loop and says why, ``engine="batched"`` refuses.
"""
import itertools
import warnings

import pandas as pd
import pytest
import torch
from transformer_lens import patching as tl

from interp import patch
from interp.errors import EngineUnsupported
from interp.metrics import logit_diff
from interp.patching import EngineFallbackWarning
from interp.random_models import random_model, random_prompts
from interp.sweep import engine_unsupported

FAMILIES = ["tiny-gpt2", "tiny-qwen2", "tiny-llama"]

TL_BY_POS = {
    "resid_pre": tl.get_act_patch_resid_pre, "attn_out": tl.get_act_patch_attn_out,
    "mlp_out": tl.get_act_patch_mlp_out, "head_out": tl.get_act_patch_attn_head_out_by_pos,
    "head_q": tl.get_act_patch_attn_head_q_by_pos, "head_k": tl.get_act_patch_attn_head_k_by_pos,
    "head_v": tl.get_act_patch_attn_head_v_by_pos, "head_pattern": tl.get_act_patch_attn_head_pattern_by_pos,
}
TL_ALL_POS = {
    "head_out": tl.get_act_patch_attn_head_out_all_pos, "head_q": tl.get_act_patch_attn_head_q_all_pos,
    "head_k": tl.get_act_patch_attn_head_k_all_pos, "head_v": tl.get_act_patch_attn_head_v_all_pos,
    "head_pattern": tl.get_act_patch_attn_head_pattern_all_pos,
}


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    model = random_model(request.param, "cpu", torch.float32)
    prompts = random_prompts(model, batch=3, n_pos=9, ragged=True)
    assert len(set(prompts.answer_pos.tolist())) == 3
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts.clean_tokens)
    return request.param, model, prompts, cache


def transformerlens(model, prompts, cache, component, by_pos, axes, index):
    """TransformerLens's own sweep over the same cells (its generic patcher for whole-layer
    activations at all positions, which it has no named function for)."""
    rows = list(itertools.product(*[index[a] for a in axes]))
    metric = lambda logits: logit_diff(logits, prompts).mean()  # noqa: E731
    if component in TL_ALL_POS or by_pos:
        names = {"layer": "layer", "head": "head", "pos": "pos"}
        if component == "head_pattern":
            names = {"layer": "layer", "head": "head_index", "pos": "dest_pos"}
        fn = TL_BY_POS[component] if by_pos else TL_ALL_POS[component]
        df = pd.DataFrame(rows, columns=[names[a] for a in axes])
        return fn(model, prompts.corrupted_tokens, cache, metric, index_axis_names=None, index_df=df)
    return tl.generic_activation_patch(model, prompts.corrupted_tokens, cache, metric,
                                       patch_setter=lambda act, index, clean: clean.clone(),
                                       activation_name=component, index_df=pd.DataFrame(rows, columns=["layer"]))


@pytest.mark.parametrize("component", list(TL_BY_POS))
@pytest.mark.parametrize("by_pos", [False, True], ids=["all_pos", "by_pos"])
def test_engine_equals_transformerlens(family, component, by_pos):
    name, model, prompts, cache = family
    ours = patch(model, prompts, component, by_pos=by_pos, engine="batched", progress=False)
    assert ours.meta["engine"] == "batched" and ours.meta["verified"]["cells"] == 2
    theirs = transformerlens(model, prompts, cache, component, by_pos, ours.axes, ours.meta["index"])
    torch.testing.assert_close(ours.values.flatten(), theirs.float(), atol=1e-5, rtol=0)
    assert (ours.values - ours.corrupted).abs().max() > 1e-2, "the sweep must move the metric to prove anything"


UNSUPPORTED = {
    "tiny-gptj": "parallel attention and MLP",
    "tiny-neox": "partial rotary",
    "tiny-phi": "parallel attention and MLP",
    "tiny-gemma2": "soft-capping",
    "tiny-qwen3": "query/key norms",
    "tiny-llama-mlp-bias": "gated MLP with biases",
}


@pytest.mark.parametrize("name", sorted(UNSUPPORTED))
def test_unsupported_families_fall_back_with_a_reason(name):
    model = random_model(name, "cpu", torch.float32)
    prompts = random_prompts(model, batch=2, n_pos=7)
    assert UNSUPPORTED[name] in (engine_unsupported(model, prompts) or "")
    with pytest.raises(EngineUnsupported, match=UNSUPPORTED[name].split()[0]):
        patch(model, prompts, "head_out", layers=[1], engine="batched", progress=False)
    with pytest.warns(EngineFallbackWarning, match="reference loop"):
        auto = patch(model, prompts, "head_out", layers=[1], progress=False)
    reference = patch(model, prompts, "head_out", layers=[1], engine="reference", progress=False)
    assert auto.meta["engine"] == "reference"
    torch.testing.assert_close(auto.values, reference.values, atol=0, rtol=0)


def test_sliding_window_only_refused_beyond_its_window():
    model = random_model("tiny-mistral", "cpu", torch.float32)  # window of 6 tokens
    short, long = random_prompts(model, 2, 6), random_prompts(model, 2, 9)
    assert engine_unsupported(model, short) is None
    assert "sliding-window" in engine_unsupported(model, long)
    ours = patch(model, short, "head_out", engine="batched", progress=False)
    ref = patch(model, short, "head_out", engine="reference", progress=False)
    torch.testing.assert_close(ours.values, ref.values, atol=1e-5, rtol=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EngineFallbackWarning)
        assert patch(model, long, "head_out", layers=[1], progress=False).meta["engine"] == "reference"


def test_a_feature_the_checks_miss_is_caught_by_the_baseline_check(monkeypatch):
    """Were the static feature list to miss something (here: Gemma 2's soft-capping and post-norms,
    with the list switched off), the engine's own forward disagrees with the bridge's before any
    sweep work, and auto falls back."""
    import interp.sweep

    model = random_model("tiny-gemma2", "cpu", torch.float32)
    prompts = random_prompts(model, batch=2, n_pos=7)
    monkeypatch.setattr(interp.sweep, "unsupported", lambda model, n_pos=None, every=None: None)
    monkeypatch.setattr(interp.weights, "unsupported", lambda model, n_pos=None, every=None: None)
    with pytest.raises(EngineUnsupported, match="differs from the model's own"):
        patch(model, prompts, "head_out", layers=[1], engine="batched", progress=False)


def test_a_model_split_over_devices_is_refused_by_the_batched_engine(monkeypatch):
    """load_model(n_devices=2) puts later layers on another GPU: the engine's stacked weights need
    one device, so batched refuses by name and auto takes the reference loop (measured on 2 H200s:
    it then equals the one-GPU batched sweep within 7.5e-6; benchmarks/split_gpus.py)."""
    model = random_model("tiny-llama", "cpu", torch.float32)
    prompts = random_prompts(model, batch=2, n_pos=5)
    assert engine_unsupported(model, prompts) is None
    name, last = list(model.named_parameters())[-1]
    owner = model.get_submodule(name.rpartition(".")[0])
    monkeypatch.setitem(owner._parameters, name.rpartition(".")[2],
                        torch.nn.Parameter(torch.zeros_like(last, device="meta")))
    assert "split over 2 devices" in engine_unsupported(model, prompts)
    with pytest.raises(EngineUnsupported, match="split over 2 devices"):
        patch(model, prompts, "head_out", layers=[1], engine="batched", progress=False)
