"""Bad input to the command line: one line on stderr, exit status 2, before the long work starts,
and nothing lost (no output file written, a previous one left as it was).

``no_model`` makes loading the model fail the test: those checks must come before it.
"""
import json
import os
from types import SimpleNamespace

import pytest
import torch

import interp.cli as cli
import interp.models
from interp.cli import main
from interp.errors import InterpError, PromptError
from interp.result import Result
from interp.tasks.prompts import check_prompts, read_jsonl

GOOD = {"clean": "When Mary and John went to the store, John gave a drink to",
        "corrupted": "When Alice and Bob went to the store, Bob gave a drink to",
        "answer": " Mary", "distractor": " John"}
PREVIOUS = '{"previous": "result"}'


def one_line_error(code, capsys) -> str:
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "error" in lines[0] and "Traceback" not in err, err
    assert out == ""
    return lines[0]


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n")
    return path


@pytest.fixture
def previous(tmp_path):
    """An earlier result at the --out path: a refused command must leave it as it was."""
    path = tmp_path / "r.json"
    path.write_text(PREVIOUS)
    return path


@pytest.fixture
def no_model(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(interp.models, "load_model", fail)


@pytest.fixture
def same_model(model, monkeypatch):
    """Loading returns the session's model (the checks after loading, without loading again)."""
    monkeypatch.setattr(interp.models, "load_model", lambda *args, **kwargs: model)
    return model


def _only_previous(folder, previous):
    assert previous.read_text() == PREVIOUS
    assert [p.name for p in folder.iterdir() if p.suffix != ".jsonl"] == [previous.name]


# 1. ------------------------------------------------------------------------- not UTF-8 prompts
def test_prompts_file_not_utf8(tmp_path, previous, no_model, capsys):
    bad = tmp_path / "bad.jsonl"
    first, second = json.dumps(GOOD).encode() + b"\n", b'{"clean": "caf\xe9"}\n'  # Latin-1 on line 2
    bad.write_bytes(first + second)
    line = one_line_error(main(["patch", "--prompts", str(bad), "--component", "head_out", "--out", str(previous)]),
                          capsys)
    assert f"bad.jsonl:2: not UTF-8 text (byte {len(first) + 14} is 0xe9)" in line
    _only_previous(tmp_path, previous)


def test_read_jsonl_splits_lines_at_newlines_only(tmp_path):
    """U+2028 is a line break to str.splitlines but a plain character inside a JSON string."""
    path = tmp_path / "p.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(dict(GOOD, clean="a\u2028b"), ensure_ascii=False).encode() + b"\r\n")
    (where, obj), = read_jsonl(path)
    assert where.endswith("p.jsonl:1") and obj["clean"] == "a\u2028b"


# 2. ------------------------------------------------------------------------------- --out paths
def test_out_is_a_folder(tmp_path, good_file, no_model, capsys):
    line = one_line_error(main(["dla", "--prompts", str(good_file), "--out", str(tmp_path)]), capsys)
    assert "--out" in line and "is a folder" in line


def test_out_under_a_file(tmp_path, good_file, previous, no_model, capsys):
    line = one_line_error(main(["dla", "--prompts", str(good_file), "--out", str(previous / "r.json")]), capsys)
    assert "is a file, not a folder" in line
    _only_previous(tmp_path, previous)


def test_an_interrupted_write_leaves_the_previous_file(tmp_path, previous, monkeypatch):
    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cli._emit({"values": list(range(100_000))}, previous)
    _only_previous(tmp_path, previous)  # no half-written file, no temporary file left


def test_emit_writes_the_file_whole(tmp_path):
    out = tmp_path / "new" / "r.json"
    cli._emit({"a": 1}, out)
    assert json.loads(out.read_text()) == {"a": 1} and os.listdir(out.parent) == ["r.json"]
    assert (out.stat().st_mode & 0o777) == 0o666 & ~_umask()


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# 3. ---------------------------------------------------------------------------- --checkpoint
@pytest.mark.parametrize("where,message", [("missing/c.ckpt", "missing does not exist"), ("", "is a folder")])
def test_checkpoint_checked_before_loading(tmp_path, good_file, previous, no_model, capsys, where, message):
    argv = ["patch", "--prompts", str(good_file), "--component", "head_out", "--out", str(previous),
            "--checkpoint", str(tmp_path / where)]
    line = one_line_error(main(argv), capsys)
    assert "--checkpoint" in line and message in line
    assert not (tmp_path / "missing").exists()
    _only_previous(tmp_path, previous)


# 4. ------------------------------------------------------------------------------------ bench
@pytest.fixture
def no_bench(monkeypatch):
    from interp import bench

    def fail(*args, **kwargs):
        raise AssertionError("a benchmark started")

    for name in ("run_cpu", "run_gpu", "bench_kernels"):
        monkeypatch.setattr(bench, name, fail)


@pytest.mark.parametrize("args,message", [
    (["--seqs", "16,x"], "--seqs takes positive whole numbers"),
    (["--seqs", "0"], "--seqs takes positive whole numbers"),
    (["--seqs", ","], "--seqs takes positive whole numbers"),
    (["--shapes", "gpt2-small,gpt3"], "unknown shape 'gpt3'"),
    (["--shapes", ""], "no shape"),
])
@pytest.mark.parametrize("cuda", [False, True])
def test_bench_arguments_checked_before_running(monkeypatch, no_bench, capsys, args, message, cuda):
    if cuda:  # the GPU branch (kernels first) refuses the same way, on any machine
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        args = args + ["--device", "cuda", "--kernels"]
    assert message in one_line_error(main(["bench"] + args), capsys)


# 5. ----------------------------------------------------------------- context length, vocabulary
def test_check_prompts_names_the_first_example_too_long_or_out_of_vocabulary(model, prompts):
    n = int(prompts.answer_pos.max()) + 1
    short = SimpleNamespace(cfg=SimpleNamespace(n_ctx=n - 1, d_vocab=model.cfg.d_vocab))
    longest = int(prompts.answer_pos.argmax())
    with pytest.raises(PromptError, match=rf"example {longest} has {n} tokens, more than the model's {n - 1}-token context"):
        check_prompts(short, prompts)
    small = SimpleNamespace(cfg=SimpleNamespace(n_ctx=model.cfg.n_ctx, d_vocab=100))
    with pytest.raises(PromptError, match=r"example 0: token id [\d,]+ of the clean prompt is outside the model's "
                                          r"vocabulary \(0\.\.99\)"):
        check_prompts(small, prompts)
    check_prompts(model, prompts)  # the real model runs them


def test_prompt_longer_than_the_context_refused_before_loading(tmp_path, previous, no_model, capsys):
    text = " word" * 8300 + " and Mary"
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(dict(GOOD, clean=text, corrupted=text)) + "\n")
    line = one_line_error(main(["dla", "--prompts", str(path), "--out", str(previous)]), capsys)
    assert "long.jsonl:2 has 8,302 tokens, more than the model's 8,192-token context" in line
    _only_previous(tmp_path, previous)


def test_context_is_checked_again_against_the_loaded_model(tmp_path, good_file, same_model, monkeypatch, capsys):
    """Folders and hub names have no tokenizer-first check: the loaded model's config decides."""
    monkeypatch.setattr(cli, "_registered_tokenizer", lambda key: (None, None, None))
    monkeypatch.setattr(same_model.cfg, "n_ctx", 8)
    line = one_line_error(main(["dla", "--prompts", str(good_file)]), capsys)
    assert "p.jsonl:1 has 14 tokens, more than the model's 8-token context" in line


# 6. ---------------------------------------------------------------------------- DLA's memory
def test_dla_too_large_for_memory_is_one_line(tmp_path, good_file, previous, same_model, monkeypatch, capsys):
    import interp.attribution as attribution

    monkeypatch.setattr(attribution, "_memory_budget", lambda device: 100_000)
    monkeypatch.setattr(same_model, "run_with_hooks", lambda *a, **k: pytest.fail("a forward ran"))
    line = one_line_error(main(["dla", "--prompts", str(good_file), "--out", str(previous)]), capsys)
    assert "DLA of example 0 (14 tokens) needs about" in line and "more than the 100,000 B memory budget" in line
    _only_previous(tmp_path, previous)


# 8. ---------------------------------------------------------------------------- normalised()
def test_normalised_with_equal_baselines_says_so():
    r = Result(torch.ones(3), ("layer",), "resid_pre", clean=1.5, corrupted=1.5)
    with pytest.raises(ValueError, match="clean and corrupted logit_diff are equal .1.5.: there is no difference"):
        r.normalised()
    assert isinstance(pytest.raises(InterpError, r.normalised).value, PromptError)


# 9. ------------------------------------------------------------------- reproduce, before work
@pytest.fixture
def no_analysis(monkeypatch):
    from interp.reports import runner

    monkeypatch.setattr(runner, "reproduce", lambda *args, **kw: pytest.fail("an analysis started"))


def test_reproduce_out_is_a_file(previous, no_analysis, capsys):
    line = one_line_error(main(["reproduce", "ioi", "--quick", "--out", str(previous)]), capsys)
    assert "is a file; reports go into a folder" in line and previous.read_text() == PREVIOUS


def test_reproduce_cuda_checks_come_before_any_analysis(tmp_path, monkeypatch, no_analysis, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the CUDA machine's path, here
    line = one_line_error(main(["reproduce", "all", "--device", "cuda", "--out", str(tmp_path)]), capsys)
    assert "quickstart has no GPU setting: run it on the CPU" in line
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    line = one_line_error(main(["reproduce", "safety-heads", "--device", "cuda", "--out", str(tmp_path)]), capsys)
    assert "no CUDA device" in line


def test_a_setting_override_must_name_an_existing_entry():
    """A notebook's OVERRIDES (or ``reproduce(overrides=)``) with a typo is refused, not ignored."""
    from interp.reports.runner import settings_of

    assert settings_of("ioi", "quick", overrides={"n_eval": 3})["n_eval"] == 3
    with pytest.raises(InterpError, match="ioi has no setting 'n_evals': its settings are n_discover, n_eval"):
        settings_of("ioi", "quick", overrides={"n_evals": 3})


# the tokenizer-first checks ---------------------------------------------------------------------
def test_multi_token_answer_refused_before_loading(tmp_path, previous, no_model, capsys):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(dict(GOOD, answer=" Maryxzqj")) + "\n")
    line = one_line_error(main(["ablate", "--prompts", str(path), "--heads", "1.1", "--out", str(previous)]), capsys)
    assert "p.jsonl:2: answer ' Maryxzqj' is 5 tokens, must be exactly one" in line
    _only_previous(tmp_path, previous)


@pytest.mark.parametrize("content,message", [
    (json.dumps(dict(GOOD, answer=5)), "p.jsonl:1: missing or non-string field(s) answer (a number)"),
    (json.dumps({"clean": "a"}), "corrupted (missing), answer (missing), distractor (missing)"),
    ("[" * 100_000, "p.jsonl:1: JSON nested too deeply"),
    ('{"clean": ' + "9" * 5000 + "}", "Exceeds the limit (4300 digits)"),
    (json.dumps(dict(GOOD, clean="\ud800")), "clean holds an unpaired surrogate"),
    ("\n \n", "p.jsonl: no prompts in file"),
])
def test_structure_refused_before_loading(tmp_path, previous, no_model, capsys, content, message):
    path = tmp_path / "p.jsonl"
    path.write_text(content, errors="surrogatepass")
    line = one_line_error(main(["patch", "--prompts", str(path), "--component", "head_out", "--out", str(previous)]),
                          capsys)
    assert message in line
    _only_previous(tmp_path, previous)


@pytest.mark.parametrize("command", [["dla"], ["ablate", "--heads", "9.6"], ["patch", "--component", "head_out"]])
def test_every_prompts_command_takes_the_device_and_checks_it_first(command, good_file, previous, no_model,
                                                                    monkeypatch, capsys):
    """patch, dla and ablate all run on a GPU (--device cuda); without one they refuse in one line,
    before loading anything, and leave an earlier result alone."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [command[0], "--prompts", str(good_file), *command[1:], "--device", "cuda", "--out", str(previous)]
    assert "no CUDA device" in one_line_error(main(argv), capsys)
    assert previous.read_text() == PREVIOUS
