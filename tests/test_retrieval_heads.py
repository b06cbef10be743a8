"""Retrieval heads (interp.methods.retrieval_heads) on the real default model: the KV-cached decoder
against the TransformerBridge, the score formula on a constructed episode, masking only while decoding."""
import pytest
import torch

from interp.ablation import ablation_hooks
from interp.hooks import hook_name
from interp.methods import retrieval_heads as rh
from interp.tasks import needle_episodes


@pytest.fixture(scope="module")
def episode(model):
    return needle_episodes(model.tokenizer, lengths=(256,), depths=(0.5,), needles=["vault"], seed=0, chat=True)[0]


@pytest.fixture(scope="module")
def decoded(model, episode):
    return rh.Decoder(model).decode(episode.tokens, max_new=20)


def test_decoder_matches_the_bridge(model, episode, decoded):
    """Prefill logits, every greedy token and every head's top-1 attention equal the bridge's."""
    assert len(decoded.tokens) >= 3
    full = torch.cat([episode.tokens, torch.tensor(decoded.tokens)])
    names = [hook_name("pattern", l) for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        logits, cache = model.run_with_cache(full[None], names_filter=lambda n: n in names)
    T = len(episode.tokens)
    assert (logits[0, T - 1] - decoded.prefill_logits).abs().max() < 1e-3
    assert logits[0, T - 1:-1].argmax(-1).tolist() == decoded.tokens
    for step in range(decoded.top1.shape[0]):
        bridge = torch.stack([cache[n][0, :, T + step].argmax(-1) for n in names])  # [L, H]
        agree = (bridge == decoded.top1[step]).float().mean()
        assert agree > 0.99, (step, agree)  # (ties in near-uniform rows may break differently)


def test_score_of_a_head_whose_attention_is_known(episode):
    """A head that looks at each answer token of the span as it is generated scores 1; one that looks
    at the span but at the wrong token, or outside it, scores 0; half the copies score 1/2."""
    s, e = episode.needle_span
    answer = episode.tokens[s:e].tolist()
    steps, L, H = len(answer), 2, 3
    top1 = torch.zeros(steps, L, H, dtype=torch.long)  # position 0: outside the span
    top1[:, 0, 0] = torch.arange(s, e)  # copies every token
    top1[:, 0, 1] = torch.arange(s, e).roll(1)  # in the span, wrong token (for spans > 1 token)
    top1[: steps // 2, 1, 2] = torch.arange(s, s + steps // 2)  # copies the first half only
    fake = rh.Decoded(answer, "", top1, torch.zeros(1))
    score = rh.retrieval_score(fake, episode)
    assert score[0, 0] == pytest.approx(1.0)
    assert score[0, 1] == 0 and score[1, 0] == 0
    assert score[1, 2] == pytest.approx((steps // 2) / (e - s))


def test_real_episode_is_retrieved_and_scored(model, episode, decoded):
    from interp.tasks import rouge1_recall

    assert rouge1_recall(decoded.text, episode.answer) > 50
    score = rh.retrieval_score(decoded, episode)
    assert float(score.max()) > 0.5  # some head copies most of the needle
    assert float((score > 0).float().mean()) < 0.2  # and few heads do: retrieval heads are sparse


def test_masking_only_while_decoding(model, episode, decoded):
    """The prefill (and so the first token) is untouched; the next step equals the bridge with the
    heads' queries zeroed at that position only."""
    heads = [(8, 0), (14, 3), (2, 4)]
    masked = rh.Decoder(model).decode(episode.tokens, max_new=3, masked=heads)
    assert torch.equal(masked.prefill_logits, decoded.prefill_logits)
    assert masked.tokens[0] == decoded.tokens[0]
    seq = torch.cat([episode.tokens, torch.tensor(masked.tokens[:1])])[None]
    hooks = ablation_hooks(model, heads, "ua", positions=seq.shape[1] - 1, eps=0.0)
    with torch.no_grad():
        ref = model.run_with_hooks(seq, fwd_hooks=hooks)[0, -1].argmax().item()
    assert masked.tokens[1] == ref
    assert (masked.top1[0, 8, 0], masked.top1[0, 14, 3]) == (0, 0)  # uniform attention: first maximum
