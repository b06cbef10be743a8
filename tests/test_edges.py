"""Edge-level circuits: the edge graph, exact edge patching against its hooked reference, the
approximations' gradients against finite differences, and the audit's statistics."""
import json
import random

import pytest
import torch

from interp import edges as E
from interp import graph
from interp.edge_attribution import edge_attribution
from interp.edge_sweep import edge_patch
from interp.errors import ComponentError
from interp.random_models import random_model, random_prompts
from interp.reference import EDGE_HOOKS, _edge_inputs, edge_patch_reference, readout, sender_contributions
from notebook_run import execute_in_process
from shared_runs import shared


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-qwen2", "tiny-llama"])
def tiny(request):
    model = random_model(request.param, "cpu", torch.float32)
    return model, random_prompts(model, batch=3, n_pos=9, ragged=True)


def test_the_edge_graph_of_a_model(model):
    cfg = model.cfg
    L, H, Hkv = cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads
    ss, rs, es = E.senders(cfg), E.receivers(cfg), E.edges(cfg)
    assert len(ss) == 1 + L * (H + 1) and len(rs) == L * (H + 2 * Hkv + 1) + 1
    # a receiver at layer l reads the embedding, every head and MLP before it; layer l's MLP also
    # reads layer l's heads; the logits read everything
    per_layer = sum((H + 2 * Hkv) * (1 + l * (H + 1)) + (1 + (l + 1) * H + l) for l in range(L))
    assert len(es) == per_layer + len(ss) == 70_651
    names = {e.name for e in es}
    assert "L3H2->L4H0.q" in names and "L4H0->L4H0.q" not in names and "L4H0->MLP4" in names
    assert "MLP4->MLP4" not in names and "MLP29->logits" in names and "embed->L0H2.k" in names
    assert E.parse_receiver(cfg, "L23H3.q") == E.Receiver("q", 23, 3)
    for bad in ("L23H3.z", "L30H0.q", "L2H3.k", "MLPx", "resid"):
        with pytest.raises(ComponentError):
            E.parse_receiver(cfg, bad)


def test_exact_edge_patching_equals_its_reference_on_every_family(tiny):
    """Every edge of a 2-layer model of each family, both directions, against one hooked forward
    per edge (fp32 within 1e-5)."""
    model, prompts = tiny
    for direction in ("denoise", "noise"):
        ours = edge_patch(model, prompts, direction=direction, progress=False)
        ref = edge_patch_reference(model, prompts, ours.edges, direction)
        torch.testing.assert_close(ours.values, ref, atol=1e-5, rtol=0)
        assert ours.meta["verified"]["cells"] == 2 and ref.abs().max() > 0.05


def test_batching_edges_across_receivers_changes_no_score(tiny):
    """The sweep packs the edges of many receivers (of different layers, cut across chunks) into
    one forward: every chunking gives the scores of one edge per forward and of one receiver at a
    time, and an out-of-memory halving replays the same edges (GQA: tiny-qwen2, tiny-llama)."""
    from interp.edge_sweep import EdgeSweep

    model, prompts = tiny
    all_edges = E.edges(model.cfg)
    sweep = EdgeSweep(model, prompts)
    one = sweep.run(all_edges, progress=False, max_edges=1)
    for size in (7, 64, len(all_edges)):
        chunks = sweep.plan(all_edges, size)
        assert sorted(i for c in chunks for _, part in c for i in part) == list(range(len(all_edges)))
        assert max(sum(len(p) for _, p in c) for c in chunks) <= size
        torch.testing.assert_close(sweep.run(all_edges, progress=False, max_edges=size), one, atol=2e-6, rtol=0)
    # one receiver at a time, each in a fresh sweep, with the edges in a shuffled order
    shuffled = list(range(len(all_edges)))
    random.Random(1).shuffle(shuffled)
    by_r = {}
    for i in shuffled:
        by_r.setdefault(all_edges[i].receiver, []).append(i)
    for r, idx in by_r.items():
        alone = EdgeSweep(model, prompts).run([all_edges[i] for i in idx], progress=False)
        torch.testing.assert_close(alone, one[idx], atol=2e-6, rtol=0)
    mixed = [e for e in all_edges if e.receiver.kind != "logits"]
    halves = EdgeSweep._split(sweep.plan(mixed, len(mixed))[0], 5)
    assert [i for c in halves for _, p in c for i in p] == list(range(len(mixed))) and all(
        sum(len(p) for _, p in c) <= 5 for c in halves)


def test_exact_edge_patching_on_the_real_model(model, prompts):
    """A sample of SmolLM2's edges of every receiver kind against the reference."""
    cfg = model.cfg
    rng = random.Random(0)
    kinds = {}
    for e in E.edges(cfg, [E.Receiver("logits"), E.Receiver("q", 27, 4), E.Receiver("k", 26, 1),
                           E.Receiver("v", 28, 2), E.Receiver("mlp", 25)]):
        kinds.setdefault(e.receiver.kind, []).append(e)
    sample = [e for es in kinds.values() for e in rng.sample(es, 4)]
    ours = edge_patch(model, prompts, sample, progress=False, verify=0)
    ref = edge_patch_reference(model, prompts, sample)
    torch.testing.assert_close(ours.values, ref, atol=1e-5, rtol=0)


def test_exact_edge_patching_on_real_qwen(qwen):
    """Qwen2.5-Coder-0.5B (q/k/v biases, 14 query heads sharing 2 key/value heads): two sampled
    edges of every receiver kind, on two IOI prompts, against the two-forward reference."""
    from interp.tasks import ioi_examples

    prompts = ioi_examples(qwen, n=2, seed=0)
    rng = random.Random(1)
    kinds = {}
    for e in E.edges(qwen.cfg, [E.Receiver("logits"), E.Receiver("q", 20, 9), E.Receiver("k", 18, 1),
                                E.Receiver("v", 21, 0), E.Receiver("mlp", 19)]):
        kinds.setdefault(e.receiver.kind, []).append(e)
    sample = [e for es in kinds.values() for e in rng.sample(es, 2)]
    ours = edge_patch(qwen, prompts, sample, progress=False, verify=0)
    ref = edge_patch_reference(qwen, prompts, sample)
    assert ref.abs().max() > 1e-3, "the sample should hold edges that move the metric"
    torch.testing.assert_close(ours.values, ref, atol=1e-5, rtol=0)


def test_eap_is_the_derivative_of_edge_patching(tiny):
    """EAP's score of an edge is d/de metric(x_r + e Delta_s) at e = 0: a central finite difference
    through the hooked reference agrees, for every receiver kind."""
    model, prompts = tiny
    eap = edge_attribution(model, prompts, method="eap", progress=False)
    c_base = sender_contributions(model, prompts.corrupted_tokens)
    c_src = sender_contributions(model, prompts.clean_tokens)
    picked = {}
    for i, e in enumerate(eap.edges):
        picked.setdefault(e.receiver.kind, i)
    for kind, i in picked.items():
        e = eap.edges[i]
        s, r = e.sender, e.receiver
        d = (c_src["embed"] - c_base["embed"] if s.kind == "embed" else
             c_src["mlp", s.layer] - c_base["mlp", s.layer] if s.kind == "mlp" else
             (c_src["head", s.layer] - c_base["head", s.layer])[:, :, s.head])
        name = (f"blocks.{model.cfg.n_layers - 1}.hook_resid_post" if r.kind == "logits"
                else EDGE_HOOKS[r.kind].format(r.layer))
        head = None if r.kind in ("mlp", "logits") else r.head

        def at(eps):
            def hook(act, hook=None):
                act = act.clone()
                if head is None:
                    act += eps * d
                else:
                    act[:, :, head] += eps * d
                return act
            with _edge_inputs(model):
                return float(readout(model, prompts.corrupted_tokens, prompts, hooks=[(name, hook)]))

        slope = (at(1e-3) - at(-1e-3)) / 2e-3
        assert eap.values[i].item() == pytest.approx(slope, abs=2e-3, rel=2e-3), (kind, e.name)


def test_every_method_scores_the_same_edges_on_the_same_scale(tiny):
    model, prompts = tiny
    edges_ = E.edges(model.cfg)[:40]
    exact = edge_patch(model, prompts, edges_, progress=False, verify=0)
    for method in ("eap", "eap-ig", "eap-ig-activations", "atp"):
        approx = edge_attribution(model, prompts, edges_, method=method, steps=2, progress=False)
        assert approx.edges == exact.edges and torch.isfinite(approx.values).all()
        assert 0.1 < approx.values.abs().max() / exact.values.abs().max() < 10, method
    with pytest.raises(ComponentError, match="unknown edge attribution method"):
        edge_attribution(model, prompts, edges_, method="acdc")


def test_edge_scores_as_a_circuit_file(tiny, tmp_path):
    model, prompts = tiny
    scores = edge_patch(model, prompts, progress=False, verify=0)
    circuit = scores.to_circuit("tiny", "random", top=10, seed=0, n_prompts=len(prompts))
    circuit.save(tmp_path / "c.json")
    again = graph.Circuit.load(tmp_path / "c.json")
    assert len(again.edges) == 10
    by_name = scores.by_name()
    for e in again.edges:
        assert e["score"] == pytest.approx(by_name[f'{e["source"]}->{e["target"]}'])
    q = [n for n in again.nodes if n["input"] == "q"]
    assert all(n["kind"] == "head" and n["id"].endswith(".q") for n in q)
    raw = json.loads((tmp_path / "c.json").read_text())
    raw["nodes"][0]["input"] = "z"
    with pytest.raises(Exception, match="input must be null"):
        graph.Circuit.from_dict(raw)


def test_circuit_evaluation_agrees_with_edge_patching(tiny):
    """All edges kept: the clean run; none: the corrupted run; all but one: the clean run with that
    edge noised (exact patching, direction "noise")."""
    from interp.edge_circuits import circuit_metric, faithfulness_curve

    model, prompts = tiny
    all_edges = E.edges(model.cfg)
    clean = float(readout(model, prompts.clean_tokens, prompts))
    corrupted = float(readout(model, prompts.corrupted_tokens, prompts))
    assert circuit_metric(model, prompts, set(all_edges), all_edges) == pytest.approx(clean, abs=1e-5)
    assert circuit_metric(model, prompts, set(), all_edges) == pytest.approx(corrupted, abs=1e-4)
    picks = [e for e in all_edges if e.receiver.kind in ("q", "mlp", "logits")][::9][:4]
    noised = edge_patch(model, prompts, picks, direction="noise", progress=False, verify=0)
    for e, score in zip(picks, noised.values):
        assert circuit_metric(model, prompts, set(all_edges) - {e}, all_edges) == pytest.approx(clean + float(score), abs=1e-4)
    # a path carries information only if every edge of it is kept: one embedding edge alone changes
    # a head whose own outgoing edges all carry corrupted values, so nothing changes downstream
    embed_edge = next(e for e in all_edges if e.sender.kind == "embed" and e.receiver.kind == "v")
    assert circuit_metric(model, prompts, {embed_edge}, all_edges) == pytest.approx(corrupted, abs=1e-4)
    curve = faithfulness_curve(model, prompts, edge_patch(model, prompts, all_edges, progress=False, verify=0),
                               fractions=(0.0, 0.25, 1.0))
    f = [p["faithfulness"] for p in curve["points"]]
    assert f[0] == 0 and f[-1] == pytest.approx(1)
    assert curve["cpr"] == pytest.approx(0.25 * (f[0] + f[1]) / 2 + 0.75 * (f[1] + f[2]) / 2)
    assert curve["cmd"] == pytest.approx(0.25 * (1 + abs(1 - f[1])) / 2 + 0.75 * abs(1 - f[1]) / 2)


#: the report's setting for the test below and notebook 06's: the edges into the logits, 2 prompts
SMALL_REPORT = {"n_prompts": 2, "movers": 0, "methods": ("eap",), "fractions": (0.0, 0.05, 1.0), "shortlist": 10}


def test_the_edges_report_on_the_real_model(model, tmp_path):
    """The report's audit on a small scope (the edges into the logits, two IOI prompts): rank
    statistics within their ranges, the curve's ends pinned, the shortlist's exact scores equal to
    the audit's for the edges both scored, and the headline rows filled."""
    from interp.reports import edges as report

    res = shared(report)(lambda key: model, {**report.QUICK, **SMALL_REPORT}, seed=0)
    case = res["cases"][0]
    assert len(case["exact"]) == 1 + 30 * 10 and {e.receiver.kind for e in case["exact"].edges} == {"logits"}
    a = case["audits"]["eap"]
    assert -1 <= a["spearman"] <= 1 and -1 <= a["kendall"] <= 1 and 0 <= a["top_k_overlap"][50] <= 1
    f = [p["faithfulness"] for p in case["curves"]["eap"]["points"]]
    assert f[0] == 0 and f[-1] == pytest.approx(1)
    exact, short = case["exact"].by_name(), case["shortlist"]["scores"].by_name()
    assert len(short) == 10 and all(short[k] == pytest.approx(exact[k], abs=1e-5) for k in short if k in exact)
    num = report.numbers(res)
    (row,) = num["headline"]
    assert row["ci"][0] <= row["ours"] <= row["ci"][1] and row["n"] == len(case["exact"])
    json.dumps(num)
    page = report.save(res, num, tmp_path)  # the page carries the stored GPU runs beside this one
    assert "Every edge, on a GPU machine" in page and all(r["label"] in page for r in report.stored_gpu_audits())


def test_edge_circuits_notebook_executes(model, tmp_path, monkeypatch):
    """Notebook 06 on the report setting of the test above (its analysis shared): the audit's
    statistics are in range, the exact circuit is a valid circuit file with edge scores, and cutting
    its strongest edge moves the logit difference by that edge's score."""
    from interp.reports import edges as report

    execute_in_process("06_edge_circuits.ipynb", tmp_path, {"OVERRIDES": SMALL_REPORT}, monkeypatch,
                       {None: model}, reports=(report,))
    out = tmp_path / "reports" / "notebooks" / "06_edge_circuits"
    for name in ("scatter.png", "curves.png", "gpu_curves.png"):
        assert (out / name).stat().st_size > 1000, name
    circuit = graph.Circuit.load(out / "circuit.json")
    scores = [e["score"] for e in circuit.edges]
    assert len(scores) == 30 and all(s is not None for s in scores)
    numbers = json.loads((out / "numbers.json").read_text())
    for a in numbers["cases"][0]["audits"].values():
        assert -1 <= a["spearman"] <= 1
    cut = numbers["cut"]
    assert cut["cut"] != pytest.approx(cut["clean"], abs=1e-3), "cutting the strongest edge changes the metric"


def test_eap_ig_keeps_one_run_of_gradients_at_a_time(tiny, monkeypatch):
    """EAP-IG-activations makes (1 + 2 L) x steps gradient runs; they are averaged as they come, so
    the runs before the last are freed (kept all at once, SmolLM2's took ~90 GiB of a GPU)."""
    import gc
    import weakref

    import interp.edge_attribution as ea

    model, prompts = tiny
    edges_ = E.edges(model.cfg)[:30]
    expected = edge_attribution(model, prompts, edges_, method="eap-ig-activations", steps=2, progress=False)
    real, alive = ea._gradients, []

    def tracked(*args, **kwargs):
        gc.collect()
        older = alive[:-1]  # every run but the previous one must be gone by now
        assert not any(ref() is not None for ref in older), "earlier runs' gradients are still held"
        out = real(*args, **kwargs)
        alive.append(weakref.ref(next(iter(out.values()))))
        return out

    monkeypatch.setattr(ea, "_gradients", tracked)
    got = edge_attribution(model, prompts, edges_, method="eap-ig-activations", steps=2, progress=False)
    assert len(alive) == (1 + 2 * model.cfg.n_layers) * 2
    assert torch.allclose(got.values, expected.values, atol=1e-6, rtol=1e-5)


def test_edge_scores_are_each_edges_dot_product(tiny):
    """``_scores`` (all senders' changes times groups of receivers' gradients) gives each edge its
    own Delta_s . g_r / B, for edges in any order and any subset."""
    import random

    from interp.edge_attribution import _delta, _scores
    from interp.reference import sender_contributions

    model, prompts = tiny
    c_base = sender_contributions(model, prompts.corrupted_tokens)
    c_src = sender_contributions(model, prompts.clean_tokens)
    edges_ = E.edges(model.cfg)
    edges_ = random.Random(0).sample(edges_, len(edges_) // 2)
    g = torch.Generator().manual_seed(0)
    B, T = prompts.clean_tokens.shape
    grads = {r: torch.randn(B, T, model.cfg.d_model, generator=g) for r in dict.fromkeys(e.receiver for e in edges_)}
    got = _scores(edges_, c_src, c_base, grads, B, receivers_per_product=3)
    want = torch.tensor([float((_delta(c_src, c_base, e.sender) * grads[e.receiver]).sum() / B) for e in edges_])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_rank_correlations_equal_their_definitions_with_ties():
    """Average ranks with ties (rank = #smaller + (#equal + 1) / 2), Spearman as the Pearson
    correlation of those ranks, Kendall's tau-b over every pair: each against its plain definition."""
    from interp.methods.edge_audit import _ranks, kendall, spearman

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 7, (60,), generator=g).double()  # many ties
    y = x + torch.randint(0, 4, (60,), generator=g).double()
    want = torch.stack([(x < v).sum() + ((x == v).sum() + 1) / 2 for v in x]).double()
    assert torch.equal(_ranks(x), want)
    rx, ry = want, torch.stack([(y < v).sum() + ((y == v).sum() + 1) / 2 for v in y]).double()
    pearson = float(((rx - rx.mean()) * (ry - ry.mean())).sum() / ((rx - rx.mean()).norm() * (ry - ry.mean()).norm()))
    assert spearman(x, y) == pytest.approx(pearson, abs=1e-12)
    i, j = torch.triu_indices(60, 60, 1)
    dx, dy = torch.sign(x[i] - x[j]), torch.sign(y[i] - y[j])
    tau_b = float((dx * dy).sum() / ((dx != 0).sum().double() * (dy != 0).sum().double()).sqrt())
    assert kendall(x, y) == pytest.approx(tau_b, abs=1e-12)


def test_stored_gpu_audits_are_every_edge_and_consistent(tmp_path):
    """The stored H200 runs the report and notebook 06 show: every run found, each one over every
    edge of its model (the approximations audited on all of them, the exact scores re-checked
    through the hooked reference within 1e-4), curves pinned at f = 0 with no edge and f = 1 with
    all; a folder without them gives a page that says so instead of failing."""
    from types import SimpleNamespace

    from interp.reports import edges as report

    shapes = {"smollm2-135m-instruct": (30, 9, 3), report.QWEN: (24, 14, 2)}  # layers, heads, key/value heads

    runs = report.stored_gpu_audits()
    assert [r["file"] for r in runs] == [name for _, _, name, _, _ in report.GPU_RUNS]
    for r, (key, task, *_rest) in zip(runs, report.GPU_RUNS):
        assert r["label"] == report.case_label(key, task)
        L, H, Hkv = shapes[key]
        assert r["n_edges"] == len(E.edges(SimpleNamespace(n_layers=L, n_heads=H, n_key_value_heads=Hkv)))
        assert all(a["n_edges"] == r["n_edges"] for a in r["audits"].values())
        assert set(r["curves"]) == {"exact", *r["audits"]}
        assert r["verified"]["max_abs_diff"] <= 1e-4
        for c in r["curves"].values():
            f = [p["faithfulness"] for p in c["points"]]
            assert f[0] == 0 and f[-1] == pytest.approx(1)
    page = report.render_stored(runs, "")
    assert all(r["label"] in page for r in runs) and "nan" not in page.lower()
    # a number of the table as measured: SmolLM2 IOI, EAP's top-50 overlap with the exact top 50
    assert runs[0]["audits"]["eap"]["top_k_overlap"]["50"] == pytest.approx(0.38)
    assert "0.38" in page
    assert report.stored_gpu_audits(tmp_path) == [] and "No stored GPU run" in report.render_stored([], "")
