"""``interp reproduce retrieval-heads``: the paper's copy-paste score on every head, and masking.

The protocol (``interp.methods.retrieval_heads`` has the definitions):

1. NIAH episodes: every needle of ``interp.tasks.needle.NEEDLES`` (10 facts written here, 6-16-token
   answers) x context lengths x depths, in the chat template of the instruct model.
2. Scores: one greedy decode per episode (prompt prefilled without its last token, top-1 attention
   of every head at every step); an episode counts when ROUGE-1 recall x 100 > 50; score = mean over
   counted episodes; retrieval head: score > 0.1; the four-bin distribution beside the paper's.
3. Masking, cross-fitted: the needles are split in two folds; each episode is decoded unmasked,
   with the top-K heads ranked on the OTHER fold masked, and with ``n_random`` draws of K random
   heads from outside that ranking's top quarter, for each K; masking = query zeroing from the
   query that emits the first answer token on. Recall with bootstrap intervals over episodes, and
   the paired difference random-K minus top-K.
4. Stability of the top heads across needles; where the top heads look on failed episodes.

Settings: "quick" (tests, 4 episodes), "standard" (``make run``: 20 episodes, every needle, K = 5, 10,
20, 50 with 5 random draws), "full" (the CPU paper-scale grid: 200 episodes up to 2K tokens) and
"cuda" (``--device cuda``: contexts up to SmolLM2's 8,192 positions with a 64-token buffer, 11
depths, 10 random draws). A reduced GPU run ships in benchmarks/ and is shown in every report
(``GPU_RUNS``): at 1K-8K tokens on 120 episodes the top 5 heads masked take recall from 42 to 7,
5 random heads to 39 (at K = 50 both fall to about 5).

Deviations from the paper (besides those of the method module): the paper keeps a 200-token buffer
below the model's window; the CPU contexts are far below it (buffer 0), the cuda setting keeps 64.
Where the top heads look is read on the unmasked decodes; when every episode was retrieved there
is no failed episode to show and the figure shows the retrieved ones only.

Writes into ``out_dir/retrieval-heads/``: ``report.html``, ``numbers.json``, ``circuit.json``
(the retrieval heads, score > 0.1, schema interp.circuit/1), ``scores.json`` (a Result of every
head's score) and ``responses.json`` (every episode's answer under every masking condition).
"""
from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from interp.reports import stored
from interp.reports.headline import headline_table, inside, miss_from
from interp.reports.page import fig_to_img, head_label, html_page, new_figure, table
from interp.stats import detectable_difference, jaccard

TITLE = "Retrieval heads (Wu et al. 2024): copy-paste scores, and needle retrieval with the top heads masked"
DEFAULT_MODEL = None
ALL_NEEDLES = ("soup", "vault", "hobby", "sailboat", "quiz", "muffins", "painting", "parrot", "password", "comet")
KS = (5, 10, 20, 50)
#: lengths x depths x needles: the episodes (each scored, and each tested under masking with the
#: other fold's heads); max_new: the paper's 50; ks: masking sizes (SmolLM2: 1.9, 3.7, 7.4, 18.5% of
#: its 270 heads); n_random: random draws per K; batch / mask_batch: episodes per decode.
QUICK = {"lengths": (160,), "depths": (0.5,), "needles": ("soup", "parrot", "quiz", "comet"), "max_new": 24,
         "ks": (5, 50), "n_random": 2, "batch": 8, "mask_batch": 4, "buffer": 0, "n_boot": 400}
STANDARD = {"lengths": (256,), "depths": (0.25, 0.75), "needles": ALL_NEEDLES, "max_new": 32, "ks": KS,
            "n_random": 5, "batch": 20, "mask_batch": 4, "buffer": 0, "n_boot": 2000}
FULL = {"lengths": (256, 512, 1024, 2048), "depths": (0.0, 0.25, 0.5, 0.75, 1.0), "needles": ALL_NEEDLES,
        "max_new": 50, "ks": KS, "n_random": 5, "batch": 10, "mask_batch": 2, "buffer": 0, "n_boot": 2000}
#: The GPU setting (``--device cuda``): contexts up to SmolLM2's 8,192 positions (64 kept for the
#: answer), 11 depths as the paper, 10 random draws.
CUDA = {"lengths": (1024, 2048, 4096, 6144, 8192), "depths": tuple(i / 10 for i in range(11)),
        "needles": ALL_NEEDLES, "max_new": 50, "ks": KS, "n_random": 10, "batch": 32, "mask_batch": 4,
        "buffer": 64, "n_boot": 2000}
SETTINGS = {"quick": QUICK, "standard": STANDARD, "full": FULL, "cuda": CUDA}
#: Runs of the cuda setting (reduced) on a GPU machine without network, stored in benchmarks/ (an
#: earlier one, at 2K and 8K tokens with K = 10, 20, predates the headline contract: BENCHMARKS.md).
GPU_RUNS = (
    ("H200, 1K-8K tokens: 4 lengths x 3 depths x 10 needles = 120 episodes, K = 5, 10, 20, 50, 5 random draws",
     "gpu_h200_retrieval_heads_1k8k.json", "interp reproduce retrieval-heads --device cuda  (overrides: lengths=(1024, "
     "2048, 4096, 8192), depths=(0.1, 0.5, 0.9), n_random=5)"),
)

#: Wu et al. 2024, share of heads per score bin, recomputed from the official score files
#: (shared/papers/retrieval-heads.md): Llama-2-7B-80K (586 kept episodes), Mistral-7B-v0.2, Qwen1.5-14B-Chat.
PAPER_BINS = {"0": 0.702, "(0, 0.1]": 0.266, "(0.1, 0.5]": 0.026, "> 0.5": 0.006}
PAPER_MODELS = {"Llama-2-7B-80K": (0.702, 0.266, 0.026, 0.006), "Mistral-7B-v0.2": (0.650, 0.308, 0.037, 0.005),
                "Qwen1.5-14B-Chat": (0.711, 0.246, 0.042, 0.001)}
PAPER_RANGE = {b: (min(v[i] for v in PAPER_MODELS.values()), max(v[i] for v in PAPER_MODELS.values()))
               for i, b in enumerate(PAPER_BINS)}
PAPER_SHARE = {m: v[2] + v[3] for m, v in PAPER_MODELS.items()}  # score > 0.1: 3.2%, 4.2%, 4.3%
N_TOP = 5  # heads whose attention on failed episodes is reported


def steps(settings: dict) -> int:
    return 2


def run(load, settings: dict, seed: int = 0, tick=lambda step: None) -> dict:
    """Scores and the cross-fitted masking test: the raw objects the report is made from."""
    from interp.methods import retrieval_heads as rh
    from interp.tasks import needle_episodes

    s = settings
    model = load(DEFAULT_MODEL)
    chat = bool(getattr(model, "interp_spec", None) and model.interp_spec.has_chat_template)
    episodes = needle_episodes(model.tokenizer, s["lengths"], s["depths"], list(s["needles"]), seed, chat=chat,
                               prepend_bos=bool(model.cfg.default_prepend_bos), buffer=s["buffer"])
    t = time.time()
    scores = rh.score_heads(model, episodes, s["max_new"], progress=False, batch=s["batch"])
    t_score = time.time() - t
    tick("scores")
    t = time.time()
    masking = rh.masking_test(model, scores, episodes, s["ks"], s["n_random"], seed, s["max_new"],
                              batch=s["mask_batch"], progress=False)
    tick("masking")
    return {"model": model, "episodes": episodes, "scores": scores, "masking": masking,
            "settings": {**s, "chat": chat}, "seed": seed,
            "timings_s": {"score": t_score, "masking": time.time() - t}}


# ------------------------------------------------------------------------------------- numbers
def _bin_verdict(b: str, est: float, lo: float, hi: float) -> str:
    pmin, pmax = PAPER_RANGE[b]
    if hi >= pmin and lo <= pmax:
        return "reproduced"
    return "partly" if pmin / 2 <= est <= 2 * pmax else "not"


def _k_verdict(k: int, base: float, top: tuple, rand: tuple, diff: tuple) -> tuple[str, str]:
    """Top-K masked against random-K masked: the paper's claim is that masking the retrieval heads
    breaks retrieval (top 50: NIAH below 50) while as many random heads barely matter."""
    drop_top, drop_rand = base - top[0], base - rand[0]
    specific = diff[1] > 0  # the interval of random - top excludes 0
    strong = drop_top >= 10 and drop_top >= 2 * max(drop_rand, 0.0)
    if k == 50:
        strong = strong and top[0] < 50
    if specific and strong:
        return "reproduced", "top-K masked lowers recall clearly more than random K"
    if specific:
        return "partly", ("top-K masked lowers recall more than random K, but "
                          + ("not below 50" if k == 50 and top[0] >= 50 else "random K cost a lot too"
                             if drop_rand > drop_top / 2 else "the drop is small"))
    if diff[0] > 0:
        return "not", "top-K lower than random K, but the interval includes no difference (sample size)"
    return "not", "top-K masked does not lower recall more than random K here (the model)"


def numbers(res: dict) -> dict:
    from interp.methods import retrieval_heads as rh

    model, sc, mk, s = res["model"], res["scores"], res["masking"], res["settings"]
    L, H = sc.shape
    n_kept, n_eps = len(sc.kept), len(sc.scored)
    bins_ci = sc.bins_ci(n_boot=s["n_boot"], seed=res["seed"])
    summ = mk.summary(n_boot=s["n_boot"], seed=res["seed"])
    top = sc.top(L * H)
    retrieval = [h for h in top if float(sc.score[h]) > 0.1]
    small = f"{model.interp_key} (135M) on {min(s['lengths'])}-{max(s['lengths'])}-token contexts"
    headline = []
    by_episodes = sc.bins_by_episodes(seed=res["seed"])
    trend = ", ".join(f"{r['bins']['0']:.3f} at {r['episodes']}" for r in by_episodes)
    for b in rh.BINS:
        est, lo, hi = bins_ci[b]
        pmin, pmax = PAPER_RANGE[b]
        verdict = _bin_verdict(b, est, est if lo is None else lo, est if hi is None else hi)
        why = f"{n_kept} counted episodes (paper: 586); " + (
            f"no interval: a head leaves bin 0 at its first copy, so the share falls as episodes are added "
            f"(bin 0: {trend} episodes) and a bootstrap sample, with fewer distinct episodes, is biased; "
            if lo is None else "") + (
            "within the paper's range" if verdict == "reproduced" else f"differs from the paper's 7-14B models: {small}")
        headline.append({"name": f"share of heads with retrieval score {b}", "ours": est,
                         "ci": None if lo is None else [lo, hi], "n": n_kept,
                         "paper": f"{PAPER_BINS[b]:.1%} (Llama-2-7B-80K; {pmin:.1%}-{pmax:.1%} over 3 models)",
                         "verdict": verdict, "why": why,
                         # no interval: the share moves with the number of episodes (see why)
                         "miss": miss_from(verdict, "model", lo is None)})
    est, lo, hi = bins_ci["retrieval heads"]
    verdict = ("reproduced" if 0 < est <= 0.06 and lo > 0 else "partly" if 0 < est <= 0.12 else "not")
    headline.append({"name": "share of retrieval heads (score > 0.1)", "ours": est, "ci": [lo, hi], "n": n_kept,
                     "paper": "3.2% (Llama-2-7B-80K), 4.2% Mistral, 4.3% Qwen: sparse, < 5%",
                     "verdict": verdict,
                     "why": f"{len(retrieval)} of {L * H} heads; " + (
                         "sparse as in the paper" if verdict == "reproduced" else
                         f"{'none found' if est == 0 else 'more than the paper'}: {small}, {n_kept} episodes"),
                     "miss": miss_from(verdict, "model", lo <= 0.05 and hi > 0)})
    base, blo, bhi = summ["unmasked"]
    headline.append({"name": "NIAH recall (ROUGE-1 x 100), unmasked", "ours": base, "ci": [blo, bhi], "n": summ["n"],
                     "paper": "n/a (the baseline of the masking test)", "verdict": None,
                     "why": f"{summ['n']} episodes, graded recall of 6-16-token answers; {small}", "miss": None})
    for k in mk.ks:
        row = summ["k"][k]
        t, r, d = row["top"], row["random"], row["random_minus_top"]
        verdict, reason = _k_verdict(k, base, t, r, d)
        paper = ("below 50 (every model), random 50 barely moves" if k == 50 else
                 "lower than with K random heads (falls as K grows)")
        headline.append({"name": f"NIAH recall with the top {k} heads masked (ranked on the other needles)",
                         "ours": t[0], "ci": [t[1], t[2]], "n": summ["n"], "paper": paper, "verdict": verdict,
                         "why": f"{reason}: random-{k} {r[0]:.0f}, difference random - top {d[0]:+.1f} "
                                f"[{d[1]:+.1f}, {d[2]:+.1f}], unmasked {base:.0f}",
                         # undecided: the difference's interval holds 0 (or, at K = 50, top's holds 50)
                         "miss": miss_from(verdict, "model", inside([d[1], d[2]], 0.0) or
                                           (k == 50 and inside([t[1], t[2]], 50.0)))})
        headline.append({"name": f"NIAH recall with {k} random heads masked ({len(row['draws'])} draws outside "
                                 "the top quarter)", "ours": r[0], "ci": [r[1], r[2]], "n": summ["n"],
                         "paper": "barely below the unmasked recall", "verdict": None,
                         "why": "the control: per-draw means " + ", ".join(f"{x:.0f}" for x in row["draws"]),
                         "miss": None})
    sds = [summ["k"][k]["sd_diff"] for k in mk.ks]
    detect = detectable_difference(summ["n"], sd=max(statistics.mean(sds), 1e-9)) if summ["n"] > 1 else float("inf")
    regions = {"failed": rh.attention_regions(sc, top[:N_TOP], retrieved=False),
               "retrieved": rh.attention_regions(sc, top[:N_TOP], retrieved=True)}
    stab = sc.stability(10)
    fold_tops = {str(f): [head_label(*h) for h in p["top"][max(mk.ks)][:10]] for f, p in mk.plan.items()}
    fa = [set(map(tuple, p["top"][max(mk.ks)][:10])) for p in mk.plan.values()]
    exact = _exact_span_share(sc)
    return {
        "meta": {"model_key": model.interp_key, "n_layers": L, "n_heads": H, "n_episodes": n_eps,
                 "chat": s["chat"], "timings_s": res["timings_s"]},
        "headline": headline,
        "detectable": (f"{summ['n']} masking episodes (graded recall): a paired top-vs-random difference of "
                       f"{detect:.0f} recall points is detectable (5%, 80% power, observed sd of the differences); "
                       f"score bins over {n_kept} counted episodes"),
        "niah_success": sum(r > 50 for r in sc.recall) / n_eps,
        "mean_recall": statistics.mean(sc.recall),
        "kept_episodes": n_kept,
        "shifted_windows": sum(x.span != x.episode.needle_span for x in sc.scored),
        "bins": sc.bins(), "bins_ci": {b: list(v) for b, v in bins_ci.items()}, "bins_by_episodes": by_episodes,
        "paper_bins": PAPER_BINS,
        "paper_models": PAPER_MODELS,
        "n_retrieval_heads": len(retrieval),
        "share_retrieval_heads": len(retrieval) / (L * H),
        "share_retrieval_heads_exact_span": exact,
        "retrieval_heads": [head_label(*h) for h in retrieval],
        "top": [{"head": head_label(*h), "score": float(sc.score[h]), "frequency": float(sc.frequency[h])}
                for h in top[:20]],
        "frequency": {"mean_top10": statistics.mean(float(sc.frequency[h]) for h in top[:10]),
                      "share_heads_active": float((sc.frequency > 0).float().mean())},
        "stability": {"mean_jaccard_top10": stab["mean_jaccard"],
                      "top10_per_needle": {n: [head_label(*h) for h in t] for n, t in stab["top"].items()},
                      "folds_top10": fold_tops,
                      "folds_jaccard_top10": jaccard(fa[0], fa[1]) if len(fa) == 2 else None},
        "regions": regions,
        "recall_by_episode": [{"needle": x.episode.needle_id, "length": x.episode.context_length,
                               "depth": x.episode.depth, "recall": x.recall, "answer": x.text}
                              for x in sc.scored],
        "masking": {"n": summ["n"], "unmasked": list(summ["unmasked"]),
                    "k": {str(k): {"top": list(v["top"]), "random": list(v["random"]),
                                   "random_minus_top": list(v["random_minus_top"]), "draws": v["draws"]}
                          for k, v in summ["k"].items()},
                    "plan": {str(f): {"scored_on": p["scored_on"], "n_episodes": p["n_episodes"],
                                      "top": {str(k): [head_label(*h) for h in v] for k, v in p["top"].items()}}
                             for f, p in mk.plan.items()}},
    }


def _exact_span_share(sc) -> float:
    """Share of retrieval heads when the span is the answer's exact place (not the paper's first
    > 90% window): a check of how much the paper's window rule matters here."""
    from interp.methods.retrieval_heads import retrieval_score

    kept = [sc.scored[i] for i in sc.kept]
    if not kept:
        return 0.0
    st = torch.stack([retrieval_score(x.top1, x.tokens, x.episode.tokens, x.episode.needle_span) for x in kept])
    return float((st.mean(0) > 0.1).float().mean())


# ------------------------------------------------------------------------------------- figures
def plot_scores(sc, bins_ci: dict | None = None):
    """Every head's score (layer x head) and the four-bin distribution beside the paper's models."""
    fig = new_figure(12, 4)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    im = ax1.imshow(sc.score.numpy().T, aspect="auto", origin="lower", cmap="viridis")
    ax1.set_xlabel("layer")
    ax1.set_ylabel("head")
    ax1.set_title("retrieval score per head")
    fig.colorbar(im, ax=ax1, fraction=0.05)
    bins = sc.bins()
    x = range(4)
    ours = [100 * v for v in bins.values()]
    if bins_ci:  # the bins without an interval (0 and (0, 0.1]: ``RetrievalScores.bins_ci``) get no bar
        err = [[0.0 if bins_ci[b][1] is None else 100 * (bins[b] - bins_ci[b][1]) for b in bins],
               [0.0 if bins_ci[b][2] is None else 100 * (bins_ci[b][2] - bins[b]) for b in bins]]
        ax2.bar(x, ours, yerr=err, capsize=3, label="ours (95% bootstrap interval where valid)")
    else:
        ax2.bar(x, ours, label="ours")
    for i, (m, v) in enumerate(PAPER_MODELS.items()):
        ax2.plot([xx + 0.12 * (i - 1) for xx in x], [100 * max(y, 1e-3) for y in v], "o", ms=5, label=f"paper: {m}")
    ax2.set_xticks(list(x), list(bins))
    ax2.set_ylabel("% of heads")
    ax2.set_yscale("log")
    ax2.legend(fontsize=8)
    ax2.set_title("score distribution")
    return fig


def plot_recall_vs_k(mk, summary: dict):
    """NIAH recall against K: top-K masked and random-K masked (mean over draws with its interval,
    and each draw's mean), the unmasked recall as a band."""
    fig = new_figure(6.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ks = mk.ks
    base = summary["unmasked"]
    ax.axhspan(base[1], base[2], color="0.85", label=f"unmasked {base[0]:.0f}")
    for name, color in (("top", "C3"), ("random", "C0")):
        m = [summary["k"][k][name][0] for k in ks]
        lo = [summary["k"][k][name][1] for k in ks]
        hi = [summary["k"][k][name][2] for k in ks]
        ax.plot(ks, m, "o-", color=color, label="top-K masked" if name == "top" else "random-K masked (mean of draws)")
        ax.fill_between(ks, lo, hi, color=color, alpha=0.2)
    for k in ks:
        d = summary["k"][k]["draws"]
        ax.plot([k] * len(d), d, "x", color="C0", alpha=0.6, ms=5)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("K heads masked (query zeroing while decoding)")
    ax.set_ylabel("NIAH recall (ROUGE-1 x 100)")
    ax.set_ylim(-3, 103)
    ax.legend(fontsize=8)
    ax.set_title(f"masking, {summary['n']} episodes (x: each random draw)")
    return fig


def plot_stability(sc, k: int = 10):
    """Per-needle mean score of the overall top-2k heads, and the overlap of per-needle top-k sets."""
    stab = sc.stability(k)
    fig = new_figure(13, 4.2)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    tab = torch.tensor(stab["table"]) if stab["table"] else torch.zeros(1, 1)
    im = ax1.imshow(tab.numpy(), aspect="auto", cmap="viridis", vmin=0)
    ax1.set_yticks(range(len(stab["needles"])), [f"{n} ({stab['episodes'][n]})" for n in stab["needles"]])
    ax1.set_xticks(range(len(stab["heads"])), [head_label(*h) for h in stab["heads"]], rotation=90, fontsize=8)
    ax1.set_title(f"mean score per needle of the overall top {len(stab['heads'])} heads")
    fig.colorbar(im, ax=ax1, fraction=0.04)
    jac = torch.tensor(stab["jaccard"]) if stab["jaccard"] else torch.zeros(1, 1)
    im2 = ax2.imshow(jac.numpy(), vmin=0, vmax=1, cmap="magma")
    ax2.set_xticks(range(len(stab["needles"])), stab["needles"], rotation=90, fontsize=8)
    ax2.set_yticks(range(len(stab["needles"])), stab["needles"], fontsize=8)
    mj = stab["mean_jaccard"]
    ax2.set_title(f"Jaccard overlap of per-needle top-{k} (mean {mj:.2f})" if mj is not None else f"top-{k} overlap")
    fig.colorbar(im2, ax=ax2, fraction=0.04)
    return fig


def plot_regions(regions: dict, heads: list[str]):
    """Where the top heads' top-1 attention lands while decoding, failed vs retrieved episodes."""
    from interp.methods.retrieval_heads import REGIONS

    fig = new_figure(8, 3.2)
    ax = fig.add_subplot(1, 1, 1)
    names = [n for n in ("failed", "retrieved") if regions[n]["pairs"]]
    left = [0.0] * len(names)
    for i, r in enumerate(REGIONS):
        vals = [100 * regions[n]["share"][r] for n in names]
        ax.barh(range(len(names)), vals, left=left, color=f"C{i}", label=r)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_yticks(range(len(names)), [f"{n} ({regions[n]['episodes']} episodes)" for n in names])
    ax.set_xlabel(f"% of decoding steps x heads ({', '.join(heads)})")
    ax.set_xlim(0, 100)
    ax.legend(fontsize=7, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    ax.set_title("where the top heads look while the model answers")
    return fig


def plot_masking(res: dict, k: int | None = None):
    """Recall per (length, depth) cell: unmasked, top-K masked, random-K masked (mean of draws)."""
    s, mk = res["settings"], res["masking"]
    k = k or max(mk.ks)
    panels = [("unmasked", mk.unmasked), (f"top-{k} masked", mk.top[k]), (f"random-{k} masked", mk.random_mean(k))]
    fig = new_figure(3.4 * len(panels), 0.6 + 0.5 * max(3, len(s["lengths"])))
    lengths, depths = list(s["lengths"]), list(s["depths"])
    for i, (title, recalls) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        grid = torch.full((len(lengths), len(depths)), float("nan"))
        for a, n in enumerate(lengths):
            for b, d in enumerate(depths):
                vals = [r for e, r in zip(mk.episodes, recalls) if e.context_length == n and e.depth == d]
                if vals:
                    grid[a, b] = sum(vals) / len(vals)
        im = ax.imshow(grid.numpy(), vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
        ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
        ax.set_xlabel("depth")
        ax.set_ylabel("context tokens")
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    return fig


# ---------------------------------------------------------------------------------------- page
def render(num: dict, figures: dict[str, str]) -> str:
    m, mk = num["meta"], num["masking"]
    st = m["settings"]
    setup = table([
        ("model", m["model_key"]),
        ("episodes", f'{m["n_episodes"]}: needles {", ".join(st["needles"])} x lengths {list(st["lengths"])} x depths '
                     f'{list(st["depths"])} (chat template {m["chat"]}), seed {m["seed"]}'),
        ("decoding", f'greedy, at most {st["max_new"]} tokens, stop at a newline once the answer began'),
        ("masking", f'K in {list(st["ks"])}, {st["n_random"]} random draws per K from outside the top quarter; '
                    "heads ranked on the other fold of needles"),
        ("setting", m["setting"]), ("date", m["date"]),
        ("run time (s)", ", ".join(f"{k} {v:.0f}" for k, v in m["timings_s"].items()) + f', total {m["wall_s"]:.0f}'),
        ("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items()))])

    head = headline_table(num["headline"]) + f'<p class="note">Detectable: {num["detectable"]}.</p>'
    top = table([(t["head"], t["score"], t["frequency"]) for t in num["top"]],
                ("head", "score", "activation frequency"))
    sens = (f'<p class="note">{num["kept_episodes"]} of {m["n_episodes"]} episodes retrieved (recall > 50), mean '
            f'recall {num["mean_recall"]:.0f}. {num["shifted_windows"]} episodes have a paper window that starts '
            f'before the answer (answers of more than 10 distinct tokens); with the exact answer span instead, '
            f'the share of retrieval heads would be {num["share_retrieval_heads_exact_span"]:.1%} '
            f'(paper\'s window: {num["share_retrieval_heads"]:.1%}). Mean activation frequency of the top 10: '
            f'{num["frequency"]["mean_top10"]:.2f}; heads active in at least one episode: '
            f'{num["frequency"]["share_heads_active"]:.1%}.</p>')
    stab = num["stability"]
    folds = "; ".join(f"fold {f} (ranked on {', '.join(p['scored_on'])}, {p['n_episodes']} episodes): "
                      f"{', '.join(stab['folds_top10'][f])}" for f, p in mk["plan"].items())
    stab_html = (figures["stability"] + f'<p>Top 10 of each fold\'s ranking (the heads masked on the other fold): '
                 f'{folds}. Jaccard overlap of the two: {stab["folds_jaccard_top10"]}.</p>')
    reg = num["regions"]
    reg_html = figures["regions"] + "<p>" + " ".join(
        f'{n}: the top heads attend to a prompt token equal to the one being emitted in '
        f'{reg[n]["copy_share"]:.0%} of the steps.' for n in ("failed", "retrieved") if reg[n]["pairs"]) + "</p>"
    note = ('<p class="note">Score and masking follow the paper\'s code (prefill without the last prompt token, '
            "compare with the emitted token, first > 90% window, ROUGE-1 > 50, query zeroing from the last prompt "
            "token on). Deviations: ROUGE-1 without stemming; random heads from outside the top quarter (the paper: "
            "outside its top 100); heads cross-fitted on the other half of the needles; a 135M model on short "
            "contexts, the paper's 7-14B models on 1K-50K tokens; needles and filler written here.</p>")
    return html_page(f'Retrieval heads of {m["model_key"]}', [
        ("Setup", setup), ("Headline numbers beside the paper's", head + note),
        ("Scores", figures["scores"] + sens + top),
        ("Masking: recall against K", figures["recall_k"] + figures["masking"]),
        ("Stability of the top heads across needles", stab_html),
        ("Where the top heads look on failed episodes", reg_html),
        ("Long contexts on a GPU machine (stored runs)", stored.section(GPU_RUNS))])


def save(res: dict, num: dict, folder) -> str:
    """Writes scores.json, circuit.json and responses.json; returns the page."""
    from interp import graph
    from interp.result import Result

    folder, model, sc, mk = Path(folder), res["model"], res["scores"], res["masking"]
    L, H = sc.shape
    Result(sc.score, ("layer", "head"), "retrieval_score", "retrieval_score",
           meta={"n_kept_episodes": len(sc.kept), "model_key": model.interp_key}).save(folder / "scores.json")
    heads = [h for h in sc.top(L * H) if sc.score[h] > 0.1]
    graph.from_heads({h: "retrieval" for h in heads}, model=model.interp_key, task="niah",
                     metric="retrieval_score", method="retrieval score > 0.1 (interp.methods.retrieval_heads)",
                     provenance={"seed": res["seed"], "n_prompts": len(sc.kept), "ablation": None,
                                 "setting": num["meta"].get("setting"), "lengths": list(res["settings"]["lengths"])},
                     scores={h: float(sc.score[h]) for h in heads}).save(folder / "circuit.json")
    responses = [{"needle": e.needle_id, "length": e.context_length, "depth": e.depth, "answer": e.answer,
                  **{name: mk.texts[name][i] for name in mk.texts}} for i, e in enumerate(mk.episodes)]
    (folder / "responses.json").write_text(json.dumps(responses, indent=1))
    summ = mk.summary(n_boot=res["settings"]["n_boot"], seed=res["seed"])
    top = sc.top(N_TOP)
    figures = {"scores": fig_to_img(plot_scores(sc, {b: tuple(v) for b, v in num["bins_ci"].items()}), "scores"),
               "recall_k": fig_to_img(plot_recall_vs_k(mk, summ), "recall against K"),
               "masking": fig_to_img(plot_masking(res), "masking by length and depth"),
               "stability": fig_to_img(plot_stability(sc), "stability"),
               "regions": fig_to_img(plot_regions(num["regions"], [head_label(*h) for h in top]), "regions")}
    return render(num, figures)
