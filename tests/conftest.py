"""Shared fixtures: each real model loaded once per test run, a small IOI prompt set, and the
quick-start report written once (the browser test file reads it). ``make test`` runs
the files on two pytest-xdist workers (``--dist loadfile``: a file's tests share a worker and its
module fixtures; each notebook's test is a file of its own), longest first (``FILE_SECONDS``), so
that neither worker is left with a long tail.

Everything runs on the real weights (SmolLM2-135M-Instruct by default, Qwen2.5-Coder-0.5B-Instruct
where a test needs refusals or multiple choice), fp32, CPU. The first run of a fresh machine
de-quantises the GGUFs (~30-90 s) into the user cache; later loads take a few seconds.
"""
import os

import pytest
import torch

import interp
from interp.models import REGISTRY
from interp.tasks import ioi_examples

# Under pytest-xdist (``make test`` runs two workers), each worker gets its share of the cores, and
# so do the processes it starts (notebook kernels, the CLI): PyTorch's threads stall each other
# when more of them run than there are cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    os.environ["OMP_NUM_THREADS"] = str(_threads)
    torch.set_num_threads(_threads)


#: Seconds of one worker per test file (measured 2026-11-30 on the 2-core CI machine): only their
#: order matters, longest first; a file not listed starts after these, by name.
FILE_SECONDS = {
    "test_ioi_circuit.py": 320, "test_patching_vs_transformerlens.py": 250, "test_trust.py": 210,
    "test_distributed.py": 200, "test_browser.py": 200, "test_safety_heads.py": 170, "test_sweep.py": 145,
    "test_path_patching.py": 100, "test_edges.py": 75, "test_cli.py": 75, "test_correct_letter.py": 60,
    "test_notebook_00_quickstart.py": 45, "test_widgets.py": 45, "test_retrieval_heads.py": 45,
}


def pytest_terminal_summary(terminalreporter):
    """This machine's fp32 matrix-product rate, printed after the run (also under ``-q``): the
    suite's time is only comparable between runs and machines next to it (the same 2-core machine
    measured 0.09 and 0.20-0.24 TFLOP/s on different days)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):  # the controller prints it; a worker's output is dropped
        return
    from interp.bench import cpu_matmul_tflops

    terminalreporter.write_line(f"cpu: {os.cpu_count()} cores, fp32 matrix products at {cpu_matmul_tflops():.3f} "
                                f"TFLOP/s ({torch.get_num_threads()} threads; interp.bench.cpu_matmul_tflops)")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """The test files longest first (FILE_SECONDS), each file's tests together in their order:
    ``--dist loadfile --no-loadscope-reorder`` hands the files to the workers in this order.

    (Not ``--dist loadgroup``: pytest-xdist 3.8 marks a group by renaming ``item._nodeid``, which
    pytest 9 no longer reads, so every test became its own group and module fixtures were
    computed on both workers.)"""
    first = {name: i for i, name in enumerate(sorted(FILE_SECONDS, key=lambda n: -FILE_SECONDS[n]))}
    position = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (first.get(item.path.name, len(first)), item.path.name, position[id(item)]))


@pytest.fixture(scope="session")
def model():
    torch.manual_seed(0)
    return interp.load_model()


@pytest.fixture(scope="session")
def qwen():
    """Qwen2.5-Coder-0.5B-Instruct, loaded once for every test module that needs it."""
    torch.manual_seed(0)
    return interp.load_model("qwen2.5-coder-0.5b-instruct")


@pytest.fixture(scope="session")
def quickstart_report(model, tmp_path_factory):
    """``interp reproduce quickstart --quick`` through the runner, on the session model: the page."""
    from interp.reports import runner

    out = tmp_path_factory.mktemp("reports")
    models = runner.Models()
    models._loaded[None] = model
    page = runner.reproduce("quickstart", out, "quick", models=models, progress=False)
    runner.write_index(out, {"quickstart": page})
    return page


@pytest.fixture(scope="session")
def prompts(model):
    """Three IOI pairs of different token lengths (right-padded), mixed BABA/ABBA."""
    ps = ioi_examples(model, n=3, seed=1)
    assert len(set(ps.answer_pos.tolist())) > 1, "want prompts of different lengths"
    return ps


def mean_logit_diff(prompts):
    """A scalar metric closure for TransformerLens's patching functions."""
    from interp.metrics import logit_diff

    return lambda logits: logit_diff(logits, prompts).mean()


@pytest.fixture(scope="session", params=sorted(REGISTRY))
def tokenizer_model(request):
    """Each shipped model's tokenizer, without its weights: what the task generators read from a
    model (.tokenizer, .cfg.default_prepend_bos) plus .key. Builds the model's cache if missing."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    from interp.models import hf_folder

    spec = REGISTRY[request.param]
    tokenizer = AutoTokenizer.from_pretrained(hf_folder(spec))
    return SimpleNamespace(key=request.param, tokenizer=tokenizer,
                           cfg=SimpleNamespace(default_prepend_bos=spec.prepend_bos))
