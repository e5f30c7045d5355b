"""The explicit key/value cache pytree of one decoder.

Layout [L, B, G, S, H] (layers, batch, key/value heads, slots, head dimension): the batch and
head axes lead, so attention against the cache is a plain batched matrix product (2x faster on
CPU than slots-before-heads). Slots are shared by all rows of a batch: slot `index` is written for
every row at once. Prompts are left-padded, so each row's real tokens are contiguous and end at
the same slot; `valid` marks the slots that hold real tokens and rotary positions are tracked per
row by the caller. A model keeps its own cache, so guided decoding carries two of these in one
state pytree.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
from flax import struct

from prosocial_jax.models.config import ModelConfig

# Logical axis names of `keys`/`values` ([L, B, G, S, H]) and of `valid` ([B, S]), resolved to
# mesh axes in prosocial_jax.models.sharding.
KV_LOGICAL_AXES = ("layers", "batch", "kv_heads", "seq", "head_dim")
VALID_LOGICAL_AXES = ("batch", "seq")


@struct.dataclass
class KVCache:
    keys: jax.Array  # [L, B, G, S, H]
    values: jax.Array  # [L, B, G, S, H]
    valid: jax.Array  # [B, S] bool: the slot holds a real (non-padding) token
    index: jax.Array  # int32 scalar: the next slot to write

    @classmethod
    def zeros(cls, config: ModelConfig, batch: int, max_len: int,
              dtype: jnp.dtype = jnp.float32) -> KVCache:
        shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
        return cls(
            keys=jnp.zeros(shape, dtype),
            values=jnp.zeros(shape, dtype),
            valid=jnp.zeros((batch, max_len), jnp.bool_),
            index=jnp.zeros((), jnp.int32),
        )

    def append(self, keys: jax.Array, values: jax.Array, token_mask: jax.Array) -> KVCache:
        """Writes T new slots at `index` for every layer and row (in place when donated).

        `keys` and `values` are [L, B, G, T, H] (as a forward pass returns them), `token_mask`
        [B, T] marks the real tokens among them.
        """
        layers, batch, kv_heads, _, head_dim = self.keys.shape
        chex.assert_shape([keys, values], (layers, batch, kv_heads, None, head_dim))
        chex.assert_shape(token_mask, (batch, keys.shape[3]))
        start = (0, 0, 0, self.index, 0)
        return KVCache(
            keys=jax.lax.dynamic_update_slice(self.keys, keys.astype(self.keys.dtype), start),
            values=jax.lax.dynamic_update_slice(self.values, values.astype(self.values.dtype),
                                                start),
            valid=jax.lax.dynamic_update_slice(self.valid, token_mask.astype(bool),
                                               (0, self.index)),
            index=self.index + keys.shape[3],
        )

    @property
    def max_len(self) -> int:
        return self.keys.shape[3]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    def nbytes(self) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self))
