"""prosocial_jax: safe first, prosocial second, at inference time (ProSocialAlign in JAX).

Public API (see README):

    import prosocial_jax as pj
    m = pj.load_model("bundled:smollm2")
    out = pj.generate(m, ["How do I bake bread?"], max_new_tokens=32)
    pj.save_model(m, "out/smollm2-hf")
    ad = pj.load_adapter("adapter/")                    # a Pv-Arm (PBLoRA) adapter
    out = pj.generate(m, ["I failed my exam."], adapter=ad, preference="empathy=1")
    tx = optax.chain(pj.pcgrad(num_attributes=6), optax.adamw(1e-3))
"""

from prosocial_jax.decoding.decode import Generation, NonFiniteError, generate
from prosocial_jax.decoding.guidance import GuidanceError
from prosocial_jax.models.adapters import Adapter, AdapterConfig, load_adapter, save_adapter
from prosocial_jax.models.config import ConfigError, ModelConfig
from prosocial_jax.models.hf import CheckpointError
from prosocial_jax.models.model import Model, load_model, save_model
from prosocial_jax.pvarm.pcgrad import pcgrad

__all__ = [
    "Adapter",
    "AdapterConfig",
    "CheckpointError",
    "ConfigError",
    "Generation",
    "GuidanceError",
    "Model",
    "ModelConfig",
    "NonFiniteError",
    "generate",
    "load_adapter",
    "load_model",
    "pcgrad",
    "save_adapter",
    "save_model",
]
