"""interp: mechanistic interpretability on TransformerLens 4 (TransformerBridge).

    >>> import interp
    >>> model = interp.load_model()                  # SmolLM2-135M-Instruct, from its GGUF wheel
    >>> prompts = interp.tasks.ioi_examples(model)    # clean/corrupted pairs with answers
    >>> result = interp.patch(model, prompts, "head_out")
    >>> result.topk(5)
"""
from interp.errors import InterpError
from interp.models import DEFAULT_MODEL, REGISTRY, load_model
from interp.tasks import PromptSet
from interp.result import Result
from interp.patching import patch, path_patch, path_patch_heads
from interp.attribution import direct_logit_attribution, logit_lens, attribution_patching
from interp.ablation import ablate, ablation_hooks

__version__ = "0.1.0"

__all__ = [
    "InterpError", "DEFAULT_MODEL", "REGISTRY", "load_model", "PromptSet", "Result", "patch",
    "path_patch", "path_patch_heads", "direct_logit_attribution", "logit_lens",
    "attribution_patching", "ablate", "ablation_hooks",
]
