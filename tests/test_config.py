"""Parsing checkpoint config.json files: both transformers dialects, and strict rejection."""

import json
from pathlib import Path

import numpy as np
import pytest

from prosocial_jax.models.config import ConfigError, ModelConfig, RopeConfig

FIXTURES = Path(__file__).parent / "fixtures"


def _config(name):
    return json.loads((FIXTURES / name).read_text())


def test_real_configs_parse():
    llama = ModelConfig.from_json_file(FIXTURES / "llama3_8b_instruct_config.json")
    assert (llama.num_layers, llama.num_heads, llama.num_kv_heads, llama.head_dim) == (32, 32, 8,
                                                                                    128)
    assert llama.rope == RopeConfig(theta=500000.0)
    assert llama.eos_token_ids == (128009,)
    llama31 = ModelConfig.from_json_file(FIXTURES / "llama3_1_8b_instruct_config.json")
    assert llama31.rope.rope_type == "llama3" and llama31.rope.factor == 8.0
    assert llama31.eos_token_ids == (128001, 128008, 128009)
    qwen = ModelConfig.from_json_file(FIXTURES / "qwen2_5_7b_instruct_config.json")
    assert qwen.qkv_bias and not qwen.o_bias and qwen.sliding_window is None
    assert 7.0e9 < qwen.num_parameters() < 7.7e9
    assert 8.0e9 < llama.num_parameters() < 8.1e9


def test_transformers_4_and_5_dialects_agree():
    v4 = _config("llama3_1_8b_instruct_config.json")
    v5 = dict(v4)
    scaling = v5.pop("rope_scaling")
    v5["rope_parameters"] = {**scaling, "rope_theta": v5.pop("rope_theta")}
    assert ModelConfig.from_hf_dict(v4) == ModelConfig.from_hf_dict(v5)


def test_to_hf_dict_round_trips():
    config = ModelConfig.from_json_file(FIXTURES / "llama3_1_8b_instruct_config.json")
    again = ModelConfig.from_hf_dict(config.to_hf_dict(dtype="bfloat16"))
    assert again == config


def test_llama3_frequencies_match_transformers():
    import torch  # noqa: F401  (transformers' rope helpers need it)
    import transformers
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    raw = _config("llama3_1_8b_instruct_config.json")
    ours = ModelConfig.from_hf_dict(raw).rope.inverse_frequencies(128)
    theirs, _ = ROPE_INIT_FUNCTIONS["llama3"](transformers.LlamaConfig(**raw), "cpu")
    np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-6)


@pytest.mark.parametrize("mutation, message", [
    ({"model_type": "gpt2"}, "model_type 'gpt2' is not supported"),
    ({"model_type": "mixtral"}, "model_type 'mixtral' is not supported"),
    ({"num_local_experts": 8}, "key 'num_local_experts'"),
    ({"mlp_bias": True}, "mlp_bias=True is not supported"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope type 'yarn'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "beta": 1}}, "'beta'"),
    ({"hidden_act": "relu"}, "hidden_act='relu'"),
    ({"num_key_value_heads": 5}, "not a multiple"),
])
def test_unsupported_keys_and_values_are_named(mutation, message):
    raw = {**_config("llama3_8b_instruct_config.json"), **mutation}
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ModelConfig.from_hf_dict(raw)


def test_qwen2_sliding_window_layers_rejected():
    raw = {**_config("qwen2_5_7b_instruct_config.json"), "use_sliding_window": True}
    with pytest.raises(ConfigError, match="use_sliding_window"):
        ModelConfig.from_hf_dict(raw)


def test_missing_required_key_named():
    raw = _config("llama3_8b_instruct_config.json")
    del raw["intermediate_size"]
    with pytest.raises(ConfigError, match="'intermediate_size' is missing"):
        ModelConfig.from_hf_dict(raw)


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        ModelConfig.from_json_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json_file(tmp_path / "config.json")
