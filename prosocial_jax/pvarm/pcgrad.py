"""PCGrad over attribute-stacked gradients, as an optax transformation.

`pcgrad()` consumes a gradient pytree whose leaves have a leading attribute axis K and returns
the combined update sum_i alpha_i * g_i^PC (alpha passed as `preference=` to `update`). For
each i, g_i^PC starts at g_i and, for every j != i in a fresh random order, loses its component
along g_j when the two conflict (g_i^PC . g_j < 0):

    g_i^PC -= (g_i^PC . g_j) / (||g_j||^2 + eps) * g_j

Dot products are global over the whole pytree. Every g_i^PC stays a linear combination of the
original g_j, so the projections run on the K x K Gram matrix and K x K coefficients only; the
pytree is touched twice (Gram matrix, final weighted sum), whatever K. With `project=False` the
same path returns the plain preference-weighted sum (the ablation).

The transformation knows nothing of where the K gradients come from; Pv-Arm gets them from one
backward pass (`objective.per_attribute_gradients`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# The Gram matrix decides which gradients conflict (the sign of a dot product) and how far to
# project. TPUs run float32 matmuls at bfloat16 precision by default, enough to flip the sign of
# a small dot product, so these few products ask for full float32 precision.
EXACT = jax.lax.Precision.HIGHEST


class PCGradState(NamedTuple):
    key: jax.Array  # for the per-step random orders
    conflicts: jax.Array  # int32: attribute pairs (i < j) with g_i . g_j < 0 at the last step
    cosines: jax.Array  # [K, K] cosine similarities of the last step's raw gradients


def gram_matrix(stacked) -> jax.Array:
    """[K, K] global dot products between the K gradients of an attribute-stacked pytree."""
    def leaf_gram(g):
        flat = g.reshape(g.shape[0], -1).astype(jnp.float32)
        return jnp.matmul(flat, flat.T, precision=EXACT)
    return sum(leaf_gram(g) for g in jax.tree.leaves(stacked))


def projection_coefficients(gram, orders, eps: float = 1e-12) -> jax.Array:
    """W [K, K] with g_i^PC = sum_m W[i, m] g_m, running PCGrad on the Gram matrix.

    `orders[i]` is a permutation of range(K) (entry i itself is skipped).
    """
    k = gram.shape[0]
    rows = []
    for i in range(k):
        w = jnp.eye(k, dtype=gram.dtype)[i]
        for position in range(k):
            j = orders[i, position]
            dot = jnp.dot(w, gram[:, j], precision=EXACT)
            conflict = (j != i) & (dot < 0)
            w = jnp.where(conflict, w - dot / (gram[j, j] + eps) * jax.nn.one_hot(j, k), w)
        rows.append(w)
    return jnp.stack(rows)


def random_orders(key: jax.Array, num_attributes: int) -> jax.Array:
    """[K, K]: row i is the random order in which attribute i meets the others this step."""
    return jax.vmap(lambda i: jax.random.permutation(jax.random.fold_in(key, i),
                                                     num_attributes))(jnp.arange(num_attributes))


def pcgrad(num_attributes: int, project: bool = True, seed: int = 0,
           eps: float = 1e-12) -> optax.GradientTransformationExtraArgs:
    """PCGrad + preference weighting: stacked [K, ...] gradients in, one update out.

    Use inside `optax.chain` (e.g. before AdamW) and call `update(..., preference=alpha)`.
    """
    def init_fn(params):
        del params
        return PCGradState(jax.random.key(seed), jnp.zeros((), jnp.int32),
                           jnp.zeros((num_attributes, num_attributes), jnp.float32))

    def update_fn(updates, state, params=None, *, preference):
        del params
        gram = gram_matrix(updates)
        if gram.shape != (num_attributes, num_attributes):
            raise ValueError(f"pcgrad expects {num_attributes} stacked gradients, got "
                             f"{gram.shape[0]}")
        key, step_key = jax.random.split(state.key)
        if project:
            weights = projection_coefficients(gram, random_orders(step_key, num_attributes), eps)
        else:
            weights = jnp.eye(num_attributes, dtype=gram.dtype)
        mix = jnp.dot(jnp.asarray(preference, jnp.float32), weights,
                      precision=EXACT)  # [K] over the raw gradients
        combined = jax.tree.map(
            lambda g: jnp.tensordot(mix, g.astype(jnp.float32), axes=1,
                                    precision=EXACT).astype(g.dtype), updates)
        norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
        cosines = gram / jnp.maximum(jnp.outer(norms, norms), eps)
        upper = jnp.triu(jnp.ones_like(gram, bool), 1)
        conflicts = jnp.sum((gram < 0) & upper).astype(jnp.int32)
        return combined, PCGradState(key, conflicts, cosines)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
