"""The command-line contract: JSON outputs, and one-line errors with a non-zero exit on bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from interp.cli import main

GOOD = {"clean": "When Mary and John went to the store, John gave a drink to",
        "corrupted": "When Alice and Bob went to the store, Bob gave a drink to",
        "answer": " Mary", "distractor": " John"}


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in [GOOD, dict(GOOD, answer=" John", distractor=" Mary",
                                                                    clean=GOOD["clean"].replace("store, John", "store, Mary"))]))
    return path


def run_cli(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err):
    assert code == 2
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and "error" in lines[0], err
    return lines[0]


def test_patch_json_contract(model, prompts_file, tmp_path, capsys):
    out_file = tmp_path / "r.json"
    code, _, _ = run_cli(["patch", "--prompts", str(prompts_file), "--component", "resid_pre", "--out", str(out_file)], capsys)
    assert code == 0
    r = json.loads(out_file.read_text())
    assert set(r) == {"component", "metric", "axes", "values", "clean", "corrupted", "model", "n_prompts",
                      "engine", "verified"}
    assert r["engine"] == "batched" and r["verified"]["cells"] == 2
    assert r["verified"]["max_abs_diff"] <= r["verified"]["tolerance"] < 1e-3
    assert r["component"] == "resid_pre" and r["axes"] == ["layer"] and r["metric"] == "logit_diff"
    assert r["model"] == "smollm2-135m-instruct" and r["n_prompts"] == 2 and len(r["values"]) == 30
    assert abs(r["values"][0] - r["clean"]) < 1e-4  # patching the whole input restores the clean run


def test_dla_json_contract(model, prompts_file, capsys):
    code, out, _ = run_cli(["dla", "--prompts", str(prompts_file)], capsys)
    assert code == 0
    r = json.loads(out)
    assert len(r["heads"]) == 30 and len(r["heads"][0]) == 9 and len(r["attn"]) == 30 and len(r["mlp"]) == 30
    assert abs(r["embed"] + sum(r["attn"]) + sum(r["mlp"]) - r["total"]) < 1e-3


def test_ablate_json_contract(model, prompts_file, capsys):
    code, out, _ = run_cli(["ablate", "--prompts", str(prompts_file), "--heads", "20.1,25.3", "--mode", "mean"], capsys)
    assert code == 0
    r = json.loads(out)
    assert r["heads"] == ["20.1", "25.3"] and r["mode"] == "mean" and r["baseline"] != r["ablated"]


@pytest.mark.parametrize("edit,message", [
    (dict(corrupted="When Alice and Bob went to the big store, Bob gave a drink to"), r"p.jsonl:2: clean and corrupted"),
    (dict(answer=" Maryxzqj"), r"p.jsonl:2: answer ' Maryxzqj' is \d+ tokens"),
])
def test_bad_prompts_give_one_line(model, tmp_path, capsys, edit, message):
    import re

    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(dict(GOOD, **edit)) + "\n")
    code, _, err = run_cli(["patch", "--prompts", str(path), "--component", "head_out"], capsys)
    assert re.search(message, one_line_error(code, err))


def test_unknown_model_and_missing_file(prompts_file, tmp_path, capsys):
    line = one_line_error(*run_cli(["patch", "--prompts", str(prompts_file), "--component", "head_out", "--model", "gpt-17"], capsys)[::2])
    assert "unknown model 'gpt-17'" in line
    line = one_line_error(*run_cli(["dla", "--prompts", str(tmp_path / "nope.jsonl")], capsys)[::2])
    assert "prompts file not found" in line


def test_bad_heads_and_analysis(prompts_file, tmp_path, capsys, monkeypatch):
    """Argument errors only: no analysis starts, on a machine with CUDA or without."""
    import interp.cli

    line = one_line_error(*run_cli(["ablate", "--prompts", str(prompts_file), "--heads", "9-6"], capsys)[::2])
    assert "LAYER.HEAD" in line
    from interp.reports import runner

    monkeypatch.setattr(runner, "reproduce", lambda *args, **kw: pytest.fail("an analysis started"))
    if not torch.cuda.is_available():
        line = one_line_error(*run_cli(["reproduce", "safety-heads", "--device", "cuda"], capsys)[::2])
        assert "no CUDA device" in line
    else:  # safety-heads --device cuda is the paper-scale run: give it an --out it must refuse
        line = one_line_error(*run_cli(["reproduce", "safety-heads", "--device", "cuda", "--out", str(prompts_file)],
                                   capsys)[::2])
        assert "is a file" in line
        line = one_line_error(*run_cli(["reproduce", "quickstart", "--device", "cuda", "--out", str(tmp_path)],
                                       capsys)[::2])
        assert "quickstart has no GPU setting" in line


def test_argparse_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["patch", "--prompts", "x.jsonl", "--component", "nope"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "invalid choice" in err


def test_console_script_help_and_models(capsys):
    """The installed ``interp`` script runs (one process: each start imports torch); every
    subcommand's help through ``main`` in this process."""
    script = Path(sys.executable).with_name("interp")
    out = subprocess.run([str(script), "models"], capture_output=True, text=True)
    assert out.returncode == 0 and "* smollm2-135m-instruct" in out.stdout and "weights installed" in out.stdout
    assert main(["models", "--prepare"]) == 0  # set-up built every cache: each is only verified here
    err = capsys.readouterr().err
    assert err.count("de-quantised weights ready") == 3, err
    for sub in ([], ["patch"], ["dla"], ["ablate"], ["edges"], ["reproduce"], ["models"]):
        with pytest.raises(SystemExit) as stop:
            main(sub + ["--help"])
        assert stop.value.code == 0
        assert "usage: interp" in capsys.readouterr().out


def test_reproduce_runs_an_analysis_through_the_runner(tmp_path, capsys, monkeypatch):
    """`interp reproduce ioi --quick --out DIR`: the command hands the analysis and its setting to the
    runner, which writes the page, numbers.json with the headline rows and the index. The analysis
    itself is stubbed here: the IOI analysis runs once, in tests/test_ioi_circuit.py, and the
    runner's real work is tested with the quick-start report (tests/test_browser.py)."""
    from interp.reports import ioi

    seen = {}
    row = {"name": "stub row", "ours": 0.5, "ci": [0.4, 0.6], "n": 3, "paper": "0.87", "verdict": "partly",
           "why": "stub", "miss": "model"}

    def run(load, settings, seed=0, tick=lambda step: None):
        seen["settings"], seen["seed"] = settings, seed
        return {}

    monkeypatch.setattr(ioi, "run", run)
    monkeypatch.setattr(ioi, "numbers", lambda res: {"headline": [row], "detectable": "n/a", "meta": {}})
    monkeypatch.setattr(ioi, "save", lambda res, num, folder: "<html><body>stub page</body></html>")
    code, out, _ = run_cli(["reproduce", "ioi", "--quick", "--no-cache", "--out", str(tmp_path)], capsys)
    assert code == 0 and "index:" in out
    assert seen["settings"] == ioi.SETTINGS["quick"] and seen["seed"] == 0
    numbers = json.loads((tmp_path / "ioi" / "numbers.json").read_text())
    assert numbers["headline"] == [row] and numbers["meta"]["setting"] == "quick"
    assert "stub page" in (tmp_path / "ioi" / "report.html").read_text()
    index = (tmp_path / "index.html").read_text()
    assert "ioi/report.html" in index and "stub row" in index


def test_reproduce_papers_is_the_five_paper_analyses(tmp_path, capsys, monkeypatch):
    """`interp reproduce papers` (what make run runs) hands the five paper reproductions to the
    runner, `all` every analysis; the names are checked before anything runs."""
    from interp.reports import runner

    seen = []
    monkeypatch.setattr(runner, "reproduce_all", lambda names, *a, **kw: seen.append(list(names)) or {})
    for which in ("papers", "all"):
        assert run_cli(["reproduce", which, "--out", str(tmp_path)], capsys)[0] == 0
    assert seen[0] == ["ioi", "circuit-reuse", "correct-letter", "retrieval-heads", "safety-heads"]
    assert set(seen[1]) == set(runner.ANALYSES) > set(seen[0])


@pytest.mark.timeout(180)
def test_analyses_failing_in_workers_end_the_run_with_their_errors(tmp_path):
    """Two workers, three analyses, each failing (a model folder that does not exist): the run
    stops with the workers' errors instead of waiting for the analysis that never started."""
    from interp.errors import InterpError
    from interp.reports import runner

    missing = str(tmp_path / "no-such-model")
    with pytest.raises(InterpError, match="no-such-model"):
        runner.reproduce_all(["quickstart", "ioi", "edges"], tmp_path / "out", "quick", model_key=missing,
                             progress=False, jobs=2)
