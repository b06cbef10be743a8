"""Correct-letter heads (interp.methods.correct_letter) on Qwen2.5-Coder-0.5B-Instruct, the model that
solves symbol binding: DLA adds up, effects agree with independent computations, rank = d_head is
the head itself, the classifier follows its definitions."""
import pytest
import torch

import interp
from interp.hooks import hook_name
from interp.methods import correct_letter as cl
from interp.metrics import logit_diff
from interp.tasks import symbol_binding_examples


@pytest.fixture(scope="module")
def qwen():
    return interp.load_model("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="module")
def mcq(qwen):
    return symbol_binding_examples(qwen, n=8, seed=0)


@pytest.fixture(scope="module")
def effects(qwen, mcq):
    return cl.total_and_direct(qwen, mcq, progress=False)


def test_model_does_better_than_chance(qwen, mcq):
    s = cl.scores(qwen, mcq)
    assert s["accuracy"] > 0.25 + 0.1 and s["logit_margin"] > 0


def test_dla_adds_up(qwen, mcq):
    dla = interp.direct_logit_attribution(qwen, mcq.prompts)
    parts = dla.embed + float(dla.attn.values.sum()) + float(dla.mlp.values.sum())
    assert abs(parts - dla.total) < 1e-3 * (1 + abs(dla.total))


def test_total_effect_is_the_activation_patch(qwen, mcq, effects):
    """The batched by-position patch at END == the reference loop for a few heads."""
    end = int(mcq.prompts.answer_pos[0])
    ref = interp.patch(qwen, mcq.prompts, "head_out", by_pos=True, direction="noise", layers=[14, 20],
                       heads=[5, 8], positions=[end], engine="reference", progress=False)
    for i, l in enumerate([14, 20]):
        for j, h in enumerate([5, 8]):
            assert abs(effects["total"].values[l, h] - (ref.values[i, 0, j] - ref.clean)) < 1e-3


def test_direct_effect_is_the_dla_difference(qwen, mcq, effects):
    """Adding one head's (corrupt - clean) output to the final residual, with the final norm's scale
    frozen, moves the logit difference by exactly its direct effect."""
    ps, L = mcq.prompts, qwen.cfg.n_layers
    l, h = cl.top_heads(effects["direct"].values, 1)[0]
    names = {hook_name("result", l), "ln_final.hook_scale"}
    with torch.no_grad():
        _, clean = qwen.run_with_cache(ps.clean_tokens, names_filter=lambda n: n in names)
        _, corrupt = qwen.run_with_cache(ps.corrupted_tokens, names_filter=lambda n: n in names)
        delta = corrupt[hook_name("result", l)][:, :, h] - clean[hook_name("result", l)][:, :, h]
        hooks = [(hook_name("resid_post", L - 1), lambda x, hook=None: x + delta),
                 ("ln_final.hook_scale", lambda s, hook=None: clean["ln_final.hook_scale"])]
        moved = logit_diff(qwen.run_with_hooks(ps.clean_tokens, fwd_hooks=hooks), ps).mean()
        base = logit_diff(qwen(ps.clean_tokens), ps).mean()
    assert abs(float(moved - base) - float(effects["direct"].values[l, h])) < 1e-3
    assert abs(float(effects["direct"].values[l, h])) > 0.05


def test_full_rank_head_is_the_head(qwen, mcq):
    """At rank d_head the recomputed attention row at the final position is the head's own row."""
    l, h = 20, 8
    lr = cl.LowRankHead(qwen, (l, h)).fit(mcq)
    ps = mcq.prompts
    name = hook_name("pattern", l)
    with torch.no_grad():
        _, cache = qwen.run_with_cache(ps.clean_tokens, names_filter=lambda n: n == name)
    rows = torch.arange(len(ps))
    original = cache[name][rows, h, ps.answer_pos]
    (_, full), = lr.hooks(mcq, qwen.cfg.d_head)
    (_, rank1), = lr.hooks(mcq, 1)
    assert (full(cache[name])[rows, h, ps.answer_pos] - original).abs().max() < 1e-4
    assert (rank1(cache[name])[rows, h, ps.answer_pos] - original).abs().max() > 1e-3


@pytest.mark.parametrize("profile, expected", [
    (dict(correct_label=0.5, other_labels=0.05, items=0, asked=0, max=0.5, uniform_share=0.04,
          top_label_is_correct=0.9, top_label_constant=0.3), "correct-letter"),
    (dict(correct_label=0.1, other_labels=0.2, items=0, asked=0, max=0.5, uniform_share=0.04,
          top_label_is_correct=0.25, top_label_constant=1.0), "single-letter"),
    (dict(correct_label=0.0, other_labels=0.0, items=0.1, asked=0.5, max=0.5, uniform_share=0.04,
          top_label_is_correct=0.25, top_label_constant=1.0), "content gatherer"),
    (dict(correct_label=0.03, other_labels=0.03, items=0.1, asked=0.03, max=0.05, uniform_share=0.04,
          top_label_is_correct=0.25, top_label_constant=0.4), "uniform"),
])
def test_classify(profile, expected):
    assert cl.classify(profile) == expected
