"""Batched, KV-cached decoding: a jitted `lax.scan` over chunks of steps, driven by a host loop.

The host loop only reads one boolean per chunk ("is every row done?"), and it reads the flag of the
chunk *before* the one it just dispatched, so the device never waits for the host. Sampling
settings (temperature, top-k, top-p) are per-row traced arrays: changing them never recompiles.
Prompts are left-padded; each row keeps its own rotary position while all rows share cache slots.
Batch size and prompt length are bucketed so that new prompts rarely trigger a compile.
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

from prosocial_jax import sharding
from prosocial_jax.models.cache import KVCache
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import forward_with_cache, positions_from_mask
from prosocial_jax.models.model import Model
from prosocial_jax.models.tokenizer import Messages, decode, encode_prompt

PROMPT_BUCKET = 32  # prompt lengths are padded up to a multiple of this


@struct.dataclass
class SamplingParams:
    """Per-row sampling settings (traced). temperature 0 = greedy; top_k 0 and top_p 1 = off."""

    temperature_B: jax.Array
    top_k_B: jax.Array
    top_p_B: jax.Array

    @classmethod
    def create(cls, batch: int, temperature: float | Sequence[float] = 0.0,
               top_k: int | Sequence[int] = 0, top_p: float | Sequence[float] = 1.0):
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


@struct.dataclass
class DecodeState:
    cache: KVCache
    logits_BxV: jax.Array  # float32 logits for the next token of every row
    positions_B: jax.Array  # rotary position of the next token of every row
    tokens_BxN: jax.Array  # generated tokens; `pad_id` after a row is done
    step: jax.Array  # int32 scalar: tokens generated so far
    max_new_tokens: jax.Array  # int32 scalar
    done_B: jax.Array
    stopped_B: jax.Array  # done because a stop token was produced (vs. the length limit)
    rng: jax.Array


def sample_tokens(logits_BxV: jax.Array, key: jax.Array, sampling: SamplingParams) -> jax.Array:
    """Greedy where temperature is 0, else temperature / top-k / top-p sampling, per row.

    Filters follow transformers' order (temperature, then top-k, then top-p on the renormalised
    top-k distribution). The vocabulary sort needed for top-k/top-p only runs when some row
    uses a filter.
    """
    greedy = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)

    temperature = sampling.temperature_B
    scaled = logits_BxV / jnp.where(temperature > 0, temperature, 1.0)[:, None]

    def draw_unfiltered(_):
        drawn = jax.random.categorical(key, scaled, axis=-1).astype(jnp.int32)
        return jnp.where(temperature > 0, drawn, greedy)

    def draw(_):
        vocab = logits_BxV.shape[-1]
        sorted_desc = -jnp.sort(-scaled, axis=-1)
        top_k = sampling.top_k_B
        k = jnp.where((top_k > 0) & (top_k < vocab), top_k, vocab)
        kth_value = jnp.take_along_axis(sorted_desc, (k - 1)[:, None], axis=-1)
        in_top_k = jnp.arange(vocab)[None, :] < k[:, None]
        probs = jax.nn.softmax(jnp.where(in_top_k, sorted_desc, -jnp.inf), axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        top_p = sampling.top_p_B[:, None]
        keep = in_top_k & ((mass_before < top_p) | (top_p >= 1.0))
        last_kept = jnp.maximum(jnp.sum(keep, axis=-1) - 1, 0)
        threshold = jnp.take_along_axis(sorted_desc, last_kept[:, None], axis=-1)
        threshold = jnp.maximum(threshold, kth_value)
        filtered = jnp.where(scaled >= threshold, scaled, -jnp.inf)
        drawn = jax.random.categorical(key, filtered, axis=-1).astype(jnp.int32)
        return jnp.where(temperature > 0, drawn, greedy)

    # Branches, cheapest first: all greedy; sampling without filters (no vocabulary sort);
    # sampling with top-k / top-p filters (one sort of the vocabulary per row).
    any_filter = jnp.any((sampling.top_k_B > 0) | (sampling.top_p_B < 1.0))
    branch = jnp.where(jnp.any(temperature > 0), jnp.where(any_filter, 2, 1), 0)
    return jax.lax.switch(branch, [lambda _: greedy, draw_unfiltered, draw], None)


@functools.partial(jax.jit, static_argnames=("config", "max_len", "num_new", "mesh"))
def prefill(config: ModelConfig, params, tokens_BxT, mask_BxT, rng, max_new_tokens, *,
            max_len: int, num_new: int, mesh: Mesh | None = None) -> DecodeState:
    """Runs left-padded prompts through the model, filling a fresh cache of `max_len` slots."""
    batch = tokens_BxT.shape[0]
    dtype = jax.tree.leaves(params)[0].dtype
    cache = KVCache.zeros(config, batch, max_len, dtype)
    if mesh is not None:
        cache = jax.lax.with_sharding_constraint(
            cache, sharding.cache_shardings(config, cache, mesh))
    positions = positions_from_mask(mask_BxT)
    logits, (k, v) = forward_with_cache(config, params, tokens_BxT, positions, mask_BxT, None)
    cache = cache.append(k, v, mask_BxT)
    no_prompt = ~jnp.any(mask_BxT, axis=-1)  # padding rows of a partial batch
    return DecodeState(
        cache=cache,
        logits_BxV=logits,
        positions_B=jnp.sum(mask_BxT, axis=-1).astype(jnp.int32),
        tokens_BxN=jnp.zeros((batch, num_new), jnp.int32),
        step=jnp.zeros((), jnp.int32),
        max_new_tokens=jnp.asarray(max_new_tokens, jnp.int32),
        done_B=no_prompt,
        stopped_B=jnp.zeros((batch,), bool),
        rng=rng,
    )


def _decode_step(config: ModelConfig, params, state: DecodeState, sampling: SamplingParams,
                 stop_ids, pad_id) -> DecodeState:
    key = jax.random.fold_in(state.rng, state.step)
    token = sample_tokens(state.logits_BxV, key, sampling)
    token = jnp.where(state.done_B, pad_id, token)
    stopped = ~state.done_B & jnp.isin(token, stop_ids)
    tokens = jax.lax.dynamic_update_slice(state.tokens_BxN, token[:, None], (0, state.step))
    done = state.done_B | stopped | (state.step + 1 >= state.max_new_tokens)

    # Rows already done before this step write masked slots that nobody attends to.
    token_mask = ~state.done_B[:, None]

    def advance(_):
        return forward_with_cache(config, params, token[:, None], state.positions_B[:, None],
                                  token_mask, state.cache)

    def skip(_):  # every row has finished: the rest of the chunk costs nothing
        new_kv = jax.eval_shape(advance, None)[1]
        return state.logits_BxV, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), new_kv)

    # The cache is only read inside the cond and written after it, so XLA needn't copy it.
    logits, (k, v) = jax.lax.cond(jnp.all(done), skip, advance, None)
    cache = state.cache.append(k, v, token_mask)
    return state.replace(
        cache=cache, logits_BxV=logits, positions_B=state.positions_B + 1, tokens_BxN=tokens,
        step=state.step + 1, done_B=done, stopped_B=state.stopped_B | stopped)


@functools.partial(jax.jit, static_argnames=("config", "num_steps"), donate_argnames=("state",))
def decode_chunk(config: ModelConfig, params, state: DecodeState, sampling: SamplingParams,
                 stop_ids, pad_id, *, num_steps: int) -> tuple[DecodeState, jax.Array]:
    """`num_steps` decode steps in one compiled scan; returns the state and "all rows done"."""
    def body(carry, _):
        return _decode_step(config, params, carry, sampling, stop_ids, pad_id), None

    state, _ = jax.lax.scan(body, state, None, length=num_steps)
    return state, jnp.all(state.done_B)


@dataclasses.dataclass
class Generation:
    """One decoded row."""

    prompt: Any
    text: str | None
    tokens: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (a stop token was produced) or "length"


def _round_up(value: int, multiple: int) -> int:
    return max(multiple, math.ceil(value / multiple) * multiple)


def stop_token_ids(model: Model) -> list[int]:
    ids = set(model.config.eos_token_ids)
    if model.tokenizer is not None and model.tokenizer.eos_token_id is not None:
        ids.add(int(model.tokenizer.eos_token_id))
    return sorted(ids)


def generate(model: Model, prompts: Sequence[str | Messages | Sequence[int]], *,
             max_new_tokens: int = 128, temperature: float | Sequence[float] = 0.0,
             top_k: int | Sequence[int] = 0, top_p: float | Sequence[float] = 1.0,
             seed: int = 0, batch_size: int | None = None, chunk_size: int = 16,
             use_chat_template: bool | None = None, system: str | None = None,
             stop_tokens: Sequence[int] | None = None, progress: bool = False) -> list[Generation]:
    """Decodes every prompt (a string, chat messages, or token ids) and returns `Generation`s.

    Greedy by default (temperature 0). Per-row sampling settings may be sequences, one per prompt.
    With an instruct model the chat template is applied (`use_chat_template=None` decides by
    whether the tokenizer has one). Same seed, same prompts and batch size: same output.

    Example: `generate(pj.load_model("bundled:smollm2"), ["Hi!"], max_new_tokens=16)[0].text`.
    """
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if not prompts:
        return []
    encoded = [list(p) if _is_token_ids(p) else encode_prompt(model.tokenizer, p,
                                                              use_chat_template, system)
               for p in prompts]
    for i, ids in enumerate(encoded):
        if not ids:
            raise ValueError(f"prompt {i} is empty after tokenisation")
    n = len(encoded)
    batch_size = batch_size or min(n, 32)
    if model.mesh is not None:  # rows must split evenly over the "data" axis
        batch_size = _round_up(batch_size, model.mesh.shape["data"])
    sampling_rows = SamplingParams.create(n, temperature, top_k, top_p)  # validates per row
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
        results += _generate_batch(
            model, [prompts[i] for i in rows], [encoded[i] for i in rows], batch_size,
            jax.tree.map(lambda x, rows=rows: x[np.asarray(rows)], sampling_rows),
            stops, pad_id, max_new_tokens, num_new, chunk_size,
            jax.random.fold_in(jax.random.key(seed), start), bar)
        bar.update((start + len(rows)) * max_new_tokens - bar.n)  # rows that stopped early
    bar.close()
    return results


def _generate_batch(model, prompts, encoded, batch_size, sampling, stops, pad_id,
                    max_new_tokens, num_new, chunk_size, rng, bar) -> list[Generation]:
    config = model.config
    longest = max(len(ids) for ids in encoded)
    prompt_len = _round_up(longest, PROMPT_BUCKET)
    max_len = prompt_len + num_new
    if longest + max_new_tokens > config.max_position_embeddings:
        raise ValueError(f"prompt of {longest} tokens + {max_new_tokens} new tokens exceeds the "
                         f"model's context of {config.max_position_embeddings}")
    tokens = np.full((batch_size, prompt_len), pad_id, np.int32)
    mask = np.zeros((batch_size, prompt_len), bool)
    for row, ids in enumerate(encoded):  # left padding: every row ends at the last slot
        tokens[row, prompt_len - len(ids):] = ids
        mask[row, prompt_len - len(ids):] = True
    fill = batch_size - len(encoded)  # padding rows of a partial batch start out done
    sampling = jax.tree.map(lambda x: jnp.pad(x, (0, fill), constant_values=x[0]), sampling)
    tokens_j, mask_j = jnp.asarray(tokens), jnp.asarray(mask)
    if model.mesh is not None:
        tokens_j = jax.device_put(tokens_j, sharding.batch_sharding(model.mesh, tokens.shape))
        mask_j = jax.device_put(mask_j, sharding.batch_sharding(model.mesh, mask.shape))
    state = prefill(config, model.params, tokens_j, mask_j, rng, max_new_tokens,
                    max_len=max_len, num_new=num_new, mesh=model.mesh)
    previous_all_done = None
    for chunk in range(num_new // chunk_size):
        state, all_done = decode_chunk(config, model.params, state, sampling, stops, pad_id,
                                       num_steps=chunk_size)
        # Look one chunk behind: reading this chunk's flag now would stall the dispatch queue.
        if previous_all_done is not None and bool(previous_all_done):
            break
        previous_all_done = all_done
        bar.update(len(prompts) * min(chunk_size, max_new_tokens - chunk * chunk_size))

    generated = np.asarray(state.tokens_BxN)
    stopped = np.asarray(state.stopped_B)
    out = []
    for row, (prompt, ids) in enumerate(zip(prompts, encoded)):
        row_tokens = generated[row, :max_new_tokens].tolist()
        if stopped[row]:
            stop_at = next(i for i, t in enumerate(row_tokens) if t in set(stops.tolist()))
            row_tokens = row_tokens[: stop_at + 1]
        text = decode(model.tokenizer, row_tokens) if model.tokenizer is not None else None
        out.append(Generation(prompt=prompt, text=text, tokens=row_tokens,
                              prompt_tokens=len(ids), completion_tokens=len(row_tokens),
                              finish_reason="stop" if stopped[row] else "length"))
    return out


def _is_token_ids(prompt) -> bool:
    return (not isinstance(prompt, str) and len(prompt) > 0
            and all(isinstance(t, int | np.integer) for t in prompt))
