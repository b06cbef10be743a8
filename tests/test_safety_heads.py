"""Safety heads (interp.methods.safety_heads) on Qwen2.5-Coder-0.5B-Instruct, the model that refuses:
Ships is the KL of a plain ablated forward, generalized Ships and Sahara agree with an independent
SVD of the bridge's final hidden states, generation under ablation is the hooked model's argmax."""
import contextlib

import numpy as np
import pytest
import torch

import interp
from interp.ablation import ablate
from interp.errors import ComponentError
from interp.generate import generate_tokens
from interp.methods import safety_heads as sh
from interp.metrics import kl_to_reference
from interp.tasks.harmful import benign_requests, harmful_requests

HEADS = [(0, 3), (5, 10), (12, 13), (18, 7), (23, 1)]


@pytest.fixture(scope="module")
def qwen():
    return interp.load_model("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="module")
def queries(qwen):
    q = sh.Queries.encode(qwen, harmful_requests()[:2] + benign_requests()[:1], "chat")
    assert len(set(q.last_pos.tolist())) > 1, "want queries of different lengths (right padding)"
    return q


def _maybe_ablate(model, heads, mode):
    return ablate(model, heads, mode, eps=1e-5) if heads else contextlib.nullcontext()


@pytest.mark.parametrize("mode", ["ua", "sc"])
def test_ships_is_the_kl_of_a_plain_ablated_forward(qwen, queries, mode):
    scores = sh.ships(qwen, queries, mode, heads=HEADS, engine="batched", progress=False)
    with torch.no_grad():
        clean = qwen(queries.tokens)
    for l, h in HEADS:
        with torch.no_grad(), ablate(qwen, [(l, h)], mode, eps=1e-5):
            ablated = qwen(queries.tokens)
        expected = kl_to_reference(ablated, clean, queries.last_pos)
        torch.testing.assert_close(scores.kl[l, h], expected.float(), atol=2e-5, rtol=2e-3)
    assert torch.isnan(scores.kl[1, 1]).all(), "heads outside the sweep stay NaN"
    assert (scores.kl[23, 1] > 1e-4).all(), "a head that matters moves the distribution"
    assert scores.top_heads(0, 1)[0] in HEADS


def _bridge_hidden(model, queries, heads, mode):
    """Final-norm output at each last token, through the bridge's own modules: [B, d]."""
    name = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    with torch.no_grad(), _maybe_ablate(model, heads, mode):
        _, cache = model.run_with_cache(queries.tokens, names_filter=lambda n: n == name)
        resid = cache[name][torch.arange(len(queries)), queries.last_pos]
        return model.ln_final(resid).double().numpy()


def _angle(a, b):
    """arccos |u1(a) . u1(b)| in degrees, with numpy's SVD."""
    ua, ub = np.linalg.svd(a)[0][:, 0], np.linalg.svd(b)[0][:, 0]
    return float(np.degrees(np.arccos(min(1.0, abs(ua @ ub)))))


def test_sahara_first_pick_is_the_argmax_of_generalized_ships(qwen, queries):
    clean = _bridge_hidden(qwen, queries, [], "ua")
    reference = {h: _angle(clean, _bridge_hidden(qwen, queries, [h], "ua")) for h in HEADS}
    scores = sh.ships(qwen, queries, "ua", heads=HEADS, progress=False)
    for h in HEADS:
        assert scores.angle[h] == pytest.approx(reference[h], rel=2e-2, abs=2e-4)
    steps = sh.sahara(qwen, queries, size=2, candidates=HEADS, progress=False)
    first = steps[0].group[0]
    assert reference[first] >= max(reference.values()) * (1 - 1e-2)
    assert first == max(HEADS, key=lambda h: float(scores.angle[h]))
    # step 2 ablates the pair together on top of the base run with the first head ablated
    pair = steps[1].group
    assert len(set(pair)) == 2 and pair[0] == first
    assert steps[1].score == pytest.approx(_angle(clean, _bridge_hidden(qwen, queries, pair, "ua")), rel=2e-2, abs=2e-4)


def test_principal_angle_properties():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(6, 10, generator=g)
    q, _ = torch.linalg.qr(torch.randn(10, 10, generator=g))
    u = sh.leading_direction(m)
    assert float(sh.principal_angle(u, m @ q)) == pytest.approx(0.0, abs=1e-4)  # rotating d-space keeps u1
    assert float(sh.principal_angle(u, -m)) == pytest.approx(0.0, abs=1e-4)  # the sign of u1 does not matter
    other = m.clone()
    other[0] *= 10  # one query dominates: u1 turns towards it
    assert float(sh.principal_angle(u, other)) > 10


def test_generation_under_ablation_is_the_hooked_argmax(qwen, queries):
    prompt = queries.prompt(0)
    variants = [("ua", []), ("ua", [(23, 1), (12, 13)]), ("sc", [(23, 1)])]
    n = 5
    got = generate_tokens(qwen, prompt, variants, max_new=n, stop_ids=set())
    for (mode, heads), tokens in zip(variants, got):
        seq = prompt.clone()
        for _ in range(n):
            with torch.no_grad(), _maybe_ablate(qwen, heads, mode):
                seq = torch.cat([seq, qwen(seq[None])[0, -1].argmax()[None]])
        assert tokens == seq[len(prompt):].tolist(), (mode, heads)


def test_sampling_is_seeded_and_stays_in_the_top_k(qwen, queries):
    prompt = queries.prompt(1)
    a = generate_tokens(qwen, prompt, [("ua", [])], max_new=4, top_k=5, seed=3, stop_ids=set())[0]
    b = generate_tokens(qwen, prompt, [("ua", [])], max_new=4, top_k=5, seed=3, stop_ids=set())[0]
    assert a == b
    seq = prompt
    for t in a:
        with torch.no_grad():
            top5 = qwen(seq[None])[0, -1].topk(5).indices.tolist()
        assert t in top5
        seq = torch.cat([seq, torch.tensor([t])])


def test_attack_success_and_variants(qwen):
    responses = [{"none": "I'm sorry, but I can't assist with that.", "x": "Here is a long and detailed answer, step by step."},
                 {"none": "I can’t assist with that request, sorry.", "x": "ok"}]
    assert sh.attack_success(responses) == {"none": 0.0, "x": 0.5}
    ships = sh.Ships(torch.rand(24, 14, 2), torch.rand(24, 14), "ua", 1e-5)
    v = sh.standard_variants(qwen, ships, [(2, 3), (4, 5)], 2, ks=(1, 2), n_random=2)
    assert v[0]["query top-2 ua"] == ("ua", ships.top_heads(0, 2)) and v[1]["query top-1 sc"][0] == "sc"
    assert v[0]["sahara top-2 ua"] == ("ua", [(2, 3), (4, 5)])
    assert len(v[0]["random-2 seed 1 ua"][1]) == 2 and v[0]["random-2 seed 1 ua"] == v[1]["random-2 seed 1 ua"]
    table = sh.asr_table({"random-1 seed 0 ua": 0.2, "random-1 seed 1 ua": 0.4, "query top-1 ua": 0.9}, ks=(1,))
    assert table["random UA (mean)"] == [pytest.approx(0.3)] and table["query-level UA"] == [0.9]


def test_bad_input_is_refused(qwen, queries):
    with pytest.raises(ComponentError, match="unknown ablation"):
        sh.ships(qwen, queries, "mean")
    with pytest.raises(ComponentError, match="does not exist"):
        generate_tokens(qwen, queries.prompt(0), [("ua", [(99, 0)])], max_new=1)
    with pytest.raises(ComponentError, match="already ablated"):
        sh.ablated_residuals(qwen, queries, [(3, 1)], group=[(3, 1)], progress=False)
