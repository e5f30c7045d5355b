"""The autoregressive reward model (ARM) objective of Pv-Arm, and the cheap way to get its K
attribute gradients.

    r(x, y) = sum over response tokens t of log pi_r(y_t | x, y_<t)      (prompt, padding masked;
                                                                          the final EOS scored)
    L_i     = -log sigmoid(beta_i * (r(x, y_win_i) - r(x, y_lose_i)))    (Bradley-Terry, per
                                                                          attribute, no reference)

r is the response log-likelihood under the adapter (`evaluation.likelihood.
sequence_log_likelihood`; the pair margin is `likelihood.pair_margins`), the same quantity the
held-out preference accuracy measures.

A preference pair is scored once per preference vector; its K attribute losses share the same
margin m = r(x, y_a) - r(x, y_b) and differ only in the label s_i (+1: a wins, -1: b wins,
0: unlabelled) and beta_i. So one batched backward pass that keeps per-pair adapter gradients
(cheap: the adapter is small) gives all K gradients (`per_attribute_gradients`), ready for
PCGrad (`pcgrad.pcgrad`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from prosocial_jax.evaluation.likelihood import pair_margins
from prosocial_jax.models.config import ModelConfig

# The K gradients feed PCGrad, which decides conflicts by the sign of their dot products. TPUs
# run float32 matmuls at bfloat16 precision by default, so the combination asks for float32.
EXACT = jax.lax.Precision.HIGHEST


def attribute_losses(margins: jax.Array, labels: jax.Array,
                     betas: jax.Array) -> dict[str, jax.Array]:
    """Per-attribute Bradley-Terry loss, accuracy and mean signed margin over labelled pairs,
    and the labelled-pair count, each [K].

    margins [P]; labels [P, K] (+1 / -1 / 0); betas [K].
    """
    labels_PxK = labels.astype(jnp.float32)
    labelled_PxK = labels_PxK != 0
    count_K = jnp.maximum(jnp.sum(labelled_PxK, axis=0), 1).astype(jnp.float32)
    signed_PxK = labels_PxK * margins[:, None]  # > 0 when the model prefers the labelled winner
    losses_PxK = jax.nn.softplus(-betas * signed_PxK) * labelled_PxK
    return {"loss": jnp.sum(losses_PxK, axis=0) / count_K,
            "accuracy": jnp.sum((signed_PxK > 0) & labelled_PxK, axis=0) / count_K,
            "margin": jnp.sum(signed_PxK * labelled_PxK, axis=0) / count_K,
            "labelled": jnp.sum(labelled_PxK, axis=0)}


def loss_coefficients(margins: jax.Array, labels: jax.Array, betas: jax.Array) -> jax.Array:
    """dL_i/dm_p as a [K, P] matrix: attribute i's gradient is sum_p c[i, p] * grad m_p.

    margins [P]; labels [P, K]; betas [K].
    """
    labels_PxK = labels.astype(jnp.float32)
    labelled_PxK = labels_PxK != 0
    count_K = jnp.maximum(jnp.sum(labelled_PxK, axis=0), 1).astype(jnp.float32)
    signed_PxK = labels_PxK * margins[:, None]
    # d/dm softplus(-beta * s * m) = -beta * s * sigmoid(-beta * s * m)
    coefficient_PxK = (-betas * labels_PxK * jax.nn.sigmoid(-betas * signed_PxK)
                       * labelled_PxK / count_K)
    return coefficient_PxK.T


def per_attribute_gradients(config: ModelConfig, params, adapter_config: Any, adapter,
                            batch: dict[str, jax.Array], labels: jax.Array, betas: jax.Array,
                            preference: jax.Array, dropout_key=None) -> tuple[Any, jax.Array]:
    """The K attribute gradients w.r.t. the adapter, stacked [K, ...], from one backward pass.

    batch: tokens / attention / response [P, 2, T]; labels [P, K]; betas, preference [K].
    Per-pair margins and their adapter gradients come from one vmapped value-and-grad (the
    backbone is batched as usual; only the small adapter gradient keeps a pair axis). Then
    g_i = sum_p dL_i/dm_p * grad m_p. Returns (stacked gradients, margins [P]).
    """
    def margin(adapter_params, pair, key):
        single = {k: v[None] for k, v in pair.items()}
        return pair_margins(config, params, single, adapter_config, adapter_params,
                            preference, key)[0]

    pairs = labels.shape[0]
    keys = (None if dropout_key is None
            else jax.vmap(lambda i: jax.random.fold_in(dropout_key, i))(jnp.arange(pairs)))
    margins_P, per_pair = jax.vmap(jax.value_and_grad(margin),
                                   in_axes=(None, 0, None if keys is None else 0))(
        adapter, batch, keys)
    coefficients_KxP = loss_coefficients(margins_P, labels, betas)
    stacked = jax.tree.map(
        lambda g: jnp.tensordot(coefficients_KxP, g, axes=1, precision=EXACT), per_pair)
    return stacked, margins_P
