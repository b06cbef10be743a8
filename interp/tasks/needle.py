"""Needle-in-a-haystack episodes for the retrieval-heads analysis (Wu et al. 2024).

A *retrieval head* is an attention head that, while the model answers a question about a long
context, looks at the answer's tokens in the context and copies them to the output. To find such
heads the paper builds NIAH episodes: a *needle* sentence that holds a fact is hidden in bland
*filler* text at a chosen depth, a question about the fact follows, and the model's greedy answer
is scored token by token against the heads' attention. An episode here::

    The village council mended the fishing nets by the river before the first snow. ...
    The secret ingredient in Grandma Elsa's soup is smoked Hungarian paprika.   <- needle, depth d
    ... Most evenings, the postman swept the stone steps near the market square.

    Question: What is the secret ingredient in Grandma Elsa's soup?
    Answer:                                        -> " smoked Hungarian paprika"

Filler. Written by this project, not copied from any corpus: ``filler_sentences(seed)`` draws
sentences from a few templates over small pools of subjects, predicates, places, time phrases and
adjectives (plus a few very short sentences that let the haystack hit its token budget closely).
The stream is unlimited and deterministic in the seed. A sentence that shares a word with the
needle's answer is skipped, so the answer occurs once in the context; the pools are also chosen
to share no word with any built-in answer (``filler_vocabulary()``), so the skip never fires for
those.

Needles. ``NEEDLES`` are ten sentences written for this project, each with a question and an
answer span of 3-10 tokens under every shipped tokenizer, made of words absent from the filler
vocabulary, and preceded by a space inside the needle (so the answer is tokenized in the context
exactly as it is tokenized alone with a leading space, which is how a model would generate it).

Building an episode (``needle_episode``), token-accurately, for a target ``context_length``:

1. The prompt with the needle as its only context is tokenized: n0 tokens (needle, question,
   chat template, BOS; all counted exactly). The filler budget is
   ``context_length - buffer - n0`` tokens.
2. Filler sentences are taken from the stream first-fit: a sentence is kept while it fits the
   budget that is left, skipped otherwise, until (almost) nothing is left. Each sentence's cost is
   its token count with its leading space. The result sits a few tokens under the budget at most.
3. The needle goes in at ``depth`` x (filler tokens), moved back to the nearest preceding sentence
   end (as the paper's code does), so it never splits a sentence: depth 0 puts it first in the
   context, depth 1 last, right before the question.
4. The question follows: ``PLAIN_QUESTION`` ("\\n\\nQuestion: {q}\\nAnswer:"), or with
   ``chat=True`` the user turn ``context + CHAT_QUESTION`` rendered by the tokenizer's chat
   template with ``add_generation_prompt=True`` (a tokenizer without one raises PromptError).
5. The whole prompt text is tokenized once; the needle sentence, the answer and the context are
   located on that final sequence through the tokenizer's character offsets, and the answer span
   is checked against ``find_span`` (the scorer's finder) and against its decoded text.

Buffer and length. In the paper's code (after Kamradt's NIAH) the 200-token buffer is head-room:
the context is cut to ``context_length - 200`` tokens to leave room for the system message, the
question and the response. Here the template and question are counted exactly inside
``context_length``, so ``buffer`` (default 0) is only the head-room to keep for the generated
answer: the prompt aims at ``context_length - buffer`` tokens. It is not filler text between the
needle and the question (at depth 1 the needle is the context's last sentence, as in the paper).
The prompt length is guaranteed within ``LENGTH_TOLERANCE`` (5 %) of ``context_length`` of that
aim, else PromptError; in practice it is 0-4 tokens short of it. ``context_length`` is not checked
against the model: SmolLM2-135M has 8,192 positions, Qwen2.5 and Gemma 3 32,768.

The needle span. The spec's scorer credits a head when its top attention lands in the needle span
[s, e) on the token it then generates. ``find_span`` locates it: the exact answer token sequence
first; else (tokenization differing at a boundary, e.g. the answer after a newline instead of a
space) the window whose token *set* overlaps the answer's most (the paper: > 90 % for a whole
needle sentence), preferring windows without foreign tokens; too little overlap raises.

``rouge1_recall`` is the spec's answer score (ROUGE-1 recall x 100, unigrams lower-cased with
punctuation removed as rouge_score's tokenizer does, no stemming); episodes count when > 50.
"""
from __future__ import annotations

import bisect
import random
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from interp.errors import PromptError

PLAIN_QUESTION = "\n\nQuestion: {question}\nAnswer:"
CHAT_QUESTION = "\n\nQuestion: {question}"
LENGTH_TOLERANCE = 0.05
DEFAULT_BUFFER = 0


# ---------------------------------------------------------------------------------------- needles
_WORD = re.compile(r"[^a-z0-9]+")


def words(text: str) -> list[str]:
    """Lower-cased alphanumeric words; every other character separates words (rouge_score's way)."""
    return _WORD.sub(" ", text.lower()).split()


#: Words an answer may share with the filler: they carry no fact, and excluding every filler
#: sentence with "the" or "of" would leave no filler.
FUNCTION_WORDS = frozenset(
    "a an and the of in on at to for by with from as its it his her their is was were that after".split())


def content_words(text: str) -> list[str]:
    """``words(text)`` without the FUNCTION_WORDS: what the filler must not contain."""
    return [w for w in words(text) if w not in FUNCTION_WORDS]


@dataclass(frozen=True)
class Needle:
    """A fact to hide: the sentence, the question about it and the answer span inside it."""

    id: str
    sentence: str
    question: str
    answer: str

    def __post_init__(self):
        if not self.sentence.rstrip().endswith((".", "!", "?")):
            raise PromptError(f"needle {self.id!r}: the sentence must end a sentence (., ! or ?)")
        if not self.answer.strip() or (" " + self.answer) not in self.sentence:
            raise PromptError(
                f"needle {self.id!r}: the answer {self.answer!r} must occur in the sentence after "
                "a space (so it tokenizes there as it does alone with a leading space)"
            )
        if not content_words(self.answer):
            raise PromptError(f"needle {self.id!r}: the answer has no content words (only {sorted(FUNCTION_WORDS)})")


NEEDLES: tuple[Needle, ...] = (
    Needle("soup", "The secret ingredient in Grandma Elsa's soup is a pinch of smoked Hungarian paprika with roasted garlic.",
           "What is the secret ingredient in Grandma Elsa's soup?",
           "a pinch of smoked Hungarian paprika with roasted garlic"),
    Needle("vault", "The combination of the vault in the basement is 58213, followed by a silver key shaped like a fish.",
           "What is the combination of the vault in the basement?",
           "58213, followed by a silver key shaped like a fish"),
    Needle("hobby", "Professor Okonkwo's favourite hobby is carving tiny walnut chess pieces for her grandchildren.",
           "What is Professor Okonkwo's favourite hobby?",
           "carving tiny walnut chess pieces for her grandchildren"),
    Needle("sailboat", "Captain Mirella named her sailboat Dancing Otter Seventeen, after a cat called Pudding.",
           "What did Captain Mirella name her sailboat?",
           "Dancing Otter Seventeen, after a cat called Pudding"),
    Needle("quiz", "The team that won the village quiz called itself the Purple Marmosets of Lower Fennick.",
           "What did the team that won the village quiz call itself?",
           "the Purple Marmosets of Lower Fennick"),
    Needle("muffins", "For train journeys Tomas always packs lemon drizzle muffins, salted almonds and a flask of mint tea.",
           "What does Tomas always pack for train journeys?",
           "lemon drizzle muffins, salted almonds and a flask of mint tea"),
    Needle("painting", "The museum's missing painting is hidden behind Wendell's wardrobe in the attic of his cottage.",
           "Where is the museum's missing painting hidden?",
           "behind Wendell's wardrobe in the attic of his cottage"),
    Needle("parrot", "The only food the zookeeper's parrot will eat is toasted sunflower seeds dipped in honey.",
           "What is the only food the zookeeper's parrot will eat?",
           "toasted sunflower seeds dipped in honey"),
    Needle("password", "The password for the lighthouse radio is violet pelican forty-seven, whispered backwards.",
           "What is the password for the lighthouse radio?",
           "violet pelican forty-seven, whispered backwards"),
    Needle("comet", "The astronomer nicknamed the new comet Whistling Ginger Biscuit because of its crumbly orange tail.",
           "Why did the astronomer nickname the new comet Whistling Ginger Biscuit?",
           "because of its crumbly orange tail"),
)
NEEDLES_BY_ID = {n.id: n for n in NEEDLES}


# ----------------------------------------------------------------------------------------- filler
SUBJECTS = [
    "the old harbour town", "the village council", "a quiet fisherman", "the night porter",
    "the school choir", "the local baker", "an elderly farmer", "the station master",
    "the ferry crew", "the market traders", "a travelling clerk", "the postman",
    "the small library", "the hill shepherd", "the railway workers", "the innkeeper",
    "a retired sailor", "the parish gardener", "the clock keeper", "the young teacher",
    "the mill owner", "a patient carpenter", "the weaving guild", "the harbour master",
]
PREDICATES = [
    "kept the lanterns lit", "repaired the wooden fences", "painted the garden gate",
    "swept the stone steps", "counted the empty crates", "mended the fishing nets",
    "watered the window boxes", "checked the station clock", "stacked firewood",
    "walked along the canal", "talked about the weather", "read the morning paper",
    "opened the shutters early", "closed the shop at noon", "tidied the long shelves",
    "polished the brass handles", "carried baskets of apples", "fed the farm horses",
    "wrote letters to distant cousins", "waited for the evening bus", "sold warm bread",
    "cleaned the narrow windows", "planted rows of cabbages", "sang old songs",
    "rang the bell twice", "visited the quiet churchyard", "rowed across the bay",
    "gathered fallen leaves", "fixed the leaking roof", "sorted the morning post",
]
PLACES = [
    "near the market square", "by the river", "in the valley", "on the hill road",
    "along the coast", "at the edge of town", "beside the old mill", "in the main hall",
    "across the bridge", "under the station roof", "outside the bakery", "down by the docks",
    "in the north field", "at the crossroads",
]
TIMES = [
    "through the winter months", "every Sunday morning", "before the first snow",
    "late in the afternoon", "during the long summer", "at the end of each week",
    "most evenings", "after the harvest", "in the early spring", "once a year",
    "on rainy days", "at first light", "every other Tuesday", "when the tide was low",
]
ADJECTIVES = ["calm", "busy", "quiet", "cheerful", "tired", "content", "patient", "careful"]
SHORT = [
    "It rained.", "Nothing changed.", "The wind dropped.", "Nobody complained.", "Snow fell.",
    "The days grew longer.", "It was quiet.", "The kettle boiled.", "Time passed slowly.",
    "Clouds gathered.", "The roads were muddy.", "Dogs barked.",
]
TEMPLATES = [
    "{S} {VP} {P} {T}.",
    "{T}, {s} {VP} {P}.",
    "{S} {VP} {T}, and {s2} {VP2}.",
    "{S} {VP} {P}.",
    "{S} seemed {ADJ} {T}.",
    "{P}, {s} {VP}.",
    "Most people agreed that {s} {VP} {P}.",
    "{S} {VP} {T}, as usual.",
    "{S} {VP}, while {s2} {VP2} {P}.",
]
SHORT_RATE = 0.12
def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def filler_vocabulary() -> set[str]:
    """Every word a filler sentence can contain (as split by ``words``)."""
    pools = SUBJECTS + PREDICATES + PLACES + TIMES + ADJECTIVES + SHORT
    pools += [re.sub(r"\{\w+\}", " ", t) for t in TEMPLATES]
    return {w for text in pools for w in words(text)}


def filler_sentence(rng: random.Random) -> str:
    """One bland sentence drawn with ``rng``."""
    if rng.random() < SHORT_RATE:
        return rng.choice(SHORT)
    s, s2 = rng.sample(SUBJECTS, 2)
    vp, vp2 = rng.sample(PREDICATES, 2)
    text = rng.choice(TEMPLATES).format(
        S=s, s=s, s2=s2, VP=vp, VP2=vp2, P=rng.choice(PLACES), T=rng.choice(TIMES),
        ADJ=rng.choice(ADJECTIVES),
    )
    return _cap(text)


def filler_sentences(seed: int | str = 0, exclude: Sequence[str] = ()) -> Iterator[str]:
    """An unlimited, deterministic stream of filler sentences, each ending with a full stop.

    Args:
        seed: seed of the ``random.Random`` drawing the sentences (ints and strings are both
            deterministic across runs).
        exclude: words (any case) that no yielded sentence may contain, e.g. the needle's answer.

    Raises:
        PromptError: 1,000 draws in a row were all excluded (the exclusions cover common words).
    """
    rng, banned = random.Random(seed), {w for text in exclude for w in words(text)}
    misses = 0
    while True:
        sentence = filler_sentence(rng)
        if banned.isdisjoint(words(sentence)):
            misses = 0
            yield sentence
            continue
        misses += 1
        if misses >= 1000:
            raise PromptError(
                f"no filler sentence avoids the words {sorted(banned)}; the filler vocabulary "
                "shares them (use answer words outside filler_vocabulary())"
            )


class _Stream:
    """A needle's filler stream with each sentence's token cost (with its leading space), cached."""

    CHUNK = 64

    def __init__(self, tok, seed: int | str, exclude: Sequence[str]):
        self.tok, self.it = tok, filler_sentences(seed, exclude)
        self.sentences: list[str] = []
        self.costs: list[int] = []

    def __getitem__(self, i: int) -> tuple[str, int]:
        while i >= len(self.sentences):
            new = [next(self.it) for _ in range(self.CHUNK)]
            ids = self.tok([" " + s for s in new], add_special_tokens=False)["input_ids"]
            self.sentences += new
            self.costs += [len(x) for x in ids]
            self.shortest = min(self.costs)
        return self.sentences[i], self.costs[i]

    def fill(self, budget: int, max_skips: int = 256) -> tuple[list[str], list[int]]:
        """First-fit: sentences in stream order, skipping those longer than what is left."""
        chosen, costs, left, skips, i = [], [], budget, 0, 0
        while left > 0 and skips < max_skips:
            sentence, cost = self[i]
            i += 1
            if cost <= left:
                chosen.append(sentence)
                costs.append(cost)
                left -= cost
                skips = 0
            else:
                skips += 1
            if i >= self.CHUNK and left < self.shortest:
                break
        return chosen, costs


# ---------------------------------------------------------------------------------------- episodes
@dataclass
class Episode:
    """One NIAH prompt, ready for greedy decoding.

    Attributes:
        tokens: [T] the prompt's token ids (context, question, template; BOS if asked for).
        text: the prompt as a string (without the prepended BOS, which is not in the text).
        needle_span: (start, end) token indices of the answer inside the context, end exclusive:
            the tokens a retrieval head copies from. Equal to ``find_span(tokens, answer_ids)``.
        needle_start_sentence: (start, end) token indices of the whole needle sentence.
        context_span: (start, end) token indices of the context (filler and needle).
        answer: the answer string; ``answer_ids`` its ids as generated (" " + answer).
        question: the question asked.
        context_length: the target length; ``len(tokens)`` is within LENGTH_TOLERANCE of
            ``context_length - buffer``.
        depth: the requested depth in [0, 1]; ``actual_depth`` the fraction of filler tokens
            before the needle after moving it back to a sentence end.
        needle_id, seed, chat, prepend_bos, buffer: how it was built.
    """

    tokens: torch.Tensor
    text: str
    needle_span: tuple[int, int]
    needle_start_sentence: tuple[int, int]
    context_span: tuple[int, int]
    answer: str
    answer_ids: torch.Tensor
    question: str
    context_length: int
    depth: float
    actual_depth: float
    needle_id: str
    seed: int
    chat: bool
    prepend_bos: bool
    buffer: int

    def __len__(self) -> int:
        return self.tokens.shape[0]


def _tokenizer(tokenizer_or_model):
    return getattr(tokenizer_or_model, "tokenizer", tokenizer_or_model)


def _needle(needle: Needle | str) -> Needle:
    if isinstance(needle, Needle):
        return needle
    if needle not in NEEDLES_BY_ID:
        known = ", ".join(NEEDLES_BY_ID)
        raise PromptError(f"unknown needle {needle!r}: built-in needles are {known}")
    return NEEDLES_BY_ID[needle]


def _prompt_text(tok, context: str, question: str, chat: bool) -> str:
    if not chat:
        return context + PLAIN_QUESTION.format(question=question)
    if not getattr(tok, "chat_template", None):
        raise PromptError("chat=True but this tokenizer has no chat template; use chat=False")
    messages = [{"role": "user", "content": context + CHAT_QUESTION.format(question=question)}]
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _encode(tok, text: str, prepend_bos: bool) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of ``text`` (BOS in front if asked and not already there)."""
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError as e:  # slow (Python) tokenizers have no offsets
        raise PromptError("needle episodes need a fast tokenizer (character offsets)") from e
    ids, offsets = list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    if prepend_bos:
        if tok.bos_token_id is None:
            raise PromptError("prepend_bos=True but the tokenizer has no BOS token")
        if not ids or ids[0] != tok.bos_token_id:
            ids, offsets = [tok.bos_token_id] + ids, [(0, 0)] + offsets
    return ids, offsets


def _covering(offsets: list[tuple[int, int]], start: int, end: int) -> tuple[int, int]:
    """The token range whose characters overlap [start, end)."""
    hit = [i for i, (a, b) in enumerate(offsets) if b > a and b > start and a < end]
    if not hit:
        raise PromptError(f"no token covers characters [{start}, {end})")
    return hit[0], hit[-1] + 1


def _episode(tok, needle: Needle, stream: _Stream, context_length: int, depth: float, seed: int,
             chat: bool, prepend_bos: bool, buffer: int) -> Episode:
    if not isinstance(context_length, int) or context_length < 1:
        raise PromptError(f"context_length must be a positive int, got {context_length!r}")
    if not 0.0 <= depth <= 1.0:
        raise PromptError(f"depth must be in [0, 1], got {depth!r}")
    if not isinstance(buffer, int) or not 0 <= buffer < context_length:
        raise PromptError(f"buffer must be an int in [0, context_length), got {buffer!r}")
    target = context_length - buffer
    alone = _prompt_text(tok, needle.sentence, needle.question, chat)
    n0 = len(_encode(tok, alone, prepend_bos)[0])
    if n0 > target:
        raise PromptError(
            f"context_length {context_length} (buffer {buffer}) is too small: the needle "
            f"{needle.id!r} with its question alone takes {n0} tokens"
        )
    filler, costs = stream.fill(target - n0)

    # The needle at depth x filler tokens, moved back to the sentence end at or before it.
    ends = [0]
    for c in costs:
        ends.append(ends[-1] + c)
    k = bisect.bisect_right(ends, depth * ends[-1]) - 1
    context = " ".join(filler[:k] + [needle.sentence] + filler[k:])
    text = _prompt_text(tok, context, needle.question, chat)
    ids, offsets = _encode(tok, text, prepend_bos)
    if abs(len(ids) - target) > LENGTH_TOLERANCE * context_length:
        raise PromptError(
            f"episode of {len(ids)} tokens, more than {LENGTH_TOLERANCE:.0%} of {context_length} "
            f"from the aim of {target}"
        )

    c0 = text.index(context)
    n_start = c0 + context.index(needle.sentence)
    a_start = n_start + needle.sentence.index(" " + needle.answer)  # the answer with its space
    context_span = _covering(offsets, c0, c0 + len(context))
    sentence_span = _covering(offsets, n_start, n_start + len(needle.sentence))
    span = _covering(offsets, a_start, a_start + 1 + len(needle.answer))
    answer_ids = tok(" " + needle.answer, add_special_tokens=False)["input_ids"]
    where = f"needle {needle.id!r}, length {context_length}, depth {depth}"
    if tok.decode(ids[span[0]:span[1]]).strip() != needle.answer:
        raise PromptError(f"{where}: the answer's tokens also hold neighbouring characters")
    found = find_span(ids[context_span[0]:context_span[1]], answer_ids)
    if (found[0] + context_span[0], found[1] + context_span[0]) != span:
        raise PromptError(
            f"{where}: find_span locates the answer at {found} (context-relative), not at its "
            f"place {span}; the answer is tokenized differently in the needle than alone"
        )
    return Episode(
        tokens=torch.tensor(ids, dtype=torch.long), text=text, needle_span=span,
        needle_start_sentence=sentence_span, context_span=context_span, answer=needle.answer,
        answer_ids=torch.tensor(answer_ids, dtype=torch.long), question=needle.question,
        context_length=context_length, depth=float(depth),
        actual_depth=ends[k] / ends[-1] if ends[-1] else 0.0, needle_id=needle.id, seed=seed,
        chat=chat, prepend_bos=prepend_bos, buffer=buffer,
    )


def _stream_for(tok, needle: Needle, seed: int) -> _Stream:
    # One filler stream per (seed, needle): every length and depth of a needle shares its haystack.
    return _Stream(tok, f"needle-filler/{seed}/{needle.id}", content_words(needle.answer))


def needle_episode(
    tokenizer,
    needle: Needle | str,
    context_length: int,
    depth: float,
    seed: int = 0,
    chat: bool = False,
    prepend_bos: bool = False,
    buffer: int = DEFAULT_BUFFER,
) -> Episode:
    """One NIAH episode (see the module docstring for the construction).

    Args:
        tokenizer: a fast Hugging Face tokenizer, or a model with a ``.tokenizer``.
        needle: a ``Needle`` or the id of a built-in one (``NEEDLES_BY_ID``).
        context_length: target prompt length in tokens (question and template included).
        depth: where the needle goes, 0 (first sentence) to 1 (last sentence before the question).
        seed: seeds the filler (together with the needle's id).
        chat: render the prompt with the tokenizer's chat template (generation prompt added).
        prepend_bos: put the tokenizer's BOS token first (unless the template already did).
        buffer: tokens of head-room left for the answer; the prompt aims at
            ``context_length - buffer`` tokens.

    Raises:
        PromptError: bad depth/length/buffer, a context too short for the needle and question,
            chat=True without a chat template, or an answer that cannot be located cleanly.
    """
    tok, needle = _tokenizer(tokenizer), _needle(needle)
    stream = _stream_for(tok, needle, seed)
    return _episode(tok, needle, stream, context_length, depth, seed, chat, prepend_bos, buffer)


def needle_episodes(
    tokenizer,
    lengths: Sequence[int] = (256, 512, 1024),
    depths: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0),
    needles: Sequence[Needle | str] | None = None,
    seed: int = 0,
    chat: bool = False,
    prepend_bos: bool = False,
    buffer: int = DEFAULT_BUFFER,
) -> list[Episode]:
    """Episodes for every needle x length x depth (in that nesting order).

    ``needles=None`` uses all of ``NEEDLES``. A needle's episodes share one filler stream, so at
    one length only the needle's position differs between depths.
    """
    tok = _tokenizer(tokenizer)
    chosen = [_needle(n) for n in (NEEDLES if needles is None else needles)]
    if not chosen or not lengths or not depths:
        raise PromptError("needle_episodes needs at least one needle, length and depth")
    episodes = []
    for needle in chosen:
        stream = _stream_for(tok, needle, seed)
        for length in lengths:
            for depth in depths:
                episodes.append(
                    _episode(tok, needle, stream, length, depth, seed, chat, prepend_bos, buffer)
                )
    return episodes


# ---------------------------------------------------------------------------------------- scoring
def _ids(x) -> list[int]:
    return x.tolist() if isinstance(x, torch.Tensor) else [int(i) for i in x]


def find_span(context_ids, answer_ids, threshold: float = 0.5) -> tuple[int, int]:
    """Where the answer's tokens sit in ``context_ids``: (start, end), end exclusive.

    1. The first exact occurrence of ``answer_ids``.
    2. Else (tokenization differing at a boundary, e.g. " smoked" alone but "sm","oked" after a
       newline) the window of 1 to len(answer)+2 tokens maximising the share of the answer's
       token *set* it contains (recall); ties go to the window with the larger share of tokens
       from that set (so foreign boundary tokens are left out), then the longer, then the first.
       The result is the matching core, the tokens that can be copied verbatim.

    Args:
        context_ids, answer_ids: token id sequences (lists or 1-D tensors).
        threshold: the best window must hold MORE than this share of the answer's token set
            (the paper uses > 0.9 for whole needle sentences).

    Raises:
        PromptError: an empty answer, or no window above the threshold (answer not present).
    """
    ctx, ans = _ids(context_ids), _ids(answer_ids)
    n = len(ans)
    if n == 0:
        raise PromptError("find_span: empty answer")
    for s in range(len(ctx) - n + 1):
        if ctx[s:s + n] == ans:
            return s, s + n
    want = set(ans)
    best, best_key = None, None
    for width in range(1, n + 3):
        for s in range(len(ctx) - width + 1):
            window = ctx[s:s + width]
            inside = sum(t in want for t in window)
            if not inside:
                continue
            key = (len(want.intersection(window)) / len(want), inside / width, width, -s)
            if best_key is None or key > best_key:
                best, best_key = (s, s + width), key
    if best is None or best_key[0] <= threshold:
        got = 0.0 if best_key is None else best_key[0]
        raise PromptError(
            f"find_span: the answer is not in the context (best token-set overlap {got:.0%}, "
            f"need > {threshold:.0%})"
        )
    return best


def needle_window(prompt_ids, answer_ids, threshold: float = 0.9) -> tuple[int, int]:
    """The paper's needle span: the FIRST window of len(answer) tokens of the prompt whose token
    *set* holds more than ``threshold`` of the answer's token set (Wu et al. 2024's code, 0.9).

    Unlike ``find_span`` it does not prefer the exact occurrence: an answer of more than 10
    distinct tokens is already matched one token early (10 of 11 distinct tokens is > 0.9), so
    the window can start before the answer and leave its last token(s) out, as in the paper.

    Raises:
        PromptError: an empty answer, or no window above the threshold.
    """
    ctx, ans = _ids(prompt_ids), _ids(answer_ids)
    n, want = len(ans), set(ans)
    if n == 0:
        raise PromptError("needle_window: empty answer")
    for s in range(len(ctx) - n + 1):
        if len(want.intersection(ctx[s:s + n])) / len(want) > threshold:
            return s, s + n
    raise PromptError(f"needle_window: no window of {n} tokens holds more than {threshold:.0%} of the answer's tokens")


def rouge1_recall(prediction: str, reference: str) -> float:
    """ROUGE-1 recall x 100: the share of the reference's words (with counts) in the prediction.

    Words are lower-cased and split on every non-alphanumeric character (punctuation removed, as
    rouge_score's default tokenizer does; no stemming). The spec keeps an episode when > 50.

    Raises:
        PromptError: the reference has no words.
    """
    ref, pred = Counter(words(reference)), Counter(words(prediction))
    if not ref:
        raise PromptError("rouge1_recall: the reference has no words")
    return 100.0 * sum(min(c, pred[w]) for w, c in ref.items()) / sum(ref.values())
