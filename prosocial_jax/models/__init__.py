"""The model core: decoder configs, the Flax decoder and its KV cache, the projection table,
HF / GGUF checkpoint I/O, sharding rules and PBLoRA adapters.

Everything else in prosocial_jax is built on this package, and it imports nothing above it
(only the leaf utilities `files` and `settings`), so a model can be loaded, run, sharded and
saved without any pipeline stage.

Shape letters, one meaning each across the whole package. They appear in shape comments
(`keys: jax.Array  # [L, B, G, S, H]`) and as suffixes of local names (`logits_BxV`); public
fields and parameters have plain names.

    B  batch rows
    T  positions in a forward pass
    S  cache slots
    C  generated tokens (the decode output length)
    L  layers
    D  model width
    F  MLP hidden width
    V  vocabulary
    N  query heads
    G  key/value heads
    Q  query heads per key/value head (N = G * Q)
    H  head dimension
    K  attributes (the Pv-Arm's preference weights)
    P  preference pairs
    R  rows the reward model scores
    W  recent-token window (guidance history)
    E  banned token sequences (guidance)
"""

from prosocial_jax.models.adapters import (
    Adapter,
    AdapterConfig,
    AdapterError,
    extend_adapter,
    init_adapter,
    load_adapter,
    save_adapter,
)
from prosocial_jax.models.cache import KVCache
from prosocial_jax.models.config import ConfigError, ModelConfig
from prosocial_jax.models.hf import CheckpointError
from prosocial_jax.models.model import Model, load_model, save_model
from prosocial_jax.models.projections import PROJECTIONS, Projection
from prosocial_jax.models.sharding import make_mesh, memory_report

__all__ = ["PROJECTIONS", "Adapter", "AdapterConfig", "AdapterError", "CheckpointError",
           "ConfigError", "KVCache", "Model", "ModelConfig", "Projection", "extend_adapter",
           "init_adapter",
           "load_adapter", "load_model", "make_mesh", "memory_report", "save_adapter",
           "save_model"]
