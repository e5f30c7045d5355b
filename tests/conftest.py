"""Test set-up: 8 simulated CPU devices, offline hub, tiny checkpoints.

Tiny random checkpoints of every supported family are built with transformers from a config (no
download) and saved to a session temp folder; the PyTorch model object is kept as the reference.
"""

import os

# Must happen before jax is imported anywhere.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import dataclasses
from pathlib import Path

import numpy as np
import pytest

# No persistent compilation cache: with jaxlib 0.10 on CPU, a multi-device executable read back
# from it aborts the process (seen in CI on the 4x2-mesh fine-tune test).

VOCAB = 128


@dataclasses.dataclass
class TinyCheckpoint:
    family: str
    path: Path
    torch_model: object  # transformers PreTrainedModel (float32, eval mode)


def _tiny_hf_config(family: str):
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
    model = transformers.AutoModelForCausalLM.from_config(_tiny_hf_config(family)).eval()
    _randomize(model, norm_offset=0.0 if family == "gemma" else 1.0)
    model.save_pretrained(folder)
    return TinyCheckpoint(family, folder, model)


def _randomize(model, norm_offset: float) -> None:
    """Larger-than-default weights: logits spread out (no argmax near-ties, learnable heads)."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name:
                param.copy_(norm_offset + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, 0.15)


FAMILIES = ("llama", "mistral", "qwen2", "gemma")


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, TinyCheckpoint]:
    root = tmp_path_factory.mktemp("tiny")
    return {family: build_tiny_checkpoint(family, root / family)
            for family in (*FAMILIES, "llama_mesh")}


@pytest.fixture(params=FAMILIES)
def tiny(request, tiny_checkpoints) -> TinyCheckpoint:
    return tiny_checkpoints[request.param]


def torch_logits(torch_model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return torch_model(torch.tensor(np.asarray(ids))).logits.float().numpy()


@pytest.fixture(scope="session")
def smollm2():
    import prosocial_jax as pj

    return pj.load_model("bundled:smollm2")


@pytest.fixture(scope="session")
def smollm2_torch():
    """transformers' own GGUF loading of the same file: the outside reference."""
    import torch
    import transformers

    from prosocial_jax.models.model import bundled_model_path

    path = bundled_model_path("smollm2")
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model, tokenizer


@pytest.fixture(scope="session")
def tiny_chat(tmp_path_factory) -> TinyCheckpoint:
    """A tiny random Llama that speaks SmolLM2's tokenizer and chat template (for SFT tests)."""
    import torch
    import transformers

    from prosocial_jax.models.gguf import GGUFFile
    from prosocial_jax.models.model import bundled_model_path

    folder = tmp_path_factory.mktemp("tiny_chat")
    tokenizer = GGUFFile(bundled_model_path("smollm2")).tokenizer()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=len(tokenizer), bos_token_id=1, eos_token_id=2,
        pad_token_id=2, max_position_embeddings=512, tie_word_embeddings=True)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    _randomize(model, norm_offset=1.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return TinyCheckpoint("llama", folder, model)


def pytest_terminal_summary(terminalreporter):
    """The fault-injection tally (tests/test_faults.py), when that module ran."""
    import sys

    faults = sys.modules.get("test_faults")
    if faults is not None and faults.TALLY:
        tally = faults.TALLY
        terminalreporter.write_line(
            f"fault injection: {tally['inputs']} inputs tried, {tally['faults']} faults "
            f"injected, {tally['bystander_bytes']} bytes of bystander files checked, 0 lost")
