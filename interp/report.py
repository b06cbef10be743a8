"""Quick-start report: the standard IOI analyses of one model, written as one self-contained HTML page.

    >>> from interp.report import quickstart, write_index
    >>> path = quickstart()                       # reports/quickstart/report.html (~1 min on a CPU)
    >>> write_index("reports", {"quickstart": path})

``quickstart`` runs, on IOI prompts (Wang et al. 2022) with the p_ABC corruption:
  1. the clean and corrupted logit difference, and the fraction of prompts with IO > S;
  2. head_out activation patching at all positions (denoising), normalised to [corrupted=0, clean=1];
  3. direct logit attribution of every head, and of each layer's attention and MLP;
  4. the logit lens: the logit difference read from the residual stream after each layer;
  5. zero and mean ablation of the three heads with the largest |DLA|;
  6. the attention patterns (circuitsvis) of the top DLA head's layer on the first prompt.
It writes ``report.html`` (figures as base64 PNG, the circuitsvis widget inline, so the page works
offline), ``numbers.json`` (every number in the page) and ``patching_head_out.json`` (Result.save).

Figures are drawn on matplotlib's Agg canvas directly (``Figure`` + ``FigureCanvasAgg``), so importing
this module never changes the pyplot backend of a notebook.
"""
from __future__ import annotations

import base64
import contextlib
import datetime
import html
import io
import json
import os
import platform
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from tqdm.auto import tqdm

QUICK_N, FULL_N = 8, 32
ABLATION_MODES = ("zero", "mean")


# ------------------------------------------------------------------------------------- helpers
def quick_layers(n_layers: int, every: int = 3, last: int = 3) -> list[int]:
    """Every ``every``-th layer plus the last ``last`` layers, sorted: the quick-mode sweep."""
    return sorted(set(range(0, n_layers, every)) | set(range(max(0, n_layers - last), n_layers)))


def sweep_layers(n_layers: int, heads: list[tuple[int, int]] = ()) -> list[int]:
    """The quick-mode patching layers: ``quick_layers`` plus the layers of ``heads`` (the top DLA heads)."""
    return sorted(set(quick_layers(n_layers)) | {int(l) for l, _ in heads})


def head_label(layer: int, head: int) -> str:
    """``head_label(9, 6) == "9.6"``: the LAYER.HEAD form the CLI's ``--heads`` accepts."""
    return f"{int(layer)}.{int(head)}"


def new_figure(width: float = 6.0, height: float = 4.0):
    """A matplotlib Figure on an Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def fig_to_img(fig, alt: str = "") -> str:
    """A matplotlib figure as an ``<img>`` tag with the PNG embedded as base64."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}"/>'


@contextlib.contextmanager
def cpu_threads(n: int | None):
    """Run the block with ``torch.set_num_threads(n)`` (None: leave it), restoring it afterwards."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def default_threads() -> int | None:
    """1 on machines with 2 cores or fewer, else None (PyTorch's default).

    On a small virtual machine whose host throttles it to about one core, PyTorch's OpenMP threads
    stall each other: a forward of the default model takes ~10 s with 2 threads, ~0.4 s with one.
    """
    return 1 if (os.cpu_count() or 1) <= 2 else None


def _versions() -> dict:
    """Versions of this package and the libraries its numbers depend on."""
    import interp

    out = {"interp": interp.__version__, "python": platform.python_version()}
    for dist in ("torch", "transformers", "transformer-lens", "circuitsvis"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = None
    return out


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


# ---------------------------------------------------------------------------------------- html
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: left; font-size: 0.92em; }
th { background: #f3f3f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; }
.note { color: #555; font-size: 0.92em; }
"""


def html_page(title: str, sections: list[tuple[str, str]]) -> str:
    """A self-contained HTML page: a title and (heading, html) sections."""
    body = "\n".join(f"<h2>{html.escape(h)}</h2>\n{content}" for h, content in sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{CSS}</style></head><body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def table(rows: list[tuple], header: tuple | None = None) -> str:
    """An HTML table; floats are formatted to 3 decimals and right-aligned."""
    def cell(v):
        if isinstance(v, float):
            text = f"{v:.1e}" if 0 < abs(v) < 5e-4 else f"{v:.3f}"
            return f'<td class="num">{text}</td>'
        return f"<td>{html.escape(str(v))}</td>"

    head = "<tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>" if header else ""
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table>{head}{body}</table>"


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
        ("mode", "quick" if m["quick"] else "full"),
        ("patched layers", ", ".join(map(str, numbers["patching"]["layers"]))),
        ("date", m["date"]),
        ("versions", ", ".join(f"{k} {v}" for k, v in m["versions"].items())),
        ("runtime", f'{m["runtime_s"]:.1f} s'),
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


# ---------------------------------------------------------------------------------- entry points
@contextlib.contextmanager
def _timed(timings: dict, key: str, bar):
    """Record the seconds a step takes in ``timings[key]`` and advance the progress ``bar``."""
    bar.set_postfix_str(key)
    t = time.time()
    yield
    timings[key] = time.time() - t
    bar.update(1)


def run_analyses(model, prompts, quick: bool = True) -> dict:
    """Every analysis of the report, as raw objects (Results, DLA, dicts), with ``timings``."""
    import interp

    out = {"timings": {}}
    timings = out["timings"]
    with tqdm(total=5, desc="quickstart") as bar:
        with _timed(timings, "baseline", bar):
            out["baseline"] = baseline_numbers(model, prompts)
        with _timed(timings, "dla_and_lens", bar):
            out["dla"] = interp.direct_logit_attribution(model, prompts)
            out["lens"] = interp.logit_lens(model, prompts)
            out["top_heads"] = top_dla_heads(out["dla"], 3)
        with _timed(timings, "patching", bar):
            layers = sweep_layers(model.cfg.n_layers, out["top_heads"]) if quick else None
            out["patching"] = interp.patch(model, prompts, "head_out", layers=layers)
            out["patching"].meta["model_key"] = model.interp_key
        with _timed(timings, "ablation", bar):
            out["ablation"] = ablation_numbers(model, prompts, out["top_heads"])
        with _timed(timings, "attention", bar):
            layer, head = out["top_heads"][0]
            out["attention"] = attention_numbers(model, prompts, layer, head)
            out["widget"] = attention_widget(model, prompts, layer)
    return out


def collect_numbers(model, prompts, res: dict, seed: int, quick: bool) -> dict:
    """Everything ``numbers.json`` holds: settings, prompts and every analysis's numbers."""
    lens_values = res["lens"].values.tolist()  # entry i: the residual after layer i-1 (0: embedding)
    positive = [i for i, v in enumerate(lens_values) if v > 0]
    spec = model.interp_spec
    return {
        "meta": {
            "model_key": model.interp_key, "model_title": spec.title if spec else model.interp_key,
            "n_layers": model.cfg.n_layers, "n_heads": model.cfg.n_heads,
            "n_prompts": len(prompts), "seed": seed, "quick": quick, "task": "ioi",
            "corruption": "abc", "prepend_bos": prompts.prepend_bos,
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "versions": _versions(), "timings_s": res["timings"], "runtime_s": None,
            "torch_threads": torch.get_num_threads(),
        },
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


def make_figures(res: dict) -> dict[str, str]:
    """The report's figures as ``<img>`` tags, by section."""
    base = res["baseline"]
    lens = plot_logit_lens(res["lens"], base["clean"]["logit_diff"], base["corrupted"]["logit_diff"])
    return {
        "patching": fig_to_img(plot_patching(res["patching"]), "head_out patching"),
        "dla": fig_to_img(plot_dla(res["dla"]), "direct logit attribution"),
        "logit_lens": fig_to_img(lens, "logit lens"),
        "ablation": fig_to_img(plot_ablation(res["ablation"]), "ablation"),
    }


def quickstart(model_key: str | None = None, out_dir: str = "reports", quick: bool = True, seed: int = 0) -> Path:
    """Run the IOI quick-start analyses and write ``out_dir/quickstart/report.html``.

    Args:
        model_key: a registered model key (None = the default, SmolLM2-135M-Instruct), a local
            folder or a hub name.
        out_dir: the reports folder; files go to ``out_dir/quickstart/``.
        quick: 8 prompts; patch every 3rd layer, the last 3 and the layers of the top-3 DLA
            heads (30-60 s on a 2-core CPU). Else 32 prompts and all layers (several minutes).
        seed: seed of the IOI prompt generator.

    Returns:
        The path of ``report.html``. Next to it: ``numbers.json`` and ``patching_head_out.json``.

    On machines with 2 cores or fewer it runs with one PyTorch thread (see ``default_threads``).
    """
    with cpu_threads(default_threads()):
        return _quickstart(model_key, Path(out_dir) / "quickstart", quick, seed)


def _quickstart(model_key: str | None, folder: Path, quick: bool, seed: int) -> Path:
    """The body of :func:`quickstart`, writing into ``folder``."""
    import interp

    start = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    model = interp.load_model(model_key)
    prompts = interp.tasks.ioi_examples(model, n=QUICK_N if quick else FULL_N, seed=seed)
    load_s = time.time() - start

    res = run_analyses(model, prompts, quick)
    res["timings"] = {"load": load_s, **res["timings"]}
    numbers = collect_numbers(model, prompts, res, seed, quick)
    figures = make_figures(res)
    numbers["meta"]["runtime_s"] = time.time() - start

    res["patching"].save(folder / "patching_head_out.json")
    (folder / "numbers.json").write_text(json.dumps(numbers, indent=1))
    path = folder / "report.html"
    page = render_report(numbers, figures, res["widget"].local_src, _prompt_rows(model, prompts))
    path.write_text(page, encoding="utf-8")
    return path


def write_index(out_dir: str | Path, reports: dict[str, Path]) -> Path:
    """Write ``out_dir/index.html`` linking each report (title -> path), relative to ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for title, path in reports.items():
        href = Path(os.path.relpath(Path(path).resolve(), out_dir.resolve())).as_posix()
        items.append(f'<li><a href="{html.escape(href, quote=True)}">{html.escape(title)}</a></li>')
    stamp = datetime.datetime.now().isoformat(timespec="seconds")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>interp reports</title>'
            f"<style>{CSS}</style></head><body>\n<h1>interp reports</h1>\n<ul>\n" + "\n".join(items)
            + f'\n</ul>\n<p class="note">Written {stamp}.</p>\n</body></html>\n')
    index = out_dir / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
