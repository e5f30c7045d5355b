"""Broken checkpoints: every failure while reading one is a CheckpointError naming the file and,
where known, the tensor or key. The tests write the broken files themselves (truncated, bytes
flipped, headers rewritten, NaN injected) from the tiny checkpoints of conftest.py and from the
bundled SmolLM2 GGUF file, and compare against what the formats' own readers say of the intact
files."""

import copy
import dataclasses
import json
import re
import shutil
import struct

import gguf
import ml_dtypes
import numpy as np
import pytest
from helpers import write_gguf
from safetensors.numpy import load_file, save_file

import prosocial_jax as pj
from prosocial_jax.models import hf
from prosocial_jax.models.config import ConfigError
from prosocial_jax.models.model import bundled_model_path


def test_checkpoint_error_is_exported_value_error():
    assert pj.CheckpointError is hf.CheckpointError and issubclass(pj.CheckpointError, ValueError)


# ---------------------------------------------------------------------------- safetensors
@pytest.fixture
def llama_copy(tiny_checkpoints, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoints["llama"].path, folder)
    return folder


def _split(path):
    """(header dict, data bytes) of a safetensors file, read by hand from its documented layout."""
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8:8 + length]), raw[8 + length:]


def _join(path, header, data):
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _unreadable(path):
    return re.escape(f"{path}: not a readable safetensors file")


def test_truncated_safetensors_named(llama_copy):
    weights = llama_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(pj.CheckpointError, match=_unreadable(weights) + ".*not fully covered"):
        pj.load_model(llama_copy)


@pytest.mark.parametrize("keep", [0, 4, 20])
def test_safetensors_cut_inside_its_header_named(llama_copy, keep):
    weights = llama_copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:keep])
    with pytest.raises(pj.CheckpointError, match=_unreadable(weights)):
        pj.load_model(llama_copy)


def test_corrupted_header_bytes_named(llama_copy):
    weights = llama_copy / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[9:13] = b"\xff\xfe\xfd\xfc"  # inside the JSON header
    weights.write_bytes(bytes(raw))
    with pytest.raises(pj.CheckpointError, match=_unreadable(weights) + ".*header"):
        pj.load_model(llama_copy)


def test_header_that_lies_about_offsets_named(llama_copy):
    weights = llama_copy / "model.safetensors"
    header, data = _split(weights)
    name = "model.layers.0.self_attn.q_proj.weight"
    start, end = header[name]["data_offsets"]
    header[name]["data_offsets"] = [start, end + 8]  # overlaps the next tensor
    _join(weights, header, data)
    with pytest.raises(pj.CheckpointError, match=_unreadable(weights) + ".*offset"):
        pj.load_model(llama_copy)


def test_header_with_a_wrong_shape_named(llama_copy):
    weights = llama_copy / "model.safetensors"
    header, data = _split(weights)
    header["model.norm.weight"]["shape"] = [32]  # 64 floats stored, 32 claimed
    _join(weights, header, data)
    with pytest.raises(pj.CheckpointError, match=_unreadable(weights)):
        pj.load_model(llama_copy)


def test_integer_tensor_refused_with_its_dtype(llama_copy):
    weights = llama_copy / "model.safetensors"
    tensors = load_file(weights)
    name = "model.layers.1.mlp.down_proj.weight"
    tensors[name] = tensors[name].view(np.int32)  # same bytes, reinterpreted as integers
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(pj.CheckpointError, match=re.escape(
            f"{weights}: tensor '{name}' has dtype I32; checkpoint weights must be floating")):
        pj.load_model(llama_copy)


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.float16],
                         ids=["float32", "bfloat16", "float16"])
def test_nan_and_inf_in_safetensors_named_with_count(llama_copy, dtype):
    weights = llama_copy / "model.safetensors"
    tensors = {k: v.astype(dtype) for k, v in load_file(weights).items()}
    name = "model.layers.1.mlp.up_proj.weight"
    poisoned = tensors[name].copy()
    poisoned[0, :3] = np.nan
    poisoned[5, 7] = -np.inf
    tensors[name] = poisoned
    save_file(tensors, weights, metadata={"format": "pt"})
    with pytest.raises(pj.CheckpointError, match=re.escape(
            f"{weights}: tensor '{name}' has 4 non-finite entries (NaN or +-inf) out of "
            f"{poisoned.size}")):
        pj.load_model(llama_copy)


def test_finite_extremes_are_not_flagged(llama_copy):
    weights = llama_copy / "model.safetensors"
    tensors = load_file(weights)
    extreme = tensors["model.norm.weight"].copy()
    info = np.finfo(np.float32)
    extreme[:4] = [info.max, -info.max, info.smallest_subnormal, -0.0]
    tensors["model.norm.weight"] = extreme
    save_file(tensors, weights, metadata={"format": "pt"})
    loaded = pj.load_model(llama_copy)
    np.testing.assert_array_equal(np.asarray(loaded.params["final_norm"]["scale"]), extreme)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16, np.float32, np.float64],
                         ids=["float16", "bfloat16", "float32", "float64"])
def test_count_nonfinite_matches_numpy(dtype):
    rng = np.random.default_rng(0)
    values = (rng.standard_normal(700_001) * 1e3).astype(dtype)  # > 2 chunks of the check
    info = np.finfo(dtype)
    values[:3] = [info.max, info.tiny, -info.max]  # extremes that are still finite
    positions = [3, 262_143, 262_144, 524_288, 700_000]  # chunk edges included
    values[positions] = np.array([np.nan, np.inf, -np.inf, np.nan, np.inf]).astype(dtype)
    expected = int(np.count_nonzero(~np.isfinite(values.astype(np.float64))))
    assert expected == len(positions)
    assert hf.count_nonfinite(values) == expected
    strided = values[:700_000].reshape(7, -1)[:, ::3].T  # a non-contiguous view
    assert hf.count_nonfinite(strided) == int(
        np.count_nonzero(~np.isfinite(strided.astype(np.float64))))


def test_count_nonfinite_other_layouts():
    values = np.array([1.0, np.nan, -np.inf, 3.0, np.inf], dtype=">f4")  # big-endian
    assert hf.count_nonfinite(values) == 3
    assert hf.count_nonfinite(values.astype(np.longdouble)) == 3  # no bit mask for this one
    assert hf.count_nonfinite(np.arange(5)) == 0  # integers are never non-finite


@pytest.fixture
def sharded(tiny_checkpoints, tmp_path):
    out = pj.save_model(pj.load_model(tiny_checkpoints["llama"].path), tmp_path / "sharded",
                        max_shard_size=40_000)
    index = out / hf.SAFETENSORS_INDEX
    return out, index, json.loads(index.read_text())


def test_index_naming_a_missing_tensor_named(sharded):
    out, index, content = sharded
    shard = sorted(set(content["weight_map"].values()))[1]
    content["weight_map"]["model.layers.7.mlp.up_proj.weight"] = shard
    index.write_text(json.dumps(content))
    with pytest.raises(pj.CheckpointError, match=re.escape(
            f"{index}: lists tensor 'model.layers.7.mlp.up_proj.weight' in '{shard}', which has "
            "no such tensor")):
        pj.load_model(out)


def test_index_pointing_to_the_wrong_shard_named(sharded):
    out, index, content = sharded
    by_shard = {}
    for tensor, shard in content["weight_map"].items():
        by_shard.setdefault(shard, []).append(tensor)
    # A tensor whose shard holds others too, so that shard is still listed after the edit.
    name = next(names[0] for names in by_shard.values() if len(names) > 1)
    real = content["weight_map"][name]
    other = next(s for s in sorted(by_shard) if s != real)
    content["weight_map"][name] = other
    index.write_text(json.dumps(content))
    with pytest.raises(pj.CheckpointError, match=re.escape(
            f"{index}: lists tensor '{name}' in '{other}', but it is in '{real}'")):
        pj.load_model(out)


def test_tensor_missing_from_the_index_named(sharded):
    out, index, content = sharded
    name = "model.layers.0.input_layernorm.weight"
    where = content["weight_map"].pop(name)
    index.write_text(json.dumps(content))
    with pytest.raises(pj.CheckpointError, match=re.escape(
            f"{index}: does not list tensor '{name}' found in {out / where}")):
        pj.load_model(out)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not a safetensors index"),
    ('{"metadata": {}}', "not a safetensors index"),
    ('{"weight_map": {"model.norm.weight": 3}}', "'weight_map' is not an object of"),
    ('{"weight_map": {"model.norm.weight": "../elsewhere.safetensors"}}',
     "not a file name in this folder"),
])
def test_broken_index_named(sharded, text, message):
    out, index, _ = sharded
    index.write_text(text)
    with pytest.raises(pj.CheckpointError, match=re.escape(f"{index}: ") + ".*" + re.escape(
            message)):
        pj.load_model(out)


def test_corrupt_shard_of_a_sharded_checkpoint_named(sharded):
    out, _, content = sharded
    shard = out / sorted(set(content["weight_map"].values()))[2]
    shard.write_bytes(shard.read_bytes()[:-1])
    with pytest.raises(pj.CheckpointError, match=_unreadable(shard)):
        pj.load_model(out)


def test_broken_tokenizer_files_named(tiny_chat, tmp_path):
    folder = tmp_path / "chat"
    shutil.copytree(tiny_chat.path, folder)
    (folder / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "BPE", ')
    with pytest.raises(pj.CheckpointError, match=re.escape(f"{folder}: the tokenizer (") +
                       ".*tokenizer.json.*could not be loaded"):
        pj.load_model(folder)


@pytest.mark.parametrize("content, error, message", [
    ('{"eos_token_id": "x"}', ConfigError, "eos_token_id='x' is not a token id"),
    ('{"eos_token_id": [2, null]}', ConfigError, "eos_token_id=[2, None] is not a token id"),
    ("[2, 7]", pj.CheckpointError, "not a JSON object"),
])
def test_broken_generation_config_named(llama_copy, content, error, message):
    path = llama_copy / "generation_config.json"
    path.write_text(content)
    with pytest.raises(error, match=re.escape(f"{path}: {message}")):
        pj.load_model(llama_copy)


# ---------------------------------------------------------------------------- GGUF
@pytest.fixture
def tiny_gguf(tiny_checkpoints, tmp_path):
    path = tmp_path / "tiny.gguf"
    write_gguf(tiny_checkpoints["llama_mesh"], path)
    return path


def _offset(reader, part):
    """Byte offset of one parsed part of a GGUF file (parts are views of the memory map)."""
    return part.__array_interface__["data"][0] - reader.data.__array_interface__["data"][0]


def _patch(path, offset, new_bytes):
    raw = bytearray(path.read_bytes())
    raw[offset:offset + len(new_bytes)] = new_bytes
    path.write_bytes(bytes(raw))


def _first_cut_tensor(reader, size):
    """Oracle: the first tensor (in file order) whose data the intact file has past `size`."""
    return next(t for t in sorted(reader.tensors, key=lambda t: t.data_offset)
                if t.data_offset + t.n_bytes > size)


def test_gguf_tensor_data_cut_short_names_the_tensor(tiny_gguf):
    reader = gguf.GGUFReader(tiny_gguf)
    size = tiny_gguf.stat().st_size - 1000
    cut = _first_cut_tensor(reader, size)
    del reader
    tiny_gguf.write_bytes(tiny_gguf.read_bytes()[:size])
    with pytest.raises(pj.CheckpointError, match=re.escape(f"{tiny_gguf}: tensor '{cut.name}' (")
                       + rf".*but the file ends at byte {size} \(truncated\?\)"):
        pj.load_model(tiny_gguf)


def test_bundled_gguf_truncated_names_the_tensor(tmp_path):
    source = bundled_model_path("smollm2")
    size = 60_000_000
    cut = _first_cut_tensor(gguf.GGUFReader(source), size)
    copy_path = tmp_path / "smollm2-cut.gguf"
    with source.open("rb") as src:
        copy_path.write_bytes(src.read(size))
    with pytest.raises(pj.CheckpointError, match=re.escape(f"{copy_path}: tensor '{cut.name}' (")
                       + rf".*file ends at byte {size}"):
        pj.load_model(copy_path)


def test_gguf_cut_inside_its_metadata_named(tiny_gguf):
    tiny_gguf.write_bytes(tiny_gguf.read_bytes()[:300])
    with pytest.raises(pj.CheckpointError, match=re.escape(
            f"{tiny_gguf}: not a readable GGUF file: truncated or corrupted header")):
        pj.load_model(tiny_gguf)


def test_gguf_corrupted_magic_named(tiny_gguf):
    _patch(tiny_gguf, 0, b"GGUX")
    with pytest.raises(pj.CheckpointError, match=re.escape(
            f"{tiny_gguf}: not a readable GGUF file (ValueError: GGUF magic invalid)")):
        pj.load_model(tiny_gguf)


def test_gguf_corrupted_metadata_type_named(tiny_gguf):
    reader = gguf.GGUFReader(tiny_gguf)
    type_part = reader.fields["llama.block_count"].parts[2]  # the value type code
    offset = _offset(reader, type_part)
    del reader
    _patch(tiny_gguf, offset, struct.pack("<I", 99))
    with pytest.raises(pj.CheckpointError, match=re.escape(
            f"{tiny_gguf}: not a readable GGUF file (") + ".*99"):
        pj.load_model(tiny_gguf)


def test_gguf_corrupted_string_length_fails_fast(tiny_gguf):
    reader = gguf.GGUFReader(tiny_gguf)
    length_part = reader.fields["general.architecture"].parts[3]  # the string's byte count
    offset = _offset(reader, length_part)
    del reader
    _patch(tiny_gguf, offset, struct.pack("<Q", 2**40))
    with pytest.raises(pj.CheckpointError, match=re.escape(f"{tiny_gguf}: not a readable GGUF")):
        pj.load_model(tiny_gguf)


def test_bundled_gguf_corrupted_array_length_fails_fast(tmp_path):
    """An int array whose length is corrupted to 2**40: gguf's own reader would loop on empty
    reads past the end of the file; ours stops at the first read past the end."""
    source = bundled_model_path("smollm2")
    reader = gguf.GGUFReader(source)
    field = reader.fields["tokenizer.ggml.token_type"]
    assert gguf.GGUFValueType(int(field.parts[2][0])) == gguf.GGUFValueType.ARRAY
    offset = _offset(reader, field.parts[4])  # parts: key len, key, type, item type, length
    first_tensor = min(t.data_offset for t in reader.tensors)
    del reader
    broken = tmp_path / "broken.gguf"
    with source.open("rb") as src:
        broken.write_bytes(src.read(first_tensor))  # metadata only: enough to parse it
    _patch(broken, offset, struct.pack("<Q", 2**40))
    with pytest.raises(pj.CheckpointError, match=re.escape(
            f"{broken}: not a readable GGUF file: truncated or corrupted header (the file ends "
            f"at byte {first_tensor}")):
        pj.load_model(broken)


def test_gguf_unknown_tensor_type_named(tiny_gguf):
    reader = gguf.GGUFReader(tiny_gguf)
    tensor = reader.tensors[3]
    offset = _offset(reader, tensor.field.parts[4])  # the tensor's type code
    del reader
    _patch(tiny_gguf, offset, struct.pack("<I", 9999))
    with pytest.raises(pj.CheckpointError, match=re.escape(
            f"{tiny_gguf}: tensor '{tensor.name}' has unknown type code 9999")):
        pj.load_model(tiny_gguf)


def _metadata_only_gguf(path, block_count, feed_forward=True):
    writer = gguf.GGUFWriter(str(path), "llama")
    if isinstance(block_count, str):
        writer.add_string("llama.block_count", block_count)
    else:
        writer.add_block_count(block_count)
    writer.add_embedding_length(64)
    if feed_forward:
        writer.add_feed_forward_length(128)
    writer.add_head_count(4)
    writer.add_tensor("token_embd.weight", np.zeros((8, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_gguf_metadata_of_the_wrong_type_named(tmp_path):
    path = tmp_path / "typed.gguf"
    _metadata_only_gguf(path, "two")
    with pytest.raises(pj.CheckpointError, match=re.escape(
            f"{path}: GGUF metadata llama.block_count='two' is not an integer")):
        pj.load_model(path)


def test_gguf_missing_metadata_named(tmp_path):
    path = tmp_path / "missing.gguf"
    _metadata_only_gguf(path, 2, feed_forward=False)
    with pytest.raises(pj.CheckpointError, match=re.escape(
            f"{path}: GGUF metadata 'llama.feed_forward_length' is missing")):
        pj.load_model(path)


def test_nan_in_gguf_weights_named(tiny_checkpoints, tmp_path):
    import torch

    tiny = tiny_checkpoints["llama_mesh"]
    poisoned = copy.deepcopy(tiny.torch_model)
    with torch.no_grad():
        up = poisoned.model.layers[1].mlp.up_proj.weight
        up[2, 3] = float("nan")
        up[0, 0] = float("inf")
    path = tmp_path / "nan.gguf"
    write_gguf(dataclasses.replace(tiny, torch_model=poisoned), path)
    with pytest.raises(pj.CheckpointError, match=re.escape(
            f"{path}: tensor 'blk.1.ffn_up.weight' (HF 'model.layers.1.mlp.up_proj.weight') has 2 "
            f"non-finite entries (NaN or +-inf) out of {up.numel()}")):
        pj.load_model(path)
