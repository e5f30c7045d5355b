"""What the newer families add beyond the parity tests every family runs (logits, cached ==
recomputed, greedy == transformers, save -> transformers load, sharded == single device): Phi-3's
fused projections (split on load, fused on save, named in errors, and named by adapters and
DiReg patterns) and longrope's switch past its original length."""

import json

import numpy as np
import pytest
from helpers import VOCAB, hf_greedy, torch_logits
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

import prosocial_jax as pj
from prosocial_jax.direg import harm
from prosocial_jax.models import adapters
from prosocial_jax.models.hf import CheckpointError


def test_phi3_saves_its_projections_fused_as_transformers_names_them(tiny_checkpoints,
                                                                     tmp_path):
    model = pj.load_model(tiny_checkpoints["phi3"].path)
    folder = pj.save_model(model, tmp_path / "saved")
    with safe_open(folder / "model.safetensors", "np") as f:
        names = set(f.keys())
    original = tiny_checkpoints["phi3"].torch_model.state_dict()
    assert names == set(original)  # qkv_proj and gate_up_proj, no q_proj / gate_proj
    qkv = "model.layers.1.self_attn.qkv_proj.weight"
    with safe_open(folder / "model.safetensors", "np") as f:
        np.testing.assert_array_equal(f.get_tensor(qkv), original[qkv].numpy())


def test_phi3_fused_tensor_of_the_wrong_size_or_missing_is_named(tiny_checkpoints, tmp_path):
    source = tiny_checkpoints["phi3"].path
    tensors = load_file(source / "model.safetensors")
    name = "model.layers.0.mlp.gate_up_proj.weight"
    for case, edit in (("short", lambda t: {**t, name: t[name][:-1]}),
                       ("missing", lambda t: {k: v for k, v in t.items() if k != name})):
        folder = tmp_path / case
        folder.mkdir()
        (folder / "config.json").write_text((source / "config.json").read_text())
        save_file(edit(tensors), folder / "model.safetensors")
        expected = "expected 256 rows" if case == "short" else "is missing"
        with pytest.raises(CheckpointError, match=f"'{name}'.*{expected}"):
            pj.load_model(folder)


def test_a_fused_module_name_targets_all_its_parts(tiny_checkpoints):
    config = adapters.AdapterConfig(target_modules=("qkv_proj", "o_proj", "gate_up_proj"))
    assert config.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                     "up_proj")
    with pytest.raises(adapters.AdapterError, match="qkv"):
        adapters.AdapterConfig(target_modules=("qkv",))
    # DiReg: a pattern over the checkpoint's own (fused) names selects every part.
    model = pj.load_model(tiny_checkpoints["phi3"].path)
    mask = harm.selection_mask(model.config, model.params,
                               include=["model.layers.1.self_attn.qkv_proj.weight"])
    attn = mask["layers"]["attn"]
    for part in ("q_proj", "k_proj", "v_proj"):
        assert attn[part]["weight"].tolist() == [False, True]
    assert attn["o_proj"]["weight"].tolist() == [False, False]


def test_longrope_long_factors_past_the_original_length_match_transformers(tiny_checkpoints):
    """80 tokens against the tiny Phi-3's original 64: transformers rotates every position with
    the long factors, and so do we; 40 tokens stay on the short ones."""
    tiny = tiny_checkpoints["phi3"]
    config = json.loads((tiny.path / "config.json").read_text())
    assert config["rope_parameters"]["original_max_position_embeddings"] == 64
    model = pj.load_model(tiny.path)
    for length in (40, 80):
        ids = np.random.RandomState(length).randint(3, VOCAB, (2, length))
        np.testing.assert_allclose(np.asarray(model.logits(ids)),
                                   torch_logits(tiny.torch_model, ids), atol=1e-4, rtol=1e-4)
    # The two sets differ: the same first 40 tokens inside an 80-token call get other logits.
    ids = np.random.RandomState(80).randint(3, VOCAB, (1, 80))
    assert not np.allclose(np.asarray(model.logits(ids))[0, :40],
                           np.asarray(model.logits(ids[:, :40]))[0], atol=1e-3)


def test_greedy_decode_across_the_original_length_equals_transformers_generate(
        tiny_checkpoints, monkeypatch):
    """Decodes that cross the tiny Phi-3's original 64 positions: transformers' `generate`
    recomputes the whole cache with the long factors at the crossing, and so do we, row by row
    (one row crosses at step 10, one at step 3, and one starts past it; the second row's prompt
    is prefilled in 3 chunks). Every token after the crossing depends on the recomputation:
    keeping the short-factor cache changes them. The check is compiled only into the chunks of
    8 steps that hold a crossing (steps 10 and 3: the first two of three). The stacked layout's
    recomputation is checked on a mesh (test_sharding.py: the same tokens as one device)."""
    from prosocial_jax.decoding import decode

    tiny = tiny_checkpoints["phi3"]
    model = pj.load_model(tiny.path)
    rng = np.random.RandomState(0)
    prompts = [rng.randint(3, VOCAB, n).tolist() for n in (54, 61, 70)]
    new = 20
    chunks = []

    def recorded(*args, refill_chunk=None, **kwargs):
        chunks.append(refill_chunk)
        return unrecorded(*args, refill_chunk=refill_chunk, **kwargs)

    unrecorded = decode.decode_chunk
    monkeypatch.setattr(decode, "decode_chunk", recorded)
    results = pj.generate(model, prompts, max_new_tokens=new, chunk_size=8, stop_tokens=[],
                          prefill_chunk=32)
    assert chunks == [32, 32, None]
    for prompt, result in zip(prompts, results):
        assert result.tokens == hf_greedy(tiny.torch_model, prompt, new, eos_token_id=VOCAB + 1)
    # The oracle is not blind to the recomputation: the cache rotated with the short factors,
    # continued with the long ones for the new positions, gives other tokens.
    import torch

    kept = prompts[0] + results[0].tokens[:11]  # its 11th token sits at position 64
    with torch.no_grad():
        out = tiny.torch_model(torch.tensor([kept[:-1]]), use_cache=True)
        step = tiny.torch_model(torch.tensor([kept[-1:]]), past_key_values=out.past_key_values)
    full = torch_logits(tiny.torch_model, np.asarray([kept]))[0, -1]
    assert not np.allclose(step.logits[0, -1].numpy(), full, atol=1e-3)


def test_crossing_steps_are_each_rows_original_minus_its_prompt_length(tiny_checkpoints):
    """Hand-worked: the tiny Phi-3's original 64 positions; prompts of 54, 61, 64 and 70 tokens
    feed position 64 at steps 10, 3 and 0 (the 70-token one was prefilled past it); a second
    longrope model (a Pv-Arm's backbone) with an original of 100 adds steps 46 and 39 where the
    slots reach that far, and 36 for the 64-token prompt; a model without longrope adds none."""
    import dataclasses

    from prosocial_jax.decoding import decode

    phi3 = pj.load_model(tiny_checkpoints["phi3"].path).config
    llama = pj.load_model(tiny_checkpoints["llama"].path).config
    longer = dataclasses.replace(phi3, rope=dataclasses.replace(
        phi3.rope, original_max_position_embeddings=100))
    lengths = [54, 61, 64, 70]
    assert decode.crossing_steps([phi3, llama], lengths, 96) == {10, 3, 0}
    assert decode.crossing_steps([phi3, longer], lengths, 96) == {10, 3, 0}  # 96 < 100 slots
    assert decode.crossing_steps([phi3, longer], lengths, 128) == {10, 3, 0, 46, 39, 36, 30}
    assert decode.crossing_steps([llama], lengths, 128) == set()
    assert decode.crossing_steps([phi3], lengths, 64) == set()  # never past the original


def _gguf_reference(tiny):
    """transformers' model of what a GGUF file of the tiny checkpoint describes: the same
    weights; for Gemma 2 / 3 the query scale by head_dim, since GGUF files carry no
    query_pre_attn_scalar and llama.cpp scales by head_dim (hidden / heads for the 27B)."""
    import copy

    model = tiny.torch_model
    if tiny.family not in ("gemma2", "gemma3"):
        return model
    config = copy.deepcopy(model.config)
    config.query_pre_attn_scalar = config.head_dim
    reference = type(model)(config).eval()
    reference.load_state_dict(model.state_dict())
    return reference


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3", "phi3"])
def test_gguf_of_each_family_gives_transformers_logits(tiny_checkpoints, tmp_path, family):
    """A GGUF file written as llama.cpp lays the family out (its names, Gemma's +1 norms,
    Phi-3's fused tensors and rope factor tensors): our load gives transformers' logits, past
    the tiny Phi-3's original length too."""
    from helpers import write_gguf

    tiny = tiny_checkpoints[family]
    path = tmp_path / f"{family}.gguf"
    write_gguf(tiny, path)
    model = pj.load_model(path)
    ids = np.random.RandomState(5).randint(3, VOCAB, (2, 80 if family == "phi3" else 20))
    np.testing.assert_allclose(np.asarray(model.logits(ids)),
                               torch_logits(_gguf_reference(tiny), ids), atol=1e-4, rtol=1e-4)
