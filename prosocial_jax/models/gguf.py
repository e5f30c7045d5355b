"""GGUF files (llama.cpp) -> HF-named float tensors, an HF config dict and a tokenizer, no torch.

Architectures: llama, qwen2, qwen3, gemma, gemma2, gemma3 (text) and phi3, with llama.cpp's
tensor names and metadata keys (`gguf.constants`). Where a GGUF file carries less than the HF
config (Gemma 2 / 3 have no query_pre_attn_scalar in GGUF), llama.cpp's own rule is followed.

Tensors and metadata are read with the `gguf` package (its reader and dequantisers). llama.cpp
stores the q/k rows of Llama-architecture models permuted for its interleaved rotary kernel; they
are permuted back here so the rest of prosocial_jax sees ordinary HF weights. Gemma files store
RMSNorm weights with the +1 already added; it is removed. The tokenizer is rebuilt from the
file's `tokenizer.ggml.*` metadata with transformers' own GGUF tokenizer converters, which need
only `tokenizers`.

Every failure while reading is a CheckpointError naming the file and, where known, the tensor or
metadata key: a bad magic, metadata cut short or corrupted, tensor data past the end of the file,
a tensor type the file cannot hold, NaN or +-inf in a dequantised weight.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from prosocial_jax.models.hf import CheckpointError, check_finite

_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# Where an architecture's llama.cpp names mean other HF modules than Llama's (the names are
# gguf.constants.MODEL_TENSOR's): Gemma 2 / 3 norm each sub-block's output too, and their
# "ffn_norm" is the MLP's input norm; Phi-3 stores q/k/v as one attn_qkv and gate/up as one
# ffn_up (split on load, see hf.FUSED_PROJECTIONS).
_GEMMA_LAYER_NAMES = {"post_attention_norm": "post_attention_layernorm",
                      "ffn_norm": "pre_feedforward_layernorm",
                      "post_ffw_norm": "post_feedforward_layernorm"}
_ARCH_LAYER_NAMES = {
    "gemma2": _GEMMA_LAYER_NAMES,
    "gemma3": _GEMMA_LAYER_NAMES,
    "phi3": {"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
}
_NORM_SHIFTED = ("gemma", "gemma2", "gemma3")  # norms stored as scale, not (scale - 1)
_ROPE_FACTOR_TENSORS = {"rope_factors_long.weight": "long_factor",
                        "rope_factors_short.weight": "short_factor"}  # Phi-3's longrope
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_ARCH_TO_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma": "gemma",
                       "gemma2": "gemma2", "gemma3": "gemma3_text", "phi3": "phi3"}
_REQUIRED = object()


def hf_tensor_name(gguf_name: str, architecture: str = "llama") -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    names = {**_LAYER_NAMES, **_ARCH_LAYER_NAMES.get(architecture, {})}
    match = _LAYER_RE.match(gguf_name)
    if match and match.group(2) in names:
        layer, kind, leaf = match.groups()
        suffix = "weight" if kind.endswith("norm") else leaf
        return f"model.layers.{layer}.{names[kind]}.{suffix}"
    raise CheckpointError(f"GGUF tensor {gguf_name!r} has no counterpart in a supported decoder")


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's convert-time q/k permutation (rows grouped per head in halves)."""
    rows = weight.shape[0]
    return (weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def permute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's convert-time permutation (used to write GGUF test fixtures)."""
    rows = weight.shape[0]
    return (weight.reshape(num_heads, 2, rows // num_heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


class _TruncatedError(Exception):
    """Raised inside the reader when a read runs past the end of the file."""


class _CheckedReader(gguf.GGUFReader):
    """gguf's reader, made to fail fast and by name on a file that is cut short or corrupt.

    The stock reader slices its memory map without checking the length: a read past the end
    returns a short array, which surfaces later as an unrelated IndexError or reshape error, or
    (an array length corrupted to 2**40 over empty reads) as a loop that never ends. `_get` and
    `_build_tensors` are internal to gguf 0.19 (pinned in pyproject.toml); both overrides only
    add checks and then defer to the original.
    """

    def _get(self, offset, dtype, count=1, override_order=None):
        if offset + np.dtype(dtype).itemsize * int(count) > len(self.data):
            raise _TruncatedError(f"the file ends at byte {len(self.data)}, but its header "
                                  f"needs {int(count)} x {np.dtype(dtype).name} at byte {offset}")
        return super()._get(offset, dtype, count, override_order)

    def _build_tensors(self, start_offs, fields):
        size = len(self.data)
        for field in fields:
            name = bytes(field.parts[1]).decode("utf-8", errors="replace")
            dims, raw_type, offset = field.parts[3], field.parts[4], field.parts[5]
            try:
                qtype = gguf.GGMLQuantizationType(int(raw_type[0]))
            except ValueError:
                raise CheckpointError(f"tensor {name!r} has unknown type code "
                                      f"{int(raw_type[0])}") from None
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            elements = math.prod(int(d) for d in dims)
            start = start_offs + int(offset[0])
            end = start + elements * type_size // block
            if end > size:
                raise CheckpointError(
                    f"tensor {name!r} ({qtype.name}, shape {[int(d) for d in dims]}) needs bytes "
                    f"{start}..{end}, but the file ends at byte {size} (truncated?)")
        super()._build_tensors(start_offs, fields)


class GGUFFile:
    """A parsed GGUF file: its metadata as plain Python values and lazily dequantised tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such GGUF file")
        try:
            self.reader = _CheckedReader(self.path)
            self.metadata: dict[str, Any] = {
                name: field.contents() for name, field in self.reader.fields.items()
                if not name.startswith("GGUF.")}
        except CheckpointError as err:
            raise CheckpointError(f"{self.path}: {err}") from err
        except _TruncatedError as err:
            raise CheckpointError(f"{self.path}: not a readable GGUF file: truncated or "
                                  f"corrupted header ({err})") from err
        except Exception as err:  # the reader raises bare ValueError/KeyError/IndexError
            raise CheckpointError(f"{self.path}: not a readable GGUF file "
                                  f"({type(err).__name__}: {err})") from err
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.architecture = self.metadata.get("general.architecture")
        if self.architecture not in _ARCH_TO_MODEL_TYPE:
            raise CheckpointError(
                f"{self.path}: GGUF architecture {self.architecture!r} is not supported "
                f"(supported: {', '.join(_ARCH_TO_MODEL_TYPE)})")

    def meta(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    def _number(self, key: str, kind: type, default: Any = _REQUIRED, arch: bool = True) -> Any:
        """A scalar metadata value of `kind` (int or float), or a CheckpointError naming it."""
        full = f"{self.architecture}.{key}" if arch else key
        value = self.metadata.get(full)
        if value is None:
            if default is _REQUIRED:
                raise CheckpointError(f"{self.path}: GGUF metadata {full!r} is missing")
            return default
        ok = (isinstance(value, int | float) and not isinstance(value, bool)
              and (kind is float or isinstance(value, int)) and math.isfinite(value))
        if not ok or (kind is int and value < 0):
            raise CheckpointError(f"{self.path}: GGUF metadata {full}={value!r:.80} is not "
                                  f"a{'n integer' if kind is int else ' number'}")
        return kind(value)

    # ------------------------------------------------------------------ config
    def hf_config(self) -> dict[str, Any]:
        """The equivalent transformers config dict (4.x dialect)."""
        understood = {"rope.scaling.type", "rope.scaling.factor"}
        if self.architecture == "phi3":
            understood |= {"rope.scaling.attn_factor", "rope.scaling.original_context_length"}
        for key in self.metadata:
            if key.startswith(f"{self.architecture}.rope.scaling") and key.removeprefix(
                    f"{self.architecture}.") not in understood:
                raise CheckpointError(f"{self.path}: GGUF key {key!r} is not supported")
        if "rope_freqs.weight" in self.tensors:
            raise CheckpointError(f"{self.path}: tensor 'rope_freqs.weight' (Llama-3.1 rope "
                                  "frequency factors in GGUF form) is not supported; load the "
                                  "HF safetensors checkpoint instead")
        heads = self._number("attention.head_count", int)
        hidden = self._number("embedding_length", int)
        rope_scaling = None
        scaling_type = self.meta("rope.scaling.type")
        if scaling_type not in (None, "none"):
            if scaling_type != "linear":
                raise CheckpointError(f"{self.path}: GGUF rope.scaling.type {scaling_type!r} "
                                      "is not supported")
            rope_scaling = {"rope_type": "linear",
                            "factor": self._number("rope.scaling.factor", float)}
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        vocab = (self._number("vocab_size", int, default=0)
                 or (len(tokens) if isinstance(tokens, list) else 0)
                 or (int(self.tensors["token_embd.weight"].shape[-1])
                     if "token_embd.weight" in self.tensors else 0))
        key_length = self._number("attention.key_length", int, default=None)
        config: dict[str, Any] = {
            "model_type": _ARCH_TO_MODEL_TYPE[self.architecture],
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": self._number("feed_forward_length", int),
            "num_hidden_layers": self._number("block_count", int),
            "num_attention_heads": heads,
            "num_key_value_heads": self._number("attention.head_count_kv", int, default=heads),
            "head_dim": key_length or (hidden // heads if heads else 0),
            "rms_norm_eps": self._number("attention.layer_norm_rms_epsilon", float,
                                         default=1e-6),
            "rope_theta": self._number("rope.freq_base", float, default=10000.0),
            "rope_scaling": rope_scaling,
            "max_position_embeddings": self._number("context_length", int, default=4096),
            "tie_word_embeddings": "output.weight" not in self.tensors,
            "bos_token_id": self._number("tokenizer.ggml.bos_token_id", int, None, arch=False),
            "eos_token_id": self._number("tokenizer.ggml.eos_token_id", int, None, arch=False),
            "pad_token_id": self._number("tokenizer.ggml.padding_token_id", int, None,
                                         arch=False),
            "torch_dtype": "float32",
        }
        if config["model_type"] in ("qwen2", "qwen3"):
            config["use_sliding_window"] = False
        if config["model_type"] in ("llama", "qwen3"):  # biases show as tensors only
            config["attention_bias"] = "blk.0.attn_q.bias" in self.tensors
        if self.architecture in ("gemma2", "gemma3"):
            config.update(self._gemma_config(config))
        if self.architecture == "phi3":
            config.update(self._phi3_config(config))
        return config

    def _gemma_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """Gemma 2 / 3's window, soft-caps, query scale and (3) local rotary base."""
        extra: dict[str, Any] = {
            "sliding_window": self._number("attention.sliding_window", int, default=4096)}
        # llama.cpp keeps no query_pre_attn_scalar: it scales by head_dim, but by
        # hidden / heads for the 27B models (Gemma 2: 46 layers, Gemma 3: 62), whose
        # query_pre_attn_scalar that is. The same rule here.
        layers, heads = config["num_hidden_layers"], config["num_attention_heads"]
        big = layers == (46 if self.architecture == "gemma2" else 62)
        extra["query_pre_attn_scalar"] = (config["hidden_size"] // heads if big
                                          else config["head_dim"])
        if self.architecture == "gemma2":
            extra["attn_logit_softcapping"] = self._number("attn_logit_softcapping", float,
                                                           default=50.0)
            extra["final_logit_softcapping"] = self._number("final_logit_softcapping", float,
                                                            default=30.0)
        else:
            extra["rope_local_base_freq"] = self._number("rope.freq_base_swa", float,
                                                         default=10000.0)
            pattern = self.meta("attention.sliding_window_pattern")
            if isinstance(pattern, list):  # newer files: one flag per layer
                extra["layer_types"] = ["sliding_attention" if p else "full_attention"
                                        for p in pattern]
            else:
                extra["sliding_window_pattern"] = self._number(
                    "attention.sliding_window_pattern", int, default=6)
            extra["final_logit_softcapping"] = None
            extra["attn_logit_softcapping"] = None
        return extra

    def _phi3_config(self, config: dict[str, Any]) -> dict[str, Any]:
        """Phi-3's window, partial rotary and longrope (its factors are tensors in GGUF)."""
        extra: dict[str, Any] = {
            "sliding_window": self._number("attention.sliding_window", int, default=None)}
        rotating = self._number("rope.dimension_count", int, default=config["head_dim"])
        extra["partial_rotary_factor"] = rotating / config["head_dim"]
        factors = {key: self.tensors[name] for name, key in _ROPE_FACTOR_TENSORS.items()
                   if name in self.tensors}
        if factors:
            scaling = {"type": "longrope"}
            for key, tensor in factors.items():
                scaling[key] = [float(v) for v in np.asarray(tensor.data, np.float32).ravel()]
            extra["original_max_position_embeddings"] = self._number(
                "rope.scaling.original_context_length", int)
            attn_factor = self._number("rope.scaling.attn_factor", float, default=None)
            if attn_factor is not None:
                scaling["attention_factor"] = attn_factor
            extra["rope_scaling"] = scaling
        return extra

    # ------------------------------------------------------------------ tensors
    def hf_tensors(self) -> tuple[set[str], Callable[[str], np.ndarray]]:
        """HF names and a getter returning dequantised float32 tensors in HF layout."""
        by_hf_name: dict[str, str] = {}
        for name in self.tensors:
            if name in _ROPE_FACTOR_TENSORS:  # read into the config, not weights
                continue
            try:
                by_hf_name[hf_tensor_name(name, self.architecture)] = name
            except CheckpointError as err:
                raise CheckpointError(f"{self.path}: {err}") from None
        heads = self._number("attention.head_count", int)
        kv_heads = self._number("attention.head_count_kv", int, default=heads)

        def get(hf_name: str) -> np.ndarray:
            tensor = self.tensors[by_hf_name[hf_name]]
            shape = tuple(int(d) for d in reversed(tensor.shape))
            try:
                value = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
                value = np.asarray(value, dtype=np.float32).reshape(shape)
            except Exception as err:  # gguf raises bare NotImplementedError/ValueError
                raise CheckpointError(
                    f"{self.path}: tensor {tensor.name!r} ({tensor.tensor_type.name}, shape "
                    f"{list(shape)}) could not be dequantised ({type(err).__name__}: {err})"
                ) from err
            check_finite(value, str(self.path), tensor.name, hf_name)
            if self.architecture == "llama" and (".q_proj." in hf_name or ".k_proj." in hf_name):
                count = heads if ".q_proj." in hf_name else kv_heads
                if value.shape[0] % (2 * count):
                    raise CheckpointError(
                        f"{self.path}: tensor {tensor.name!r} has {value.shape[0]} rows, which "
                        f"do not split into {count} heads of rotary pairs")
                value = unpermute_rows(value, count)
            if self.architecture in _NORM_SHIFTED and hf_name.endswith("norm.weight"):
                value = value - 1.0
            return value

        return set(by_hf_name), get

    # ------------------------------------------------------------------ tokenizer
    def tokenizer(self):
        """A transformers fast tokenizer (with chat template) built from the file's metadata."""
        from transformers import PreTrainedTokenizerFast
        from transformers.integrations.gguf.gguf_tokenizer_mapping import (
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
        )

        if "tokenizer.ggml.tokens" not in self.metadata:
            raise CheckpointError(f"{self.path}: the GGUF file carries no tokenizer")
        grouped = {
            group: {name: self.metadata[f"tokenizer.{key}"] for key, name in renames.items()
                    if f"tokenizer.{key}" in self.metadata}
            for group, renames in GGUF_TOKENIZER_MAPPING.items()}
        tokenizer_dict, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
        if tokenizer_dict.get("tokenizer_type") == "llama":
            tokenizer_config.setdefault("add_bos_token", True)
        tokens = tokenizer_dict["tokens"]
        for name, key in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                          ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
            token_id = self._number(f"tokenizer.ggml.{key}", int, None, arch=False)
            if token_id is not None and token_id >= len(tokens):
                raise CheckpointError(f"{self.path}: GGUF metadata tokenizer.ggml.{key}="
                                      f"{token_id} is outside the {len(tokens)}-token vocabulary")
            tokenizer_config[name] = tokens[token_id] if token_id is not None else None
        try:
            backend, extra = convert_gguf_tokenizer(self.architecture, tokenizer_dict)
            return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)
        except Exception as err:  # tokenizers/transformers raise many kinds on bad metadata
            raise CheckpointError(f"{self.path}: the tokenizer in the GGUF metadata could not "
                                  f"be built ({type(err).__name__}: {err})") from err
