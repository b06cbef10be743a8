"""IOI circuit discovery and evaluation (interp.methods.ioi) and circuit reuse (methods.circuit_reuse),
on the real default model. Properties, not recorded numbers: a knockout that keeps everything is
the model; a knockout of one head is that head's mean ablation; the discovered circuit's classes
are ordered as the mechanism requires and it recovers most of the model's logit difference."""
import math

import pytest
import torch

from interp import graph
from interp.ablation import ablation_hooks, mean_head_outputs
from interp.methods import circuit_reuse, ioi
from interp.metrics import logit_diff
from interp.tasks import colored_objects_examples, ioi_examples


@pytest.fixture(scope="module")
def ioi_prompts(model):
    return ioi_examples(model, n=16, seed=0)


@pytest.fixture(scope="module")
def reference(model):
    return ioi_examples(model, n=64, seed=1)


@pytest.fixture(scope="module")
def found(model, ioi_prompts):
    return ioi.discover(model, ioi_prompts, progress=False)


def test_knockout_keeping_everything_is_the_model(model, ioi_prompts, reference):
    means = mean_head_outputs(model, reference, ioi_prompts.groups)
    everything = {(l, h): None for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)}
    full = ioi.circuit_metric(model, ioi_prompts, None)
    assert abs(ioi.circuit_metric(model, ioi_prompts, everything, means) - full) < 1e-4
    assert ioi.circuit_metric(model, ioi_prompts, {}, means) < full - 1.0  # knocking out all heads hurts


def test_knockout_of_one_head_is_its_mean_ablation(model, ioi_prompts, reference):
    """Two implementations: knockout_hooks keeping all heads but one == ablation_hooks("mean")."""
    means = mean_head_outputs(model, reference, ioi_prompts.groups)
    target = (23, 3)
    keep = {(l, h): None for l in range(model.cfg.n_layers) for h in range(model.cfg.n_heads) if (l, h) != target}
    knocked = ioi.circuit_metric(model, ioi_prompts, keep, means)
    hooks = ablation_hooks(model, [target], "mean", reference=reference, groups=ioi_prompts.groups)
    with torch.no_grad():
        ablated = logit_diff(model.run_with_hooks(ioi_prompts.clean_tokens, fwd_hooks=hooks), ioi_prompts).mean()
    assert abs(knocked - float(ablated)) < 1e-4
    assert abs(knocked - ioi.circuit_metric(model, ioi_prompts, None)) > 1e-2  # the head matters


def test_pattern_scores_find_the_known_head_types(model):
    scores = ioi.pattern_scores(model, seq_len=20, n_seqs=4)
    for name, s in scores.items():
        assert s.shape == (model.cfg.n_layers, model.cfg.n_heads)
        assert float(s.min()) >= 0 and float(s.max()) <= 1 + 1e-5
    assert float(scores["previous token"].max()) > 0.8
    assert float(scores["induction"].max()) > 0.6
    # An induction head is not a previous-token head: the argmaxes differ.
    assert scores["induction"].argmax() != scores["previous token"].argmax()


def test_discovered_circuit_is_ordered_and_faithful(model, ioi_prompts, reference, found):
    classes = found.by_class()
    for needed in ("name mover", "s-inhibition", "induction"):
        assert classes.get(needed), f"no {needed} heads found: {classes}"
    first_mover = min(l for l, _ in classes["name mover"])
    assert all(l < first_mover for l, _ in classes["s-inhibition"])
    assert all(l < min(l2 for l2, _ in classes["s-inhibition"]) for l, _ in classes["induction"])
    # the name movers copy names: their copy score beats their negative copy score on average
    movers = classes["name mover"]
    assert sum(found.copy[h][0] for h in movers) > sum(found.copy[h][1] for h in movers)
    ev = ioi.evaluate(model, ioi_prompts, found, n_random=1, greedy_steps=1, reference=reference)
    assert ev["faithfulness"] >= 0.6, ev
    assert ev["F_empty"] < ev["F_circuit"]
    assert 0 < ev["n_head_positions"] < 0.05


def test_discovered_circuit_saves_as_valid_json(found, tmp_path):
    c = ioi.to_circuit(found, "smollm2-135m-instruct", seed=0, n_prompts=16)
    c.save(tmp_path / "c.json")
    back = graph.Circuit.load(tmp_path / "c.json")
    assert set(back.heads()) == set(found.classes)
    for node in back.nodes:
        if node["kind"] == "head":
            assert node["position"] == ioi.CLASS_POSITION[node["class"]]
    assert any(e["target"] == "logits" for e in back.edges)


def test_top_share_and_overlap(model, found):
    e = ioi.path_effect(found.stages["logits"])
    top = circuit_reuse.top_share(e)
    assert len(top) == math.ceil(0.02 * e.numel())
    assert abs(e[top[-1]]) >= e.abs().flatten().sort(descending=True).values[len(top) - 1] - 1e-12
    same = circuit_reuse.overlap(found.stages, found.stages)
    assert all(v["overlap"] == 1.0 for v in same.values())


def test_attention_intervention_sets_the_pattern(model):
    """The hooked heads' END row is 1/2 on each incorrect colour and 0 elsewhere; others untouched."""
    ps = colored_objects_examples(model, n=4, seed=0)
    heads = [(20, 0), (20, 3)]
    seen = {}

    def grab(pattern, hook=None):
        seen["p"] = pattern.detach().clone()
        return pattern

    hooks = circuit_reuse.attend_to_hooks(model, ps, heads, ["C_WRONG1", "C_WRONG2"])
    with torch.no_grad():
        _, clean = model.run_with_cache(ps.clean_tokens, names_filter=lambda n: n == "blocks.20.attn.hook_pattern")
        model.run_with_hooks(ps.clean_tokens, fwd_hooks=hooks + [("blocks.20.attn.hook_pattern", grab)])
    rows = torch.arange(len(ps))
    for h in (0, 3):
        row = seen["p"][rows, h, ps.answer_pos]
        assert torch.allclose(row.sum(-1), torch.ones(len(ps)))
        assert torch.allclose(row[rows, ps.positions["C_WRONG1"]], torch.full((len(ps),), 0.5))
        assert torch.allclose(row[rows, ps.positions["C_WRONG2"]], torch.full((len(ps),), 0.5))
    assert torch.equal(seen["p"][:, 1], clean["blocks.20.attn.hook_pattern"][:, 1])
