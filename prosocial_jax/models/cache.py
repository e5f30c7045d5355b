"""The explicit key/value cache pytree of one decoder.

Values are [L, B, G, S, H] (layers, batch, key/value heads, slots, head dimension) and keys
[L, B, G, H, S]: the batch and head axes lead, so attention against the cache is a plain batched
matrix product (2x faster on CPU than slots-before-heads), and the keys keep their slots last,
because one decode step's scores q K^T then stream them at twice the speed of [S, H] keys
(XLA:CPU at 2,048 and 8,192 slots, `benchmarks/row_products.py`). Slots are shared by all rows
of a batch: slot `index` is written for every row at once. Prompts are left-padded, so each
row's real tokens are contiguous and end at the same slot; `valid` marks the slots that hold
real tokens and rotary positions are tracked per row by the caller. A model keeps its own cache,
so guided decoding carries two of these in one state pytree.

Two layouts, following the parameters' (see `models.layers`): stacked, `keys` and `values` one
[L, ...] array each (read by the scanned layers), or per layer, a tuple of L arrays each (read
by the unrolled layers). A layer of a stacked cache is a slice that XLA:CPU copies before every
batched attention product; a per-layer cache is read where it lies.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
from flax import struct

from prosocial_jax.models.config import ModelConfig

# Logical axis names of `keys` ([L, B, G, H, S]), `values` ([L, B, G, S, H]) and `valid`
# ([B, S]), resolved to mesh axes in prosocial_jax.models.sharding.
KEYS_LOGICAL_AXES = ("layers", "batch", "kv_heads", "head_dim", "seq")
VALUES_LOGICAL_AXES = ("layers", "batch", "kv_heads", "seq", "head_dim")
VALID_LOGICAL_AXES = ("batch", "seq")


@struct.dataclass
class KVCache:
    keys: jax.Array | tuple[jax.Array, ...]  # [L, B, G, H, S], or L x [B, G, H, S]
    values: jax.Array | tuple[jax.Array, ...]  # [L, B, G, S, H], or L x [B, G, S, H]
    valid: jax.Array  # [B, S] bool: the slot holds a real (non-padding) token
    index: jax.Array  # int32 scalar: the next slot to write

    @classmethod
    def zeros(cls, config: ModelConfig, batch: int, max_len: int,
              dtype: jnp.dtype = jnp.float32, per_layer: bool = False) -> KVCache:
        values = (batch, config.num_kv_heads, max_len, config.head_dim)

        def empty(shape):
            if per_layer:
                return tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
            return jnp.zeros((config.num_layers, *shape), dtype)

        return cls(
            keys=empty((*values[:2], values[3], values[2])),
            values=empty(values),
            valid=jnp.zeros((batch, max_len), jnp.bool_),
            index=jnp.zeros((), jnp.int32),
        )

    def append(self, keys: jax.Array | tuple[jax.Array, ...],
               values: jax.Array | tuple[jax.Array, ...], token_mask: jax.Array) -> KVCache:
        """Writes T new slots at `index` for every layer and row (in place when donated).

        `keys` are [L, B, G, H, T] and `values` [L, B, G, T, H], or L-tuples of one layer's
        for a per-layer cache (as the forward pass returns them); `token_mask` [B, T] marks the
        real tokens among them.
        """
        layer = self.layer_shape
        if len(keys) != self.num_layers or len(values) != self.num_layers:
            raise ValueError(f"{len(keys)} layers of new keys for a {self.num_layers}-layer "
                             "cache")
        chex.assert_shape(values[0], (*layer[:2], None, layer[3]))
        steps = values[0].shape[2]
        chex.assert_shape(keys[0], (*layer[:2], layer[3], steps))
        chex.assert_shape(token_mask, (layer[0], steps))

        def write(cache, update, slot_axis):
            at = [0] * 4
            at[slot_axis] = self.index
            if self.per_layer:
                return tuple(jax.lax.dynamic_update_slice(c, u.astype(c.dtype), at)
                             for c, u in zip(cache, update, strict=True))
            if isinstance(update, tuple):
                update = jnp.stack(update)
            return jax.lax.dynamic_update_slice(cache, update.astype(cache.dtype), [0, *at])

        return KVCache(
            keys=write(self.keys, keys, 3),
            values=write(self.values, values, 2),
            valid=jax.lax.dynamic_update_slice(self.valid, token_mask.astype(bool),
                                               (0, self.index)),
            index=self.index + steps,
        )

    def take_rows(self, rows: jax.Array) -> KVCache:
        """The cache of rows `rows` [R] (indices into this cache's B rows, repeats allowed): how
        one prefilled prompt's keys and values serve several rows that continue it."""
        def take(x, axis):
            return jnp.take(x, rows, axis=axis)

        def every_layer(buffers):
            if self.per_layer:
                return tuple(take(x, 0) for x in buffers)
            return take(buffers, 1)

        return self.replace(keys=every_layer(self.keys), values=every_layer(self.values),
                            valid=take(self.valid, 0))

    @staticmethod
    def concat_rows(first: KVCache, second: KVCache) -> KVCache:
        """One cache of `first`'s rows, then `second`'s (same slots filled, same layout)."""
        if first.per_layer != second.per_layer:
            raise ValueError("caches of different layouts cannot be joined")
        axis = 0 if first.per_layer else 1
        join = functools.partial(jnp.concatenate, axis=axis)
        return first.replace(keys=jax.tree.map(lambda a, b: join([a, b]), first.keys,
                                               second.keys),
                             values=jax.tree.map(lambda a, b: join([a, b]), first.values,
                                                 second.values),
                             valid=jnp.concatenate([first.valid, second.valid]))

    def where_rows(self, rows: jax.Array, other: KVCache) -> KVCache:
        """This cache's keys and values in the rows where `rows` [B] (bool) is set, `other`'s
        in the rest; slot marks and write index are `other`'s (how a recomputed cache replaces
        some rows of the one in use)."""
        def pick(new, old):
            batch_axis = 0 if self.per_layer else 1
            shape = [1] * old.ndim
            shape[batch_axis] = -1
            return jnp.where(rows.reshape(shape), new, old)

        return other.replace(keys=jax.tree.map(pick, self.keys, other.keys),
                             values=jax.tree.map(pick, self.values, other.values))

    @property
    def per_layer(self) -> bool:
        return isinstance(self.keys, tuple)

    @property
    def num_layers(self) -> int:
        return len(self.keys) if self.per_layer else self.keys.shape[0]

    @property
    def layer_shape(self) -> tuple[int, int, int, int]:
        """[B, G, S, H] of one layer's values (its keys are [B, G, H, S])."""
        return tuple(self.values[0].shape)

    def layer(self, index: int) -> tuple[jax.Array, jax.Array]:
        """Layer `index`'s keys [B, G, H, S] and values [B, G, S, H]."""
        return self.keys[index], self.values[index]

    @property
    def max_len(self) -> int:
        return self.layer_shape[2]

    @property
    def batch_size(self) -> int:
        return self.layer_shape[0]

    def nbytes(self) -> int:
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(self))
