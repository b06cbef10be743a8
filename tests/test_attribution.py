"""Direct logit attribution, logit lens and attribution patching on the real model."""
import torch

from interp import attribution_patching, direct_logit_attribution, logit_lens, patch
from interp.metrics import logit_diff


def test_dla_components_sum_to_the_logit_difference(model, prompts):
    dla = direct_logit_attribution(model, prompts)
    parts = dla.embed + dla.attn.values.sum().item() + dla.mlp.values.sum().item()
    assert abs(parts - dla.total) < 1e-3  # the models here have no unembedding bias
    assert abs(dla.rest) < 1e-3
    # each layer's heads add up to that layer's attention output
    torch.testing.assert_close(dla.heads.values.sum(1), dla.attn.values, atol=1e-4, rtol=0)


def test_per_head_dla_equals_transformerlens(model, prompts):
    """TL's stack_head_results + apply_ln_to_stack, read at each example's answer position."""
    dla = direct_logit_attribution(model, prompts)
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts.clean_tokens)
    stack = cache.stack_head_results(layer=-1)  # [layer*head, batch, pos, d_model]
    stack = cache.apply_ln_to_stack(stack, layer=-1)
    rows = torch.arange(len(prompts))
    at_answer = stack[:, rows, prompts.answer_pos]  # [layer*head, batch, d_model]
    direction = (model.W_U[:, prompts.answer_ids] - model.W_U[:, prompts.distractor_ids]).T
    tl = (at_answer * direction).sum(-1).mean(-1).reshape(model.cfg.n_layers, model.cfg.n_heads)
    torch.testing.assert_close(dla.heads.values, tl.float(), atol=1e-4, rtol=0)
    assert dla.heads.values.abs().max() > 0.1


def test_logit_lens_ends_at_the_model_logit_difference(model, prompts):
    lens = logit_lens(model, prompts)
    assert lens.values.shape == (model.cfg.n_layers + 1,)
    with torch.no_grad():
        final = logit_diff(model(prompts.clean_tokens), prompts).mean().item()
    assert abs(lens.values[-1].item() - final) < 1e-4
    assert abs(lens.values[0].item() - final) > 0.5  # the embedding alone does not solve IOI


def test_attribution_patching_correlates_with_exact_patching(model, prompts):
    layers = list(range(0, model.cfg.n_layers, 3))
    exact = patch(model, prompts, "head_out", layers=layers, progress=False)
    atp = attribution_patching(model, prompts, "head_out")
    assert abs(atp.corrupted - exact.corrupted) < 1e-4
    a = (atp.values[layers] - atp.corrupted).flatten()
    e = (exact.values - exact.corrupted).flatten()
    corr = torch.corrcoef(torch.stack([a, e]))[0, 1].item()
    print(f"AtP vs exact head patching: Pearson r = {corr:.3f} over {e.numel()} heads")
    assert corr > 0.5


def test_attribution_patching_residual_positions(model, prompts):
    atp = attribution_patching(model, prompts, "resid_pre")
    assert atp.axes == ("layer", "pos")
    assert atp.values.shape == (model.cfg.n_layers, prompts.n_pos)
    # At layer 0 the residual is the embedding: positions where clean == corrupted tokens have
    # zero estimated effect exactly.
    same = (prompts.clean_tokens == prompts.corrupted_tokens).all(0)
    assert torch.all(atp.values[0, same] == atp.corrupted)
    assert (atp.values[0, ~same] != atp.corrupted).any()


def test_dla_in_chunks_equals_one_chunk(model, prompts):
    """A memory budget that fits one example at a time gives the same DLA as one batch."""
    from interp.attribution import _forward_bytes

    whole = direct_logit_attribution(model, prompts)
    one_each = _forward_bytes(model, int(prompts.answer_pos.max()) + 1)
    chunked = direct_logit_attribution(model, prompts, memory_budget=one_each)
    torch.testing.assert_close(chunked.heads.values, whole.heads.values, atol=1e-5, rtol=0)
    torch.testing.assert_close(chunked.mlp.values, whole.mlp.values, atol=1e-5, rtol=0)
    assert abs(chunked.total - whole.total) < 1e-5 and abs(chunked.embed - whole.embed) < 1e-5


def test_dla_refuses_an_example_too_large_before_any_forward(model, prompts, monkeypatch):
    import pytest

    from interp.errors import InterpError

    def no_forward(*args, **kwargs):
        raise AssertionError("a forward ran")

    monkeypatch.setattr(model, "run_with_hooks", no_forward)
    monkeypatch.setattr(model, "run_with_cache", no_forward)
    with pytest.raises(InterpError, match=r"example \d \(\d+ tokens\) needs about .* more than the 1,000 B"):
        direct_logit_attribution(model, prompts, memory_budget=1000)


def test_dla_caches_nothing_and_runs_each_chunk_up_to_its_last_answer(model, prompts, monkeypatch):
    """No run_with_cache (it held every activation at every position: 2.8 GiB for one 815-token
    prompt, against 0.1-0.65 GiB now); one hooked forward per chunk, cut after its last answer."""
    from interp.attribution import _forward_bytes

    def no_cache(*args, **kwargs):
        raise AssertionError("run_with_cache holds every activation")

    widths, run_with_hooks = [], model.run_with_hooks

    def recording(tokens, *args, **kwargs):
        widths.append(tuple(tokens.shape))
        return run_with_hooks(tokens, *args, **kwargs)

    monkeypatch.setattr(model, "run_with_cache", no_cache)
    monkeypatch.setattr(model, "run_with_hooks", recording)
    lengths = (prompts.answer_pos + 1).tolist()
    direct_logit_attribution(model, prompts, memory_budget=_forward_bytes(model, max(lengths)))
    assert widths == [(1, n) for n in lengths]


def test_attribution_patching_is_on_the_scale_of_exact_patching(model):
    """AtP estimates the same quantity as patch(): on the last layers' heads, where the first-order
    approximation holds (only the final norm lies between a head and the logits), the values
    agree, not just their ranks. Six prompts: averaging the batch-mean's gradient over the batch
    again (a bug once) makes the slope 1/6."""
    from interp.tasks import ioi_examples

    ps = ioi_examples(model, n=6, seed=2)
    layers = [26, 27, 28, 29]
    exact = patch(model, ps, "head_out", layers=layers, progress=False)
    atp = attribution_patching(model, ps, "head_out")
    e = (exact.values - exact.corrupted).flatten()
    a = (atp.values[layers] - atp.corrupted).flatten()
    slope = float((a * e).sum() / (e * e).sum())
    print(f"AtP vs exact on layers {layers}: slope {slope:.3f}, max error {float((a - e).abs().max()):.4f} "
          f"of effects up to {float(e.abs().max()):.3f}")
    assert 0.9 < slope < 1.1
    assert (a - e).abs().max() < 0.05 * e.abs().max()
    assert e.abs().max() > 0.5  # large effects: the comparison is not between zeros
