"""Needle-in-a-haystack episodes: lengths, needle and answer spans, depths, filler, find_span,
ROUGE-1 recall, chat prompts, seeding.

Runs on the shipped models' tokenizers only (no weights): SmolLM2's cache folder must exist (a
missing one fails); Qwen2.5 and Gemma are tested when their cache folders are there.
"""
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from interp.errors import PromptError
from interp.models import REGISTRY
from interp.tasks import find_span, needle_episode, needle_episodes, rouge1_recall
from interp.tasks.needle import (
    FUNCTION_WORDS, LENGTH_TOLERANCE, NEEDLES, NEEDLES_BY_ID, PLAIN_QUESTION, Needle, content_words,
    filler_sentences, filler_vocabulary, needle_window, words,
)

LENGTHS = (256, 1024)
DEPTHS = (0.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def case(tokenizer_model):
    m = tokenizer_model
    return SimpleNamespace(key=m.key, tok=m.tokenizer, bos=m.cfg.default_prepend_bos)


@pytest.fixture(scope="module")
def episodes(case):
    return needle_episodes(case.tok, lengths=LENGTHS, depths=DEPTHS, prepend_bos=case.bos, seed=0)


def _decode(tok, ids) -> str:
    return tok.decode(ids.tolist() if isinstance(ids, torch.Tensor) else ids)


def _filler_text(ep) -> str:
    """The context with the needle sentence cut out."""
    needle = NEEDLES_BY_ID[ep.needle_id].sentence
    c0 = ep.text.index(needle)
    start = ep.text.rindex("\n", 0, c0) + 1 if "\n" in ep.text[:c0] else 0
    return ep.text[start:c0] + ep.text[c0 + len(needle):].split("\n\nQuestion:")[0]


# ------------------------------------------------------------------------------------ episodes
def test_lengths_within_tolerance(case, episodes):
    assert len(episodes) == len(NEEDLES) * len(LENGTHS) * len(DEPTHS)
    assert {e.context_length for e in episodes} == set(LENGTHS)
    for e in episodes:
        assert e.tokens.dtype == torch.long and e.tokens.ndim == 1
        assert abs(len(e) - e.context_length) <= LENGTH_TOLERANCE * e.context_length
        # In practice first-fit filling lands 0-4 tokens under the target.
        assert -4 <= len(e) - e.context_length <= 0, (e.needle_id, e.context_length, len(e))
        # The text is what the tokens say (BOS aside).
        body = e.tokens[1:] if case.bos else e.tokens
        assert case.tok(e.text, add_special_tokens=False)["input_ids"] == body.tolist()
        assert (e.tokens[0].item() == case.tok.bos_token_id) == case.bos


def test_needle_span_decodes_to_the_answer(case, episodes):
    for e in episodes:
        s, e_ = e.needle_span
        assert _decode(case.tok, e.tokens[s:e_]).strip() == e.answer
        assert e.tokens[s:e_].tolist() == e.answer_ids.tolist()
        assert _decode(case.tok, e.answer_ids) == " " + e.answer
        assert 5 <= len(e.answer_ids) <= 20  # multi-token answers: graded recall
        assert find_span(e.tokens, e.answer_ids) == e.needle_span
        n0, n1 = e.needle_start_sentence
        c0, c1 = e.context_span
        assert c0 <= n0 < s < e_ <= n1 <= c1 < len(e)


def test_needle_sentence_is_intact_and_follows_a_sentence_end(case, episodes):
    for e in episodes:
        needle = NEEDLES_BY_ID[e.needle_id].sentence
        assert e.text.count(needle) == 1
        n0, n1 = e.needle_start_sentence
        # Qwen merges the final "." with the following "\n\n" into one token, hence strip().
        assert _decode(case.tok, e.tokens[n0:n1]).strip() == needle
        before = _decode(case.tok, e.tokens[e.context_span[0]:n0])
        assert before == "" or before.rstrip().endswith("."), (e.needle_id, e.depth, before[-40:])
        assert (before == "") == (e.depth == 0.0)
        after = e.text[e.text.index(needle) + len(needle):]
        assert after.startswith(" ") and after[1].isupper() or after.startswith("\n\nQuestion:")


def test_depth_orders_the_needle_and_hits_the_edges(case, episodes):
    groups = defaultdict(list)
    for e in episodes:
        groups[e.needle_id, e.context_length].append(e)
    for (needle_id, length), eps in groups.items():
        eps.sort(key=lambda e: e.depth)
        starts = [e.needle_span[0] for e in eps]
        assert starts == sorted(set(starts)), (needle_id, length, starts)  # strictly increasing
        first, last = eps[0], eps[-1]
        # Depth 0: the needle opens the context; depth 1: it closes it, right before the question.
        assert first.needle_start_sentence[0] == first.context_span[0] == int(case.bos)
        assert last.needle_start_sentence[1] == last.context_span[1]
        needle = NEEDLES_BY_ID[needle_id].sentence
        assert last.text.endswith(needle + PLAIN_QUESTION.format(question=last.question))
        # Moved back to a sentence end: never past the requested depth, by less than one sentence.
        for e in eps:
            assert e.actual_depth <= e.depth + 1e-9
            assert e.depth - e.actual_depth < 0.15
        # One haystack per (needle, seed): only the needle moves between depths.
        assert len({_filler_text(e).replace("  ", " ").strip() for e in eps}) == 1


def test_answer_words_do_not_occur_in_the_filler(case, episodes):
    """No content word of an answer is in the filler (function words like "the" may be): the
    answer occurs once in the context, and no filler window can pass for it."""
    vocab = filler_vocabulary()
    for n in NEEDLES:
        assert not set(content_words(n.answer)) & vocab, n.id
        assert len(words(n.answer)) >= 4, n.id  # graded recall
    for e in episodes:
        filler = set(words(_filler_text(e)))
        assert len(filler) > 20
        assert not set(content_words(e.answer)) & filler
        # Subword pieces and function words may recur, but no filler window comes near the
        # answer's token set: neither span finder can be misled.
        filler_ids = case.tok(_filler_text(e), add_special_tokens=False)["input_ids"]
        with pytest.raises(PromptError, match="not in the context"):
            find_span(filler_ids, e.answer_ids)
        with pytest.raises(PromptError, match="no window"):
            needle_window(filler_ids, e.answer_ids)


def test_filler_excludes_words_and_ends_sentences():
    stream = filler_sentences(3, exclude=["Harbour", "bridge"])
    sentences = [next(stream) for _ in range(500)]
    assert all(s[0].isupper() and s.endswith(".") for s in sentences)
    assert not any({"harbour", "bridge"} & set(words(s)) for s in sentences)
    assert len(set(sentences)) > 400  # varied
    unfiltered = filler_sentences(3)
    assert any("harbour" in words(next(unfiltered)) for _ in range(500))
    with pytest.raises(PromptError, match="avoids"):
        next(filler_sentences(0, exclude=sorted(filler_vocabulary())))


def test_prepend_bos_shifts_everything_by_one(case):
    if case.tok.bos_token_id is None:
        pytest.skip("no BOS token")
    a = needle_episode(case.tok, "quiz", 512, 0.0, prepend_bos=False)
    b = needle_episode(case.tok, "quiz", 512, 0.0, prepend_bos=True)
    assert b.tokens[0].item() == case.tok.bos_token_id != a.tokens[0].item()
    assert b.tokens[1:].tolist() == case.tok(b.text, add_special_tokens=False)["input_ids"]
    assert -4 <= len(b) - 512 <= 0  # the BOS is counted in the length
    assert b.needle_span == tuple(x + 1 for x in a.needle_span)
    assert b.needle_start_sentence == (1, a.needle_start_sentence[1] + 1)


def test_buffer_and_bad_arguments(case):
    e = needle_episode(case.tok, "soup", 512, 0.5, buffer=50)
    assert -4 <= len(e) - 462 <= 0 and e.buffer == 50
    with pytest.raises(PromptError, match="depth"):
        needle_episode(case.tok, "soup", 512, 1.5)
    with pytest.raises(PromptError, match="too small"):
        needle_episode(case.tok, "soup", 20, 0.5)
    with pytest.raises(PromptError, match="unknown needle"):
        needle_episode(case.tok, "no-such-needle", 256, 0.5)
    with pytest.raises(PromptError, match="buffer"):
        needle_episode(case.tok, "soup", 256, 0.5, buffer=-1)
    with pytest.raises(PromptError):
        Needle("x", "The answer is somewhere.", "Where?", "elsewhere")
    with pytest.raises(PromptError, match="content words"):
        Needle("x", "It is in the box.", "Where is it?", "in the")


def test_custom_needle(case):
    n = Needle("kite", "The red kite belongs to Ottoline Quagmire.", "Whose is the red kite?",
               "Ottoline Quagmire")
    e = needle_episode(case.tok, n, 256, 0.5, seed=4)
    assert _decode(case.tok, e.tokens[slice(*e.needle_span)]).strip() == "Ottoline Quagmire"


# ----------------------------------------------------------------------------------- find_span
def test_find_span_on_ids():
    assert find_span([5, 1, 2, 3, 1, 2, 3], [1, 2, 3]) == (1, 4)  # first exact occurrence
    assert find_span(torch.tensor([9, 3, 4, 8]), torch.tensor([7, 3, 4])) == (1, 3)  # matching core
    assert find_span([9, 7, 3, 4, 8], [6, 3, 4, 5], threshold=0.4) == (2, 4)
    with pytest.raises(PromptError, match="not in the context"):
        find_span([9, 7, 3, 4, 8], [6, 3, 4, 5])  # 2/4 is not > 0.5
    with pytest.raises(PromptError, match="empty"):
        find_span([1, 2], [])


def test_find_span_at_depth_zero_and_one(case):
    for depth in (0.0, 1.0):
        e = needle_episode(case.tok, "hobby", 256, depth)
        s, e_ = find_span(e.tokens, e.answer_ids)
        assert (s, e_) == e.needle_span
        assert _decode(case.tok, e.tokens[s:e_]).strip() == "carving tiny walnut chess pieces for her grandchildren"
        if depth == 0.0:
            assert e.needle_start_sentence[0] == 0
        else:
            assert _decode(case.tok, e.tokens[e_:]).startswith(".\n\nQuestion:")


def test_find_span_with_a_different_leading_space(case):
    tok = case.tok
    answer = " carving tiny walnut chess pieces"
    ans = tok(answer, add_special_tokens=False)["input_ids"]
    text = "His hobby, listed below:\ncarving tiny walnut chess pieces\nThat is all."
    ctx = tok(text, add_special_tokens=False)["input_ids"]
    assert all(ctx[i:i + len(ans)] != ans for i in range(len(ctx)))  # no exact occurrence
    s, e = find_span(ctx, ans)
    assert set(ctx[s:e]) <= set(ans)  # no foreign boundary tokens
    assert _decode(tok, ctx[s:e]).strip() == "tiny walnut chess pieces"
    recall = len(set(ctx[s:e]) & set(ans)) / len(set(ans))
    assert 0.5 < recall < 0.9
    with pytest.raises(PromptError):  # the paper's > 90 % would not accept it
        find_span(ctx, ans, threshold=0.9)
    # A digit answer after a quote instead of a space: the space token is the only one missing.
    ans = tok(" 58213", add_special_tokens=False)["input_ids"]
    ctx = tok('The code is "58213", he said.', add_special_tokens=False)["input_ids"]
    s, e = find_span(ctx, ans)
    assert _decode(tok, ctx[s:e]) == "58213"


def test_needle_window_is_the_first_window_over_90_percent():
    """The paper's rule: the FIRST window of len(answer) tokens whose token set holds > 90% of the
    answer's, even where the exact occurrence comes later."""
    answer = list(range(100, 111))  # 11 distinct tokens: 10/11 > 0.9
    ctx = [1, 2, 3] + answer + [4, 5]
    assert needle_window(ctx, answer) == (2, 13)  # one token early: the last answer token is left out
    assert needle_window(ctx, answer[:10]) == (3, 13)  # 10 distinct tokens: 9/10 is not > 0.9
    assert needle_window([9] + answer, answer, threshold=0.95) == (1, 12)
    with pytest.raises(PromptError, match="no window"):
        needle_window([1, 2, 3], [7, 8])
    with pytest.raises(PromptError, match="empty"):
        needle_window([1, 2], [])


def test_needle_window_on_episodes(case, episodes):
    """On every built-in episode the paper's window lies inside the needle sentence: at the answer
    itself for answers of at most 10 distinct tokens, else up to a token or two early."""
    for e in episodes:
        s, e_ = needle_window(e.tokens, e.answer_ids)
        n0, n1 = e.needle_start_sentence
        assert e_ - s == len(e.answer_ids) and n0 <= s and e_ <= n1
        if len(set(e.answer_ids.tolist())) <= 10:
            assert (s, e_) == e.needle_span
        else:
            assert 0 <= e.needle_span[0] - s <= 2


def test_find_span_answer_absent_raises(case, episodes):
    e = next(e for e in episodes if e.needle_id == "soup" and e.context_length == 256)
    parrot = case.tok(" toasted sunflower seeds", add_special_tokens=False)["input_ids"]
    with pytest.raises(PromptError, match="not in the context"):
        find_span(e.tokens, parrot)


# ------------------------------------------------------------------------------------- ROUGE-1
def test_rouge1_recall():
    ref = "smoked Hungarian paprika"
    assert rouge1_recall("smoked Hungarian paprika", ref) == 100.0
    assert rouge1_recall("The secret ingredient is smoked Hungarian paprika.", ref) == 100.0
    assert rouge1_recall("smoked paprika", ref) == pytest.approx(200 / 3)
    assert rouge1_recall("Hungarian goulash", ref) == pytest.approx(100 / 3)  # not kept: <= 50
    assert rouge1_recall("", ref) == 0.0
    assert rouge1_recall("SMOKED, hungarian... Paprika!", ref) == 100.0
    assert rouge1_recall("behind wendell s wardrobe", "behind Wendell's wardrobe") == 100.0
    assert rouge1_recall("a b", "a a b") == pytest.approx(200 / 3)  # counts are clipped
    assert rouge1_recall("58213", "58213") == 100.0 and rouge1_recall("58214", "58213") == 0.0
    with pytest.raises(PromptError):
        rouge1_recall("anything", " ,. ")


# ---------------------------------------------------------------------------------------- chat
def test_chat_episodes(case):
    tok = case.tok
    if not REGISTRY[case.key].has_chat_template:
        with pytest.raises(PromptError, match="chat template"):
            needle_episode(tok, "soup", 256, 0.5, chat=True)
        return
    eps = needle_episodes(tok, lengths=(256, 1024), depths=(0.0, 0.5, 1.0), chat=True)
    marker = tok.apply_chat_template(
        [{"role": "user", "content": "@@@"}], tokenize=False, add_generation_prompt=True
    )
    head, tail = marker.split("@@@")
    assert "<|im_start|>user" in head and tail.endswith("<|im_start|>assistant\n")
    for e in eps:
        assert e.text.startswith(head) and e.text.endswith(tail)
        assert e.chat and abs(len(e) - e.context_length) <= LENGTH_TOLERANCE * e.context_length
        assert -4 <= len(e) - e.context_length <= 0
        s, e_ = e.needle_span
        assert _decode(tok, e.tokens[s:e_]).strip() == e.answer
        assert find_span(e.tokens, e.answer_ids) == e.needle_span
        assert _decode(tok, e.tokens[: e.context_span[0]]) == head
        needle = NEEDLES_BY_ID[e.needle_id].sentence
        if e.depth == 0.0:
            assert e.needle_start_sentence[0] == e.context_span[0]
        if e.depth == 1.0:
            assert e.needle_start_sentence[1] == e.context_span[1]
            assert e.text.endswith(f"{needle}\n\nQuestion: {e.question}" + tail)


# ------------------------------------------------------------------------------------- seeding
def test_seeded(case, episodes):
    again = needle_episodes(case.tok, lengths=(1024,), depths=DEPTHS, prepend_bos=case.bos, seed=0)
    same = [e for e in episodes if e.context_length == 1024]
    assert [e.text for e in again] == [e.text for e in same]
    assert all(torch.equal(a.tokens, b.tokens) for a, b in zip(again, same))
    # A single episode is the same as its place in the grid.
    at = {(e.needle_id, e.context_length, e.depth): e for e in episodes}
    one = needle_episode(case.tok, "muffins", 1024, 0.5, seed=0, prepend_bos=case.bos)
    twin = at["muffins", 1024, 0.5]
    assert torch.equal(one.tokens, twin.tokens) and one.needle_span == twin.needle_span
    other = needle_episodes(case.tok, lengths=(1024,), depths=(0.5,), prepend_bos=case.bos, seed=1)
    for e in other:
        same = at[e.needle_id, 1024, 0.5]
        assert e.seed == 1
        assert _filler_text(e) != _filler_text(same)
        first = lambda ep: _filler_text(ep).strip().split(". ")[:3]  # noqa: E731
        assert first(e) != first(same)
