"""``interp reproduce correct-letter``: correct-letter heads of multiple-choice answering (Lieberum et
al. 2023), found on one set of few-shot symbol-binding items and evaluated on another.

Design (``interp.methods.correct_letter`` has the formulas):

* discovery set D (seed s, half of the usable words): few-shot prompts (``k_shot`` solved examples,
  ``shot_sets`` fixed prefixes, every options list asked about each of its 4 items, so every
  content sits in every correct slot). Direct effect of noising each head at END (from the prompt
  that asks for another option of the same list) -> output nodes = the ``n_nodes`` most negative;
  total effect of every head on ``n_total`` items (content gatherers: large total, small direct);
  classes from the attention row at END on the CORRECTLY answered items of D
  (``correct_letter.classify``: thresholds relative to chance 1/4, not to the model's accuracy);
  rank-r query/key subspaces of each correct-letter head fit on D.
* held-out set E (seed s + 1, the other half of the words: no item of E occurs in D): accuracy by
  slot; attention on the correct label / on each other label (the outside check: >= 2x); the rank
  curve with its floors (r = 0, the uniform row; the head knocked out, z := 0 and z := mean) per
  head and jointly; zero- (and in "full" mean-) ablation at END of the correct-letter heads, and of
  all output nodes, each against ``n_draws`` random head sets of the same size (uniform over the
  model and from the same layers).
* label mutations (random letters, shuffled A-D, numbers 1-4; shots labelled like the question)
  on further held-out items: accuracy and attention on the correct label, full head vs its rank-3
  version fit on D (A-D labels); the rank-3 key space at the label positions coloured by ordinal and
  by label (the "Nth item" figure), with eta^2 of each.

Every interval is a 95% bootstrap over options lists (the 4 questions of a list share it), or a
Wilson interval for a proportion of independent items. Deviations from the paper: a 0.5B model on
symbol binding (the final step of MC answering) instead of Chinchilla 70B on MMLU; interventions at
END only; the few-shot prefixes are shared by the items of a set; the paper's metric is unstated
(margin and 4-way loss given).

Writes into ``out_dir/correct-letter/`` (through ``interp.reports.runner``): ``report.html``,
``numbers.json``, ``circuit.json`` (the output nodes and gatherers with their classes).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from interp.reports import stored
from interp.reports.headline import headline_table, inside, miss_from
from interp.reports.page import fig_to_img, html_page, new_figure, table

TITLE = "Correct-letter heads (Lieberum et al. 2023): output nodes of multiple-choice answering"
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"
QUICK = {"n_discover": 16, "n_eval": 16, "n_mutation": 8, "k_shot": 3, "shot_sets": 2, "n_nodes": 4,
         "n_total": 1, "ranks": (0, 1, 2, 3, 8), "mutations": ("random",), "n_draws": 10,
         "ablation_modes": ("zero",)}
STANDARD = {"n_discover": 48, "n_eval": 64, "n_mutation": 32, "k_shot": 3, "shot_sets": 2, "n_nodes": 6,
            "n_total": 4, "ranks": (0, 1, 2, 3, 4, 8), "mutations": ("random", "shuffled"), "n_draws": 10,
            "ablation_modes": ("zero",)}
FULL = {"n_discover": 128, "n_eval": 200, "n_mutation": 100, "k_shot": 3, "shot_sets": 4, "n_nodes": 6,
        "n_total": 16, "ranks": (0, 1, 2, 3, 4, 8, 16), "mutations": ("random", "shuffled", "1234"),
        "n_draws": 20, "ablation_modes": ("zero", "mean")}
#: ``--device cuda``: the full setting's sizes on a GPU.
CUDA = dict(FULL)
SETTINGS = {"quick": QUICK, "standard": STANDARD, "full": FULL, "cuda": CUDA}
#: The full setting run on a GPU machine without network, stored in benchmarks/ (``interp.reports.stored``).
GPU_RUNS = (("full setting on an H200: 200 held-out items, 3-shot, 20 random draws, zero and mean ablation",
             "gpu_h200_correct_letter_full.json", "interp reproduce correct-letter --device cuda"),)
PAPER = {"rank": "near-lossless at rank 3 (queries/keys of the correct-letter heads), Chinchilla 70B",
         "attention": "correct-letter heads attend from the final token to the correct label",
         "causal": "the output nodes carry the answer: ablating them hurts the correct-label logit",
         "nth": "the rank-3 keys partly encode 'Nth item in an enumeration' (partial under label mutations)"}
MUTATION_NAMES = {"ABCD": "A-D (held-out set)", "random": "random letters", "shuffled": "shuffled A-D",
                  "1234": "numbers 1-4"}


def steps(settings: dict) -> int:
    return 4


def _eta_text(eta) -> str:
    """"0.42 [0.30, 0.55]", or "0.42 (no interval)" when the bootstrap gave none."""
    return f"{eta[0]:.2f} [{eta[1]:.2f}, {eta[2]:.2f}]" if eta[1] is not None else f"{eta[0]:.2f} (no interval)"


def _label(h) -> str:
    return f"{h[0]}.{h[1]}"


def run(load, settings: dict, seed: int = 0, tick=lambda step: None) -> dict:
    """Discovery on D, evaluation on the held-out E and mutated sets: the raw results."""
    from interp.methods import correct_letter as cl
    from interp.tasks.mcq import mcq_items, symbol_binding_examples

    s = settings
    model = load(DEFAULT_MODEL)
    t0 = time.time()
    words = mcq_items(model)
    words_d, words_e = words[0::2], words[1::2]

    def items(n, sd, half, labels="ABCD"):
        return symbol_binding_examples(model, n=n, seed=sd, labels=labels, k_shot=s["k_shot"],
                                       shot_sets=s["shot_sets"], asked_per_list=4, items=half)

    # -- discovery -----------------------------------------------------------------------------
    D = items(s["n_discover"], seed, words_d)
    run_d = cl.MCQRun(model, D, verify=1)
    cl_d = cl.clusters_of(D)
    partner = run_d.partners(D.prompts.corrupted_tokens)
    eff = cl.direct_effects(run_d, partner)
    de = eff["direct"].mean(-1)  # [L, H]
    nodes = cl.top_heads(de, s["n_nodes"])
    te = cl.total_effects(run_d, partner, examples=list(range(min(s["n_total"], len(D))))).mean(-1)
    te = te.reshape(run_d.L, run_d.H)
    gatherers = [h for h in cl.top_heads(te, 3 * s["n_nodes"]) if h not in nodes
                 and abs(float(de[h])) < 0.5 * abs(float(te[h]))][:3]
    right_d = (run_d.logits4.argmax(-1) == run_d.correct).nonzero()[:, 0].cpu()
    profile = cl.attention_profile(run_d, nodes + gatherers, right_d)
    profile_all = cl.attention_profile(run_d, nodes + gatherers)
    classes = {h: cl.classify(p) for h, p in profile.items()}
    classes_old = {h: cl.classify_by_accuracy_rule(p) for h, p in profile_all.items()}
    letter = [h for h in nodes if classes[h] == "correct-letter"]
    fallback = not letter
    if fallback:  # none passes the rule: study the node that follows the answer most often
        letter = [max(nodes, key=lambda h: profile[h].get("top_label_is_correct", 0))]
    fits = {h: cl.fit_lowrank(run_d, h) for h in letter}
    tick("discovery")

    # -- held-out evaluation -------------------------------------------------------------------
    E = items(s["n_eval"], seed + 1, words_e)
    run_e = cl.MCQRun(model, E, verify=1)
    cl_e = cl.clusters_of(E)
    acc_e = cl.accuracy_summary(run_e, cl_e, seed)
    right_e = (run_e.logits4.argmax(-1) == run_e.correct).nonzero()[:, 0].cpu()
    ratio_all = cl.attention_ratio(run_e, letter, clusters=cl_e, seed=seed)
    ratio_right = cl.attention_ratio(run_e, letter, examples=right_e, clusters=cl_e, seed=seed)
    profile_e = cl.attention_profile(run_e, letter, right_e)
    ranks = tuple(s["ranks"]) + (run_e.dh,)
    curves = {"joint": cl.rank_curve(run_e, fits, ranks, cl_e, seed)}
    if len(letter) > 1:
        for h in letter:
            curves[_label(h)] = cl.rank_curve(run_e, {h: fits[h]}, ranks, cl_e, seed)
    tick("held-out")
    ablation = cl.ablation_test(run_e, letter, n_draws=s["n_draws"], seed=seed, modes=s["ablation_modes"],
                                clusters=cl_e)
    # all output nodes (the paper's causal claim is about the output nodes together)
    ablation_nodes = cl.ablation_test(run_e, nodes, n_draws=s["n_draws"], seed=seed + 7, modes=s["ablation_modes"],
                                      clusters=cl_e)

    # -- label mutations -----------------------------------------------------------------------
    mutations = {"ABCD": _mutation_row(cl, run_e, cl_e, letter, fits, seed)}
    key_spaces = {}
    for i, m in enumerate(s["mutations"]):
        M = items(s["n_mutation"], seed + 2 + i, words_e, labels=m)
        run_m = cl.MCQRun(model, M, verify=1)
        cl_m = cl.clusters_of(M)
        mutations[m] = _mutation_row(cl, run_m, cl_m, letter, fits, seed)
        if m in ("random", "shuffled"):
            for h in letter:
                ks = cl.key_space(run_m, h, fits[h], 3)
                codes = {c: j for j, c in enumerate(sorted({x for r in ks["label"] for x in r}))}
                lab = torch.tensor([[codes[x] for x in r] for r in ks["label"]])
                ks["eta_ordinal"] = cl.variance_explained(ks["coords"], ks["ordinal"], cl_m, seed)
                ks["eta_label"] = cl.variance_explained(ks["coords"], lab, cl_m, seed)
                key_spaces[m, h] = ks
    tick("mutations")
    return {"model": model, "settings": s, "seed": seed, "D": D, "E": E, "run_d": run_d, "run_e": run_e,
            "effects": eff, "de": de, "te": te, "nodes": nodes, "gatherers": gatherers, "profile": profile,
            "profile_all": profile_all, "classes": classes, "classes_old": classes_old, "letter": letter,
            "fallback": fallback, "accuracy_d": cl.accuracy_summary(run_d, cl_d, seed), "accuracy": acc_e,
            "ratio": ratio_all, "ratio_right": ratio_right, "profile_e": profile_e, "curves": curves,
            "ranks": ranks, "ablation": ablation, "ablation_nodes": ablation_nodes, "mutations": mutations, "key_spaces": key_spaces,
            "runtime_s": time.time() - t0}


def _mutation_row(cl, run, clusters, letter, fits, seed) -> dict:
    """Accuracy with the full and the rank-3 heads, and the heads' summed attention on the correct
    label (and on each other label) at END, full head vs rank-3, on one (mutated) set."""
    acc = cl.accuracy_summary(run, clusters, seed)
    s3 = cl.item_scores(run.end_logits([cl.lowrank_variant(fits, 3)])[0], run.correct.cpu())
    full_rows = cl.attention_rows(run, letter)  # [heads, B, T]
    r3_rows = torch.stack([cl.lowrank_rows(run, h, fits[h], 3) for h in letter])
    out = {"n": len(run.correct), "accuracy": acc["accuracy"],
           "accuracy_rank3": cl.cluster_mean_ci(s3["right"], clusters, seed)}
    for name, rows in (("full", full_rows), ("rank3", r3_rows)):
        c, o = cl.label_attention(rows, run.mcq)  # [heads, B]
        out[f"correct_{name}"] = cl.cluster_mean_ci(c.mean(0), clusters, seed)
        out[f"other_{name}"] = cl.cluster_mean_ci(o.mean(0), clusters, seed)
        out[f"ratio_{name}"] = cl.ratio_ci(*_cluster_sums(c.mean(0), o.mean(0), clusters), seed)
    return out


def _cluster_sums(a, b, clusters):
    ids = torch.unique(clusters.cpu(), return_inverse=True)[1]
    C = int(ids.max()) + 1
    return (torch.zeros(C).index_add_(0, ids, a.float().cpu()), torch.zeros(C).index_add_(0, ids, b.float().cpu()))


# ---------------------------------------------------------------------------------- numbers
def _verdict_ratio(est, lo):
    return "reproduced" if est >= 2 and lo > 1 else "partly" if lo > 1 else "not"


def numbers(res: dict) -> dict:
    from interp.stats import detectable_difference

    s, model = res["settings"], res["model"]
    acc, ab = res["accuracy"], res["ablation"]
    n_e, n_lists = acc["n"], int(torch.unique(res["run_e"].mcq.prompts.clean_tokens[:, :int(
        res["E"].prompts.positions["ASKED"][0])], dim=0).shape[0]) if "ASKED" in res["E"].prompts.positions else acc["n"]
    letter = [_label(h) for h in res["letter"]]
    heads_txt = ", ".join(letter) + (" (no node passed the correct-letter rule: the node whose top label "
                                     "is most often the correct one)" if res["fallback"] else "")
    small = f"{model.interp_key} (0.5B) on few-shot symbol binding, not Chinchilla 70B on MMLU"
    headline = []
    a = acc["accuracy"]
    headline.append({"name": f"accuracy ({s['k_shot']}-shot symbol binding, held-out items)", "ours": a[0],
                     "ci": [a[1], a[2]], "n": n_e, "paper": "n/a (Chinchilla 70B on MMLU)", "verdict": None,
                     "why": "the model's own ability (chance 0.25); the baseline of the rows below", "miss": None})
    r = res["ratio"]["joint"]
    headline.append({"name": f"attention on correct label / other label, heads {', '.join(letter)} (held-out)",
                     "ours": r[0], "ci": [r[1], r[2]], "n": n_e, "paper": PAPER["attention"] + " (check: >= 2x)",
                     "verdict": _verdict_ratio(r[0], r[1]),
                     "why": "slot-balanced, all held-out items" + (
                         "" if _verdict_ratio(r[0], r[1]) == "reproduced" else f"; below 2x: {small}"),
                     "miss": miss_from(_verdict_ratio(r[0], r[1]), "model", inside([r[1], r[2]], 2.0))})
    p_values = {}
    for what, ab_, hs in (("heads " + ", ".join(letter), ab, res["letter"]),
                          (f"all {len(res['nodes'])} output nodes", res["ablation_nodes"], res["nodes"])):
        for mode, row in ab_["modes"].items():
            d = row["drop"]
            rnd = row["random"]["uniform"]
            worst = float(acc["accuracy"][0]) - rnd["min"]
            p_values[f"{what} {mode}"] = rnd["p_value"]
            ok = d[1] > 0 and d[0] > worst and rnd["p_value"] <= 0.1
            verdict = "reproduced" if ok else "partly" if d[1] > 0 else "not"
            headline.append({
                "name": f"accuracy drop, {what} {mode}-ablated at END (held-out)",
                "ours": d[0], "ci": [d[1], d[2]], "n": n_e, "paper": PAPER["causal"],
                "verdict": verdict,
                "why": f"{len(rnd['accuracy'])} random {len(hs)}-head sets: accuracy {rnd['min']:.2f}-"
                       f"{rnd['max']:.2f} (largest drop {worst:.2f}), p = {rnd['p_value']:.2f}"
                       + ("" if ok else f"; {small}; END only (earlier positions untouched)"),
                # undecided: the interval holds the largest random drop, or no drop at all
                "miss": miss_from(verdict, "model", inside([d[1], d[2]], max(worst, 0.0)))})
    joint = res["curves"]["joint"]
    if "3" in joint and "recovery" in joint["3"]:
        rc = joint["3"]["recovery"]
        verdict = "reproduced" if rc[0] >= 0.9 else "partly" if rc[0] >= 0.5 else "not"
        headline.append({"name": f"rank-3 q/k: share of the 4-way loss gap (r=0 to full) recovered, heads "
                                 f"{', '.join(letter)} jointly (fit on D, held-out E)",
                         "ours": rc[0], "ci": [rc[1], rc[2]], "n": n_e, "paper": PAPER["rank"],
                         "verdict": verdict,
                         "why": "floor r=0 is the uniform row; " + (
                             "as in the paper" if rc[0] >= 0.9 else
                             f"{small}, or a named deviation: q and k are projected on separate bases and every "
                             "key position (not only the labels) on the label-key basis"),
                         "miss": miss_from(verdict, "deviation: q and k projected on separate rank-3 bases, every key "
                                                    "position on the label-key basis", inside([rc[1], rc[2]], 0.9))})
    if "random" in res["mutations"]:
        m, base = res["mutations"]["random"], res["mutations"]["ABCD"]
        rr = m["ratio_rank3"]
        verdict = "partly" if rr[1] > 1 and rr[0] < m["ratio_full"][0] else "reproduced" if rr[1] > 1 else "not"
        headline.append({"name": "random letters: attention ratio correct/other label of the rank-3 heads (fit on A-D)",
                         "ours": rr[0], "ci": [rr[1], rr[2]], "n": m["n"],
                         "paper": PAPER["nth"],
                         "verdict": verdict,
                         "why": f"full head {m['ratio_full'][0]:.2f}, rank-3 on A-D {base['ratio_rank3'][0]:.2f}: "
                                "the paper finds the rank-3 feature partial under mutations",
                         "miss": miss_from(verdict, "model", inside([rr[1], rr[2]], 1.0))})
    for (mut, h), ks in res["key_spaces"].items():
        eo, el = ks["eta_ordinal"], ks["eta_label"]
        have = None not in (*eo, *el)  # a bound is None when no bootstrap interval holds the estimate
        verdict = "reproduced" if have and eo[1] > el[2] else "partly" if eo[0] > el[0] else "not"
        headline.append({"name": f"head {_label(h)}: rank-3 label keys, adjusted variance explained by the ordinal "
                                 f"({MUTATION_NAMES[mut]})",
                         "ours": eo[0], "ci": [eo[1], eo[2]] if eo[1] is not None else None, "n": len(ks["coords"]),
                         "paper": PAPER["nth"], "verdict": verdict,
                         "why": f"by label: {_eta_text(el)}" + ("" if have else
                                "; no interval where resampling moves the statistic past its estimate"),
                         # undecided: the two intervals overlap, or one has none
                         "miss": miss_from(verdict, "model", not have or (eo[1] <= el[2] and el[1] <= eo[2]))})
    detect = detectable_difference(n_lists, p=max(min(a[0], 0.99), 0.01))
    return {
        "meta": {"model_key": model.interp_key, "n_discover": len(res["D"]), "n_eval": n_e, "options_lists_eval": n_lists,
                 "k_shot": s["k_shot"], "shot_sets": s["shot_sets"], "seed": res["seed"],
                 "task": "few-shot symbol binding (Options: A. x B. y ... Which option is 'y'? Answer:)",
                 "split": "D and E use disjoint halves of the item words; mutation sets use E's half, other seeds",
                 "runtime_s": res["runtime_s"], "settings": {k: list(v) if isinstance(v, tuple) else v
                                                            for k, v in s.items()}},
        "headline": headline,
        "detectable": f"{n_e} held-out items in {n_lists} options lists: an accuracy change below about "
                      f"{detect:.2f} (80% power, 5%) cannot be told from noise",
        "scores": {"accuracy": a[0], "accuracy_ci": [a[1], a[2]], "accuracy_vocab": acc["accuracy_vocab"][0],
                   "margin": acc["margin"][0], "loss4": acc["loss4"][0], "loss_vocab": acc["loss_vocab"][0],
                   "accuracy_by_slot": {str(k): {"ours": v[0], "ci": [v[1], v[2]], "n": v[3]}
                                        for k, v in acc["by_slot"].items()},
                   "predicted_slot_share": acc["predicted_slot_share"],
                   "discovery_accuracy": res["accuracy_d"]["accuracy"][0]},
        "heads": [{"head": _label(h), "role": "output node" if h in res["nodes"] else "content-gatherer candidate",
                   "class": res["classes"][h], "class_by_accuracy_rule": res["classes_old"][h],
                   "direct_effect": float(res["de"][h]), "total_effect": float(res["te"][h]),
                   "dla": float(res["effects"]["dla"].mean(-1)[h]),
                   **{k: v for k, v in res["profile"][h].items()}}
                  for h in res["nodes"] + res["gatherers"]],
        "letter_heads": letter, "fallback": res["fallback"],
        "attention_ratio": {"all": _ci_dict(res["ratio"]), "correct_items": _ci_dict(res["ratio_right"])},
        "profile_heldout": {_label(h): p for h, p in res["profile_e"].items()},
        "rank_curve": {name: {k: {m: list(v) for m, v in row.items()} for k, row in c.items()}
                       for name, c in res["curves"].items()} | {
            str(r): {"loss4": res["curves"]["joint"][str(r)]["loss4"][0],
                     "accuracy": res["curves"]["joint"][str(r)]["right"][0]} for r in res["ranks"]},
        "ablation": {mode: {"accuracy": list(row["accuracy"]), "drop": list(row["drop"]),
                            "margin": list(row["margin"]), "random": row["random"]}
                     for mode, row in ab["modes"].items()} | {"heads": letter, "p_values": p_values},
        "ablation_nodes": {mode: {"accuracy": list(row["accuracy"]), "drop": list(row["drop"]),
                                  "random": row["random"]} for mode, row in res["ablation_nodes"]["modes"].items()}
        | {"heads": [_label(h) for h in res["nodes"]]},
        "mutations": {m: {k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()}
                      for m, row in res["mutations"].items()},
        "key_space": {f"{mut} {_label(h)}": {"eta_ordinal": list(ks["eta_ordinal"]), "eta_label": list(ks["eta_label"])}
                      for (mut, h), ks in res["key_spaces"].items()},
        "paper": PAPER,
    }


def _ci_dict(ratio: dict) -> dict:
    return {"joint": list(ratio["joint"]), **{k: list(v) for k, v in ratio["heads"].items()}, "n": ratio["n"]}


# ---------------------------------------------------------------------------------- figures
def plot_effects(res: dict):
    """DLA of the top heads, DLA per MLP, and total vs direct effect of every head."""
    eff = res["effects"]
    fig = new_figure(13, 4.2)
    ax1, ax2, ax3 = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    dla = eff["dla"].mean(-1)
    top = dla.abs().flatten().topk(12).indices
    ax1.barh([f"{int(i) // dla.shape[1]}.{int(i) % dla.shape[1]}" for i in top], dla.flatten()[top].numpy())
    ax1.invert_yaxis()
    ax1.set_title("DLA onto the margin (top 12 heads), discovery set", fontsize=9)
    ax2.bar(range(eff["mlp"].shape[0]), eff["mlp"].mean(-1).numpy())
    ax2.set_title("DLA of each layer's MLP", fontsize=9)
    ax2.set_xlabel("layer")
    te, de = res["te"].flatten(), res["de"].flatten()
    ax3.scatter(de.numpy(), te.numpy(), s=8, alpha=0.6)
    for h in res["nodes"] + res["gatherers"]:
        ax3.annotate(_label(h), (float(res["de"][h]), float(res["te"][h])), fontsize=7)
    lim = float(max(te.abs().max(), de.abs().max()))
    ax3.plot([-lim, lim], [-lim, lim], color="grey", lw=0.5)
    ax3.set_xlabel("direct effect (noising at END)")
    ax3.set_ylabel("total effect")
    ax3.set_title("every head: total vs direct effect", fontsize=9)
    return fig


def plot_rank(res: dict):
    """4-way loss vs rank per head and jointly, with the floors (r = 0, knocked out) and the full model."""
    fig = new_figure(6.5, 4)
    ax = fig.add_subplot()
    ranks = [r for r in res["ranks"] if r > 0]
    for i, (name, c) in enumerate(res["curves"].items()):
        y = [c[str(r)]["loss4"] for r in ranks]
        ax.errorbar(ranks, [v[0] for v in y], yerr=[[v[0] - v[1] for v in y], [v[2] - v[0] for v in y]],
                    marker="o", capsize=2, label=f"{name}: rank r", color=f"C{i}")
        ax.axhline(c["0"]["loss4"][0], color=f"C{i}", ls=":", lw=1)
        ax.axhline(c["knocked out (zero)"]["loss4"][0], color=f"C{i}", ls="-.", lw=1)
    ax.axhline(res["curves"]["joint"]["full"]["loss4"][0], color="k", ls="--", lw=1, label="full model")
    ax.plot([], [], color="grey", ls=":", label="r = 0 (uniform row)")
    ax.plot([], [], color="grey", ls="-.", label="head knocked out (z = 0)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("rank r of the query/key subspace (fit on D)")
    ax.set_ylabel("4-way loss -log p4(correct), held-out E")
    ax.legend(fontsize=7)
    return fig


def plot_ablation(res: dict):
    """Accuracy with the correct-letter heads ablated vs each random head set."""
    ab = res["ablation"]
    fig = new_figure(6, 3.5)
    ax = fig.add_subplot()
    base = res["accuracy"]["accuracy"]
    xs, labels = 0, []
    for mode, row in ab["modes"].items():
        for kind, rnd in row["random"].items():
            ax.scatter([xs] * len(rnd["accuracy"]), rnd["accuracy"], color="grey", s=12, alpha=0.7)
            labels.append(f"{mode}: random ({kind})")
            xs += 1
        a = row["accuracy"]
        ax.errorbar([xs], [a[0]], yerr=[[a[0] - a[1]], [a[2] - a[0]]], fmt="o", color="C3", capsize=3)
        labels.append(f"{mode}: correct-letter heads")
        xs += 1
    ax.axhline(base[0], color="k", ls="--", lw=1, label="no ablation")
    ax.axhline(0.25, color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(range(xs), labels, rotation=20, fontsize=7, ha="right")
    ax.set_ylabel("accuracy, held-out E")
    ax.legend(fontsize=7)
    return fig


def plot_key_space(res: dict):
    """The 'Nth item' figure: rank-3 keys at the label positions (random letters, shuffled A-D),
    coloured by ordinal and by label (first two of the 3 coordinates)."""
    spaces = res["key_spaces"]
    fig = new_figure(10, 4 * max(1, len(spaces)))
    for i, ((mut, h), ks) in enumerate(spaces.items()):
        xy = ks["coords"].reshape(-1, ks["coords"].shape[-1])
        ordinal = ks["ordinal"].reshape(-1)
        letters = [x for r in ks["label"] for x in r]
        codes = {c: j for j, c in enumerate(sorted(set(letters)))}
        for j, (colour, title) in enumerate(((ordinal.numpy(), "ordinal (option 1-4)"),
                                             ([codes[x] for x in letters], "label letter"))):
            ax = fig.add_subplot(len(spaces), 2, 2 * i + j + 1)
            sc = ax.scatter(xy[:, 0].numpy(), xy[:, 1].numpy(), c=colour, cmap="viridis" if j == 0 else "tab20",
                            s=10, alpha=0.8)
            eta = ks["eta_ordinal" if j == 0 else "eta_label"]
            ax.set_title(f"{_label(h)}, {MUTATION_NAMES[mut]}: by {title}, adj. eta^2 {eta[0]:.2f}", fontsize=9)
            ax.set_xlabel("key direction 1")
            ax.set_ylabel("key direction 2")
            if j == 0:
                fig.colorbar(sc, ax=ax)
    return fig


def plot_mutations(res: dict):
    """Attention of the correct-letter heads on the correct label under each label set, full vs rank-3."""
    mut = res["mutations"]
    fig = new_figure(7, 3.5)
    ax = fig.add_subplot()
    names = list(mut)
    for j, (key, lab) in enumerate((("correct_full", "correct label, full head"),
                                    ("correct_rank3", "correct label, rank-3 head"),
                                    ("other_full", "each other label, full head"),
                                    ("other_rank3", "each other label, rank-3 head"))):
        v = [mut[m][key] for m in names]
        ax.bar([i + 0.2 * j - 0.3 for i in range(len(names))], [x[0] for x in v], width=0.2, label=lab,
               yerr=[[x[0] - x[1] for x in v], [x[2] - x[0] for x in v]], capsize=2)
    ax.set_xticks(range(len(names)), [MUTATION_NAMES.get(m, m) for m in names], fontsize=8)
    ax.set_ylabel("attention at END (mean over heads)")
    ax.legend(fontsize=7)
    return fig


def plot_slots(res: dict):
    """Accuracy by the correct option's slot (held-out E)."""
    by = res["accuracy"]["by_slot"]
    fig = new_figure(4.5, 3)
    ax = fig.add_subplot()
    ks = sorted(by)
    ax.bar([k + 1 for k in ks], [by[k][0] for k in ks],
           yerr=[[by[k][0] - by[k][1] for k in ks], [by[k][2] - by[k][0] for k in ks]], capsize=3)
    ax.axhline(0.25, color="grey", ls=":", lw=1)
    ax.set_xlabel("slot of the correct option")
    ax.set_ylabel("accuracy (Wilson 95%)")
    return fig


def figures(res: dict) -> dict:
    """Every figure of the page (matplotlib Figures), by name."""
    out = {"effects": plot_effects(res), "slots": plot_slots(res), "rank": plot_rank(res),
           "ablation": plot_ablation(res), "mutations": plot_mutations(res)}
    if res["key_spaces"]:
        out["key_space"] = plot_key_space(res)
    return out


# ---------------------------------------------------------------------------------- page
def _ci(v) -> str:
    return f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"


def render(num: dict, imgs: dict[str, str]) -> str:
    m, s = num["meta"], num["scores"]
    setup = table([("model", m["model_key"]), ("task", m["task"]),
                   ("items", f'discovery {m["n_discover"]}, held-out {m["n_eval"]} ({m["options_lists_eval"]} options '
                             f'lists), {m["k_shot"]}-shot, {m["shot_sets"]} fixed shot prefixes per set'),
                   ("split", m["split"]), ("seed", m["seed"]), ("run time (s)", f'{m["runtime_s"]:.0f}')])
    head = headline_table(num["headline"])
    acc = table([("accuracy (argmax over the 4 labels)", _ci([s["accuracy"], *s["accuracy_ci"]])),
                 ("accuracy over the vocabulary", s["accuracy_vocab"]), ("margin (correct - mean of 4)", s["margin"]),
                 ("4-way loss", s["loss4"]), ("-log p(correct) over the vocabulary", s["loss_vocab"]),
                 ("accuracy on the discovery set", s["discovery_accuracy"])]
                + [(f"accuracy, correct option in slot {int(k) + 1} (n={v['n']})", _ci([v["ours"], *v["ci"]]))
                   for k, v in s["accuracy_by_slot"].items()]
                + [("share of predictions per slot", ", ".join(f"{x:.2f}" for x in s["predicted_slot_share"]))])
    cols = ("head", "role", "class", "class_by_accuracy_rule", "direct_effect", "total_effect", "dla",
            "correct_label", "other_labels", "top_label_is_correct", "top_slot_share", "n")
    heads = table([tuple(h[c] for c in cols) for h in num["heads"]], cols)
    ratio = table([(k, _ci(v)) for k, v in num["attention_ratio"]["all"].items() if k != "n"]
                  + [(f"{k} (correctly answered items)", _ci(v)) for k, v in num["attention_ratio"]["correct_items"].items()
                     if k != "n"], ("heads", "attention on correct / other label, held-out"))
    curve_rows = []
    for name, c in num["rank_curve"].items():
        if not isinstance(c, dict) or "full" not in c:
            continue
        for k, row in c.items():
            curve_rows.append((name, k, _ci(row["loss4"]), _ci(row["right"]), _ci(row["margin"]),
                               _ci(row["recovery"]) if "recovery" in row else "-"))
    curve = table(curve_rows, ("heads", "rank / variant", "4-way loss", "accuracy", "margin", "recovery of the loss gap"))
    abl_rows = []
    for mode, row in num["ablation"].items():
        if mode in ("heads", "p_values"):
            continue
        abl_rows.append((mode, "correct-letter heads", _ci(row["accuracy"]), _ci(row["drop"]), "-"))
        for kind, rnd in row["random"].items():
            abl_rows.append((mode, f"random ({kind}), {len(rnd['accuracy'])} draws",
                             f'{rnd["mean"]:.3f} (range {rnd["min"]:.3f}-{rnd["max"]:.3f})', "-", f'{rnd["p_value"]:.3f}'))
    for mode, row in num["ablation_nodes"].items():
        if mode == "heads":
            continue
        abl_rows.append((mode, "all output nodes " + ", ".join(num["ablation_nodes"]["heads"]), _ci(row["accuracy"]),
                         _ci(row["drop"]), "-"))
        for kind, rnd in row["random"].items():
            abl_rows.append((mode, f"random ({kind}), {len(rnd['accuracy'])} draws of as many heads",
                             f'{rnd["mean"]:.3f} (range {rnd["min"]:.3f}-{rnd["max"]:.3f})', "-", f'{rnd["p_value"]:.3f}'))
    abl = table(abl_rows, ("mode", "heads", "accuracy", "drop (paired)", "p (random drops >= ours)"))
    mut = table([(MUTATION_NAMES.get(k, k), v["n"], _ci(v["accuracy"]), _ci(v["accuracy_rank3"]), _ci(v["ratio_full"]),
                  _ci(v["ratio_rank3"]), _ci(v["correct_full"]), _ci(v["correct_rank3"]))
                 for k, v in num["mutations"].items()],
                ("labels", "n", "accuracy", "accuracy, rank-3 heads", "ratio, full", "ratio, rank-3",
                 "on correct label, full", "on correct label, rank-3"))
    note = ('<p class="note">Classes use the attention row at END on the correctly answered discovery items, '
            "with thresholds relative to chance (1/4 per label), so they do not move with the model's accuracy; "
            "class_by_accuracy_rule is the previous rule on all items (top label correct on >= 75%), shown to make "
            "the dependence visible. The paper studied Chinchilla 70B on MMLU; we use few-shot symbol binding, the "
            "final step of MC answering that the small models here can do. Interventions act at the final position "
            "only. Intervals: bootstrap over options lists (4 questions share a list) or Wilson.</p>")
    img = lambda k: imgs.get(k, "")  # noqa: E731
    return html_page(f'Correct-letter heads of {m["model_key"]}', [
        ("Our numbers beside the paper's", head + note), ("Setup", setup), ("Accuracy (held-out)", acc + img("slots")),
        ("Output nodes and classes (discovery set)", img("effects") + heads),
        ("Outside check: attention on the correct label", ratio),
        ("Outside check: ablation vs random heads", img("ablation") + abl),
        ("Subspace compression (fit on D, evaluated on E)", img("rank") + curve),
        ("Label mutations: full head vs rank-3", img("mutations") + mut),
        ("The 'Nth item' figure: rank-3 key space", img("key_space")),
        ("The full setting on a GPU machine (stored run)", stored.section(GPU_RUNS))])


def save(res: dict, num: dict, folder) -> str:
    """Writes circuit.json (the output nodes and the content-gatherer candidates); returns the page."""
    from interp import graph

    heads = res["nodes"] + res["gatherers"]
    graph.from_heads({h: res["classes"][h] for h in heads}, model=res["model"].interp_key, task="mcq-symbol-binding",
                     metric="margin: logit(correct) - mean of the 4 label logits",
                     method="direct/total effect of noising at END (interp.methods.correct_letter)",
                     provenance={"seed": res["seed"], "n_prompts": len(res["D"]), "ablation": None},
                     scores={h: float(res["de"][h]) for h in heads},
                     positions={h: "END" for h in heads},
                     edges=[(h, "logits") for h in res["nodes"]]).save(Path(folder) / "circuit.json")
    return render(num, {k: fig_to_img(f, k) for k, f in figures(res).items()})
