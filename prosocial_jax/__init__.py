"""prosocial_jax: safe first, prosocial second, at inference time (ProSocialAlign in JAX).

Public API (see README):

    import prosocial_jax as pj
    m = pj.load_model("bundled:smollm2")
    out = pj.generate(m, ["How do I bake bread?"], max_new_tokens=32)
    pj.save_model(m, "out/smollm2-hf")
    ad = pj.load_adapter("adapter/")                    # a Pv-Arm (PBLoRA) adapter
    out = pj.generate(m, ["I failed my exam."], adapter=ad, preference="empathy=1")
    grid = pj.simplex_grid(ad.config.attributes, step=0.5)  # every preference, 0.5 apart
    per_prompt = pj.sweep(m, ["I failed my exam."], ad, grid)  # one batched decode
    tx = optax.chain(pj.pcgrad(num_attributes=6), optax.adamw(1e-3))

Each pipeline stage is also a curated namespace: `pj.models`, `pj.data`, `pj.decoding`,
`pj.training`, `pj.evaluation`, `pj.direg`, `pj.pvarm` (e.g. `pj.direg.task_vector`,
`pj.evaluation.refusal_rate`); their docstrings list their modules.
"""

from prosocial_jax import data, decoding, direg, evaluation, models, pvarm, training
from prosocial_jax.decoding.decode import Generation, NonFiniteError, generate
from prosocial_jax.decoding.guidance import GuidanceError
from prosocial_jax.decoding.sweep import simplex_grid, sweep
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
    # stage namespaces
    "data",
    "decoding",
    "direg",
    "evaluation",
    "generate",
    "load_adapter",
    "load_model",
    "models",
    "pcgrad",
    "pvarm",
    "save_adapter",
    "save_model",
    "simplex_grid",
    "sweep",
    "training",
]
