"""Multiple-choice prompt sets for the correct-letter-heads analysis (Lieberum et al. 2023).

Lieberum et al., "Does Circuit Analysis Interpretability Scale? Evidence from Multiple Choice
Capabilities in Chinchilla", find that the last step of multiple-choice answering -- emit the label
("A", "B", ...) of the option that was picked -- is done by a few "correct letter" heads that attend
from the final position to the correct option's label and copy it. Two formats are built here.

Symbol binding (the default task; small models solve it, letter MCQ on real knowledge they do not)::

    Options: A. cat B. dog C. car D. tree
    Which option is 'dog'?
    Answer:                                               -> " B"

MMLU style (the paper's format; for users with bigger models or their own questions)::

    Question: What is the capital of France?
    A. London
    B. Paris
    C. Berlin
    D. Madrid
    Answer:                                               -> " B"

Labels (``labels=``), the paper's mutations:
- ``"ABCD"`` (default), or any 4 distinct labels: a 4-character string such as ``"1234"`` (numbers)
  or a sequence of 4 strings.
- ``"random"``: 4 distinct random capital letters (in random order), drawn per question from the
  letters that pass the checks below; never exactly A, B, C, D.
- ``"shuffled"``: A-D in a shuffled order per question, never the identity ("C. cat A. dog ...").
  The answer follows the item, not the slot.
``mutate_shots`` (when ``k_shot > 0``): True labels every shot exactly like its question (the same
labels in the same order); False labels the shots plain A, B, C, D.

Single tokens. Every label must be one token where it appears in the options (" A" after a space in
the symbol format, "A" at the start of a line in the MMLU format) and one token as the answer. The
answer is " A" after "Answer:" when the 4 labels of a question are each one token with a leading
space. The shipped tokenizers split digits from the space (" 1" is ' ', '1'), so for labels that are
not, but are one bare token after a space ("Answer: 1" -> ..., ' ', '1'), the prompt ends
"Answer: " (trailing space; the last prompt token is ' ') and the answer is "1". Otherwise
PromptError names the label. Symbol-binding items come from ``ITEMS`` (concrete nouns written for
this project), kept when " cat" is one token, "cat" is one token inside the quotes, and the
question has the usual length (see ``mcq_items``). Shot answers are written like the final answer
and end in a blank line ("...\\nAnswer: C\\n\\n").

Minimal pairs (clean vs corrupted, for "activation patching from a prompt whose correct label
differs"); ``answer`` = the clean label, ``distractor`` = the corrupted prompt's correct label:
- Symbol binding: the same options in the same order; the question asks about another option
  (drawn at random): "Which option is 'car'?". Items are single tokens, so only the ASKED token
  differs and every position is aligned.
- MMLU style: the same question, but the correct option swapped with another option's slot
  (preferring a partner with the same token count, so that every position stays aligned; with a
  different count the option tokens between the two slots shift, the total length does not). A
  question where no swap keeps the token length raises PromptError.

Balance: the correct slot (position in the options) cycles 0, 1, 2, 3 over the examples. Shots
draw their asked slot at random, and their items (questions) differ from the final question's.
``groups`` is None: a symbol-binding set of one tokenizer and label set has one token length, and a
per-correct-slot group mean would carry the answer (MMLU-style prompts differ in length per
question; mean ablation over them is the caller's call).

Named positions (clean prompt, each a [batch] tensor; "END", the last token, is added by
``PromptSet.from_examples``; all point into the final question, not the shots):
- LABEL_0..LABEL_3: the label tokens in the options, in order of appearance.
- ITEM_0..ITEM_3: the item tokens (symbol binding); in the MMLU format the token holding the last
  character of each option's text.
- CORRECT_LABEL, CORRECT_ITEM: LABEL_c and ITEM_c of the correct slot c.
- ASKED (symbol binding only): the asked item in the question ("'dog'").

``MCQSet.label_ids`` [batch, 4] are the answer-form ids (" A", or "1" in the bare form) in option
order: ``logits[rows, END].gather(-1, label_ids)`` gives the 4-way logits (accuracy = its argmax
== ``correct``), and ``W_U[:, label_ids]`` the label directions for DLA. In the MMLU format they differ from the option-form token ("A" at line start).

User questions (MMLU style), JSONL, one per line (blank lines skipped, extra keys ignored)::

    {"question": "What is 2 + 2?", "options": ["3", "4", "5", "6"], "answer": 1}

``options``: exactly 4 distinct non-empty strings without newlines; ``answer``: the index (0-3) of
the correct one in ``options``. ``load_mcq_jsonl`` reports bad lines as ``path:line: ...``.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch
from jaxtyping import Int

from interp.errors import PromptError
from interp.tasks.ioi import single_token_words
from interp.tasks.prompts import PromptSet, prompts_for, read_jsonl

N_OPTIONS = 4
PLAIN = ("A", "B", "C", "D")
OPTION_KEYS = [f"LABEL_{j}" for j in range(N_OPTIONS)] + [f"ITEM_{j}" for j in range(N_OPTIONS)]

ITEMS = (
    "cat dog car tree house book chair table apple ball bird fish horse cow lamp door window bread "
    "cake shoe hat coat boat train bus bike clock phone cup plate spoon knife bottle box key ring "
    "bell drum flower egg milk rock sand star moon sun river hill road bridge wall bed desk pen "
    "shirt sock glass stone duck frog bear lion wolf rabbit mouse cheese rice corn lemon orange"
).split()


@dataclass(frozen=True)
class MCQuestion:
    """One MMLU-style question: 4 option strings and the index of the correct one."""

    question: str
    options: tuple[str, ...]
    answer: int


def _q(question: str, options: str, answer: int) -> MCQuestion:
    return MCQuestion(question, tuple(options.split("|")), answer)


# Short general-knowledge questions written for this project (simple facts, one clear answer).
MMLU_QUESTIONS: tuple[MCQuestion, ...] = (
    _q("What is the capital of France?", "Paris|London|Berlin|Madrid", 0),
    _q("What is the capital of Japan?", "Beijing|Seoul|Tokyo|Bangkok", 2),
    _q("What is the capital of Italy?", "Rome|Athens|Vienna|Lisbon", 0),
    _q("What is the capital of Canada?", "Toronto|Ottawa|Vancouver|Montreal", 1),
    _q("What is 2 + 3?", "4|5|6|7", 1),
    _q("What is 10 - 4?", "5|6|7|8", 1),
    _q("What is 3 times 4?", "7|10|12|14", 2),
    _q("What is 20 divided by 5?", "2|4|5|10", 1),
    _q("Which planet is closest to the Sun?", "Venus|Earth|Mercury|Mars", 2),
    _q("Which planet is known as the Red Planet?", "Mars|Jupiter|Saturn|Venus", 0),
    _q("Which gas do plants take in from the air?", "Oxygen|Carbon dioxide|Nitrogen|Helium", 1),
    _q("What is the chemical formula of water?", "CO2|H2O|NaCl|O2", 1),
    _q("At what temperature in degrees Celsius does water boil at sea level?", "50|90|100|120", 2),
    _q("How many legs does a spider have?", "4|6|8|10", 2),
    _q("How many days are in a week?", "5|6|7|8", 2),
    _q("What is the largest ocean on Earth?", "Atlantic|Indian|Arctic|Pacific", 3),
    _q("Which animal is called the king of the jungle?", "Lion|Tiger|Elephant|Bear", 0),
    _q("What color is the sky on a clear day?", "Green|Blue|Red|Yellow", 1),
    _q("Which organ pumps blood through the body?", "Lungs|Liver|Heart|Brain", 2),
    _q("At what temperature in degrees Celsius does water freeze?", "0|10|32|100", 0),
    _q("Which is the largest planet in the solar system?", "Earth|Jupiter|Mars|Neptune", 1),
    _q("Who wrote Romeo and Juliet?", "Charles Dickens|William Shakespeare|Jane Austen|Mark Twain", 1),
    _q("How many continents are there?", "5|6|7|8", 2),
    _q("What is the square root of 81?", "7|8|9|10", 2),
    _q("Which metal is liquid at room temperature?", "Iron|Mercury|Gold|Copper", 1),
    _q("What is the main language spoken in Brazil?", "Spanish|Portuguese|French|English", 1),
    _q("How many hours are in a day?", "12|20|24|30", 2),
    _q("On which continent is Egypt?", "Africa|Asia|Europe|South America", 0),
)


@dataclass
class MCQSet:
    """A multiple-choice PromptSet plus what the 4-way analysis needs.

    Attributes:
        prompts: the clean/corrupted minimal pairs (answer = clean label, distractor = the
            corrupted prompt's correct label) with the named positions of the module docstring.
        label_ids: [batch, 4] answer-form token ids of the 4 labels, in option order.
        correct: [batch] index (0-3, option order) of the correct option;
            ``label_ids[i, correct[i]] == prompts.answer_ids[i]``.
        labels: per example, the 4 label strings in option order (e.g. ["C", "A", "D", "B"]).
    """

    prompts: PromptSet
    label_ids: Int[torch.Tensor, "batch 4"]
    correct: Int[torch.Tensor, " batch"]
    labels: list[list[str]]

    def __len__(self) -> int:
        return len(self.prompts)

    def to(self, device: str | torch.device) -> "MCQSet":
        return replace(
            self, prompts=self.prompts.to(device), label_ids=self.label_ids.to(device),
            correct=self.correct.to(device),
        )

    def subset(self, index: Iterable[int] | slice) -> "MCQSet":
        """The examples at ``index`` (a slice or a list of example indices)."""
        idx = index if isinstance(index, slice) else torch.as_tensor(list(index), dtype=torch.long)
        rows = range(len(self))[idx] if isinstance(idx, slice) else idx.tolist()
        return MCQSet(
            prompts=self.prompts.subset(index), label_ids=self.label_ids[idx],
            correct=self.correct[idx], labels=[self.labels[i] for i in rows],
        )


# --------------------------------------------------------------------------------- tokenization
def _tokenizer(model_or_tokenizer):
    return getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)


def _encoder(tok):
    return lambda text: tok(text, add_special_tokens=False)["input_ids"]


def _token_at(tok, ids: list[int], text: str, start: int, end: int) -> int | None:
    """Index in ``ids`` (the tokens of ``text``) of the ONE token that is ``text[start:end]``.

    The token may carry the space before the span (" A"). None when the span is not one token
    or the tokenization up to it is not a prefix of the whole text's.
    """
    pre = _encoder(tok)(text[:end])
    if not pre or ids[: len(pre)] != pre:
        return None
    span = text[start:end]
    piece = tok.decode([pre[-1]])
    if piece == span or (piece == " " + span and start > 0 and text[start - 1] == " "):
        return len(pre) - 1
    return None


def _answer_tail(tok, label: str, sep: str) -> int | None:
    """The token id of ``label`` after "Answer:" + sep (+ " " when sep is ""), or None."""
    enc = _encoder(tok)
    head = enc("Answer:" + sep)
    full = enc("Answer:" + sep + ("" if sep else " ") + label)
    if len(full) == len(head) + 1 and full[: len(head)] == head:
        return full[-1]
    return None


def _answer_form(tok, labels: Sequence[str]) -> tuple[str, list[int]]:
    """How the 4 labels are answered: ("", ids of " A"...) or (" ", ids of bare "1"...).

    "" means the prompt ends "Answer:" and each answer is " X"; " " means it ends "Answer: " and
    each answer is "X" (for tokenizers that split the space from a digit).

    Raises:
        PromptError: naming a label that is not one token either way.
    """
    for sep in ("", " "):
        ids = [_answer_tail(tok, lab, sep) for lab in labels]
        if all(i is not None for i in ids):
            return sep, ids
    bad = next(lab for lab in labels if _answer_tail(tok, lab, "") is None)
    n = len(_encoder(tok)(" " + bad))
    raise PromptError(
        f"label {bad!r} is not one token as the answer: {' ' + bad!r} is {n} tokens, and the labels "
        f"{list(labels)} cannot all be answered as one bare token after 'Answer: ' either"
    )


def _option_ok(tok, label: str, fmt: str) -> bool:
    """Whether ``label`` is one token where it appears in the options of format ``fmt``."""
    text = f"Options: {label}. cat" if fmt == "symbol" else f"Question: Why?\n{label}. Yes"
    start = text.index(f"{label}. ")
    return _token_at(tok, _encoder(tok)(text), text, start, start + len(label)) is not None


def _check_labels(tok, labels: Sequence[str], fmt: str) -> tuple[str, list[int]]:
    for lab in labels:
        if not _option_ok(tok, lab, fmt):
            where = "after a space" if fmt == "symbol" else "at the start of a line"
            raise PromptError(
                f"label {lab!r} is not one token where it appears in the options ({where}, before "
                f"'.'): {tok.convert_ids_to_tokens(_encoder(tok)(lab + '.'))}"
            )
    return _answer_form(tok, labels)


def mcq_label_ids(model_or_tokenizer, labels: Sequence[Sequence[str]]) -> Int[torch.Tensor, "batch 4"]:
    """[batch, 4] answer-form token ids of each row's 4 labels (see the module docstring).

    Raises:
        PromptError: naming a label that is not one token as the answer.
    """
    tok = _tokenizer(model_or_tokenizer)
    return torch.tensor([_answer_form(tok, row)[1] for row in labels], dtype=torch.long)


def random_label_pool(model_or_tokenizer, fmt: str = "symbol") -> list[str]:
    """The capital letters usable as labels in format ``fmt`` ("symbol" or "mmlu"), A-Z order."""
    tok = _tokenizer(model_or_tokenizer)
    return [
        c for c in string.ascii_uppercase
        if _answer_tail(tok, c, "") is not None and _option_ok(tok, c, fmt)
    ]


_QUESTION = "\nWhich option is '{}'?\nAnswer:"


def mcq_items(model_or_tokenizer) -> list[str]:
    """The ``ITEMS`` usable by this tokenizer, in ``ITEMS`` order.

    Kept: " cat" is one token, "cat" is one token inside the question's quotes, and the question
    "\\nWhich option is 'cat'?\\nAnswer:" has the most common token length among such items (so
    clean and corrupted prompts are aligned).
    """
    tok = _tokenizer(model_or_tokenizer)
    enc = _encoder(tok)
    lengths = {}
    for w in single_token_words(tok, ITEMS):
        text = _QUESTION.format(w)
        ids = enc(text)
        start = text.index("'") + 1
        if _token_at(tok, ids, text, start, start + len(w)) is not None:
            lengths[w] = len(ids)
    if not lengths:
        return []
    common = max(set(lengths.values()), key=list(lengths.values()).count)
    return [w for w, n in lengths.items() if n == common]


# --------------------------------------------------------------------------------- label sets
def _label_plan(labels, tok, fmt: str):
    """A function rng -> the 4 labels of one question, after checking fixed label sets."""
    if isinstance(labels, str) and labels == "random":
        pool = random_label_pool(tok, fmt)
        if len(pool) < N_OPTIONS + 1:
            raise PromptError(f"too few single-token capital letters for random labels: {pool}")

        def draw(rng):
            while True:
                got = rng.sample(pool, N_OPTIONS)
                if tuple(got) != PLAIN:
                    return got
        return draw
    if isinstance(labels, str) and labels == "shuffled":
        _check_labels(tok, PLAIN, fmt)

        def draw(rng):
            while True:
                got = rng.sample(PLAIN, N_OPTIONS)
                if tuple(got) != PLAIN:
                    return got
        return draw
    fixed = list(labels) if isinstance(labels, (str, list, tuple)) else None
    if (
        fixed is None or len(fixed) != N_OPTIONS or len(set(fixed)) != N_OPTIONS
        or not all(isinstance(x, str) and x.strip() == x and x for x in fixed)
    ):
        raise PromptError(
            f"unknown labels {labels!r}: use 'ABCD', '1234', 'random', 'shuffled', or 4 distinct "
            "non-empty labels without spaces"
        )
    _check_labels(tok, fixed, fmt)
    return lambda rng: list(fixed)


# --------------------------------------------------------------------------------- text building
class _Text:
    """A string built piece by piece, remembering the character span of named pieces."""

    def __init__(self) -> None:
        self.text, self.spans = "", {}

    def add(self, piece: str, name: str | None = None) -> None:
        if name is not None:
            self.spans[name] = (len(self.text), len(self.text) + len(piece))
        self.text += piece


def _locate(
    tok, text: str, spans: Mapping[str, tuple[int, int]], where: str, last: bool = False
) -> dict[str, int]:
    """Token index of each named span: its only token; with ``last``, for ITEM_* spans, the token
    holding the span's last character. Raises PromptError naming the span otherwise."""
    ids = _encoder(tok)(text)
    out = {}
    for name, (start, end) in spans.items():
        if last and name.startswith("ITEM_"):
            # The token holding the span's last character (it may merge with what follows).
            pre = _encoder(tok)(text[:end])
            p = len(pre) - 1 if pre and ids[: len(pre) - 1] == pre[:-1] else None
        else:
            p = _token_at(tok, ids, text, start, end)
        if p is None:
            raise PromptError(f"{where}: {text[start:end]!r} ({name}) is not one token in {text!r}")
        out[name] = p
    return out


def _symbol_block(t: _Text, items: Sequence[str], labels: Sequence[str], asked: int, named: bool):
    t.add("Options:")
    for j, (lab, item) in enumerate(zip(labels, items)):
        t.add(" ")
        t.add(lab, f"LABEL_{j}" if named else None)
        t.add(". ")
        t.add(item, f"ITEM_{j}" if named else None)
    t.add("\nWhich option is '")
    t.add(items[asked], "ASKED" if named else None)
    t.add("'?\nAnswer:")


def _mmlu_block(t: _Text, question: str, options: Sequence[str], labels: Sequence[str], named: bool):
    t.add("Question: " + question)
    for j, (lab, opt) in enumerate(zip(labels, options)):
        t.add("\n")
        t.add(lab, f"LABEL_{j}" if named else None)
        t.add(". ")
        t.add(opt, f"ITEM_{j}" if named else None)
    t.add("\nAnswer:")


def _finish(examples, pos, label_rows, correct, model, tok) -> MCQSet:
    ps = prompts_for(model, examples, positions=pos)
    label_ids = mcq_label_ids(tok, label_rows)
    correct_t = torch.tensor(correct, dtype=torch.long)
    rows = torch.arange(len(correct))
    assert torch.equal(label_ids[rows, correct_t], ps.answer_ids)
    return MCQSet(prompts=ps, label_ids=label_ids, correct=correct_t, labels=label_rows)


def _add_positions(pos: dict, found: Mapping[str, int], slot: int, keys: Sequence[str]) -> None:
    for k in keys:
        pos.setdefault(k, []).append(found[k])
    pos.setdefault("CORRECT_LABEL", []).append(found[f"LABEL_{slot}"])
    pos.setdefault("CORRECT_ITEM", []).append(found[f"ITEM_{slot}"])


# --------------------------------------------------------------------------------- generators
def symbol_binding_examples(
    model,
    n: int = 16,
    seed: int = 0,
    labels: str | Sequence[str] = "ABCD",
    k_shot: int = 0,
    mutate_shots: bool = True,
    items: Sequence[str] | None = None,
    shot_sets: int | None = None,
    asked_per_list: int = 1,
) -> MCQSet:
    """``n`` symbol-binding multiple-choice minimal pairs (see the module docstring).

    Args:
        model: anything with ``.tokenizer`` and ``.cfg.default_prepend_bos`` (as ``prompts_for``).
        n: number of examples; the correct slot cycles 0, 1, 2, 3.
        seed: seed of the ``random.Random`` that draws items, labels, asked slots and shots.
        labels: "ABCD", "1234" (or any 4 labels), "random" or "shuffled".
        k_shot: number of solved examples put in front ("...\\nAnswer: C\\n\\n").
        mutate_shots: the shots use the question's labels (True) or plain A-D (False).
        items: the words options are drawn from (default: every usable word, ``mcq_items``); each
            must be one of ``mcq_items(model)``. Disjoint word lists give disjoint item sets.
        shot_sets: None: the shots are drawn anew for every options list. An integer m: m fixed
            sets of ``k_shot`` shots, options list j gets set j % m (a fixed few-shot prefix, as
            k-shot MMLU prompts reuse the same solved examples; questions sharing a prefix share
            its computation). A set's answers take distinct slots (all four once when k_shot =
            4); its words (min(8, 4 k_shot) of ``items``) are kept out of the questions that use
            it, so no question repeats one of its shots' items.
        asked_per_list: how many consecutive questions share one options list (1-4), each asking
            another of its items (4: every list is asked about each of its 4 items, so every
            content appears in every correct slot). Labels are drawn per list.

    Returns:
        An MCQSet; positions LABEL_0..3, ITEM_0..3, CORRECT_LABEL, CORRECT_ITEM, ASKED, END.

    Raises:
        PromptError: n < 1, k_shot < 0, asked_per_list outside 1-4, shot_sets < 1, an item that is not usable,
            too few items (4 per question, plus the shots' words), or a label that is not one
            token (naming it).
    """
    if n < 1 or k_shot < 0:
        raise PromptError("n must be at least 1 and k_shot at least 0")
    if isinstance(asked_per_list, bool) or not isinstance(asked_per_list, int) or not 1 <= asked_per_list <= N_OPTIONS:
        raise PromptError(f"asked_per_list must be an integer from 1 to {N_OPTIONS}, got {asked_per_list!r}")
    if shot_sets is not None and (isinstance(shot_sets, bool) or not isinstance(shot_sets, int) or shot_sets < 1):
        raise PromptError(f"shot_sets must be None or a positive integer, got {shot_sets!r}")
    tok = _tokenizer(model)
    usable = mcq_items(tok)
    if items is None:
        items = usable
    else:
        items = list(dict.fromkeys(items))
        bad = [w for w in items if w not in usable]
        if bad:
            raise PromptError(f"items {bad[:5]} are not usable with this tokenizer (one token after a "
                              "space and inside the question's quotes): use words from mcq_items(model)")
    fixed = shot_sets is not None and k_shot > 0
    n_shot_words = min(2 * N_OPTIONS, N_OPTIONS * k_shot) if fixed else 0
    need = N_OPTIONS * (2 if k_shot and not fixed else 1) + n_shot_words
    if len(items) < need:
        raise PromptError(
            f"{len(items)} usable single-token items given, need {need}: {list(items)}"
        )
    draw_labels = _label_plan(labels, tok, "symbol")
    if k_shot and not mutate_shots:
        _check_labels(tok, PLAIN, "symbol")
    rng = random.Random(seed)
    plans = []  # per shot set: (the words its questions draw from, its shots)
    for _ in range(shot_sets if fixed else 0):
        shot_words = rng.sample(list(items), n_shot_words)
        slots = []
        while len(slots) < k_shot:
            slots += rng.sample(range(N_OPTIONS), N_OPTIONS)
        plans.append(([w for w in items if w not in shot_words],
                      [(rng.sample(shot_words, N_OPTIONS), s) for s in slots[:k_shot]]))

    def shots_text(plan, shot_labels, rest) -> str:
        t = _Text()
        plan = plan if plan is not None else [
            (rng.sample(rest, N_OPTIONS), rng.randrange(N_OPTIONS)) for _ in range(k_shot)]
        for s_items, s_asked in plan:
            _symbol_block(t, s_items, shot_labels, s_asked, named=False)
            t.add(" " + shot_labels[s_asked] + "\n\n")
        return t.text

    examples, pos, label_rows, correct = [], {}, [], []
    for i in range(n):
        slot = i % N_OPTIONS
        new_list = i % asked_per_list == 0
        if new_list:  # a new options list (with its labels and shots)
            pool, plan = plans[(i // asked_per_list) % len(plans)] if plans else (items, None)
            labs = draw_labels(rng)
            sep, ids = _answer_form(tok, labs)
            opts = rng.sample(pool, N_OPTIONS)
            rest = [w for w in pool if w not in opts]
        other = rng.choice([j for j in range(N_OPTIONS) if j != slot])
        if new_list:
            shots = shots_text(plan, labs if mutate_shots else list(PLAIN), rest)

        def build(asked: int) -> _Text:
            t = _Text()
            t.add(shots)
            _symbol_block(t, opts, labs, asked, named=True)
            t.add(sep)
            return t

        clean, corrupted = build(slot), build(other)
        found = _locate(tok, clean.text, clean.spans, f"example {i}")
        _add_positions(pos, found, slot, OPTION_KEYS + ["ASKED"])
        _add_example(examples, label_rows, correct, clean.text, corrupted.text, labs, slot, other, sep)
    return _finish(examples, pos, label_rows, correct, model, tok)


def _add_example(examples, label_rows, correct, clean: str, corrupted: str, labs, slot: int, other: int, sep: str):
    """Record one minimal pair: answer = the clean label, distractor = the corrupted prompt's label
    (a leading space unless the prompt already ends with one)."""
    gap = "" if sep else " "
    examples.append({"clean": clean, "corrupted": corrupted,
                     "answer": gap + labs[slot], "distractor": gap + labs[other]})
    label_rows.append(list(labs))
    correct.append(slot)


def _as_question(obj, where: str) -> MCQuestion:
    """Validate one question (a mapping or an MCQuestion); errors start with ``where``."""
    if isinstance(obj, MCQuestion):
        obj = {"question": obj.question, "options": list(obj.options), "answer": obj.answer}
    if not isinstance(obj, Mapping):
        raise PromptError(f"{where}: expected a JSON object with question, options, answer")
    q, opts, ans = obj.get("question"), obj.get("options"), obj.get("answer")
    if not isinstance(q, str) or not q.strip():
        raise PromptError(f"{where}: 'question' must be a non-empty string")
    if "\n" in q:
        raise PromptError(f"{where}: 'question' must be one line")
    if not isinstance(opts, list) or len(opts) != N_OPTIONS:
        raise PromptError(f"{where}: 'options' must be a list of exactly {N_OPTIONS} strings")
    for o in opts:
        if not isinstance(o, str) or not o.strip() or "\n" in o or o != o.strip():
            raise PromptError(
                f"{where}: option {o!r} must be a non-empty one-line string without surrounding spaces"
            )
    if len(set(opts)) != N_OPTIONS:
        raise PromptError(f"{where}: the {N_OPTIONS} options must be distinct")
    if isinstance(ans, bool) or not isinstance(ans, int) or not 0 <= ans < N_OPTIONS:
        raise PromptError(f"{where}: 'answer' must be the index 0-{N_OPTIONS - 1} of the correct option")
    return MCQuestion(q, tuple(opts), ans)


def load_mcq_jsonl(path: str | Path) -> list[MCQuestion]:
    """Read MMLU-style questions, one JSON object per line (format in the module docstring).

    Raises:
        PromptError: an unreadable or empty file, or a bad line, named as ``path:line``.
    """
    return [_as_question(obj, where) for where, obj in read_jsonl(path, "questions")]


def mmlu_style_examples(
    model,
    questions: Sequence[MCQuestion | Mapping] | str | Path | None = None,
    n: int | None = None,
    seed: int = 0,
    k_shot: int = 0,
    labels: str | Sequence[str] = "ABCD",
    mutate_shots: bool = True,
) -> MCQSet:
    """``n`` MMLU-style multiple-choice minimal pairs (see the module docstring).

    Args:
        model: anything with ``.tokenizer`` and ``.cfg.default_prepend_bos``.
        questions: MCQuestions or mappings, a JSONL path (``load_mcq_jsonl``), or None for the
            built-in ``MMLU_QUESTIONS``.
        n: number of examples (default: one per question). Questions are taken in a seeded
            shuffled order, cycling; the correct slot cycles 0, 1, 2, 3 and the other options fill
            the other slots in random order.
        seed, k_shot, labels, mutate_shots: as in ``symbol_binding_examples``; shots are other
            questions, with their options shuffled.

    Returns:
        An MCQSet; positions LABEL_0..3, ITEM_0..3 (last token of each option), CORRECT_LABEL,
        CORRECT_ITEM, END.

    Raises:
        PromptError: bad questions, k_shot >= the number of questions, a label that is not one
            token, or a question whose option swap changes the token length.
    """
    if isinstance(questions, (str, Path)):
        qs = load_mcq_jsonl(questions)
    else:
        given = MMLU_QUESTIONS if questions is None else questions
        qs = [_as_question(q, f"question {j}") for j, q in enumerate(given)]
    if not qs:
        raise PromptError("no questions given")
    n = len(qs) if n is None else n
    if n < 1 or k_shot < 0:
        raise PromptError("n must be at least 1 and k_shot at least 0")
    if k_shot >= len(qs):
        raise PromptError(f"k_shot={k_shot} needs more than {k_shot} questions, got {len(qs)}")
    tok = _tokenizer(model)
    enc = _encoder(tok)
    draw_labels = _label_plan(labels, tok, "mmlu")
    if k_shot and not mutate_shots:
        _check_labels(tok, PLAIN, "mmlu")
    rng = random.Random(seed)
    order = rng.sample(range(len(qs)), len(qs))
    examples, pos, label_rows, correct = [], {}, [], []
    for i in range(n):
        qi = order[i % len(qs)]
        q, slot = qs[qi], i % N_OPTIONS
        labs = draw_labels(rng)
        sep = _answer_form(tok, labs)[0]
        wrong = [o for j, o in enumerate(q.options) if j != q.answer]
        rng.shuffle(wrong)
        opts = wrong[:slot] + [q.options[q.answer]] + wrong[slot:]

        shots = _Text()
        shot_labels = labs if mutate_shots else list(PLAIN)
        for si in rng.sample([j for j in range(len(qs)) if j != qi], k_shot):
            s = qs[si]
            s_opts = rng.sample(list(s.options), N_OPTIONS)
            _mmlu_block(shots, s.question, s_opts, shot_labels, named=False)
            shots.add(" " + shot_labels[s_opts.index(s.options[s.answer])] + "\n\n")

        def build(options: Sequence[str]) -> _Text:
            t = _Text()
            t.add(shots.text)
            _mmlu_block(t, q.question, options, labs, named=True)
            t.add(sep)
            return t

        clean = build(opts)
        where = f"question {qi} ({q.question!r})"
        found = _locate(tok, clean.text, clean.spans, where, last=True)
        # Corrupted: swap the correct option with another slot's; prefer one of equal token count.
        n_clean = len(enc(clean.text))
        width = lambda j: found[f"ITEM_{j}"] - found[f"LABEL_{j}"]  # noqa: E731
        partners = [j for j in range(N_OPTIONS) if j != slot]
        rng.shuffle(partners)
        partners.sort(key=lambda j: width(j) != width(slot))
        for other in partners:
            swapped = list(opts)
            swapped[slot], swapped[other] = swapped[other], swapped[slot]
            corrupted = build(swapped)
            if len(enc(corrupted.text)) == n_clean:
                break
        else:
            raise PromptError(f"{where}: every option swap changes the prompt's token length")
        _add_positions(pos, found, slot, OPTION_KEYS)
        _add_example(examples, label_rows, correct, clean.text, corrupted.text, labs, slot, other, sep)
    return _finish(examples, pos, label_rows, correct, model, tok)
