"""Fuzzing the command line's prompts file: whatever bytes it holds, a bad file gives exit status 2,
exactly one stderr line with "error" in it, no traceback, nothing on stdout and no output file.

Every generated file is invalid by construction (random bytes, invalid UTF-8, wrong JSON types or
missing keys, MB-long lines, empty or blank files), so the expected outcome never depends on luck.
``main`` runs in-process; the session's model stands in for every load (no example loads one).
"""
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import interp.cli as cli
import interp.models
from interp.cli import main

GOOD = {"clean": "When Mary and John went to the store, John gave a drink to",
        "corrupted": "When Alice and Bob went to the store, Bob gave a drink to",
        "answer": " Mary", "distractor": " John"}
KEYS = list(GOOD)


def _line(obj) -> bytes:
    return json.dumps(obj).encode()


not_a_string = st.one_of(
    st.integers(), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
    st.lists(st.integers(), max_size=3), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    st.just({"nested": {"clean": GOOD["clean"]}}), st.just(""),  # "" is a string, but never a prompt or a token
)


@st.composite
def wrong_fields(draw) -> bytes:
    """A JSON object with at least one of the four fields missing or of the wrong type."""
    obj = dict(GOOD)
    for key in draw(st.lists(st.sampled_from(KEYS), min_size=1, max_size=4, unique=True)):
        if draw(st.booleans()):
            del obj[key]
        else:
            obj[key] = draw(not_a_string)
    if draw(st.booleans()):
        obj[draw(st.text(max_size=8))] = draw(not_a_string)  # an extra key, or one more wrong field
    return _line(obj)


not_an_object = st.one_of(
    st.lists(st.integers(), max_size=4), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
    st.none(), st.booleans(), st.just([GOOD]),
).map(_line)


@st.composite
def huge_line(draw) -> bytes:
    """A line of one to three MB: not JSON, an object missing keys, or prompts far past the context."""
    n = draw(st.integers(1_000_000, 3_000_000))
    kind = draw(st.sampled_from(["garbage", "missing", "too long"]))
    if kind == "garbage":
        return b"x" * n
    if kind == "missing":
        return _line({"clean": "a " * (n // 2)})
    text = "When " * (n // 10)  # 1-3 MB in all, 100,000+ tokens each
    return _line(dict(GOOD, clean=text + GOOD["clean"], corrupted=text + GOOD["corrupted"]))


def _around(bad: bytes, before: int, after: int) -> bytes:
    """``bad`` as line ``before + 1`` of a file of good lines."""
    return b"\n".join([_line(GOOD)] * before + [bad] + [_line(GOOD)] * after) + b"\n"


def with_good_lines(bad_line):
    return st.builds(_around, bad_line, st.integers(0, 3), st.integers(0, 2))


invalid_utf8 = st.tuples(st.binary(max_size=50), st.sampled_from([b"\xff", b"\xc3\x28", b"\xe9t\xe9", b"\xed\xa0\x80",
                                                                  b"\xf8\x88\x80\x80\x80", b"\x80"])).map(
    lambda t: _line(GOOD)[:20] + t[0].replace(b"\n", b"") + t[1] + b'"}')

LATIN1 = json.dumps(dict(GOOD, clean=GOOD["clean"].replace("store", "caf\u00e9")), ensure_ascii=False).encode("latin-1")
TWO_MB_TOO_LONG = _line(dict(GOOD, clean="When " * 200_000 + GOOD["clean"], corrupted="When " * 200_000 + GOOD["corrupted"]))

prompts_file = st.one_of(
    st.binary(min_size=1, max_size=2000),  # random bytes: cannot hold the four keys by chance
    with_good_lines(invalid_utf8),
    with_good_lines(wrong_fields()),
    with_good_lines(not_an_object),
    with_good_lines(st.binary(min_size=1, max_size=200).map(lambda b: b"{" + b)),  # broken JSON
    with_good_lines(huge_line()),
    st.just(b""),
    st.lists(st.sampled_from([b"", b" ", b"\t", b"\r"]), min_size=1, max_size=6).map(b"\n".join),  # blank lines
)


@pytest.fixture
def reuse_model(model, monkeypatch):
    """Every load returns the session's model and its tokenizer: no example loads anything."""
    monkeypatch.setattr(interp.models, "load_model", lambda *args, **kwargs: model)
    monkeypatch.setattr(cli, "_registered_tokenizer", lambda key: (model.tokenizer, False, model))
    return model


COMMANDS = [["patch", "--component", "head_out"], ["dla"], ["ablate", "--heads", "1.2", "--mode", "zero"]]


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large, HealthCheck.large_base_example])
@given(content=prompts_file, command=st.sampled_from(COMMANDS))
@example(content=b"", command=COMMANDS[1])
@example(content=b"\n \n\n", command=COMMANDS[0])
@example(content=_around(LATIN1, 1, 0), command=COMMANDS[0])
@example(content=_around(b"x" * 2_000_000, 0, 1), command=COMMANDS[1])
@example(content=_around(TWO_MB_TOO_LONG, 1, 1), command=COMMANDS[2])
def test_any_bad_prompts_file_gives_one_error_line(reuse_model, capsys, content, command):
    with tempfile.TemporaryDirectory() as folder:
        path, out = Path(folder) / "p.jsonl", Path(folder) / "r.json"
        path.write_bytes(content)
        code = main(command + ["--prompts", str(path), "--out", str(out)])
        stdout, stderr = capsys.readouterr()
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert code == 2, (code, stderr[-2000:])
        assert len(lines) == 1 and "error" in lines[0] and "Traceback" not in stderr, stderr[-2000:]
        assert stdout == "" and not out.exists()
