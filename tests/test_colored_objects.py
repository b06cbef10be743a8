"""Colored Objects prompt generator: format, alignment, positions, groups, balance, filtering.

Runs on every shipped model's tokenizer (conftest's ``tokenizer_model``; no weights loaded).
"""
import re
from collections import Counter
from types import SimpleNamespace

import pytest

from interp.errors import PromptError
from interp.tasks import co_colour_ids, co_colours, colored_objects_examples
from interp.tasks.colored_objects import COLOURS, PHRASES, SURFACES, co_vocabulary

BLOCK = (
    r"Q: On the (?P<surface>\w+), (?P<phrase>there is|you see|I see) "
    r"(?P<a1>an?) (?P<c1>\w+) (?P<o1>\w+), (?P<a2>an?) (?P<c2>\w+) (?P<o2>\w+), "
    r"and (?P<a3>an?) (?P<c3>\w+) (?P<o3>\w+)\. What color is the (?P<q>\w+)\?\nA:"
)
PROMPT = re.compile("^" + BLOCK + r" (?P<shot_answer>\w+)\n" + BLOCK.replace("?P<", "?P<L_") + "$")
N = 30


@pytest.fixture(scope="module")
def model(tokenizer_model):
    return tokenizer_model


@pytest.fixture(scope="module")
def prompts(model):
    return colored_objects_examples(model, n=N, seed=0)


def _parse(text: str) -> dict:
    m = PROMPT.match(text)
    assert m, f"prompt not in the CO format: {text!r}"
    return m.groupdict()


def _last_block(p: dict) -> tuple[list[str], list[str]]:
    return [p[f"L_c{j}"] for j in (1, 2, 3)], [p[f"L_o{j}"] for j in (1, 2, 3)]


def _encode(model, text):
    bos = [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []
    return bos + model.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_pairs_are_aligned_and_answers_follow_the_question(model, prompts):
    tok = model.tokenizer
    assert len(prompts) == N
    for i in range(N):
        clean, corrupted = prompts.clean_text[i], prompts.corrupted_text[i]
        assert len(_encode(model, clean)) == len(_encode(model, corrupted))
        assert prompts.answer_pos[i] == len(_encode(model, clean)) - 1
        a, d = prompts.answer_ids[i].item(), prompts.distractor_ids[i].item()
        assert a != d
        p, x = _parse(clean), _parse(corrupted)
        colours, objects = _last_block(p)
        colour_of = dict(zip(objects, colours))
        # Answer: " Colour" of the queried object, one token, title case, leading space.
        assert tok.decode([a]) == " " + colour_of[p["L_q"]].title()
        assert tok(tok.decode([a]), add_special_tokens=False)["input_ids"] == [a]
        # Corrupted: the same prompt but the last question asks about another object of the block.
        assert {k: v for k, v in x.items() if k != "L_q"} == {k: v for k, v in p.items() if k != "L_q"}
        assert x["L_q"] in objects and x["L_q"] != p["L_q"]
        assert tok.decode([d]) == " " + colour_of[x["L_q"]].title()
        # The shot answers its own question the same way.
        shot_colour = dict(zip([p["o1"], p["o2"], p["o3"]], [p["c1"], p["c2"], p["c3"]]))[p["q"]]
        assert p["shot_answer"] == shot_colour.title()
        assert p["surface"] in SURFACES and p["L_surface"] in SURFACES


def test_no_repeats_and_articles(model, prompts):
    vocab = co_vocabulary(model)
    for text in prompts.clean_text:
        p = _parse(text)
        for pre in ("", "L_"):
            colours = [p[f"{pre}c{j}"] for j in (1, 2, 3)]
            objects = [p[f"{pre}o{j}"] for j in (1, 2, 3)]
            assert len(set(colours)) == 3 and len(set(objects)) == 3
            assert set(colours) <= set(vocab["colours"]) and set(objects) <= set(vocab["objects"])
            for j in (1, 2, 3):
                article, word = p[f"{pre}a{j}"], p[f"{pre}c{j}"]
                assert article == ("an" if word[0] in "aeiou" else "a"), text
        # Six distinct colours/objects over the whole example when the pools allow it.
        if len(vocab["colours"]) >= 6:
            assert len({p[f"{pre}c{j}"] for pre in ("", "L_") for j in (1, 2, 3)}) == 6
        if len(vocab["objects"]) >= 6:
            assert len({p[f"{pre}o{j}"] for pre in ("", "L_") for j in (1, 2, 3)}) == 6
    # Across the set, "an" does occur (orange is a colour everywhere), so the rule is exercised.
    assert any(" an " in t for t in prompts.clean_text)


def test_named_positions_point_at_their_words(model, prompts):
    tok = model.tokenizer
    assert set(prompts.positions) == {"OQ", "O_CORRECT", "C_CORRECT", "C_WRONG1", "C_WRONG2", "C_CORRUPT", "END"}
    for i in range(N):
        p, x = _parse(prompts.clean_text[i]), _parse(prompts.corrupted_text[i])
        colours, objects = _last_block(p)
        slot, other = objects.index(p["L_q"]), objects.index(x["L_q"])
        wrong = [colours[j] for j in range(3) if j != slot]
        want = {
            "OQ": p["L_q"], "O_CORRECT": p["L_q"], "C_CORRECT": colours[slot],
            "C_WRONG1": wrong[0], "C_WRONG2": wrong[1], "C_CORRUPT": colours[other],
        }
        row = prompts.clean_tokens[i]
        for name, word in want.items():
            assert tok.decode([row[prompts.positions[name][i]].item()]) == " " + word, (name, i)
        assert prompts.positions["OQ"][i] > prompts.positions["O_CORRECT"][i] > prompts.positions["C_CORRECT"][i]
        # The corrupted prompt differs from the clean one only at OQ, where it names the other object.
        diff = (prompts.clean_tokens[i] != prompts.corrupted_tokens[i]).nonzero().flatten().tolist()
        assert diff == [prompts.positions["OQ"][i].item()]
        assert tok.decode([prompts.corrupted_tokens[i, diff[0]].item()]) == " " + x["L_q"]
        assert prompts.positions["C_CORRUPT"][i] in (prompts.positions["C_WRONG1"][i], prompts.positions["C_WRONG2"][i])
        assert prompts.positions["END"][i] == prompts.answer_pos[i]
        assert tok.decode([row[prompts.answer_pos[i]].item()]) == ":"


def test_groups_share_length_and_positions(model, prompts):
    assert prompts.groups is not None and len(prompts.groups) == N
    n_phrases = len(co_vocabulary(model)["phrases"])
    assert sorted(set(prompts.groups.tolist())) == list(range(3 * n_phrases))
    for g in set(prompts.groups.tolist()):
        idx = (prompts.groups == g).nonzero().flatten()
        assert len(idx) >= 2
        assert len(set(prompts.answer_pos[idx].tolist())) == 1
        for name, v in prompts.positions.items():
            if name != "C_CORRUPT":  # the corrupted object is drawn at random within the group
                assert len(set(v[idx].tolist())) == 1, (g, name)
        for i in idx.tolist():
            p = _parse(prompts.clean_text[i])
            assert g % 3 == _last_block(p)[1].index(p["L_q"])
            assert g // 3 == co_vocabulary(model)["phrases"].index(p["L_phrase"])


def test_correct_slot_is_balanced(prompts):
    slots = Counter()
    for text in prompts.clean_text:
        p = _parse(text)
        slots[_last_block(p)[1].index(p["L_q"])] += 1
    assert set(slots) == {0, 1, 2}
    assert max(slots.values()) - min(slots.values()) <= 1


def test_seeded(model, prompts):
    again = colored_objects_examples(model, n=N, seed=0)
    assert again.clean_text == prompts.clean_text and again.corrupted_text == prompts.corrupted_text
    assert colored_objects_examples(model, n=5, seed=0).clean_text == prompts.clean_text[:5]
    other = colored_objects_examples(model, n=N, seed=1)
    assert other.clean_text != prompts.clean_text


def test_colour_ids_are_title_case_answers(model, prompts):
    tok = model.tokenizer
    ids = co_colour_ids(model)
    names = co_colours(model)
    assert [tok.decode([i]) for i in ids.tolist()] == [" " + c.title() for c in names]
    assert names == [c for c in COLOURS if c in names]  # fixed order
    assert set(prompts.answer_ids.tolist()) <= set(ids.tolist())
    assert set(prompts.distractor_ids.tolist()) <= set(ids.tolist())


class _Splitting:
    """The real tokenizer, but the given words (any case), or everything, get one extra token."""

    def __init__(self, tok, split_all=False, words=()):
        self.tok, self.split_all, self.words = tok, split_all, {w.strip().lower() for w in words}

    def __call__(self, text, add_special_tokens=False):
        ids = self.tok(text, add_special_tokens=add_special_tokens)["input_ids"]
        if self.split_all or text.strip().lower() in self.words:
            ids = ids + [7]
        return {"input_ids": ids}

    def __getattr__(self, name):
        if name == "tokenizer":  # look like a tokenizer, not a model holding one
            raise AttributeError(name)
        return getattr(self.tok, name)


def test_everything_multi_token_raises(model):
    fake = SimpleNamespace(tokenizer=_Splitting(model.tokenizer, split_all=True), cfg=model.cfg)
    with pytest.raises(PromptError, match="too few single-token colours"):
        colored_objects_examples(fake, n=3)


def test_small_pools_fall_back_to_per_block_distinctness(model):
    keep3 = COLOURS[:3]
    fake = SimpleNamespace(
        tokenizer=_Splitting(model.tokenizer, words=[c for c in COLOURS if c not in keep3]), cfg=model.cfg
    )
    ps = colored_objects_examples(fake, n=9, seed=2)
    for text in ps.clean_text:
        p = _parse(text)
        assert {p[f"L_c{j}"] for j in (1, 2, 3)} == set(keep3)
    fake.tokenizer.words.add(keep3[0])  # two colours left
    with pytest.raises(PromptError):
        colored_objects_examples(fake, n=3)
    # A phrase that is not one token per word drops out; the groups follow the survivors.
    fake2 = SimpleNamespace(tokenizer=_Splitting(model.tokenizer, words=[" you see"]), cfg=model.cfg)
    assert co_vocabulary(fake2.tokenizer)["phrases"] == [q for q in PHRASES if q != "you see"]
    ps2 = colored_objects_examples(fake2, n=12)
    assert all("you see" not in t for t in ps2.clean_text)
    assert max(ps2.groups.tolist()) == 5
