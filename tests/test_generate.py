"""The decoder's batching: several prompts decoded together equal each prompt decoded alone.

Tiny random-weight models of the families generation supports (LayerNorm with absolute
positions, RMSNorm with RoPE and grouped keys/values). With several prompts of different lengths
whose variants each have a prefix of their own, the decoder runs one padded attention over all
rows; with a prompt whose variants share one prefill it loops over the prompts. Either way every
variant's tokens, first-step logits and top-1 attention must be those of its prompt alone.
"""
from __future__ import annotations

import pytest
import torch

import interp.generate as generate_module
from interp.generate import generations
from interp.random_models import random_model


@pytest.fixture(scope="module", params=["tiny-gpt2", "tiny-llama"])
def tiny(request):
    return random_model(request.param, "cpu", torch.float32)


@pytest.mark.parametrize("sharing", [False, True], ids=["own-prefixes", "one-prompt-shares"])
def test_prompts_decoded_together_equal_each_alone(tiny, sharing, monkeypatch):
    padded_calls = []
    real_pad = generate_module._pad_prefixes
    monkeypatch.setattr(generate_module, "_pad_prefixes", lambda *a: padded_calls.append(1) or real_pad(*a))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 200, (n,), generator=g) for n in (9, 1, 12, 10)]
    variants = [[("ua", []), ("sc", [(0, 1)])], [("zero", [(1, 2)])], [("ua", [(1, 0), (0, 3)])],
                [("ua", []), ("sc", [(1, 1)]), ("zero", [(0, 0)])]]
    if sharing:  # "mask" variants share their prompt's prefill: the per-prompt loop
        variants[2] = [("ua", []), ("mask", [(1, 0)])]
    batch = list(zip(prompts, variants))
    stop = {255}  # rarely drawn: greedy rows run to max_new, sampled ones too
    for top_k in (None, 3):
        together = generations(tiny, batch, max_new=6, top_k=top_k, seed=0, stop_ids=stop, verify=1, top1=True)
        assert len(padded_calls) == (0 if sharing else 1), "the padded attention serves own prefixes only"
        padded_calls.clear()
        for (p, v), got in zip(batch, together):
            alone = generations(tiny, [(p, v)], max_new=6, top_k=top_k, seed=0, stop_ids=stop, verify=0, top1=True)[0]
            torch.testing.assert_close(got.first_logits, alone.first_logits, rtol=0, atol=1e-5)
            if top_k is None:  # sampling draws from one stream per call: only greedy tokens must match
                assert got.tokens == alone.tokens
                for a, b in zip(got.top1, alone.top1):
                    assert torch.equal(a, b)


def test_unbalanced_prompts_keep_the_loop(tiny, monkeypatch):
    """One long prompt among short ones would pad every row to its length: the loop serves them."""
    monkeypatch.setattr(generate_module, "_pad_prefixes", lambda *a: pytest.fail("padded an unbalanced batch"))
    g = torch.Generator().manual_seed(2)
    batch = [(torch.randint(0, 200, (n,), generator=g), [("ua", []), ("sc", [(0, 1)])]) for n in (30, 3, 4)]
    together = generations(tiny, batch, max_new=3, verify=0, stop_ids=set())
    assert [t.tokens for t in together] == [generations(tiny, [b], max_new=3, verify=0, stop_ids=set())[0].tokens
                                            for b in batch]


def test_greedy_rows_that_stop_leave_the_padded_batch(tiny):
    """Rows stopping at different steps (each variant's third token declared a stop token in
    turn) drop out of the padded caches; the rows left must decode as they do alone."""
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 200, (n,), generator=g) for n in (5, 9, 4)]
    variants = [[("ua", []), ("sc", [(0, 1)])], [("zero", [(1, 2)]), ("ua", [(0, 0)])], [("sc", [(1, 3)])]]
    batch = list(zip(prompts, variants))
    free = generations(tiny, batch, max_new=8, verify=0, stop_ids=set())
    stop = {free[0].tokens[1][2], free[1].tokens[0][4]}  # end one row early and another later
    together = generations(tiny, batch, max_new=8, verify=0, stop_ids=stop, top1=True)
    for (p, v), got in zip(batch, together):
        alone = generations(tiny, [(p, v)], max_new=8, verify=0, stop_ids=stop, top1=True)[0]
        assert got.tokens == alone.tokens
        assert all(torch.equal(a, b) for a, b in zip(got.top1, alone.top1))
    assert any(len(t) < 8 for gen in together for t in gen.tokens), "a row should have stopped early"
