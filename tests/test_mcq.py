"""Multiple-choice prompt generators (symbol binding, MMLU style): format, pairs, positions,
balance, label mutations, shots, seeding and the JSONL loader.

Runs on every shipped model's tokenizer (conftest's ``tokenizer_model``; no weights loaded).
"""
import json
import re
from collections import Counter

import pytest
import torch

from interp.errors import PromptError
from interp.tasks import (
    MCQSet, load_mcq_jsonl, mcq_label_ids, mmlu_style_examples, symbol_binding_examples,
)
from interp.tasks.mcq import ITEMS, MMLU_QUESTIONS, mcq_items

SYMBOL = re.compile(
    r"^Options: (\S+)\. (\w+) (\S+)\. (\w+) (\S+)\. (\w+) (\S+)\. (\w+)\n"
    r"Which option is '(\w+)'\?\nAnswer:(?P<tail> ?)(?P<shot_answer>\S*)$"
)
MMLU = re.compile(
    r"^Question: (?P<q>[^\n]+)\n(\S+)\. ([^\n]+)\n(\S+)\. ([^\n]+)\n(\S+)\. ([^\n]+)\n(\S+)\. ([^\n]+)\n"
    r"Answer:(?P<tail> ?)(?P<shot_answer>\S*)$"
)
N = 40
MUTATIONS = ["ABCD", "1234", "random", "shuffled"]


@pytest.fixture(scope="module")
def model(tokenizer_model):
    return tokenizer_model


@pytest.fixture(scope="module")
def sets(model):
    """Symbol-binding sets per label mutation, zero-shot, n=40."""
    return {lab: symbol_binding_examples(model, n=N, seed=0, labels=lab) for lab in MUTATIONS}


def _encode(model, text):
    bos = [model.tokenizer.bos_token_id] if model.cfg.default_prepend_bos else []
    return bos + model.tokenizer(text, add_special_tokens=False)["input_ids"]


def _symbol(block: str) -> dict:
    m = SYMBOL.match(block)
    assert m, f"not in the symbol-binding format: {block!r}"
    g = m.groups()
    return {
        "labels": list(g[0:8:2]), "items": list(g[1:8:2]), "asked": g[8],
        "tail": m["tail"], "shot_answer": m["shot_answer"],
    }


def _mmlu(block: str) -> dict:
    m = MMLU.match(block)
    assert m, f"not in the MMLU format: {block!r}"
    g = m.groups()
    return {
        "question": m["q"], "labels": list(g[1:9:2]), "options": list(g[2:9:2]),
        "tail": m["tail"], "shot_answer": m["shot_answer"],
    }


def _blocks(text: str) -> list[str]:
    return text.split("\n\n")


def _decode(model, i) -> str:
    return model.tokenizer.decode([int(i)])


# ------------------------------------------------------------------------------------- symbol
@pytest.mark.parametrize("labels", MUTATIONS)
def test_symbol_pairs_are_aligned_and_answer_the_asked_item(model, sets, labels):
    s = sets[labels]
    assert isinstance(s, MCQSet) and len(s) == N
    ps = s.prompts
    assert s.label_ids.shape == (N, 4) and s.correct.shape == (N,)
    for i in range(N):
        clean, corrupted = ps.clean_text[i], ps.corrupted_text[i]
        assert len(_encode(model, clean)) == len(_encode(model, corrupted))
        assert ps.answer_pos[i] == len(_encode(model, clean)) - 1
        a, d = ps.answer_ids[i].item(), ps.distractor_ids[i].item()
        assert a != d
        p, x = _symbol(clean), _symbol(corrupted)
        assert p["labels"] == s.labels[i] and len(set(p["labels"])) == 4
        assert len(set(p["items"])) == 4 and set(p["items"]) <= set(mcq_items(model))
        # The answer is the label of the asked item (in whichever slot it sits).
        gap = "" if p["tail"] == " " else " "
        slot = p["items"].index(p["asked"])
        assert _decode(model, a) == gap + p["labels"][slot]
        assert s.correct[i] == slot and s.label_ids[i, slot] == a
        # Corrupted: the same options in the same order, another item asked; distractor = its label.
        assert (x["labels"], x["items"]) == (p["labels"], p["items"])
        assert x["asked"] in p["items"] and x["asked"] != p["asked"]
        assert _decode(model, d) == gap + p["labels"][p["items"].index(x["asked"])]
        # Every label is one token as the answer, and label_ids decode to the labels.
        for j, lab in enumerate(p["labels"]):
            tid = s.label_ids[i, j].item()
            assert _decode(model, tid) == gap + lab
            assert model.tokenizer(gap + lab, add_special_tokens=False)["input_ids"] == [tid]


@pytest.mark.parametrize("labels", MUTATIONS)
def test_symbol_named_positions_point_at_their_tokens(model, sets, labels):
    s = sets[labels]
    ps = s.prompts
    want_keys = {f"LABEL_{j}" for j in range(4)} | {f"ITEM_{j}" for j in range(4)}
    assert set(ps.positions) == want_keys | {"CORRECT_LABEL", "CORRECT_ITEM", "ASKED", "END"}
    for i in range(N):
        p = _symbol(ps.clean_text[i])
        row = ps.clean_tokens[i]
        at = lambda name: _decode(model, row[ps.positions[name][i]])  # noqa: E731
        for j in range(4):
            assert at(f"LABEL_{j}").strip() == p["labels"][j]
            assert at(f"ITEM_{j}") == " " + p["items"][j]
        slot = p["items"].index(p["asked"])
        assert at("CORRECT_LABEL").strip() == p["labels"][slot]
        assert ps.positions["CORRECT_LABEL"][i] == ps.positions[f"LABEL_{slot}"][i]
        assert ps.positions["CORRECT_ITEM"][i] == ps.positions[f"ITEM_{slot}"][i]
        assert at("ASKED") == p["asked"]
        labels_pos = [ps.positions[f"LABEL_{j}"][i].item() for j in range(4)]
        assert labels_pos == sorted(labels_pos) and ps.positions["ASKED"][i] > labels_pos[-1]
        # Clean and corrupted differ only at ASKED.
        diff = (ps.clean_tokens[i] != ps.corrupted_tokens[i]).nonzero().flatten().tolist()
        assert diff == [ps.positions["ASKED"][i].item()]
        assert ps.positions["END"][i] == ps.answer_pos[i]
        assert at("END") == (" " if p["tail"] == " " else ":")


def test_correct_slot_is_balanced(sets):
    for s in sets.values():
        slots = Counter(_symbol(t)["items"].index(_symbol(t)["asked"]) for t in s.prompts.clean_text)
        assert set(slots) == {0, 1, 2, 3}
        assert max(slots.values()) - min(slots.values()) <= 1
        assert Counter(s.correct.tolist()) == slots


def test_label_mutations(model, sets):
    plain = [_symbol(t)["labels"] for t in sets["ABCD"].prompts.clean_text]
    assert all(lab == list("ABCD") for lab in plain)
    assert _decode(model, sets["ABCD"].prompts.answer_ids[0]).startswith(" ")

    rand = [_symbol(t)["labels"] for t in sets["random"].prompts.clean_text]
    for lab in rand:
        assert len(set(lab)) == 4 and all(len(c) == 1 and c.isupper() for c in lab)
        assert lab != list("ABCD")
    assert len({tuple(lab) for lab in rand}) > N // 2  # differs between questions
    assert set().union(*map(set, rand)) - set("ABCD")  # letters beyond A-D occur

    nums = sets["1234"]
    for i, t in enumerate(nums.prompts.clean_text):
        p = _symbol(t)
        assert p["labels"] == list("1234")
        assert _decode(model, nums.prompts.answer_ids[i]).strip() in "1234"
    # Every shipped tokenizer splits " 1" into ' ', '1': the prompt then ends "Answer: ".
    if len(model.tokenizer(" 1", add_special_tokens=False)["input_ids"]) > 1:
        assert all(t.endswith("Answer: ") for t in nums.prompts.clean_text)
        assert [_decode(model, x) for x in nums.label_ids[0]] == list("1234")

    shuf = sets["shuffled"]
    moved = 0
    for i, t in enumerate(shuf.prompts.clean_text):
        p = _symbol(t)
        assert sorted(p["labels"]) == list("ABCD") and p["labels"] != list("ABCD")
        slot = p["items"].index(p["asked"])
        answer = _decode(model, shuf.prompts.answer_ids[i]).strip()
        assert answer == p["labels"][slot]  # follows the item, not the slot
        moved += answer != "ABCD"[slot]
    assert moved > N // 2
    assert len({tuple(_symbol(t)["labels"]) for t in shuf.prompts.clean_text}) > 1


@pytest.mark.parametrize("labels", MUTATIONS)
@pytest.mark.parametrize("mutate_shots", [True, False])
def test_k_shot_examples_are_solved(model, labels, mutate_shots):
    k = 3
    s = symbol_binding_examples(model, n=8, seed=3, labels=labels, k_shot=k, mutate_shots=mutate_shots)
    for i, text in enumerate(s.prompts.clean_text):
        blocks = _blocks(text)
        assert len(blocks) == k + 1
        final = _symbol(blocks[-1])
        assert final["shot_answer"] == "" and final["labels"] == s.labels[i]
        for b in blocks[:-1]:
            shot = _symbol(b)
            assert shot["tail"] == " " and shot["shot_answer"]
            assert shot["shot_answer"] == shot["labels"][shot["items"].index(shot["asked"])]
            assert not set(shot["items"]) & set(final["items"])
            assert shot["labels"] == (final["labels"] if mutate_shots else list("ABCD"))
        # The shots are the same in the corrupted prompt.
        assert _blocks(s.prompts.corrupted_text[i])[:-1] == blocks[:-1]
        assert len(_encode(model, text)) == len(_encode(model, s.prompts.corrupted_text[i]))
        # Positions point into the final question.
        start = len(_encode(model, "\n\n".join(blocks[:-1]) + "\n\n"))
        assert s.prompts.positions["LABEL_0"][i] >= start - 1


def test_seeded(model, sets):
    again = symbol_binding_examples(model, n=N, seed=0, labels="random")
    assert again.prompts.clean_text == sets["random"].prompts.clean_text
    assert again.prompts.corrupted_text == sets["random"].prompts.corrupted_text
    other = symbol_binding_examples(model, n=N, seed=1, labels="random")
    assert other.prompts.clean_text != again.prompts.clean_text
    m1 = mmlu_style_examples(model, seed=5, k_shot=2, labels="shuffled")
    m2 = mmlu_style_examples(model, seed=5, k_shot=2, labels="shuffled")
    assert m1.prompts.clean_text == m2.prompts.clean_text and m1.labels == m2.labels
    assert mmlu_style_examples(model, seed=6, k_shot=2).prompts.clean_text != m1.prompts.clean_text


def test_items_and_bad_labels(model):
    items = mcq_items(model)
    assert len(items) >= 40 and len(ITEMS) >= 40
    for w in items:
        assert len(model.tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1
    with pytest.raises(PromptError, match="'10'"):
        symbol_binding_examples(model, n=2, labels=["A", "B", "C", "10"])
    with pytest.raises(PromptError, match="'10'"):
        mmlu_style_examples(model, n=2, labels=["A", "B", "C", "10"])
    with pytest.raises(PromptError, match="unknown labels"):
        symbol_binding_examples(model, n=2, labels="ABC")
    with pytest.raises(PromptError, match="unknown labels"):
        symbol_binding_examples(model, n=2, labels="AABC")
    ids = mcq_label_ids(model, [list("ABCD"), list("1234")])
    assert ids.shape == (2, 4)
    assert [_decode(model, x) for x in ids[0]] == [" A", " B", " C", " D"]


def test_mcqset_subset_and_to(sets):
    s = sets["shuffled"]
    sub = s.subset([3, 1])
    assert sub.labels == [s.labels[3], s.labels[1]]
    assert torch.equal(sub.label_ids, s.label_ids[[3, 1]])
    assert torch.equal(sub.correct, s.correct[[3, 1]])
    assert sub.prompts.clean_text == [s.prompts.clean_text[3], s.prompts.clean_text[1]]
    assert len(s.subset(slice(0, 5))) == 5 and len(s.to("cpu")) == N


# --------------------------------------------------------------------------------------- MMLU
def test_builtin_questions_are_well_formed():
    assert len(MMLU_QUESTIONS) >= 20
    assert len({q.question for q in MMLU_QUESTIONS}) == len(MMLU_QUESTIONS)
    for q in MMLU_QUESTIONS:
        assert len(q.options) == 4 and len(set(q.options)) == 4 and 0 <= q.answer < 4


@pytest.mark.parametrize("labels", MUTATIONS)
def test_mmlu_pairs_answers_and_positions(model, labels):
    s = mmlu_style_examples(model, n=N, seed=0, labels=labels)
    ps = s.prompts
    by_question = {q.question: q for q in MMLU_QUESTIONS}
    slots = Counter()
    for i in range(N):
        clean, corrupted = ps.clean_text[i], ps.corrupted_text[i]
        assert len(_encode(model, clean)) == len(_encode(model, corrupted))
        p, x = _mmlu(clean), _mmlu(corrupted)
        q = by_question[p["question"]]
        right = q.options[q.answer]
        assert sorted(p["options"]) == sorted(q.options) and p["labels"] == s.labels[i]
        slot = p["options"].index(right)
        slots[slot] += 1
        gap = "" if p["tail"] == " " else " "
        a, d = ps.answer_ids[i].item(), ps.distractor_ids[i].item()
        assert _decode(model, a) == gap + p["labels"][slot] and s.correct[i] == slot
        # Corrupted: same question and labels; the correct option swapped with one other option.
        assert x["question"] == p["question"] and x["labels"] == p["labels"]
        other = x["options"].index(right)
        assert other != slot
        swapped = list(p["options"])
        swapped[slot], swapped[other] = swapped[other], swapped[slot]
        assert x["options"] == swapped
        assert a != d and _decode(model, d) == gap + p["labels"][other]
        row = ps.clean_tokens[i]
        for j in range(4):
            assert _decode(model, row[ps.positions[f"LABEL_{j}"][i]]).strip() == p["labels"][j]
            last = _decode(model, row[ps.positions[f"ITEM_{j}"][i]]).strip()
            assert last and p["options"][j].endswith(last)
        assert ps.positions["CORRECT_LABEL"][i] == ps.positions[f"LABEL_{slot}"][i]
        assert ps.positions["CORRECT_ITEM"][i] == ps.positions[f"ITEM_{slot}"][i]
        assert ps.positions["END"][i] == ps.answer_pos[i]
    assert max(slots.values()) - min(slots.values()) <= 1 and set(slots) == {0, 1, 2, 3}
    assert "ASKED" not in ps.positions


@pytest.mark.parametrize("mutate_shots", [True, False])
def test_mmlu_k_shot(model, mutate_shots):
    s = mmlu_style_examples(model, n=12, seed=2, k_shot=2, labels="random", mutate_shots=mutate_shots)
    by_question = {q.question: q for q in MMLU_QUESTIONS}
    for i, text in enumerate(s.prompts.clean_text):
        blocks = _blocks(text)
        assert len(blocks) == 3
        final = _mmlu(blocks[-1])
        for b in blocks[:-1]:
            shot = _mmlu(b)
            q = by_question[shot["question"]]
            assert shot["question"] != final["question"]
            assert shot["shot_answer"] == shot["labels"][shot["options"].index(q.options[q.answer])]
            assert shot["labels"] == (final["labels"] if mutate_shots else list("ABCD"))


def test_jsonl_loader_and_user_questions(model, tmp_path):
    good = [
        {"question": "What is 1 + 1?", "options": ["1", "2", "3", "4"], "answer": 1},
        {"question": "Which is a fruit?", "options": ["Stone", "Apple", "Car", "Chair"], "answer": 1,
         "id": 7},
        {"question": "What is the capital of Spain?", "options": ["Madrid", "Rome", "Oslo", "Paris"],
         "answer": 0},
    ]
    path = tmp_path / "q.jsonl"
    path.write_text("\n".join(json.dumps(g) for g in good[:2]) + "\n\n" + json.dumps(good[2]) + "\n")
    qs = load_mcq_jsonl(path)
    assert [q.question for q in qs] == [g["question"] for g in good] and qs[1].answer == 1
    s = mmlu_style_examples(model, questions=path, n=6, k_shot=1)
    assert len(s) == 6 and all(_mmlu(_blocks(t)[-1])["question"] in {g["question"] for g in good}
                               for t in s.prompts.clean_text)

    bad_lines = [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"options": ["a", "b", "c", "d"], "answer": 0}), "'question'"),
        (json.dumps({"question": "Q?", "options": ["a", "b", "c"], "answer": 0}), "exactly 4"),
        (json.dumps({"question": "Q?", "options": ["a", "b", "c", "c"], "answer": 0}), "distinct"),
        (json.dumps({"question": "Q?", "options": ["a", "b", "c", "d"], "answer": 4}), "'answer'"),
        (json.dumps({"question": "Q?", "options": ["a", "b", "c", "d"], "answer": True}), "'answer'"),
        (json.dumps({"question": "Q?", "options": ["a", "b\nx", "c", "d"], "answer": 0}), "one-line"),
    ]
    for line, why in bad_lines:
        f = tmp_path / "bad.jsonl"
        f.write_text(json.dumps(good[0]) + "\n\n" + line + "\n")
        with pytest.raises(PromptError, match=re.escape(f"{f}:3: ") + ".*" + re.escape(why)):
            load_mcq_jsonl(f)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(PromptError, match="no questions"):
        load_mcq_jsonl(empty)
    with pytest.raises(PromptError, match="cannot read"):
        load_mcq_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(PromptError, match="k_shot"):
        mmlu_style_examples(model, questions=good[:2], k_shot=2)


# ------------------------------------------------------------- fixed shots, shared lists, word halves
def test_shot_sets_and_lists_asked_four_times(model):
    """shot_sets=2, asked_per_list=4: two fixed few-shot prefixes alternating per options list; a list's
    4 questions ask each of its 4 items once (every content in every correct slot); no question
    repeats an item of its shots; the corrupted prompt of each question is another question's clean
    prompt (the same list asking another item)."""
    k = 3
    s = symbol_binding_examples(model, n=16, seed=2, k_shot=k, shot_sets=2, asked_per_list=4)
    texts = s.prompts.clean_text
    prefixes = ["\n\n".join(_blocks(t)[:-1]) for t in texts]
    assert len(set(prefixes)) == 2
    for j in range(4):
        group = list(range(4 * j, 4 * j + 4))
        finals = [_symbol(_blocks(texts[i])[-1]) for i in group]
        assert len({tuple(f["items"]) for f in finals}) == 1 and len({prefixes[i] for i in group}) == 1
        assert sorted(f["items"].index(f["asked"]) for f in finals) == [0, 1, 2, 3]
        assert prefixes[4 * j] == prefixes[0 if j % 2 == 0 else 4]
        shot_items = {w for b in _blocks(texts[4 * j])[:-1] for w in _symbol(b)["items"]}
        assert not shot_items & set(finals[0]["items"])
    shot_slots = [_symbol(b)["items"].index(_symbol(b)["asked"]) for b in _blocks(texts[0])[:-1]]
    assert len(set(shot_slots)) == k  # a set's answers take distinct slots
    assert set(s.prompts.corrupted_text) <= set(texts)


def test_item_halves_are_disjoint_and_checked(model):
    words = mcq_items(model)
    a = symbol_binding_examples(model, n=8, seed=0, items=words[0::2], k_shot=1, shot_sets=1)
    b = symbol_binding_examples(model, n=8, seed=0, items=words[1::2], k_shot=1, shot_sets=1)
    used = lambda s: {w for t in s.prompts.clean_text for blk in _blocks(t) for w in _symbol(blk)["items"]}  # noqa: E731
    assert used(a) <= set(words[0::2]) and used(b) <= set(words[1::2]) and not used(a) & used(b)
    with pytest.raises(PromptError, match="not usable"):
        symbol_binding_examples(model, n=2, items=words[:6] + ["notaword_xyz"])
    with pytest.raises(PromptError, match="need"):
        symbol_binding_examples(model, n=2, items=words[:5], k_shot=2, shot_sets=1)
    with pytest.raises(PromptError, match="asked_per_list"):
        symbol_binding_examples(model, n=2, asked_per_list=5)
    with pytest.raises(PromptError, match="shot_sets"):
        symbol_binding_examples(model, n=2, k_shot=1, shot_sets=0)
