"""Correct-letter heads (interp.methods.correct_letter, interp.reports.correct_letter) on
Qwen2.5-Coder-0.5B-Instruct (the session fixture ``qwen``): the shared-prefix run agrees with the
bridge's hooked forward, END re-runs agree with hooks, the rank-d_head head is the head and rank 0 is
uniform, DLA adds up to the margin, the class rule does not move with the model's accuracy, the
statistics behave on constructed cases, and the report's headline rows keep their contract."""
import json

import pytest
import torch

from interp.methods import correct_letter as cl
from interp.tasks.mcq import mcq_items, symbol_binding_examples
from notebook_run import execute_in_process
from shared_runs import shared

HEAD = (20, 12)


@pytest.fixture(scope="module")
def mcq(qwen):
    """8 few-shot items: 2 options lists asked about each of their 4 items, one fixed 1-shot prefix."""
    return symbol_binding_examples(qwen, n=8, seed=0, k_shot=1, shot_sets=1, asked_per_list=4)


@pytest.fixture(scope="module")
def run(qwen, mcq):
    return cl.MCQRun(qwen, mcq, verify=2)


def test_prefix_levels_share_what_is_shared():
    tokens = torch.tensor([[1, 2, 3, 4, 5, 9], [1, 2, 3, 4, 6, 9], [1, 2, 3, 7, 5, 9]])
    segs = cl.prefix_levels(tokens, end=5, overhead=0)
    assert segs[-1] == (5, 6) and segs[0][0] == 0
    assert all(a < b for a, b in segs) and all(segs[i][1] == segs[i + 1][0] for i in range(len(segs) - 1))
    # a huge per-forward overhead: one segment before END
    assert cl.prefix_levels(tokens, end=5, overhead=10 ** 6) == [(0, 5), (5, 6)]


def test_run_matches_the_bridge_and_shares_prefixes(run, mcq):
    assert run.verified["max_abs_diff"] <= run.verified["tolerance"]
    assert len(run.levels) >= 3  # the shot prefix and the options lists run once
    # DLA of embedding + every attention layer + every MLP at END = the margin (RMSNorm, no b_U)
    parts = run.dla(run.embed) + sum(run.dla(a) for a in run.attn) + sum(run.dla(m) for m in run.mlp)
    margin = cl.item_scores(run.logits4, run.correct)["margin"]
    assert torch.allclose(parts.float(), margin.float(), atol=1e-3)


def test_end_reruns_match_hooks_and_low_rank_limits(run):
    assert run.check_end(cl.EndVariant("zero", zero=(HEAD, (22, 2))), k=2)["max_abs_diff"] >= 0
    assert run.check_end(cl.EndVariant("mean", set_z=((HEAD, cl.mean_z(run, HEAD)),)), k=1)
    fit = cl.fit_lowrank(run, HEAD)
    l, h = HEAD
    full = cl.lowrank_rows(run, HEAD, fit, run.dh)
    assert (full - run.pattern[l][:, h].float().cpu()).abs().max() < 1e-4  # rank d_head: the head itself
    zero = cl.lowrank_rows(run, HEAD, fit, 0)
    assert torch.allclose(zero, torch.full_like(zero, 1 / zero.shape[-1]))  # rank 0: the uniform row
    out = run.end_logits([cl.lowrank_variant({HEAD: fit}, run.dh), cl.EndVariant("nothing")])
    assert (out - run.logits4.cpu()).abs().max() < 1e-3


def test_partners_and_direct_effects(run, mcq):
    partner = run.partners(mcq.prompts.corrupted_tokens)
    assert partner is not None and (partner != torch.arange(len(mcq))).all()
    assert (mcq.correct[partner] != mcq.correct).all()  # the partner asks another option
    eff = cl.direct_effects(run, partner)
    assert eff["direct"].shape == (run.L, run.H, len(mcq))
    # noising a head with its own output changes nothing
    assert cl.direct_effects(run, torch.arange(len(mcq)))["direct"].abs().max() < 1e-6
    te = cl.total_effects(run, partner, [HEAD, (0, 0)], examples=[0, 1])
    assert te.shape == (2, 2)


def test_ablation_against_random_heads(run):
    res = cl.ablation_test(run, [HEAD, (22, 2)], n_draws=10, seed=0, modes=("zero",))
    row = res["modes"]["zero"]
    for kind in ("uniform", "same layers"):
        rnd = row["random"][kind]
        assert len(rnd["accuracy"]) == 10 and 0 <= rnd["p_value"] <= 1
        assert all(f"{l}.{h}" not in ("20.12", "22.2") for hs in rnd["heads"] for l, h in
                   [map(int, x.split(".")) for x in hs])
    assert row["drop"][1] <= row["drop"][0] <= row["drop"][2]
    same = cl.random_head_sets(24, 14, [HEAD, (22, 2)], 5, seed=1, same_layers=True)
    assert all(sorted(l for l, _ in s) == [20, 22] for s in same)


def _profile(**kw):
    base = dict(correct_label=0.0, other_labels=0.0, items=0.0, asked=0.0, max=0.5, uniform_share=0.01,
                top_label_is_correct=0.25, top_slot_share=0.25, n=60)
    return base | kw


@pytest.mark.parametrize("profile, expected", [
    (_profile(correct_label=0.4, other_labels=0.05, top_label_is_correct=0.9), "correct-letter"),
    (_profile(correct_label=0.1, other_labels=0.1, top_slot_share=0.9), "single-letter"),
    (_profile(items=0.2, asked=0.1), "content gatherer"),
    (_profile(max=0.015, items=0.3), "uniform"),
    (_profile(correct_label=0.4, other_labels=0.05, top_label_is_correct=0.55, n=8), "other"),  # not beyond chance
])
def test_classify(profile, expected):
    assert cl.classify(profile) == expected


def test_class_rule_does_not_depend_on_accuracy():
    """A head that always looks at the label the model emits: on the correct items its top label is
    the correct one whatever the accuracy; the old rule on all items calls it correct-letter only
    when the model is right on >= 75% of them."""
    for accuracy in (0.4, 0.6, 0.9):
        on_correct = _profile(correct_label=0.4, other_labels=0.05, top_label_is_correct=1.0)
        on_all = _profile(correct_label=0.4 * accuracy, other_labels=0.1, top_label_is_correct=accuracy)
        assert cl.classify(on_correct) == "correct-letter"
        assert (cl.classify_by_accuracy_rule(on_all) == "correct-letter") == (accuracy >= 0.75)


def test_variance_explained_on_constructed_points():
    g = torch.Generator().manual_seed(0)
    B = 40
    ordinal = torch.arange(4).expand(B, 4)
    coords = torch.stack([ordinal.float(), torch.zeros(B, 4), torch.zeros(B, 4)], -1)
    coords = coords + 0.05 * torch.randn(B, 4, 3, generator=g)
    letters = torch.randint(0, 26, (B, 4), generator=g)
    eo = cl.variance_explained(coords, ordinal)
    el = cl.variance_explained(coords, letters)
    assert eo[0] > 0.95 and eo[1] <= eo[0] <= eo[2]
    assert el[0] < 0.2  # many label groups explain nothing once adjusted


#: the report's setting for these tests and notebook 04's (every key of QUICK, smaller)
TINY = {"n_discover": 8, "n_eval": 8, "n_mutation": 4, "k_shot": 1, "shot_sets": 1, "n_nodes": 3, "n_total": 1,
        "ranks": (0, 3), "mutations": ("shuffled",), "n_draws": 10, "ablation_modes": ("zero",)}


def test_report_quick_contract(qwen):
    """The report on a tiny setting: every headline row has an interval around its estimate, a
    verdict from the allowed ones, a reason; the held-out set shares no item with discovery."""
    from interp.reports import correct_letter as report

    res = shared(report)(lambda key: qwen, TINY, seed=0)
    num = report.numbers(res)
    words = lambda s: {w for t in s.prompts.clean_text for w in t.replace("'", " ").split()}  # noqa: E731
    items = set(mcq_items(qwen))
    assert not (words(res["D"]) & items) & (words(res["E"]) & items)
    names = [r["name"] for r in num["headline"]]
    assert any("attention on correct label" in n for n in names) and any("ablated" in n for n in names)
    from interp.reports.headline import check_headline

    check_headline("correct-letter", num)
    for r in num["headline"]:
        assert r["ci"] is None or r["ci"][0] - 1e-9 <= r["ours"] <= r["ci"][1] + 1e-9, r
        assert r["why"] and (r["ci"] is not None or "no interval" in r["why"])
    assert str(qwen.cfg.d_head) in num["rank_curve"] and "0" in num["rank_curve"]["joint"]
    _check_slots_and_profiles(num, TINY["n_eval"])
    assert "shuffled" in num["mutations"] and num["key_space"]


def _check_slots_and_profiles(num: dict, n_eval: int) -> None:
    """Accuracy by slot partitions the held-out items (the slots' counts add up to them and their
    weighted accuracies to the accuracy); the held-out head profiles and the attention ratio on
    correct items are read on the correctly answered items only, as many as the accuracy says."""
    slots = num["scores"]["accuracy_by_slot"]
    assert set(slots) == {"0", "1", "2", "3"} and sum(v["n"] for v in slots.values()) == n_eval
    right = sum(v["ours"] * v["n"] for v in slots.values())
    assert right / n_eval == pytest.approx(num["scores"]["accuracy"], abs=1e-6)
    for v in slots.values():
        assert v["ci"][0] - 1e-9 <= v["ours"] <= v["ci"][1] + 1e-9
    n_right = round(right)
    assert num["attention_ratio"]["correct_items"]["n"] == n_right and num["attention_ratio"]["all"]["n"] == n_eval
    for head, profile in num["profile_heldout"].items():
        assert profile["n"] == n_right, head


def test_correct_letter_notebook_executes(qwen, tmp_path, monkeypatch):
    """Notebook 04 on TINY (its analysis shared with the contract test above): held-out accuracy
    per slot, the rank curve with its floor, the random head sets per ablation, every headline
    estimate inside its interval, every figure saved."""
    from interp.reports import correct_letter as report
    from interp.reports.runner import settings_of

    assert settings_of("correct-letter", "quick", overrides=TINY) == TINY
    execute_in_process("04_correct_letter_heads.ipynb", tmp_path, {"OVERRIDES": TINY}, monkeypatch,
                       {None: qwen, report.DEFAULT_MODEL: qwen}, reports=(report,))
    out = tmp_path / "reports" / "notebooks" / "04_correct_letter_heads"
    for name in ("slots.png", "effects.png", "ablation.png", "rank.png", "mutations.png", "key_space.png"):
        assert (out / name).stat().st_size > 1000, name
    numbers = json.loads((out / "numbers.json").read_text())
    assert numbers["scores"]["accuracy"] > 0.25
    assert {"0", "knocked out (zero)"} <= set(numbers["rank_curve"]["joint"])
    assert len(numbers["ablation"]["zero"]["random"]["uniform"]["accuracy"]) == TINY["n_draws"]
    _check_slots_and_profiles(numbers, TINY["n_eval"])
    for row in numbers["headline"]:
        assert row["ci"] is None or row["ci"][0] <= row["ours"] <= row["ci"][1], row["name"]


def test_stored_gpu_run_of_the_full_setting():
    """The stored H200 run of the full setting (benchmarks/): 200 held-out items, the headline
    contract, intervals that hold their estimates, 20 random draws per ablation control whose
    permutation p-values follow from the stored accuracies; the report section shows it."""
    import html

    from interp.reports import correct_letter as report
    from interp.reports.headline import check_headline
    from interp.reports.stored import render_stored, stored_runs
    from interp.stats import permutation_pvalue

    (run,) = stored_runs(report.GPU_RUNS)
    m, s = run["meta"], run["meta"]["settings"]
    assert m["device"] == "cuda" and s["n_eval"] >= 200 and s["n_draws"] >= 10
    check_headline("correct-letter", run)
    for h in run["headline"]:
        if h["ci"] is not None:
            assert h["ci"][0] - 1e-9 <= h["ours"] <= h["ci"][1] + 1e-9, h["name"]
    _check_slots_and_profiles(run, s["n_eval"])
    base = run["scores"]["accuracy"]
    for table in ("ablation", "ablation_nodes"):
        for mode in s["ablation_modes"]:
            row = run[table][mode]
            ours = row["drop"][0]
            for kind, r in row["random"].items():
                assert len(r["accuracy"]) == s["n_draws"]
                assert r["p_value"] == pytest.approx(permutation_pvalue(ours, [base - a for a in r["accuracy"]]), abs=1e-6)
    page = render_stored([run], report.GPU_RUNS)
    assert run["file"] in page and all(html.escape(h["name"]) in page for h in run["headline"])
