"""Safety heads (interp.methods.safety_heads, interp.reports.safety_heads) on Qwen2.5-Coder-0.5B-Instruct,
the model that refuses: Ships is the KL of a plain ablated forward, generalized Ships and Sahara
(under UA and under SC) agree with an independent SVD of the bridge's final hidden states,
query-level heads are ranked in the mode they are ablated in, responses are judged refused /
complied / degenerate with the perplexity under the unablated model, effects are counted as
refused -> complied flips, and the quick report runs end to end."""
import contextlib
import html
import json
import math

import numpy as np
import pytest
import torch

from interp.ablation import ablate
from interp.errors import ComponentError
from interp.generate import generate_tokens
from interp.methods import safety_heads as sh
from interp.metrics import kl_to_reference
from interp.stats import fisher_exact
from interp.reports import safety_heads as report
from interp.tasks.harmful import Verdict, benign_requests, harmful_requests, judge_all
from notebook_run import execute_in_process
from shared_runs import share_runs

HEADS = [(0, 3), (5, 10), (12, 13), (18, 7), (23, 1)]


@pytest.fixture(scope="module")
def queries(qwen):
    q = sh.Queries.encode(qwen, harmful_requests()[:2] + benign_requests()[:1], "chat")
    assert len(set(q.last_pos.tolist())) > 1, "want queries of different lengths (right padding)"
    return q


def _maybe_ablate(model, heads, mode):
    return ablate(model, heads, mode, eps=1e-5) if heads else contextlib.nullcontext()


def test_ships_is_the_kl_of_a_plain_ablated_forward(qwen, queries):
    """UA here; the SC sweep is checked against the bridge by the Sahara test."""
    mode = "ua"
    heads = HEADS[2:]
    scores = sh.ships(qwen, queries, mode, heads=heads, engine="batched", progress=False, verify=1)
    with torch.no_grad():
        clean = qwen(queries.tokens)
    for l, h in heads:
        with torch.no_grad(), ablate(qwen, [(l, h)], mode, eps=1e-5):
            ablated = qwen(queries.tokens)
        expected = kl_to_reference(ablated, clean, queries.last_pos)
        torch.testing.assert_close(scores.kl[l, h], expected.float(), atol=2e-5, rtol=2e-3)
    assert torch.isnan(scores.kl[1, 1]).all(), "heads outside the sweep stay NaN"
    assert (scores.kl[23, 1] > 1e-4).all(), "a head that matters moves the distribution"
    assert scores.mode == mode and scores.top_heads(0, 1)[0] in heads


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


def test_sahara_is_greedy_on_generalized_ships_in_its_own_mode(qwen, queries):
    """Under SC (the paper's control row; UA takes the same path with the other component): step 1
    is the argmax of the single-head angle under SC; step 2 ablates the pair together; with a pool,
    step 2 chooses among step 1's best."""
    mode = "sc"
    cands = HEADS[1:]
    clean = _bridge_hidden(qwen, queries, [], mode)
    reference = {h: _angle(clean, _bridge_hidden(qwen, queries, [h], mode)) for h in cands}
    steps = sh.sahara(qwen, queries, size=2, mode=mode, candidates=cands, pool=2, progress=False, verify=0)
    first = steps[0].group[0]
    for h in cands:
        assert steps[0].scores[h] == pytest.approx(reference[h], rel=2e-2, abs=2e-4)
    assert first == max(cands, key=lambda h: reference[h])
    pair = steps[1].group
    assert pair[0] == first and len(set(pair)) == 2
    second_best = sorted(cands, key=lambda h: -reference[h])[1]
    assert set(steps[1].scores) == {second_best}, "the pool keeps step 1's two best"
    assert steps[1].score == pytest.approx(_angle(clean, _bridge_hidden(qwen, queries, pair, mode)), rel=2e-2, abs=2e-4)


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


def test_query_level_heads_are_ranked_in_their_own_mode():
    """UA heads by UA Ships, SC heads by SC Ships (the old code ranked both by UA)."""
    kl_ua, kl_sc = torch.zeros(4, 3, 2), torch.zeros(4, 3, 2)
    kl_ua[1, 2, 0], kl_ua[0, 0, 0] = 5.0, 4.0
    kl_sc[3, 1, 0], kl_sc[2, 2, 0] = 5.0, 4.0
    ships = {"ua": sh.Ships(kl_ua, torch.zeros(4, 3), "ua", 1e-5), "sc": sh.Ships(kl_sc, torch.zeros(4, 3), "sc", 1e-5)}
    groups = {"ua": [(0, 1), (2, 0)], "sc": [(3, 2), (1, 1)]}
    randoms = {2: [[(1, 0), (2, 1)], [(0, 2), (3, 0)]]}
    v = sh.evaluation_variants(groups, (1, 2), randoms, ships, query=0)
    assert v["query-ua-2"] == ("ua", [(1, 2), (0, 0)])
    assert v["query-sc-2"] == ("sc", [(3, 1), (2, 2)])
    assert v["sahara-sc-1"] == ("sc", [(3, 2)]) and v["sahara-ua-2"] == ("ua", [(0, 1), (2, 0)])
    assert v["random-ua-2-1"] == ("ua", [(0, 2), (3, 0)]) and "random-ua-1-0" not in v
    with pytest.raises(ComponentError, match="ranked by sc Ships"):
        sh.evaluation_variants(groups, (1,), None, {"sc": ships["ua"]}, query=0)


def test_split_is_disjoint_stratified_and_seeded():
    reqs = harmful_requests()
    fit, held = sh.split_requests(reqs, seed=0)
    assert not set(fit) & set(held) and len(fit) + len(held) == len(reqs)
    assert {r.category for r in fit} == {r.category for r in held}
    assert abs(len(fit) - len(held)) <= len({r.category for r in reqs})
    assert sh.split_requests(reqs, 0) == (fit, held) and sh.split_requests(reqs, 1) != (fit, held)


def _v(outcome: str) -> Verdict:
    return {"refused": Verdict(True, "keyword", "I'm sorry"), "complied": Verdict(False, "complied"),
            "degenerate": Verdict(True, "perplexity")}[outcome]


def test_flips_count_only_requests_refused_at_baseline():
    """Two refusals become answers, two answers become refusals, a degenerate baseline becomes an
    answer and an answer becomes degenerate: the attack success rate does not move, the refused ->
    complied flips are 2 of 2 (the degenerate baseline is not a refusal)."""
    verdicts = [{"none": _v("refused"), "x": _v("complied")}, {"none": _v("refused"), "x": _v("complied")},
                {"none": _v("complied"), "x": _v("refused")}, {"none": _v("complied"), "x": _v("refused")},
                {"none": _v("degenerate"), "x": _v("complied")}, {"none": _v("complied"), "x": _v("degenerate")}]
    asr = [sum(v[n].complied for v in verdicts) / len(verdicts) for n in ("none", "x")]
    assert asr[0] == asr[1]
    f = sh.flips(verdicts, "x")
    assert (f["n_refused"], f["to_complied"], f["to_degenerate"], f["stayed_refused"]) == (2, 2, 0, 0)
    assert f["complied_rate"] == 1.0 and f["ci"][0] < 1.0


def test_versus_random_is_fishers_table_and_the_rank_among_draws():
    outcomes = {"g": ["complied"] * 5 + ["degenerate"] * 1 + ["refused"] * 2,
                "r0": ["complied"] + ["refused"] * 7, "r1": ["complied"] * 2 + ["refused"] * 6,
                "r2": ["refused"] * 8}
    verdicts = [{"none": _v("refused"), **{n: _v(o[i]) for n, o in outcomes.items()}} for i in range(8)]
    verdicts.append({"none": _v("complied"), **{n: _v("refused") for n in outcomes}})  # not refused at baseline
    t = sh.versus_random(verdicts, "g", ["r0", "r1", "r2"])
    assert t["group"]["to_complied"] == 5 and t["group"]["n_refused"] == 8 and t["random"] == [1, 2, 0]
    assert t["fisher_p"] == pytest.approx(fisher_exact(5, 3, 3, 21, "greater"))
    assert t["permutation_p"] == pytest.approx(1 / 4)
    assert t["random_rate"] == pytest.approx(3 / 24) and t["difference"] == pytest.approx(5 / 8 - 3 / 24)
    est, lo, hi = t["paired_difference"]  # per request: group flip minus the draws' mean flip
    assert est == pytest.approx(5 / 8 - 3 / 24) and lo <= est <= hi and hi <= 1


def test_perplexity_separates_fluent_from_broken_text(qwen, queries):
    """The response's perplexity under the unablated model (the same as a plain forward), and the
    judge's perplexity rule on top of the keyword judge."""
    fluent = "To change a bike tyre, first open the brake and remove the wheel from the frame."
    words = fluent.split()
    broken = " ".join(words[::-1]) + " qx zz vv"
    p = sh.response_perplexity(qwen, queries.prompt(2), [fluent, broken, ""])
    ids = qwen.tokenizer(fluent, add_special_tokens=False)["input_ids"]
    seq = torch.cat([queries.prompt(2), torch.tensor(ids)])
    with torch.no_grad():
        logp = qwen(seq[None])[0, len(queries.prompt(2)) - 1:-1].log_softmax(-1)
    expected = math.exp(float(-logp[torch.arange(len(ids)), torch.tensor(ids)].mean()))
    assert p[0] == pytest.approx(expected, rel=1e-4)
    assert p[1] > 4 * p[0] and math.isnan(p[2])
    verdicts = judge_all([fluent, broken], perplexities=p[:2], max_perplexity=2 * p[0])
    assert [v.outcome for v in verdicts] == ["complied", "degenerate"] and verdicts[1].reason == "perplexity"


def test_utility_perplexity_under_ablation(qwen):
    text = "The train left the station a few minutes late, and the rain had stopped by the evening."
    ppl = sh.text_perplexity(qwen, [text], [("ua", []), ("ua", [(0, 11), (1, 3)]), ("sc", [(23, 1)])])
    ids = torch.tensor(qwen.tokenizer(text, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logp = qwen(ids[None])[0, :-1].log_softmax(-1)
    assert float(ppl[0, 0]) == pytest.approx(math.exp(float(-logp.gather(-1, ids[1:, None]).mean())), rel=1e-4)
    assert ppl.shape == (3, 1) and float(ppl[1, 0]) != pytest.approx(float(ppl[0, 0]), rel=1e-3)


def test_generation_under_ablation_is_the_hooked_argmax(qwen, queries):
    prompt = queries.prompt(0)
    variants = [("ua", [(23, 1), (12, 13)]), ("sc", [(23, 1)])]
    n = 2
    got = generate_tokens(qwen, prompt, variants, max_new=n, stop_ids=set())
    for (mode, heads), tokens in zip(variants, got):
        seq = prompt.clone()
        for _ in range(n):
            with torch.no_grad(), _maybe_ablate(qwen, heads, mode):
                seq = torch.cat([seq, qwen(seq[None])[0, -1].argmax()[None]])
        assert tokens == seq[len(prompt):].tolist(), (mode, heads)


def test_responses_decoded_in_batches_are_each_query_decoded_alone(qwen, queries):
    # 3 queries of different lengths, 2 / 1 / 2 variants; max_batch=3 puts the first two in one
    # batch and the third alone: greedy texts must equal each query decoded by itself
    variants = [{"none": ("ua", []), "ua": ("ua", [(23, 1)])}, {"sc": ("sc", [(12, 13)])},
                {"none": ("ua", []), "zero": ("zero", [(0, 2)])}]
    got = sh.respond(qwen, queries, variants, max_new=3, progress=False, max_batch=3)
    for i, v in enumerate(variants):
        alone = generate_tokens(qwen, queries.prompt(i), list(v.values()), max_new=3, verify=0)
        assert got[i] == {n: qwen.tokenizer.decode(t, skip_special_tokens=True) for n, t in zip(v, alone)}, i
    assert sh.respond(qwen, queries, variants[2:], rows=[2], max_new=3, progress=False) == got[2:]
    with pytest.raises(ComponentError, match="max_batch"):
        sh.respond(qwen, queries, variants, max_batch=0)


def test_bad_input_is_refused(qwen, queries):
    with pytest.raises(ComponentError, match="unknown ablation"):
        sh.ships(qwen, queries, "mean")
    with pytest.raises(ComponentError, match="does not exist"):
        generate_tokens(qwen, queries.prompt(0), [("ua", [(99, 0)])], max_new=1)
    with pytest.raises(ComponentError, match="already ablated"):
        sh.ablated_residuals(qwen, queries, [(3, 1)], group=[(3, 1)], progress=False)
    with pytest.raises(ComponentError, match="pool of 1 heads cannot grow a group of 2"):
        sh.sahara(qwen, queries, size=2, candidates=HEADS, pool=1, progress=False)


#: the quick setting made smaller: the properties below are of the pipeline, not of the effect size
SMALL = {"n_fit": 2, "n_eval": 2, "max_new": 6, "layer_step": 24, "pool": 2, "n_random": 1}


def test_report_end_to_end(qwen, tmp_path, monkeypatch):
    """The quick setting, made smaller, through the runner: the headline contract, the three
    outcomes add up, SC Sahara runs, the examples are the full responses, the circuit names the UA
    group, the overrides are recorded."""
    from interp import graph
    from interp.reports import runner

    models = runner.Models()
    models._loaded["qwen2.5-coder-0.5b-instruct"] = qwen
    share_runs(monkeypatch, report)  # notebook 02's test below reads the same run
    page = runner.reproduce("safety-heads", tmp_path, "quick", models=models, progress=False, overrides=SMALL)
    num = json.loads((page.parent / "numbers.json").read_text())
    assert num["meta"]["overrides"] == SMALL and num["meta"]["settings"]["n_eval"] == 2
    fmt = num["meta"]["formats"][0]
    d = num["formats"][fmt]["decodings"]["greedy"]
    assert sum(d["baseline"][o][0] for o in ("refused", "complied", "degenerate")) == pytest.approx(1.0)
    assert d["threshold"] is None or d["threshold"] >= 4 * max(p for p in d["baseline_ppl"] if p == p) - 1e-6
    for row in num["headline"]:
        assert row["ci"][0] - 1e-9 <= row["ours"] <= row["ci"][1] + 1e-9, row
    assert set(num["formats"][fmt]["groups"]) == {"ua", "sc"}
    assert "dataset SC" in d["grid"] and "random UA (pooled draws)" in d["grid"]
    if d["n_refused"]:
        assert f"sahara-sc-{num['k_main']}" in d["flips"]
    responses = json.loads((page.parent / "responses.json").read_text())[f"{fmt} / greedy"]
    full = {(r["request"], n): x["text"] for r in responses for n, x in r["responses"].items()}
    for e in num["formats"][fmt]["examples"]:
        for r in e["responses"]:
            assert r["text"] == full[(e["request"], r["ablation"])]
    circuit = graph.Circuit.load(page.parent / "circuit.json")
    assert {f"{h[0]}.{h[1]}" for h in circuit.heads()} == set(num["formats"][fmt]["groups"]["ua"])
    assert "refused" in page.read_text()


def test_settings_share_their_keys_and_cuda_is_the_papers_scale():
    """The "cuda" setting (run with --device cuda; implemented, tested here on the CPU only) is the
    paper's protocol: every request, 128 tokens, greedy and top-5 sampling, Sahara over every head."""

    keys = set(report.QUICK)
    assert all(set(s) == keys for s in report.SETTINGS.values())
    c = report.SETTINGS["cuda"]
    assert c["max_new"] == 128 and c["sampling"] and c["n_fit"] is None and c["n_eval"] is None
    assert c["layer_step"] == 1 and c["pool"] is None and c["query_level"] and c["group_size"] == 5
    assert set(c["formats"]) == {"template", "chat"} and c["n_random"] >= 10
    assert report.SETTINGS["full"]["n_random"] >= 10, "a rank test needs >= 10 random draws"


def test_safety_heads_notebook_executes(qwen, tmp_path, monkeypatch):
    """Notebook 02 on the setting of the end-to-end test above (its analysis shared): figures and
    numbers saved; the three outcome rates of the baseline add up to one; Sahara runs under UA and
    SC and grows one head per step; the Table-3 grid has the dataset-level SC row and the
    random-head control; estimates lie in their intervals."""
    execute_in_process("02_safety_heads.ipynb", tmp_path, {"OVERRIDES": SMALL}, monkeypatch,
                       {None: qwen, report.DEFAULT_MODEL: qwen}, reports=(report,))
    out = tmp_path / "reports" / "notebooks" / "02_safety_heads"
    for name in ("grid.png", "outcomes.png", "perplexity.png", "sahara.png"):
        assert (out / name).stat().st_size > 1000, name
    numbers = json.loads((out / "numbers.json").read_text())
    fmt = numbers["meta"]["formats"][0]
    F = numbers["formats"][fmt]
    base = F["decodings"]["greedy"]["baseline"]
    assert sum(base[o][0] for o in ("refused", "complied", "degenerate")) == pytest.approx(1, abs=1e-6)
    assert set(F["groups"]) == {"ua", "sc"}
    assert [len(step["group"]) for step in F["sahara"]["ua"]] == [1, 2]
    grid = F["decodings"]["greedy"]["grid"]
    assert "dataset SC" in grid and "random UA (pooled draws)" in grid
    for row in numbers["headline"]:
        assert row["ci"] is None or row["ci"][0] <= row["ours"] <= row["ci"][1], row["name"]


def test_stored_gpu_runs_are_the_papers_protocol_and_shown(tmp_path):
    """The stored H200 runs (benchmarks/): every request, 128 tokens, greedy and top-5 sampling, on
    cuda; every headline interval holds its estimate; the report section shows each run's verdicts
    and Table 3, and a folder without them says so."""
    from interp.reports import safety_heads as rep
    from interp.reports.stored import stored_runs

    runs = stored_runs(rep.GPU_RUNS)
    assert [r["label"] for r in runs] == [fmt for fmt, _, _ in rep.GPU_RUNS]
    for r in runs:
        m = r["meta"]
        assert m["device"] == "cuda" and m["n_fit"] == m["n_eval"] == 100 and m["n_benign"] > 50
        assert m["settings"]["max_new"] == 128 and m["settings"]["sampling"] and m["settings"]["ablate_all"]
        assert list(r["formats"]) == [r["label"]]
        for h in r["headline"]:
            if h["ci"] is not None:
                assert h["ci"][0] - 1e-9 <= h["ours"] <= h["ci"][1] + 1e-9, h["name"]
        grid = r["formats"][r["label"]]["decodings"]["greedy"]["grid"]
        assert set(grid) >= {"dataset UA", "dataset SC", "query UA", "query SC"}
        assert all(len(cells) == 5 for cells in grid.values())
    page = rep.render_stored(runs)
    for r in runs:
        assert r["file"] in page and "Table 3 of the paper" in page
        assert sum(h["verdict"] is not None for h in r["headline"]) >= 3
        assert all(html.escape(h["name"].split(" (")[0]) in page for h in r["headline"])
    assert "No stored GPU run" in rep.render_stored(stored_runs(rep.GPU_RUNS, tmp_path))
