"""Metrics read at each example's own answer position.

Every function takes logits [batch, pos, vocab] (a full forward's output) or [batch, vocab]
(already read at the answer positions) and returns one value per example, [batch]; average with
``.mean()``. Reading ``logits[:, -1]`` on right-padded batches reads padding: never do that.
"""
from __future__ import annotations

import torch
from jaxtyping import Float, Int

from interp.tasks.prompts import PromptSet


def at_answer(logits: Float[torch.Tensor, "batch pos vocab"], answer_pos: Int[torch.Tensor, " batch"]):
    """Logits at each example's answer position: [batch, vocab] (passes [batch, vocab] through)."""
    if logits.ndim == 2:
        return logits
    return logits[torch.arange(logits.shape[0], device=logits.device), answer_pos.to(logits.device)]


def logit_diff(logits, prompts: PromptSet) -> Float[torch.Tensor, " batch"]:
    """LD = logit[answer] - logit[distractor] at the answer position (Wang et al. 2022)."""
    last = at_answer(logits, prompts.answer_pos)
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, prompts.answer_ids.to(last.device)] - last[rows, prompts.distractor_ids.to(last.device)]


def answer_prob(logits, prompts: PromptSet) -> Float[torch.Tensor, " batch"]:
    """p(answer) under the softmax over the full vocabulary at the answer position."""
    last = at_answer(logits, prompts.answer_pos).float().log_softmax(-1)
    rows = torch.arange(last.shape[0], device=last.device)
    return last[rows, prompts.answer_ids.to(last.device)].exp()


def answer_loss(logits, prompts: PromptSet) -> Float[torch.Tensor, " batch"]:
    """-log p(answer) at the answer position."""
    return -answer_prob(logits, prompts).log()


def kl_to_reference(
    logits, reference_logits, answer_pos: Int[torch.Tensor, " batch"]
) -> Float[torch.Tensor, " batch"]:
    """KL(p || q) = sum_v p_v (log p_v - log q_v), p = softmax(reference), q = softmax(logits).

    Over the full vocabulary at each example's answer position (Zhou et al. 2025, Ships: p is
    the unablated model, q the ablated one).
    """
    log_q = at_answer(logits, answer_pos).float().log_softmax(-1)
    log_p = at_answer(reference_logits, answer_pos).float().log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def normalised(patched, clean: float, corrupted: float):
    """(M_patched - M_corrupt) / (M_clean - M_corrupt): 0 = no recovery, 1 = full recovery."""
    return (patched - corrupted) / (clean - corrupted)


METRICS = {"logit_diff": logit_diff, "prob": answer_prob, "loss": answer_loss}


def get_metric(name: str):
    """A metric by name (logit_diff, prob, loss)."""
    from interp.errors import InterpError

    if name not in METRICS:
        raise InterpError(f"unknown metric {name!r}: use one of {', '.join(METRICS)}")
    return METRICS[name]
