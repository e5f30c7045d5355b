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
0: unlabelled) and beta_i. So one batched backward pass that keeps each response's adapter
gradient (cheap: the adapter is small) gives all K gradients as K weighted sums
(`per_attribute_gradients`), ready for PCGrad (`pcgrad.pcgrad`).

Optional winner anchor (lambda_i > 0, per attribute; 0 is the paper's objective):

    L_i += lambda_i * mean over attribute i's labelled pairs of -r(x, y_win_i) / |y_win_i|

Bradley-Terry alone is satisfied by making the loser unlikely, wherever the probability mass
goes, and a pair stops teaching once its first differing token has won it. Guided decoding's
safety stage reads the Pv-Arm's next-token distribution itself, so it needs the mass on the
winners: on the demo set, BT alone moved the first token of harmful requests to tokens that
neither refusals nor compliances start with ("The", "**"). The anchor (the per-token NLL of the
winner, as in DPO + NLL objectives) keeps the mass where the winners go.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from prosocial_jax.evaluation.likelihood import sequence_log_likelihood
from prosocial_jax.models.config import ModelConfig

# The K gradients feed PCGrad, which decides conflicts by the sign of their dot products. TPUs
# run float32 matmuls at bfloat16 precision by default, so the combination asks for float32.
EXACT = jax.lax.Precision.HIGHEST


def labelled_count(labels: jax.Array) -> jax.Array:
    """[K] pairs each attribute labels (at least 1: the mean over none is 0, not NaN)."""
    return jnp.maximum(jnp.sum(labels != 0, axis=0), 1).astype(jnp.float32)


def attribute_losses(margins: jax.Array, labels: jax.Array,
                     betas: jax.Array) -> dict[str, jax.Array]:
    """Per-attribute Bradley-Terry loss, accuracy and mean signed margin over labelled pairs,
    and the labelled-pair count, each [K].

    margins [P]; labels [P, K] (+1 / -1 / 0); betas [K].
    """
    labels_PxK = labels.astype(jnp.float32)
    labelled_PxK = labels_PxK != 0
    count_K = labelled_count(labels)
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
    count_K = labelled_count(labels)
    signed_PxK = labels_PxK * margins[:, None]
    # d/dm softplus(-beta * s * m) = -beta * s * sigmoid(-beta * s * m)
    coefficient_PxK = (-betas * labels_PxK * jax.nn.sigmoid(-betas * signed_PxK)
                       * labelled_PxK / count_K)
    return coefficient_PxK.T


def winner_nll(log_likelihoods: jax.Array, lengths: jax.Array,
               labels: jax.Array) -> jax.Array:
    """Per attribute [K]: the mean over its labelled pairs of the winner's per-token negative
    log-likelihood. log_likelihoods, lengths [P, 2] (response a, then b); labels [P, K]."""
    winner_a_PxK = (labels > 0).astype(jnp.float32)
    winner_b_PxK = (labels < 0).astype(jnp.float32)
    per_token_Px2 = log_likelihoods / jnp.maximum(lengths, 1.0)
    count_K = labelled_count(labels)
    return -(per_token_Px2[:, :1] * winner_a_PxK
             + per_token_Px2[:, 1:] * winner_b_PxK).sum(axis=0) / count_K


def reward_coefficients(log_likelihoods: jax.Array, lengths: jax.Array, labels: jax.Array,
                        betas: jax.Array, nll_weights: jax.Array | None = None) -> jax.Array:
    """dL_i/dr as a [K, P, 2] array (r of response a, then b) for L_i = Bradley-Terry +
    nll_weights[i] * winner NLL (None: no anchor): attribute i's gradient is
    sum_{p,s} c[i, p, s] * grad r_{p,s}."""
    margins_P = log_likelihoods[:, 0] - log_likelihoods[:, 1]
    bt_KxP = loss_coefficients(margins_P, labels, betas)  # m = r_a - r_b
    coefficients_KxPx2 = jnp.stack([bt_KxP, -bt_KxP], axis=-1)
    if nll_weights is not None:
        count_K = labelled_count(labels)
        winners_KxPx2 = jnp.stack([labels > 0, labels < 0], axis=-1).astype(
            jnp.float32).transpose(1, 0, 2)
        weights_K = jnp.broadcast_to(jnp.asarray(nll_weights, jnp.float32), count_K.shape)
        coefficients_KxPx2 -= ((weights_K / count_K)[:, None, None] * winners_KxPx2
                               / jnp.maximum(lengths, 1.0)[None])
    return coefficients_KxPx2


def per_attribute_gradients(config: ModelConfig, params, adapter_config: Any, adapter,
                            batch: dict[str, jax.Array], labels: jax.Array, betas: jax.Array,
                            preference: jax.Array, dropout_key=None,
                            nll_weights: jax.Array | None = None
                            ) -> tuple[Any, dict[str, jax.Array]]:
    """The K attribute gradients w.r.t. the adapter, stacked [K, ...], from one backward pass.

    batch: tokens / attention / response [P, 2, T]; labels [P, K]; betas, preference and the
    winner-anchor weights `nll_weights` [K] (or a scalar; None: no anchor). Every response's
    reward and its adapter gradient come from one vmapped value-and-grad over the 2P responses
    (the backbone is batched as usual; only the small adapter gradient keeps a response axis).
    Then g_i = sum over responses of dL_i/dr * grad r (`reward_coefficients`).
    Returns (stacked gradients, {"margins": [P], "winner_nll": [K]}).
    """
    def reward(adapter_params, tokens, attention, response, key):
        return sequence_log_likelihood(config, params, tokens[None], attention[None],
                                       response[None], adapter_config, adapter_params,
                                       preference[None], key)[0]

    pairs, _, length = batch["tokens"].shape
    flat = [batch[name].reshape(2 * pairs, length) for name in ("tokens", "attention",
                                                               "response")]
    keys = (None if dropout_key is None
            else jax.vmap(lambda i: jax.random.fold_in(dropout_key, i))(jnp.arange(2 * pairs)))
    rewards_R, per_response = jax.vmap(jax.value_and_grad(reward),
                                       in_axes=(None, 0, 0, 0, None if keys is None else 0))(
        adapter, *flat, keys)
    rewards_Px2 = rewards_R.reshape(pairs, 2)
    # The reward scores response tokens from the second position on (`response_log_probs`).
    lengths_Px2 = jnp.sum(batch["response"][..., 1:], axis=-1).astype(jnp.float32)
    coefficients_KxR = reward_coefficients(rewards_Px2, lengths_Px2, labels, betas,
                                           nll_weights).reshape(labels.shape[1], 2 * pairs)
    stacked = jax.tree.map(
        lambda g: jnp.tensordot(coefficients_KxR, g, axes=1, precision=EXACT), per_response)
    return stacked, {"margins": rewards_Px2[:, 0] - rewards_Px2[:, 1],
                     "winner_nll": winner_nll(rewards_Px2, lengths_Px2, labels)}
