"""``interp reproduce circuit-reuse``: IOI vs Colored Objects head reuse (Merullo et al.) per model.

Per model: path patching of both tasks (``methods.circuit_reuse.stages``), the top-2% overlap
against a null of random top-k sets, the intervention heads chosen by what they do on IOI, and the
intervention on Colored Objects prompts disjoint from the path-patching ones, in two variants and
with the paper's controls (each component alone, random heads over >= 10 draws, content-gatherer
blocking and the same blocking on random heads, the downstream mover check), and an error
analysis. Every accuracy has its Wilson interval; every change its paired bootstrap interval.

Writes into ``out_dir/circuit-reuse/``: ``report.html``, ``numbers.json``, and per model a circuit
file of the top heads of both tasks (schema interp.circuit/1) and one Result per stage and task.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from interp.reports import stored
from interp.reports.ioi import plot_effect
from interp.reports.headline import headline_table, inside, miss_from
from interp.reports.page import fig_to_img, html_page, new_figure, table

TITLE = "Circuit component reuse (Merullo et al. 2024): IOI vs Colored Objects"
DEFAULT_MODEL = "smollm2-135m-instruct"
#: path patching dominates the cost (six sweeps; measured ~280 s of one core for 4 prompts per task,
#: CO prompts being ~2.5x longer than IOI's); the intervention re-runs only the END position per
#: condition, so its prompt count is cheap to raise. Standard (what ``make run`` runs, ~4 minutes of one core)
#: path-patches on 2 prompts per task: its head ranking is a small-sample one (the report says so).
QUICK = {"n_prompts": 2, "n_select": 8, "n_intervention": 24, "n_random": 10, "models": ["smollm2-135m-instruct"]}
STANDARD = {"n_prompts": 2, "n_select": 32, "n_intervention": 150, "n_random": 10, "models": ["smollm2-135m-instruct"]}
FULL = {"n_prompts": 32, "n_select": 64, "n_intervention": 300, "n_random": 20,
        "models": ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]}
#: ``--device cuda``: the full setting's sizes on a GPU.
CUDA = dict(FULL)
SETTINGS = {"quick": QUICK, "standard": STANDARD, "full": FULL, "cuda": CUDA}
#: The full setting run on a GPU machine without network, stored in benchmarks/ (``interp.reports.stored``).
GPU_RUNS = (("full setting on an H200: 300 Colored Objects prompts, 32 path-patching prompts per task, 20 random draws, "
             "SmolLM2 and Qwen", "gpu_h200_circuit_reuse_full.json", "interp reproduce circuit-reuse --device cuda"),)

#: Merullo et al. (ICLR 2024), GPT-2 medium, as quoted in shared/papers/circuit-reuse.md
PAPER = {"overlap": 0.78, "co_accuracy": 0.496, "after": 0.937, "negative_only": 0.781, "inhibition_only": 0.815,
         "random_mean": 0.499, "random_sd": 0.010, "gatherers_blocked": 0.35, "movers_wrong": -0.087,
         "movers_correct": 0.027}


def _label(h) -> str:
    return f"{h[0]}.{h[1]}"


def _acc(correct: torch.Tensor) -> dict:
    from interp.stats import proportion_ci

    k, n = int(correct.sum()), len(correct)
    p, lo, hi = proportion_ci(k, n)
    return {"accuracy": p, "ci": [lo, hi], "k": k, "n": n}


def _change(after: torch.Tensor, before: torch.Tensor, seed: int = 0) -> dict:
    from interp.stats import bootstrap_ci

    est, lo, hi = bootstrap_ci(after.float().tolist(), paired_with=before.float().tolist(), seed=seed)
    return {"change": est, "ci": [lo, hi]}


def model_numbers(model, res: dict) -> dict:
    """The JSON-ready numbers of one model's run (``methods.circuit_reuse.run``)."""
    import statistics

    from interp.methods.circuit_reuse import mover_check
    from interp.stats import bootstrap_ci, permutation_pvalue

    iv, ps = res["intervention"], res["co_prompts"]
    cond = iv["conditions"]
    base = cond["baseline"]
    kinds = base["kind"]
    errors = {"wrong colour from the list (fixable)": int((kinds == 1).sum()),
              "another colour": int((kinds == 2).sum()), "not a colour": int((kinds == 3).sum())}
    n_err = int((kinds != 0).sum())
    rows = {}
    for name, c in cond.items():
        if name.startswith("random "):
            continue
        fixable = (kinds == 1)
        rows[name] = {**_acc(c["correct"]), "accuracy_colours": float(c["correct_colours"].float().mean()),
                      "change": _change(c["correct"], base["correct"], res["seed"]),
                      "fixed": int((~base["correct"] & c["correct"]).sum()),
                      "new_mistakes": int((base["correct"] & ~c["correct"]).sum()),
                      "fixable_fixed": int((fixable & c["correct"]).sum())}
    random = {}
    for variant, names in iv["random"].items():
        if not names:
            continue
        accs = [float(cond[n]["correct"].float().mean()) for n in names]
        m, lo, hi = bootstrap_ci(accs)
        random[variant] = {"accuracies": accs, "mean": m, "ci": [lo, hi],
                           "sd": statistics.pstdev(accs), "min": min(accs), "max": max(accs)}
    for name, r in rows.items():
        variant = "block" if name.startswith("block") else name.split(":")[0]
        if variant in random and name != "baseline":
            greater = variant != "block"
            r["p_vs_random"] = permutation_pvalue(r["accuracy"], random[variant]["accuracies"], greater=greater)
    movers = {}
    for name in cond:
        if name.endswith(": all"):
            mc = mover_check(iv, ps, name)
            movers[name] = {what: {"before": float(b.mean()), "after": float(a.mean()), **_change(a, b, res["seed"])}
                            for what, (b, a) in mc.items()}
    heads = res["heads"]
    ov, null = res["overlap"], res["overlap_null"]
    ioi_correct = res["ioi_correct"]
    return {
        "model_key": model.interp_key, "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads,
        "n_path_patching": res["n_prompts"], "n_intervention": res["n_intervention"], "n_select": res["n_select"],
        "co_accuracy": rows["baseline"], "ioi_accuracy": _acc(ioi_correct),
        "errors": {"n_errors": n_err, **errors},
        "overlap": {s: {k: ([_label(h) for h in v] if isinstance(v, list) else v) for k, v in o.items()}
                    for s, o in ov.items()},
        "overlap_null": null, "overlap_interval": res.get("overlap_interval", {"ci": None, "why": "not computed"}),
        "heads": {"inhibition": [_label(h) for h in heads["inhibition"]], "negative": [_label(h) for h in heads["negative"]],
                  "by_rank": [_label(h) for h in heads["by_rank"]], "movers": [_label(h) for h in heads["movers"]],
                  "mover_attention": heads["mover_attention"],
                  "candidates": [{**{k: v for k, v in c.items() if k != "head"}, "head": _label(c["head"])}
                                 for c in heads["candidates"]]},
        "gatherers": [_label(h) for h in iv["gatherers"]], "co_movers": [_label(h) for h in iv["movers"]],
        "conditions": rows, "random": random, "mover_check": movers, "s2_like": iv["s2_like"],
        "end_runner_verified": iv["verified"],
        "baselines": {t: {"clean": r["logits"].clean, "corrupted": r["logits"].corrupted}
                      for t, r in res["stages"].items()},
        "receivers": {t: {s: [_label(h) for h in (r.meta.get("receiver_heads") or [])] for s, r in st.items()}
                      for t, st in res["stages"].items()},
        "timings_s": res.get("timings_s"),
    }


def headline_rows(x: dict) -> list[dict]:
    """The index page's rows of one model."""
    key, rows, rnd = x["model_key"], x["conditions"], x["random"]
    base = rows["baseline"]
    fixable = x["errors"]["wrong colour from the list (fixable)"]
    out = [{"name": f"CO accuracy, no intervention ({key})", "ours": base["accuracy"], "ci": base["ci"],
            "n": base["n"], "paper": f'{PAPER["co_accuracy"]} (GPT-2 medium)', "verdict": None,
            "why": (f"the model's own ability; {x['errors']['n_errors']} errors, {fixable} of them another colour of "
                    "the list (the only kind the intervention can fix); chance is 1/3"), "miss": None}]
    for variant, label in (("attend", "END row := 1/2 on each wrong colour"), ("move", "mass on OQ moved to the wrong colours")):
        name = f"{variant}: all"
        if name not in rows:
            out.append({"name": f"CO accuracy after the intervention, {variant} ({key})", "ours": base["accuracy"],
                        "ci": base["ci"], "n": base["n"], "paper": f'{PAPER["after"]} (GPT-2 medium)', "verdict": "not",
                        "why": "no head passed the IOI checks (inhibition / negative mover), nothing to intervene on",
                        "miss": "model"})
            continue
        r = rows[name]
        p = r.get("p_vs_random", float("nan"))
        gain_lo = r["change"]["ci"][0]
        verdict = ("reproduced" if r["accuracy"] >= 0.8 and gain_lo > 0 and p < 0.05 else
                   "partly" if gain_lo > 0 and p < 0.05 else "not")
        why = (f"{label}; change {r['change']['change']:+.3f} {_ci(r['change']['ci'])}, random heads "
               f"{rnd[variant]['mean']:.3f} (p = {p:.3f}); fixed {r['fixed']}, new mistakes {r['new_mistakes']}")
        few_fixable = fixable < 0.3 * max(1, x["errors"]["n_errors"])
        if verdict != "reproduced":
            why += "; " + ("few fixable errors" if few_fixable else "the heads do not carry IOI's inhibition over to CO here")
        cause = ("model" if few_fixable or variant == "attend" else
                 "deviation: the mass-preserving edit is ours (the paper sets the END row to 1/2 on each wrong colour)")
        out.append({"name": f"CO accuracy after the intervention, {variant} ({key})", "ours": r["accuracy"], "ci": r["ci"],
                    "n": r["n"], "paper": f'{PAPER["after"]} (GPT-2 medium, 4 heads)', "verdict": verdict, "why": why,
                    "miss": miss_from(verdict, cause, inside(r["ci"], PAPER["after"]))})
    if "attend" in rnd:
        ra = rnd["attend"]
        out.append({"name": f"CO accuracy, the same intervention on random heads ({key})", "ours": ra["mean"],
                    "ci": ra["ci"], "n": len(ra["accuracies"]),
                    "paper": f'{PAPER["random_mean"]} ± {PAPER["random_sd"]} (GPT-2 medium)', "verdict": None,
                    "why": f"control, {len(ra['accuracies'])} draws, range {ra['min']:.3f}-{ra['max']:.3f}; interval over draws",
                    "miss": None})
    if "block: content gatherers" in rows:
        r = rows["block: content gatherers"]
        rb = rnd.get("block", {})
        p = r.get("p_vs_random", float("nan"))
        drop_hi = r["change"]["ci"][1]
        verdict = ("reproduced" if drop_hi < 0 and p < 0.05 and r["accuracy"] <= base["accuracy"] - 0.1 else
                   "partly" if drop_hi < 0 and p < 0.05 else "not")
        out.append({"name": f"CO accuracy, content gatherers' attention to the question blocked ({key})",
                    "ours": r["accuracy"], "ci": r["ci"], "n": r["n"], "paper": f'{PAPER["gatherers_blocked"]} (GPT-2 medium)',
                    "verdict": verdict,
                    "why": (f"gatherers {', '.join(x['gatherers'])}; change {r['change']['change']:+.3f} {_ci(r['change']['ci'])}; "
                            f"random blocking {rb.get('mean', float('nan')):.3f} (p = {p:.3f})"),
                    "miss": miss_from(verdict, "deviation: content gatherers chosen by path-patching rank, without "
                                               "attention evidence", inside(r["ci"], PAPER["gatherers_blocked"]))})
    ov = x["overlap"]["all stages"]
    null = x["overlap_null"]["all stages"]
    verdict = ("reproduced" if ov["overlap"] >= 0.6 and null["layer-matched"]["p"] < 0.05 else
               "partly" if null["uniform"]["p"] < 0.05 else "not")
    oi = x["overlap_interval"]
    interval = (f"bootstrap over the path-patching prompts ({x['n_path_patching']} per task, resampled per task; "
                f"stage 2-3 receivers kept; bias-corrected), resampled median {oi['boot_median']:.2f}"
                if oi["ci"] is not None else f"no interval: {oi['why']}")
    out.append({"name": f"overlap of the top-2% heads of IOI and CO, all stages ({key})", "ours": ov["overlap"],
                "ci": oi["ci"], "n": x["n_path_patching"], "paper": f'{PAPER["overlap"]} (GPT-2 medium)', "verdict": verdict,
                "why": (f"{interval}; random top-k sets: uniform mean {null['uniform']['mean']:.2f} "
                        f"(p = {null['uniform']['p']:.3f}), layer-matched {null['layer-matched']['mean']:.2f} "
                        f"(p = {null['layer-matched']['p']:.3f})"),
                "miss": miss_from(verdict, "model", inside(oi["ci"], PAPER["overlap"]) or x["n_path_patching"] < 16)})
    if "attend: all" in x["mover_check"]:
        mc = x["mover_check"]["attend: all"]
        w, c = mc["wrong"], mc["correct"]
        verdict = ("reproduced" if w["ci"][1] < 0 and c["ci"][0] > 0 else "partly" if w["ci"][1] < 0 else "not")
        out.append({"name": f"CO movers' attention to the wrong colours after the intervention, change ({key})",
                    "ours": w["change"], "ci": w["ci"], "n": x["n_intervention"],
                    "paper": f'{PAPER["movers_wrong"]} (to the correct one {PAPER["movers_correct"]:+})',
                    "verdict": verdict,
                    "why": f"movers {', '.join(x['co_movers'])}; to the correct colour {c['change']:+.3f} {_ci(c['ci'])}",
                    "miss": miss_from(verdict, "model", inside(w["ci"], 0.0) or inside(c["ci"], 0.0))})
    return out


def _ci(c) -> str:
    return f"[{c[0]:.3f}, {c[1]:.3f}]"


def plot_model(res: dict) -> "Figure":
    """Path effects of both tasks (rows) for each stage (columns)."""
    from interp.methods.ioi import path_effect

    names = list(res["stages"]["ioi"])
    fig = new_figure(4 * len(names), 8)
    for row, task in enumerate(("ioi", "co")):
        for col, name in enumerate(names):
            ax = fig.add_subplot(2, len(names), row * len(names) + col + 1)
            plot_effect(fig, ax, path_effect(res["stages"][task][name]), f"{task.upper()}: heads -> {name}")
    return fig


def plot_conditions(x: dict) -> "Figure":
    """CO accuracy per condition with Wilson intervals, random-head draws as dots."""
    rows = x["conditions"]
    names = list(rows)
    fig = new_figure(max(6, 0.7 * len(names) + 3), 4)
    ax = fig.add_subplot()
    for i, n in enumerate(names):
        r = rows[n]
        ax.errorbar(i, r["accuracy"], yerr=[[r["accuracy"] - r["ci"][0]], [r["ci"][1] - r["accuracy"]]], fmt="o",
                    capsize=3, c="tab:red" if n != "baseline" else "k")
    for j, (variant, rv) in enumerate(x["random"].items()):
        xs = len(names) + j
        ax.scatter([xs] * len(rv["accuracies"]), rv["accuracies"], c="tab:gray", s=12)
        names = names + [f"random heads, {variant}"]
    ax.axhline(1 / 3, color="k", ls=":", lw=0.8, label="chance (1/3)")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=35, ha="right", fontsize=7)
    ax.set_ylabel("CO accuracy (full vocabulary)")
    ax.set_title(f"{x['model_key']}: interventions and controls ({x['n_intervention']} prompts)", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def render(num: dict, figures: dict[str, str]) -> str:
    m = num["meta"]
    sections = [("Setup", table([
        ("models", ", ".join(x["model_key"] for x in num["models"])),
        ("prompts", f'{m["n_prompts"]} IOI (corruption: S2 -> IO) and {m["n_prompts"]} Colored Objects per model for path '
                    f'patching; {m["n_select"]} other IOI prompts for the intervention heads\' evidence; '
                    f'{m["n_intervention"]} other Colored Objects prompts (another seed) for the intervention; '
                    f'seed {m["seed"]}'),
        ("setting", m["setting"]), ("date", m["date"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items()))])),
                ("Headline", headline_table(num["headline"]) + f'<p class="note">Detectable: {num["detectable"]}.</p>')]
    rows = []
    for x in num["models"]:
        c = x["conditions"]
        get = lambda n: f'{c[n]["accuracy"]:.3f} {_ci(c[n]["ci"])}' if n in c else "n/a"  # noqa: E731
        rnd = x["random"].get("attend")
        rows.append((x["model_key"], f'{x["ioi_accuracy"]["accuracy"]:.3f}', get("baseline"),
                     f'{x["overlap"]["all stages"]["overlap"]:.3f}'
                     + (f' {_ci(x["overlap_interval"]["ci"])}' if x["overlap_interval"]["ci"] else ""),
                     get("attend: all"), get("move: all"),
                     get("attend: inhibition only"), get("attend: negative mover only"),
                     f'{rnd["mean"]:.3f} ± {rnd["sd"]:.3f}' if rnd else "n/a", get("block: content gatherers")))
    p = num["paper"]
    rows.append(("paper: GPT-2 medium", "n/a", p["co_accuracy"], p["overlap"], p["after"], "n/a", p["inhibition_only"],
                 p["negative_only"], f'{p["random_mean"]:.3f} ± {p["random_sd"]:.3f}', p["gatherers_blocked"]))
    sections.append(("Our numbers beside the paper's", table(rows, (
        "model", "IOI accuracy", "CO accuracy", "overlap (top 2%, all stages)", "after: attend", "after: move",
        "inhibition only", "negative mover only", "random heads (mean ± sd)", "gatherers blocked")) + (
        '<p class="note">Accuracy: argmax over the full vocabulary equals the answer, with Wilson 95% intervals. '
        "Intervention heads are chosen by what they do on IOI (inhibition: attends END->S2 more than ->IO and its "
        "corrupted output shifts the movers' attention from IO to S, interval below 0; negative mover: negative "
        "stage-1 effect, a negative copy score above its copy score, and more than half of its END attention on "
        "the names; as Wang et al.'s negative name movers it may attend to IO rather than S2, and if S2 were "
        "required the intervention would be the 'inhibition only' column). 'attend' sets their END row to 1/2 on each "
        "wrong colour; 'move' moves only the mass they put on the S2-like position (OQ, the queried object, the "
        "repeated entity of the last clause as S2 is in IOI) to the wrong colours. Stage 3 receives at query heads. "
        "CO is meaningful only above chance (1/3) and below ceiling; the intervention can only fix errors that name "
        "another colour of the list.</p>")))
    for x in num["models"]:
        per_stage = table([(s, ", ".join(o["ioi"]), ", ".join(o["co"]), ", ".join(o["both"]), o["overlap"],
                            x["overlap_null"][s]["uniform"]["mean"], x["overlap_null"][s]["uniform"]["p"],
                            x["overlap_null"][s]["layer-matched"]["mean"], x["overlap_null"][s]["layer-matched"]["p"])
                           for s, o in x["overlap"].items()],
                          ("stage", "IOI top heads", "CO top heads", "both", "overlap", "null uniform", "p",
                           "null layer-matched", "p"))
        h = x["heads"]
        cands = table([(c["head"], c["role"], c["path_effect"], c["attention"]["IO"], c["attention"]["S2"],
                        f'{c["on_names"]:.2f}' if "on_names" in c else "",
                        f'{c["mover_shift"]:+.3f} {_ci(c["mover_shift_ci"])}' if "mover_shift" in c else "",
                        f'{c["copy"]:.2f} / {c["negative_copy"]:.2f}' if "copy" in c else "", c["accepted"])
                       for c in h["candidates"]],
                      ("head", "role", "IOI path effect", "attn END->IO", "attn END->S2", "attn on names",
                       "movers' (IO - S) attention shift", "copy / negative copy", "chosen"))
        chosen = table([("inhibition heads (chosen)", ", ".join(h["inhibition"]) or "none"),
                        ("negative mover (chosen)", ", ".join(h["negative"]) or "none"),
                        ("the old choice by rank only", ", ".join(h["by_rank"])),
                        ("IOI movers (receivers)", ", ".join(h["movers"])),
                        ("CO content gatherers", ", ".join(x["gatherers"])), ("CO movers", ", ".join(x["co_movers"])),
                        ("END re-runner check", str(x["end_runner_verified"]))])
        cond = table([(n, r["accuracy"], _ci(r["ci"]), f'{r["change"]["change"]:+.3f} {_ci(r["change"]["ci"])}',
                       r["fixed"], r["new_mistakes"], r["fixable_fixed"], r.get("p_vs_random", ""))
                      for n, r in x["conditions"].items()],
                     ("condition", "accuracy", "95% interval", "change (paired interval)", "fixed", "new mistakes",
                      "fixable errors fixed", "p vs random heads"))
        rnd = table([(v, r["mean"], r["sd"], r["min"], r["max"], len(r["accuracies"])) for v, r in x["random"].items()],
                    ("random heads, variant", "mean", "sd", "min", "max", "draws"))
        err = table([(k, v) for k, v in x["errors"].items()], ("errors without intervention", "count"))
        mov = table([(n, w, f'{r["before"]:.3f} -> {r["after"]:.3f}', f'{r["change"]:+.3f} {_ci(r["ci"])}')
                     for n, mc in x["mover_check"].items() for w, r in mc.items()],
                    ("condition", "movers' attention to", "before -> after", "change"))
        sections.append((x["model_key"], figures[x["model_key"]] + figures[x["model_key"] + " conditions"] + per_stage
                         + "<h3>Intervention heads (chosen on IOI)</h3>" + cands + chosen
                         + "<h3>Interventions and controls</h3>" + cond + rnd + err
                         + "<h3>Downstream movers</h3>" + mov))
    sections.append(("The full setting on a GPU machine (stored run)", stored.section(GPU_RUNS)))
    return html_page("Circuit component reuse: IOI vs Colored Objects", sections)


def steps(settings: dict) -> int:
    return len(settings["models"])


def run(load, settings: dict, seed: int = 0, tick=lambda step: None) -> dict:
    """``methods.circuit_reuse.run`` on each model of the settings (``load(key)`` gives a model;
    a ``--model`` override makes it one model)."""
    from interp.methods import circuit_reuse

    keys = list(dict.fromkeys(load.key(k) if hasattr(load, "key") else k for k in settings["models"]))
    per_model = []
    for key in keys:
        model = load(key)
        t, c = time.time(), time.process_time()
        res = circuit_reuse.run(model, settings["n_prompts"], settings["n_intervention"], seed, settings["n_random"],
                                progress=False, n_select=settings["n_select"])
        res["timings_s"] = {"wall": time.time() - t, "cpu": time.process_time() - c}
        res["model"] = model
        per_model.append(res)
        tick(model.interp_key)
    return {"models": per_model, "settings": settings, "seed": seed}


def numbers(res: dict) -> dict:
    from interp.stats import detectable_difference

    per_model = [model_numbers(r["model"], r) for r in res["models"]]
    headline = [row for x in per_model for row in headline_rows(x)]
    n = res["settings"]["n_intervention"]
    p0 = per_model[0]["co_accuracy"]["accuracy"] if per_model else 0.5
    return {"meta": {"n_prompts": res["settings"]["n_prompts"], "n_intervention": n, "n_select": res["settings"]["n_select"],
                     "model_key": ", ".join(x["model_key"] for x in per_model)},
            "headline": headline,
            "detectable": (f"{n} CO prompts per model: an accuracy change of {detectable_difference(n, p=max(p0, 0.05)):.2f} "
                           "is detectable (paired, 80% power)"),
            "models": per_model, "paper": PAPER}


def save(res: dict, num: dict, folder) -> str:
    """Writes per model the circuit of shared heads and one Result per stage and task; returns the page."""
    from interp import graph

    folder = Path(folder)
    figures = {}
    for r, x in zip(res["models"], num["models"]):
        key = r["model"].interp_key
        figures[key] = fig_to_img(plot_model(r), f"path patching, {key}")
        figures[key + " conditions"] = fig_to_img(plot_conditions(x), f"interventions, {key}")
        shared = r["overlap"]["all stages"]
        classes = {h: ("both" if h in shared["both"] else "ioi only" if h in shared["ioi"] else "co only")
                   for h in set(shared["ioi"]) | set(shared["co"])}
        graph.from_heads(classes, model=key, task="ioi+colored-objects",
                         method="path_patching top 2% (interp.methods.circuit_reuse)",
                         provenance={"seed": res["seed"], "n_prompts": res["settings"]["n_prompts"], "ablation": None,
                                     "overlap": shared["overlap"], "stage3_receivers": "query heads",
                                     "intervention_heads": x["heads"]["inhibition"] + x["heads"]["negative"]}
                         ).save(folder / f"circuit_{key}.json")
        for task, st in r["stages"].items():
            for name, result in st.items():
                result.save(folder / f"stage_{key}_{task}_{name.replace(' ', '_')}.json")
    return render(num, figures)
