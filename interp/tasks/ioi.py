"""Indirect object identification prompts (Wang et al. 2022), generated per tokenizer.

"When Mary and John went to the store, John gave a drink to" -> " Mary" (IO) vs " John" (S).
BABA templates put the subject first, ABBA the indirect object first. Names, places and objects are
filtered to single tokens (with a leading space) for the model's tokenizer. The templates are written
for this project in the style of the paper's.

Template and name order are drawn independently: the 8 templates x 2 orders (16 combinations, the
``groups``) are dealt out in seeded shuffled rounds of 16, so every combination occurs (equally
often over each round) and the first ``n`` prompts of a seed are the same for any larger ``n``.

Disjoint splits, for fitting on one set and evaluating on another (``split``):
- None: every single-token name, place and object, the 8 ``TEMPLATES_BABA`` (and ABBA) templates.
- "discover": the first half of each filtered pool (names, places, objects; alternate entries)
  and the 8 ``TEMPLATES_BABA`` templates.
- "heldout": the other half of each pool and 8 other templates, ``TEMPLATES_HELDOUT_BABA``:
  no name, place, object or template is shared with "discover".

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
#: templates used only by split="heldout" (never in discovery)
TEMPLATES_HELDOUT_BABA = [
    "While {B} and {A} were commuting to the {PLACE}, {B} gave a {OBJECT} to",
    "After the lunch, {B} and {A} went to the {PLACE}. {B} gave a {OBJECT} to",
    "When {B} and {A} were at the {PLACE}, {B} showed a {OBJECT} to",
    "Yesterday {B} and {A} walked to the {PLACE}, and {B} brought a {OBJECT} to",
    "Later, {B} and {A} spent the day at the {PLACE}. Then {B} sent a {OBJECT} to",
    "Before {B} and {A} left the {PLACE}, {B} threw a {OBJECT} to",
    "At the {PLACE}, {B} and {A} were talking. Then {B} offered a {OBJECT} to",
    "The {PLACE} closed early, so {B} and {A} went home and {B} gave a {OBJECT} to",
]


def _abba(templates: list[str]) -> list[str]:
    return [t.replace("{B} and {A}", "{A} and {B}", 1) for t in templates]


TEMPLATES_ABBA = _abba(TEMPLATES_BABA)
TEMPLATES_HELDOUT_ABBA = _abba(TEMPLATES_HELDOUT_BABA)
SPLITS = (None, "discover", "heldout")

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


def ioi_pools(tokenizer, split: str | None = None) -> dict[str, list[str]]:
    """The names, places and objects of a split (module docstring): alternate entries of the
    single-token pools, so "discover" and "heldout" share none."""
    if split not in SPLITS:
        raise PromptError(f"unknown IOI split {split!r}: use None, 'discover' or 'heldout'")
    pools = {"names": single_token_words(tokenizer, NAMES), "places": single_token_words(tokenizer, PLACES),
             "objects": single_token_words(tokenizer, OBJECTS)}
    if split is not None:
        start = 0 if split == "discover" else 1
        pools = {k: v[start::2] for k, v in pools.items()}
    if len(pools["names"]) < 5 or not pools["places"] or not pools["objects"]:
        raise PromptError(f"this tokenizer has too few single-token names/places/objects for IOI"
                          f"{'' if split is None else f' (split {split!r})'}: {', '.join(f'{k} {len(v)}' for k, v in pools.items())}")
    return pools


def template_order_layout(n: int, seed: int, families: tuple[bool, ...] = (False, True),
                          n_templates: int = len(TEMPLATES_BABA)) -> list[tuple[int, bool]]:
    """(template index, ABBA?) of ``n`` prompts: every combination once per shuffled round.

    Template and order are independent (each round holds every template in every order of
    ``families``), and the layout of the first n prompts does not depend on how many follow."""
    rng = random.Random(f"ioi-layout-{seed}")
    combos = [(k, abba) for abba in families for k in range(n_templates)]
    out: list[tuple[int, bool]] = []
    while len(out) < n:
        round_ = combos[:]
        rng.shuffle(round_)
        out += round_
    return out[:n]


def ioi_examples(
    model,
    n: int = 8,
    seed: int = 0,
    corruption: str = "abc",
    templates: str = "mixed",
    split: str | None = None,
) -> PromptSet:
    """``n`` IOI minimal pairs for ``model``'s tokenizer.

    Args:
        corruption: "abc" (three fresh names) or "s2_io" (S2 replaced by IO).
        templates: "baba", "abba" or "mixed" (both orders, each template in each order).
        split: None, "discover" or "heldout": disjoint names, places, objects and templates
            (module docstring).

    Returns a PromptSet with positions IO, S1, S1+1, S2, END and ``groups`` = template index
    + 8 * (ABBA), so per-template means (Wang et al.'s knockout) can be taken per group.
    """
    if corruption not in ("abc", "s2_io"):
        raise PromptError(f"unknown IOI corruption {corruption!r}: use 'abc' or 's2_io'")
    families = {"baba": (False,), "abba": (True,), "mixed": (False, True)}
    if templates not in families:
        raise PromptError(f"unknown template family {templates!r}: use baba, abba or mixed")
    if n < 1:
        raise PromptError("n must be at least 1")
    tok = model.tokenizer
    pools = ioi_pools(tok, split)
    names, places, objects = pools["names"], pools["places"], pools["objects"]
    baba, abba_t = ((TEMPLATES_HELDOUT_BABA, TEMPLATES_HELDOUT_ABBA) if split == "heldout"
                    else (TEMPLATES_BABA, TEMPLATES_ABBA))
    rng = random.Random(seed)
    examples, groups, pos = [], [], {"IO": [], "S1": [], "S1+1": [], "S2": []}
    for k, abba in template_order_layout(n, seed, families[templates], len(baba)):
        template = (abba_t if abba else baba)[k]
        a, b, c, d, e = rng.sample(names, 5)
        fill = dict(PLACE=rng.choice(places), OBJECT=rng.choice(objects))
        clean = template.format(A=a, B=b, **fill)
        if corruption == "abc":
            # IO -> c, S1 -> d, S2 -> e: the same template with three unrelated names.
            corrupted = _format_with_s2(template, io=c, s1=d, s2=e, **fill)
        else:
            corrupted = _format_with_s2(template, io=a, s1=b, s2=a, **fill)
        examples.append({"clean": clean, "corrupted": corrupted, "answer": " " + a, "distractor": " " + b})
        groups.append(k + (len(baba) if abba else 0))
        ids = tok(clean, add_special_tokens=False)["input_ids"]
        io_id = tok(" " + a, add_special_tokens=False)["input_ids"][0]
        s_id = tok(" " + b, add_special_tokens=False)["input_ids"][0]
        s_pos = [j for j, t in enumerate(ids) if t == s_id]
        if io_id not in ids or len(s_pos) != 2:
            raise PromptError(f"IOI prompt {clean!r}: the names do not tokenize as one token each here")
        pos["IO"].append(ids.index(io_id))
        pos["S1"].append(s_pos[0])
        pos["S1+1"].append(s_pos[0] + 1)
        pos["S2"].append(s_pos[1])
    return prompts_for(model, examples, positions=pos, groups=groups)


def _format_with_s2(template: str, io: str, s1: str, s2: str, **fill) -> str:
    """Fill a template whose first {B} is S1 and second {B} is S2 with three separate names."""
    first, rest = template.split("{B}", 1)
    return (first + s1 + rest.replace("{B}", s2, 1)).format(A=io, **fill)
