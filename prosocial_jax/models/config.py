"""Model architecture read from a checkpoint's Hugging Face `config.json`.

One decoder family covers Llama (incl. Llama-3 rope scaling), Mistral (sliding window), Qwen2
(q/k/v biases) and Gemma (norm offset, embedding scale, GeGLU). The parser is strict on purpose:
a key it does not know, or a value it cannot honour, is an error naming the key, because a
silently ignored key gives silently wrong logits.

Both config dialects are read: transformers 4.x (`rope_theta`, `rope_scaling`) and 5.x
(`rope_parameters`). `to_hf_dict` writes the 4.x dialect, which every transformers version loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gemma")

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "gemma": "GemmaForCausalLM",
}

# Keys that never change the forward pass at inference time (bookkeeping, training-only knobs,
# generation defaults that old checkpoints stored in config.json).
_INERT_KEYS = frozenset({
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
    "initializer_range", "use_cache", "attention_dropout", "pretraining_tp", "is_llama_config",
    "transformers.js_config", "output_attentions", "output_hidden_states", "return_dict",
    "tie_encoder_decoder", "is_decoder", "is_encoder_decoder", "add_cross_attention",
    "chunk_size_feed_forward", "tokenizer_class", "prefix", "task_specific_params",
    "problem_type", "id2label", "label2id", "finetuning_task", "max_length", "min_length",
    "do_sample", "early_stopping", "num_beams", "temperature", "top_k", "top_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "bad_words_ids",
    "num_return_sequences", "sep_token_id", "decoder_start_token_id", "torchscript",
    "pruned_heads", "tf_legacy_loss", "use_bfloat16", "unk_token_id", "quantization_config_skip",
})

# Keys whose value we read; a key missing from both sets is rejected.
_USED_KEYS = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings",
    "tie_word_embeddings", "hidden_act", "hidden_activation", "rope_theta", "rope_scaling",
    "rope_parameters", "bos_token_id", "eos_token_id", "pad_token_id",
})

# Keys that are allowed only with the value that means "feature off" (or a harmless value).
_FAMILY_KEYS: dict[str, dict[str, Any]] = {
    "llama": {"attention_bias": None, "mlp_bias": False, "rope_interleaved": False},
    "mistral": {"sliding_window": None},
    "qwen2": {"use_sliding_window": False, "sliding_window": None, "max_window_layers": None,
              "layer_types": None, "attention_bias": None, "use_mrope": False},
    "gemma": {"attention_bias": False, "use_bidirectional_attention": None},
}

_ROPE_TYPES = ("default", "linear", "llama3")


class ConfigError(ValueError):
    """A checkpoint config that prosocial_jax cannot run faithfully."""


@dataclasses.dataclass(frozen=True)
class RopeConfig:
    """Rotary embedding settings; hashable so it can be a static jit argument."""

    theta: float = 10000.0
    rope_type: str = "default"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def inverse_frequencies(self, head_dim: int) -> np.ndarray:
        """Per-pair inverse frequencies [head_dim // 2], float32, as transformers computes them."""
        exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / head_dim
        inv_freq = (1.0 / (self.theta ** exponents)).astype(np.float32)
        if self.rope_type == "linear":
            return (inv_freq / self.factor).astype(np.float32)
        if self.rope_type == "llama3":
            old_len = self.original_max_position_embeddings
            low_wavelen = old_len / self.low_freq_factor
            high_wavelen = old_len / self.high_freq_factor
            wavelen = 2 * math.pi / inv_freq
            scaled = np.where(wavelen > low_wavelen, inv_freq / self.factor, inv_freq)
            smooth = (old_len / wavelen - self.low_freq_factor) / (
                self.high_freq_factor - self.low_freq_factor)
            smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
            medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
            return np.where(medium, smoothed, scaled).astype(np.float32)
        return inv_freq


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder architecture; frozen and hashable, so it can be a static argument of jit."""

    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope: RopeConfig = RopeConfig()
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    sliding_window: int | None = None
    activation: str = "silu"  # "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    norm_offset: float = 0.0  # Gemma stores RMSNorm weights as (scale - 1)
    scale_embeddings: bool = False  # Gemma multiplies embeddings by sqrt(hidden_size)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    checkpoint_dtype: str | None = None

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}")

    @property
    def num_groups(self) -> int:
        """Query heads per key/value head (grouped-query attention)."""
        return self.num_heads // self.num_kv_heads

    def num_parameters(self) -> int:
        d, f, hd = self.hidden_size, self.intermediate_size, self.head_dim
        attn = d * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
        if self.qkv_bias:
            attn += hd * (self.num_heads + 2 * self.num_kv_heads)
        if self.o_bias:
            attn += d
        per_layer = attn + 3 * d * f + 2 * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * per_layer + d + head

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
        """Parses a transformers config dict; raises ConfigError naming any key it can't honour."""
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type {model_type!r} is not supported "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        family_keys = _FAMILY_KEYS[model_type]
        for key in raw:
            if key in _INERT_KEYS or key in _USED_KEYS or key in family_keys:
                continue
            raise ConfigError(
                f"{source}: key {key!r} (= {raw[key]!r}) is not understood for model_type "
                f"{model_type!r}; refusing to guess how it changes the model")

        def need(key: str) -> Any:
            if raw.get(key) is None:
                raise ConfigError(f"{source}: required key {key!r} is missing")
            return raw[key]

        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        kv_heads = int(raw.get("num_key_value_heads") or heads)
        head_dim = int(raw.get("head_dim") or hidden // heads)
        if model_type != "gemma" and raw.get("head_dim") is None and hidden % heads:
            raise ConfigError(f"{source}: hidden_size {hidden} is not divisible by "
                              f"num_attention_heads {heads} and no head_dim is given")

        act_key = "hidden_activation" if raw.get("hidden_activation") else "hidden_act"
        act = raw.get(act_key) or ("gelu_pytorch_tanh" if model_type == "gemma" else "silu")
        if model_type == "gemma" and act == "gelu":
            act = "gelu_pytorch_tanh"  # transformers maps Gemma's legacy "gelu" to the tanh form
        activations = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
        if act not in activations:
            raise ConfigError(f"{source}: {act_key}={act!r} is not supported "
                              f"(supported: {', '.join(activations)})")

        qkv_bias, o_bias, window = False, False, None
        if model_type == "llama":
            qkv_bias = o_bias = bool(raw.get("attention_bias", False))
            _require(raw, "mlp_bias", False, source)
            _require(raw, "rope_interleaved", False, source)
        elif model_type == "mistral":
            window = raw.get("sliding_window")
        elif model_type == "qwen2":
            qkv_bias = True
            _require(raw, "use_sliding_window", False, source)
            _require(raw, "use_mrope", False, source)
            layer_types = raw.get("layer_types")
            if layer_types is not None and any(t != "full_attention" for t in layer_types):
                raise ConfigError(f"{source}: layer_types {sorted(set(layer_types))} asks for "
                                  "sliding-window layers, which are not supported for qwen2")
        elif model_type == "gemma":
            _require(raw, "attention_bias", False, source)
            if raw.get("use_bidirectional_attention"):
                raise ConfigError(f"{source}: use_bidirectional_attention=True is not supported")

        eos = raw.get("eos_token_id")
        eos_ids = tuple(int(e) for e in (eos if isinstance(eos, list) else [eos])
                        if e is not None)
        tie_default = model_type == "gemma"
        return cls(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_layers=int(need("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
            rope=_parse_rope(raw, source),
            max_position_embeddings=int(raw.get("max_position_embeddings") or 4096),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", tie_default)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            sliding_window=int(window) if window else None,
            activation=activations[act],
            norm_offset=1.0 if model_type == "gemma" else 0.0,
            scale_embeddings=model_type == "gemma",
            bos_token_id=raw.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=raw.get("pad_token_id"),
            checkpoint_dtype=raw.get("torch_dtype") or raw.get("dtype"),
        )

    @classmethod
    def from_json_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json there") from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not valid JSON ({err})") from None
        return cls.from_hf_dict(raw, source=str(path))

    def to_hf_dict(self, dtype: str | None = None) -> dict[str, Any]:
        """A config.json that transformers 4.x and 5.x both load into the same model."""
        rope_scaling = None
        if self.rope.rope_type == "linear":
            rope_scaling = {"rope_type": "linear", "factor": self.rope.factor}
        elif self.rope.rope_type == "llama3":
            rope_scaling = {
                "rope_type": "llama3", "factor": self.rope.factor,
                "low_freq_factor": self.rope.low_freq_factor,
                "high_freq_factor": self.rope.high_freq_factor,
                "original_max_position_embeddings": self.rope.original_max_position_embeddings,
            }
        eos: int | list[int] | None = list(self.eos_token_ids) or None
        if eos is not None and len(eos) == 1:
            eos = eos[0]
        out: dict[str, Any] = {
            "architectures": [_ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope.theta,
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "hidden_act": "silu" if self.activation == "silu" else "gelu_pytorch_tanh",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "pad_token_id": self.pad_token_id,
            "torch_dtype": dtype or self.checkpoint_dtype or "float32",
        }
        if self.model_type == "llama":
            out["attention_bias"] = self.qkv_bias
            out["mlp_bias"] = False
        elif self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        elif self.model_type == "qwen2":
            out["use_sliding_window"] = False
        return out


def _require(raw: Mapping[str, Any], key: str, value: Any, source: str) -> None:
    if key in raw and raw[key] is not None and raw[key] != value:
        raise ConfigError(f"{source}: {key}={raw[key]!r} is not supported (only {value!r})")


def _parse_rope(raw: Mapping[str, Any], source: str) -> RopeConfig:
    """Reads rope settings from the 4.x keys or the 5.x `rope_parameters` dict."""
    params = raw.get("rope_parameters")
    if params is not None and "rope_theta" not in params and any(
            isinstance(v, Mapping) for v in params.values()):
        raise ConfigError(f"{source}: per-layer-type rope_parameters are not supported")
    if params is None:
        params = dict(raw.get("rope_scaling") or {})
        if "rope_theta" in raw:
            params["rope_theta"] = raw["rope_theta"]
    else:
        params = dict(params)
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    if rope_type not in _ROPE_TYPES:
        raise ConfigError(f"{source}: rope type {rope_type!r} is not supported "
                          f"(supported: {', '.join(_ROPE_TYPES)})")
    theta = float(params.pop("rope_theta", 10000.0))
    allowed = {"default": set(), "linear": {"factor"},
               "llama3": {"factor", "low_freq_factor", "high_freq_factor",
                          "original_max_position_embeddings"}}[rope_type]
    # partial_rotary_factor == 1.0 is the default everywhere; anything else changes the math.
    if params.get("partial_rotary_factor", 1.0) != 1.0:
        raise ConfigError(f"{source}: partial_rotary_factor={params['partial_rotary_factor']} "
                          "is not supported")
    params.pop("partial_rotary_factor", None)
    unknown = set(params) - allowed
    if unknown:
        raise ConfigError(f"{source}: rope setting(s) {sorted(unknown)} are not understood "
                          f"for rope type {rope_type!r}")
    kwargs: dict[str, Any] = {"theta": theta, "rope_type": rope_type}
    if "factor" in params:
        kwargs["factor"] = float(params["factor"])
    for key in ("low_freq_factor", "high_freq_factor"):
        if key in params:
            kwargs[key] = float(params[key])
    if "original_max_position_embeddings" in params:
        kwargs["original_max_position_embeddings"] = int(
            params["original_max_position_embeddings"])
    if rope_type == "llama3" and "original_max_position_embeddings" not in params:
        kwargs["original_max_position_embeddings"] = int(
            raw.get("max_position_embeddings") or 8192)
    return RopeConfig(**kwargs)
