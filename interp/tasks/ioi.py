"""Indirect object identification prompts (Wang et al. 2022), generated per tokenizer.

"When Mary and John went to the store, John gave a drink to" -> " Mary" (IO) vs " John" (S).
BABA templates put the subject first, ABBA the indirect object first. Names, places and objects are
filtered to single tokens (with a leading space) for the model's tokenizer. The templates are written
for this project in the style of the paper's.

Corruptions:
- "abc" (the paper's p_ABC): IO, S1 and S2 replaced by three fresh, unrelated names.
- "s2_io" (Merullo et al.): S2 replaced by IO, so the other name becomes correct.

Named positions: IO, S1, S1+1, S2, END (the last prompt token).
"""
from __future__ import annotations

import random

from interp.errors import PromptError
from interp.tasks.prompts import PromptSet, prompts_for

TEMPLATES_BABA = [
    "Then, {B} and {A} went to the {PLACE}. {B} gave a {OBJECT} to",
    "When {B} and {A} got a {OBJECT} at the {PLACE}, {B} decided to give it to",
    "After {B} and {A} went to the {PLACE}, {B} gave a {OBJECT} to",
    "While {B} and {A} were working at the {PLACE}, {B} gave a {OBJECT} to",
    "Then, {B} and {A} had a long argument at the {PLACE}. Afterwards {B} said to",
    "Friends {B} and {A} found a {OBJECT} at the {PLACE}. {B} gave it to",
    "When {B} and {A} arrived at the {PLACE}, {B} handed a {OBJECT} to",
    "The {PLACE} was quiet when {B} and {A} met. {B} passed a {OBJECT} to",
]
TEMPLATES_ABBA = [t.replace("{B} and {A}", "{A} and {B}", 1) for t in TEMPLATES_BABA]

NAMES = (
    "Mary John Alice Bob Sarah James Emma David Laura Michael Anna Daniel Kate Paul Lisa Mark "
    "Susan Peter Linda Robert Karen Thomas Nancy George Helen Frank Amy Steven Emily Kevin Rachel "
    "Brian Jessica Eric Julia Adam Rose Jack Grace Ryan Anne Sam Jane Tom Lucy Mike Sophie Chris "
    "Kelly Jason Maria Andrew Diana Henry Claire Scott Alex Victoria Matt Sandra Tim Joseph Laura "
    "Martin Nicole Patrick Hannah Ben Sara Simon Ruth Carl Joan Dan Amanda Luke Megan Oliver Jennifer"
).split()
PLACES = "store garden restaurant school hospital office house station".split()
OBJECTS = "ring kiss bone basketball computer necklace drink snack".split()


def single_token_words(tokenizer, words: list[str]) -> list[str]:
    """The words that are one token with a leading space, deduplicated, in order."""
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
    keep = []
    for w in dict.fromkeys(words):
        if len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1:
            keep.append(w)
    return keep


def ioi_examples(
    model,
    n: int = 8,
    seed: int = 0,
    corruption: str = "abc",
    templates: str = "mixed",
) -> PromptSet:
    """``n`` IOI minimal pairs for ``model``'s tokenizer.

    Args:
        corruption: "abc" (three fresh names) or "s2_io" (S2 replaced by IO).
        templates: "baba", "abba" or "mixed" (alternating).
    """
    if corruption not in ("abc", "s2_io"):
        raise PromptError(f"unknown IOI corruption {corruption!r}: use 'abc' or 's2_io'")
    pools = {"baba": TEMPLATES_BABA, "abba": TEMPLATES_ABBA, "mixed": None}
    if templates not in pools:
        raise PromptError(f"unknown template family {templates!r}: use baba, abba or mixed")
    tok = model.tokenizer
    names = single_token_words(tok, NAMES)
    places, objects = single_token_words(tok, PLACES), single_token_words(tok, OBJECTS)
    if len(names) < 5 or not places or not objects:
        raise PromptError("this tokenizer has too few single-token names/places/objects for IOI")
    rng = random.Random(seed)
    examples, groups, pos = [], [], {"IO": [], "S1": [], "S1+1": [], "S2": []}
    for i in range(n):
        k = i % len(TEMPLATES_BABA)
        abba = templates == "abba" or (templates == "mixed" and i % 2 == 1)
        template = (TEMPLATES_ABBA if abba else TEMPLATES_BABA)[k]
        a, b, c, d, e = rng.sample(names, 5)
        fill = dict(PLACE=rng.choice(places), OBJECT=rng.choice(objects))
        clean = template.format(A=a, B=b, **fill)
        if corruption == "abc":
            # IO -> c, S1 -> d, S2 -> e: the same template with three unrelated names.
            corrupted = _format_with_s2(template, io=c, s1=d, s2=e, **fill)
        else:
            corrupted = _format_with_s2(template, io=a, s1=b, s2=a, **fill)
        examples.append({"clean": clean, "corrupted": corrupted, "answer": " " + a, "distractor": " " + b})
        groups.append(k + (len(TEMPLATES_BABA) if abba else 0))
        ids = tok(clean, add_special_tokens=False)["input_ids"]
        io_id = tok(" " + a, add_special_tokens=False)["input_ids"][0]
        s_id = tok(" " + b, add_special_tokens=False)["input_ids"][0]
        s_pos = [j for j, t in enumerate(ids) if t == s_id]
        pos["IO"].append(ids.index(io_id))
        pos["S1"].append(s_pos[0])
        pos["S1+1"].append(s_pos[0] + 1)
        pos["S2"].append(s_pos[1])
    return prompts_for(model, examples, positions=pos, groups=groups)


def _format_with_s2(template: str, io: str, s1: str, s2: str, **fill) -> str:
    """Fill a template whose first {B} is S1 and second {B} is S2 with three separate names."""
    first, rest = template.split("{B}", 1)
    return (first + s1 + rest.replace("{B}", s2, 1)).format(A=io, **fill)
