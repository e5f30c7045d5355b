"""Best-of-N reranking with the Pv-Arm as scorer: the test-time baseline guided decoding is
measured against (`ablations.overhead`).

N answers per prompt are sampled from the model by plain decoding, each is scored by the
Pv-Arm's reward under the row's preference alpha, r(x, y) = sum_t log pi_r(y_t | x, y_<t; alpha)
(the autoregressive reward the adapter is trained as, `evaluation.likelihood`), and the best
answer is kept. Guided decoding samples pi_b * pi_r^w token by token; best-of-N reaches for the
same target from whole answers of pi_b, and has no token-level safety stage.

Scoring reuses the prompt: its keys and values under the Pv-Arm are computed once per prompt
and copied to its N answers, which then run as one [N, T] forward pass over that cache, so a
long prompt costs once, not N times.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from prosocial_jax.decoding.decode import Generation, generate, is_token_ids
from prosocial_jax.decoding.guidance import row_preferences
from prosocial_jax.models import layers
from prosocial_jax.models.adapters import Adapter, check_adapter_fits
from prosocial_jax.models.cache import KVCache
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import forward_with_cache, positions_from_mask
from prosocial_jax.models.model import Model
from prosocial_jax.models.tokenizer import encode_prompt


@dataclasses.dataclass
class RerankedGeneration(Generation):
    """The chosen answer, its reward r(x, y) and the rewards of all N answers (sampling
    order)."""

    reward: float = 0.0
    candidate_rewards: list[float] = dataclasses.field(default_factory=list)


@functools.partial(jax.jit, static_argnames=("config", "adapter_config", "copies"))
def answer_rewards(config: ModelConfig, adapter_config, params, adapter_params,
                   prompts: jax.Array, prompt_mask: jax.Array, answers: jax.Array,
                   answer_mask: jax.Array, preference: jax.Array, copies: int) -> jax.Array:
    """r(x, y) [B * copies] of `copies` answers [B * copies, T] (mask: their real tokens, a
    prefix of each row) per left-padded prompt [B, P], under one preference per prompt [B, K].
    Answer row i continues prompt i // copies."""
    rows, length = answers.shape
    cache = KVCache.zeros(config, prompts.shape[0], prompts.shape[1] + length,
                          jax.tree.leaves(params)[0].dtype, per_layer=layers.is_per_layer(params))
    adapted = dict(adapter_config=adapter_config, adapter=adapter_params)
    last, (k, v) = forward_with_cache(config, params, prompts, positions_from_mask(prompt_mask),
                                      prompt_mask, None, preference=preference, **adapted)
    source = jnp.arange(rows) // copies
    cache = cache.append(k, v, prompt_mask).take_rows(source)
    positions = jnp.sum(prompt_mask, axis=-1)[source][:, None] + jnp.arange(length)[None]
    logits, _ = forward_with_cache(config, params, answers, positions, answer_mask, cache,
                                   last_only=False, preference=preference[source], **adapted)
    # Token t of an answer is predicted by the prompt's last position (t = 0) or by answer
    # position t - 1.
    predicting = jnp.concatenate([last[source][:, None], logits[:, :-1]], axis=1)
    log_probs = jax.nn.log_softmax(predicting.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, answers[..., None], axis=-1)[..., 0]
    return jnp.sum(jnp.where(answer_mask, picked, 0.0), axis=-1)


def _padded(rows: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[np.ndarray,
                                                                               np.ndarray]:
    width = max(max(len(r) for r in rows), 1)
    tokens = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), bool)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if left else slice(0, len(row))
        tokens[i, span], mask[i, span] = row, True
    return tokens, mask


def best_of_n(model: Model, prompts: Sequence[Any], n: int, adapter: Adapter, *,
              reward: Model | None = None, preference=None, preferences=None,
              max_new_tokens: int = 128, temperature: float = 1.0, seed: int = 0,
              batch_size: int | None = None, stop_tokens: Sequence[int] | None = None,
              score_batch: int = 8, use_chat_template: bool | None = None,
              progress: bool = False) -> list[RerankedGeneration]:
    """For every prompt (text, chat messages or token ids), the best of `n` answers sampled
    from `model` at `temperature`, by the Pv-Arm reward under the prompt's preference
    (`preference` for all, or `preferences` per prompt, as `generate` takes them); ties go to
    the first sampled. `score_batch` prompts are scored at a time."""
    if n < 1:
        raise ValueError(f"best_of_n: n must be >= 1, got {n}")
    if not prompts:
        return []
    reward = reward or model
    check_adapter_fits(adapter, reward.config)
    alpha, _ = row_preferences(adapter, preference, len(prompts), preferences)
    encoded = [list(map(int, p)) if is_token_ids(p)
               else encode_prompt(model.tokenizer, p, use_chat_template) for p in prompts]
    rows = [ids for ids in encoded for _ in range(n)]
    sampled = generate(model, rows, max_new_tokens=max_new_tokens, temperature=temperature,
                       seed=seed, batch_size=batch_size, stop_tokens=stop_tokens,
                       progress=progress)
    params = layers.for_forward(reward.params, "auto", reward.mesh)
    pad = model.pad_id
    chosen: list[RerankedGeneration] = []
    for start in range(0, len(encoded), score_batch):
        group = list(range(start, min(start + score_batch, len(encoded))))
        group += [group[-1]] * (score_batch - len(group))  # one compiled shape per call
        prompt_ids, prompt_mask = _padded([encoded[i] for i in group], pad, left=True)
        answers = [sampled[i * n + j].tokens or [pad] for i in group for j in range(n)]
        answer_ids, answer_mask = _padded(answers, pad, left=False)
        answer_mask &= np.asarray([[bool(sampled[i * n + j].tokens)] for i in group
                                   for j in range(n)])
        rewards = np.asarray(answer_rewards(
            reward.config, adapter.config, params, adapter.params, jnp.asarray(prompt_ids),
            jnp.asarray(prompt_mask), jnp.asarray(answer_ids), jnp.asarray(answer_mask),
            jnp.asarray(alpha[group]), copies=n)).reshape(len(group), n)
        for position, prompt in enumerate(group[:min(score_batch, len(encoded) - start)]):
            best = int(np.argmax(rewards[position]))
            fields = {f.name: getattr(sampled[prompt * n + best], f.name)
                      for f in dataclasses.fields(Generation)}
            chosen.append(RerankedGeneration(
                **{**fields, "prompt": prompts[prompt], "preference": alpha[prompt].tolist()},
                reward=float(rewards[position, best]),
                candidate_rewards=rewards[position].tolist()))
    return chosen
