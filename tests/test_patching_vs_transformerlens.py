"""Every activation-patching component, all positions and by position, equals TransformerLens 4.3's
own ``patching.get_act_patch_*`` on the same bridge and prompts (max abs diff <= 1e-4).

A subset of layers/heads/positions is swept (TL's ``index_df``) to keep CPU time small; the subset
spans the first, a middle and the last layer and includes per-example answer positions.
TransformerLens's loop runs once per (component, by_pos). The batched engine is held to it on every
cell; the reference loop (the engines' arbiter) on the cells the batched sweep's self-check re-runs
through it, which therefore equal TransformerLens too, and in full on one component per position
mode (``FULL_REFERENCE``): every cell of the reference loop on the whole grid would repeat
TransformerLens's own hooked forwards one for one.
"""
import itertools

import pandas as pd
import pytest
import torch
from transformer_lens import patching

from interp import patch
from conftest import mean_logit_diff

LAYERS = [0, 17, 29]

TL_BY_POS = {
    "resid_pre": patching.get_act_patch_resid_pre,
    "attn_out": patching.get_act_patch_attn_out,
    "mlp_out": patching.get_act_patch_mlp_out,
    "head_out": patching.get_act_patch_attn_head_out_by_pos,
    "head_q": patching.get_act_patch_attn_head_q_by_pos,
    "head_k": patching.get_act_patch_attn_head_k_by_pos,
    "head_v": patching.get_act_patch_attn_head_v_by_pos,
    "head_pattern": patching.get_act_patch_attn_head_pattern_by_pos,
}
TL_ALL_POS = {
    "head_out": patching.get_act_patch_attn_head_out_all_pos,
    "head_q": patching.get_act_patch_attn_head_q_all_pos,
    "head_k": patching.get_act_patch_attn_head_k_all_pos,
    "head_v": patching.get_act_patch_attn_head_v_all_pos,
    "head_pattern": patching.get_act_patch_attn_head_pattern_all_pos,
}
TL_ACT_NAME = {"resid_pre": "resid_pre", "attn_out": "attn_out", "mlp_out": "mlp_out"}
#: (component, by_pos) whose whole grid also runs through the reference loop.
FULL_REFERENCE = {("head_out", True), ("mlp_out", False)}


def _heads(component):
    return [0, 2] if component in ("head_k", "head_v") else [0, 4, 8]


@pytest.fixture(scope="module")
def clean_cache(model, prompts):
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts.clean_tokens)
    return cache


@pytest.mark.parametrize("component", list(TL_BY_POS))
@pytest.mark.parametrize("by_pos", [False, True], ids=["all_pos", "by_pos"])
def test_patch_matches_transformerlens(model, prompts, clean_cache, component, by_pos):
    """TransformerLens's loop runs once per (component, by_pos); the batched engine is held to it
    on every cell and the reference loop on the cells the batched sweep's self-check re-ran (all
    cells for ``FULL_REFERENCE``)."""
    heads = _heads(component) if component.startswith("head") else None
    positions = sorted({0, int(prompts.positions["S2"][0]), int(prompts.answer_pos.max())})
    engines = ("reference", "batched") if (component, by_pos) in FULL_REFERENCE else ("batched",)
    results = {engine: patch(model, prompts, component, by_pos=by_pos, layers=LAYERS, heads=heads,
                             positions=positions if by_pos else None, progress=False, engine=engine, verify=4)
               for engine in engines}
    ours = results["batched"]
    assert {e: r.meta["engine"] for e, r in results.items()} == {e: e for e in engines}
    assert all(r.meta["index"] == ours.meta["index"] for r in results.values())
    checked = ours.meta["verified"]
    assert checked["cells"] == min(4, ours.values.numel()) and checked["max_abs_diff"] <= 1e-4, checked
    index = ours.meta["index"]
    rows = list(itertools.product(*[index[a] for a in ours.axes]))
    metric = mean_logit_diff(prompts)
    if component in TL_ALL_POS or by_pos:
        fn = TL_BY_POS[component] if by_pos else TL_ALL_POS[component]
        tl_axes = {"pos": "pos", "head": "head", "layer": "layer"}
        if component == "head_pattern":
            tl_axes = {"layer": "layer", "head": "head_index", "pos": "dest_pos"}
        df = pd.DataFrame(rows, columns=[tl_axes[a] for a in ours.axes])
        theirs = fn(model, prompts.corrupted_tokens, clean_cache, metric, index_axis_names=None, index_df=df)
    else:
        # TL has no all-position sweep of whole-layer activations: its generic patcher with a
        # setter that copies the whole clean activation is the reference.
        df = pd.DataFrame(rows, columns=["layer"])
        theirs = patching.generic_activation_patch(
            model, prompts.corrupted_tokens, clean_cache, metric,
            patch_setter=lambda act, index, clean: clean.clone(),
            activation_name=TL_ACT_NAME[component], index_df=df,
        )
    for engine, r in results.items():
        torch.testing.assert_close(r.values.flatten(), theirs.float().cpu(), atol=1e-4, rtol=0,
                                   msg=lambda m, engine=engine: f"{engine} engine: {m}")
    # The sweep must actually move the metric somewhere, or the comparison proves little.
    assert (ours.values - ours.corrupted).abs().max() > 1e-3


def test_resid_pre_all_positions_recovers_clean_exactly(model, prompts):
    """Patching the whole residual stream at any layer's input restores the clean run."""
    r = patch(model, prompts, "resid_pre", progress=False)
    assert r.values.shape == (model.cfg.n_layers,)
    torch.testing.assert_close(r.values, torch.full_like(r.values, r.clean), atol=1e-4, rtol=0)
    assert abs(r.clean - r.corrupted) > 0.5


def test_noising_is_denoising_of_the_swapped_pair(model, prompts):
    noise = patch(model, prompts, "head_out", direction="noise", layers=[29], heads=[0, 1], progress=False)
    swapped = patch(model, prompts.swapped(), "head_out", layers=[29], heads=[0, 1], progress=False)
    # swapped() also exchanges answer and distractor, so the logit difference flips sign.
    torch.testing.assert_close(noise.values, -swapped.values, atol=1e-4, rtol=0)
