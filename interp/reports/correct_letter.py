"""``interp reproduce correct-letter``: the output nodes of multiple-choice answering on one model.

Writes into ``out_dir/correct-letter/``: ``report.html`` (accuracy by label, DLA bar chart, total vs
direct effect scatter, the found heads with their attention profile and class, circuitsvis patterns,
the rank curve, the mutation table, ablation vs random heads, our numbers beside the paper's),
``numbers.json``, ``circuit.json`` (the output nodes, schema interp.circuit/1).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from interp.reports.page import fig_to_img, html_page, new_figure, table

TITLE = "Correct-letter heads (Lieberum et al. 2023): output nodes of multiple-choice answering"
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
QUICK = {"n_prompts": 16, "k": 4, "ranks": (1, 2, 3, 8), "mutations": ("random", "shuffled"), "n_seeds": 2}
STANDARD = {"n_prompts": 16, "k": 4, "ranks": (1, 2, 3, 8), "mutations": ("random", "shuffled"), "n_seeds": 2}
FULL = {"n_prompts": 48, "k": 6, "ranks": (1, 2, 3, 4, 8, 16, 32), "mutations": ("random", "1234", "shuffled"),
        "n_seeds": 5}
SETTINGS = {"quick": QUICK, "standard": STANDARD, "full": FULL}
PAPER = {"rank": "near-lossless at rank 3 (queries/keys), Chinchilla 70B",
         "classes": "correct-letter heads attend to the correct label; content gatherers: large total, small direct"}


def steps(settings: dict) -> int:
    return 4


def run(load, settings: dict, seed: int = 0, tick=lambda step: None) -> dict:
    from interp.methods import correct_letter as cl
    from interp.tasks import symbol_binding_examples

    s = settings
    model = load(DEFAULT_MODEL)
    t0 = time.time()
    mcq = symbol_binding_examples(model, n=s["n_prompts"], seed=seed)
    base = cl.scores(model, mcq)
    effects = cl.total_and_direct(model, mcq, progress=False)
    tick("effects")
    nodes = cl.top_heads(effects["direct"].values, s["k"])
    gatherers = [h for h in cl.top_heads(effects["total"].values, 2 * s["k"]) if h not in nodes][: s["k"]]
    profile = cl.attention_profile(model, mcq, nodes + gatherers)
    classes = {h: cl.classify(p) for h, p in profile.items()}
    letter = [h for h in nodes if classes[h] == "correct-letter"] or nodes[:1]
    ranks = tuple(s["ranks"]) + (model.cfg.d_head,)
    curve = cl.rank_curve(model, letter[0], mcq, mcq, ranks)
    tick("rank curve")
    mutations = {}
    for mutation in s["mutations"]:
        mutated = symbol_binding_examples(model, n=s["n_prompts"], seed=seed + 1, labels=mutation)
        lr = cl.LowRankHead(model, letter[0]).fit(mcq)
        mutations[mutation] = {"full": cl.scores(model, mutated),
                               "rank_3": cl.scores(model, mutated, lr.hooks(mutated, 3))}
    tick("mutations")
    ablation = cl.ablation_vs_random(model, mcq, nodes, s["n_seeds"], seed)
    tick("ablation")
    return {"model": model, "mcq": mcq, "base": base, "effects": effects, "nodes": nodes, "gatherers": gatherers,
            "profile": profile, "classes": classes, "letter_head": letter[0], "curve": curve,
            "mutations": mutations, "ablation": ablation, "settings": s, "seed": seed,
            "runtime_s": time.time() - t0}


def numbers(res: dict) -> dict:
    from interp.stats import proportion_ci

    model = res["model"]
    label = lambda h: f"{h[0]}.{h[1]}"  # noqa: E731
    te, de = res["effects"]["total"].values, res["effects"]["direct"].values
    strip = lambda d: {k: v for k, v in d.items()}  # noqa: E731
    n, ab = len(res["mcq"]), res["ablation"]
    acc, lo, hi = proportion_ci(round(ab["accuracy"] * n), n)
    abl, alo, ahi = proportion_ci(round(ab["ablated"] * n), n)
    drop = ab["accuracy"] - ab["ablated"]
    return {
        "meta": {"model_key": model.interp_key, "n_prompts": n,
                 "task": "symbol binding (Options: A. x B. y ... Which option is 'y'? Answer:)",
                 "runtime_s": res["runtime_s"]},
        "headline": [
            {"name": "accuracy on symbol binding", "ours": acc, "ci": [lo, hi], "n": n,
             "paper": "n/a (Chinchilla 70B on MMLU)", "verdict": None, "why": "the model's own ability"},
            {"name": "accuracy with the output nodes mean-ablated", "ours": abl, "ci": [alo, ahi], "n": n,
             "paper": "the correct-letter heads matter causally (Chinchilla 70B)",
             "verdict": "reproduced" if drop > 0.2 and drop > 3 * max(ab["random_sd"], 0.02) else
             "partly" if drop > 0.05 else "not",
             "why": f'random heads: {ab["random_mean"]:.2f} ± {ab["random_sd"]:.2f} (zero-shot prompts, fit and '
                    "evaluated on the same items)"},
        ],
        "detectable": f"{n} items: an accuracy change below about {2.8 * 0.5 / n ** 0.5:.2f} cannot be told from noise",
        "scores": res["base"],
        "heads": [{"head": label(h), "role": "output node" if h in res["nodes"] else "large total effect",
                   "class": res["classes"][h], "total_effect": float(te[h]), "direct_effect": float(de[h]),
                   "dla": float(res["effects"]["dla"].values[h]), **res["profile"][h]}
                  for h in res["nodes"] + res["gatherers"]],
        "letter_head": label(res["letter_head"]),
        "rank_curve": {str(r): {"loss": v["loss"], "accuracy": v["accuracy"]} for r, v in res["curve"].items()},
        "mutations": {m: {"full": strip(v["full"]), "rank_3": strip(v["rank_3"])} for m, v in res["mutations"].items()},
        "ablation": {**{k: v for k, v in res["ablation"].items() if k != "heads"},
                     "heads": [label(h) for h in res["ablation"]["heads"]]},
        "paper": PAPER,
    }


def plot_effects(res: dict) -> "Figure":
    eff = res["effects"]
    fig = new_figure(13, 4.2)
    ax1, ax2, ax3 = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    dla = eff["dla"].values
    top = dla.abs().flatten().topk(12).indices
    ax1.barh([f"{int(i) // dla.shape[1]}.{int(i) % dla.shape[1]}" for i in top], dla.flatten()[top].numpy())
    ax1.invert_yaxis()
    ax1.set_title("DLA onto correct - other label (top 12 heads)", fontsize=9)
    ax2.bar(range(len(eff["dla_mlp"].values)), eff["dla_mlp"].values.numpy())
    ax2.set_title("DLA of each layer's MLP", fontsize=9)
    ax2.set_xlabel("layer")
    te, de = eff["total"].values.flatten(), eff["direct"].values.flatten()
    ax3.scatter(de.numpy(), te.numpy(), s=8, alpha=0.6)
    for h in res["nodes"] + res["gatherers"]:
        ax3.annotate(f"{h[0]}.{h[1]}", (float(eff["direct"].values[h]), float(eff["total"].values[h])), fontsize=7)
    lim = float(max(te.abs().max(), de.abs().max()))
    ax3.plot([-lim, lim], [-lim, lim], color="grey", lw=0.5)
    ax3.set_xlabel("direct effect")
    ax3.set_ylabel("total effect")
    ax3.set_title("noising each head: total vs direct", fontsize=9)
    return fig


def plot_rank(res: dict) -> "Figure":
    fig = new_figure(5, 3.5)
    ax = fig.add_subplot()
    ranks = list(res["curve"])
    ax.plot(ranks, [res["curve"][r]["loss"] for r in ranks], marker="o")
    ax.axhline(res["base"]["loss"], color="grey", ls="--", lw=1, label="full model")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank r of query/key subspace")
    ax.set_ylabel("-log p(correct label)")
    ax.set_title(f'head {res["letter_head"][0]}.{res["letter_head"][1]}: loss vs rank', fontsize=9)
    ax.legend()
    return fig


def attention_html(model, res: dict) -> str:
    """circuitsvis patterns of the found heads on the first prompt (offline HTML)."""
    import circuitsvis as cv
    import circuitsvis.utils.render as cv_render

    cv_render.internet_on = lambda: False
    ps = res["mcq"].prompts
    n = int(ps.answer_pos[0]) + 1
    tokens = ps.clean_tokens[0, :n]
    heads = res["nodes"] + res["gatherers"]
    names = {hook_name_of(l) for l, _ in heads}
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None], names_filter=lambda x: x in names)
    patterns = torch.stack([cache[hook_name_of(l)][0, h] for l, h in heads]).float()
    labels = [model.tokenizer.decode([int(t)]) for t in tokens]
    return str(cv.attention.attention_heads(patterns, labels, attention_head_names=[f"{l}.{h}" for l, h in heads]))


def hook_name_of(layer: int) -> str:
    from interp.hooks import hook_name

    return hook_name("pattern", layer)


def render(num: dict, figures: dict[str, str], attention: str) -> str:
    m, s = num["meta"], num["scores"]
    setup = table([("model", m["model_key"]), ("task", m["task"]), ("prompts", f'{m["n_prompts"]} (seed {m["seed"]})'),
                   ("setting", m["setting"]), ("date", m["date"]),
                   ("run time (s)", f'{m["runtime_s"]:.0f}'),
                   ("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items()))])
    acc = table([("accuracy (argmax over the 4 labels)", s["accuracy"]), ("accuracy (argmax over the vocabulary)", s["accuracy_vocab"]),
                 ("loss -log p(correct)", s["loss"]), ("logit(correct) - mean of the 4", s["logit_margin"])]
                + [(f"accuracy when the answer is option {k + 1}", v) for k, v in s["accuracy_by_slot"].items()])
    cols = ("head", "role", "class", "total_effect", "direct_effect", "dla", "correct_label", "other_labels",
            "items", "max", "top_label_is_correct")
    heads = table([tuple(h[c] for c in cols) for h in num["heads"]], cols)
    ab = num["ablation"]
    side = table([
        ("correct-letter head found", num["letter_head"], "yes (Chinchilla 70B)"),
        (f'accuracy, output nodes {", ".join(ab["heads"])} mean-ablated', f'{ab["accuracy"]:.3f} -> {ab["ablated"]:.3f}', "n/a"),
        ("same number of random heads", f'{ab["random_mean"]:.3f} ± {ab["random_sd"]:.3f}', "n/a"),
        ("rank-3 query/key loss vs full", f'{num["rank_curve"]["3"]["loss"]:.3f} vs {s["loss"]:.3f}' if "3" in num["rank_curve"]
         else "n/a", num["paper"]["rank"]),
    ], ("quantity", f'ours ({m["model_key"]})', "paper"))
    rank = table([(r, v["loss"], v["accuracy"]) for r, v in num["rank_curve"].items()], ("rank r", "loss", "accuracy"))
    mut = table([(k, v["full"]["accuracy"], v["rank_3"]["accuracy"], v["full"]["loss"], v["rank_3"]["loss"])
                 for k, v in num["mutations"].items()],
                ("labels", "accuracy, full head", "accuracy, rank-3 head", "loss, full", "loss, rank 3"))
    note = ('<p class="note">Total effect = metric change when the head takes its value from the prompt whose '
            "correct label differs (everything downstream recomputed); direct effect = the change of its own DLA. "
            "Output nodes = the largest direct effects. The rank-3 subspaces are fit on the A-D prompts and "
            "applied to the mutated ones. The paper studied Chinchilla 70B on MMLU; we use symbol binding, "
            "which the small models here can do.</p>")
    return html_page(f'Correct-letter heads of {m["model_key"]}', [
        ("Setup", setup), ("Accuracy", acc), ("Our numbers beside the paper's", side + note),
        ("Effects", figures["effects"] + heads), ("Attention of the found heads (first prompt)", attention),
        ("Subspace compression", figures["rank"] + rank), ("Label mutations", mut)])


def save(res: dict, num: dict, folder) -> str:
    """Writes circuit.json (the output nodes and the large-total-effect heads); returns the page."""
    from interp import graph

    model, seed = res["model"], res["seed"]
    heads = res["nodes"] + res["gatherers"]
    graph.from_heads({h: res["classes"][h] for h in heads}, model=model.interp_key, task="mcq-symbol-binding",
                     metric="logit_diff (correct - other label)",
                     method="direct/total effect of noising (interp.methods.correct_letter)",
                     provenance={"seed": seed, "n_prompts": len(res["mcq"]), "ablation": None},
                     scores={h: float(res["effects"]["direct"].values[h]) for h in heads},
                     positions={h: "END" for h in heads},
                     edges=[(h, "logits") for h in res["nodes"]]).save(Path(folder) / "circuit.json")
    figures = {"effects": fig_to_img(plot_effects(res), "effects"), "rank": fig_to_img(plot_rank(res), "rank")}
    return render(num, figures, attention_html(model, res))
