"""Random-weight TransformerBridges of real architectures, and random prompts for them.

Speed does not depend on weight values, and exactness can be checked on any weights: the GPU
benchmarks use the papers' shapes with random weights, and the tests compare the engines with
TransformerLens on tiny random models of every supported family (and refuse the unsupported ones).

    >>> model = random_model("tiny-llama", "cpu", torch.float32)
    >>> prompts = random_prompts(model, batch=3, n_pos=9, ragged=True)
"""
from __future__ import annotations

import tempfile

import torch

from interp.models import check_placement
from interp.tasks.prompts import PromptSet

_TINY = dict(vocab_size=256, initializer_range=0.2)

SHAPES = {
    "gpt2-small": ("gpt2", dict(n_layer=12, n_head=12, n_embd=768, vocab_size=50257, n_positions=1024)),
    "smollm2-135m": ("llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                   num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                                   rope_theta=100000.0, tie_word_embeddings=True, head_dim=64)),
    "qwen2.5-0.5b": ("qwen2", dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                                   num_attention_heads=14, num_key_value_heads=2, vocab_size=151936,
                                   tie_word_embeddings=True)),
    "llama-2-7b": ("llama", dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                 num_attention_heads=32, num_key_value_heads=32, vocab_size=32000)),
    # Tiny models of each supported family (LayerNorm + absolute positions + biases; Qwen2's q/k/v
    # biases and GQA; RMSNorm + RoPE + GQA), with weights large enough that patches move the metric.
    "tiny-gpt2": ("gpt2", dict(n_layer=2, n_head=4, n_embd=64, n_positions=64, **_TINY)),
    "tiny-qwen2": ("qwen2", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, **_TINY)),
    "tiny-llama": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, **_TINY)),
    # Tiny models of families the engines do not model (they must fall back to the reference loop).
    "tiny-gptj": ("gptj", dict(n_embd=64, n_layer=2, n_head=4, rotary_dim=8, n_positions=64, **_TINY)),
    "tiny-neox": ("gpt_neox", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, rotary_pct=0.25, use_parallel_residual=False, **_TINY)),
    "tiny-phi": ("phi", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                             partial_rotary_factor=0.5, **_TINY)),
    "tiny-gemma2": ("gemma2", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, head_dim=16, **_TINY)),
    "tiny-qwen3": ("qwen3", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, head_dim=16, **_TINY)),
    "tiny-llama-mlp-bias": ("llama", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, mlp_bias=True, **_TINY)),
    "tiny-mistral": ("mistral", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, sliding_window=6, **_TINY)),
}


def _tokenizer(folder: str):
    """A small word-level tokenizer saved to ``folder`` (the bridge wants a local name_or_path)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(256)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="t0"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="t0", pad_token="t0", bos_token="t1", eos_token="t2")
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def random_model(shape: str, device: str = "cuda", dtype: torch.dtype = torch.bfloat16, seed: int = 0):
    """A TransformerBridge (compatibility mode) with random weights and the named architecture.

    The weights are drawn in fp32 (seeded) and then cast to ``dtype``, so a bf16 model holds the
    rounded weights of the fp32 model of the same shape and seed: the fp32 run is its truth."""
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformer_lens.model_bridge import TransformerBridge

    kind, kwargs = SHAPES[shape]
    config = AutoConfig.for_model(kind, **kwargs)
    folder = tempfile.mkdtemp(prefix=f"interp-bench-{shape}-")
    config.save_pretrained(folder)
    tokenizer = _tokenizer(folder)
    torch.manual_seed(seed)
    with torch.device(device):
        hf = AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation="eager")
    hf = hf.to(dtype).eval()
    bridge = TransformerBridge.boot_transformers(folder, hf_model=hf, tokenizer=tokenizer, device=device, dtype=dtype)
    bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.eval()
    bridge.interp_key = f"random:{shape}"
    check_placement(bridge, device)
    return bridge


def random_prompts(model, batch: int, n_pos: int, seed: int = 0, ragged: bool = False) -> PromptSet:
    """Random token prompts; corrupted differs from clean at three positions. ``ragged``: example
    i has n_pos - (i % 3) tokens (right-padded with token 0), so answer positions differ."""
    g = torch.Generator().manual_seed(seed)
    V = model.cfg.d_vocab
    low = min(100, V // 4)
    clean = torch.randint(low, V, (batch, n_pos), generator=g)
    lengths = torch.tensor([n_pos - (i % 3 if ragged else 0) for i in range(batch)])
    corrupted = clean.clone()
    for p in (1, n_pos // 2, n_pos - 4 if ragged else n_pos - 2):
        corrupted[:, p] = torch.randint(low, V, (batch,), generator=g)
    pad = torch.arange(n_pos)[None, :] >= lengths[:, None]
    clean[pad], corrupted[pad] = 0, 0
    ids = torch.randint(low, V, (2, batch), generator=g)
    return PromptSet(clean, corrupted, ids[0], ids[1], lengths - 1).to(model.cfg.device)


