"""Fast approximations of edge patching: EAP, EAP-IG, and node-level AtP on edges.

For an edge s -> r (``interp.edges``) exact patching changes the receiver's input by
Delta_s = c_s(source) - c_s(base). Its first-order estimate needs one gradient:

    EAP (Syed et al. 2023):     score(s -> r) ~ Delta_s . dM/dx_r           at the base run
    EAP-IG (Hanna et al. 2024): score(s -> r) ~ Delta_s . mean_a dM/dx_r    along a path a in [0, 1]

with the dot product summed over positions and d_model, and averaged over prompts (the
gradient of the summed per-prompt metric: each prompt's own gradient). The path of EAP-IG:

* "inputs": the embedding moves from the base run's to the source run's, x_0 = e_base +
  a (e_source - e_base), m steps at the midpoints a = (k + 1/2) / m (the EAP-IG code uses the left
  end points k / m; the midpoint rule is more accurate for the same m);
* "activations": one node at a time (the embedding, each layer's attention output, each MLP)
  moves from its base to its source output, the rest computed as usual, m steps each; gradients
  averaged over every node and step (as MIB's EAP-IG-activations).

``atp``: the node-level attribution patching estimate of each edge's *sender* (``interp.
attribution_patching``'s quantity, Delta_s . dM/dc_s): what a node-level method can say about an
edge. Each method returns ``interp.edges.EdgeScores`` on the same edges as exact patching, so
``interp.methods.edge_audit`` compares them. Gradients are read through TransformerLens's hooks
of each head's q/k/v input and each MLP's input (``interp.reference._edge_inputs``).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from interp import edges as E
from interp.errors import ComponentError
from interp.hooks import hook_name
from interp.metrics import at_answer, logit_diff
from interp.reference import EDGE_HOOKS, _edge_inputs, sender_contributions
from interp.tasks.prompts import PromptSet, check_prompts, on_model_device

METHODS = ("eap", "eap-ig", "eap-ig-activations", "atp")


def _receiver_hook(cfg, r: E.Receiver) -> tuple[str, int | None]:
    if r.kind == "logits":
        return hook_name("resid_post", cfg.n_layers - 1), None
    return EDGE_HOOKS[r.kind].format(r.layer), (None if r.kind == "mlp" else r.head)


def _gradients(model, tokens, prompts, metric, receivers_, fwd_hooks=()) -> dict:
    """dM/dx_r at every receiver r of the forward of ``tokens`` (with ``fwd_hooks`` first):
    {receiver: [B, T, d]}, M the sum over prompts of the per-prompt metric."""
    names = sorted({_receiver_hook(model.cfg, r)[0] for r in receivers_})
    acts: dict[str, torch.Tensor] = {}

    def start_graph(x, hook=None):  # differentiable even when the weights are frozen
        return x if x.requires_grad else x.detach().requires_grad_(True)

    def keep(name):  # a fork of the receiver's input: the gradient of this receiver alone (hook_mlp_in
        def hook(x, hook=None):  # hands the residual stream itself, which the skip connection reads too)
            acts[name] = x.clone()
            return acts[name]
        return hook

    with torch.enable_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[("hook_embed", start_graph), *fwd_hooks,
                                                         *[(n, keep(n)) for n in names]])
        m = metric(at_answer(logits, prompts.answer_pos), prompts).sum()
        # With a node's output interpolated (EAP-IG-activations), the receivers feeding only that node
        # reach the metric by no path: their gradient is zero for that step.
        grads = dict(zip(names, torch.autograd.grad(m, [acts[n] for n in names], allow_unused=True)))
        grads = {n: torch.zeros_like(acts[n]) if g is None else g for n, g in grads.items()}
    out = {}
    for r in receivers_:
        name, head = _receiver_hook(model.cfg, r)
        out[r] = grads[name] if head is None else grads[name][:, :, head]
    return out


def _delta(c_src, c_base, s: E.Sender) -> torch.Tensor:
    if s.kind == "embed":
        return c_src["embed"] - c_base["embed"]
    if s.kind == "mlp":
        return c_src["mlp", s.layer] - c_base["mlp", s.layer]
    return c_src["head", s.layer][:, :, s.head] - c_base["head", s.layer][:, :, s.head]


def _scores(edges_, c_src, c_base, grads, B: int, receivers_per_product: int = 64) -> torch.Tensor:
    """Delta_s . g_r for every edge, mean over prompts: [n_edges]. Every sender's change once
    ([senders, B*T*d]) times the gradients of up to ``receivers_per_product`` receivers at a time:
    one matrix product per group of receivers (stacking each receiver's senders again copied the
    changes once per receiver: ~330 GB of copies for every edge of SmolLM2 on 16 prompts of 62
    tokens, 200 s on this project's CPU)."""
    senders = list(dict.fromkeys(e.sender for e in edges_))
    receivers = list(dict.fromkeys(e.receiver for e in edges_))
    D = torch.stack([_delta(c_src, c_base, s).reshape(-1).float() for s in senders])  # [S, B*T*d]
    table = torch.empty(len(senders), len(receivers))
    for i in range(0, len(receivers), receivers_per_product):
        part = receivers[i:i + receivers_per_product]
        G = torch.stack([grads[r].reshape(-1).float() for r in part])  # [r, B*T*d]
        table[:, i:i + len(part)] = (D @ G.T / B).cpu()
    s_at = {s: i for i, s in enumerate(senders)}
    r_at = {r: i for i, r in enumerate(receivers)}
    return table[torch.tensor([s_at[e.sender] for e in edges_], dtype=torch.long),
                 torch.tensor([r_at[e.receiver] for e in edges_], dtype=torch.long)]


def edge_attribution(model, prompts: PromptSet, edges_: list[E.Edge] | None = None, method: str = "eap",
                     direction: str = "denoise", metric=logit_diff, steps: int = 5,
                     progress: bool = True) -> E.EdgeScores:
    """Approximate edge-patching scores of ``edges_`` (default: every edge) by ``method``: eap,
    eap-ig (``steps`` points on the input path), eap-ig-activations (``steps`` per node) or atp
    (the sender's node-level estimate). Same scale and sign as ``interp.edge_sweep.edge_patch``."""
    if method not in METHODS:
        raise ComponentError(f"unknown edge attribution method {method!r}: use one of {', '.join(METHODS)}")
    if direction not in ("denoise", "noise"):
        raise ComponentError(f"direction must be 'denoise' or 'noise', got {direction!r}")
    if steps < 1:
        raise ComponentError(f"steps must be at least 1, got {steps}")
    check_prompts(model, prompts)
    prompts = on_model_device(model, prompts)
    edges_ = E.edges(model.cfg) if edges_ is None else list(edges_)
    base_tokens, src_tokens = ((prompts.corrupted_tokens, prompts.clean_tokens) if direction == "denoise"
                               else (prompts.clean_tokens, prompts.corrupted_tokens))
    c_base, c_src = sender_contributions(model, base_tokens), sender_contributions(model, src_tokens)
    B = len(prompts)
    if method == "atp":
        values = _node_atp(model, prompts, edges_, base_tokens, c_src, c_base, metric)
    else:
        recv = list(dict.fromkeys(e.receiver for e in edges_))
        with _edge_inputs(model):
            if method == "eap":
                grads = _gradients(model, base_tokens, prompts, metric, recv)
            elif method == "eap-ig":
                grads = _mean_grads(_gradients(model, base_tokens, prompts, metric, recv,
                                               [(hook_name("resid_pre", 0), _interpolate(
                                                   hook_name("resid_pre", 0), c_base["embed"], c_src["embed"],
                                                   (k + 0.5) / steps))])
                                    for k in tqdm(range(steps), desc="EAP-IG", disable=not progress, leave=False))
            else:
                grads = _mean_grads(_gradients(model, base_tokens, prompts, metric, recv, [hook])
                                    for hook in tqdm(_node_paths(model, c_base, c_src, steps), desc="EAP-IG (activations)",
                                                     disable=not progress, leave=False))
        values = _scores(edges_, c_src, c_base, grads, B)
    return E.EdgeScores(edges_, values, method, direction,
                        meta={"n_prompts": len(prompts), "steps": steps if method.startswith("eap-ig") else None,
                              "metric": getattr(metric, "__name__", "metric")})


def _interpolate(name: str, base: torch.Tensor, src: torch.Tensor, a: float):
    """A hook setting activation ``name`` to base + a (src - base)."""
    value = (base + a * (src - base)).detach()

    def hook(act, hook=None):
        return value.to(act.dtype).clone().requires_grad_(act.requires_grad)
    return hook


def _node_paths(model, c_base, c_src, steps: int) -> list:
    """The hooks of EAP-IG-activations: each node's output interpolated, ``steps`` points each."""
    hooks = []
    nodes = [(hook_name("resid_pre", 0), c_base["embed"], c_src["embed"])]
    for l in range(model.cfg.n_layers):
        attn = lambda c: c["head", l].sum(2)  # noqa: E731  all heads' outputs, without the output bias
        b_O = getattr(model, "b_O", None)
        bias = 0 if b_O is None else b_O[l].detach()
        nodes.append((hook_name("attn_out", l), attn(c_base) + bias, attn(c_src) + bias))
        nodes.append((hook_name("mlp_out", l), c_base["mlp", l], c_src["mlp", l]))
    for name, base, src in nodes:
        hooks += [(name, _interpolate(name, base, src, (k + 0.5) / steps)) for k in range(steps)]
    return hooks


def _mean_grads(runs) -> dict:
    """The mean of the runs' gradients, receiver by receiver, summed as the runs come: one run's
    gradients in memory at a time (EAP-IG-activations makes (1 + 2 L) x steps runs: kept all at
    once, those of SmolLM2-135M on 16 IOI prompts took ~90 GiB of GPU memory)."""
    total, n = None, 0
    for g in runs:
        if total is None:
            total = {r: v.clone() for r, v in g.items()}
        else:
            for r, v in g.items():
                total[r] += v
        n += 1
    if total is None:
        raise ComponentError("no gradients to average")
    return {r: v / n for r, v in total.items()}


def _node_atp(model, prompts, edges_, base_tokens, c_src, c_base, metric) -> torch.Tensor:
    """Each edge scored by its sender's node-level AtP (Nanda 2023; ``interp.attribution_patching``):
    (a_source - a_base) . dM/da at the base run, a = the embedding, a head's z or an MLP's output,
    summed over positions, mean over prompts."""
    L = model.cfg.n_layers
    names = [hook_name("resid_pre", 0)] + [hook_name("z", l) for l in range(L)] + [hook_name("mlp_out", l) for l in range(L)]
    acts = {}

    def keep(name):
        def hook(x, hook=None):
            acts[name] = x
            return x
        return hook

    def start_graph(x, hook=None):
        return x if x.requires_grad else x.detach().requires_grad_(True)

    with torch.enable_grad():
        logits = model.run_with_hooks(base_tokens, fwd_hooks=[("hook_embed", start_graph)] + [(n, keep(n)) for n in names])
        m = metric(at_answer(logits, prompts.answer_pos), prompts).sum()
        grads = dict(zip(names, torch.autograd.grad(m, [acts[n] for n in names])))
    B = len(prompts)
    node = {}
    for s in E.senders(model.cfg):
        if s.kind == "head":
            diff = (c_src["z", s.layer] - c_base["z", s.layer])[:, :, s.head]
            g = grads[hook_name("z", s.layer)][:, :, s.head]
        else:
            diff = _delta(c_src, c_base, s)
            g = grads[hook_name("resid_pre", 0) if s.kind == "embed" else hook_name("mlp_out", s.layer)]
        node[s] = float((diff.float() * g.float()).sum() / B)
    return torch.tensor([node[e.sender] for e in edges_])
