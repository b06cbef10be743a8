"""Exact path patching checked against computations that must coincide with it."""
import pytest
import torch

from interp import patch, path_patch, path_patch_heads
from interp.patching import path_patch_caches
from interp.hooks import hook_name
from interp.metrics import logit_diff


def test_all_heads_to_final_residual_equals_direct_effect(model, prompts):
    """All heads as senders, MLPs frozen: the final residual is the clean one plus every head's
    (corrupted - clean) output, so the metric can be computed from the two caches directly."""
    senders = [(l, h) for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    ours = path_patch(model, prompts, senders, freeze_mlps=True)
    with torch.no_grad():
        _, clean = model.run_with_cache(prompts.clean_tokens)
        _, corrupt = model.run_with_cache(prompts.corrupted_tokens)
        resid = clean[hook_name("resid_post", model.cfg.n_layers - 1)].clone()
        for l in range(model.cfg.n_layers):
            resid += (corrupt[hook_name("result", l)] - clean[hook_name("result", l)]).sum(2)
        logits = model.unembed(model.ln_final(resid))
    expected = logit_diff(logits, prompts).mean().item()
    assert abs(ours - expected) < 1e-3
    clean_ld = logit_diff(model(prompts.clean_tokens), prompts).mean().item()
    assert abs(ours - clean_ld) > 0.1  # the patch moved the metric


def test_last_layer_head_path_equals_activation_patch(model, prompts):
    """A last-layer head reaches the logits only directly: path patching == noising its output."""
    L = model.cfg.n_layers - 1
    act = patch(model, prompts, "head_out", direction="noise", layers=[L], heads=[3, 5], progress=False)
    for i, h in enumerate([3, 5]):
        assert abs(path_patch(model, prompts, [(L, h)]) - act.values[0, i].item()) < 1e-4


def test_sender_after_receiver_has_no_effect(model, prompts):
    """A head cannot reach the query of a head in an earlier layer: the run equals the clean one."""
    clean_ld = logit_diff(model(prompts.clean_tokens), prompts).mean().item()
    value = path_patch(model, prompts, [(20, 1)], receivers=[(10, 2, "q"), (10, 0, "k")],
                       receiver_positions="END")
    assert abs(value - clean_ld) < 1e-4


def test_receiver_positions_restrict_the_patch(model, prompts):
    """Patching a receiver's query only at the answer position changes the metric less than or
    differently from patching it everywhere, and both differ from the clean run."""
    clean_ld = logit_diff(model(prompts.clean_tokens), prompts).mean().item()
    senders = [(l, h) for l in range(0, 12) for h in range(model.cfg.n_heads)]
    everywhere = path_patch(model, prompts, senders, receivers=[(20, h, "q") for h in range(9)])
    at_end = path_patch(model, prompts, senders, receivers=[(20, h, "q") for h in range(9)],
                        receiver_positions="END")
    assert abs(everywhere - clean_ld) > 1e-3 and abs(at_end - clean_ld) > 1e-3
    assert abs(everywhere - at_end) > 1e-4


@pytest.mark.parametrize("receivers, sender_pos, receiver_pos, freeze", [
    ("resid_final", None, None, False),
    ("resid_final", "END", None, True),
    ([(20, 3, "q"), (22, 1, "q")], None, "END", False),
    ([(15, 1, "k"), (15, 2, "v")], None, "S2", False),
    ([(18, 0, "q"), (24, 2, "k")], "S2", None, True),
])
def test_batched_engine_equals_reference(model, prompts, receivers, sender_pos, receiver_pos, freeze):
    """Every sender of the sweep through the batched engine == the two-forward reference (its two
    cached runs, clean and corrupted, computed once for the twelve senders)."""
    layers = [0, 7, 14, 19]
    fast = path_patch_heads(model, prompts, receivers, sender_pos, receiver_pos, freeze, layers=layers,
                            engine="batched", progress=False)
    assert fast.meta["engine"] == "batched"
    caches = path_patch_caches(model, prompts)
    moved = 0.0
    for i, l in enumerate(layers):
        for h in (0, 4, 8):
            ref = path_patch(model, prompts, [(l, h)], receivers, sender_pos, receiver_pos, freeze, _caches=caches)
            assert abs(ref - fast.values[i, h].item()) < 1e-4, (l, h)
            moved = max(moved, abs(ref - fast.clean))
    assert moved > 1e-3  # some sender has an effect, so the comparison is not trivially clean == clean
