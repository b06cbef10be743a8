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


def _mean_ablated_patch(m, prompts):
    with ablate(m, [(20, 1)], "mean", reference=prompts):
        return patch(m, prompts, "head_out", layers=[29], progress=False).values


def test_real_weights_on_the_gpu_give_the_cpu_numbers():
    """``load_model(device="cuda")`` moves every weight to the GPU (TransformerBridge's loader
    leaves a model it is handed where it is), every public entry takes prompts tokenized on the
    CPU, and the GPU computes the CPU's numbers (fp32)."""
    from interp import direct_logit_attribution, load_model, logit_lens
    from interp import edges as E
    from interp.attribution import attribution_patching
    from interp.edge_attribution import edge_attribution
    from interp.edge_sweep import edge_patch
    from interp.tasks import ioi_examples

    gpu = load_model(device="cuda")
    assert {p.device.type for p in gpu.parameters()} == {"cuda"}
    cpu = load_model(device="cpu")
    prompts = ioi_examples(cpu, n=4, seed=0)  # on the CPU, handed to both models
    logits_edges = E.edges(cpu.cfg, [E.Receiver("logits")])
    runs = {
        "patch": lambda m: patch(m, prompts, "head_out", progress=False).values,
        "patch reference": lambda m: patch(m, prompts, "mlp_out", engine="reference", progress=False).values,
        "path patch": lambda m: path_patch_heads(m, prompts, layers=[28, 29], progress=False).values,
        "dla": lambda m: direct_logit_attribution(m, prompts).heads.values,
        "logit lens": lambda m: logit_lens(m, prompts).values,
        "atp": lambda m: attribution_patching(m, prompts).values,
        "edges": lambda m: edge_patch(m, prompts, logits_edges, progress=False).values,
        "eap": lambda m: edge_attribution(m, prompts, logits_edges, "eap", progress=False).values,
        "mean ablation": lambda m: _mean_ablated_patch(m, prompts),
    }
    for name, run in runs.items():
        a, b = run(cpu).float().cpu(), run(gpu).float().cpu()
        diff = float((a - b).abs().max())
        assert diff <= 1e-4 * max(1.0, float(a.abs().max())), f"{name}: GPU vs CPU {diff:.2e}"


@pytest.mark.parametrize("shape", ["tiny-llama", "tiny-qwen2"])
def test_ablated_decoding_on_cuda_equals_the_cpu(shape):
    """The batched decoder on a GPU (prefill and per-row decode steps through the RoPE and SiLU x up
    dispatchers: fused kernels for [S, dh] tables, the reference for a step's per-row tables) gives
    the CPU's greedy tokens and first-step logits, and passes its own self-check."""
    from interp.generate import generations

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 200, (n,), generator=g) for n in (9, 12)]
    batch = [(prompts[0], [("ua", []), ("sc", [(0, 1)])]), (prompts[1], [("zero", [(1, 2)])])]
    cpu = random_model(shape, "cpu", torch.float32)
    gpu = random_model(shape, "cuda", torch.float32)
    with torch.no_grad():  # the same weights: each device draws its own from the seed
        for theirs, ours in zip(cpu.parameters(), gpu.parameters(), strict=True):
            ours.copy_(theirs)
    runs = {device: generations(m, batch, max_new=6, seed=0, stop_ids={255}, verify=1)
            for device, m in (("cpu", cpu), ("cuda", gpu))}
    for on_cpu, on_gpu in zip(runs["cpu"], runs["cuda"], strict=True):
        assert on_gpu.tokens == on_cpu.tokens
        torch.testing.assert_close(on_gpu.first_logits.cpu(), on_cpu.first_logits.cpu(), rtol=0, atol=1e-4)
