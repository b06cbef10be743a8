"""Colored Objects (CO) prompts (Merullo, Eickhoff & Pavlick, ICLR 2024), generated per tokenizer.

The task: three coloured objects lie on a surface; the model is asked the colour of one of them.
The paper (§ "Colored Objects") uses one-shot prompts of two Q/A blocks, three objects each::

    Q: On the table, there is a red pencil, an orange cup, and a blue bowl. What color is the cup?
    A: Orange
    Q: On the desk, I see a green pen, a black plate, and a brown ball. What color is the ball?
    A:                                                                     -> " Brown"

Surfaces are table|desk|floor, phrasings "there is"|"you see"|"I see", colours red, orange,
yellow, green, blue, purple, brown, black, and 17 objects (pencil ... bowl). "an" precedes a
vowel-initial word, "a" anything else. The answer is the colour in title case with a leading space
(it follows "A:"); the shot's answer is written the same way (" Orange") and ends with a newline.
No colour or object repeats within a block; when the filtered pools hold at least six colours
(objects), none repeats within the whole two-block example either (the paper's "no repeats within
an example"); with fewer, only within each block.

Filtering, per tokenizer: a colour is kept when both " red" and " Red" are one token, an object
when " pencil" is, a surface when " table" is, a phrase when it is one token per word. So every
prompt of one tokenizer has the same token length, clean and corrupted prompts are aligned, and
every slot sits at the same position in every example. Fewer than three colours or objects, or no
surface/phrase, raises PromptError.

Corruption (the paper's minimal pair): the same prompt, but the last question asks about one of the
other two objects of the last block (chosen at random). Answer = the clean colour (" Brown"),
distractor = the colour of the object the corrupted prompt asks about.

Balance and groups: the queried slot of the last block cycles 0, 1, 2 over the examples (so the
correct answer is balanced across slots), and the last block's phrasing cycles every three
examples. ``groups`` = slot + 3 * phrase index of the last block (phrase index into the surviving
phrases, in PHRASES order): 9 groups when all three phrasings survive. All examples of a group
have the same token length and the same named positions (checked; C_CORRUPT excepted, as the
corrupted question's object is drawn per example). With the single-token filtering every prompt of
one tokenizer in fact has the same length, so the grouping is finer than alignment requires.

Named positions (clean prompt, each a [batch] tensor; "END", the last token, is added by
``PromptSet.from_examples``):
- OQ: the queried object in the last question ("What color is the ball?").
- O_CORRECT: that object's mention in the last block's list.
- C_CORRECT: the queried object's colour in the last block.
- C_WRONG1, C_WRONG2: the other two colours of the last block, in order of appearance.
- C_CORRUPT: the colour of the object the corrupted question asks about (one of the wrong two).
"""
from __future__ import annotations

import random

import torch

from interp.errors import PromptError
from interp.tasks.ioi import single_token_words
from interp.tasks.prompts import PromptSet, prompts_for

COLOURS = "red orange yellow green blue purple brown black".split()
OBJECTS = (
    "pencil notebook pen cup plate jug mug puzzle textbook leash necklace bracelet bottle ball "
    "envelope lighter bowl"
).split()
SURFACES = ["table", "desk", "floor"]
PHRASES = ["there is", "you see", "I see"]
VOWELS = "aeiou"


def _tokenizer(model_or_tokenizer):
    return getattr(model_or_tokenizer, "tokenizer", model_or_tokenizer)


def _n_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"])


def co_colours(model_or_tokenizer) -> list[str]:
    """The colours (lower case, in COLOURS order) with one-token " red" and " Red" forms."""
    tok = _tokenizer(model_or_tokenizer)
    return [c for c in single_token_words(tok, COLOURS) if _n_tokens(tok, " " + c.title()) == 1]


def co_colour_ids(model_or_tokenizer) -> torch.Tensor:
    """[n_colours] token ids of the title-case answers (" Red", ...) in ``co_colours`` order.

    For "argmax over the colour tokens" accuracy: ``co_colours(m)[logits[..., ids].argmax(-1)]``.
    """
    tok = _tokenizer(model_or_tokenizer)
    ids = [tok(" " + c.title(), add_special_tokens=False)["input_ids"][0] for c in co_colours(tok)]
    return torch.tensor(ids, dtype=torch.long)


def co_vocabulary(model_or_tokenizer) -> dict[str, list[str]]:
    """The colours, objects, surfaces and phrases that survive this tokenizer's filtering.

    Raises:
        PromptError: fewer than three colours or objects, or no surface or phrase survives.
    """
    tok = _tokenizer(model_or_tokenizer)
    vocab = {
        "colours": co_colours(tok),
        "objects": single_token_words(tok, OBJECTS),
        "surfaces": single_token_words(tok, SURFACES),
        "phrases": [p for p in PHRASES if _n_tokens(tok, " " + p) == len(p.split())],
    }
    if len(vocab["colours"]) < 3 or len(vocab["objects"]) < 3:
        raise PromptError(
            f"this tokenizer has too few single-token colours ({len(vocab['colours'])}: "
            f"{vocab['colours']}) or objects ({len(vocab['objects'])}) for Colored Objects; "
            "need three of each"
        )
    if not vocab["surfaces"] or not vocab["phrases"]:
        raise PromptError("no surface or phrasing of Colored Objects tokenizes one token per word here")
    return vocab


def _article(word: str) -> str:
    return "an" if word[0].lower() in VOWELS else "a"


def _block(surface: str, phrase: str, colours, objects) -> str:
    items = [f"{_article(c)} {c} {o}" for c, o in zip(colours, objects)]
    return f"Q: On the {surface}, {phrase} {items[0]}, {items[1]}, and {items[2]}."


def _draw(rng: random.Random, pool: list[str]) -> tuple[list[str], list[str]]:
    """Three items for each block: six distinct ones when the pool allows, else distinct per block."""
    if len(pool) >= 6:
        six = rng.sample(pool, 6)
        return six[:3], six[3:]
    return rng.sample(pool, 3), rng.sample(pool, 3)


def colored_objects_examples(model, n: int = 8, seed: int = 0) -> PromptSet:
    """``n`` Colored Objects minimal pairs for ``model``'s tokenizer (see the module docstring).

    Args:
        model: anything with ``.tokenizer`` and ``.cfg.default_prepend_bos`` (as ``prompts_for``).
        n: number of examples.
        seed: seed of the ``random.Random`` that draws surfaces, phrasings, colours and objects.

    Returns:
        A PromptSet with positions OQ, O_CORRECT, C_CORRECT, C_WRONG1, C_WRONG2, C_CORRUPT, END
        and groups = slot + 3 * phrase index of the last block.

    Raises:
        PromptError: the tokenizer leaves too few single-token colours/objects, or n < 1.
    """
    if n < 1:
        raise PromptError("n must be at least 1")
    tok = model.tokenizer
    vocab = co_vocabulary(tok)
    colours, objects = vocab["colours"], vocab["objects"]
    surfaces, phrases = vocab["surfaces"], vocab["phrases"]
    rng = random.Random(seed)

    def encode(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    examples, groups = [], []
    pos = {k: [] for k in ("OQ", "O_CORRECT", "C_CORRECT", "C_WRONG1", "C_WRONG2", "C_CORRUPT")}
    for i in range(n):
        slot = i % 3
        phrase_k = (i // 3) % len(phrases)
        (shot_c, last_c), (shot_o, last_o) = _draw(rng, colours), _draw(rng, objects)
        shot_q = rng.randrange(3)
        shot = (
            _block(rng.choice(surfaces), rng.choice(phrases), shot_c, shot_o)
            + f" What color is the {shot_o[shot_q]}?\nA: {shot_c[shot_q].title()}\n"
        )
        last = _block(rng.choice(surfaces), phrases[phrase_k], last_c, last_o)
        wrong = [j for j in range(3) if j != slot]
        corrupt = rng.choice(wrong)
        head = shot + last + " What color is the"
        clean = f"{head} {last_o[slot]}?\nA:"
        corrupted = f"{head} {last_o[corrupt]}?\nA:"
        examples.append({
            "clean": clean, "corrupted": corrupted,
            "answer": " " + last_c[slot].title(), "distractor": " " + last_c[corrupt].title(),
        })
        groups.append(slot + 3 * phrase_k)

        # Positions: the number of tokens before " word" (the words are single tokens and every
        # tokenizer here splits at spaces, so the prefix's tokens are a prefix of the prompt's).
        ids = encode(clean)

        def at(prefix: str, word: str) -> int:
            p = len(encode(prefix))
            if p >= len(ids) or ids[p] != encode(" " + word)[0]:
                raise PromptError(f"example {i}: could not locate {word!r} in {clean!r}")
            return p

        starts, cursor = [], len(shot)
        for c, o in zip(last_c, last_o):
            k = last.index(f" {c} {o}", cursor - len(shot))
            starts.append(len(shot) + k)
            cursor = len(shot) + k + 1
        colour_pos = [at(clean[:s], c) for s, c in zip(starts, last_c)]
        pos["C_CORRECT"].append(colour_pos[slot])
        pos["C_WRONG1"].append(colour_pos[wrong[0]])
        pos["C_WRONG2"].append(colour_pos[wrong[1]])
        pos["C_CORRUPT"].append(colour_pos[corrupt])
        pos["O_CORRECT"].append(at(clean[: starts[slot] + 1 + len(last_c[slot])], last_o[slot]))
        pos["OQ"].append(at(head, last_o[slot]))

    ps = prompts_for(model, examples, positions=pos, groups=groups)
    _check_groups(ps)
    return ps


def _check_groups(ps: PromptSet) -> None:
    """Every example of a group must have the same length and named positions (per-group means).

    C_CORRUPT is exempt: which wrong colour the corrupted question asks about is drawn per example.
    """
    for g in ps.groups.unique().tolist():
        idx = (ps.groups == g).nonzero().flatten()
        same = [ps.answer_pos[idx]] + [v[idx] for k, v in ps.positions.items() if k != "C_CORRUPT"]
        if any((t != t[0]).any() for t in same):
            raise PromptError(
                f"Colored Objects group {g}: examples differ in token length or positions for this "
                "tokenizer; per-group mean ablation would be misaligned"
            )
