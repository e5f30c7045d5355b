"""Choosing the next token from a row's scores: greedy, or temperature / top-k / top-p sampling.

Settings are per row and traced (`SamplingParams`), so one compiled decode program serves any
mix of greedy and sampled rows and changing a setting never recompiles. `sample_tokens` is pure
and takes any scores [B, V] (a model's logits, or guided scores with -inf outside the allowed
set).
"""

from __future__ import annotations

from collections.abc import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct


@struct.dataclass
class SamplingParams:
    """Per-row sampling settings (traced). temperature 0 = greedy; top_k 0 and top_p 1 = off."""

    temperature: jax.Array  # [B] float32
    top_k: jax.Array  # [B] int32
    top_p: jax.Array  # [B] float32

    @classmethod
    def create(cls, batch: int, temperature: float | Sequence[float] = 0.0,
               top_k: int | Sequence[int] = 0, top_p: float | Sequence[float] = 1.0
               ) -> SamplingParams:
        """Validated settings for `batch` rows; each is a scalar or one value per row."""
        def per_row(value, dtype, name):
            array = np.asarray(value, dtype)
            if array.shape not in ((), (batch,)):
                raise ValueError(f"{name}: expected a scalar or {batch} values, got shape "
                                 f"{array.shape}")
            return np.broadcast_to(array, (batch,)).copy()
        temperature_B = per_row(temperature, np.float32, "temperature")
        top_k_B = per_row(top_k, np.int32, "top_k")
        top_p_B = per_row(top_p, np.float32, "top_p")
        if (temperature_B < 0).any():
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if (top_k_B < 0).any():
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        if ((top_p_B <= 0) | (top_p_B > 1)).any():
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        return cls(jnp.asarray(temperature_B), jnp.asarray(top_k_B), jnp.asarray(top_p_B))


def sample_tokens(logits: jax.Array, key: jax.Array, sampling: SamplingParams) -> jax.Array:
    """Tokens [B] int32 from scores [B, V]: greedy where temperature is 0, else temperature /
    top-k / top-p sampling, per row.

    Filters follow transformers' order (temperature, then top-k, then top-p on the renormalised
    top-k distribution). The vocabulary sort needed for top-k/top-p only runs when some row
    uses a filter.
    """
    chex.assert_rank(logits, 2)
    chex.assert_shape([sampling.temperature, sampling.top_k, sampling.top_p],
                      (logits.shape[0],))
    greedy = jnp.argmax(logits, axis=-1).astype(jnp.int32)

    temperature = sampling.temperature
    scaled = logits / jnp.where(temperature > 0, temperature, 1.0)[:, None]

    def draw_unfiltered(_):
        drawn = jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
        return jnp.where(temperature > 0, drawn, greedy)

    def draw(_):
        vocab = logits.shape[-1]
        sorted_desc = -jnp.sort(-scaled, axis=-1)
        top_k = sampling.top_k
        k = jnp.where((top_k > 0) & (top_k < vocab), top_k, vocab)
        kth_value = jnp.take_along_axis(sorted_desc, (k - 1)[:, None], axis=-1)
        in_top_k = jnp.arange(vocab)[None, :] < k[:, None]
        probs = jax.nn.softmax(jnp.where(in_top_k, sorted_desc, -jnp.inf), axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        top_p = sampling.top_p[:, None]
        keep = in_top_k & ((mass_before < top_p) | (top_p >= 1.0))
        last_kept = jnp.maximum(jnp.sum(keep, axis=-1) - 1, 0)
        threshold = jnp.take_along_axis(sorted_desc, last_kept[:, None], axis=-1)
        threshold = jnp.maximum(threshold, kth_value)
        filtered = jnp.where(scaled >= threshold, scaled, -jnp.inf)
        drawn = jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
        return jnp.where(temperature > 0, drawn, greedy)

    # Branches, cheapest first: all greedy; sampling without filters (no vocabulary sort);
    # sampling with top-k / top-p filters (one sort of the vocabulary per row).
    any_filter = jnp.any((sampling.top_k > 0) | (sampling.top_p < 1.0))
    branch = jnp.where(jnp.any(temperature > 0), jnp.where(any_filter, 2, 1), 0)
    return jax.lax.switch(branch, [lambda _: greedy, draw_unfiltered, draw], None)
