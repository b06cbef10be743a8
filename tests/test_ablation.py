"""Head ablations: the limits the papers rely on, and GQA correctness."""
import pytest
import torch

from interp import ablate
from interp.ablation import ablation_hooks
from interp.errors import ComponentError
from interp.hooks import hook_name

LAYER, HEAD = 5, 4  # with 9 query heads over 3 KV heads, head 4 shares its KV head with 3 and 5


def run_cache(model, tokens, hooks=()):
    with torch.no_grad(), model.hooks(fwd_hooks=list(hooks)):
        _, cache = model.run_with_cache(tokens)
    return cache


def uniform_causal(n):
    rows = torch.arange(1, n + 1, dtype=torch.float32)
    return torch.tril(torch.ones(n, n)) / rows[:, None]


def test_undifferentiated_attention_tends_to_uniform(model, prompts):
    tokens = prompts.clean_tokens[:1, : int(prompts.answer_pos[0]) + 1]
    n = tokens.shape[1]
    errors = []
    for eps in (5e-1, 1e-3, 1e-10):
        cache = run_cache(model, tokens, ablation_hooks(model, [(LAYER, HEAD)], "ua", eps=eps))
        pattern = cache[hook_name("pattern", LAYER)][0, HEAD]
        errors.append((pattern - uniform_causal(n)).abs().max().item())
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-6
    cache = run_cache(model, tokens, ablation_hooks(model, [(LAYER, HEAD)], "ua", eps=0.0))
    torch.testing.assert_close(cache[hook_name("pattern", LAYER)][0, HEAD], uniform_causal(n), atol=1e-6, rtol=0)


def test_undifferentiated_attention_changes_only_that_query_head(model, prompts):
    base = run_cache(model, prompts.clean_tokens)
    ablated = run_cache(model, prompts.clean_tokens, ablation_hooks(model, [(LAYER, HEAD)], "ua", eps=0.0))
    name = hook_name("pattern", LAYER)
    others = [h for h in range(model.cfg.n_heads) if h != HEAD]
    torch.testing.assert_close(ablated[name][:, others], base[name][:, others], atol=0, rtol=0)
    assert (ablated[name][:, HEAD] - base[name][:, HEAD]).abs().max() > 0.05
    # keys and values of the shared KV head are untouched
    for kind in ("k", "v"):
        torch.testing.assert_close(ablated[hook_name(kind, LAYER)], base[hook_name(kind, LAYER)], atol=0, rtol=0)


@pytest.mark.parametrize("mode,eps", [("zero", 0.0), ("sc", 0.25)])
def test_zero_and_scaling_change_attn_out_by_that_heads_result(model, prompts, mode, eps):
    base = run_cache(model, prompts.clean_tokens)
    ablated = run_cache(model, prompts.clean_tokens, ablation_hooks(model, [(LAYER, HEAD)], mode, eps=eps))
    expected = base[hook_name("attn_out", LAYER)] - (1 - eps) * base[hook_name("result", LAYER)][:, :, HEAD]
    torch.testing.assert_close(ablated[hook_name("attn_out", LAYER)], expected, atol=1e-4, rtol=0)


def test_mean_and_resample_write_reference_values(model, prompts):
    ref = run_cache(model, prompts.corrupted_tokens)[hook_name("z", LAYER)][:, :, HEAD]
    mean = run_cache(model, prompts.clean_tokens, ablation_hooks(model, [(LAYER, HEAD)], "mean", reference=prompts))
    torch.testing.assert_close(mean[hook_name("z", LAYER)][:, :, HEAD], ref.mean(0).expand_as(ref), atol=1e-5, rtol=0)
    res = run_cache(model, prompts.clean_tokens, ablation_hooks(model, [(LAYER, HEAD)], "resample", reference=prompts))
    got = res[hook_name("z", LAYER)][:, :, HEAD]
    matches = [[torch.allclose(got[i], ref[j]) for j in range(len(prompts))] for i in range(len(prompts))]
    assert all(sum(row) == 1 and not row[i] for i, row in enumerate(matches))  # a derangement


def test_position_restricted_ablation(model, prompts):
    end = prompts.positions["END"]
    base = run_cache(model, prompts.clean_tokens)
    ablated = run_cache(model, prompts.clean_tokens, ablation_hooks(model, [(LAYER, HEAD)], "zero", positions=end))
    z0, z1 = base[hook_name("z", LAYER)][:, :, HEAD], ablated[hook_name("z", LAYER)][:, :, HEAD]
    rows = torch.arange(len(prompts))
    assert torch.all(z1[rows, end] == 0)
    mask = torch.ones_like(z0[..., 0], dtype=torch.bool)
    mask[rows, end] = False
    torch.testing.assert_close(z1[mask], z0[mask], atol=0, rtol=0)


def test_context_manager_restores_the_model(model, prompts):
    with torch.no_grad():
        before = model(prompts.clean_tokens)
        with ablate(model, [(LAYER, HEAD), (10, 0)], "zero"):
            during = model(prompts.clean_tokens)
        after = model(prompts.clean_tokens)
    assert (during - before).abs().max() > 1e-3
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_bad_ablation_input(model):
    with pytest.raises(ComponentError, match="does not exist"):
        ablation_hooks(model, [(30, 0)], "zero")
    with pytest.raises(ComponentError, match="unknown ablation mode"):
        ablation_hooks(model, [(1, 0)], "nope")
    with pytest.raises(ComponentError, match="reference"):
        ablation_hooks(model, [(1, 0)], "mean")
