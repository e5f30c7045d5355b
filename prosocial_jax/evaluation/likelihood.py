"""Response log-likelihood: how probable a model finds the response tokens of a sequence.

One computation serves three uses, so they cannot drift apart:
- the harmful fine-tune's loss (`direg.finetune.sft_loss`: minus the mean over response tokens),
- the Pv-Arm reward r(x, y), the summed log-likelihood of the response under the adapter
  (`sequence_log_likelihood`, `pair_margins`; trained by `pvarm.objective`, measured by
  `preference_accuracy`),
- the fluency guard (`mean_log_likelihood`): the mean per-token log-probability of reference
  responses, e.g. the base model's own benign answers under an edited model. A large drop means
  an edit broke the model's language, whatever the refusal numbers say.

Token t of a sequence is scored by the logits at position t - 1, in float32, as
logit[target] - logsumexp(logits): no [B, T, V] log-softmax copy is made. A response mask marks
the scored tokens (prompt and padding unmarked; a response's final EOS marked, so a model is
also scored on stopping).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prosocial_jax.data.sft import SFTExample, encode_sft, sft_batch
from prosocial_jax.models import sharding
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import forward_logits
from prosocial_jax.models.model import Model


def response_log_probs(logits: jax.Array, tokens: jax.Array,
                       response: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token log-probabilities of the response tokens, and their weights.

    logits [B, T, V] of a forward pass over tokens [B, T]; response [B, T] marks the tokens to
    score. Returns (log-probabilities [B, T - 1], 0 where unmarked; weights [B, T - 1], 1.0 on
    the marked tokens), both float32: entry t - 1 is about token t.
    """
    logits_BxTxV = logits[:, :-1].astype(jnp.float32)
    picked_BxT = jnp.take_along_axis(logits_BxTxV, tokens[:, 1:, None], axis=-1)[..., 0]
    log_probs_BxT = picked_BxT - jax.nn.logsumexp(logits_BxTxV, axis=-1)
    weights_BxT = response[:, 1:].astype(jnp.float32)
    return log_probs_BxT * weights_BxT, weights_BxT


def sequence_log_likelihood(config: ModelConfig, params, tokens: jax.Array,
                            attention: jax.Array, response: jax.Array,
                            adapter_config: Any = None, adapter=None, preference=None,
                            dropout_key=None) -> jax.Array:
    """Summed log-probability of each row's response tokens [R] (the Pv-Arm reward r(x, y)).

    tokens, attention, response [R, T]; with a PBLoRA adapter, preference [R, K].
    """
    logits = forward_logits(config, params, tokens, attention, adapter_config, adapter,
                            preference, dropout_key)
    log_probs_RxT, _ = response_log_probs(logits, tokens, response)
    return jnp.sum(log_probs_RxT, axis=-1)


def pair_margins(config: ModelConfig, params, batch: dict[str, jax.Array], adapter_config: Any,
                 adapter, preference: jax.Array, dropout_key=None) -> jax.Array:
    """m = r(x, y_a) - r(x, y_b) [P] for a batch of preference pairs under one preference [K].

    batch: tokens / attention / response [P, 2, T], response a first (`data.preferences.
    pair_batch`); both responses of all pairs run as one [2P, T] forward pass.
    """
    pairs, _, length = batch["tokens"].shape
    flat = {name: batch[name].reshape(2 * pairs, length)
            for name in ("tokens", "attention", "response")}
    preference_RxK = jnp.broadcast_to(preference, (2 * pairs, preference.shape[-1]))
    rewards_Px2 = sequence_log_likelihood(config, params, flat["tokens"], flat["attention"],
                                          flat["response"], adapter_config, adapter,
                                          preference_RxK, dropout_key).reshape(pairs, 2)
    return rewards_Px2[:, 0] - rewards_Px2[:, 1]


@functools.partial(jax.jit, static_argnums=0)
def _summed_log_likelihood(config, params, tokens_BxT, attention_BxT, response_BxT):
    logits = forward_logits(config, params, tokens_BxT, attention_BxT)
    log_probs_BxT, weights_BxT = response_log_probs(logits, tokens_BxT, response_BxT)
    return jnp.sum(log_probs_BxT, axis=1), jnp.sum(weights_BxT, axis=1)


def mean_log_likelihood(model: Model, prompts: Sequence, responses: Sequence[str],
                        batch_size: int = 8, max_len: int = 512) -> float:
    """Mean per-token log-probability of `responses` (given their prompts) under `model`."""
    examples = [SFTExample(*encode_sft(model.tokenizer, p, r, max_len), line=i)
                for i, (p, r) in enumerate(zip(prompts, responses))]
    total, count = 0.0, 0.0
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        chunk += [chunk[-1]] * (batch_size - len(chunk))  # fixed batch shape; weights below
        batch = sft_batch(chunk, model.pad_id, max_len)
        log_likelihood, tokens = _summed_log_likelihood(
            model.config, model.params, batch["tokens"], batch["attention_mask"],
            batch["loss_mask"])
        real = min(batch_size, len(examples) - start)
        total += float(np.sum(sharding.to_host(log_likelihood)[:real]))
        count += float(np.sum(sharding.to_host(tokens)[:real]))
    return total / max(count, 1.0)
