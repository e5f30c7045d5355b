"""Parsing checkpoint config.json files: both transformers dialects, and strict rejection."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from prosocial_jax.models.config import ConfigError, ModelConfig, RopeConfig

FIXTURES = Path(__file__).parents[1] / "fixtures"


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


@pytest.mark.parametrize("name", ["qwen3-0.6b.json", "gemma-2-2b-it.json", "gemma-3-1b-it.json",
                                  "phi-3-mini-4k-instruct.json", "phi-3.5-mini-instruct.json"])
def test_new_families_round_trip_through_to_hf_dict(name):
    config = ModelConfig.from_json_file(FIXTURES / "configs" / name)
    assert ModelConfig.from_hf_dict(config.to_hf_dict()) == config


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
    ({"model_type": "qwen3_moe"}, "Qwen3's sparse mixture-of-experts variant"),
    ({"model_type": "gemma3"}, "a Gemma 3 vision-language checkpoint"),
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


# ---------------------------------------------------------------------------- real-config corpus
CORPUS = FIXTURES / "configs"
CORPUS_FILES = sorted([*CORPUS.glob("*.json"), *FIXTURES.glob("*.json")])
def test_corpus_is_big_and_spans_transformers_versions():
    versions = {json.loads(f.read_text())["transformers_version"] for f in CORPUS_FILES}
    assert len(CORPUS_FILES) >= 25
    assert any(v.startswith("4.3") for v in versions) and any(v.startswith("4.5") for v in versions)
    assert any(v.startswith("5.") for v in versions)
    assert (CORPUS / "SOURCES.md").read_text().count("`") > 2 * len(list(CORPUS.glob("*.json")))


_ROTARY = {"llama": "LlamaRotaryEmbedding", "mistral": "MistralRotaryEmbedding",
           "qwen2": "Qwen2RotaryEmbedding", "qwen3": "Qwen3RotaryEmbedding",
           "gemma": "GemmaRotaryEmbedding", "gemma2": "Gemma2RotaryEmbedding",
           "gemma3_text": "Gemma3RotaryEmbedding", "phi3": "Phi3RotaryEmbedding"}
_MODULES = {"gemma3_text": "gemma3"}  # transformers' module, where it is not the model_type


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_corpus_parses_like_transformers(path):
    """Every supported real config gives the model transformers itself builds from it."""
    import importlib

    import torch  # noqa: F401  (the rotary classes are torch modules)
    import transformers

    raw = json.loads(path.read_text())
    ours = ModelConfig.from_json_file(path)
    theirs = transformers.AutoConfig.for_model(
        raw["model_type"], **{k: v for k, v in raw.items() if k != "model_type"})
    head_dim = getattr(theirs, "head_dim", None) or theirs.hidden_size // theirs.num_attention_heads
    eos = theirs.eos_token_id
    window = getattr(theirs, "sliding_window", None) if raw["model_type"] in (
        "mistral", "qwen2", "qwen3", "gemma2", "gemma3_text", "phi3") else None
    assert (ours.vocab_size, ours.hidden_size, ours.intermediate_size, ours.num_layers,
            ours.num_heads, ours.num_kv_heads, ours.head_dim) == (
        theirs.vocab_size, theirs.hidden_size, theirs.intermediate_size,
        theirs.num_hidden_layers, theirs.num_attention_heads, theirs.num_key_value_heads,
        head_dim)
    assert ours.tie_word_embeddings == theirs.tie_word_embeddings
    assert ours.sliding_window == window
    assert ours.rms_norm_eps == pytest.approx(theirs.rms_norm_eps)
    activation = getattr(theirs, "hidden_activation", None) or theirs.hidden_act
    assert ours.activation == {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh"}[activation]
    assert ours.eos_token_ids == (tuple(eos) if isinstance(eos, list) else
                                  () if eos is None else (eos,))
    layer_types = getattr(theirs, "layer_types", None)
    if raw["model_type"] in ("gemma2", "gemma3_text"):  # local and global layers
        assert ours.local_layers == tuple(t == "sliding_attention" for t in layer_types)
        assert ours.query_scale == pytest.approx(theirs.query_pre_attn_scalar ** -0.5)
        assert (ours.attn_softcap, ours.final_softcap) == (
            getattr(theirs, "attn_logit_softcapping", None), theirs.final_logit_softcapping)
    module = _MODULES.get(raw["model_type"], raw["model_type"])
    family = importlib.import_module(f"transformers.models.{module}.modeling_{module}")
    rotary = getattr(family, _ROTARY[raw["model_type"]])(config=theirs)
    if raw["model_type"] == "gemma3_text":  # one rotary per layer type
        for rope, kind in ((ours.rope, "full_attention"), (ours.local_rope, "sliding_attention")):
            assert rope.rope_type == theirs.rope_parameters[kind]["rope_type"]
            np.testing.assert_allclose(rope.inverse_frequencies(ours.head_dim),
                                       getattr(rotary, f"{kind}_inv_freq").numpy(), rtol=1e-6)
        return
    assert ours.rope.rope_type == theirs.rope_parameters["rope_type"]
    np.testing.assert_allclose(ours.rope.inverse_frequencies(ours.head_dim),
                               rotary.inv_freq.numpy(), rtol=1e-6)
    assert ours.rope.attention_factor == pytest.approx(rotary.attention_scaling)
    if ours.rope.rope_type == "longrope":  # the set used past the original length
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        long, _ = ROPE_INIT_FUNCTIONS["longrope"](
            theirs, seq_len=ours.rope.original_max_position_embeddings + 1)
        np.testing.assert_allclose(ours.rope.inverse_frequencies(ours.head_dim, long=True),
                                   long.numpy(), rtol=1e-6)


# Expectations written out by hand from the model cards / the JSON text (not from a parser):
# hidden, kv heads, head_dim, rope type, rope theta, tied head, sliding window, q/k/v bias.
EXPECTED = {
    "llama-2-7b-hf.json": (4096, 32, 128, "default", 10000.0, False, None, False),
    "llama-3.2-1b-instruct__resaved-4.47.1.json": (2048, 8, 64, "llama3", 500000.0, True, None,
                                                   False),
    "tinyllama-1.1b-chat-v1.0__resaved-4.56.0.json": (2048, 4, 64, "default", 10000.0, False,
                                                      None, False),
    "smollm2-135m-instruct__gguf-save_pretrained-5.25.0.json": (576, 3, 64, "default", 100000.0,
                                                                True, None, False),
    "deepseek-coder-1.3b-instruct__loaded-4.48.3.json": (2048, 16, 128, "linear", 100000.0,
                                                         False, None, False),
    "mistral-7b-v0.1.json": (4096, 8, 128, "default", 10000.0, False, 4096, False),
    "mistral-7b-instruct-v0.3.json": (4096, 8, 128, "default", 1000000.0, False, None, False),
    "qwen2-7b-instruct.json": (3584, 4, 128, "default", 1000000.0, False, None, True),
    "qwen2.5-0.5b-instruct__save_pretrained-5.25.0.json": (896, 2, 64, "default", 1000000.0,
                                                           True, None, True),
    "gemma-2b-it.json": (2048, 1, 256, "default", 10000.0, True, None, False),
    "gemma-7b__save_pretrained-5.25.0.json": (3072, 16, 256, "default", 10000.0, True, None,
                                              False),
    "qwen3-0.6b.json": (1024, 8, 128, "default", 1000000.0, True, None, False),
    "gemma-2-2b-it.json": (2304, 4, 256, "default", 10000.0, True, 4096, False),
    "gemma-3-1b-it.json": (1152, 1, 256, "default", 1000000.0, True, 512, False),
    "phi-3-mini-4k-instruct.json": (3072, 32, 96, "default", 10000.0, False, 2047, False),
    "phi-3.5-mini-instruct.json": (3072, 32, 96, "longrope", 10000.0, False, 262144, False),
}


def test_new_families_sizes_and_layer_kinds_from_their_model_cards():
    """Parameter counts the model cards state (Qwen3-0.6B: 0.6B, 0.44B without embeddings;
    gemma-2-2b: 2.61B; gemma-3-1b: 1B), and the layer pattern written out by hand."""
    qwen3 = ModelConfig.from_json_file(CORPUS / "qwen3-0.6b.json")
    embedding = 151936 * 1024
    assert 0.43e9 < qwen3.num_parameters() - embedding < 0.45e9
    assert qwen3.qk_norm and not qwen3.sandwich_norms
    gemma2 = ModelConfig.from_json_file(CORPUS / "gemma-2-2b-it.json")
    assert 2.60e9 < gemma2.num_parameters() < 2.62e9
    assert gemma2.local_layers == (True, False) * 13  # layer 0 local, then alternating
    assert (gemma2.attn_softcap, gemma2.final_softcap, gemma2.query_scale) == (50.0, 30.0,
                                                                               256 ** -0.5)
    gemma3 = ModelConfig.from_json_file(CORPUS / "gemma-3-1b-it.json")
    assert 0.99e9 < gemma3.num_parameters() < 1.01e9
    assert gemma3.local_layers == ((True,) * 5 + (False,)) * 4 + (True, True)  # 5 local, 1 global
    assert (gemma3.rope.theta, gemma3.local_rope.theta) == (1e6, 1e4)
    assert (gemma3.attn_softcap, gemma3.final_softcap) == (None, None)
    phi3 = ModelConfig.from_json_file(CORPUS / "phi-3-mini-4k-instruct.json")
    assert 3.8e9 < phi3.num_parameters() < 3.83e9  # "3.8B parameters"
    phi35 = ModelConfig.from_json_file(CORPUS / "phi-3.5-mini-instruct.json")
    # 131,072 / 4,096 = 32x the original context: LongRoPE's attention factor
    # sqrt(1 + ln 32 / ln 4096) = 1.1902
    assert phi35.rope.factor == 32.0 and round(phi35.rope.attention_factor, 4) == 1.1902
    assert phi35.rope.short_factor[0] == 1.0 and len(phi35.rope.long_factor) == 48


def test_llama_guard_3_1b_is_a_pruned_llama_3_2_1b():
    """Llama Guard 3 1B (gated: its config.json is not in the corpus) is, by its model card,
    Llama 3.2 1B pruned to 12 layers and an MLP of 6,400 with 1,123 million parameters: the
    real Llama 3.2 1B file with those two sizes parses as a plain Llama, and only an untied
    output head gives the card's count (tied: 860 million)."""
    raw = json.loads((CORPUS / "llama-3.2-1b-instruct__resaved-4.47.1.json").read_text())
    guard = ModelConfig.from_hf_dict({**raw, "num_hidden_layers": 12, "intermediate_size": 6400,
                                      "tie_word_embeddings": False}, "llama-guard-3-1b")
    assert round(guard.num_parameters() / 1e6) == 1123
    tied = ModelConfig.from_hf_dict({**raw, "num_hidden_layers": 12, "intermediate_size": 6400},
                                    "llama-guard-3-1b, tied")
    assert round(tied.num_parameters() / 1e6) == 860
    assert guard.rope.rope_type == "llama3" and guard.rope.factor == 32.0


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_corpus_fields_match_hand_written_expectations(name):
    c = ModelConfig.from_json_file(CORPUS / name)
    assert (c.hidden_size, c.num_kv_heads, c.head_dim, c.rope.rope_type, c.rope.theta,
            c.tie_word_embeddings, c.sliding_window, c.qkv_bias) == EXPECTED[name]


def test_corpus_extra_rope_and_activation_details():
    deepseek = ModelConfig.from_json_file(
        CORPUS / "deepseek-coder-1.3b-instruct__loaded-4.48.3.json")
    assert deepseek.rope.factor == 4.0 and deepseek.pad_token_id == 32014
    llama32 = ModelConfig.from_json_file(CORPUS / "llama-3.2-1b-instruct__resaved-4.47.1.json")
    assert llama32.rope.factor == 32.0 and llama32.eos_token_ids == (128001, 128008, 128009)
    for gemma in CORPUS.glob("gemma-*.json"):  # "gelu" means the tanh approximation for Gemma
        assert ModelConfig.from_json_file(gemma).activation == "gelu_tanh"


@pytest.mark.parametrize("old, new", [
    ("qwen2.5-0.5b-instruct__resaved-4.49.0.json",
     "qwen2.5-0.5b-instruct__save_pretrained-5.25.0.json"),
    ("llama-3.2-1b-instruct__resaved-4.47.1.json",
     "llama-3.2-1b-instruct__save_pretrained-5.25.0.json"),
    ("gemma-7b__loaded-4.45.2.json", "gemma-7b__save_pretrained-5.25.0.json"),
    ("mistral-7b-v0.1.json", "mistral-7b-v0.1__save_pretrained-5.25.0.json"),
    ("deepseek-coder-1.3b-instruct__loaded-4.48.3.json",
     "deepseek-coder-1.3b-instruct__save_pretrained-5.25.0.json"),
])
def test_real_4x_and_5x_files_of_one_model_agree(old, new):
    """The same checkpoint's config as written by transformers 4.x and by 5.25 parses the same."""
    import dataclasses

    a, b = (ModelConfig.from_json_file(CORPUS / n) for n in (old, new))
    assert dataclasses.replace(a, checkpoint_dtype=None) == dataclasses.replace(
        b, checkpoint_dtype=None)


def test_private_metadata_keys_are_accepted():
    """Any key transformers treats as private (leading underscore) cannot change the math."""
    raw = _config("qwen2_5_7b_instruct_config.json")
    private = {"_name_or_path": "Qwen/Qwen2.5-7B-Instruct", "_model_name_or_path": "Qwen2.5 7B",
               "_attn_implementation_autoset": True, "_commit_hash": "a09a3545",
               "_attn_implementation": "sdpa"}
    assert ModelConfig.from_hf_dict({**raw, **private}) == ModelConfig.from_hf_dict(raw)


def test_gguf_quantization_record_accepted_other_quantization_refused():
    raw = json.loads((CORPUS / "smollm2-135m-instruct__gguf-save_pretrained-5.25.0.json")
                     .read_text())
    assert raw["quantization_config"]["quant_method"] == "gguf"
    plain = {k: v for k, v in raw.items() if k != "quantization_config"}
    assert ModelConfig.from_hf_dict(raw) == ModelConfig.from_hf_dict(plain)
    gptq = {**plain, "quantization_config": {"quant_method": "gptq", "bits": 4}}
    with pytest.raises(ConfigError, match="quantization_config=.*gptq.* is not supported"):
        ModelConfig.from_hf_dict(gptq)


# Keys that change the computation stay errors naming the key, on real files.
@pytest.mark.parametrize("name, mutation, message", [
    ("qwen2-7b-instruct.json", {"use_sliding_window": True}, "use_sliding_window=True"),
    ("qwen2.5-0.5b-instruct__save_pretrained-5.25.0.json",
     {"layer_types": ["sliding_attention"] * 12 + ["full_attention"] * 12},
     "layer_types ['full_attention', 'sliding_attention']"),
    ("gemma-2b-it.json", {"attn_logit_softcapping": 50.0}, "key 'attn_logit_softcapping'"),
    ("gemma-2b-it.json", {"final_logit_softcapping": 30.0}, "key 'final_logit_softcapping'"),
    ("gemma-2b-it.json", {"attention_bias": True}, "attention_bias=True"),
    ("gemma-7b__loaded-4.45.2.json", {"hidden_activation": "silu"},
     "hidden_act='gelu' and hidden_activation='silu' disagree"),
    # The YaRN block the Qwen2.5 model cards tell users to add for 128k context.
    ("qwen2.5-7b.json", {"rope_scaling": {"factor": 4.0, "original_max_position_embeddings":
                                          32768, "type": "yarn"}}, "rope type 'yarn'"),
    ("llama-2-7b-hf.json", {"rope_scaling": {"type": "dynamic", "factor": 2.0}},
     "rope type 'dynamic'"),
    ("llama-3.2-1b-instruct__save_pretrained-5.25.0.json",
     {"rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                          "partial_rotary_factor": 0.5}}, "partial_rotary_factor=0.5"),
    ("llama-2-7b-hf.json", {"rope_scaling": {"type": "linear", "rope_type": "llama3",
                                             "factor": 2.0}}, "two rope types"),
    ("llama-2-7b-hf.json", {"rope_scaling": {"type": "linear"}}, "has no 'factor'"),
    ("llama-3.1-8b.json", {"mlp_bias": True}, "mlp_bias=True"),
    ("llama-3.1-8b.json", {"auto_map": {"AutoModelForCausalLM": "modeling_x.X"}},
     "key 'auto_map'"),
    ("mistral-7b-v0.1.json", {"rope_interleaved": True}, "key 'rope_interleaved'"),
])
def test_math_changing_keys_stay_errors(name, mutation, message):
    raw = {**json.loads((CORPUS / name).read_text()), **mutation}
    with pytest.raises(ConfigError, match=re.escape(message)):
        ModelConfig.from_hf_dict(raw)


# Wrong types: a ConfigError naming key and value, never a bare TypeError/ValueError.
@pytest.mark.parametrize("mutation, message", [
    ({"hidden_size": "64"}, "hidden_size='64' is not an integer"),
    ({"hidden_size": True}, "hidden_size=True is not an integer"),
    ({"num_hidden_layers": None}, "'num_hidden_layers' is missing (null)"),
    ({"num_key_value_heads": 0}, "num_key_value_heads=0 must be >= 1"),
    ({"head_dim": 64.5}, "head_dim=64.5 is not an integer"),
    ({"eos_token_id": "x"}, "eos_token_id='x' is not a token id"),
    ({"eos_token_id": [128001, "x"]}, "eos_token_id=[128001, 'x'] is not a token id"),
    ({"bos_token_id": 1.5}, "bos_token_id=1.5 is not a token id"),
    ({"rope_scaling": 3}, "rope_scaling=3 is not an object or null"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": "8"}},
     "rope_scaling.factor='8' is not a finite number"),
    ({"rope_theta": "500000"}, "rope_theta='500000' is not a finite number"),
    ({"rms_norm_eps": "1e-5"}, "rms_norm_eps='1e-5' is not a finite number"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings='false' is not true or false"),
    ({"hidden_act": 3}, "hidden_act=3 is not an activation name"),
    ({"mlp_bias": 0}, "mlp_bias=0 is not supported"),
    ({"torch_dtype": 16}, "torch_dtype=16 is not a dtype name"),
])
def test_wrong_types_are_config_errors_naming_key_and_value(mutation, message):
    raw = {**_config("llama3_1_8b_instruct_config.json"), **mutation}
    with pytest.raises(ConfigError, match=re.escape(message)):
        ModelConfig.from_hf_dict(raw)


def test_config_that_is_not_an_object(tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="config.json: a config must be a JSON object, got list"):
        ModelConfig.from_json_file(tmp_path / "config.json")
    (tmp_path / "config.json").write_bytes(b"\xff\xfe{")
    with pytest.raises(ConfigError, match="config.json: not UTF-8 text"):
        ModelConfig.from_json_file(tmp_path / "config.json")


_BAD_VALUES = ["x", [1], {"a": 1}, -1, True, 1.5, None, [], {}, float("nan"), 0, 10**30]


@pytest.mark.parametrize("name", ["llama-3.2-1b-instruct__save_pretrained-5.25.0.json",
                                  "qwen2-7b-instruct.json", "gemma-2b-it.json",
                                  "mistral-7b-v0.1.json"])
def test_any_bad_value_of_any_key_is_accepted_or_named(name):
    """Fuzz each key of real files with wrong values: a ConfigError naming the key, or a parse."""
    raw = json.loads((CORPUS / name).read_text())
    for key in [*raw, "rope_parameters", "rope_scaling", "head_dim", "layer_types"]:
        for value in _BAD_VALUES:
            try:
                ModelConfig.from_hf_dict({**raw, key: value})
            except ConfigError as err:
                assert key in str(err) or (key.startswith("rope") and "rope" in str(err)), (
                    key, value, str(err))


def test_absent_keys_take_transformers_class_defaults():
    """Left-out num_key_value_heads / head_dim mean what transformers' config classes say."""
    import transformers

    for name in ("mistral-7b-v0.1.json", "qwen2-7b-instruct.json", "gemma-2b-it.json",
                 "llama-2-7b-hf.json", "qwen3-0.6b.json", "gemma-2-2b-it.json",
                 "gemma-3-1b-it.json"):
        raw = json.loads((CORPUS / name).read_text())
        for key in ("num_key_value_heads", "head_dim"):
            raw.pop(key, None)
        raw["num_attention_heads"] = 32  # divisible by every family's default kv head count
        theirs = transformers.AutoConfig.for_model(
            raw["model_type"], **{k: v for k, v in raw.items() if k != "model_type"})
        ours = ModelConfig.from_hf_dict(raw)
        head_dim = getattr(theirs, "head_dim", None) or theirs.hidden_size // 32
        assert (ours.num_kv_heads, ours.head_dim) == (theirs.num_key_value_heads, head_dim), name
