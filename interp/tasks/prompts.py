"""PromptSet: clean/corrupted token pairs with their answers, the unit every primitive consumes.

Prompts of different lengths are right-padded. With causal attention a padded position never
influences an earlier one, so reading each example's logits at its own ``answer_pos`` (the last
prompt token) is exact without an attention mask. Clean and corrupted prompts of one example must
have the same token length, so that a position means the same thing in both runs.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping

import torch
from jaxtyping import Int

from interp.errors import PromptError

REQUIRED_KEYS = ("clean", "corrupted", "answer", "distractor")


@dataclass
class PromptSet:
    """A batch of minimal pairs.

    Attributes:
        clean_tokens, corrupted_tokens: [batch, pos] token ids, right-padded.
        answer_ids, distractor_ids: [batch] the correct next token and the one it competes with.
        answer_pos: [batch] index of each example's last prompt token, where logits are read.
        positions: named token positions, each [batch] (e.g. "END", "S2", "IO").
        groups: [batch] template/group id of each example (mean ablation per template), or None.
        clean_text, corrupted_text: the prompts as strings.
        prepend_bos: whether a BOS token was put in front.
    """

    clean_tokens: Int[torch.Tensor, "batch pos"]
    corrupted_tokens: Int[torch.Tensor, "batch pos"]
    answer_ids: Int[torch.Tensor, " batch"]
    distractor_ids: Int[torch.Tensor, " batch"]
    answer_pos: Int[torch.Tensor, " batch"]
    positions: dict[str, Int[torch.Tensor, " batch"]] = field(default_factory=dict)
    groups: Int[torch.Tensor, " batch"] | None = None
    clean_text: list[str] = field(default_factory=list)
    corrupted_text: list[str] = field(default_factory=list)
    prepend_bos: bool = False

    def __len__(self) -> int:
        return self.clean_tokens.shape[0]

    @property
    def n_pos(self) -> int:
        return self.clean_tokens.shape[1]

    def digest(self) -> str:
        """A sha256 of every tensor of the set (tokens, answers, distractors, answer positions,
        named positions, groups): equal digests, equal prompts for every metric and sweep. The key
        of checkpoints and of the engine kept on a model (the tokens alone are not enough: the
        same prompts with other answers give other numbers)."""
        h = hashlib.sha256()
        named = {"clean": self.clean_tokens, "corrupted": self.corrupted_tokens, "answer": self.answer_ids,
                 "distractor": self.distractor_ids, "answer_pos": self.answer_pos, "groups": self.groups,
                 **{f"pos:{k}": v for k, v in sorted(self.positions.items())}}
        for name, t in named.items():
            h.update(name.encode())
            if t is not None:
                h.update(str((tuple(t.shape), t.dtype)).encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()

    def to(self, device: str | torch.device) -> "PromptSet":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(
            self,
            clean_tokens=move(self.clean_tokens), corrupted_tokens=move(self.corrupted_tokens),
            answer_ids=move(self.answer_ids), distractor_ids=move(self.distractor_ids),
            answer_pos=move(self.answer_pos), groups=move(self.groups),
            positions={k: move(v) for k, v in self.positions.items()},
        )

    def subset(self, index: Iterable[int] | slice) -> "PromptSet":
        """The examples at ``index`` (a slice or a list of example indices)."""
        idx = index if isinstance(index, slice) else torch.as_tensor(list(index), dtype=torch.long)
        pick = lambda t: None if t is None else t[idx]  # noqa: E731
        rows = range(len(self))[idx] if isinstance(idx, slice) else idx.tolist()
        return replace(
            self,
            clean_tokens=pick(self.clean_tokens), corrupted_tokens=pick(self.corrupted_tokens),
            answer_ids=pick(self.answer_ids), distractor_ids=pick(self.distractor_ids),
            answer_pos=pick(self.answer_pos), groups=pick(self.groups),
            positions={k: pick(v) for k, v in self.positions.items()},
            clean_text=[self.clean_text[i] for i in rows] if self.clean_text else [],
            corrupted_text=[self.corrupted_text[i] for i in rows] if self.corrupted_text else [],
        )

    def swapped(self) -> "PromptSet":
        """Clean and corrupted exchanged, answer and distractor too (for noising vs denoising)."""
        return replace(
            self, clean_tokens=self.corrupted_tokens, corrupted_tokens=self.clean_tokens,
            answer_ids=self.distractor_ids, distractor_ids=self.answer_ids,
            clean_text=self.corrupted_text, corrupted_text=self.clean_text,
        )

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_examples(
        cls,
        tokenizer,
        examples: Iterable[Mapping],
        prepend_bos: bool = False,
        positions: Mapping[str, Iterable[int]] | None = None,
        groups: Iterable[int] | None = None,
        names: Iterable[str] | None = None,
    ) -> "PromptSet":
        """Tokenize ``{"clean", "corrupted", "answer", "distractor"}`` examples.

        Args:
            tokenizer: a Hugging Face tokenizer, or a model with a ``.tokenizer``.
            examples: mappings with the four keys; answer/distractor are next-token strings
                (e.g. " Mary") and must each be ONE token.
            prepend_bos: put the tokenizer's BOS token in front of every prompt.
            positions: named token positions, one index per example (without the BOS offset;
                it is added here).
            groups: a group (template) id per example.
            names: how to name each example in error messages (default "example i").

        Raises:
            PromptError: naming the first bad example, if a key is missing, an answer is not one
                token, or clean and corrupted differ in token length.
        """
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)
        examples = list(examples)
        if not examples:
            raise PromptError("no prompts given")
        names = list(names) if names is not None else [f"example {i}" for i in range(len(examples))]
        bos = [tokenizer.bos_token_id] if prepend_bos else []
        if prepend_bos and tokenizer.bos_token_id is None:
            raise PromptError("prepend_bos=True but the tokenizer has no BOS token")

        def encode(text: str) -> list[int]:
            return tokenizer(text, add_special_tokens=False)["input_ids"]

        clean, corrupted, answers, distractors = [], [], [], []
        for name, ex in zip(names, examples):
            check_fields(ex, name)
            c, x = bos + encode(ex["clean"]), bos + encode(ex["corrupted"])
            if len(c) != len(x):
                raise PromptError(
                    f"{name}: clean and corrupted prompts have different token lengths "
                    f"({len(c)} vs {len(x)}); patching needs aligned positions"
                )
            if len(c) == 0:
                raise PromptError(f"{name}: empty prompt")
            for key, store in (("answer", answers), ("distractor", distractors)):
                ids = encode(ex[key])
                if len(ids) != 1:
                    raise PromptError(
                        f"{name}: {key} {_short(ex[key])} is {len(ids)} tokens, must be exactly one "
                        f"(tokens: {_short(tokenizer.convert_ids_to_tokens(ids[:8]))})"
                    )
                store.append(ids[0])
            clean.append(c)
            corrupted.append(x)

        lengths = torch.tensor([len(c) for c in clean])
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        pad = 0 if pad is None else pad
        width = int(lengths.max())

        def padded(rows: list[list[int]]) -> torch.Tensor:
            return torch.tensor([r + [pad] * (width - len(r)) for r in rows], dtype=torch.long)

        named = {k: torch.as_tensor(list(v), dtype=torch.long) + len(bos) for k, v in (positions or {}).items()}
        named.setdefault("END", lengths - 1)
        return cls(
            clean_tokens=padded(clean),
            corrupted_tokens=padded(corrupted),
            answer_ids=torch.tensor(answers),
            distractor_ids=torch.tensor(distractors),
            answer_pos=lengths - 1,
            positions=named,
            groups=None if groups is None else torch.as_tensor(list(groups), dtype=torch.long),
            clean_text=[ex["clean"] for ex in examples],
            corrupted_text=[ex["corrupted"] for ex in examples],
            prepend_bos=prepend_bos,
        )

    @classmethod
    def from_jsonl(cls, path: str | Path, tokenizer, prepend_bos: bool = False) -> "PromptSet":
        """Read the CLI's JSONL format: one ``{"clean", "corrupted", "answer", "distractor"}`` per line.

        Errors name the file and line number.
        """
        examples, names = read_prompts_jsonl(path)
        return cls.from_examples(tokenizer, examples, prepend_bos=prepend_bos, names=names)


def read_jsonl(path: str | Path, what: str = "records") -> list[tuple[str, dict]]:
    """The JSON objects of a JSONL file with their "path:line" (blank lines skipped).

    The file must be UTF-8 (a leading byte-order mark is allowed); lines end at "\\n" only (a
    U+2028 inside a JSON string does not split it). Raises PromptError naming the file
    (unreadable, not UTF-8, empty) or the line (not JSON, not an object)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise PromptError(f"cannot read {what} file {path}: {exc.strerror}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise PromptError(
            f"{path}:{line}: not UTF-8 text (byte {exc.start:,} is {data[exc.start]:#04x}); "
            "save the file as UTF-8"
        ) from None
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptError(f"{path}:{number}: not valid JSON ({exc.msg}, column {exc.colno})") from None
        except RecursionError:
            raise PromptError(f"{path}:{number}: JSON nested too deeply; each line is one flat object") from None
        except ValueError as exc:  # an integer of more than 4,300 digits
            raise PromptError(f"{path}:{number}: not usable JSON ({str(exc).split(';')[0]})") from None
        if not isinstance(obj, dict):
            raise PromptError(f"{path}:{number}: expected a JSON object {{...}}, got {_json_type(obj)}")
        rows.append((f"{path}:{number}", obj))
    if not rows:
        raise PromptError(f"{path}: no {what} in file")
    return rows


def read_prompts_jsonl(path: str | Path) -> tuple[list[dict], list[str]]:
    """The examples of a prompts JSONL file and their names ("path:line"), checked for structure
    (UTF-8, one JSON object per line, the four keys present as strings) without a tokenizer: what
    the CLI checks before loading a model. Raises PromptError naming the first bad line."""
    rows = read_jsonl(path, "prompts")
    for name, obj in rows:
        check_fields(obj, name)
    return [obj for _, obj in rows], [name for name, _ in rows]


def check_fields(example, name: str = "example") -> None:
    """Raise PromptError unless ``example`` is a mapping whose four keys are (encodable) strings."""
    if not isinstance(example, Mapping):
        raise PromptError(f"{name}: expected a mapping with keys {', '.join(REQUIRED_KEYS)}, got {_json_type(example)}")
    bad = [k for k in REQUIRED_KEYS if not isinstance(example.get(k), str)]
    if bad:
        what = ", ".join(f"{k} ({_json_type(example[k]) if k in example else 'missing'})" for k in bad)
        raise PromptError(f"{name}: missing or non-string field(s) {what}; each example needs "
                          f"{', '.join(REQUIRED_KEYS)} as strings")
    for key in REQUIRED_KEYS:
        try:
            example[key].encode("utf-8")
        except UnicodeEncodeError:
            raise PromptError(f"{name}: {key} holds an unpaired surrogate (\\ud800-\\udfff escape); "
                              "fix the text") from None


def model_device(model) -> torch.device:
    """The device of ``model``'s first weight (its embedding): where its inputs go."""
    return next(iter(model.parameters())).device


def on_model_device(model, prompts: PromptSet) -> PromptSet:
    """``prompts`` on ``model_device(model)``: prompts tokenized on the CPU run on a model on the GPU."""
    return prompts.to(model_device(model))


def check_prompts(model, prompts: PromptSet, names: Iterable[str] | None = None) -> None:
    """Raise PromptError naming the first example ``model`` cannot run: more tokens than its
    context (``model.cfg.n_ctx``) or a token id outside its vocabulary (``model.cfg.d_vocab``, e.g.
    prompts tokenized for another model). Call it after tokenizing and before any forward.

    ``names``: how to call each example (default "example i", e.g. "p.jsonl:4" from a file).
    """
    n_ctx, d_vocab = model.cfg.n_ctx, model.cfg.d_vocab
    names = list(names) if names is not None else [f"example {i}" for i in range(len(prompts))]
    lengths = (prompts.answer_pos + 1).cpu()
    bad_ids = {
        "clean prompt": prompts.clean_tokens.cpu(), "corrupted prompt": prompts.corrupted_tokens.cpu(),
        "answer": prompts.answer_ids.cpu()[:, None], "distractor": prompts.distractor_ids.cpu()[:, None],
    }
    outside = {what: (ids < 0) | (ids >= d_vocab) for what, ids in bad_ids.items()}
    for i in range(len(prompts)):
        if n_ctx and lengths[i] > n_ctx:
            raise PromptError(f"{names[i]} has {int(lengths[i]):,} tokens, more than the model's "
                              f"{n_ctx:,}-token context; shorten it")
        for what, mask in outside.items():
            if mask[i].any():
                token = int(bad_ids[what][i][mask[i]][0])
                raise PromptError(f"{names[i]}: token id {token:,} of the {what} is outside the model's "
                                  f"vocabulary (0..{d_vocab - 1:,}); tokenize with this model's tokenizer")


def _short(value, limit: int = 60) -> str:
    """repr(value), cut after ``limit`` characters: messages stay one short line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _json_type(value) -> str:
    """The JSON kind of a parsed value, for messages: "an object", "a number", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def prompts_for(model, examples: Iterable[Mapping], **kwargs) -> PromptSet:
    """``PromptSet.from_examples`` with the model's tokenizer and its BOS default."""
    kwargs.setdefault("prepend_bos", bool(model.cfg.default_prepend_bos))
    return PromptSet.from_examples(model.tokenizer, examples, **kwargs)
