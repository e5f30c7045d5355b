"""Model architecture read from a checkpoint's Hugging Face `config.json`.

One decoder family covers Llama (incl. Llama-3 rope scaling), Mistral (sliding window), Qwen2
(q/k/v biases), Qwen3 (per-head RMSNorm of queries and keys) and Gemma (norm offset, embedding
scale, GeGLU). The parser is strict on purpose:
a key it does not know, or a value it cannot honour, is an error naming the key, because a
silently ignored key gives silently wrong logits. Keys that cannot change the computation are
accepted: transformers' private metadata (any key starting with `_`, e.g. `_name_or_path`, or the
`_model_name_or_path` it copies from a GGUF file's `general.name`) and the bookkeeping keys listed
in `_INERT_KEYS`. A value of the wrong type (`"hidden_size": "64"`) is an error naming the key and
the value, never a bare TypeError.

Both config dialects are read: transformers 4.x (`rope_theta`, `rope_scaling`) and 5.x
(`rope_parameters`, `dtype`, `layer_types`). `to_hf_dict` writes the 4.x dialect, which every
transformers version loads.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text",
                         "phi3")
_GEMMA_FAMILY = ("gemma", "gemma2", "gemma3_text")

# Families a user may well bring that are refused, and why (a plain "not supported" would leave
# them guessing whether a newer version of this library would load them).
_REFUSED_MODEL_TYPES = {
    "qwen3_moe": "Qwen3's sparse mixture-of-experts variant (a router and experts in place of "
                 "each MLP) is not supported; the dense Qwen3 models (model_type qwen3) are",
    "qwen2_moe": "Qwen2's sparse mixture-of-experts variant is not supported; the dense Qwen2 "
                 "models (model_type qwen2) are",
    "gemma3": "a Gemma 3 vision-language checkpoint (Gemma3ForConditionalGeneration: a vision "
              "tower beside the language model) is not supported; the text-only Gemma 3 "
              "checkpoints (model_type gemma3_text, e.g. gemma-3-1b-it) are",
}

_ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "gemma": "GemmaForCausalLM",
    "gemma2": "Gemma2ForCausalLM",
    "gemma3_text": "Gemma3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}

# Keys that never change the forward pass at inference time. Each group says why.
_INERT_KEYS = frozenset({
    # Bookkeeping: which class/library/dtype wrote the file. The dtype the weights are stored in
    # is read from the tensors themselves; the computation dtype is the caller's `dtype=`.
    "architectures", "model_type", "transformers_version", "torch_dtype", "dtype",
    "transformers.js_config", "tokenizer_class", "is_llama_config",
    # Training-only: weight initialisation, dropout (off at inference), and the tensor-parallel
    # split of Llama-2's pretraining (transformers slices the same matmuls; same result).
    "initializer_range", "attention_dropout", "pretraining_tp", "use_cache", "resid_pdrop",
    "embd_pdrop",
    # What a transformers model returns, not what it computes.
    "output_attentions", "output_hidden_states", "return_dict", "torchscript",
    "chunk_size_feed_forward", "tie_encoder_decoder", "is_decoder", "is_encoder_decoder",
    "add_cross_attention", "pruned_heads", "tf_legacy_loss", "use_bfloat16",
    # Task heads and labels for other model classes (sequence classification etc.).
    "prefix", "task_specific_params", "problem_type", "id2label", "label2id", "finetuning_task",
    # Generation defaults that old checkpoints stored in config.json: they steer sampling, which
    # the caller sets explicitly here, and never the logits.
    "max_length", "min_length", "do_sample", "early_stopping", "num_beams", "temperature",
    "top_k", "top_p", "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences",
    # Token ids of special tokens that no decoder-only computation uses.
    "sep_token_id", "decoder_start_token_id", "unk_token_id", "quantization_config_skip",
})

# Keys whose value we read; a key missing from both sets is rejected.
_USED_KEYS = frozenset({
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "head_dim", "rms_norm_eps", "max_position_embeddings",
    "tie_word_embeddings", "hidden_act", "hidden_activation", "rope_theta", "rope_scaling",
    "rope_parameters", "bos_token_id", "eos_token_id", "pad_token_id", "quantization_config",
})

# Keys that are allowed only with the value that means "feature off" (or a harmless value).
_FAMILY_KEYS: dict[str, dict[str, Any]] = {
    "llama": {"attention_bias": None, "mlp_bias": False, "rope_interleaved": False},
    "mistral": {"sliding_window": None},
    # Qwen2's `sliding_window` and `max_window_layers` only take effect with
    # `use_sliding_window: true` (transformers sets the window to None otherwise), which is
    # refused below; real configs carry 32768 / 131072 with the feature off.
    "qwen2": {"use_sliding_window": False, "sliding_window": None, "max_window_layers": None,
              "layer_types": None, "attention_bias": None, "use_mrope": False},
    # Qwen3: as Qwen2 (the window keys only act with `use_sliding_window: true`); biases are
    # `attention_bias` (q, k, v and o alike), off in every released checkpoint.
    "qwen3": {"use_sliding_window": False, "sliding_window": None, "max_window_layers": None,
              "layer_types": None, "attention_bias": None},
    "gemma": {"attention_bias": False, "use_bidirectional_attention": None},
    # Gemma 2 / 3: local (sliding-window) and global layers, soft-capping, a query scale of
    # their own. `cache_implementation` names transformers' cache class for generate(), not
    # the computation.
    "gemma2": {"attention_bias": False, "use_bidirectional_attention": None,
               "cache_implementation": None, "query_pre_attn_scalar": None,
               "sliding_window": None, "layer_types": None, "final_logit_softcapping": None,
               "attn_logit_softcapping": None},
    # Phi-3: fused projections (split on load), every layer windowed when `sliding_window` is
    # set, longrope. `auto_map` points transformers at the repository's own copy of the code
    # when asked to trust it; its built-in Phi-3, which this follows, ignores it.
    "phi3": {"attention_bias": False, "sliding_window": None, "auto_map": None,
             "original_max_position_embeddings": None, "partial_rotary_factor": None},
    "gemma3_text": {"attention_bias": False, "use_bidirectional_attention": None,
                    "cache_implementation": None, "query_pre_attn_scalar": None,
                    "sliding_window": None, "layer_types": None, "sliding_window_pattern": None,
                    "final_logit_softcapping": None, "attn_logit_softcapping": None,
                    "rope_local_base_freq": None},
}

_ROPE_TYPES = ("default", "linear", "llama3")  # and Phi-3's longrope (`_parse_phi3_rope`)

# transformers' class defaults for a key the file leaves out (LlamaConfig uses the head count).
_KV_HEADS_DEFAULT = {"mistral": 8, "qwen2": 32, "qwen3": 32, "gemma": 16, "gemma2": 4,
                     "gemma3_text": 4}
_HEAD_DIM_DEFAULT = {"gemma": 256, "qwen3": 128, "gemma2": 256, "gemma3_text": 256}
# Gemma 2 / 3 class defaults for keys a file leaves out (an explicit null turns a cap off).
_GEMMA_DEFAULTS = {
    "gemma2": {"sliding_window": 4096, "query_pre_attn_scalar": 256,
               "final_logit_softcapping": 30.0, "attn_logit_softcapping": 50.0,
               "sliding_window_pattern": 2},
    "gemma3_text": {"sliding_window": 4096, "query_pre_attn_scalar": 256,
                    "final_logit_softcapping": None, "attn_logit_softcapping": None,
                    "sliding_window_pattern": 6},
}

# `quantization_config` methods whose checkpoints hold ordinary floating tensors. transformers
# writes {"quant_method": "gguf"} when it saves a model it loaded from a GGUF file: it dequantised
# every tensor on load, so the safetensors it writes are plain floats and the key only records
# where they came from. Any other method stores packed integers and scales that would be misread.
_DEQUANTISED_METHODS = ("gguf",)


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
    # Phi-3's "longrope": per-pair divisors of the frequencies, the short set up to
    # `original_max_position_embeddings` tokens and the long one past it; cos and sin are
    # scaled by `attention_factor`.
    short_factor: tuple[float, ...] = ()
    long_factor: tuple[float, ...] = ()
    attention_factor: float = 1.0
    partial_rotary_factor: float = 1.0  # Phi-4-mini: only the first part of each head rotates

    def rotary_dim(self, head_dim: int) -> int:
        """How many of a head's dimensions rotate (the rest pass through unchanged)."""
        return int(head_dim * self.partial_rotary_factor)

    def inverse_frequencies(self, head_dim: int, long: bool = False) -> np.ndarray:
        """Per-pair inverse frequencies [rotary_dim // 2], float32, as transformers computes
        them (`long`: longrope's set for sequences past its original length)."""
        dim = self.rotary_dim(head_dim)
        exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / dim
        if self.rope_type == "longrope":
            factors = np.asarray(self.long_factor if long else self.short_factor, np.float32)
            return (1.0 / (factors * self.theta ** exponents)).astype(np.float32)
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
    # Which layers attend through `sliding_window` (Gemma 2 / 3: local and global layers);
    # None: every layer, when a window is set (Mistral, Phi-3).
    sliding_layers: tuple[bool, ...] | None = None
    local_rope: RopeConfig | None = None  # Gemma 3: the local layers' rotary (None: `rope`)
    query_pre_attn_scalar: float | None = None  # scores scaled by its -1/2 power (None: head_dim)
    attn_softcap: float | None = None  # Gemma 2: scores -> cap * tanh(scores / cap)
    final_softcap: float | None = None  # Gemma 2: logits -> cap * tanh(logits / cap)
    sandwich_norms: bool = False  # Gemma 2 / 3: RMSNorm on the attention and MLP outputs too
    activation: str = "silu"  # "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    qk_norm: bool = False  # Qwen3, Gemma 3: RMSNorm over each head of the queries and keys
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
    def local_layers(self) -> tuple[bool, ...]:
        """Per layer: does it attend only within `sliding_window` (and rotate by `local_rope`)?"""
        if self.sliding_window is None:
            return (False,) * self.num_layers
        return self.sliding_layers or (True,) * self.num_layers

    @property
    def query_scale(self) -> float:
        return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

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
        if self.qk_norm:
            attn += 2 * hd
        per_layer = attn + 3 * d * f + (4 if self.sandwich_norms else 2) * d
        head = 0 if self.tie_word_embeddings else self.vocab_size * d
        return self.vocab_size * d + self.num_layers * per_layer + d + head

    # ------------------------------------------------------------------ HF config.json
    @classmethod
    def from_hf_dict(cls, raw: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
        """Parses a transformers config dict; raises ConfigError naming any key it can't honour."""
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{source}: a config must be a JSON object, got "
                              f"{type(raw).__name__} {_short(raw)}")
        model_type = raw.get("model_type")
        if isinstance(model_type, str) and model_type in _REFUSED_MODEL_TYPES:
            raise ConfigError(f"{source}: model_type {model_type!r}: "
                              f"{_REFUSED_MODEL_TYPES[model_type]}")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type {_short(model_type)} is not supported "
                f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})")
        family_keys = _FAMILY_KEYS[model_type]
        for key in raw:
            if not isinstance(key, str):
                raise ConfigError(f"{source}: key {key!r} is not a string")
            if (key.startswith("_") or key in _INERT_KEYS or key in _USED_KEYS
                    or key in family_keys):
                continue
            raise ConfigError(
                f"{source}: key {key!r} (= {_short(raw[key])}) is not understood for model_type "
                f"{model_type!r}; refusing to guess how it changes the model")
        _check_quantization(raw, source)

        hidden = _int(raw, "hidden_size", source)
        heads = _int(raw, "num_attention_heads", source)
        # An absent key means transformers' class default, which is not always "same as heads".
        kv_default = _KV_HEADS_DEFAULT.get(model_type, heads) if (
            "num_key_value_heads" not in raw) else heads
        kv_heads = _int(raw, "num_key_value_heads", source, default=kv_default)
        explicit_head_dim = _int(raw, "head_dim", source,
                                 default=_HEAD_DIM_DEFAULT.get(model_type))
        if explicit_head_dim is None and hidden % heads:
            raise ConfigError(f"{source}: hidden_size {hidden} is not divisible by "
                              f"num_attention_heads {heads} and no head_dim is given")
        head_dim = explicit_head_dim or hidden // heads

        activation = _parse_activation(raw, model_type, source)

        qkv_bias, o_bias, window = False, False, None
        if model_type == "llama":
            qkv_bias = o_bias = _bool(raw, "attention_bias", source, default=False)
            _require(raw, "mlp_bias", False, source)
            _require(raw, "rope_interleaved", False, source)
        elif model_type == "mistral":
            window = _int(raw, "sliding_window", source, default=None)
        elif model_type in ("qwen2", "qwen3"):
            if model_type == "qwen2":
                qkv_bias = True  # transformers' Qwen2 always has q/k/v biases, whatever the config
                _require(raw, "use_mrope", False, source)
            else:
                qkv_bias = o_bias = _bool(raw, "attention_bias", source, default=False)
            _require(raw, "use_sliding_window", False, source)
            layer_types = raw.get("layer_types")
            if layer_types is not None:
                if not isinstance(layer_types, list) or not all(
                        isinstance(t, str) for t in layer_types):
                    raise ConfigError(f"{source}: layer_types={_short(layer_types)} is not a "
                                      "list of strings")
                if any(t != "full_attention" for t in layer_types):
                    raise ConfigError(f"{source}: layer_types {sorted(set(layer_types))} asks "
                                      "for sliding-window layers, which are not supported for "
                                      f"{model_type}")
        elif model_type == "phi3":
            _require(raw, "attention_bias", False, source)
            window = _int(raw, "sliding_window", source, default=None)
        elif model_type in _GEMMA_FAMILY:
            _require(raw, "attention_bias", False, source)
            if _bool(raw, "use_bidirectional_attention", source, default=False):
                raise ConfigError(f"{source}: use_bidirectional_attention=True is not supported")
        num_layers = _int(raw, "num_hidden_layers", source)
        gemma = {}
        if model_type in _GEMMA_DEFAULTS:
            gemma = _parse_gemma_layers(raw, model_type, num_layers, source)
            window = gemma.pop("sliding_window")
        if model_type == "gemma3_text":
            rope, local_rope = _parse_gemma3_rope(raw, source)
        elif model_type == "phi3":
            rope, local_rope = _parse_phi3_rope(raw, head_dim, source), None
        else:
            rope, local_rope = _parse_rope(raw, source), None

        tie_default = model_type in _GEMMA_FAMILY
        return cls(
            model_type=model_type,
            vocab_size=_int(raw, "vocab_size", source),
            hidden_size=hidden,
            intermediate_size=_int(raw, "intermediate_size", source),
            num_layers=num_layers,
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=_float(raw, "rms_norm_eps", source, default=1e-6, positive=True),
            rope=rope,
            local_rope=local_rope,
            max_position_embeddings=_int(raw, "max_position_embeddings", source, default=4096),
            tie_word_embeddings=_bool(raw, "tie_word_embeddings", source, default=tie_default),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            sliding_window=window,
            **gemma,
            sandwich_norms=model_type in _GEMMA_DEFAULTS,
            qk_norm=model_type in ("qwen3", "gemma3_text"),
            activation=activation,
            norm_offset=1.0 if model_type in _GEMMA_FAMILY else 0.0,
            scale_embeddings=model_type in _GEMMA_FAMILY,
            bos_token_id=_first_token_id(raw, "bos_token_id", source),
            eos_token_ids=token_ids(raw.get("eos_token_id"), "eos_token_id", source),
            pad_token_id=_first_token_id(raw, "pad_token_id", source),
            checkpoint_dtype=_dtype_name(raw, source),
        )

    @classmethod
    def from_json_file(cls, path: str | Path) -> ModelConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: no config.json there") from None
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text ({err})") from None
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
        elif self.model_type == "qwen3":
            out["use_sliding_window"] = False
            out["attention_bias"] = self.qkv_bias
        elif self.model_type in _GEMMA_DEFAULTS:
            out.update(
                hidden_activation="gelu_pytorch_tanh",
                # transformers 5's config classes type it as an int (256, 144, ...)
                query_pre_attn_scalar=_whole(self.query_pre_attn_scalar),
                sliding_window=self.sliding_window,
                layer_types=["sliding_attention" if local else "full_attention"
                             for local in self.local_layers],
                attn_logit_softcapping=self.attn_softcap,
                final_logit_softcapping=self.final_softcap)
            if self.local_rope is not None:
                out["rope_local_base_freq"] = self.local_rope.theta
        elif self.model_type == "phi3":
            out["sliding_window"] = self.sliding_window
            out["partial_rotary_factor"] = self.rope.partial_rotary_factor
            out["original_max_position_embeddings"] = self.rope.original_max_position_embeddings
            if self.rope.rope_type == "longrope":
                out["rope_scaling"] = {"type": "longrope",
                                       "long_factor": list(self.rope.long_factor),
                                       "short_factor": list(self.rope.short_factor)}
                original = self.rope.original_max_position_embeddings
                factor, _ = longrope_defaults(self.max_position_embeddings, original)
                if self.rope.factor != factor:  # written only where not the default
                    out["rope_scaling"]["factor"] = self.rope.factor
                _, attention = longrope_defaults(self.rope.factor * original, original)
                if self.rope.attention_factor != attention:
                    out["rope_scaling"]["attention_factor"] = self.rope.attention_factor
        return out


def _whole(value: float | None) -> float | int | None:
    """An integral float as an int (for config fields that transformers types as int)."""
    return int(value) if value is not None and float(value).is_integer() else value


def _short(value: Any, limit: int = 80) -> str:
    """repr() of a config value, cut short: error messages name the value without a wall of text."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


_MISSING = object()


def _int(raw: Mapping[str, Any], key: str, source: str, default: Any = _MISSING,
         minimum: int = 1) -> Any:
    """An integer >= `minimum`; `default` when absent or null (required when no default)."""
    value = raw.get(key)
    if value is None:
        if default is _MISSING:
            raise ConfigError(f"{source}: required key {key!r} is missing"
                              + (" (null)" if key in raw else ""))
        return default
    # bool is an int subclass in Python, but `"hidden_size": true` is a broken file, not 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{source}: {key}={_short(value)} is not an integer")
    if value < minimum:
        raise ConfigError(f"{source}: {key}={value} must be >= {minimum}")
    return value


def _float(raw: Mapping[str, Any], key: str, source: str, default: float,
           positive: bool = False) -> float:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{source}: {key}={_short(value)} is not a finite number")
    if positive and value <= 0:
        raise ConfigError(f"{source}: {key}={value} must be > 0")
    return float(value)


def _bool(raw: Mapping[str, Any], key: str, source: str, default: bool) -> bool:
    value = raw.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"{source}: {key}={_short(value)} is not true or false")
    return value


def token_ids(value: Any, key: str, source: str) -> tuple[int, ...]:
    """Token ids from an int, a list of ints, or null (the forms transformers writes)."""
    if value is None:
        return ()
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or item < 0:
            raise ConfigError(f"{source}: {key}={_short(value)} is not a token id or a list "
                              "of token ids")
    return tuple(items)


def _first_token_id(raw: Mapping[str, Any], key: str, source: str) -> int | None:
    # A few configs list several BOS/pad ids; only one is ever prepended or padded with, and no
    # computation here reads them (the tokenizer decides), so the first one is kept.
    ids = token_ids(raw.get(key), key, source)
    return ids[0] if ids else None


def _dtype_name(raw: Mapping[str, Any], source: str) -> str | None:
    for key in ("torch_dtype", "dtype"):
        value = raw.get(key)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{source}: {key}={_short(value)} is not a dtype name")
    return raw.get("torch_dtype") or raw.get("dtype")


_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}


def _parse_activation(raw: Mapping[str, Any], model_type: str, source: str) -> str:
    """Our activation name; Gemma's two activation keys must not disagree."""
    found = {}
    for key in ("hidden_activation", "hidden_act"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key}={_short(value)} is not an activation name")
        if model_type in _GEMMA_FAMILY and value == "gelu":
            value = "gelu_pytorch_tanh"  # transformers maps Gemma's legacy "gelu" to the tanh form
        if value not in _ACTIVATIONS:
            raise ConfigError(f"{source}: {key}={value!r} is not supported "
                              f"(supported: {', '.join(_ACTIVATIONS)})")
        found[key] = _ACTIVATIONS[value]
    if len(set(found.values())) > 1:
        # transformers 4.x reads hidden_activation and 5.x reads hidden_act: which one wins
        # depends on the version, so a file where they differ has no single meaning.
        raise ConfigError(f"{source}: hidden_act={raw['hidden_act']!r} and hidden_activation="
                          f"{raw['hidden_activation']!r} disagree")
    if found:
        return next(iter(found.values()))
    return "gelu_tanh" if model_type in _GEMMA_FAMILY else "silu"


def _check_quantization(raw: Mapping[str, Any], source: str) -> None:
    value = raw.get("quantization_config")
    if value is None:
        return
    method = value.get("quant_method") if isinstance(value, Mapping) else None
    if method not in _DEQUANTISED_METHODS:
        raise ConfigError(f"{source}: quantization_config={_short(value)} is not supported: "
                          "only plain floating-point weights can be loaded (dequantise first)")


def _require(raw: Mapping[str, Any], key: str, value: Any, source: str) -> None:
    current = raw.get(key)
    # `type(current) is not type(value)`: 0 == False in Python, but `"mlp_bias": 0` is not false.
    if current is not None and (type(current) is not type(value) or current != value):
        raise ConfigError(f"{source}: {key}={_short(current)} is not supported "
                          f"(only {value!r})")


def _number(params: Mapping[str, Any], key: str, where: str, source: str) -> float:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{source}: {where}.{key}={_short(value)} is not a finite number")
    if value <= 0:
        raise ConfigError(f"{source}: {where}.{key}={value} must be > 0")
    return float(value)


def _optional_number(raw: Mapping[str, Any], key: str, default: float | None,
                     source: str) -> float | None:
    """A positive number, or None where the file says null; `default` where the key is absent
    (a class default: transformers fills in the same)."""
    if key not in raw:
        return default
    if raw[key] is None:
        return None
    return _number(raw, key, key, source)


def _parse_layer_types(raw: Mapping[str, Any], num_layers: int, pattern: int,
                       source: str) -> tuple[bool, ...]:
    """Per layer: local (sliding_attention) or global (full_attention), from `layer_types`, or
    transformers' default pattern (every `pattern`-th layer global)."""
    kinds = {"sliding_attention": True, "full_attention": False}
    layer_types = raw.get("layer_types")
    if layer_types is None:
        return tuple(bool((i + 1) % pattern) for i in range(num_layers))
    if not isinstance(layer_types, list) or not all(t in kinds for t in layer_types):
        raise ConfigError(f"{source}: layer_types={_short(layer_types)} is not a list of "
                          "'sliding_attention' / 'full_attention'")
    if len(layer_types) != num_layers:
        raise ConfigError(f"{source}: layer_types has {len(layer_types)} entries for "
                          f"num_hidden_layers={num_layers}")
    return tuple(kinds[t] for t in layer_types)


def _parse_gemma_layers(raw: Mapping[str, Any], model_type: str, num_layers: int,
                        source: str) -> dict[str, Any]:
    """Gemma 2 / 3: the window and which layers use it, soft-capping and the query scale."""
    defaults = _GEMMA_DEFAULTS[model_type]
    pattern = defaults["sliding_window_pattern"]
    if model_type == "gemma3_text":
        pattern = _int(raw, "sliding_window_pattern", source, default=pattern)
    window = _int(raw, "sliding_window", source, default=None) if "sliding_window" in raw else (
        defaults["sliding_window"])
    sliding = _parse_layer_types(raw, num_layers, pattern, source)
    if model_type == "gemma3_text" and raw.get("attn_logit_softcapping") is not None:
        # Gemma 3 dropped attention soft-capping: transformers' Gemma 3 never applies it.
        cap = _short(raw["attn_logit_softcapping"])
        raise ConfigError(f"{source}: attn_logit_softcapping={cap} is not supported for "
                          "gemma3_text (transformers does not apply it either); only null")
    return {
        "sliding_window": window,
        "sliding_layers": sliding if window is not None else None,
        "query_pre_attn_scalar": _optional_number(raw, "query_pre_attn_scalar",
                                                  defaults["query_pre_attn_scalar"], source),
        "attn_softcap": _optional_number(raw, "attn_logit_softcapping",
                                         defaults["attn_logit_softcapping"], source),
        "final_softcap": _optional_number(raw, "final_logit_softcapping",
                                          defaults["final_logit_softcapping"], source),
    }


def _parse_gemma3_rope(raw: Mapping[str, Any], source: str) -> tuple[RopeConfig, RopeConfig]:
    """Gemma 3's two rotaries: global layers (`rope_theta`, default 1e6, and `rope_scaling`)
    and local layers (`rope_local_base_freq`, default 1e4, never scaled); or transformers 5.x's
    `rope_parameters` keyed by layer type."""
    params = raw.get("rope_parameters")
    if isinstance(params, Mapping) and any(isinstance(v, Mapping) for v in params.values()):
        unknown = set(params) - {"full_attention", "sliding_attention"}
        if unknown:
            raise ConfigError(f"{source}: rope_parameters has layer type(s) {sorted(unknown)}; "
                              "expected full_attention and sliding_attention")
        ropes = []
        for kind, theta in (("full_attention", 1e6), ("sliding_attention", 1e4)):
            entry = params.get(kind) or {}
            if not isinstance(entry, Mapping):
                raise ConfigError(f"{source}: rope_parameters.{kind}={_short(entry)} is not an "
                                  "object")
            ropes.append(_rope_from(dict(entry), f"rope_parameters.{kind}", raw, source, theta))
        return ropes[0], ropes[1]
    local_theta = _float(raw, "rope_local_base_freq", source, 1e4, positive=True)
    return _parse_rope(raw, source, default_theta=1e6), RopeConfig(theta=local_theta)


def _factors(params: Mapping[str, Any], key: str, count: int, where: str, source: str
             ) -> tuple[float, ...]:
    value = params.get(key)
    if not isinstance(value, list) or len(value) != count or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0
            for v in value):
        raise ConfigError(f"{source}: {where}.{key}={_short(value)} is not a list of {count} "
                          "positive numbers (one per rotary pair)")
    return tuple(float(v) for v in value)


def longrope_defaults(max_positions: int, original: int) -> tuple[float, float]:
    """transformers' longrope defaults: the factor is the context's growth over the original
    length, and the attention factor follows from it (LongRoPE's recommendation)."""
    factor = max_positions / original
    attention = math.sqrt(1 + math.log(factor) / math.log(original)) if factor > 1.0 else 1.0
    return factor, attention


def _parse_phi3_rope(raw: Mapping[str, Any], head_dim: int, source: str) -> RopeConfig:
    """Phi-3's rotary: default or longrope (old files say "su" or "yarn"; transformers reads
    both as longrope), with an optional partial rotary factor; from the 4.x keys
    (`rope_theta`, `rope_scaling`, top-level `original_max_position_embeddings` and
    `partial_rotary_factor`) or the 5.x `rope_parameters`."""
    for key in ("rope_parameters", "rope_scaling"):
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise ConfigError(f"{source}: {key}={_short(raw[key])} is not an object or null")
    where = "rope_parameters" if raw.get("rope_parameters") is not None else "rope_scaling"
    params = dict(raw.get(where) or {})
    for key in ("rope_theta", "partial_rotary_factor", "original_max_position_embeddings"):
        if key not in params and raw.get(key) is not None:
            params[key] = raw[key]
    names = {params.pop("rope_type", None), params.pop("type", None)} - {None}
    if len(names) > 1:
        raise ConfigError(f"{source}: {where} gives two rope types {sorted(map(str, names))}")
    rope_type = names.pop() if names else "default"
    if rope_type in ("su", "yarn"):  # Phi-3's early names for the same scheme
        rope_type = "longrope"
    if rope_type not in ("default", "longrope"):
        raise ConfigError(f"{source}: {where}: rope type {_short(rope_type)} is not supported "
                          "for phi3 (supported: default, longrope)")
    kwargs: dict[str, Any] = {"rope_type": rope_type, "theta": 10000.0}
    if "rope_theta" in params:
        kwargs["theta"] = _number(params, "rope_theta", where, source)
    partial = 1.0
    if "partial_rotary_factor" in params:
        partial = _number(params, "partial_rotary_factor", where, source)
        if partial > 1 or int(head_dim * partial) % 2:
            raise ConfigError(f"{source}: partial_rotary_factor={partial} does not leave an even "
                              f"number of rotating dimensions out of head_dim {head_dim}")
    kwargs["partial_rotary_factor"] = partial
    allowed = {"rope_theta", "partial_rotary_factor", "original_max_position_embeddings"}
    if rope_type == "longrope":
        allowed |= {"long_factor", "short_factor", "factor", "attention_factor"}
        pairs = int(head_dim * partial) // 2
        kwargs["short_factor"] = _factors(params, "short_factor", pairs, where, source)
        kwargs["long_factor"] = _factors(params, "long_factor", pairs, where, source)
        if "original_max_position_embeddings" not in params:
            raise ConfigError(f"{source}: longrope needs original_max_position_embeddings")
        original = _int(params, "original_max_position_embeddings", f"{source}: {where}")
        kwargs["original_max_position_embeddings"] = original
        default_factor, _ = longrope_defaults(
            _int(raw, "max_position_embeddings", source, default=4096), original)
        factor = (_number(params, "factor", where, source) if "factor" in params
                  else default_factor)
        kwargs["factor"] = factor
        kwargs["attention_factor"] = (
            _number(params, "attention_factor", where, source) if "attention_factor" in params
            else longrope_defaults(factor * original, original)[1])
    unknown = set(params) - allowed
    if unknown:
        raise ConfigError(f"{source}: {where}: setting(s) {sorted(unknown)} are not understood "
                          f"for rope type {rope_type!r}")
    return RopeConfig(**kwargs)


def _parse_rope(raw: Mapping[str, Any], source: str, default_theta: float = 10000.0
                ) -> RopeConfig:
    """Reads rope settings from the 4.x keys or the 5.x `rope_parameters` dict."""
    for key in ("rope_parameters", "rope_scaling"):
        if raw.get(key) is not None and not isinstance(raw[key], Mapping):
            raise ConfigError(f"{source}: {key}={_short(raw[key])} is not an object or null")
    params = raw.get("rope_parameters")
    where = "rope_parameters"
    if params is not None and "rope_theta" not in params and any(
            isinstance(v, Mapping) for v in params.values()):
        raise ConfigError(f"{source}: per-layer-type rope_parameters are not supported")
    if params is None:
        where = "rope_scaling"
        params = dict(raw.get("rope_scaling") or {})
        if raw.get("rope_theta") is not None:
            params["rope_theta"] = _float(raw, "rope_theta", source, default_theta, positive=True)
    else:
        params = dict(params)
    return _rope_from(params, where, raw, source, default_theta)


def _rope_from(params: dict[str, Any], where: str, raw: Mapping[str, Any], source: str,
               default_theta: float) -> RopeConfig:
    """A RopeConfig from one flat settings dict (`where` names it in errors); `raw` is the whole
    config (Llama 3's `original_max_position_embeddings` defaults to its context length)."""
    names = {params.pop("rope_type", None), params.pop("type", None)} - {None}
    if len(names) > 1:
        raise ConfigError(f"{source}: {where} gives two rope types {sorted(map(str, names))}")
    rope_type = names.pop() if names else "default"
    if rope_type not in _ROPE_TYPES:
        raise ConfigError(f"{source}: {where}: rope type {_short(rope_type)} is not supported "
                          f"(supported: {', '.join(_ROPE_TYPES)})")
    theta = (_number(params, "rope_theta", where, source) if "rope_theta" in params
             else default_theta)
    params.pop("rope_theta", None)
    allowed = {"default": set(), "linear": {"factor"},
               "llama3": {"factor", "low_freq_factor", "high_freq_factor",
                          "original_max_position_embeddings"}}[rope_type]
    # partial_rotary_factor == 1.0 is the default everywhere; anything else changes the math.
    if "partial_rotary_factor" in params:
        if _number(params, "partial_rotary_factor", where, source) != 1.0:
            raise ConfigError(f"{source}: partial_rotary_factor="
                              f"{params['partial_rotary_factor']} is not supported")
        params.pop("partial_rotary_factor")
    unknown = set(params) - allowed
    if unknown:
        raise ConfigError(f"{source}: {where}: setting(s) {sorted(unknown)} are not understood "
                          f"for rope type {rope_type!r}")
    kwargs: dict[str, Any] = {"theta": theta, "rope_type": rope_type}
    for key in ("factor", "low_freq_factor", "high_freq_factor"):
        if key in params:
            kwargs[key] = _number(params, key, where, source)
    if rope_type != "default" and "factor" not in params:
        raise ConfigError(f"{source}: {where} of type {rope_type!r} has no 'factor'")
    if "original_max_position_embeddings" in params:
        kwargs["original_max_position_embeddings"] = _int(
            params, "original_max_position_embeddings", f"{source}: {where}")
    if rope_type == "llama3" and "original_max_position_embeddings" not in params:
        kwargs["original_max_position_embeddings"] = _int(
            raw, "max_position_embeddings", source, default=8192)
    return RopeConfig(**kwargs)
