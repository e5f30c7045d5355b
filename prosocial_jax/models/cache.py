"""The explicit key/value cache pytree of one decoder.

Layout [layers, batch, kv_heads, slots, head_dim]: the batch and head axes lead, so attention
against the cache is a plain batched matrix product (2x faster on CPU than slots-before-heads).
Slots are shared by all rows of a batch: slot `index` is written for every row at once. Prompts are
left-padded, so each row's real tokens are contiguous and end at the same slot; `valid` marks the
slots that hold real tokens and rotary positions are tracked per row by the caller. A model keeps
its own cache, so guided decoding carries two of these in one state pytree.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from prosocial_jax.models.config import ModelConfig

# Logical axis names of the cache arrays, resolved to mesh axes in prosocial_jax.models.sharding.
KV_LOGICAL_AXES = ("layers", "batch", "kv_heads", "seq", "head_dim")
VALID_LOGICAL_AXES = ("batch", "seq")


@struct.dataclass
class KVCache:
    k_LxBxKxSxH: jax.Array
    v_LxBxKxSxH: jax.Array
    valid_BxS: jax.Array  # bool: slot holds a real (non-padding) token
    index: jax.Array  # int32 scalar: the next slot to write

    @classmethod
    def zeros(cls, config: ModelConfig, batch: int, max_len: int,
              dtype: jnp.dtype = jnp.float32) -> KVCache:
        shape = (config.num_layers, batch, config.num_kv_heads, max_len, config.head_dim)
        return cls(
            k_LxBxKxSxH=jnp.zeros(shape, dtype),
            v_LxBxKxSxH=jnp.zeros(shape, dtype),
            valid_BxS=jnp.zeros((batch, max_len), jnp.bool_),
            index=jnp.zeros((), jnp.int32),
        )

    def append(self, k_LxBxKxTxH: jax.Array, v_LxBxKxTxH: jax.Array,
               token_mask_BxT: jax.Array) -> KVCache:
        """Writes T new slots at `index` for every layer and row (in place when donated)."""
        start = (0, 0, 0, self.index, 0)
        return KVCache(
            k_LxBxKxSxH=jax.lax.dynamic_update_slice(
                self.k_LxBxKxSxH, k_LxBxKxTxH.astype(self.k_LxBxKxSxH.dtype), start),
            v_LxBxKxSxH=jax.lax.dynamic_update_slice(
                self.v_LxBxKxSxH, v_LxBxKxTxH.astype(self.v_LxBxKxSxH.dtype), start),
            valid_BxS=jax.lax.dynamic_update_slice(
                self.valid_BxS, token_mask_BxT.astype(bool), (0, self.index)),
            index=self.index + k_LxBxKxTxH.shape[3],
        )

    @property
    def max_len(self) -> int:
        return self.k_LxBxKxSxH.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k_LxBxKxSxH.shape[1]

    def nbytes(self) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self))
