"""``interp reproduce edges``: exact edge scores, EAP / EAP-IG / AtP audited against them, and
edge-level circuits with their faithfulness curves.

On IOI with SmolLM2 (Wang et al. 2022's task; circuits found by edge scores as in EAP, Syed et al.
2023, and EAP-IG, Hanna et al. 2024; curves and areas as in MIB, Mueller et al. 2025). The scope of
the exact scores depends on the setting: on a CPU the edges into the logits and into the queries of
the three heads that write most into the logits (the name movers: their edge into the logits
scores highest, exactly), in the GPU setting every edge of the model. The approximations score
every edge everywhere; the audit compares them on the exactly scored ones.

Writes into ``out_dir/edges/`` (through ``interp.reports.runner``): ``report.html`` (the audit
table, scatter plots against the exact scores, faithfulness curves, the top edges, the
shortlist-then-verify check), ``numbers.json``, ``circuit.json`` (the top exact edges,
interp.circuit/1) and ``scores_<method>.json`` for every method. The page ends with the stored runs
over every edge on a GPU machine (``GPU_RUNS`` in the repository's benchmarks/ folder), shown as
measured, with their dates and commands.
"""
from __future__ import annotations

import time
from pathlib import Path

from interp.methods.edge_audit import TOP_KS
from interp.reports.headline import headline_table
from interp.reports.page import fig_to_img, html_page, new_figure, table
from interp.reports.stored import BENCHMARKS

TITLE = "Edge-level circuits: exact edge patching, and EAP / EAP-IG audited against it"
DEFAULT_MODEL = None
QWEN = "qwen2.5-coder-0.5b-instruct"
#: (model key, task) pairs the report audits; None is the default model (SmolLM2-135M-Instruct).
QUICK = {"cases": ((None, "ioi"),), "n_prompts": 4, "movers": 1, "methods": ("eap", "eap-ig", "atp"), "steps": 3,
         "shortlist": 50, "fractions": (0.0, 0.01, 0.05, 0.2, 1.0), "all_edges": False}
STANDARD = {**QUICK, "n_prompts": 6, "movers": 2, "steps": 4, "shortlist": 100,
            "fractions": (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)}
FULL = {**STANDARD, "cases": ((None, "ioi"), (QWEN, "ioi"), (None, "colored-objects")), "n_prompts": 16,
        "methods": ("eap", "eap-ig", "eap-ig-activations", "atp"), "shortlist": 500}
CUDA = {**FULL, "all_edges": True, "shortlist": 1000}
SETTINGS = {"quick": QUICK, "standard": STANDARD, "full": FULL, "cuda": CUDA}

#: What the papers say about the approximations (for the verdicts).
PAPER = {"eap-ig": "EAP-IG's circuits are more faithful than EAP's at the same size (Hanna et al. 2024; MIB)",
         "atp": "edge-level methods beat node-level ones at finding circuits (MIB, Mueller et al. 2025)"}


#: Every edge scored exactly on a GPU machine without network (one H200, fp32, 16 prompts), stored
#: in the repository's benchmarks/ folder: (model, task, file, date, command). The report shows
#: them beside its own run (``stored_gpu_audits``); they are not recomputed.
GPU_RUNS = (
    ("smollm2-135m-instruct", "ioi", "gpu_h200_real_edges_smollm2_ioi16.json", "2026-11-30",
     "python benchmarks/real_weights_gpu.py --out d"),
    (QWEN, "ioi", "gpu_h200_real_edges_qwen_ioi16.json", "2026-11-30",
     f"python benchmarks/real_weights_gpu.py --model {QWEN} --out d"),
    ("smollm2-135m-instruct", "colored-objects", "gpu_h200_edges_report_smollm2_colored_objects16.json", "2026-11-30",
     "reproduce('edges', d, device='cuda', overrides={'cases': ((None, 'colored-objects'),)}) "
     "(page: gpu_h200_edges_report_smollm2_colored_objects16.html)"),
)


def stored_gpu_audits(folder: Path = BENCHMARKS) -> list[dict]:
    """The GPU_RUNS found in ``folder``, each as {label, date, command, n_edges, exact_s, verified,
    audits {method: audit}, curves {method: {cpr, cmd, points}}}. Two layouts are read: the
    benchmark script's ("audit <method>" keys) and a report's numbers.json (its first case)."""
    import json

    runs = []
    for model_key, task, name, date, command in GPU_RUNS:
        path = Path(folder) / name
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        if "cases" in d:
            case = d["cases"][0]
            audits, curves = case["audits"], case["curves"]
            n_edges, exact_s = case["meta"]["n_edges_exact"], case["meta"]["timings_s"]["exact"]
            verified = case["meta"]["verified"]
        else:
            audits = {k.split(" ", 1)[1]: v for k, v in d.items() if k.startswith("audit ")}
            curves, verified, exact_s = d["curves"], d["verified"], d["exact_fp32_s"][0]
            n_edges = next(iter(audits.values()))["n_edges"]
        runs.append({"label": case_label(model_key, task), "file": name, "date": date, "command": command,
                     "n_edges": n_edges, "exact_s": exact_s, "verified": verified, "audits": audits,
                     "curves": {m: {k: c[k] for k in ("cpr", "cmd", "points")} for m, c in curves.items()}})
    return runs


def plot_stored_curves(runs: list[dict]):
    """One panel per stored GPU run: every method's faithfulness curve over every edge."""
    fig = new_figure(4.2 * len(runs), 3.6)
    for i, run in enumerate(runs):
        ax = fig.add_subplot(1, len(runs), i + 1)
        for m, c in run["curves"].items():
            ax.plot([p["fraction"] for p in c["points"]], [p["faithfulness"] for p in c["points"]],
                    marker="o", ms=2, lw=1.5 if m == "exact" else 1, ls="-" if m == "exact" else "--",
                    label=f"{m} (CPR {c['cpr']:.2f})")
        _curve_axes(ax, i == 0, 0.0005, f"{run['label']}\n{run['n_edges']:,} edges")
    return fig


def _curve_axes(ax, first: bool, linthresh: float, title: str) -> None:
    """A faithfulness-curve panel's axes: log-like x (linear near 0), the f = 1 line, labels."""
    ax.set_xscale("symlog", linthresh=linthresh)
    ax.axhline(1, color="k", lw=0.5)
    ax.set_xlabel("fraction of edges kept")
    if first:
        ax.set_ylabel("faithfulness f(C)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)


def stored_rows(runs: list[dict]) -> list[dict]:
    """One row per stored run and method (the exact ranking last): rank agreement with the exact
    scores and the areas of the faithfulness curve (the report's table and notebook 06's)."""
    rows = []
    for run in runs:
        for m, a in run["audits"].items():
            overlap = a["top_k_overlap"]  # JSON keys: "50", "200", "1000"
            rows.append({"case": run["label"], "method": m, "Spearman": a["spearman"], "Kendall tau-b": a["kendall"],
                         **{f"top-{k} overlap": overlap.get(str(k), float("nan")) for k in TOP_KS},
                         "CPR (higher is better)": run["curves"][m]["cpr"],
                         "CMD (lower is better)": run["curves"][m]["cmd"]})
        exact = run["curves"]["exact"]
        rows.append({"case": run["label"], "method": "exact", "Spearman": 1.0, "Kendall tau-b": 1.0,
                     **{f"top-{k} overlap": 1.0 for k in TOP_KS},
                     "CPR (higher is better)": exact["cpr"], "CMD (lower is better)": exact["cmd"]})
    return rows


def render_stored(runs: list[dict], figure: str) -> str:
    """The stored GPU runs as one table (``stored_rows``), the curves figure and their provenance."""
    if not runs:
        return ('<p class="note">No stored GPU run found: they ship in the repository\'s benchmarks/ folder '
                f"({', '.join(r[2] for r in GPU_RUNS)}).</p>")
    rows = stored_rows(runs)
    provenance = table([(r["label"], f'{r["n_edges"]:,}', f'{r["exact_s"]:.0f}',
                         f'{r["verified"]["max_abs_diff"]:.1e} ({r["verified"]["cells"]} edges)', r["date"],
                         f'benchmarks/{r["file"]}', r["command"]) for r in runs],
                       ("case", "edges (every edge)", "exact scores (s)", "re-checked: max abs diff", "date",
                        "stored numbers", "command"))
    return ('<p class="note">Every edge of the model scored exactly on a GPU machine without network (one H200, '
            "fp32, 16 prompts), stored with the repository and shown here as they were measured, not recomputed "
            "by this run. Spearman, Kendall tau-b and top-k overlap against the exact scores; CPR and CMD of the "
            "circuits each ranking builds (every edge in scope).</p>"
            + table([tuple(r.values()) for r in rows], tuple(rows[0]))
            + figure + provenance)


def steps(settings: dict) -> int:
    return len(settings["cases"]) * (3 + len(settings["methods"]))


def case_label(model_key: str, task: str) -> str:
    return f"{model_key} · {task}"


def _prompts(model, task: str, n: int, seed: int):
    from interp.tasks import ioi_examples
    from interp.tasks.colored_objects import colored_objects_examples

    return (ioi_examples if task == "ioi" else colored_objects_examples)(model, n=n, seed=seed)


def run(load, settings: dict, seed: int = 0, tick=lambda step: None) -> dict:
    """Each case (model, task) of the setting: ``run_case``."""
    cases = [run_case(load(key), task, settings, seed, tick) for key, task in settings["cases"]]
    return {"cases": cases, "settings": settings, "seed": seed}


def run_case(model, task: str, settings: dict, seed: int = 0, tick=lambda step: None) -> dict:
    """Exact scores on the scope, each approximation on every edge, the audit and the curves."""
    from interp import edges as E
    from interp.edge_attribution import edge_attribution
    from interp.edge_circuits import faithfulness_curve
    from interp.edge_sweep import edge_patch
    from interp.methods.edge_audit import audit, shortlist_then_verify

    prompts = _prompts(model, task, settings["n_prompts"], seed)
    cfg = model.cfg
    timings, t = {}, time.time()
    logits = edge_patch(model, prompts, E.edges(cfg, [E.Receiver("logits")]), progress=False)
    into_logits = logits.by_name()
    heads = [e.sender for e in logits.top(len(logits)) if e.sender.kind == "head"
             and into_logits[e.name] > 0][: settings["movers"]]
    scope_receivers = None if settings["all_edges"] else \
        [E.Receiver("logits")] + [E.Receiver("q", s.layer, s.head) for s in heads]
    scope = E.edges(cfg, scope_receivers)
    exact = edge_patch(model, prompts, scope, progress=False)
    timings["exact"] = time.time() - t
    tick("exact")
    approx = {}
    for method in settings["methods"]:
        t = time.time()
        approx[method] = edge_attribution(model, prompts, None, method, steps=settings["steps"], progress=False)
        timings[method] = time.time() - t
        tick(method)
    t = time.time()
    audits = {m: audit(exact, a) for m, a in approx.items()}
    curves = {"exact": faithfulness_curve(model, prompts, exact, settings["fractions"])}
    for m, a in approx.items():
        curves[m] = faithfulness_curve(model, prompts, a.restrict(scope), settings["fractions"])
    timings["curves"] = time.time() - t
    tick("curves")
    t = time.time()
    best = max(approx, key=lambda m: audits[m]["spearman"])
    verified = shortlist_then_verify(model, prompts, approx[best], settings["shortlist"], progress=False)
    timings["shortlist"] = time.time() - t
    tick("shortlist")
    return {"model": model, "task": task, "label": case_label(model.interp_key, task), "prompts": prompts,
            "heads": heads, "scope": scope, "exact": exact, "approx": approx, "audits": audits, "curves": curves,
            "shortlist": {"method": best, "scores": verified}, "settings": settings, "seed": seed,
            "timings": timings, "n_edges": len(E.edges(cfg))}


def numbers(res: dict) -> dict:
    """Headline rows of every case (prefixed by its label), and each case's audit, curves and top edges."""
    cases = [case_numbers(c) for c in res["cases"]]
    first = cases[0]["meta"]
    return {"meta": {"model_key": first["model_key"], "cases": [c["meta"]["label"] for c in cases],
                     "n_prompts": first["n_prompts"]},
            "headline": [row for c in cases for row in c["headline"]],
            "detectable": "; ".join(f'{c["meta"]["label"]}: {c["detectable"]}' for c in cases),
            "cases": cases}


def case_numbers(res: dict) -> dict:
    from interp.methods.edge_audit import spearman
    from interp.stats import bootstrap_indices

    exact, approx, audits, curves = res["exact"], res["approx"], res["audits"], res["curves"]
    label = res["label"]
    headline = []
    x = exact.values
    for m, a in approx.items():
        y = a.restrict(exact.edges).values
        est, lo, hi = bootstrap_indices(len(x), lambda idx: spearman(x[idx], y[idx]), n_boot=200)
        headline.append({"name": f"{label}: {m.upper()} vs exact edge scores, Spearman rho", "ours": est,
                         "ci": [lo, hi], "n": len(x), "paper": "n/a (the papers have no exact scores at this scale)",
                         "verdict": None, "why": "interval: bootstrap over the audited edges", "miss": None})
    cmd = {m: c["cmd"] for m, c in curves.items()}
    scope_cause = ("model" if res["settings"]["all_edges"] else
                   "deviation: curves over the exactly scored edges only, not every edge of the model")
    if "eap-ig" in cmd and "eap" in cmd:
        better = cmd["eap-ig"] < cmd["eap"]
        headline.append({"name": f"{label}: CMD of EAP-IG's circuits / EAP's (lower is better)",
                         "ours": cmd["eap-ig"] / cmd["eap"] if cmd["eap"] else float("nan"), "ci": None,
                         "n": len(exact), "paper": PAPER["eap-ig"], "verdict": "reproduced" if better else "not",
                         "why": "on the exactly scored scope only, one prompt set (no interval: one curve per method)",
                         "miss": None if better else scope_cause})
    if "atp" in cmd:
        worst = max(cmd, key=cmd.get)
        headline.append({"name": f"{label}: CMD of node-level AtP's circuits (lower is better)", "ours": cmd["atp"],
                         "ci": None, "n": len(exact), "paper": PAPER["atp"],
                         "verdict": "reproduced" if worst == "atp" else "partly" if cmd["atp"] > min(cmd.values()) else "not",
                         "why": f"exact {cmd['exact']:.3f}; " + ", ".join(f"{m} {v:.3f}" for m, v in cmd.items() if m != "exact"),
                         "miss": None if worst == "atp" else scope_cause})
    sl = res["shortlist"]["scores"]
    top_exact = set(e.name for e in exact.top(20))
    return {
        "meta": {"label": label, "model_key": res["model"].interp_key, "task": res["task"],
                 "n_prompts": len(res["prompts"]), "n_edges_model": res["n_edges"], "n_edges_exact": len(exact),
                 "scope": "every edge" if res["settings"]["all_edges"] else
                 "edges into the logits and into the queries of " + ", ".join(s.name for s in res["heads"]),
                 "timings_s": res["timings"], "verified": exact.meta.get("verified")},
        "headline": headline,
        "detectable": f"{len(exact)} exactly scored edges: rank correlations are known to within about "
                      f"{1.96 / max(len(exact) - 3, 1) ** 0.5:.3f}",
        "audits": audits,
        "curves": {m: {"cpr": c["cpr"], "cmd": c["cmd"], "points": c["points"]} for m, c in curves.items()},
        "top_exact": [{"edge": e.name, "score": float(exact.by_name()[e.name])} for e in exact.top(25)],
        "shortlist": {"method": res["shortlist"]["method"], "n": len(sl),
                      "top20_exact_found": len(top_exact & set(e.name for e in sl.edges)) if not
                      res["settings"]["all_edges"] else None,
                      "top": [{"edge": e.name, "exact": float(sl.by_name()[e.name])} for e in sl.top(15)]},
    }


def plot_scatter(res: dict):
    """One panel per approximation: its estimate of each audited edge against the exact score."""
    approx = res["approx"]
    fig = new_figure(4.2 * len(approx), 4)
    x = res["exact"].values
    for i, (m, a) in enumerate(approx.items()):
        ax = fig.add_subplot(1, len(approx), i + 1)
        y = a.restrict(res["exact"].edges).values
        ax.scatter(x.numpy(), y.numpy(), s=6, alpha=0.5)
        lim = float(max(x.abs().max(), y.abs().max()))
        ax.plot([-lim, lim], [-lim, lim], color="k", lw=0.5)
        ax.set_xlabel("exact edge score")
        ax.set_ylabel(f"{m} estimate")
        ax.set_title(f"{m}: rho {res['audits'][m]['spearman']:.2f}")
    return fig


def plot_curves(res: dict):
    """One panel per method: the faithfulness of the circuits its ranking picks, the exact
    ranking's curve dashed beside it."""
    curves = res["curves"]
    methods = list(curves)
    fig = new_figure(3.4 * len(methods), 3.4)
    exact = curves["exact"]
    for i, m in enumerate(methods):
        ax = fig.add_subplot(1, len(methods), i + 1)
        xs = [p["fraction"] for p in curves[m]["points"]]
        if m != "exact":
            ax.plot(xs, [p["faithfulness"] for p in exact["points"]], ls="--", color="grey", lw=1, label="exact")
        ax.plot(xs, [p["faithfulness"] for p in curves[m]["points"]], marker="o", ms=3, label=m)
        _curve_axes(ax, i == 0, 0.005, f"{m}: CPR {curves[m]['cpr']:.3f}, CMD {curves[m]['cmd']:.3f}")
    return fig


def render_case(num: dict, figures: dict[str, str]) -> list[tuple[str, str]]:
    m = num["meta"]
    setup = table([("model", m["model_key"]), ("task", f'{m["task"]}, {m["n_prompts"]} prompts'),
                   ("edges", f'{m["n_edges_model"]:,} in the model; {m["n_edges_exact"]:,} scored exactly ({m["scope"]})'),
                   ("timings (s)", ", ".join(f"{k} {v:.0f}" for k, v in m["timings_s"].items())),
                   ("exact scores re-checked", f'{m["verified"]["cells"]} edges through the hooked reference, max abs diff '
                                               f'{m["verified"]["max_abs_diff"]:.1e}' if m["verified"] else "off")])
    rows = [(a["method"], a["spearman"], a["kendall"], a["pearson"], a["slope"],
             *[a["top_k_overlap"].get(k, float("nan")) for k in (50, 200, 1000)]) for a in num["audits"].values()]
    audit_table = table(rows, ("method", "Spearman", "Kendall tau-b", "Pearson", "slope vs exact",
                               "top-50 overlap", "top-200 overlap", "top-1000 overlap"))
    worst = "".join(f"<h3>{a['method']}: largest errors</h3>" + table(
        [(w["edge"], w["exact"], w["approx"]) for w in a["largest_errors"]], ("edge", "exact", "estimate"))
        for a in num["audits"].values())
    curves = table([(k, c["cpr"], c["cmd"]) for k, c in num["curves"].items()], ("method", "CPR (area under f)",
                                                                                  "CMD (area under |1 - f|)"))
    top = table([(t["edge"], t["score"]) for t in num["top_exact"]], ("edge", "exact score"))
    sl = num["shortlist"]
    short = (f'<p class="note">{sl["method"]} proposed its top {sl["n"]} edges; the exact engine scored them. '
             + (f'{sl["top20_exact_found"]} of the exact top 20 of the scope are among them.' if sl["top20_exact_found"]
                is not None else "") + "</p>" + table([(t["edge"], t["exact"]) for t in sl["top"]], ("edge", "exact score")))
    label = m["label"]
    return [(f"{label}: setup", setup),
            (f"{label}: how far the approximations are from the exact scores", audit_table + figures["scatter"]),
            (f"{label}: where they disagree most", worst), (f"{label}: faithfulness curves", figures["curves"] + curves),
            (f"{label}: top edges (exact)", top), (f"{label}: shortlist, then verify", short)]


def render(num: dict, figures: list[dict[str, str]]) -> str:
    m = num["meta"]
    note = ('<p class="note">Score of an edge = metric(patched) - metric(corrupted run), the sender\'s clean output '
            "added to that receiver's input only (denoising), mean logit difference over prompts. Approximations are "
            "on the same scale. f(C) = (M(C) - M(none)) / (M(all) - M(none)) on the clean prompts, the scope's edges "
            "outside C carrying their corrupted values. Setting: " + f'{m.get("setting")}, seed {m.get("seed")}, '
            f'{m.get("date")}.</p>')
    sections = [("What is measured", note),
                ("Headline", headline_table(num["headline"]) + f'<p class="note">Detectable: {num["detectable"]}.</p>')]
    for case, figs in zip(num["cases"], figures):
        sections += render_case(case, figs)
    runs = stored_gpu_audits()
    stored_fig = fig_to_img(plot_stored_curves(runs), "faithfulness curves over every edge, GPU runs") if runs else ""
    sections.append(("Every edge, on a GPU machine (stored runs)", render_stored(runs, stored_fig)))
    return html_page("Edge-level circuits: exact scores and the approximations audited", sections)


def save(res: dict, num: dict, folder) -> str:
    folder = Path(folder)
    figures = []
    for i, case in enumerate(res["cases"]):
        tag = "" if i == 0 else f"_{case['model'].interp_key}_{case['task']}"
        case["exact"].to_circuit(case["model"].interp_key, case["task"], top=50, seed=case["seed"],
                                 n_prompts=len(case["prompts"])).save(folder / f"circuit{tag}.json")
        case["exact"].save(folder / f"scores_exact{tag}.json")
        for m, a in case["approx"].items():
            a.save(folder / f"scores_{m}{tag}.json")
        figures.append({"scatter": fig_to_img(plot_scatter(case), f"{case['label']}: approximations vs exact"),
                        "curves": fig_to_img(plot_curves(case), f"{case['label']}: faithfulness curves")})
    return render(num, figures)
