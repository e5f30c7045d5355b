"""prosocial_jax: safe first, prosocial second, at inference time (ProSocialAlign in JAX).

Public API (see README):

    import prosocial_jax as pj
    m = pj.load_model("bundled:smollm2")
    out = pj.generate(m, ["How do I bake bread?"], max_new_tokens=32)
    pj.save_model(m, "out/smollm2-hf")
"""

from prosocial_jax.decode import Generation, generate
from prosocial_jax.models.config import ConfigError, ModelConfig
from prosocial_jax.models.hf import CheckpointError
from prosocial_jax.models.model import Model, load_model, save_model
from prosocial_jax.pblora import Adapter, AdapterConfig, load_adapter, save_adapter

__all__ = [
    "Adapter",
    "AdapterConfig",
    "CheckpointError",
    "ConfigError",
    "Generation",
    "Model",
    "ModelConfig",
    "generate",
    "load_adapter",
    "load_model",
    "save_adapter",
    "save_model",
]
