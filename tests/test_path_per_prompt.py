"""Per-prompt path-patching values and the circuit-reuse overlap's interval over prompts.

The batched path sweep keeps each prompt's metric (``meta["per_example"]``); each must equal
path patching run on that prompt alone through the reference (two forwards per sender), and their
mean the sweep's values. The overlap's bootstrap (``overlap_interval``) is built on them."""
import random

import pytest
import torch

from interp import path_patch, path_patch_heads
from interp.methods.circuit_reuse import overlap, overlap_interval
from interp.methods.ioi import path_patch_query_heads
from interp.random_models import random_model, random_prompts
from interp.stats import bias_corrected_interval


@pytest.fixture(scope="module")
def tiny():
    return random_model("tiny-qwen2", "cpu", torch.float32)


@pytest.mark.parametrize("receivers", ["resid_final", [(1, 2, "q"), (1, 0, "v")]])
def test_each_prompt_equals_the_reference_on_that_prompt_alone(tiny, receivers):
    prompts = random_prompts(tiny, batch=3, n_pos=7, ragged=True)
    res = path_patch_heads(tiny, prompts, receivers, receiver_positions=None if receivers == "resid_final" else -1,
                           engine="batched", progress=False, verify=0)
    each = torch.tensor(res.meta["per_example"]["values"])  # [layer, head, prompt]
    assert each.shape == (*res.values.shape, 3)
    torch.testing.assert_close(each.mean(-1), res.values, atol=1e-6, rtol=0)
    for b in range(3):
        alone = prompts.subset([b])
        for layer, head in [(0, 1), (0, 3), (1, 2)] if receivers == "resid_final" else [(0, 0), (0, 2)]:
            ref = path_patch(tiny, alone, [(layer, head)], receivers,
                             receiver_positions=None if receivers == "resid_final" else -1)
            assert float(each[layer, head, b]) == pytest.approx(ref, abs=1e-5)
    clean_alone = [path_patch(tiny, prompts.subset([b]), [], "resid_final") for b in range(3)]
    assert res.meta["per_example"]["clean"] == pytest.approx(clean_alone, abs=1e-5)


def test_query_head_receivers_keep_per_prompt_values(tiny):
    prompts = random_prompts(tiny, batch=4, n_pos=6)
    res = path_patch_query_heads(tiny, prompts, [(1, 1, "q"), (1, 3, "k")], receiver_positions=-1, verify=0)
    each = torch.tensor(res.meta["per_example"]["values"])
    torch.testing.assert_close(each.mean(-1), res.values, atol=1e-5, rtol=0)
    assert torch.equal(each[1], torch.tensor(res.meta["per_example"]["clean"]).expand(4, 4)), \
        "senders in the receivers' layer reach no receiver: each prompt's clean value"


def test_bias_corrected_interval():
    rng = random.Random(0)
    symmetric = [rng.gauss(0.0, 1.0) for _ in range(4000)]
    est, lo, hi = bias_corrected_interval(0.0, symmetric)
    assert lo == pytest.approx(-1.96, abs=0.1) and hi == pytest.approx(1.96, abs=0.1)
    shifted = [x - 1.5 for x in symmetric]  # resampling pulls the statistic down by 1.5 sd
    _, plain_lo, plain_hi = _percentile(shifted)
    est, lo, hi = bias_corrected_interval(0.0, shifted)
    assert plain_hi == pytest.approx(0.46, abs=0.1), "the plain interval: the drift read as uncertainty below"
    assert lo == pytest.approx(-0.46, abs=0.2) and hi > 1.5, "re-centred on the estimate"
    with pytest.raises(ValueError, match="misses the estimate"):
        bias_corrected_interval(0.0, [x - 2.5 for x in symmetric])  # |z0| = 2.5 > 1.96
    with pytest.raises(ValueError, match="does not contain"):
        _percentile([x - 2.5 for x in symmetric])


def _percentile(boots):
    from interp.stats import _percentile_interval

    return _percentile_interval(0.0, sorted(boots), 0.95)


def test_overlap_interval_is_built_on_the_per_prompt_values(tiny):
    ioi = {"logits": path_patch_heads(tiny, random_prompts(tiny, 5, 7, seed=1), progress=False, verify=0)}
    co = {"logits": path_patch_heads(tiny, random_prompts(tiny, 6, 7, seed=2), progress=False, verify=0)}
    share = 0.25  # 2 of the 8 heads
    oi = overlap_interval(ioi, co, share, n_boot=300)
    assert oi["estimate"] == overlap(ioi, co, share)["all stages"]["overlap"]
    assert (oi["n_ioi"], oi["n_co"]) == (5, 6)
    if oi["ci"] is not None:
        assert 0.0 <= oi["ci"][0] <= oi["estimate"] <= oi["ci"][1] <= 1.0
    else:
        assert "misses the estimate" in oi["why"]
    same = overlap_interval(ioi, ioi, share, n_boot=300)
    assert same["estimate"] == 1.0 and same["boot_median"] < 1.0, "independent resamples of one sample disagree"
    del co["logits"].meta["per_example"]
    assert overlap_interval(ioi, co, share)["ci"] is None


def test_a_part_without_per_prompt_values_drops_them(tiny, monkeypatch):
    """A part of path_patch_query_heads that fell back to the reference loop has no per-prompt
    values: the result must then carry none (not the clean run in their place)."""
    import interp.methods.ioi as ioi_module

    real = ioi_module.path_patch_heads

    def without(*a, **k):
        r = real(*a, **k)
        r.meta.pop("per_example")
        return r

    monkeypatch.setattr(ioi_module, "path_patch_heads", without)
    res = path_patch_query_heads(tiny, random_prompts(tiny, batch=3, n_pos=6), [(1, 1, "q")], receiver_positions=-1, verify=0)
    assert "per_example" not in res.meta
