"""Loading and saving checkpoints: HF safetensors folders (single and sharded) and GGUF files."""

import json
import re
import shutil

import gguf
import numpy as np
import pytest
from helpers import VOCAB, torch_logits, write_gguf
from safetensors.numpy import load_file, save_file

import prosocial_jax as pj
from prosocial_jax.models import hf


def _ids(seed=0):
    return np.random.RandomState(seed).randint(3, VOCAB, (2, 12))


def _transformers_logits(folder, ids):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    return torch_logits(model, ids)


def test_saved_folder_loads_in_transformers_with_same_logits(tiny, tmp_path):
    model = pj.load_model(tiny.path)
    out = pj.save_model(model, tmp_path / "saved")
    ids = _ids()
    np.testing.assert_allclose(_transformers_logits(out, ids), np.asarray(model.logits(ids)),
                               atol=1e-4)
    again = pj.load_model(out)
    for a, b in zip(jax_leaves(model.params), jax_leaves(again.params)):
        np.testing.assert_array_equal(a, b)


def jax_leaves(tree):
    import jax
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_sharded_save_writes_index_and_loads_everywhere(tiny_checkpoints, tmp_path):
    model = pj.load_model(tiny_checkpoints["qwen2"].path)
    out = pj.save_model(model, tmp_path / "sharded", max_shard_size=40_000)
    index = json.loads((out / hf.SAFETENSORS_INDEX).read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and all((out / s).exists() for s in shards)
    assert not (out / "model.safetensors").exists()
    ids = _ids(1)
    np.testing.assert_allclose(_transformers_logits(out, ids), np.asarray(model.logits(ids)),
                               atol=1e-4)
    np.testing.assert_array_equal(np.asarray(pj.load_model(out).logits(ids)),
                                  np.asarray(model.logits(ids)))


def test_bfloat16_save_is_bfloat16(tiny_checkpoints, tmp_path):
    model = pj.load_model(tiny_checkpoints["llama"].path, dtype="bfloat16")
    out = pj.save_model(model, tmp_path / "bf16")
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "bfloat16"
    assert str(load_file(out / "model.safetensors")["model.norm.weight"].dtype) == "bfloat16"


def test_save_is_atomic(tiny_checkpoints, tmp_path, monkeypatch):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    target = tmp_path / "out"

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(hf, "save_file", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        pj.save_model(model, target)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temp folder left behind
    monkeypatch.undo()
    pj.save_model(model, target)
    with pytest.raises(FileExistsError, match="holds a previous model output; pass overwrite"):
        pj.save_model(model, target)
    pj.save_model(model, target, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


# ---------------------------------------------------------------------------- bad inputs
@pytest.fixture
def llama_copy(tiny_checkpoints, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints["llama"].path, folder)
    return folder


def _edit_tensors(folder, edit):
    tensors = load_file(folder / "model.safetensors")
    edit(tensors)
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})


def test_missing_tensor_named(llama_copy):
    _edit_tensors(llama_copy, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    with pytest.raises(pj.CheckpointError, match="'model.layers.1.mlp.up_proj.weight' is missing"):
        pj.load_model(llama_copy)


def test_extra_tensor_named(llama_copy):
    _edit_tensors(llama_copy, lambda t: t.update({"model.layers.0.mlp.extra.weight":
                                                  np.zeros(3, np.float32)}))
    with pytest.raises(pj.CheckpointError, match="model.layers.0.mlp.extra.weight"):
        pj.load_model(llama_copy)


def test_misshaped_tensor_named(llama_copy):
    def shrink(t):
        t["model.layers.0.self_attn.k_proj.weight"] = t[
            "model.layers.0.self_attn.k_proj.weight"][:-1]
    _edit_tensors(llama_copy, shrink)
    with pytest.raises(pj.CheckpointError,
                       match=r"'model.layers.0.self_attn.k_proj.weight' has shape \(31, 64\)"):
        pj.load_model(llama_copy)


def test_pickle_checkpoints_refused(llama_copy, tmp_path):
    (llama_copy / "model.safetensors").rename(llama_copy / "pytorch_model.bin")
    with pytest.raises(pj.CheckpointError, match="refusing to load a pickle checkpoint"):
        pj.load_model(llama_copy)
    with pytest.raises(pj.CheckpointError, match="refusing to load a pickle"):
        pj.load_model(llama_copy / "pytorch_model.bin")


def test_missing_shard_named(tiny_checkpoints, tmp_path):
    out = pj.save_model(pj.load_model(tiny_checkpoints["llama"].path), tmp_path / "s",
                        max_shard_size=40_000)
    second = sorted(out.glob("model-00002-of-*.safetensors"))[0]
    second.unlink()
    with pytest.raises(pj.CheckpointError, match=f"'{second.name}', which is missing"):
        pj.load_model(out)


def test_missing_config_and_paths(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="config.json"):
        pj.load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        pj.load_model(tmp_path / "nope")


def test_missing_path_that_looks_like_a_hub_id_is_not_downloaded(monkeypatch):
    """A mistyped local folder must not become a hub download: only hf:// reaches a hub."""
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub was asked for a plain path")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    with pytest.raises(FileNotFoundError, match=re.escape(
            "meta-llama/Llama-3-8B: no such file or folder; if the Hugging Face Hub repository "
            "was meant, write hf://meta-llama/Llama-3-8B")):
        pj.load_model("meta-llama/Llama-3-8B")
    with pytest.raises(FileNotFoundError, match=r"^out/my-model\.gguf: no such file or folder$"):
        pj.load_model("out/my-model.gguf")  # no hub hint for something that is no hub id


def test_hub_reference_offline_and_not_cached_fails_clearly():
    with pytest.raises(FileNotFoundError, match=re.escape(
            "hf://someone/not-cached-anywhere: HF_HUB_OFFLINE is set, and it is not in the local "
            "hub cache")):
        pj.load_model("hf://someone/not-cached-anywhere")
    with pytest.raises(FileNotFoundError, match=re.escape(
            "hf://someone/not-cached-anywhere@v2: HF_HUB_OFFLINE is set")):
        pj.load_model("hf://someone/not-cached-anywhere@v2")
    for bad in ("hf://no-slash", "hf://a/b/c", "hf://a/b@"):
        with pytest.raises(ValueError, match=re.escape(f"{bad!r} is not of the form hf://owner/")):
            pj.load_model(bad)


def test_hub_reference_loads_from_the_local_hub_cache(tiny_checkpoints, tmp_path, monkeypatch):
    """hf://owner/name[@revision] is resolved through huggingface_hub (offline: its cache)."""
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--tiny-llama"
    shutil.copytree(tiny_checkpoints["llama"].path, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    ids = _ids(4)
    reference = torch_logits(tiny_checkpoints["llama"].torch_model, ids)
    for source in ("hf://someone/tiny-llama", f"hf://someone/tiny-llama@{commit}"):
        model = pj.load_model(source)
        assert model.source == str(repo / "snapshots" / commit)
        np.testing.assert_allclose(np.asarray(model.logits(ids)), reference, atol=1e-4)
    with pytest.raises(FileNotFoundError, match="@v9: HF_HUB_OFFLINE is set"):
        pj.load_model("hf://someone/tiny-llama@v9")


@pytest.mark.slow
def test_folder_saved_by_transformers_from_the_bundled_gguf_loads(smollm2_torch, tmp_path):
    """transformers 5.x loads SmolLM2 from the GGUF and save_pretrained writes private keys
    (`_model_name_or_path`) and a gguf `quantization_config`; that folder must load, with
    transformers' logits."""
    model, tokenizer = smollm2_torch
    # transformers refuses to save a model that came from a GGUF file (its quantizer says "not
    # serialisable") although every weight is already a dequantised float32 tensor; lift the
    # refusal for this one call, as 5.24 did not have it.
    quantizer = model.hf_quantizer
    model.hf_quantizer = None
    try:
        model.save_pretrained(tmp_path / "saved")
    finally:
        model.hf_quantizer = quantizer
    written = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "_model_name_or_path" in written and written["quantization_config"]["quant_method"] \
        == "gguf"
    ours = pj.load_model(tmp_path / "saved")
    ids = np.array([tokenizer("The capital of France is")["input_ids"]])
    np.testing.assert_allclose(np.asarray(ours.logits(ids)), torch_logits(model, ids),
                               atol=3e-4, rtol=0)  # the tolerance of tests/models/test_smollm2.py


# ---------------------------------------------------------------------------- GGUF


def test_gguf_llama_layout_matches_transformers_gguf_loader(tiny_checkpoints, tmp_path):
    import torch
    import transformers

    tiny = tiny_checkpoints["llama_mesh"]
    path = tmp_path / "tiny.gguf"
    write_gguf(tiny, path)
    ours = pj.load_model(path)
    ids = _ids(3)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    np.testing.assert_allclose(np.asarray(ours.logits(ids)), torch_logits(theirs, ids), atol=1e-4)
    np.testing.assert_allclose(np.asarray(ours.logits(ids)), torch_logits(tiny.torch_model, ids),
                               atol=1e-4)


def test_bad_gguf_files(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(pj.CheckpointError, match="not a readable GGUF"):
        pj.load_model(bad)
    writer = gguf.GGUFWriter(str(tmp_path / "gpt2.gguf"), "gpt2")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(pj.CheckpointError, match="architecture 'gpt2' is not supported"):
        pj.load_model(tmp_path / "gpt2.gguf")


def test_generation_config_stop_ids_are_merged(llama_copy):
    (llama_copy / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 7]}))
    assert pj.load_model(llama_copy).config.eos_token_ids == (2, 7)
    (llama_copy / "generation_config.json").write_text("{broken")
    with pytest.raises(pj.CheckpointError, match="generation_config.json: not valid JSON"):
        pj.load_model(llama_copy)
