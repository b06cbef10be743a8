"""The quick-start analysis: the standard IOI analyses of one model, as one self-contained page.

On IOI prompts (Wang et al. 2022) with the p_ABC corruption:
  1. the clean and corrupted logit difference, and the fraction of prompts with IO > S;
  2. head_out activation patching at all positions (denoising), normalised to [corrupted=0, clean=1];
  3. direct logit attribution of every head, and of each layer's attention and MLP;
  4. the logit lens: the logit difference read from the residual stream after each layer;
  5. zero and mean ablation of the three heads with the largest |DLA|;
  6. the attention patterns (circuitsvis) of the top DLA head's layer on the first prompt.
``interp reproduce quickstart`` (``interp.reports.runner``) writes ``report.html`` (figures as base64
PNG, the circuitsvis widget inline, so the page works offline), ``numbers.json`` (every number in
the page) and ``patching_head_out.json`` (Result.save).
"""
from __future__ import annotations

import datetime
import html

import torch

from interp.reports.page import CSS, fig_to_img, head_label, new_figure, table, versions

TITLE = "IOI quick start: patching, DLA, logit lens, ablation"
DEFAULT_MODEL = None
SETTINGS = {"quick": {"n_prompts": 8, "all_layers": False},
            "standard": {"n_prompts": 16, "all_layers": False},
            "full": {"n_prompts": 32, "all_layers": True}}
ABLATION_MODES = ("zero", "mean")


def steps(settings: dict) -> int:
    return 5


# ------------------------------------------------------------------------------------- helpers
def quick_layers(n_layers: int, every: int = 3, last: int = 3) -> list[int]:
    """Every ``every``-th layer plus the last ``last`` layers, sorted: the quick-mode sweep."""
    return sorted(set(range(0, n_layers, every)) | set(range(max(0, n_layers - last), n_layers)))


def sweep_layers(n_layers: int, heads: list[tuple[int, int]] = ()) -> list[int]:
    """The quick-mode patching layers: ``quick_layers`` plus the layers of ``heads`` (the top DLA heads)."""
    return sorted(set(quick_layers(n_layers)) | {int(l) for l, _ in heads})


# ------------------------------------------------------------------------------------ analyses
def baseline_numbers(model, prompts) -> dict:
    """Mean logit difference and the fraction of prompts with logit(IO) > logit(S), clean and corrupted."""
    from interp.metrics import logit_diff

    out = {}
    with torch.no_grad():
        for which, tokens in (("clean", prompts.clean_tokens), ("corrupted", prompts.corrupted_tokens)):
            ld = logit_diff(model(tokens), prompts)
            out[which] = {"logit_diff": float(ld.mean()), "frac_io_gt_s": float((ld > 0).float().mean()),
                          "per_prompt": ld.tolist()}
    return out


def patching_numbers(result, k: int = 5) -> dict:
    """The swept layers, the normalised [layer, head] grid and the top-k heads of a patching Result."""
    norm = result.normalised()
    top = result.topk(k)
    layers = result.meta["index"]["layer"]
    return {
        "layers": layers,
        "clean": result.clean,
        "corrupted": result.corrupted,
        "normalised": norm.tolist(),
        "top": [
            {"head": head_label(r["layer"], r["head"]), "value": float(r["value"]), "effect": float(r["effect"]),
             "normalised": float(r["effect"] / (result.clean - result.corrupted))}
            for _, r in top.iterrows()
        ],
    }


def top_dla_heads(dla, k: int = 3) -> list[tuple[int, int]]:
    """The k heads with the largest |DLA|, as (layer, head) pairs."""
    top = dla.heads.topk(k, by_abs=True, relative_to=None)
    return [(int(r["layer"]), int(r["head"])) for _, r in top.iterrows()]


def dla_numbers(dla, k: int = 5) -> dict:
    """DLA per head, per layer (attention, MLP), the embedding and the top-k heads by |DLA|."""
    d = dla.to_dict()
    d["top"] = [{"head": head_label(l, h), "dla": float(dla.heads.values[l, h])}
                for l, h in top_dla_heads(dla, k)]
    return d


def ablation_numbers(model, prompts, heads: list[tuple[int, int]], modes=ABLATION_MODES) -> dict:
    """The clean logit difference with ``heads`` ablated together, for each mode (and unablated).

    Mean ablation replaces each head's z by its mean over the corrupted (p_ABC) prompts, per
    position, pooled over templates.
    """
    from interp.ablation import ablate
    from interp.metrics import logit_diff

    out = {"heads": [head_label(l, h) for l, h in heads]}
    with torch.no_grad():
        ld = logit_diff(model(prompts.clean_tokens), prompts)
        out["none"] = {"logit_diff": float(ld.mean()), "frac_io_gt_s": float((ld > 0).float().mean())}
        for mode in modes:
            with ablate(model, heads, mode, reference=prompts):
                ld = logit_diff(model(prompts.clean_tokens), prompts)
            out[mode] = {"logit_diff": float(ld.mean()), "frac_io_gt_s": float((ld > 0).float().mean())}
    return out


def attention_numbers(model, prompts, layer: int, head: int) -> dict:
    """How much ``head`` attends from END to IO, S1 and S2, on the first prompt and on average."""
    from interp.hooks import hook_name

    name = hook_name("pattern", layer)
    with torch.no_grad():
        _, cache = model.run_with_cache(prompts.clean_tokens, names_filter=lambda n: n == name)
    pattern = cache[name][:, head]  # [batch, q, k]
    rows, end = torch.arange(len(prompts)), prompts.positions["END"]
    out = {"layer": layer, "head": head_label(layer, head)}
    for key in ("IO", "S1", "S2"):
        att = pattern[rows, end, prompts.positions[key]]
        out[f"END->{key}"] = {"first_prompt": float(att[0]), "mean": float(att.mean())}
    return out


def attention_widget(model, prompts, layer: int, example: int = 0):
    """A circuitsvis attention_patterns widget of every head of ``layer`` on one clean prompt.

    Only the prompt's own tokens are shown (no right padding). Returns the RenderedHTML object; its
    ``local_src`` is self-contained (the JavaScript is inlined), so it works offline.
    """
    import circuitsvis as cv
    import circuitsvis.utils.render as render
    from interp.hooks import hook_name

    render.internet_on = lambda: False  # offline: never probe the network, always the local bundle
    n = int(prompts.answer_pos[example]) + 1
    tokens = prompts.clean_tokens[example, :n]
    name = hook_name("pattern", layer)
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens[None], names_filter=lambda x: x == name)
    return cv.attention.attention_patterns(tokens=model.to_str_tokens(tokens), attention=cache[name][0])


# ------------------------------------------------------------------------------------- figures
def plot_patching(result):
    """Heat map of normalised head_out patching, with the swept layers as row labels."""
    fig = new_figure(6.5, 0.28 * len(result.meta["index"]["layer"]) + 2)
    ax = fig.add_subplot()
    result.plot(ax=ax, normalise=True, title="head_out patching (denoising), normalised")
    layers = result.meta["index"]["layer"]
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    return fig


def plot_dla(dla):
    """DLA of every head (heat map) and of each layer's attention and MLP (bars)."""
    fig = new_figure(12, 4.5)
    ax1, ax2 = fig.subplots(1, 2)
    dla.heads.plot(ax=ax1, title="DLA per head (logit diff)")
    layers = torch.arange(len(dla.attn.values))
    ax2.bar(layers - 0.2, dla.attn.values.numpy(), width=0.4, label="attention")
    ax2.bar(layers + 0.2, dla.mlp.values.numpy(), width=0.4, label="MLP")
    ax2.axhline(0, color="k", lw=0.5)
    ax2.set_xlabel("layer")
    ax2.set_ylabel("DLA (logit diff)")
    ax2.set_title(f"DLA per layer (embedding {dla.embed:+.2f}, total {dla.total:.2f})")
    ax2.legend()
    return fig


def plot_logit_lens(lens, clean: float, corrupted: float):
    """The logit lens curve, with the clean and corrupted model outputs as reference lines."""
    fig = new_figure(6.5, 3.5)
    ax = fig.add_subplot()
    ax.plot(range(len(lens.values)), lens.values.numpy(), marker="o", ms=3)
    ax.axhline(clean, color="C2", ls="--", lw=1, label=f"clean output {clean:.2f}")
    ax.axhline(corrupted, color="C3", ls=":", lw=1, label=f"corrupted output {corrupted:.2f}")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xlabel("layers applied (0 = embedding only; i = residual after layer i-1)")
    ax.set_ylabel("logit diff")
    ax.set_title("Logit lens")
    ax.legend()
    return fig


def plot_ablation(abl: dict):
    """Bars: the clean logit difference unablated and with the top heads zero / mean ablated."""
    fig = new_figure(5, 3.2)
    ax = fig.add_subplot()
    modes = ["none", *[m for m in ABLATION_MODES if m in abl]]
    ax.bar(modes, [abl[m]["logit_diff"] for m in modes], color=["C0", "C1", "C2"][: len(modes)])
    ax.axhline(0, color="k", lw=0.5)
    ax.set_ylabel("clean logit diff")
    ax.set_title("Ablating heads " + ", ".join(abl["heads"]))
    return fig


def numberstable(numbers: dict) -> str:
    """The headline numbers of the report as one table."""
    b, a, lens = numbers["baseline"], numbers["ablation"], numbers["logit_lens"]
    rows = [
        ("clean logit diff (mean)", b["clean"]["logit_diff"]),
        ("corrupted logit diff (mean)", b["corrupted"]["logit_diff"]),
        ("fraction IO > S, clean", b["clean"]["frac_io_gt_s"]),
        ("fraction IO > S, corrupted", b["corrupted"]["frac_io_gt_s"]),
        ("DLA: embedding", numbers["dla"]["embed"]),
        ("DLA: sum of attention layers", float(sum(numbers["dla"]["attn"]))),
        ("DLA: sum of MLP layers", float(sum(numbers["dla"]["mlp"]))),
        ("DLA: rest (total - parts)", numbers["dla"]["rest"]),
        ("logit lens: first entry with a positive logit diff (i = after layer i-1)",
         lens["first_positive_entry"]),
        ("logit lens: max (entry)", f'{lens["max"]:.3f} ({lens["argmax"]})'),
    ]
    rows += [(f"patching: top head {t['head']} (normalised)", t["normalised"]) for t in numbers["patching"]["top"]]
    rows += [(f"DLA: top head {t['head']}", t["dla"]) for t in numbers["dla"]["top"]]
    rows += [(f"ablate {', '.join(a['heads'])}: {m} -> clean logit diff", a[m]["logit_diff"])
             for m in ("none", *ABLATION_MODES) if m in a]
    return table(rows, ("quantity", "value"))


def _prompt_rows(model, prompts, k: int = 4) -> list[tuple]:
    """The first ``k`` prompt pairs with their answer and distractor as strings."""
    decode = model.tokenizer.decode
    return [
        (prompts.clean_text[i], prompts.corrupted_text[i], decode([int(prompts.answer_ids[i])]),
         decode([int(prompts.distractor_ids[i])]))
        for i in range(min(k, len(prompts)))
    ]


def render_report(numbers: dict, figures: dict[str, str], attention_html: str, prompt_rows: list) -> str:
    """The full report page from its numbers, figure <img> tags and the circuitsvis HTML."""
    m, att = numbers["meta"], numbers["attention"]
    header = table([
        ("model", f'{m["model_key"]}  ({m["model_title"]})'),
        ("prompts", f'{m["n_prompts"]} IOI prompts, corruption p_ABC (seed {m["seed"]})'),
        ("setting", m["setting"]),
        ("patched layers", ", ".join(map(str, numbers["patching"]["layers"]))),
        ("date", m["date"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items())),
        ("runtime", f'{m["wall_s"]:.1f} s'),
    ])
    att_rows = [(k, v["first_prompt"], v["mean"]) for k, v in att.items() if k.startswith("END->")]
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>interp quick-start: {html.escape(m["model_key"])}</title>
<style>{CSS}</style></head><body>
<h1>IOI quick-start report</h1>
{header}
<p class="note">Indirect object identification (Wang et al. 2022, who studied GPT-2 small; the numbers
here are for the model above). Metric: logit(IO) - logit(S) at the last prompt token.</p>
<h2>Prompts (first {len(prompt_rows)})</h2>
{table(prompt_rows, ("clean", "corrupted (p_ABC)", "answer (IO)", "distractor (S)"))}
<h2>Numbers</h2>
{numberstable(numbers)}
<h2>Activation patching: head outputs</h2>
<p class="note">Each cell: run the corrupted prompts with one head's output (z, all positions) taken
from the clean run; 0 = the corrupted logit diff, 1 = the clean one.</p>
{figures["patching"]}
<h2>Direct logit attribution</h2>
<p class="note">Each component's direct contribution to the clean logit diff through the final norm
(its scale frozen) and the unembedding.</p>
{figures["dla"]}
<h2>Logit lens</h2>
{figures["logit_lens"]}
<h2>Ablation of the top DLA heads</h2>
<p class="note">Zero: z := 0. Mean: z := its mean over the corrupted (p_ABC) prompts, per position.</p>
{figures["ablation"]}
<h2>Attention patterns: layer {att["layer"]} (top DLA head {att["head"]}), first prompt</h2>
{table(att_rows, (f"head {att['head']} attention", "first prompt", "mean over prompts"))}
<div class="cv">{attention_html}</div>
</body></html>
"""




# ------------------------------------------------------------------------------------ the runner
def run(load, settings: dict, seed: int, tick) -> dict:
    """Every analysis of the page, as raw objects (Results, DLA, dicts), with their timings."""
    import time

    import interp

    model = load(None)
    prompts = interp.tasks.ioi_examples(model, n=settings["n_prompts"], seed=seed)
    out = {"model": model, "prompts": prompts, "settings": settings, "seed": seed, "timings": {}}
    t = time.time()

    def done(step: str) -> None:
        nonlocal t
        out["timings"][step] = time.time() - t
        t = time.time()
        tick(step)

    out["baseline"] = baseline_numbers(model, prompts)
    done("baseline")
    out["dla"] = interp.direct_logit_attribution(model, prompts)
    out["lens"] = interp.logit_lens(model, prompts)
    out["top_heads"] = top_dla_heads(out["dla"], 3)
    done("dla and logit lens")
    layers = None if settings["all_layers"] else sweep_layers(model.cfg.n_layers, out["top_heads"])
    out["patching"] = interp.patch(model, prompts, "head_out", layers=layers, progress=False)
    out["patching"].meta["model_key"] = model.interp_key
    done("patching")
    out["ablation"] = ablation_numbers(model, prompts, out["top_heads"])
    done("ablation")
    layer, head = out["top_heads"][0]
    out["attention"] = attention_numbers(model, prompts, layer, head)
    out["widget"] = attention_widget(model, prompts, layer)
    done("attention")
    return out


def numbers(res: dict) -> dict:
    """Everything ``numbers.json`` holds: the prompts and every analysis's numbers. The headline is
    the clean logit difference with its bootstrap interval over prompts (not a paper claim: the
    quick start shows the tools; Wang et al.'s 3.56 is GPT-2 small's)."""
    from interp.stats import bootstrap_ci

    model, prompts = res["model"], res["prompts"]
    lens_values = res["lens"].values.tolist()  # entry i: the residual after layer i-1 (0: embedding)
    positive = [i for i, v in enumerate(lens_values) if v > 0]
    spec = model.interp_spec
    ld, lo, hi = bootstrap_ci(res["baseline"]["clean"]["per_prompt"])
    return {
        "meta": {
            "model_key": model.interp_key, "model_title": spec.title if spec else model.interp_key,
            "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads,
            "n_prompts": len(prompts), "task": "ioi", "corruption": "abc", "prepend_bos": prompts.prepend_bos,
            "timings_s": res["timings"],
        },
        "headline": [{"name": "clean logit difference (IOI)", "ours": ld, "ci": [lo, hi], "n": len(prompts),
                      "paper": "3.56 (GPT-2 small, Wang et al. 2022)", "verdict": None,
                      "why": "a demonstration of the tools, not a reproduction", "miss": None}],
        "detectable": f"{len(prompts)} prompts: the logit difference is known to within {(hi - lo) / 2:.2f}",
        "prompts": {"clean": prompts.clean_text, "corrupted": prompts.corrupted_text,
                    "answer_ids": prompts.answer_ids.tolist(),
                    "distractor_ids": prompts.distractor_ids.tolist()},
        "baseline": res["baseline"],
        "patching": patching_numbers(res["patching"]),
        "dla": dla_numbers(res["dla"]),
        "logit_lens": {"values": lens_values, "first_positive_entry": positive[0] if positive else None,
                       "max": max(lens_values), "argmax": lens_values.index(max(lens_values))},
        "ablation": res["ablation"],
        "attention": res["attention"],
    }


def figures(res: dict) -> dict[str, str]:
    """The page's figures as ``<img>`` tags, by section."""
    base = res["baseline"]
    lens = plot_logit_lens(res["lens"], base["clean"]["logit_diff"], base["corrupted"]["logit_diff"])
    return {
        "patching": fig_to_img(plot_patching(res["patching"]), "head_out patching"),
        "dla": fig_to_img(plot_dla(res["dla"]), "direct logit attribution"),
        "logit_lens": fig_to_img(lens, "logit lens"),
        "ablation": fig_to_img(plot_ablation(res["ablation"]), "ablation"),
    }


def save(res: dict, num: dict, folder) -> str:
    """Writes ``patching_head_out.json``; returns the page."""
    from pathlib import Path

    res["patching"].save(Path(folder) / "patching_head_out.json")
    return render_report(num, figures(res), res["widget"].local_src, _prompt_rows(res["model"], res["prompts"]))
