"""``interp reproduce ioi``: discover the IOI circuit of a model, evaluate it, write an HTML report.

Writes into ``out_dir/ioi/`` (through ``interp.reports.runner``): ``report.html`` (path-patching
heat maps, the circuit graph, the classes with their scores, faithfulness/completeness/minimality,
our numbers beside the paper's), ``numbers.json``, ``circuit.json`` (schema interp.circuit/1) and
one ``stage_*.json`` Result per path-patching stage.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from interp.reports.page import fig_to_img, html_page, new_figure, table
from interp.reports.quickstart import baseline_numbers

TITLE = "IOI circuit (Wang et al. 2022): discovery, faithfulness, completeness, minimality"
DEFAULT_MODEL = None
QUICK = {"n_prompts": 16, "n_random": 2, "greedy_steps": 1, "n_reference": 64}
STANDARD = {"n_prompts": 16, "n_random": 2, "greedy_steps": 1, "n_reference": 64}
FULL = {"n_prompts": 48, "n_random": 5, "greedy_steps": 2, "n_reference": 128}
SETTINGS = {"quick": QUICK, "standard": STANDARD, "full": FULL}

#: Wang et al. 2022, GPT-2 small (100,000 prompts), as quoted in shared/papers/ioi.md
PAPER = {"F_model": 3.56, "frac_io_gt_s": 0.993, "n_heads": 26, "n_head_positions": 0.011,
         "faithfulness": 0.87, "faithfulness_gap": 0.46}


def steps(settings: dict) -> int:
    return 3


def run(load, settings: dict, seed: int = 0, tick=lambda step: None) -> dict:
    """Discovery and evaluation: the raw objects the report is made from. ``load(key)`` gives the
    model (``interp.reports.runner.Models``)."""
    from interp.methods import ioi
    from interp.tasks import ioi_examples

    model = load(DEFAULT_MODEL)
    prompts = ioi_examples(model, n=settings["n_prompts"], seed=seed)
    timings = {}
    t = time.time()
    found = ioi.discover(model, prompts, progress=False)
    timings["discover"] = time.time() - t
    tick("discover")
    t = time.time()
    reference = ioi_examples(model, n=settings["n_reference"], seed=seed + 1)  # p_ABC means per template
    evaluation = ioi.evaluate(model, prompts, found, settings["n_random"], settings["greedy_steps"], seed, reference)
    timings["evaluate"] = time.time() - t
    tick("evaluate")
    movers = [h for h, c in found.classes.items() if "mover" in c]
    out = {"model": model, "prompts": prompts, "found": found, "evaluation": evaluation, "timings": timings,
           "attention": ioi.name_attention(model, prompts, movers) if movers else {},
           "baseline": baseline_numbers(model, prompts), "settings": settings, "seed": seed}
    tick("attention")
    return out


def numbers(res: dict) -> dict:
    """Everything the report states, JSON-ready."""
    from interp.methods.ioi import path_effect
    from interp.stats import bootstrap_ci

    model, found, ev = res["model"], res["found"], res["evaluation"]
    label = lambda h: f"{h[0]}.{h[1]}"  # noqa: E731
    with torch.no_grad():
        logits = model(res["prompts"].clean_tokens)
        at = logits[torch.arange(len(res["prompts"])), res["prompts"].answer_pos].softmax(-1)
        p_io = float(at[torch.arange(len(res["prompts"])), res["prompts"].answer_ids].mean())
    heads = []
    for h, c in sorted(found.classes.items()):
        row = {"head": label(h), "class": c,
               **{f"score_{k}": float(v[h]) for k, v in found.scores.items()}}
        if h in found.copy:
            row["copy"], row["negative_copy"] = found.copy[h]
        row.update({f"attn_{k}": v for k, v in res["attention"].get(h, {}).items()})
        heads.append(row)
    stages = {}
    for name, r in found.stages.items():
        e = path_effect(r)
        top = e.abs().flatten().topk(8).indices
        stages[name] = {"receivers": r.meta.get("receivers"),
                        "top": [{"head": label((int(i) // e.shape[1], int(i) % e.shape[1])),
                                 "effect": float(e.flatten()[i])} for i in top]}
    strip = lambda d: {k: v for k, v in d.items() if k != "heads"}  # noqa: E731
    ld, lo, hi = bootstrap_ci(res["baseline"]["clean"]["per_prompt"])
    return {
        "meta": {"model_key": model.interp_key, "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads,
                 "n_prompts": len(res["prompts"]), "corruption": "abc (p_ABC)",
                 "prepend_bos": res["prompts"].prepend_bos, "discovery_settings": found.settings,
                 "timings_s": res["timings"]},
        "headline": [
            {"name": "F(M): mean logit difference", "ours": ld, "ci": [lo, hi], "n": len(res["prompts"]),
             "paper": f'{PAPER["F_model"]} (GPT-2 small)', "verdict": None,
             "why": "the model's own IOI ability, the baseline of the rest"},
            {"name": "faithfulness F(C)/F(M) (discovery prompts)", "ours": ev["faithfulness"], "ci": None,
             "n": len(res["prompts"]), "paper": f'{PAPER["faithfulness"]} (GPT-2 small)',
             "verdict": "reproduced" if ev["faithfulness"] >= 0.8 else "partly" if ev["faithfulness"] >= 0.5 else "not",
             "why": "evaluated on the prompts the circuit was found on (no held-out set yet)"},
        ],
        "detectable": f'{len(res["prompts"])} prompts: F(M) is known to within {(hi - lo) / 2:.2f}',
        "baseline": {"F_model": res["baseline"]["clean"]["logit_diff"],
                     "frac_io_gt_s": res["baseline"]["clean"]["frac_io_gt_s"], "mean_p_io": p_io,
                     "corrupted_logit_diff": res["baseline"]["corrupted"]["logit_diff"]},
        "evaluation": {k: ev[k] for k in ("F_model", "F_circuit", "F_empty", "faithfulness", "faithfulness_gap",
                                          "n_heads", "n_head_positions")},
        "classes": {c: [label(h) for h in hs] for c, hs in found.by_class().items()},
        "completeness": {c: strip(v) for c, v in ev["classes"].items()},
        "random_subsets": [{"heads": [label(h) for h in r["heads"]], **strip(r)} for r in ev["random"]],
        "greedy": [{"heads": [label(h) for h in r["heads"]], **strip(r)} for r in ev["greedy"]],
        "minimality": {label(h): v for h, v in ev["minimality"].items()},
        "heads": heads,
        "stages": stages,
        "paper": PAPER,
    }


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


def render(num: dict, figures: dict[str, str]) -> str:
    m, b, ev = num["meta"], num["baseline"], num["evaluation"]
    paper = num["paper"]
    setup = table([("model", m["model_key"]), ("prompts", f'{m["n_prompts"]} IOI prompts (seed {m["seed"]}), '
                    f'corruption {m["corruption"]}, BOS {m["prepend_bos"]}'),
                   ("setting", m["setting"]), ("date", m["date"]),
                   ("run time (s)", ", ".join(f"{k} {v:.0f}" for k, v in m["timings_s"].items())),
                   ("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items()))])
    side = table([
        ("F(M): mean logit diff of the model", b["F_model"], paper["F_model"]),
        ("fraction logit(IO) > logit(S)", b["frac_io_gt_s"], paper["frac_io_gt_s"]),
        ("circuit heads", ev["n_heads"], paper["n_heads"]),
        ("share of (head, position) pairs in the circuit", ev["n_head_positions"], paper["n_head_positions"]),
        ("faithfulness F(C)/F(M)", ev["faithfulness"], paper["faithfulness"]),
        ("|F(M) - F(C)|", ev["faithfulness_gap"], paper["faithfulness_gap"]),
        ("F(empty): every head mean-ablated", ev["F_empty"], "n/a"),
    ], ("quantity", f'ours ({m["model_key"]})', "paper (GPT-2 small)"))
    head_cols = [k for k in num["heads"][0]] if num["heads"] else []
    heads = table([tuple(r.get(k, "") for k in head_cols) for r in num["heads"]], tuple(head_cols))
    comp = table([(c, ", ".join(num["classes"][c]), v["F_C_minus_K"], v["F_M_minus_K"], v["incompleteness"])
                  for c, v in num["completeness"].items()],
                 ("class K", "heads", "F(C \\ K)", "F(M \\ K)", "incompleteness"))
    other = table([("random", ", ".join(r["heads"]), r["incompleteness"]) for r in num["random_subsets"]]
                  + [("greedy", ", ".join(r["heads"]), r["incompleteness"]) for r in num["greedy"]],
                  ("subset", "heads K", "incompleteness"))
    mini = table([(h, v["class"], v["minimality"], v["relative"]) for h, v in num["minimality"].items()],
                 ("head v", "class", "minimality", "relative to F(C)"))
    stages = table([(name, ", ".join(f'{t["head"]} ({t["effect"]:+.3f})' for t in s["top"]))
                    for name, s in num["stages"].items()], ("stage", "top heads (path effect)"))
    note = ('<p class="note">Path effect = (M_path - M_clean) / (M_corrupt - M_clean): 1 means the path '
            "carries the whole effect of the corruption. Classes: the top heads of each stage (at most k per "
            "class, effect at least min_effect, see numbers.json); stage-3 heads are induction or duplicate-token "
            "by their pattern scores. Key/value receivers are key/value heads (grouped-query attention), so "
            "stages 3 and 4 receive at the whole group of the chosen heads. Knockout = mean over p_ABC per "
            "template and position, from a separate set of p_ABC prompts (n_reference). The paper's numbers "
            "are GPT-2 small over 100,000 prompts; ours come from this run only.</p>")
    return html_page(f'IOI circuit of {m["model_key"]}', [
        ("Setup", setup), ("Our numbers beside the paper's", side + note),
        ("Path-patching stages", figures["stages"] + stages),
        ("The circuit", figures["circuit"] + heads),
        ("Completeness", comp + other), ("Minimality", mini),
    ])


def save(res: dict, num: dict, folder) -> str:
    """Writes circuit.json and one Result per path-patching stage; returns the page."""
    from interp.methods.ioi import to_circuit

    folder = Path(folder)
    circuit = to_circuit(res["found"], res["model"].interp_key, res["seed"], len(res["prompts"]))
    circuit.save(folder / "circuit.json")
    for name, r in res["found"].stages.items():
        r.save(folder / f"stage_{name.replace(' ', '_').replace('/', '_')}.json")
    figures = {"stages": fig_to_img(plot_stages(res["found"]), "path patching stages"),
               "circuit": fig_to_img(plot_circuit(circuit), "circuit")}
    return render(num, figures)
