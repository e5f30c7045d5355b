"""Loading and saving checkpoints: HF safetensors folders (single and sharded) and GGUF files."""

import json
import shutil

import gguf
import numpy as np
import pytest
from conftest import VOCAB, torch_logits
from safetensors.numpy import load_file, save_file

import prosocial_jax as pj
from prosocial_jax.models import hf
from prosocial_jax.models.gguf import permute_rows


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
    with pytest.raises(FileExistsError, match="not empty"):
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
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set"):
        pj.load_model("someone/some-model-that-is-not-cached")


# ---------------------------------------------------------------------------- GGUF
def _write_gguf(tiny, path):
    """A float32 GGUF file laid out as llama.cpp's converter writes Llama models."""
    config = tiny.torch_model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_tokenizer_model("gpt2")
    letters = [chr(ord("a") + i) for i in range(26)]  # a tiny but valid byte-level BPE vocab
    pairs = [(x, y) for x in letters for y in letters][: config.vocab_size - len(letters)]
    writer.add_token_list(letters + [x + y for x, y in pairs])
    writer.add_token_merges([f"{x} {y}" for x, y in pairs])
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    names = {"model.embed_tokens.weight": "token_embd.weight",
             "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    layer = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
             "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
             "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}
    for name, value in tiny.torch_model.state_dict().items():
        value = value.numpy().astype(np.float32)
        if name.startswith("model.layers."):
            parts = name.split(".")
            module = ".".join(parts[3:-1])
            if module == "self_attn.q_proj":
                value = permute_rows(value, config.num_attention_heads)
            elif module == "self_attn.k_proj":
                value = permute_rows(value, config.num_key_value_heads)
            gguf_name = f"blk.{parts[2]}.{layer[module]}.weight"
        elif name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        else:
            gguf_name = names[name]
        writer.add_tensor(gguf_name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_llama_layout_matches_transformers_gguf_loader(tiny_checkpoints, tmp_path):
    import torch
    import transformers

    tiny = tiny_checkpoints["llama_mesh"]
    path = tmp_path / "tiny.gguf"
    _write_gguf(tiny, path)
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
