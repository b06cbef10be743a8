"""PromptSet construction and its errors."""
import json

import pytest
import torch

from interp.errors import PromptError
from interp.tasks import PromptSet, ioi_examples
from interp.tasks.ioi import single_token_words

GOOD = {"clean": "When Mary and John went to the store, John gave a drink to",
        "corrupted": "When Alice and Bob went to the store, Bob gave a drink to",
        "answer": " Mary", "distractor": " John"}


def test_ioi_generator_is_aligned_and_single_token(model):
    ps = ioi_examples(model, n=16, seed=3)
    tok = model.tokenizer
    assert ps.clean_tokens.shape == ps.corrupted_tokens.shape
    for i in range(len(ps)):
        n = int(ps.answer_pos[i]) + 1
        assert tok.decode(ps.clean_tokens[i, :n]) == ps.clean_text[i]
        # named positions point at the right names
        io, s2 = int(ps.positions["IO"][i]), int(ps.positions["S2"][i])
        assert ps.clean_tokens[i, io] == ps.answer_ids[i]
        assert ps.clean_tokens[i, s2] == ps.distractor_ids[i] == ps.clean_tokens[i, int(ps.positions["S1"][i])]
        # p_ABC: the three name slots differ from the clean names, the rest is identical
        differ = (ps.clean_tokens[i, :n] != ps.corrupted_tokens[i, :n]).nonzero().flatten().tolist()
        assert sorted(differ) == sorted([io, s2, int(ps.positions["S1"][i])])
    assert ps.groups is not None and len(set(ps.groups.tolist())) > 4
    assert ioi_examples(model, n=4, seed=3).clean_text == ps.clean_text[:4]  # seeded


def test_single_token_filter(model):
    words = single_token_words(model.tokenizer, ["Mary", "Xzyqwv", "store"])
    assert "Mary" in words and "Xzyqwv" not in words


def test_unequal_token_lengths_name_the_example(model):
    bad = dict(GOOD, corrupted="When Alice and Bob went to the big store, Bob gave a drink to")
    with pytest.raises(PromptError, match=r"example 1: clean and corrupted .* different token lengths"):
        PromptSet.from_examples(model, [GOOD, bad])


def test_multi_token_answer_is_rejected(model):
    with pytest.raises(PromptError, match=r"example 0: answer ' Maryxzqj' is \d+ tokens"):
        PromptSet.from_examples(model, [dict(GOOD, answer=" Maryxzqj")])


def test_jsonl_errors_name_the_line(model, tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(dict(GOOD, distractor=" Johnathanxq")) + "\n")
    with pytest.raises(PromptError, match=r"p.jsonl:3: distractor"):
        PromptSet.from_jsonl(path, model.tokenizer)
    path.write_text("{not json\n")
    with pytest.raises(PromptError, match=r"p.jsonl:1: not valid JSON"):
        PromptSet.from_jsonl(path, model.tokenizer)
    path.write_text(json.dumps({"clean": "a"}) + "\n")
    with pytest.raises(PromptError, match="missing or non-string field"):
        PromptSet.from_jsonl(path, model.tokenizer)
    with pytest.raises(PromptError, match="cannot read prompts file"):
        PromptSet.from_jsonl(tmp_path / "missing.jsonl", model.tokenizer)


def test_jsonl_roundtrip_and_padding(model, tmp_path):
    short = {"clean": "Then, Mary and John left. John thanked", "corrupted": "Then, Alice and Bob left. Bob thanked",
             "answer": " Mary", "distractor": " John"}
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [GOOD, short]))
    ps = PromptSet.from_jsonl(path, model.tokenizer)
    assert len(ps) == 2 and ps.answer_pos[0] > ps.answer_pos[1]
    assert ps.positions["END"].tolist() == ps.answer_pos.tolist()
    # padding after a short prompt does not change its logits at its answer position
    with torch.no_grad():
        alone = model(ps.clean_tokens[1:, : int(ps.answer_pos[1]) + 1])[0, -1]
        padded = model(ps.clean_tokens)[1, int(ps.answer_pos[1])]
    torch.testing.assert_close(alone, padded, atol=1e-4, rtol=0)


def test_bos_is_prepended_when_asked(model):
    ps = PromptSet.from_examples(model, [GOOD], prepend_bos=True, positions={"X": [1]})
    assert ps.clean_tokens[0, 0] == model.tokenizer.bos_token_id
    assert ps.positions["X"].tolist() == [2]


def test_ioi_pairs_are_aligned_for_every_shipped_tokenizer(tokenizer_model):
    """For each shipped tokenizer: equal clean/corrupted lengths, one-token names, and the named
    positions point at the names they name (so the path-patching stages read the right tokens)."""
    from interp.tasks import ioi_examples

    ps = ioi_examples(tokenizer_model, n=16, seed=0)
    tok = tokenizer_model.tokenizer
    assert ps.clean_tokens.shape == ps.corrupted_tokens.shape
    rows = torch.arange(len(ps))
    assert torch.equal(ps.clean_tokens[rows, ps.positions["IO"]], ps.answer_ids)
    assert torch.equal(ps.clean_tokens[rows, ps.positions["S1"]], ps.distractor_ids)
    assert torch.equal(ps.clean_tokens[rows, ps.positions["S2"]], ps.distractor_ids)
    assert bool((ps.positions["S1+1"] == ps.positions["S1"] + 1).all())
    for i in range(len(ps)):
        assert len(tok(tok.decode([int(ps.answer_ids[i])]), add_special_tokens=False)["input_ids"]) == 1
    # examples of one template share every position (per-template means need it)
    for g in ps.groups.unique():
        same = ps.groups == g
        for name in ("IO", "S1", "S2", "END"):
            assert len(ps.positions[name][same].unique()) == 1, (int(g), name)
