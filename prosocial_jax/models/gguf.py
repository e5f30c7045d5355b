"""GGUF files (llama.cpp) -> HF-named float tensors, an HF config dict and a tokenizer, no torch.

Tensors and metadata are read with the `gguf` package (its reader and dequantisers). llama.cpp
stores the q/k rows of Llama-architecture models permuted for its interleaved rotary kernel; they
are permuted back here so the rest of prosocial_jax sees ordinary HF weights. Gemma files store
RMSNorm weights with the +1 already added; it is removed. The tokenizer is rebuilt from the
file's `tokenizer.ggml.*` metadata with transformers' own GGUF tokenizer converters, which need
only `tokenizers`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gguf
import numpy as np

from prosocial_jax.models.hf import CheckpointError

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
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")
_ARCH_TO_MODEL_TYPE = {"llama": "llama", "qwen2": "qwen2", "gemma": "gemma"}


def hf_tensor_name(gguf_name: str) -> str:
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER_RE.match(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        layer, kind, leaf = match.groups()
        suffix = "weight" if kind.endswith("norm") else leaf
        return f"model.layers.{layer}.{_LAYER_NAMES[kind]}.{suffix}"
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


class GGUFFile:
    """A parsed GGUF file: its metadata as plain Python values and lazily dequantised tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such GGUF file")
        try:
            self.reader = gguf.GGUFReader(self.path)
        except Exception as err:  # the reader raises bare ValueError/struct errors
            raise CheckpointError(f"{self.path}: not a readable GGUF file ({err})") from err
        self.metadata: dict[str, Any] = {
            name: field.contents() for name, field in self.reader.fields.items()
            if not name.startswith("GGUF.")}
        self.tensors = {t.name: t for t in self.reader.tensors}
        self.architecture = self.metadata.get("general.architecture")
        if self.architecture not in _ARCH_TO_MODEL_TYPE:
            raise CheckpointError(
                f"{self.path}: GGUF architecture {self.architecture!r} is not supported "
                f"(supported: {', '.join(_ARCH_TO_MODEL_TYPE)})")

    def meta(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    # ------------------------------------------------------------------ config
    def hf_config(self) -> dict[str, Any]:
        """The equivalent transformers config dict (4.x dialect)."""
        for key in self.metadata:
            if key.startswith(f"{self.architecture}.rope.scaling") and key not in (
                    f"{self.architecture}.rope.scaling.type",
                    f"{self.architecture}.rope.scaling.factor"):
                raise CheckpointError(f"{self.path}: GGUF key {key!r} is not supported")
        if "rope_freqs.weight" in self.tensors:
            raise CheckpointError(f"{self.path}: tensor 'rope_freqs.weight' (Llama-3.1 rope "
                                  "frequency factors in GGUF form) is not supported; load the "
                                  "HF safetensors checkpoint instead")
        heads = int(self.meta("attention.head_count"))
        hidden = int(self.meta("embedding_length"))
        rope_scaling = None
        scaling_type = self.meta("rope.scaling.type")
        if scaling_type not in (None, "none"):
            if scaling_type != "linear":
                raise CheckpointError(f"{self.path}: GGUF rope.scaling.type {scaling_type!r} "
                                      "is not supported")
            rope_scaling = {"rope_type": "linear",
                            "factor": float(self.meta("rope.scaling.factor"))}
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        vocab = int(self.meta("vocab_size") or (len(tokens) if tokens else 0)
                    or self.tensors["token_embd.weight"].shape[-1])
        key_length = self.meta("attention.key_length")
        config: dict[str, Any] = {
            "model_type": _ARCH_TO_MODEL_TYPE[self.architecture],
            "vocab_size": vocab,
            "hidden_size": hidden,
            "intermediate_size": int(self.meta("feed_forward_length")),
            "num_hidden_layers": int(self.meta("block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(self.meta("attention.head_count_kv", heads)),
            "head_dim": int(key_length) if key_length else hidden // heads,
            "rms_norm_eps": float(self.meta("attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(self.meta("rope.freq_base", 10000.0)),
            "rope_scaling": rope_scaling,
            "max_position_embeddings": int(self.meta("context_length", 4096)),
            "tie_word_embeddings": "output.weight" not in self.tensors,
            "bos_token_id": self.metadata.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.metadata.get("tokenizer.ggml.eos_token_id"),
            "pad_token_id": self.metadata.get("tokenizer.ggml.padding_token_id"),
            "torch_dtype": "float32",
        }
        if config["model_type"] == "qwen2":
            config["use_sliding_window"] = False
        return config

    # ------------------------------------------------------------------ tensors
    def hf_tensors(self) -> tuple[set[str], Callable[[str], np.ndarray]]:
        """HF names and a getter returning dequantised float32 tensors in HF layout."""
        by_hf_name = {hf_tensor_name(name): name for name in self.tensors}
        heads = int(self.meta("attention.head_count"))
        kv_heads = int(self.meta("attention.head_count_kv", heads))

        def get(hf_name: str) -> np.ndarray:
            tensor = self.tensors[by_hf_name[hf_name]]
            value = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
            value = np.asarray(value, dtype=np.float32).reshape(
                tuple(int(d) for d in reversed(tensor.shape)))
            if self.architecture == "llama":
                if ".q_proj." in hf_name:
                    value = unpermute_rows(value, heads)
                elif ".k_proj." in hf_name:
                    value = unpermute_rows(value, kv_heads)
            if self.architecture == "gemma" and hf_name.endswith("norm.weight"):
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
            token_id = self.metadata.get(f"tokenizer.ggml.{key}")
            tokenizer_config[name] = tokens[token_id] if token_id is not None else None
        backend, extra = convert_gguf_tokenizer(self.architecture, tokenizer_dict)
        return PreTrainedTokenizerFast(tokenizer_object=backend, **tokenizer_config, **extra)
