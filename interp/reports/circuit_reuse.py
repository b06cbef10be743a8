"""``interp reproduce circuit-reuse``: IOI vs Colored Objects head reuse (Merullo et al.) per model.

Writes into ``out_dir/circuit-reuse/``: ``report.html`` (per model: CO and IOI accuracy, the
path-patching heat maps of both tasks, the top-2% head sets and their overlap, the intervention
against random heads, our numbers beside the paper's), ``numbers.json``, and per model a circuit
file of the heads both tasks share (schema interp.circuit/1).
"""
from __future__ import annotations

import time
from pathlib import Path

from interp.reports.ioi import plot_effect
from interp.reports.page import fig_to_img, html_page, new_figure, table

TITLE = "Circuit component reuse (Merullo et al. 2024): IOI vs Colored Objects"
DEFAULT_MODEL = "smollm2-135m-instruct"
QUICK = {"n_prompts": 8, "n_seeds": 3, "models": ["smollm2-135m-instruct"]}
STANDARD = {"n_prompts": 8, "n_seeds": 3, "models": ["smollm2-135m-instruct"]}
FULL = {"n_prompts": 32, "n_seeds": 5, "models": ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"]}
SETTINGS = {"quick": QUICK, "standard": STANDARD, "full": FULL}

#: Merullo et al. (ICLR 2024), GPT-2 medium, as quoted in shared/papers/circuit-reuse.md
PAPER = {"overlap": 0.78, "co_accuracy": 0.496, "after": 0.937, "random_mean": 0.499, "random_sd": 0.010}


def _label(h) -> str:
    return f"{h[0]}.{h[1]}"


def model_numbers(model, res: dict) -> dict:
    """The JSON-ready numbers of one model's run (``methods.circuit_reuse.run``)."""
    iv = res["intervention"]
    return {
        "model_key": model.interp_key, "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads,
        "co_accuracy": res["co_accuracy"], "ioi_accuracy": res["ioi_accuracy"],
        "overlap": {s: {k: ([_label(h) for h in v] if isinstance(v, list) else v) for k, v in o.items()}
                    for s, o in res["overlap"].items()},
        "intervention": {**{k: v for k, v in iv.items() if k != "heads"}, "heads": [_label(h) for h in iv["heads"]]},
        "baselines": {t: {"clean": r["logits"].clean, "corrupted": r["logits"].corrupted}
                      for t, r in res["stages"].items()},
        "receivers": {t: {s: [_label(h) for h in (r.meta.get("receiver_heads") or [])] for s, r in st.items()}
                      for t, st in res["stages"].items()},
        "timings_s": res.get("timings_s"),
    }


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


def render(num: dict, figures: dict[str, str]) -> str:
    m = num["meta"]
    sections = [("Setup", table([
        ("models", ", ".join(x["model_key"] for x in num["models"])),
        ("prompts", f'{m["n_prompts"]} IOI (corruption: S2 -> IO) and {m["n_prompts"]} Colored Objects '
                    f'(corruption: the question asks about another object) per model, seed {m["seed"]}'),
        ("setting", m["setting"]), ("date", m["date"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items()))]))]
    rows = []
    for x in num["models"]:
        iv = x["intervention"]
        rows.append((x["model_key"], x["ioi_accuracy"], x["co_accuracy"]["accuracy"], x["overlap"]["all stages"]["overlap"],
                     iv["before"], iv["after"], f'{iv["random_mean"]:.3f} ± {iv["random_sd"]:.3f}', iv["new_mistakes"]))
    p = num["paper"]
    rows.append(("paper: GPT-2 medium", "n/a", p["co_accuracy"], p["overlap"], p["co_accuracy"], p["after"],
                 f'{p["random_mean"]:.3f} ± {p["random_sd"]:.3f}', "0"))
    sections.append(("Our numbers beside the paper's", table(rows, (
        "model", "IOI accuracy", "CO accuracy", "overlap (top 2%, all stages)", "CO before",
        "CO after intervention", "random heads (mean ± sd)", "new mistakes")) + (
        '<p class="note">CO is meaningful only above chance (1/3 of the colours in the last question) and '
        "below ceiling. Overlap = |A & B| / |A | B| of the top ceil(2% of heads) per stage, united over the "
        "three stages. Intervention: at END, the model's three IOI inhibition-like heads (stage 2's top heads) "
        "and its strongest IOI negative mover attend only to the two incorrect colours (1/2 each). The stage-3 "
        "receiver position for CO (the queried object) is our choice; the paper leaves it unstated.</p>")))
    for x in num["models"]:
        per_stage = table([(s, ", ".join(o["ioi"]), ", ".join(o["co"]), ", ".join(o["both"]), o["overlap"])
                           for s, o in x["overlap"].items()], ("stage", "IOI top heads", "CO top heads", "both", "overlap"))
        iv = x["intervention"]
        inter = table([("heads", ", ".join(iv["heads"])), ("CO accuracy before", iv["before"]),
                       ("after", iv["after"]), ("fixed / new mistakes", f'{iv["fixed"]} / {iv["new_mistakes"]}'),
                       ("random heads, per seed", ", ".join(f"{a:.3f}" for a in iv["random"]))])
        sections.append((x["model_key"], figures[x["model_key"]] + per_stage + inter))
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
        t = time.time()
        res = circuit_reuse.run(model, settings["n_prompts"], seed, settings["n_seeds"], progress=False)
        res["timings_s"] = time.time() - t
        res["model"] = model
        per_model.append(res)
        tick(model.interp_key)
    return {"models": per_model, "settings": settings, "seed": seed}


def numbers(res: dict) -> dict:
    from interp.stats import proportion_ci

    per_model = [model_numbers(r["model"], r) for r in res["models"]]
    headline = []
    for x in per_model:
        iv, n = x["intervention"], res["settings"]["n_prompts"]
        acc, lo, hi = proportion_ci(round(x["co_accuracy"]["accuracy"] * n), n)
        headline.append({"name": f"CO accuracy before the intervention ({x['model_key']})", "ours": acc,
                         "ci": [lo, hi], "n": n, "paper": f'{PAPER["co_accuracy"]} (GPT-2 medium)', "verdict": None,
                         "why": "the model's own Colored Objects ability (the paper's is its baseline)"})
        after, lo, hi = proportion_ci(round(iv["after"] * n), n)
        gain = iv["after"] - iv["before"]
        headline.append({"name": f"CO accuracy after the intervention ({x['model_key']})", "ours": after,
                         "ci": [lo, hi], "n": n, "paper": f'{PAPER["after"]} (GPT-2 medium)',
                         "verdict": "reproduced" if gain > 0.2 else "partly" if gain > 0.05 else "not",
                         "why": "the intervention heads are chosen by rank only (no check of what they do on IOI)"})
    return {"meta": {"n_prompts": res["settings"]["n_prompts"],
                     "model_key": ", ".join(x["model_key"] for x in per_model)},
            "headline": headline,
            "detectable": f'{res["settings"]["n_prompts"]} prompts per task: an accuracy change below about '
                          f'{2.8 * 0.5 / res["settings"]["n_prompts"] ** 0.5:.2f} cannot be told from noise',
            "models": per_model, "paper": PAPER}


def save(res: dict, num: dict, folder) -> str:
    """Writes per model the circuit of shared heads and one Result per stage and task; returns the page."""
    from interp import graph

    folder = Path(folder)
    figures = {}
    for r in res["models"]:
        key = r["model"].interp_key
        figures[key] = fig_to_img(plot_model(r), f"path patching, {key}")
        shared = r["overlap"]["all stages"]
        classes = {h: ("both" if h in shared["both"] else "ioi only" if h in shared["ioi"] else "co only")
                   for h in set(shared["ioi"]) | set(shared["co"])}
        graph.from_heads(classes, model=key, task="ioi+colored-objects",
                         method="path_patching top 2% (interp.methods.circuit_reuse)",
                         provenance={"seed": res["seed"], "n_prompts": res["settings"]["n_prompts"], "ablation": None}
                         ).save(folder / f"circuit_{key}.json")
        for task, st in r["stages"].items():
            for name, result in st.items():
                result.save(folder / f"stage_{key}_{task}_{name.replace(' ', '_')}.json")
    return render(num, figures)
