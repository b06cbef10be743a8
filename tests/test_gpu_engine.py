"""The engines on a GPU, in the dtypes they run in there (``pytest -m gpu``; skipped without CUDA).

fp32 on CUDA takes cuBLAS/SDPA, bf16 the Triton kernels: both are held to the reference loop on the
same model, through the self-check every sweep runs (``interp.verify``) and directly, with
interventions registered, on tiny random models of each family and on full-size random models of
the papers' shapes (the bf16 tolerance must hold over 30 layers, not only 2).
"""
import pytest
import torch

from interp import ablate, patch, path_patch_heads
from interp.random_models import random_model, random_prompts
from interp.verify import tolerance

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (pytest -m gpu on one)")]

COMPONENTS = ["head_out", "head_q", "head_v", "resid_pre", "mlp_out", "head_pattern"]


@pytest.mark.parametrize("shape", ["tiny-gpt2", "tiny-qwen2", "tiny-llama"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_engine_equals_reference_on_cuda(shape, dtype):
    model = random_model(shape, "cuda", dtype)
    prompts = random_prompts(model, batch=4, n_pos=12, ragged=True)
    for component in COMPONENTS:
        for by_pos in (False, True):
            ours = patch(model, prompts, component, by_pos=by_pos, engine="batched", progress=False)
            ref = patch(model, prompts, component, by_pos=by_pos, engine="reference", progress=False)
            tol = 1e-5 if dtype == torch.float32 else tolerance(dtype, float(ref.values.abs().max()))
            diff = float((ours.values - ref.values).abs().max())
            assert diff <= tol, f"{shape} {component} by_pos={by_pos}: {diff:.2e} > {tol:.2e}"
            assert ours.meta["verified"]["cells"] == 2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_interventions_on_cuda(dtype):
    model = random_model("tiny-llama", "cuda", dtype)
    prompts = random_prompts(model, batch=4, n_pos=12, ragged=True)
    with ablate(model, [(0, 1), (1, 2)], "mean", reference=prompts, positions=prompts.answer_pos):
        ours = patch(model, prompts, "head_out", by_pos=True, engine="batched", progress=False)
        ref = patch(model, prompts, "head_out", by_pos=True, engine="reference", progress=False)
        path = path_patch_heads(model, prompts, layers=[0], engine="batched", progress=False)
    tol = 1e-5 if dtype == torch.float32 else tolerance(dtype, float(ref.values.abs().max()))
    assert float((ours.values - ref.values).abs().max()) <= tol
    assert path.meta["verified"]["cells"] == 2


@pytest.mark.parametrize("shape", ["gpt2-small", "smollm2-135m", "qwen2.5-0.5b"])
def test_full_size_bf16_sweeps_pass_their_self_check(shape):
    """The dtype-aware tolerance holds for real depths: a bf16 sweep of a full-size model agrees
    with the bf16 reference loop on its re-checked cells, and errs against fp32 no more than a few
    bf16 ulps of the metric."""
    model = random_model(shape, "cuda", torch.bfloat16)
    exact = random_model(shape, "cuda", torch.float32)
    prompts = random_prompts(model, batch=8, n_pos=16)
    for by_pos in (False, True):
        ours = patch(model, prompts, "head_out", by_pos=by_pos, engine="batched", progress=False, verify=4)
        truth = patch(exact, prompts, "head_out", by_pos=by_pos, engine="batched", progress=False)
        v = ours.meta["verified"]
        print(f"{shape} by_pos={by_pos}: self-check {v['max_abs_diff']:.2e} (tol {v['tolerance']:.2e}), "
              f"vs fp32 mean {(ours.values - truth.values).abs().mean():.2e} max {(ours.values - truth.values).abs().max():.2e}")
        assert v["cells"] == 4 and v["max_abs_diff"] <= v["tolerance"]
        assert float((ours.values - truth.values).abs().max()) <= tolerance(torch.bfloat16, float(truth.values.abs().max()))
