"""Builders and references shared by the tests (imported by test modules and conftest.py).

Tiny random checkpoints of every supported family are built with transformers from a config (no
download); the PyTorch model object is kept as the outside reference.
"""

import dataclasses
from pathlib import Path

import numpy as np

VOCAB = 128


@dataclasses.dataclass
class TinyCheckpoint:
    family: str
    path: Path
    torch_model: object  # transformers PreTrainedModel (float32, eval mode)


def tiny_hf_config(family: str):
    import transformers

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, vocab_size=VOCAB,
                  bos_token_id=1, eos_token_id=2, pad_token_id=0, max_position_embeddings=256)
    if family == "llama":  # Llama-3 rope scaling, GQA 2, untied
        return transformers.LlamaConfig(
            **common, num_attention_heads=4, num_key_value_heads=2, rope_theta=500000.0,
            rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                          "high_freq_factor": 4.0, "original_max_position_embeddings": 16})
    if family == "llama_mesh":  # head counts that split over a 4-way "model" axis
        return transformers.LlamaConfig(**common, num_attention_heads=8, num_key_value_heads=4,
                                        tie_word_embeddings=True)
    if family == "mistral":  # sliding window shorter than the test sequences, GQA 4
        return transformers.MistralConfig(**common, num_attention_heads=4, num_key_value_heads=1,
                                          sliding_window=6)
    if family == "qwen2":  # q/k/v biases
        return transformers.Qwen2Config(**common, num_attention_heads=4, num_key_value_heads=2)
    if family == "gemma":  # tied embeddings, explicit head_dim != hidden/heads, GeGLU
        return transformers.GemmaConfig(**common, num_attention_heads=4, num_key_value_heads=1,
                                        head_dim=32)
    raise ValueError(family)


def build_tiny_checkpoint(family: str, folder: Path, seed: int = 0) -> TinyCheckpoint:
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(tiny_hf_config(family)).eval()
    randomize(model, norm_offset=0.0 if family == "gemma" else 1.0)
    model.save_pretrained(folder)
    return TinyCheckpoint(family, folder, model)


def randomize(model, norm_offset: float) -> None:
    """Larger-than-default weights: logits spread out (no argmax near-ties, learnable heads)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(norm_offset + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15)


FAMILIES = ("llama", "mistral", "qwen2", "gemma")


def torch_logits(torch_model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch_model(torch.tensor(np.asarray(ids))).logits.float().numpy()
