"""Retrieval heads (interp.methods.retrieval_heads, Wu et al. 2024) on the real default model: the
decoder's steps against the TransformerBridge, the paper's copy-paste score on constructed
attention, masking from the last prompt token on, and heads chosen on needles they are not tested on."""
import json
import random

import pytest
import torch

from interp.ablation import ablation_hooks
from interp.errors import InterpError
from interp.generate import generation
from interp.hooks import hook_name
from interp.methods import retrieval_heads as rh
from interp.tasks import needle_episodes
from notebook_run import execute_in_process


@pytest.fixture(scope="module")
def episode(model):
    return needle_episodes(model.tokenizer, lengths=(160,), depths=(0.5,), needles=["quiz"], seed=0, chat=True,
                           buffer=0)[0]


@pytest.fixture(scope="module")
def decoded(model, episode):
    return generation(model, episode.tokens, [("ua", [])], max_new=20, top1=True, stop_at_newline=True)


def test_each_step_reads_the_query_that_emitted_its_token(model, episode, decoded):
    """tokens[t] is the greedy argmax at position T - 1 + t of the whole sequence, and top1[t] the
    top-1 attended position of that same query (the paper: the step that *emits* w_t, starting
    with the prompt's last token)."""
    tokens, top1 = decoded.tokens[0], decoded.top1[0]
    assert len(tokens) >= 3 and top1.shape == (len(tokens), model.cfg.n_layers, model.cfg.n_heads)
    full = torch.cat([episode.tokens, torch.tensor(tokens)])
    names = [hook_name("pattern", l) for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(full[None], names_filter=lambda n: n in names)
    T = len(episode.tokens)
    assert logits[0, T - 1:-1].argmax(-1).tolist() == tokens
    assert (logits[0, T - 1] - decoded.first_logits[0]).abs().max() < 1e-3
    for t in range(len(tokens)):
        bridge = torch.stack([cache[n][0, :, T - 1 + t].argmax(-1) for n in names])  # [L, H]
        agree = (bridge == top1[t]).float().mean()
        assert agree > 0.99, (t, agree)  # (ties in near-uniform rows may break differently)


def test_score_compares_with_the_emitted_token_not_the_query():
    """A constructed episode: prompt ... [s, e) = answer ...; the model answers w_0..w_3 = the
    answer. A head that at step t attends the span token equal to w_t (the copy happens one step
    after the query token w_{t-1} was fed in) scores 1. A head that attends the earlier copy of
    the token it was fed (w_{t-1}, duplicate-token behaviour) scores 0 -- the old convention,
    which compared with the fed-in token, gave the second head 3/4 and the first 0."""
    answer = [41, 42, 43, 44]
    prompt = torch.tensor([1, 7, 8] + answer + [9, 10, 11])  # span [3, 7)
    s, e = 3, 7
    steps = len(answer)
    top1 = torch.zeros(steps, 2, 3, dtype=torch.long)  # position 0 (token 1): outside the span
    top1[:, 0, 0] = torch.arange(s, e)  # step t -> answer[t] = the token it emits
    top1[1:, 0, 1] = torch.arange(s, e - 1)  # step t -> answer[t - 1] = the token fed in
    top1[:, 1, 2] = torch.tensor([s, s + 1, 0, 0])  # copies the first two tokens only
    top1[:, 1, 1] = torch.tensor([8, 9, 10, 1])  # outside the span
    score = rh.retrieval_score(top1, answer, prompt, (s, e))
    assert score[0, 0] == pytest.approx(1.0)
    assert score[0, 1] == 0
    assert score[1, 2] == pytest.approx(2 / 4)
    assert score[1, 1] == 0 and score[0, 2] == 0
    # Copies outside the span do not count, nor positions past the prompt (the answer so far).
    top1b = torch.full((steps, 2, 3), len(prompt) + 1)
    assert rh.retrieval_score(top1b, answer, prompt, (s, e)).sum() == 0
    # The old convention (fed-in token g_t) would have rewarded head (0, 1): make sure it is gone.
    fed = [int(prompt[-1])] + answer[:-1]
    assert rh.retrieval_score(top1, fed, prompt, (s, e))[0, 1] == pytest.approx(3 / 4)


def test_masking_starts_at_the_last_prompt_token(model, episode, decoded):
    """The masked heads' queries are zeroed from the query that emits the first answer token on:
    the first logits equal the bridge with q := 0 at position T - 1 only, the second step with
    q := 0 at T - 1 and T; the masked heads attend uniformly (top-1 = position 0)."""
    heads = [(8, 0), (14, 3), (2, 4), (20, 1)]
    g = generation(model, episode.tokens, [("ua", []), ("mask", heads)], max_new=2, top1=True, verify=0)
    T = len(episode.tokens)
    hooks = ablation_hooks(model, heads, "ua", positions=T - 1, eps=0.0)
    with torch.no_grad():
        ref = model.run_with_hooks(episode.tokens[None], fwd_hooks=hooks)[0, -1]
    assert (g.first_logits[1] - ref).abs().max() < 1e-3
    assert (g.first_logits[1] - g.first_logits[0]).abs().max() > 1e-3  # the mask reached the first token
    seq = torch.cat([episode.tokens, torch.tensor(g.tokens[1][:1])])[None]
    hooks = [hk for p in (T - 1, T) for hk in ablation_hooks(model, heads, "ua", positions=p, eps=0.0)]
    with torch.no_grad():
        ref2 = model.run_with_hooks(seq, fwd_hooks=hooks)[0, -1].argmax().item()
    assert g.tokens[1][1] == ref2
    for l, h in heads:
        assert (g.top1[1][:, l, h] == 0).all()
    # mask_from=1: the first step is the unmasked model's.
    late = generation(model, episode.tokens, [("mask", heads)], max_new=1, mask_from=1, verify=0)
    assert torch.allclose(late.first_logits[0], g.first_logits[0], atol=1e-4)


def _fake_scores(model, favourite: dict[str, list[tuple[int, int]]]) -> rh.RetrievalScores:
    """Episodes of the given needles, each 'retrieved', with a score of 1 on its needle's heads."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    eps = needle_episodes(model.tokenizer, (160,), (0.5,), list(favourite), 0, buffer=0)
    scored = []
    for ep in eps:
        score = torch.zeros(L, H)
        for h in favourite[ep.needle_id]:
            score[h] = 1.0
        scored.append(rh.Scored(ep, [], "", 100.0, ep.needle_span, torch.zeros(0, L, H, dtype=torch.long), score))
    return rh.RetrievalScores(scored)


def test_masking_plan_ranks_heads_on_the_other_needles(model):
    """Each fold's heads come from the other fold's needles only; the random heads avoid that
    ranking's top quarter and differ between draws."""
    A, B = [(10, 1), (11, 2)], [(3, 4), (5, 6)]
    fav = {"parrot": B, "soup": B, "quiz": A, "vault": A}  # folds of the sorted ids: 0 parrot soup, 1 quiz vault
    sc = _fake_scores(model, fav)
    fold_of = rh.folds(fav)
    assert fold_of == {"parrot": 0, "quiz": 1, "soup": 0, "vault": 1}
    plan = rh.masking_plan(sc, fold_of, ks=(2, 5), n_random=3, seed=0)
    assert set(plan[0]["top"][2]) == set(A)  # fold 0 (whose own favourites are B) gets fold 1's
    assert set(plan[1]["top"][2]) == set(B)
    assert plan[0]["scored_on"] == ["quiz", "vault"] and plan[1]["scored_on"] == ["parrot", "soup"]
    L, H = model.cfg.n_layers, model.cfg.n_heads
    for p in plan.values():
        assert len(p["excluded"]) == L * H // 4
        draws = p["random"][5]
        assert len(draws) == 3 and len({tuple(d) for d in draws}) == 3
        for d in draws:
            assert len(set(d)) == 5 and not set(d) & set(p["excluded"])
    with pytest.raises(InterpError, match="at least 2 needles"):
        rh.folds(["soup", "soup"])
    with pytest.raises(InterpError, match="cannot draw"):
        rh.random_heads(2, 2, 3, [(0, 0), (0, 1)], random.Random(0))


def test_real_decode_is_scored_sparsely(model, episode, decoded):
    """On a real retrieved episode some head copies much of the needle and few heads copy at all."""
    from interp.tasks.needle import needle_window, rouge1_recall

    tokens = decoded.tokens[0]
    assert rouge1_recall(model.tokenizer.decode(tokens), episode.answer) > 50
    score = rh.retrieval_score(decoded.top1[0], tokens, episode.tokens, needle_window(episode.tokens, episode.answer_ids))
    assert 0.3 < float(score.max()) <= 1
    assert float((score > 0).float().mean()) < 0.3


def test_masking_test_on_a_small_set(model):
    """End to end, tiny: two needles, each decoded with the other's top heads masked and with
    random draws; every recall is graded (0-100) and the summary has intervals."""
    A, B = [(18, 6), (17, 3), (23, 2)], [(2, 4), (5, 6), (7, 7)]
    sc = _fake_scores(model, {"quiz": A, "parrot": B})
    eps = needle_episodes(model.tokenizer, (160,), (0.5,), ["quiz", "parrot"], 0, chat=True, buffer=0)
    mk = rh.masking_test(model, sc, eps, ks=(3,), n_random=2, max_new=6, progress=False, verify=0)
    assert set(mk.plan[mk.fold_of["quiz"]]["top"][3]) == set(B) and set(mk.plan[mk.fold_of["parrot"]]["top"][3]) == set(A)
    summ = mk.summary(n_boot=200)
    assert summ["n"] == 2 and len(mk.random[3]) == 2 and len(mk.texts["top-3"]) == 2
    for est, lo, hi in (summ["unmasked"], summ["k"][3]["top"], summ["k"][3]["random"]):
        assert 0 <= lo <= hi <= 100 and 0 <= est <= 100


def test_score_bins_get_intervals_only_where_the_bootstrap_is_valid(model):
    """Bin 0 is a count of heads never seen copying: a bootstrap sample has fewer distinct episodes,
    so its percentile interval lies beside the estimate (the stats module refuses it). The bins
    that depend on that count get no interval and a curve over the number of episodes instead; the
    others get intervals that contain their estimates."""
    from interp.stats import bootstrap_indices

    L, H = model.cfg.n_layers, model.cfg.n_heads
    eps = needle_episodes(model.tokenizer, (160,), (0.25, 0.5, 0.75), list(rh_needles()), 0, buffer=0)
    g = torch.Generator().manual_seed(0)
    scored = []
    for ep in eps:  # a few strong heads, and rare small copies scattered over the others
        score = (torch.rand(L, H, generator=g) < 0.02).float() * 0.05
        score[17, 3] = score[18, 7] = 0.8
        scored.append(rh.Scored(ep, [], "", 100.0, ep.needle_span, torch.zeros(0, L, H, dtype=torch.long), score))
    sc = rh.RetrievalScores(scored)
    st = sc._stack()
    with pytest.raises(ValueError, match="does not contain the estimate"):
        bootstrap_indices(len(st), lambda idx: sc.bins(st[idx].mean(0))["0"], n_boot=200)
    ci = sc.bins_ci(n_boot=200)
    assert ci["0"][1:] == (None, None) and ci["(0, 0.1]"][1:] == (None, None)
    for b in ("(0.1, 0.5]", "> 0.5", "retrieval heads"):
        est, lo, hi = ci[b]
        assert lo <= est <= hi
    curve = sc.bins_by_episodes(n_draws=20)
    assert [r["episodes"] for r in curve][-1] == len(st)
    assert curve[0]["bins"]["0"] > curve[-1]["bins"]["0"] == pytest.approx(sc.bins()["0"])


def rh_needles():
    from interp.reports.retrieval_heads import ALL_NEEDLES
    return ALL_NEEDLES


def test_retrieval_heads_notebook_executes(model, tmp_path, monkeypatch):
    """Notebook 03 on the quick setting with fewer random draws: figures and numbers saved; the
    score bins are a distribution, masking gives recalls on the 0-100 scale for the top and the
    random heads, every headline row has a valid interval or none."""
    ns = execute_in_process("03_retrieval_heads.ipynb", tmp_path, {"OVERRIDES": {"n_random": 1, "n_boot": 200}},
                            monkeypatch, {None: model})
    out = tmp_path / "reports" / "notebooks" / "03_retrieval_heads"
    for name in ("scores.png", "recall_k.png", "masking.png", "stability.png", "regions.png"):
        assert (out / name).stat().st_size > 1000, name
    numbers = json.loads((out / "numbers.json").read_text())
    assert abs(sum(numbers["bins"].values()) - 1) < 1e-6 and len(numbers["top10"]) == 10
    assert numbers["meta"]["n_episodes"] == 4
    for k in ("5", "50"):
        for side in ("top", "random"):
            assert all(0 <= x <= 100 for x in numbers["masking"]["k"][k][side]), (k, side)
    for row in numbers["headline"]:
        assert row["ci"] is None or row["ci"][0] <= row["ours"] <= row["ci"][1]
        assert row["verdict"] in ("reproduced", "partly", "not", None)
    # the report page renders the same numbers, rows without an interval included
    from interp.reports import retrieval_heads as report

    meta = {**ns["num"]["meta"], "setting": "quick", "settings": ns["res"]["settings"], "seed": 0, "date": "test",
            "versions": {}, "wall_s": 0.0}
    (tmp_path / "page").mkdir()
    html = report.save(ns["res"], {**ns["num"], "meta": meta}, tmp_path / "page")
    assert "no interval: see why" in html and "share of heads with retrieval score 0" in html


def _scored(ep, score, recall=100.0, top1=None, tokens=()):
    L, H = score.shape
    top1 = torch.zeros(0, L, H, dtype=torch.long) if top1 is None else top1
    return rh.Scored(ep, list(tokens), "", recall, ep.needle_span, top1, score)


def test_frequency_and_stability_follow_their_definitions(model):
    """Activation frequency is the share of RETRIEVED episodes where a head scored > 0 (a failed
    episode does not count); stability's per-needle top-k sets and their pairwise Jaccard overlaps
    are those of the per-needle mean scores; its table holds those means."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    A, B, C = (3, 1), (9, 4), (20, 7)
    fav = {"quiz": [A, B], "parrot": [A, C], "soup": [A, B]}
    eps = needle_episodes(model.tokenizer, (160,), (0.25, 0.75), list(fav), 0, buffer=0)
    scored = []
    for i, ep in enumerate(eps):
        score = torch.zeros(L, H)
        for rank, h in enumerate(fav[ep.needle_id]):
            score[h] = 0.8 - 0.2 * rank + 0.05 * (i % 2)  # A above the needle's other head
        if i == 0:
            score[C] = 0.01  # once, on an episode of quiz: C active in 1 of 6 episodes
        scored.append(_scored(ep, score))
    failed = torch.zeros(L, H)
    failed[(0, 0)] = 1.0  # a failed episode's copies count for nothing
    scored.append(_scored(eps[0], failed, recall=10.0))
    sc = rh.RetrievalScores(scored)
    assert len(sc.kept) == 6
    freq = sc.frequency
    assert float(freq[A]) == 1.0 and float(freq[B]) == pytest.approx(4 / 6) and float(freq[C]) == pytest.approx(3 / 6)
    assert float(freq[0, 0]) == 0.0 and float(freq.sum()) == pytest.approx(1 + 4 / 6 + 3 / 6)
    assert sc.top(3) == [A, B, C]  # the score, ties broken by frequency

    st = sc.stability(k=2)
    assert st["needles"] == ["parrot", "quiz", "soup"] and st["episodes"] == {"parrot": 2, "quiz": 2, "soup": 2}
    assert st["top"] == {"parrot": sorted([A, C]), "quiz": sorted([A, B]), "soup": sorted([A, B])}
    jac = st["jaccard"]
    assert [jac[i][i] for i in range(3)] == [1.0, 1.0, 1.0] and jac[1][2] == 1.0
    assert jac[0][1] == jac[1][0] == pytest.approx(1 / 3)  # {A, C} vs {A, B}
    assert st["mean_jaccard"] == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    assert st["heads"] == sc.top(4)
    means = {n: torch.stack([s.score for s in scored[:6] if s.episode.needle_id == n]).mean(0) for n in fav}
    for row, n in zip(st["table"], st["needles"]):
        assert row == pytest.approx([float(means[n][h]) for h in st["heads"]])


def test_attention_regions_count_where_each_step_looked(model):
    """Each (step, head) pair lands in one region of the prompt by its top-1 position, and counts as
    a copy when that prompt position holds the token the step emitted; failed and retrieved
    episodes are counted apart."""
    L, H = model.cfg.n_layers, model.cfg.n_heads
    ep = needle_episodes(model.tokenizer, (160,), (0.5,), ["quiz"], 0, buffer=0)[0]
    s, e = ep.needle_span
    n0, _ = ep.needle_start_sentence
    c0, _ = ep.context_span
    T = len(ep.tokens)
    heads = [(5, 1), (12, 3)]
    emitted = [int(ep.tokens[s]), int(ep.tokens[s + 1]), 7, 7]
    # step 0: both heads on the answer's first token (two copies); step 1: head 1 on the answer's
    # second token (copy), head 2 on the first token; step 2: the filler and the needle sentence
    # before the answer; step 3: the answer so far (position T) and the question.
    filler = max(c0, 1)
    assert filler < n0 and rh.region_of(ep, filler, ep.needle_span) == "filler"
    where = [[s, s], [s + 1, 0], [filler, n0], [T, T - 1]]
    top1 = torch.zeros(4, L, H, dtype=torch.long)
    for t, (j1, j2) in enumerate(where):
        top1[t][heads[0]], top1[t][heads[1]] = j1, j2
    fail = _scored(ep, torch.zeros(L, H), recall=0.0, top1=top1, tokens=emitted)
    ok = _scored(ep, torch.zeros(L, H), recall=100.0, top1=torch.full((2, L, H), s, dtype=torch.long),
                 tokens=emitted[:2])
    sc = rh.RetrievalScores([fail, ok])
    out = rh.attention_regions(sc, heads)  # the failed episode only
    assert out["episodes"] == 1 and out["pairs"] == 8
    expected = {r: 0 for r in rh.REGIONS}
    for j in (s, s, s + 1, 0, where[2][0], n0, T, T - 1):
        expected[rh.region_of(ep, j, ep.needle_span)] += 1
    assert expected["answer span"] == 3 and expected["first token"] == 1 and expected["answer so far"] == 1
    assert expected["filler"] == 1 and expected["question and template"] == 1
    assert out["share"] == pytest.approx({r: c / 8 for r, c in expected.items()})
    assert out["copy_share"] == pytest.approx(3 / 8)
    both = rh.attention_regions(sc, heads, retrieved=None)
    assert both["episodes"] == 2 and both["pairs"] == 12
    retrieved = rh.attention_regions(sc, heads, retrieved=True)
    assert retrieved["share"]["answer span"] == 1.0 and retrieved["copy_share"] == pytest.approx(2 / 4)


def test_cuda_setting_fits_the_models_window(model):
    """The GPU setting's longest contexts, at the first and last depth, leave room for the answer
    inside SmolLM2's 8,192 positions, and every episode still holds its needle's answer."""
    from interp.reports.retrieval_heads import CUDA
    from interp.tasks.needle import find_span

    assert max(CUDA["lengths"]) <= model.cfg.n_ctx and CUDA["n_random"] >= 5 and len(CUDA["depths"]) == 11
    eps = needle_episodes(model.tokenizer, (max(CUDA["lengths"]),), (0.0, 1.0), list(rh_needles()), 0, chat=True,
                          buffer=CUDA["buffer"])
    for ep in eps:
        assert len(ep) + CUDA["max_new"] <= model.cfg.n_ctx, (ep.needle_id, len(ep))
        assert len(ep) > max(CUDA["lengths"]) - 2 * CUDA["buffer"] - 200, (ep.needle_id, len(ep))
        assert find_span(ep.tokens, ep.answer_ids) == ep.needle_span


def test_stored_gpu_runs_at_long_contexts():
    """The stored H200 runs (benchmarks/): contexts up to 8,192 tokens, every needle at every length
    and depth, the headline contract with intervals that hold their estimates, the masking rows
    over all episodes; the report section shows each run and names its file."""
    import html

    from interp.reports import retrieval_heads as report
    from interp.reports.headline import check_headline
    from interp.reports.stored import render_stored, stored_runs

    runs = stored_runs(report.GPU_RUNS)
    assert [r["file"] for r in runs] == [e[1] for e in report.GPU_RUNS]
    for run in runs:
        m, s = run["meta"], run["meta"]["settings"]
        n = len(s["lengths"]) * len(s["depths"]) * len(s["needles"])
        assert m["device"] == "cuda" and max(s["lengths"]) == 8192 and len(s["needles"]) == 10
        assert len(run["recall_by_episode"]) == n and all(0 <= e["recall"] <= 100 for e in run["recall_by_episode"])
        check_headline("retrieval-heads", run)
        masking = [h for h in run["headline"] if h["name"].startswith("NIAH recall")]
        assert len(masking) == 1 + 2 * len(s["ks"]) and all(h["n"] == n for h in masking)
        for h in run["headline"]:
            if h["ci"] is not None:
                assert h["ci"][0] - 1e-9 <= h["ours"] <= h["ci"][1] + 1e-9, h["name"]
    page = render_stored(runs, report.GPU_RUNS)
    assert all(r["file"] in page for r in runs)
    assert all(html.escape(h["name"]) in page for r in runs for h in r["headline"])
