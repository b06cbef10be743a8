"""``interp reproduce ioi``: discover the IOI circuit of a model, evaluate it on held-out prompts, report.

Discovery (path patching, ``methods.ioi.discover``) runs on ``tasks.ioi_examples(split="discover")``;
faithfulness, completeness, minimality, the controls and the figures run on
``split="heldout"`` prompts: other names, places, objects and templates (means for the knockout
from a further held-out p_ABC set). Every headline number has a bootstrap 95% interval over the
held-out prompts.

Writes into ``out_dir/ioi/`` (through ``interp.reports.runner``): ``report.html`` (path-patching
heat maps, the circuit graph, the head classes with their evidence, the held-out evaluation beside
random head sets, the completeness scatter, the minimality bars, name-mover attention against the
IO logit, the backup-name-mover knockout, our numbers beside the paper's), ``numbers.json``,
``circuit.json`` (schema interp.circuit/1) and one ``stage_*.json`` Result per stage.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from interp.reports import stored
from interp.reports.headline import headline_table, inside, miss_from
from interp.reports.page import fig_to_img, html_page, new_figure, table

TITLE = "IOI circuit (Wang et al. 2022): discovery, held-out faithfulness, completeness, minimality"
DEFAULT_MODEL = None
#: greedy = [runs, iterations, sampled candidates] of the paper's greedy completeness search
#: discovery dominates the cost (four path-patching sweeps, ~15 s of one core per prompt): quick
#: discovers on 4 prompts, standard on 8; evaluation (forwards only) is cheap by comparison
QUICK = {"n_discover": 4, "n_eval": 16, "n_reference": 32, "n_random": 2, "greedy": [1, 1, 2], "n_random_sets": 10}
STANDARD = {"n_discover": 8, "n_eval": 24, "n_reference": 24, "n_random": 4, "greedy": [1, 1, 3],
            "n_random_sets": 10}
FULL = {"n_discover": 48, "n_eval": 96, "n_reference": 128, "n_random": 30, "greedy": [3, 4, 5],
        "n_random_sets": 30}
#: ``--device cuda``: the full setting's sizes on a GPU.
CUDA = dict(FULL)
SETTINGS = {"quick": QUICK, "standard": STANDARD, "full": FULL, "cuda": CUDA}
#: The full setting run on a GPU machine without network, stored in benchmarks/ (``interp.reports.stored``).
GPU_RUNS = (("full setting on an H200: discovery on 48 prompts, 96 held out, 30 random draws",
             "gpu_h200_ioi_full.json", "interp reproduce ioi --device cuda"),)

#: Wang et al. 2022, GPT-2 small (100,000 prompts), as quoted in shared/papers/ioi.md
PAPER = {"F_model": 3.56, "frac_io_gt_s": 0.993, "n_heads": 26, "n_head_positions": 0.011,
         "faithfulness": 0.87, "faithfulness_gap": 0.46, "kept_without_movers": 0.95}

#: How the template/name-order fix moved the numbers, measured once (forwards only, default split,
#: 64 prompts, seed 0, knockout means from 64 prompts of seed 1, SmolLM2-135M-Instruct): the
#: model's logit difference and the committed 16-head circuit (circuits/smollm2-135m-instruct_ioi_interp.json,
#: found with the old generator) under knockout. "before": the old generator (template k = i % 8,
#: ABBA = i % 2: even templates only in BABA order, odd ones only in ABBA, 8 of the 16
#: combinations); "after": every combination (this version). Discovery itself was not re-run on
#: the old generator (its cost); the held-out rows above are all on the fixed generator.
GENERATOR_FIX: dict = {
    "numbers": {
        "template x order combinations in 64 prompts": {"before": 8, "after": 16},
        "F(M): mean logit difference [95% interval]": {"before": "4.34 [3.45, 5.15]", "after": "4.77 [4.00, 5.46]"},
        "F(M), BABA prompts": {"before": 6.55, "after": 5.84},
        "F(M), ABBA prompts": {"before": 2.13, "after": 3.70},
        "fraction logit(IO) > logit(S)": {"before": 0.92, "after": 0.92},
        "committed circuit's F(C)/F(M) [95% interval]": {"before": "0.90 [0.81, 1.01]", "after": "0.79 [0.70, 0.90]"},
    },
    "how": ("The old generator confounded order with template: its ABBA prompts were only the odd templates, "
            "which the model finds harder, so the order effect looked 3x (6.55 vs 2.13); with every template "
            "in both orders it is 1.6x. The circuit committed from the old generator keeps less of the logit "
            "difference on the fixed prompts (0.90 -> 0.79, intervals overlap): part of its old faithfulness "
            "came from the 8 combinations it was found on."),
}


def steps(settings: dict) -> int:
    return 4


def run(load, settings: dict, seed: int = 0, tick=lambda step: None) -> dict:
    """Discovery on the "discover" split, evaluation on the "heldout" split: the raw objects the
    report is made from. ``load(key)`` gives the model (``interp.reports.runner.Models``)."""
    from interp.methods import ioi
    from interp.tasks import ioi_examples

    model = load(DEFAULT_MODEL)
    discover_ps = ioi_examples(model, n=settings["n_discover"], seed=seed, split="discover")
    heldout = ioi_examples(model, n=settings["n_eval"], seed=seed, split="heldout")
    reference = ioi_examples(model, n=settings["n_reference"], seed=seed + 1, split="heldout")
    discover_ref = ioi_examples(model, n=settings["n_reference"], seed=seed + 1, split="discover")
    timings = {}
    t, c = time.time(), time.process_time()
    found = ioi.discover(model, discover_ps, progress=False)
    timings["discover"] = (time.time() - t, time.process_time() - c)
    tick("discover")
    t, c = time.time(), time.process_time()
    kn_discover = ioi.Knockouts(model, discover_ps, found, discover_ref)
    greedy = ioi.greedy_sets(kn_discover, *settings["greedy"], seed=seed)
    in_sample = {"F_model": kn_discover.model_(), "F_circuit": kn_discover.F_C()}
    timings["greedy (discovery prompts)"] = (time.time() - t, time.process_time() - c)
    tick("greedy")
    t, c = time.time(), time.process_time()
    kn = ioi.Knockouts(model, heldout, found, reference)
    evaluation = ioi.evaluate(model, heldout, found, settings["n_random"], greedy, seed,
                              n_random_sets=settings["n_random_sets"], knockouts=kn)
    timings["evaluate (held-out)"] = (time.time() - t, time.process_time() - c)
    tick("evaluate")
    t, c = time.time(), time.process_time()
    movers = [h for h, cl in found.classes.items() if cl == "name mover"]
    mover_like = [h for h, cl in found.classes.items() if "mover" in cl]
    backup = ioi.backup_experiment(kn, movers, seed) if movers else None
    attention = ioi.mover_attention_and_logits(model, heldout, mover_like) if mover_like else {}
    timings["movers and backup"] = (time.time() - t, time.process_time() - c)
    tick("movers")
    return {"model": model, "discover": discover_ps, "heldout": heldout, "found": found, "evaluation": evaluation,
            "in_sample": in_sample, "greedy": greedy, "backup": backup, "attention": attention,
            "timings": timings, "settings": settings, "seed": seed}


def _label(h) -> str:
    return f"{h[0]}.{h[1]}"


def _verdict(x: float, good: float, some: float) -> str:
    return "reproduced" if x >= good else "partly" if x >= some else "not"


def numbers(res: dict) -> dict:
    """Everything the report states, JSON-ready."""
    from interp.methods.ioi import path_effect, ratio_ci
    from interp.stats import bootstrap_ci, detectable_difference, permutation_pvalue, proportion_ci
    from interp.tasks.prompts import model_device

    model, found, ev = res["model"], res["found"], res["evaluation"]
    heldout = res["heldout"]
    n = len(heldout)
    pp = ev["per_prompt"]
    with torch.no_grad():
        logits = model(heldout.clean_tokens.to(model_device(model)))
        at = logits[torch.arange(n), heldout.answer_pos].softmax(-1)
        p_io = at[torch.arange(n), heldout.answer_ids].cpu()
    f_model = pp["F_model"]
    ld, lo, hi = bootstrap_ci(f_model.tolist())
    io_gt_s = proportion_ci(int((f_model > 0).sum()), n)
    heads = []
    for h, c in sorted(found.classes.items()):
        row = {"head": _label(h), "class": c,
               **{f"score_{k}": float(v[h]) for k, v in found.scores.items() if k != "null"}}
        if h in found.copy:
            row["copy"], row["negative_copy"] = found.copy[h]
        if h in res["attention"]:
            row.update({f"attn_{k}": float(res["attention"][h][f"attn_{k}"].mean()) for k in ("IO", "S1", "S2")})
        heads.append(row)
    stages = {}
    for name, r in found.stages.items():
        e = path_effect(r)
        top = e.abs().flatten().topk(8).indices
        stages[name] = {"receivers": r.meta.get("receivers"), "verified": r.meta.get("verified"),
                        "top": [{"head": _label((int(i) // e.shape[1], int(i) % e.shape[1])),
                                 "effect": float(e.flatten()[i])} for i in top]}
    # held-out faithfulness against random head sets of the circuit's size
    kept = [r["kept"] for r in ev["random_sets"]]
    rs_mean, rs_lo, rs_hi = bootstrap_ci(kept) if kept else (float("nan"), float("nan"), float("nan"))
    p_random = permutation_pvalue(ev["faithfulness"], kept) if kept else float("nan")
    ins = ratio_ci(res["in_sample"]["F_circuit"], res["in_sample"]["F_model"], res["seed"])
    # minimality: heads whose interval excludes 0
    mini = ev["minimality"]
    n_min = sum(1 for v in mini.values() if v["ci"][0] > 0 or v["ci"][1] < 0)
    share_min = proportion_ci(n_min, len(mini)) if mini else (float("nan"),) * 3
    # name movers: attention to IO against the IO logit, per prompt (the top mover)
    movers = [h for h, c in sorted(found.classes.items()) if c == "name mover"]
    corr = {}
    for h, a in res["attention"].items():
        x, y = a["attn_IO"].tolist(), a["logit_IO"].tolist()
        stat = lambda idx, x=x, y=y: _pearson([x[int(i)] for i in idx], [y[int(i)] for i in idx])  # noqa: E731
        corr[_label(h)] = dict(zip(("r", "low", "high"), bootstrap_ci([float(i) for i in range(len(x))], stat=stat)))
    top_mover = max(movers, key=lambda h: float(path_effect(found.stages["logits"])[h])) if movers else None
    backup = res["backup"]
    sd = float(f_model.std()) if n > 1 else float("nan")
    faith_verdict = _verdict(ev["faithfulness"], 0.8, 0.5)
    # a circuit found on few prompts may be incomplete: that is this run's deviation from the paper
    discovery_cause = ("model" if len(res["discover"]) >= 32 else
                       f"deviation: the circuit found on {len(res['discover'])} prompts (the paper: thousands)")
    headline = [
        {"name": "F(M): mean logit difference, held-out prompts", "ours": ld, "ci": [lo, hi], "n": n,
         "paper": f'{PAPER["F_model"]} (GPT-2 small)', "verdict": None,
         "why": "the model's own IOI ability on templates and names discovery never saw; the baseline", "miss": None},
        {"name": "faithfulness F(C)/F(M), held-out prompts", "ours": ev["faithfulness"], "ci": ev["faithfulness_ci"],
         "n": n, "paper": f'{PAPER["faithfulness"]} (GPT-2 small)', "verdict": faith_verdict,
         "why": (f"{ev['n_heads']} heads found on {len(res['discover'])} other prompts; evaluated on other templates, "
                 f"names, places and objects"),
         "miss": miss_from(faith_verdict, discovery_cause, inside(ev["faithfulness_ci"], PAPER["faithfulness"]))},
        {"name": f"random {ev['n_heads']}-head sets: F/F(M), held-out (control)", "ours": rs_mean,
         "ci": [rs_lo, rs_hi], "n": len(kept), "paper": "n/a (control)", "verdict": None,
         "why": (f"{len(kept)} random sets kept at every position; best {max(kept):.2f}, the circuit {ev['faithfulness']:.2f} "
                 f"(permutation p = {p_random:.3f}); interval over draws") if kept else "no random sets drawn", "miss": None},
        {"name": "faithfulness F(C)/F(M), discovery prompts (in-sample)", "ours": ins["mean"], "ci": ins["ci"],
         "n": len(res["discover"]), "paper": f'{PAPER["faithfulness"]} (GPT-2 small, in-sample)', "verdict": _verdict(ins["mean"], 0.8, 0.5),
         "why": "the prompts the circuit was found on: compare with the held-out row for overfitting",
         "miss": miss_from(_verdict(ins["mean"], 0.8, 0.5), discovery_cause, inside(ins["ci"], PAPER["faithfulness"]))},
    ]
    if backup is not None:
        kb = backup["kept"]
        headline.append({"name": "LD kept with the name movers knocked out, F(M \\ NM)/F(M)", "ours": kb["mean"],
                         "ci": kb["ci"], "n": n, "paper": f'~{PAPER["kept_without_movers"]} (GPT-2 small: drops ~5%)',
                         "verdict": _verdict(kb["mean"], 0.85, 0.6),
                         "why": ("backup name movers compensate" if kb["mean"] >= 0.85 else
                                 "the model's backup is weaker than GPT-2 small's"),
                         "miss": miss_from(_verdict(kb["mean"], 0.85, 0.6), "model",
                                           inside(kb["ci"], PAPER["kept_without_movers"]))})
    if top_mover is not None and _label(top_mover) in corr:
        cr = corr[_label(top_mover)]
        corr_verdict = "reproduced" if cr["low"] > 0.3 else "partly" if cr["low"] > 0 else "not"
        headline.append({"name": f"name mover {_label(top_mover)}: corr(attention to IO, IO logit it writes)",
                         "ours": cr["r"], "ci": [cr["low"], cr["high"]], "n": n, "paper": "positive (Fig. 3, GPT-2 small 9.9)",
                         "verdict": corr_verdict,
                         "why": "the more it attends to IO, the more IO logit it writes: it copies the name it attends to"
                         if cr["low"] > 0 else "no clear copying relation on these prompts",
                         # undecided: the interval holds the 0.3 the verdict turns on
                         "miss": miss_from(corr_verdict, "model", inside([cr["low"], cr["high"]], 0.3))})
    if mini:
        headline.append({"name": "circuit heads with minimality > 0 (interval excludes 0)", "ours": share_min[0],
                         "ci": [share_min[1], share_min[2]], "n": len(mini), "paper": "every head (Fig., GPT-2 small)",
                         "verdict": _verdict(share_min[0], 0.8, 0.5),
                         "why": f"{n_min} of {len(mini)} heads; the rest add nothing measurable once their class is gone "
                                f"({n} held-out prompts)",
                         # a head passes when its own interval excludes 0: more prompts, more power
                         "miss": miss_from(_verdict(share_min[0], 0.8, 0.5), "sample size", True)})
    strip = lambda d: {k: v for k, v in d.items() if k != "heads"}  # noqa: E731
    return {
        "meta": {"model_key": model.interp_key, "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads,
                 "n_discover": len(res["discover"]), "n_eval": n, "corruption": "abc (p_ABC)",
                 "splits": "discovery: split='discover'; evaluation: split='heldout' (other names, places, objects, templates)",
                 "prepend_bos": heldout.prepend_bos, "discovery_settings": found.settings,
                 "class_threshold": found.threshold,
                 "timings_s": {k: {"wall": w, "cpu": c} for k, (w, c) in res["timings"].items()},
                 "n_forwards_evaluation": ev["n_forwards"]},
        "headline": headline,
        "detectable": (f"{n} held-out prompts: a change of F by {detectable_difference(n, sd=sd):.2f} logits "
                       f"({detectable_difference(n, sd=sd) / abs(ld):.0%} of F(M)) is detectable (paired, 80% power)"
                       if n > 1 and ld else f"{n} prompts"),
        "baseline": {"F_model": ld, "F_model_ci": [lo, hi], "frac_io_gt_s": io_gt_s[0], "frac_io_gt_s_ci": list(io_gt_s[1:]),
                     "mean_p_io": float(p_io.mean())},
        "evaluation": {k: ev[k] for k in ("F_model", "F_circuit", "F_empty", "faithfulness", "faithfulness_ci",
                                          "faithfulness_gap", "faithfulness_gap_ci", "F_circuit_ci", "n_heads",
                                          "n_head_positions")},
        "in_sample": {"faithfulness": ins["mean"], "ci": ins["ci"], "n": len(res["discover"])},
        "random_sets": [{"heads": [_label(h) for h in r["heads"]], "kept": r["kept"], "F": r["F"]} for r in ev["random_sets"]],
        "random_sets_p": p_random,
        "classes": {c: [_label(h) for h in hs] for c, hs in found.by_class().items()},
        "completeness": {c: strip(v) for c, v in ev["classes"].items()},
        "random_subsets": [{"heads": [_label(h) for h in r["heads"]], **strip(r)} for r in ev["random"]],
        "greedy": [{"heads": [_label(h) for h in r["heads"]], **strip(r)} for r in ev["greedy"]],
        "minimality": {_label(h): v for h, v in mini.items()},
        "mover_attention_logit_corr": corr,
        "backup": None if backup is None else {
            "movers": [_label(h) for h in backup["movers"]], "F_model": backup["F_model"],
            "F_minus_movers": backup["F_minus_movers"], "kept": backup["kept"],
            "candidates": [{"head": _label(h), "dla_change": v,
                            "dla_before": float(backup["dla_before"][h]), "dla_after": float(backup["dla_after"][h])}
                           for h, v in backup["backup"]]},
        "heads": heads,
        "stages": stages,
        "generator_fix": GENERATOR_FIX,
        "paper": PAPER,
    }


def _pearson(x: list[float], y: list[float]) -> float:
    n = len(x)
    mx, my = sum(x) / n, sum(y) / n
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y))
    sxx, syy = sum((a - mx) ** 2 for a in x), sum((b - my) ** 2 for b in y)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else 0.0


# ------------------------------------------------------------------------------------ figures
def plot_stages(found) -> "Figure":
    """One heat map of path effects (layer x head) per stage."""
    from interp.methods.ioi import path_effect

    fig = new_figure(4.2 * len(found.stages), 5.5)
    for i, (name, r) in enumerate(found.stages.items()):
        plot_effect(fig, fig.add_subplot(1, len(found.stages), i + 1), path_effect(r), f"heads -> {name}")
    return fig


def plot_effect(fig, ax, effect: torch.Tensor, title: str) -> None:
    """A layer x head heat map of path effects, symmetric colour scale around 0."""
    lim = float(effect.abs().max()) or 1.0
    im = ax.imshow(effect.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", origin="lower")
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    fig.colorbar(im, ax=ax, fraction=0.05)


def plot_circuit(circuit) -> "Figure":
    from interp import graph

    fig = new_figure(7, 6)
    graph.draw(circuit, ax=fig.add_subplot())
    return fig


def plot_completeness(num: dict) -> "Figure":
    """Wang et al.'s completeness scatter: F(C \\ K) against F(M \\ K) for class, random and greedy K."""
    fig = new_figure(5.5, 5)
    ax = fig.add_subplot()
    groups = [("class K", list(num["completeness"].values()), "tab:blue", "o"),
              ("random K", num["random_subsets"], "tab:gray", "."),
              ("greedy K (fitted on discovery)", num["greedy"], "tab:red", "^")]
    xs = []
    for label, rows, colour, marker in groups:
        if rows:
            x = [r["F_M_minus_K"] for r in rows]
            y = [r["F_C_minus_K"] for r in rows]
            ax.scatter(x, y, c=colour, marker=marker, label=label, s=40 if marker != "." else 60)
            xs += x + y
    if xs:
        lo, hi = min(xs + [0]), max(xs)
        ax.plot([lo, hi], [lo, hi], "k--", lw=0.8, label="complete: F(C\\K) = F(M\\K)")
    for c, r in num["completeness"].items():
        ax.annotate(c, (r["F_M_minus_K"], r["F_C_minus_K"]), fontsize=7)
    ax.set_xlabel("F(M \\ K)  (model minus K)")
    ax.set_ylabel("F(C \\ K)  (circuit minus K)")
    ax.set_title("completeness on held-out prompts", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def plot_minimality(num: dict) -> "Figure":
    """Minimality of each head, |F(C \\ (K_v \\ {v})) - F(C \\ K_v)|, with its 95% interval, by class."""
    rows = sorted(num["minimality"].items(), key=lambda kv: (kv[1]["class"], kv[0]))
    fig = new_figure(max(5, 0.45 * len(rows) + 2), 4)
    ax = fig.add_subplot()
    classes = sorted({v["class"] for _, v in rows})
    colours = {c: f"C{i}" for i, c in enumerate(classes)}
    for i, (h, v) in enumerate(rows):
        lo, hi = v["ci"]
        # interval of the signed difference, drawn around the signed value
        ax.bar(i, v["signed"], color=colours[v["class"]])
        ax.errorbar(i, v["signed"], yerr=[[v["signed"] - lo], [hi - v["signed"]]], color="k", capsize=2, lw=0.8)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([h for h, _ in rows], rotation=90, fontsize=8)
    ax.set_ylabel("F(C\\(K_v\\{v})) - F(C\\K_v)")
    ax.set_title("minimality (held-out prompts, 95% intervals); colour = class", fontsize=9)
    for c in classes:
        ax.bar([], [], color=colours[c], label=c)
    ax.legend(fontsize=7)
    return fig


def plot_mover_attention(res: dict) -> "Figure":
    """Per prompt: a mover's attention from END to IO (S2) against the logit it writes for IO (S)."""
    att = res["attention"]
    heads = sorted(att)[:4]
    fig = new_figure(4 * max(1, len(heads)), 3.8)
    for i, h in enumerate(heads):
        ax = fig.add_subplot(1, max(1, len(heads)), i + 1)
        a = att[h]
        ax.scatter(a["attn_IO"], a["logit_IO"], s=14, label="IO", c="tab:blue")
        ax.scatter(a["attn_S2"], a["logit_S"], s=14, label="S (attention to S2)", c="tab:orange")
        ax.set_xlabel("attention from END")
        ax.set_ylabel("logit written for the name")
        ax.set_title(f"{res['found'].classes[h]} {_label(h)}", fontsize=9)
        ax.legend(fontsize=7)
    return fig


def plot_backup(num: dict) -> "Figure":
    """Direct effect (DLA on the logit difference) of the movers and the backup candidates, before
    and after the name movers are knocked out."""
    b = num["backup"]
    fig = new_figure(7, 3.8)
    ax = fig.add_subplot()
    rows = b["candidates"]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["dla_before"] for r in rows], width=0.4, label="model")
    ax.bar([i + 0.2 for i in x], [r["dla_after"] for r in rows], width=0.4, label="name movers knocked out")
    ax.set_xticks(list(x))
    ax.set_xticklabels([r["head"] for r in rows], fontsize=8)
    ax.set_ylabel("direct effect on logit(IO) - logit(S)")
    ax.set_title(f"backup candidates (largest DLA gain); F kept {b['kept']['mean']:.2f}", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def plot_heldout(num: dict) -> "Figure":
    """The held-out faithfulness of the circuit beside random head sets of its size."""
    fig = new_figure(5, 3.5)
    ax = fig.add_subplot()
    kept = [r["kept"] for r in num["random_sets"]]
    ax.scatter([0] * len(kept), kept, c="tab:gray", label=f"random {num['evaluation']['n_heads']}-head sets")
    ev = num["evaluation"]
    lo, hi = ev["faithfulness_ci"]
    ax.errorbar([1], [ev["faithfulness"]], yerr=[[ev["faithfulness"] - lo], [hi - ev["faithfulness"]]], fmt="o",
                c="tab:red", capsize=4, label="the circuit (95% interval)")
    ax.axhline(1, color="k", lw=0.6, ls="--")
    ax.set_xticks([0, 1])
    ax.set_xticklabels(["random sets", "circuit"])
    ax.set_ylabel("F / F(M) on held-out prompts")
    ax.legend(fontsize=7)
    return fig


def render(num: dict, figures: dict[str, str]) -> str:
    m, b, ev = num["meta"], num["baseline"], num["evaluation"]
    paper = num["paper"]
    fmt_t = ", ".join(f'{k} {v["cpu"]:.0f}/{v["wall"]:.0f}' for k, v in m["timings_s"].items())
    setup = table([("model", m["model_key"]),
                   ("prompts", f'discovery {m["n_discover"]} (split "discover"), evaluation {m["n_eval"]} (split '
                               f'"heldout": other names, places, objects, templates), seed {m["seed"]}, '
                               f'corruption {m["corruption"]}, BOS {m["prepend_bos"]}'),
                   ("setting", m["setting"]), ("date", m["date"]),
                   ("run time (CPU s / wall s)", fmt_t),
                   ("class threshold (pattern score)", f'{m["class_threshold"]:.3f} (0.99 quantile of the heads\' null scores)'),
                   ("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items()))])
    ci = lambda c: f"[{c[0]:.2f}, {c[1]:.2f}]"  # noqa: E731
    side = table([
        ("F(M): mean logit diff (held-out)", f'{b["F_model"]:.2f} {ci(b["F_model_ci"])}', paper["F_model"]),
        ("fraction logit(IO) > logit(S)", f'{b["frac_io_gt_s"]:.2f} {ci(b["frac_io_gt_s_ci"])}', paper["frac_io_gt_s"]),
        ("mean P(IO)", b["mean_p_io"], 0.49),
        ("circuit heads", ev["n_heads"], paper["n_heads"]),
        ("share of (head, position) pairs in the circuit", ev["n_head_positions"], paper["n_head_positions"]),
        ("faithfulness F(C)/F(M), held-out", f'{ev["faithfulness"]:.2f} {ci(ev["faithfulness_ci"])}', paper["faithfulness"]),
        ("faithfulness F(C)/F(M), discovery prompts", f'{num["in_sample"]["faithfulness"]:.2f} {ci(num["in_sample"]["ci"])}',
         paper["faithfulness"]),
        ("|F(M) - F(C)|, held-out", f'{ev["faithfulness_gap"]:.2f} {ci(ev["faithfulness_gap_ci"])}', paper["faithfulness_gap"]),
        ("F(empty): every head mean-ablated", ev["F_empty"], "n/a"),
    ], ("quantity", f'ours ({m["model_key"]}) [95% interval]', "paper (GPT-2 small)"))
    head_cols = [k for k in num["heads"][0]] if num["heads"] else []
    heads = table([tuple(r.get(k, "") for k in head_cols) for r in num["heads"]], tuple(head_cols))
    comp = table([(c, ", ".join(num["classes"][c]), v["F_C_minus_K"], v["F_M_minus_K"], v["incompleteness"],
                   ci(v["difference_ci"])) for c, v in num["completeness"].items()],
                 ("class K", "heads", "F(C \\ K)", "F(M \\ K)", "incompleteness", "F(C\\K) - F(M\\K) interval"))
    other = table([("random", ", ".join(r["heads"]), r["incompleteness"], ci(r["difference_ci"])) for r in num["random_subsets"]]
                  + [("greedy", ", ".join(r["heads"]), r["incompleteness"], ci(r["difference_ci"])) for r in num["greedy"]],
                  ("subset", "heads K", "incompleteness", "difference interval"))
    mini = table([(h, v["class"], v["minimality"], ci(v["ci"]), v["relative"]) for h, v in num["minimality"].items()],
                 ("head v", "class", "minimality", "signed difference interval", "relative to F(C)"))
    stages = table([(name, ", ".join(f'{t["head"]} ({t["effect"]:+.3f})' for t in s["top"]))
                    for name, s in num["stages"].items()], ("stage", "top heads (path effect)"))
    corr = table([(h, c["r"], ci([c["low"], c["high"]])) for h, c in num["mover_attention_logit_corr"].items()],
                 ("mover", "corr(attention to IO, IO logit)", "95% interval"))
    backup = ""
    if num["backup"]:
        bk = num["backup"]
        backup = (figures.get("backup", "") + table([("name movers knocked out (mean-ablated at END)", ", ".join(bk["movers"])),
                                                     ("F(M)", bk["F_model"]), ("F(M \\ NM)", bk["F_minus_movers"]),
                                                     ("kept", f'{bk["kept"]["mean"]:.2f} {ci(bk["kept"]["ci"])}')])
                  + table([(r["head"], r["dla_before"], r["dla_after"], r["dla_change"]) for r in bk["candidates"]],
                          ("head", "DLA before", "DLA after", "change")))
    gen = num.get("generator_fix") or {}
    gen_html = ('<p class="note">Not measured in this version.</p>' if not gen else
                table([(k, v.get("before"), v.get("after")) for k, v in gen["numbers"].items()],
                      ("quantity", "old generator (8 of 16 template x order combinations)", "fixed generator (all 16)"))
                + f'<p class="note">{gen.get("how", "")}</p>')
    note = ('<p class="note">Path effect = (M_path - M_clean) / (M_corrupt - M_clean): 1 means the path carries the '
            "whole effect of the corruption. Classes: the top heads of each stage (at most k per class, effect at least "
            "min_effect). Receivers are query heads: under grouped-query attention the group's keys/values are patched "
            "and the group's other query heads keep their clean outputs. Stage-3 heads are induction or duplicate-token "
            "heads only when that pattern score clears the class threshold (the 0.99 quantile of every head's best "
            "attention at an arbitrary offset) and beats the other; stage-4 heads need a previous-token score above it; "
            "otherwise they are 'unclassified'. Knockout = mean over p_ABC per template and position, from a separate "
            "held-out p_ABC set. M \\ K ablates K at its class positions (as the paper's code), C \\ K removes K. "
            "Random K: each circuit head with probability 1/2 (the paper's code); greedy K: the paper's sampled greedy "
            "search, fitted on the discovery prompts. Random head sets are kept at every position (more than the "
            "circuit's heads get). The paper's numbers are GPT-2 small over 100,000 prompts.</p>")
    return html_page(f'IOI circuit of {m["model_key"]}', [
        ("Setup", setup), ("Headline", headline_table(num["headline"]) + f'<p class="note">Detectable: {num["detectable"]}.</p>'),
        ("Our numbers beside the paper's", side + note),
        ("Held-out faithfulness against random head sets", figures["heldout"]),
        ("Path-patching stages (discovery prompts)", figures["stages"] + stages),
        ("The circuit", figures["circuit"] + heads),
        ("Completeness (held-out)", figures["completeness"] + comp + other),
        ("Minimality (held-out)", figures["minimality"] + mini),
        ("Name movers: attention against the logit they write (held-out)", figures.get("movers", "") + corr),
        ("Backup name movers", backup or '<p class="note">No name movers found.</p>'),
        ("The template/name-order fix: how the numbers moved", gen_html),
        ("The full setting on a GPU machine (stored run)", stored.section(GPU_RUNS)),
    ])


def save(res: dict, num: dict, folder) -> str:
    """Writes circuit.json and one Result per path-patching stage; returns the page."""
    from interp.methods.ioi import to_circuit

    folder = Path(folder)
    circuit = to_circuit(res["found"], res["model"].interp_key, res["seed"], len(res["discover"]),
                         extra_provenance={"split": "discover", "faithfulness_heldout": num["evaluation"]["faithfulness"],
                                           "faithfulness_heldout_ci": num["evaluation"]["faithfulness_ci"],
                                           "n_heldout": len(res["heldout"])})
    circuit.save(folder / "circuit.json")
    for name, r in res["found"].stages.items():
        r.save(folder / f"stage_{name.replace(' ', '_').replace('/', '_')}.json")
    figures = {"stages": fig_to_img(plot_stages(res["found"]), "path patching stages"),
               "circuit": fig_to_img(plot_circuit(circuit), "circuit"),
               "heldout": fig_to_img(plot_heldout(num), "held-out faithfulness vs random sets"),
               "completeness": fig_to_img(plot_completeness(num), "completeness scatter"),
               "minimality": fig_to_img(plot_minimality(num), "minimality bars")}
    if res["attention"]:
        figures["movers"] = fig_to_img(plot_mover_attention(res), "mover attention vs logit")
    if num["backup"]:
        figures["backup"] = fig_to_img(plot_backup(num), "backup name movers")
    return render(num, figures)
