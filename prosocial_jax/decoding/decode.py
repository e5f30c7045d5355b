"""Batched, KV-cached decoding: a jitted `lax.scan` over chunks of steps, driven by a host loop.

The decode state (`DecodeState`) is one pytree; `prefill` fills it from the prompts,
`decode_chunk` advances it by a fixed number of steps, and `generate` is the host loop around
them. The host loop only reads two booleans per chunk ("is every row done?", "has any row
failed?"), and it reads the flags of the chunk *before* the one it just dispatched, so the device
never waits for the host. Sampling settings (temperature, top-k, top-p; see `sampling`) are
per-row traced arrays: changing them never recompiles. Prompts are left-padded; each row keeps
its own rotary position while all rows share cache slots. Batch size (powers of two up to 32)
and prompt length (multiples of 32) are bucketed so that new prompts rarely trigger a compile.

Non-finite numbers are caught where they enter: at every step each active row's next-token
distributions (base logits; with guidance also the Pv-Arm's two sets of logits and the guided
score) must have a finite maximum, i.e. no NaN, no +inf, and not -inf everywhere. Otherwise the
argmax silently picks token 0. The first failing step and model are kept per row in the decode
state (one [B, V] max per distribution, no extra host sync) and `generate` raises
`NonFiniteError` naming the prompt, the step and the model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.sharding import Mesh
from tqdm.auto import tqdm

from prosocial_jax import settings
from prosocial_jax.decoding.guidance import (
    Guidance,
    GuidanceError,
    GuidanceSettings,
    GuideInputs,
    GuideSpec,
    check_no_repeat_ngram,
    guided_scores,
    mix_arms,
    pvarm_rows,
    repeated_ngram_ban,
    row_preferences,
    shared_vocab_size,
    split_pvarm_rows,
)
from prosocial_jax.decoding.sampling import SamplingParams, sample_tokens
from prosocial_jax.models import layers, sharding
from prosocial_jax.models.adapters import Adapter, AdapterSet, check_adapter_fits
from prosocial_jax.models.cache import KVCache
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import forward_with_cache, positions_from_mask
from prosocial_jax.models.model import Model
from prosocial_jax.models.tokenizer import Messages, decode, encode_prompt

PROMPT_BUCKET = 32  # prompt lengths are padded up to a multiple of this
# Long prompts are prefilled in chunks of PREFILL_CHUNK tokens, each attending block by block to
# the cache the earlier ones wrote (`models.decoder._attend_blockwise`): every chunk scores only
# the slots before it, so the work is the causal half of the full [prompt, prompt] scores, and the
# scores held at once are [chunk, KEY_BLOCK] and [chunk, chunk] per head: peak memory grows
# linearly with the prompt, not with its square. PREFILL_CHUNK is the fastest chunk measured on
# CPU, among 256 to 2,048 (benchmarks/prefill_chunks.py); a chunk is shortened where one layer's
# float32 self-scores (all rows and heads, both models when guided) would pass
# PREFILL_SCORES_BYTES.
PREFILL_CHUNK = 512
PREFILL_SCORES_BYTES = 512 * 2**20
# Default batch sizes: a batch of n prompts is padded (rows that start done) up to the next of
# these, so 3 and 4 prompts share one compiled program and 5 to 8 another.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)


@dataclasses.dataclass(frozen=True)
class GenerateSettings:
    """Decoding settings: the defaults of `pj.generate` and of `prosocial-jax generate`."""

    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off
    seed: int = 0
    batch_size: int | None = None  # rows decoded together; None: the next of BATCH_BUCKETS
    system: str | None = None  # system message for chat-template models
    layer_layout: str = "auto"  # models.layers.LAYER_LAYOUTS; tokens do not depend on it
    prefill_chunk: int | None = None  # prompt tokens per prefill pass; None: PREFILL_CHUNK

    def __post_init__(self):
        settings.coerce(self, "generate settings")
        settings.positive(self, "generate settings", "max_new_tokens")
        settings.positive(self, "generate settings", "temperature", "top_k", "top_p",
                          allow_zero=True)
        for name in ("batch_size", "prefill_chunk"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"generate settings: {name} must be >= 1, got "
                                 f"{getattr(self, name)}")
        if self.layer_layout not in layers.LAYER_LAYOUTS:
            raise ValueError(f"generate settings: layer_layout must be one of "
                             f"{', '.join(layers.LAYER_LAYOUTS)}, got {self.layer_layout!r}")


# What produced a row's unusable next-token distribution (DecodeState.fault_source).
FAULT_SOURCES = ("the base model's logits",
                 "the Pv-Arm's logits under the row's preference (prosocial stage)",
                 "the Pv-Arm's logits under the safety one-hot (safety stage)",
                 "the guided score")
_FAULT_HINTS = ("are the base model's weights finite?",
                "are the adapter's factors and the Pv-Arm backbone's weights finite?",
                "are the adapter's factors and the Pv-Arm backbone's weights finite?",
                "no allowed token has a finite base + w x Pv-Arm score; check the guidance "
                "weights")


class NonFiniteError(ValueError):
    """A model produced NaN / inf next-token scores while decoding (names prompt, step, model)."""

    def __init__(self, message: str, prompt: int, step: int, source: str):
        super().__init__(message)
        self.prompt, self.step, self.source = prompt, step, source


@struct.dataclass
class DecodeState:
    """Everything a decode step reads and writes, for B rows and C new-token slots."""

    cache: KVCache
    logits: jax.Array  # [B, V] float32 logits for the next token of every row
    positions: jax.Array  # [B] rotary position of the next token of every row
    tokens: jax.Array  # [B, C] generated tokens; `pad_id` after a row is done
    step: jax.Array  # int32 scalar: tokens generated so far
    max_new_tokens: jax.Array  # int32 scalar
    done: jax.Array  # [B] bool
    stopped: jax.Array  # [B] bool: done because a stop token was produced (not the length limit)
    rng: jax.Array
    # Guided decoding only (None otherwise): the Pv-Arm's own cache and next-token logits
    # (R rows: each prompt's prosocial row, then its safety row, see `guidance.pvarm_rows`),
    # the rows' recent tokens (banned sequences), and per-row counts of safety overrides and
    # of allowed-set sizes summed over steps.
    # The Pv-Arm's (R = B or 2B rows, `pvarm_rows`); for an AdapterSet, one cache per member
    # and logits [A, B, V].
    reward_cache: KVCache | tuple[KVCache, ...] | None = None
    reward_logits: jax.Array | None = None  # [R, V]
    recent: jax.Array | None = None  # [B, W]
    overrides: jax.Array | None = None  # [B] int32
    allowed_total: jax.Array | None = None  # [B] int32
    # Per row [B]: the first step whose next-token scores were unusable (-1: none yet), which of
    # FAULT_SOURCES produced them, and that distribution's maximum (NaN, +inf or -inf).
    fault_step: jax.Array | None = None
    fault_source: jax.Array | None = None
    fault_value: jax.Array | None = None
    # Only where a row can cross Phi-3's original length (`crosses_original`): the prompts
    # [B, T] as prefilled, to recompute the caches at the crossing (`_refill_long`).
    prompt_tokens: jax.Array | None = None


def _empty_cache(config: ModelConfig, params, batch: int, max_len: int,
                 mesh: Mesh | None, layout: str = "sharded") -> KVCache:
    cache = KVCache.zeros(config, batch, max_len, jax.tree.leaves(params)[0].dtype,
                          per_layer=layers.is_per_layer(params))
    if mesh is not None:
        cache = jax.lax.with_sharding_constraint(
            cache, sharding.cache_shardings(config, cache, mesh, layout))
    return cache


def _recent_tokens(tokens_BxT, mask_BxT, window: int) -> jax.Array:
    """The last `window` prompt tokens per row [B, W]; -2 (matches no banned prefix) before the
    prompt."""
    recent_BxW = jnp.where(mask_BxT, tokens_BxT, -2)[:, -window:]
    return jnp.pad(recent_BxW, ((0, 0), (window - recent_BxW.shape[1], 0)), constant_values=-2)


def auto_prefill_chunk(score_rows: int, budget: int = PREFILL_SCORES_BYTES) -> int:
    """The default prefill chunk (tokens): PREFILL_CHUNK, or the longest multiple of
    PROMPT_BUCKET whose float32 self-scores [chunk, chunk] fit `budget` bytes over `score_rows`
    (rows x query heads, summed over the models that prefill) where PREFILL_CHUNK's do not."""
    chunk = math.isqrt(budget // (4 * score_rows))
    return max(PROMPT_BUCKET, min(PREFILL_CHUNK, chunk // PROMPT_BUCKET * PROMPT_BUCKET))


def prefill_chunks(prompt_len: int, chunk: int) -> tuple[int, int]:
    """(slots, chunk) for prompts of `prompt_len` tokens: one pass up to `chunk` tokens, else
    the fewest equal chunks of at most `chunk` tokens (multiples of PROMPT_BUCKET where that
    fits, so that nearby prompt lengths share a compiled prefill)."""
    if chunk < 1:
        raise ValueError(f"prefill_chunk must be >= 1, got {chunk}")
    padded = _round_up(prompt_len, PROMPT_BUCKET)
    if padded <= chunk:
        return padded, padded
    count = -(-prompt_len // chunk)
    size = -(-prompt_len // count)
    if _round_up(size, PROMPT_BUCKET) <= chunk:
        size = _round_up(size, PROMPT_BUCKET)
    return count * size, size


def _fill(config: ModelConfig, params, cache: KVCache, tokens, positions, mask, chunk: int,
          extent: jax.Array | None = None, **adapter) -> tuple[jax.Array, KVCache]:
    """Last-position logits [B, V] of prompts [B, T] and `cache` holding their keys and values;
    in chunks of `chunk` tokens (a scan: one compiled chunk) when T is longer. `extent` [B]
    (Phi-3's longrope, see `rotary_tables`; default: each prompt's last position) also makes
    every chunk attend to what `cache` already holds."""
    if chunk >= tokens.shape[1] and extent is None:
        logits, (k, v) = forward_with_cache(config, params, tokens, positions, mask, None,
                                            **adapter)
        return logits, cache.append(k, v, mask)
    chunk = min(chunk, tokens.shape[1])
    count = tokens.shape[1] // chunk

    def chunks(x_BxT):  # [count, B, chunk]
        return x_BxT.reshape(x_BxT.shape[0], count, chunk).swapaxes(0, 1)

    if extent is None:  # Phi-3's longrope decides by each whole prompt
        extent = jnp.max(positions, axis=-1)

    def fill_one(cache, inputs):
        tokens_c, positions_c, mask_c = inputs
        logits, (k, v) = forward_with_cache(config, params, tokens_c, positions_c, mask_c,
                                            cache, rope_extent=extent, **adapter)
        return cache.append(k, v, mask_c), logits

    cache, logits = jax.lax.scan(fill_one, cache, (chunks(tokens), chunks(positions),
                                                   chunks(mask)))
    return logits[-1], cache


def crosses_original(config: ModelConfig, max_len: int) -> bool:
    """Whether a decode in `max_len` slots can reach Phi-3's original length: with longrope,
    a position past it switches the rotary to the long factors (`rotary_tables`)."""
    rope = config.rope
    return rope.rope_type == "longrope" and max_len > rope.original_max_position_embeddings


def _largest_divisor(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, max(limit, 1)) + 1) if n % d == 0)


def _refill_long(config: ModelConfig, params, cache: KVCache, sequence, prompt_slots: int,
                 rows, chunk: int, **adapter) -> KVCache:
    """`cache` with rows `rows` [B] (bool) recomputed from scratch with longrope's long
    factors, over the tokens `sequence` [B, S] of its slots (prompt slots, then the new
    tokens): what transformers' Phi-3 `generate` does when a sequence first reaches past the
    original length, so that every key, early or late, is rotated as one pass over the whole
    sequence would rotate it. Slots the cache has not filled yet are computed too (they are
    masked, and overwritten when their token comes). Prompt and new slots are filled in chunks
    of at most `chunk` tokens (peak memory as in the prefill)."""
    valid = cache.valid
    positions = positions_from_mask(valid)
    extent = jnp.full(rows.shape, config.rope.original_max_position_embeddings)
    fresh = cache.replace(valid=jnp.zeros_like(valid), index=jnp.zeros_like(cache.index))
    for part in (slice(0, prompt_slots), slice(prompt_slots, sequence.shape[1])):
        size = part.stop - part.start
        _, fresh = _fill(config, params, fresh, sequence[:, part], positions[:, part],
                         valid[:, part], _largest_divisor(size, chunk), extent, **adapter)
    return fresh.where_rows(rows, cache)


@functools.partial(jax.jit, static_argnames=("config", "max_len", "num_new", "mesh", "spec",
                                             "layout", "chunk"))
def prefill(config: ModelConfig, params, tokens, mask, rng, max_new_tokens,
            guide: GuideInputs | None = None, *, max_len: int, num_new: int,
            mesh: Mesh | None = None, spec: GuideSpec | None = None,
            layout: str = "sharded", chunk: int | None = None,
            sources: jax.Array | None = None) -> DecodeState:
    """Runs left-padded prompts (tokens and mask [B, T]) through the model (and the Pv-Arm,
    when guided), filling fresh caches of `max_len` slots; room for `num_new` new tokens.
    `chunk` (dividing T; None: T) prefills in chunks of that many tokens, see
    PREFILL_SCORES_BYTES.

    `sources` [B] (no mesh): the rows continue prompts that several rows share, and `tokens`,
    `mask` [U, T] are the U distinct prompts, row b continuing prompt `sources[b]`. What only
    depends on the prompt is prefilled once per distinct prompt and copied to its rows: the
    base model's cache and logits and, with the safety stage, the Pv-Arm's safety rows (one
    preference for all). The Pv-Arm's prosocial rows are prefilled per row: the row's preference
    enters every adapted layer, so their keys and values differ from row to row."""
    chunk = chunk or tokens.shape[1]
    if tokens.shape[1] % chunk:
        raise ValueError(f"prefill chunk {chunk} does not divide the {tokens.shape[1]} prompt "
                         "slots (see prefill_chunks)")
    if sources is not None and mesh is not None:
        raise ValueError("shared prompts (sources) are prefilled without a mesh only")
    prompts = tokens.shape[0]
    cache = _empty_cache(config, params, prompts, max_len, mesh, layout)
    positions = positions_from_mask(mask)
    logits, cache = _fill(config, params, cache, tokens, positions, mask, chunk)
    distinct = None
    if sources is not None:  # per distinct prompt -> per row
        distinct = (tokens, mask, positions)
        cache, logits = cache.take_rows(sources), logits[sources]
        tokens, mask, positions = (x[sources] for x in distinct)
    batch = tokens.shape[0]
    no_prompt = ~jnp.any(mask, axis=-1)  # padding rows of a partial batch
    guided = {}
    if spec is not None and spec.arm_configs:
        unique = distinct if distinct is not None else (tokens, mask, positions)
        reward_cache, reward_logits = _fill_arms(spec, guide, unique, sources, chunk, max_len,
                                                 mesh)
    elif spec is not None:
        copies = 2 if spec.safety_stage else 1  # the safety rows see the same tokens
        preferences = guide.reward_preferences(spec)
        if distinct is None or copies == 1:
            r_tokens, r_mask, r_positions = (pvarm_rows(x, copies)
                                             for x in (tokens, mask, positions))
        else:  # the prosocial rows, then one safety row per distinct prompt
            r_tokens, r_mask, r_positions = (jnp.concatenate([x, x_u])
                                             for x, x_u in zip((tokens, mask, positions),
                                                               distinct))
            preferences = jnp.concatenate([
                preferences[0::2], jnp.broadcast_to(preferences[1:2], (prompts,
                                                                        preferences.shape[1]))])
        reward_cache = _empty_cache(spec.reward_config, guide.reward_params, r_tokens.shape[0],
                                    max_len, mesh, spec.reward_layout)
        reward_logits, reward_cache = _fill(
            spec.reward_config, guide.reward_params, reward_cache, r_tokens, r_positions,
            r_mask, chunk, adapter_config=spec.adapter_config, adapter=guide.adapter_params,
            preference=preferences)
        if distinct is not None and copies == 2:  # into `pvarm_rows` order
            order = pvarm_rows(jnp.stack([jnp.arange(batch), batch + sources], axis=1))
            reward_cache, reward_logits = (reward_cache.take_rows(order),
                                           reward_logits[order])
    if spec is not None and spec.shared_backbone:  # one cache: each prompt's joint rows
        copies = 2 if spec.safety_stage else 1
        both = KVCache.concat_rows(cache, reward_cache)
        order = _joint_rows(jnp.arange(batch)[:, None], batch + jnp.arange(batch * copies)
                            .reshape(batch, copies))
        cache, reward_cache = both.take_rows(order), None
    if spec is not None:
        banned = guide.guidance.banned_prefix
        guided = dict(reward_cache=reward_cache,
                      reward_logits=reward_logits,
                      recent=None if banned is None else _recent_tokens(
                          tokens, mask, banned.shape[-1]),
                      overrides=jnp.zeros((batch,), jnp.int32),
                      allowed_total=jnp.zeros((batch,), jnp.int32))
    return DecodeState(
        cache=cache,
        logits=logits,
        positions=jnp.sum(mask, axis=-1).astype(jnp.int32),
        tokens=jnp.zeros((batch, num_new), jnp.int32),
        step=jnp.zeros((), jnp.int32),
        max_new_tokens=jnp.asarray(max_new_tokens, jnp.int32),
        done=no_prompt,
        stopped=jnp.zeros((batch,), bool),
        rng=rng,
        fault_step=jnp.full((batch,), -1, jnp.int32),
        fault_source=jnp.zeros((batch,), jnp.int32),
        fault_value=jnp.zeros((batch,), jnp.float32),
        prompt_tokens=tokens if crosses_original(config, max_len) or (
            spec is not None and crosses_original(spec.reward_config, max_len)) else None,
        **guided,
    )


def _joint_rows(base_Bx1: jax.Array, pvarm_BxC: jax.Array) -> jax.Array:
    """The rows of one forward over a base model and its Pv-Arm on the same weights
    (`GuideSpec.shared_backbone`): each prompt's base row, then its C Pv-Arm rows (prosocial,
    safety), so that [B * (1 + C), ...] reshapes to [B, 1 + C, ...]."""
    return jnp.concatenate([base_Bx1, pvarm_BxC], axis=1).reshape(-1, *base_Bx1.shape[2:])


def _fill_arms(spec: GuideSpec, guide: GuideInputs, prompts, sources, chunk: int, max_len: int,
               mesh: Mesh | None) -> tuple[tuple[KVCache, ...], jax.Array]:
    """The multi-ARM baseline's prefill: every member of the `AdapterSet` on the prompts
    (tokens, mask, positions [U, T]), each into its own cache; with `sources`, copied to the
    rows that continue them (no member depends on a row's preference). Returns (A caches,
    logits [A, B, V])."""
    tokens, mask, positions = prompts
    caches, logits = [], []
    for config, params in zip(spec.arm_configs, guide.adapter_params):
        cache = _empty_cache(spec.reward_config, guide.reward_params, tokens.shape[0], max_len,
                             mesh, spec.reward_layout)
        one_hot = jnp.ones((tokens.shape[0], 1), jnp.float32)  # a member's only attribute
        member_logits, cache = _fill(spec.reward_config, guide.reward_params, cache, tokens,
                                     positions, mask, chunk, adapter_config=config,
                                     adapter=params, preference=one_hot)
        if sources is not None:
            cache, member_logits = cache.take_rows(sources), member_logits[sources]
        caches.append(cache)
        logits.append(member_logits)
    return tuple(caches), jnp.stack(logits)


def _row_max(scores: jax.Array) -> jax.Array:
    """Per-row maximum of scores [rows, V]: not finite exactly when the row is unusable (max
    propagates NaN; a +inf or an all -inf row breaks softmax and argmax too). One reduction."""
    return jnp.max(scores, axis=-1).astype(jnp.float32)


def _record_faults(state: DecodeState, checked: Sequence[tuple[int, jax.Array]]) -> dict:
    """Fault fields updated with this step's checks: (FAULT_SOURCES index, per-row maxima [B]
    of that distribution, from `_row_max`). Rows already done are not checked (their scores
    are never used; padding rows have none)."""
    maxima = jnp.stack([m for _, m in checked])  # [checks, B]
    bad = ~jnp.isfinite(maxima)
    first = jnp.argmax(bad, axis=0)  # the first failing distribution, in FAULT_SOURCES order
    sources = jnp.asarray([source for source, _ in checked], jnp.int32)
    new = jnp.any(bad, axis=0) & ~state.done & (state.fault_step < 0)
    value = jnp.take_along_axis(maxima, first[None], axis=0)[0]
    return dict(fault_step=jnp.where(new, state.step, state.fault_step),
                fault_source=jnp.where(new, sources[first], state.fault_source),
                fault_value=jnp.where(new, value, state.fault_value))


def _decode_step(config: ModelConfig, params, state: DecodeState, sampling: SamplingParams,
                 stop_ids, pad_id, guide: GuideInputs | None, spec: GuideSpec | None,
                 refill_chunk: int | None = None) -> DecodeState:
    if refill_chunk is not None:
        state = _refill_at_original(config, params, state, guide, spec, refill_chunk)
    key = jax.random.fold_in(state.rng, state.step)
    if spec is None:
        scores = state.logits
        checked = [(0, _row_max(scores))]
    else:
        repeats = None if not spec.no_repeat_ngram else repeated_ngram_ban(
            state.tokens, state.step, spec.no_repeat_ngram, spec.vocab)
        reward_logits = state.reward_logits
        if spec.arm_configs:  # the members' logits [A, B, V] -> the Pv-Arm's row layout
            reward_logits = mix_arms(
                reward_logits, guide.guidance.preference, spec.vocab,
                spec.adapter_config.safety_index if spec.safety_stage else None)
        scores, overridden, allowed = guided_scores(
            state.logits, reward_logits, guide.guidance, state.recent, spec.vocab, repeats)
        # Raw logits, not log-probs: their maximum tells NaN, +inf and all -inf apart.
        batch = scores.shape[0]
        if spec.arm_configs:  # any member's fault faults the prosocial row
            arm_max = _row_max(state.reward_logits[..., :spec.vocab])  # [A, B]
            prosocial = jnp.max(arm_max, axis=0)
            safety = (arm_max[spec.adapter_config.safety_index] if spec.safety_stage
                      else None)
        else:
            prosocial, safety = split_pvarm_rows(
                _row_max(state.reward_logits[:, :spec.vocab]), batch)
        checked = [(0, _row_max(state.logits[:, :spec.vocab])), (1, prosocial)]
        if safety is not None:
            checked.append((2, safety))
        checked.append((3, _row_max(scores)))
    faults = _record_faults(state, checked)
    token = sample_tokens(scores, key, sampling)
    token = jnp.where(state.done, pad_id, token)
    stopped = ~state.done & jnp.isin(token, stop_ids)
    tokens = jax.lax.dynamic_update_slice(state.tokens, token[:, None], (0, state.step))
    done = state.done | stopped | (state.step + 1 >= state.max_new_tokens)

    # Rows already done before this step write masked slots that nobody attends to.
    token_mask = ~state.done[:, None]
    copies = 1 if spec is None or not spec.safety_stage else 2  # Pv-Arm rows per base row

    def advance(_):
        if spec is not None and spec.shared_backbone:
            return _joint_step(config, params, state, token, token_mask, guide, spec, copies)
        base = forward_with_cache(config, params, token[:, None], state.positions[:, None],
                                  token_mask, state.cache)
        if spec is None:
            return base, None
        if spec.arm_configs:  # every member on the B rows, each with its own cache
            one_hot = jnp.ones((token.shape[0], 1), jnp.float32)
            members = [forward_with_cache(
                spec.reward_config, guide.reward_params, token[:, None],
                state.positions[:, None], token_mask, cache, adapter_config=config,
                adapter=params, preference=one_hot)
                for config, params, cache in zip(spec.arm_configs, guide.adapter_params,
                                                 state.reward_cache)]
            return base, (jnp.stack([logits for logits, _ in members]),
                          tuple(kv for _, kv in members))
        reward = forward_with_cache(
            spec.reward_config, guide.reward_params, pvarm_rows(token[:, None], copies),
            pvarm_rows(state.positions[:, None], copies), pvarm_rows(token_mask, copies),
            state.reward_cache, adapter_config=spec.adapter_config, adapter=guide.adapter_params,
            preference=guide.reward_preferences(spec))
        return base, reward

    def skip(_):  # every row has finished: the rest of the chunk costs nothing
        shapes = jax.eval_shape(advance, None)
        zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
        keep_logits = (state.logits, zeros[0][1])
        if spec is None:
            return keep_logits, None
        return keep_logits, (state.reward_logits, zeros[1][1])

    # The caches are only read inside the cond and written after it, so XLA needn't copy them.
    (logits, (k, v)), reward = jax.lax.cond(jnp.all(done), skip, advance, None)
    cache_mask = token_mask
    if spec is not None and spec.shared_backbone:
        cache_mask = pvarm_rows(token_mask, copies + 1)
    new = dict(cache=state.cache.append(k, v, cache_mask), logits=logits,
               positions=state.positions + 1, tokens=tokens, step=state.step + 1,
               done=done, stopped=state.stopped | stopped, **faults)
    if spec is not None:
        reward_logits, reward_kv = reward
        if spec.shared_backbone:
            reward_cache = None  # its rows are in `cache`
        elif spec.arm_configs:
            reward_cache = tuple(cache.append(k, v, token_mask)
                                 for cache, (k, v) in zip(state.reward_cache, reward_kv))
        else:
            reward_cache = state.reward_cache.append(*reward_kv, pvarm_rows(token_mask, copies))
        active = ~state.done
        new.update(
            reward_cache=reward_cache,
            reward_logits=reward_logits,
            recent=None if state.recent is None else jnp.concatenate(
                [state.recent[:, 1:], token[:, None]], axis=1),
            overrides=state.overrides + (overridden & active),
            allowed_total=state.allowed_total + jnp.where(active, allowed, 0))
    return state.replace(**new)


def _joint_step(config: ModelConfig, params, state: DecodeState, token, token_mask,
                guide: GuideInputs, spec: GuideSpec, copies: int):
    """One forward over each prompt's base row and its `copies` Pv-Arm rows (`_joint_rows`),
    on the weights base model and Pv-Arm share, the adapter applied to the Pv-Arm rows only:
    ((base logits [B, V], the step's keys and values for every joint row), (Pv-Arm logits
    [C * B, V], None))."""
    def joint(x_Bx1):  # [B, 1] -> [(1 + C) B, 1]
        return pvarm_rows(x_Bx1, copies + 1)

    batch = token.shape[0]
    preferences = guide.reward_preferences(spec).reshape(batch, copies, -1)
    preference = _joint_rows(jnp.zeros_like(preferences[:, :1]), preferences)
    rows = _joint_rows(jnp.zeros((batch, 1), bool), jnp.ones((batch, copies), bool))
    logits, kv = forward_with_cache(
        config, params, joint(token[:, None]), joint(state.positions[:, None]),
        joint(token_mask), state.cache, adapter_config=spec.adapter_config,
        adapter=guide.adapter_params, preference=preference, adapter_rows=rows)
    logits = logits.reshape(batch, copies + 1, -1)
    return (logits[:, 0], kv), (logits[:, 1:].reshape(batch * copies, -1), None)


def crossing_steps(configs: Sequence[ModelConfig], prompt_lengths: Sequence[int],
                   max_len: int) -> frozenset[int]:
    """The decode steps at which some row feeds its token at the original length of one of
    `configs` (the base model's, the Pv-Arm's) whose longrope can be reached in `max_len`
    slots: step `original - prompt length` (a row's position grows by one per step from its
    prompt's length). Rows whose prompt already reaches past it were prefilled with the long
    factors and never cross. `generate` compiles the crossing check only into the decode
    chunks that hold one of these steps (`decode_chunk`'s `refill_chunk`)."""
    originals = {c.rope.original_max_position_embeddings for c in configs
                 if crosses_original(c, max_len)}
    return frozenset(original - length for original in originals for length in prompt_lengths
                     if 0 <= original - length < max_len)


def _refill_at_original(config: ModelConfig, params, state: DecodeState,
                        guide: GuideInputs | None, spec: GuideSpec | None,
                        chunk: int) -> DecodeState:
    """Before the step that feeds a row's token at Phi-3's original length (its first position
    past it), that row's caches are recomputed with the long factors (`_refill_long`): the base
    model's and the Pv-Arm's, each where its own rotary is longrope. Costs one prefill per
    distinct crossing step, and a [B] comparison and a conditional on every other step of the
    chunks that hold a crossing (`crossing_steps`); the other chunks run without them."""
    if state.prompt_tokens is None:
        raise ValueError("refill_chunk is given, but the decode state keeps no prompts: no row "
                         "of this decode can reach a longrope model's original length")
    max_len = state.cache.max_len

    def crossing(model_config: ModelConfig) -> jax.Array:  # [B] rows refilled this step
        if not crosses_original(model_config, max_len):
            return jnp.zeros_like(state.done)
        original = model_config.rope.original_max_position_embeddings
        return ~state.done & (state.positions == original)

    base_rows = crossing(config)
    reward_rows = None if spec is None else crossing(spec.reward_config)
    slots = state.prompt_tokens.shape[1]

    def refill(caches):  # only on a crossing step: nothing here runs on the others
        base, reward = caches
        sequence = jnp.concatenate([state.prompt_tokens, state.tokens], axis=1)  # each slot's
        if crosses_original(config, max_len):
            base = _refill_long(config, params, base, sequence, slots, base_rows, chunk)
        if spec is None or not crosses_original(spec.reward_config, max_len):
            return base, reward
        backbone = dict(config=spec.reward_config, params=guide.reward_params,
                        prompt_slots=slots, chunk=chunk)
        if spec.arm_configs:  # every member, each with its own cache
            one_hot = jnp.ones((sequence.shape[0], 1), jnp.float32)
            reward = tuple(
                _refill_long(cache=cache, sequence=sequence, rows=reward_rows,
                             adapter_config=member, adapter=member_params,
                             preference=one_hot, **backbone)
                for member, member_params, cache in zip(spec.arm_configs,
                                                        guide.adapter_params, reward))
        else:
            copies = 2 if spec.safety_stage else 1
            reward = _refill_long(
                cache=reward, sequence=pvarm_rows(sequence, copies),
                rows=pvarm_rows(reward_rows, copies), adapter_config=spec.adapter_config,
                adapter=guide.adapter_params, preference=guide.reward_preferences(spec),
                **backbone)
        return base, reward

    any_row = jnp.any(base_rows) if reward_rows is None else jnp.any(base_rows | reward_rows)
    cache, reward_cache = jax.lax.cond(any_row, refill, lambda caches: caches,
                                       (state.cache, state.reward_cache))
    return state.replace(cache=cache, reward_cache=reward_cache)


@functools.partial(jax.jit, static_argnames=("config", "num_steps", "spec", "refill_chunk"),
                   donate_argnames=("state",))
def decode_chunk(config: ModelConfig, params, state: DecodeState, sampling: SamplingParams,
                 stop_ids, pad_id, guide: GuideInputs | None = None, *, num_steps: int,
                 spec: GuideSpec | None = None, refill_chunk: int | None = None
                 ) -> tuple[DecodeState, jax.Array]:
    """`num_steps` decode steps in one compiled scan; returns the state and the host's flags
    [all rows done, some row's scores turned non-finite]. `refill_chunk`: where one of these
    steps is in `crossing_steps`, the prefill's chunk, for the recomputation at Phi-3's
    original length (`_refill_at_original`); None (the rest): no step checks for a crossing,
    so a row that crosses in them keeps its short-factor cache."""
    def body(carry, _):
        return _decode_step(config, params, carry, sampling, stop_ids, pad_id, guide, spec,
                            refill_chunk), None

    state, _ = jax.lax.scan(body, state, None, length=num_steps)
    return state, jnp.stack([jnp.all(state.done), jnp.any(state.fault_step >= 0)])


@dataclasses.dataclass
class Generation:
    """One decoded row."""

    prompt: Any
    text: str | None
    tokens: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (a stop token was produced) or "length"
    # Guided decoding only: the row's normalised preference (and whether normalising changed
    # it), the steps at which the safety stage removed the token the prosocial score would
    # have picked, and the mean size of the allowed (safe) set over the row's steps.
    preference: list[float] | None = None
    preference_normalised: bool = False
    safety_overrides: int | None = None
    mean_safe_set: float | None = None


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, math.ceil(value / multiple) * multiple)


def stop_token_ids(model: Model) -> list[int]:
    ids = set(model.config.eos_token_ids)
    if model.tokenizer is not None and model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    return sorted(ids)


def generate(model: Model, prompts: Sequence[str | Messages | Sequence[int]], *,
             max_new_tokens: int = GenerateSettings.max_new_tokens,
             temperature: float | Sequence[float] = GenerateSettings.temperature,
             top_k: int | Sequence[int] = GenerateSettings.top_k,
             top_p: float | Sequence[float] = GenerateSettings.top_p,
             seed: int = GenerateSettings.seed,
             batch_size: int | None = GenerateSettings.batch_size, chunk_size: int = 16,
             use_chat_template: bool | None = None,
             system: str | None = GenerateSettings.system,
             stop_tokens: Sequence[int] | None = None, progress: bool = False,
             adapter: Adapter | AdapterSet | None = None, reward: Model | None = None,
             preference=None,
             preferences: Sequence | None = None,
             guidance: float | Sequence[float] = GuidanceSettings.guidance,
             safety_margin: float | Sequence[float] = GuidanceSettings.safety_margin,
             plausibility: float | Sequence[float] = GuidanceSettings.plausibility,
             banned_sequences: Sequence[Sequence[int]] | None = None,
             no_repeat_ngram: int = GuidanceSettings.no_repeat_ngram,
             safety_stage: bool = True,
             layer_layout: str = GenerateSettings.layer_layout,
             prefill_chunk: int | None = GenerateSettings.prefill_chunk) -> list[Generation]:
    """Decodes every prompt (a string, chat messages, or token ids) and returns `Generation`s.

    Greedy by default (temperature 0). Per-row sampling settings may be sequences, one per prompt.
    With an instruct model the chat template is applied (`use_chat_template=None` decides by
    whether the tokenizer has one). Same seed, same prompts and batch size: same output.
    `batch_size=None` pads each batch to the next of BATCH_BUCKETS (at most 32 prompts per
    batch; padding rows cost compute, and greedy tokens do not depend on them), rounded up to a
    multiple of the mesh's "data" axis. A NaN / inf next-token distribution raises
    `NonFiniteError` naming the prompt, the step and the model.

    Guided decoding (ProSocialAlign, see `prosocial_jax.decoding.guidance`): pass a Pv-Arm `adapter`
    (its backbone is `reward`, by default `model` itself, and then, without a mesh, one forward
    a step serves base and Pv-Arm rows on the one set of weights; both must share the
    tokenizer), a
    `preference` for every row (numbers in the adapter's attribute order, a {name: weight}
    mapping or text like "empathy=0.5,helpfulness=0.5") and/or `preferences`, one per row
    (None entries fall back to `preference`), the guidance weight w and the safety margin tau
    (scalars or one per row; tau = inf disables the safety stage for that row). None of these
    recompile when they change. `safety_stage=False` compiles the Pv-Arm forward for the
    prosocial rows only (half its cost; tau is then ignored). `no_repeat_ngram=n` (n >= 2)
    removes any token that would repeat an n-gram of the row's own answer before the safety
    stage looks (tau counts from the best remaining token; 0: off; changing it recompiles).
    An `AdapterSet` in place of the adapter decodes the GenARM-style multi-ARM baseline: K
    single-attribute adapters, each run every step with its own cache (no mesh).

    `layer_layout` ("auto", "stacked", "per_layer", "packed"; see `prosocial_jax.models.layers`):
    how the layers run. "auto", on a lone CPU device, unrolls them over the packed weights for
    the native kernel (float32, where it builds and its copy fits in a quarter of the memory
    available), else over per-layer views of the weights (no copy); elsewhere it scans the
    stacked weights. Tokens do not depend on it beyond float rounding. Long prompts are prefilled in
    chunks of at most `prefill_chunk` tokens (None: PREFILL_CHUNK, less where one layer's
    attention scores would pass PREFILL_SCORES_BYTES), so peak memory grows linearly with the
    prompt.

    Example: `generate(pj.load_model("bundled:smollm2"), ["Hi!"], max_new_tokens=16)[0].text`.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    params = layers.for_forward(model.params, layer_layout, model.mesh)
    if prefill_chunk is not None:
        prefill_chunks(1, prefill_chunk)  # validates it before any work
    if not prompts:
        return []
    encoded = [list(p) if is_token_ids(p) else encode_prompt(model.tokenizer, p,
                                                              use_chat_template, system)
               for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} is empty after tokenisation")
    n = len(encoded)
    if batch_size is None:  # a bucket, so that a new number of prompts rarely compiles
        batch_size = next(b for b in BATCH_BUCKETS if b >= min(n, BATCH_BUCKETS[-1]))
    elif batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if model.mesh is not None:  # rows must split evenly over the "data" axis
        batch_size = _round_up(batch_size, model.mesh.shape["data"])
    sampling_rows = SamplingParams.create(n, temperature, top_k, top_p)  # validates per row
    spec = guide_rows = normalised = None
    if adapter is not None:
        spec, guide_rows, normalised = _guide(model, reward or model, adapter, n, preference,
                                              preferences, guidance, safety_margin,
                                              plausibility, banned_sequences, safety_stage,
                                              no_repeat_ngram, layer_layout)
        alpha_rows = np.asarray(guide_rows.guidance.preference)  # for the results
    elif reward is not None or preference is not None or preferences is not None:
        raise GuidanceError("guided decoding needs a Pv-Arm adapter (adapter=...)")
    stops = jnp.asarray(stop_tokens if stop_tokens is not None else stop_token_ids(model),
                        jnp.int32)
    if stops.size == 0:
        stops = jnp.asarray([-1], jnp.int32)  # no stop token: rows end at max_new_tokens
    pad_id = model.pad_id
    chunk_size = max(1, min(chunk_size, max_new_tokens))
    num_new = _round_up(max_new_tokens, chunk_size)
    results: list[Generation] = []
    # Counts decode steps times rows (an upper bound on tokens: rows may stop early).
    bar = tqdm(total=n * max_new_tokens, desc="generate", unit="tok", disable=not progress)
    for start in range(0, n, batch_size):
        rows = list(range(start, min(start + batch_size, n)))
        take = functools.partial(_take_rows, rows=np.asarray(rows), size=batch_size)
        guide = None if spec is None else guide_rows.replace(
            guidance=guide_rows.guidance.map_rows(take))
        batch = _generate_batch(
            model, params, rows, [prompts[i] for i in rows], [encoded[i] for i in rows],
            batch_size, jax.tree.map(take, sampling_rows), stops, pad_id, max_new_tokens,
            num_new, chunk_size, prefill_chunk, jax.random.fold_in(jax.random.key(seed), start),
            bar, guide, spec)
        if spec is not None:
            for result, row in zip(batch, rows):
                result.preference = alpha_rows[row].tolist()
                result.preference_normalised = normalised[row]
        results += batch
        bar.update((start + len(rows)) * max_new_tokens - bar.n)  # rows that stopped early
    bar.close()
    return results


def _take_rows(x: jax.Array, rows: np.ndarray, size: int) -> jax.Array:
    """Per-row settings of one batch, padded with the first row's to the batch size (padding
    rows of a partial batch start out done)."""
    picked = x[rows]
    return jnp.concatenate([picked, jnp.repeat(picked[:1], size - len(rows), axis=0)], axis=0)


def _guide(model: Model, reward: Model, adapter: Adapter | AdapterSet, rows: int, preference,
           preferences, weight, safety_margin, plausibility, banned, safety_stage,
           no_repeat_ngram=0, layer_layout="auto"):
    """Checks that base, Pv-Arm backbone and adapter fit together; per-row guidance settings."""
    check_adapter_fits(adapter, reward.config)
    if (model.mesh is None) != (reward.mesh is None) or (
            model.mesh is not None and model.mesh.shape != reward.mesh.shape):
        raise GuidanceError("load the base model and the Pv-Arm backbone on the same mesh "
                            f"(got {model.mesh and dict(model.mesh.shape)} and "
                            f"{reward.mesh and dict(reward.mesh.shape)})")
    vocab = shared_vocab_size(model, reward)
    if preferences is not None and len(preferences) != rows:
        raise GuidanceError(f"preferences: expected one per prompt ({rows}), got "
                            f"{len(preferences)}")
    alpha, normalised = row_preferences(adapter, preference, rows, preferences)
    settings = Guidance.create(alpha, weight, safety_margin, plausibility, banned)
    check_no_repeat_ngram(no_repeat_ngram, "generate")
    arm_configs = ()
    if isinstance(adapter, AdapterSet):
        if reward.mesh is not None:
            raise GuidanceError("an adapter set (the multi-ARM baseline) decodes without a "
                                "mesh; load the models with mesh=None")
        arm_configs = tuple(member.config for member in adapter.adapters)
    # One forward for both where they are the same weights (see `_joint_rows`).
    shared = reward is model and not arm_configs and model.mesh is None
    spec = GuideSpec(reward.config, adapter.config, vocab, safety_stage, int(no_repeat_ngram),
                     reward.layout if reward.mesh is not None else "sharded", arm_configs,
                     shared_backbone=shared)
    reward_params = layers.for_forward(reward.params, layer_layout, reward.mesh)
    return spec, GuideInputs(reward_params, adapter.params, settings), normalised


def _generate_batch(model, params, rows, prompts, encoded, batch_size, sampling, stops, pad_id,
                    max_new_tokens, num_new, chunk_size, prefill_chunk, rng, bar, guide=None,
                    spec=None) -> list[Generation]:
    """Decodes one batch; `rows` are the prompts' indices in the whole call (for errors)."""
    config = model.config
    longest = max(len(ids) for ids in encoded)
    if prefill_chunk is None:
        score_rows = batch_size * config.num_heads
        if spec is not None:
            copies = (len(spec.arm_configs) if spec.arm_configs
                      else 2 if spec.safety_stage else 1)
            score_rows += copies * batch_size * spec.reward_config.num_heads
        prefill_chunk = auto_prefill_chunk(score_rows)
    prompt_len, chunk = prefill_chunks(longest, prefill_chunk)
    max_len = prompt_len + num_new
    if spec is not None and spec.shared_backbone and crosses_original(config, max_len):
        spec = dataclasses.replace(spec, shared_backbone=False)  # refills the two apart
    if longest + max_new_tokens > config.max_position_embeddings:
        raise ValueError(f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the "
                         f"model's context of {config.max_position_embeddings}")
    sources, distinct = _shared_prompts(encoded, batch_size, model.mesh)
    if sources is None:  # each process builds only the rows its devices hold
        local = sharding.process_rows(model.mesh, batch_size)
        prefilled, built, total = encoded[local], local.stop - local.start, batch_size
    else:  # rows continuing the same prompts (a preference sweep): each prefilled once
        prefilled = distinct
        built = total = _distinct_rows(len(distinct), len(encoded) < batch_size)
    tokens = np.full((built, prompt_len), pad_id, np.int32)
    mask = np.zeros(tokens.shape, bool)
    for row, ids in enumerate(prefilled):  # left padding: every row ends at the last slot
        tokens[row, prompt_len - len(ids):] = ids
        mask[row, prompt_len - len(ids):] = True
    placed = sharding.place_batch({"tokens": tokens, "mask": mask}, model.mesh, rows=total)
    tokens_j, mask_j = placed["tokens"], placed["mask"]
    prefill_chunk_size = chunk
    crossings = crossing_steps([config] if spec is None else [config, spec.reward_config],
                               [len(ids) for ids in encoded], max_len)
    state = prefill(config, params, tokens_j, mask_j, rng, max_new_tokens, guide,
                    max_len=max_len, num_new=num_new, mesh=model.mesh, spec=spec,
                    layout=model.layout, chunk=chunk,
                    sources=None if sources is None else jnp.asarray(sources, jnp.int32))
    previous_flags = None
    for chunk in range(num_new // chunk_size):
        steps = range(chunk * chunk_size, (chunk + 1) * chunk_size)
        state, flags = decode_chunk(  # the crossing check only in the chunks that need it
            config, params, state, sampling, stops, pad_id, guide, num_steps=chunk_size,
            spec=spec, refill_chunk=prefill_chunk_size if crossings.intersection(steps) else None)
        # Look one chunk behind: reading this chunk's flags now would stall the dispatch queue.
        if previous_flags is not None and sharding.to_host(previous_flags).any():
            break  # all rows done, or a fault (raised below)
        previous_flags = flags
        bar.update(len(prompts) * min(chunk_size, max_new_tokens - chunk * chunk_size))

    _raise_on_fault(state, rows)
    generated = sharding.to_host(state.tokens)  # gathered from every process
    stopped = sharding.to_host(state.stopped)
    if spec is not None:
        overrides = sharding.to_host(state.overrides)
        allowed_total = sharding.to_host(state.allowed_total)
    out = []
    for row, (prompt, ids) in enumerate(zip(prompts, encoded)):
        row_tokens = generated[row, :max_new_tokens].tolist()
        if stopped[row]:
            stop_at = next(i for i, t in enumerate(row_tokens) if t in set(stops.tolist()))
            row_tokens = row_tokens[: stop_at + 1]
        text = decode(model.tokenizer, row_tokens) if model.tokenizer is not None else None
        result = Generation(prompt=prompt, text=text, tokens=row_tokens, prompt_tokens=len(ids),
                            completion_tokens=len(row_tokens),
                            finish_reason="stop" if stopped[row] else "length")
        if spec is not None:
            result.safety_overrides = int(overrides[row])
            result.mean_safe_set = float(allowed_total[row]) / max(len(row_tokens), 1)
        out.append(result)
    return out


def _shared_prompts(encoded: Sequence[list[int]], batch_size: int, mesh: Mesh | None
                    ) -> tuple[list[int] | None, list[list[int]]]:
    """(sources, distinct prompts) of a batch whose rows repeat prompts (a preference sweep):
    row b continues distinct prompt sources[b], and padding rows continue an empty prompt after
    the distinct ones. (None, []) when every prompt is distinct, or on a mesh (each process
    builds only its own rows there, so the rows are prefilled as they are)."""
    index: dict[tuple[int, ...], int] = {}
    sources = [index.setdefault(tuple(ids), len(index)) for ids in encoded]
    if mesh is not None or len(index) == len(encoded):
        return None, []
    sources += [len(index)] * (batch_size - len(encoded))
    return sources, [list(ids) for ids in index]


def _distinct_rows(distinct: int, padded: bool) -> int:
    """Rows of a batch's distinct-prompt prefill: its prompts, and an empty one for padding
    rows, rounded up to the next of BATCH_BUCKETS (so that a new count rarely compiles)."""
    needed = distinct + padded
    return next((b for b in BATCH_BUCKETS if b >= needed), _round_up(needed, BATCH_BUCKETS[-1]))


def _raise_on_fault(state: DecodeState, rows: Sequence[int]) -> None:
    """NonFiniteError for the first row (in prompt order) whose scores turned non-finite."""
    steps = sharding.to_host(state.fault_step)[:len(rows)]
    faulty = np.flatnonzero(steps >= 0)
    if not faulty.size:
        return
    row = int(faulty[0])
    source = int(sharding.to_host(state.fault_source)[row])
    value = float(sharding.to_host(state.fault_value)[row])
    what = ("contain NaN" if math.isnan(value) else "contain +inf" if value > 0
            else "are -inf for every token")
    step = int(steps[row])
    others = (f" (and {faulty.size - 1} later row{'s' if faulty.size > 2 else ''} of this batch)"
              if faulty.size > 1 else "")
    raise NonFiniteError(
        f"prompt {rows[row]}: {FAULT_SOURCES[source]} {what} at decode step {step} (new token "
        f"{step + 1}){others}; {_FAULT_HINTS[source]}", rows[row], step, FAULT_SOURCES[source])


def is_token_ids(prompt) -> bool:
    """Whether a prompt is token ids already (not text, not chat messages)."""
    return (not isinstance(prompt, str) and len(prompt) > 0
            and all(isinstance(t, int | np.integer) for t in prompt))
