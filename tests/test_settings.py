"""Settings dataclasses: every field holds its declared type, or the error names it."""

import pytest

from prosocial_jax.direg.finetune import FinetuneSettings
from prosocial_jax.models.adapters import AdapterConfig, AdapterError
from prosocial_jax.pvarm.train import ArmSettings


def test_lossless_conversions_only():
    settings = ArmSettings(learning_rate=1, betas=[0.5, 2], beta=3)
    assert settings.learning_rate == 1.0 and isinstance(settings.learning_rate, float)
    assert settings.betas == (0.5, 2.0) and isinstance(settings.betas, tuple)
    assert AdapterConfig(attributes=["a", "b"], safety_attribute="a").attributes == ("a", "b")


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": "3"}, "arm settings: steps must be an integer, got '3'"),
    ({"steps": 2.5}, "steps must be an integer, got 2.5"),
    ({"pcgrad": 1}, "pcgrad must be true or false, got 1"),
    ({"beta": -0.01}, "beta must be > 0, got -0.01"),
    ({"beta": 0.0}, "beta must be > 0, got 0.0"),
    ({"betas": (0.1, -1.0)}, r"betas must be > 0, got \(0.1, -1.0\)"),
    ({"betas": "0.1"}, "betas must be a list of numbers, got '0.1'"),
    ({"learning_rate": float("nan")}, "learning_rate must be finite"),
    ({"grad_clip": -1.0}, "grad_clip must be >= 0"),
])
def test_arm_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArmSettings(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"r1": True}, "r1 must be an integer, got True"),
    ({"lora_alpha": -8.0}, "lora_alpha must be > 0, got -8.0"),
    ({"lora_alpha": "8"}, "lora_alpha must be a number, got '8'"),
    ({"attributes": "empathy"}, "attributes must be a list of strings"),
    ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
])
def test_adapter_config_names_the_field(kwargs, message):
    with pytest.raises(AdapterError, match=message):
        AdapterConfig(**kwargs)


@pytest.mark.parametrize("kwargs,message", [
    ({"lora_alpha": 0.0}, "lora_alpha must be > 0"),
    ({"lora_targets": ("q_proj", "qkv")}, r"lora_targets \['qkv'\] are not projections"),
    ({"grad_clip": 0.0}, "grad_clip must be > 0"),
    ({"compute_dtype": 16}, "compute_dtype must be a string, got 16"),
])
def test_finetune_settings_name_the_field(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FinetuneSettings(**kwargs)
