"""The autoregressive reward model (ARM) objective of Pv-Arm.

    r(x, y) = sum over response tokens t of log pi_r(y_t | x, y_<t)      (prompt, padding masked;
                                                                          the final EOS scored)
    L_i     = -log sigmoid(beta_i * (r(x, y_win_i) - r(x, y_lose_i)))    (Bradley-Terry, per
                                                                          attribute, no reference)

A preference pair is scored once per preference vector; its K attribute losses share the same
margin m = r(x, y_a) - r(x, y_b) and differ only in the label s_i (+1: a wins, -1: b wins,
0: unlabelled) and beta_i. That is what lets `pcgrad.per_attribute_gradients` get all K
gradients from one backward pass.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import forward_logits


def sequence_rewards(config: ModelConfig, params, tokens_RxT, attention_RxT, response_RxT,
                     adapter_config: Any = None, adapter=None, preference_RxK=None,
                     dropout_key=None) -> jax.Array:
    """r(x, y) per row [R]: summed log-probabilities of the tokens marked in `response_RxT`.

    `response_RxT[r, t]` marks token t as a response token (the response's final EOS included);
    its log-probability comes from the logits at t - 1.
    """
    logits = forward_logits(config, params, tokens_RxT, attention_RxT, adapter_config, adapter,
                            preference_RxK, dropout_key)[:, :-1]
    targets = tokens_RxT[:, 1:]
    picked = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    log_probs = picked - jax.nn.logsumexp(logits, axis=-1)  # no [R, T, V] log-softmax copy
    weights = response_RxT[:, 1:].astype(jnp.float32)
    return jnp.sum(log_probs * weights, axis=-1)


def pair_margins(config, params, batch, adapter_config, adapter, preference_K,
                 dropout_key=None) -> jax.Array:
    """m = r(x, y_a) - r(x, y_b) for a batch of pairs: tokens etc. are [N, 2, T] (a first)."""
    n, _, t = batch["tokens"].shape
    flat = {k: batch[k].reshape(2 * n, t) for k in ("tokens", "attention", "response")}
    preference = jnp.broadcast_to(preference_K, (2 * n, preference_K.shape[-1]))
    rewards = sequence_rewards(config, params, flat["tokens"], flat["attention"],
                               flat["response"], adapter_config, adapter, preference,
                               dropout_key).reshape(n, 2)
    return rewards[:, 0] - rewards[:, 1]


def attribute_losses(margins_N, labels_NxK, betas_K) -> dict[str, jax.Array]:
    """Per-attribute Bradley-Terry loss, accuracy and mean signed margin over labelled pairs."""
    labels = labels_NxK.astype(jnp.float32)
    labelled = labels != 0
    count = jnp.maximum(jnp.sum(labelled, axis=0), 1).astype(jnp.float32)
    signed = labels * margins_N[:, None]  # > 0 when the model prefers the labelled winner
    losses = jax.nn.softplus(-betas_K * signed) * labelled
    return {"loss": jnp.sum(losses, axis=0) / count,
            "accuracy": jnp.sum((signed > 0) & labelled, axis=0) / count,
            "margin": jnp.sum(signed * labelled, axis=0) / count,
            "labelled": jnp.sum(labelled, axis=0)}


def loss_coefficients(margins_N, labels_NxK, betas_K) -> jax.Array:
    """dL_i/dm_n as a [K, N] matrix: attribute i's gradient is sum_n c[i, n] * grad m_n."""
    labels = labels_NxK.astype(jnp.float32)
    labelled = labels != 0
    count = jnp.maximum(jnp.sum(labelled, axis=0), 1).astype(jnp.float32)
    signed = labels * margins_N[:, None]
    # d/dm softplus(-beta * s * m) = -beta * s * sigmoid(-beta * s * m)
    coefficient = -betas_K * labels * jax.nn.sigmoid(-betas_K * signed) * labelled / count
    return coefficient.T
