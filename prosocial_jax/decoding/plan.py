"""Per-device memory of guided decoding, from shapes alone (no weights are read or made).

`guided_decoding_plan` adds up, per device of a ("data", "model") mesh, the base model's
weights, the Pv-Arm backbone's (sharded like the base, or replicated for a small Pv-Arm guiding
a large base: weak-to-strong), the adapter, both KV caches (the Pv-Arm's has two rows per prompt
when the safety stage is on) and the per-step logits, by the same sharding rules the models are
placed with. On a mesh of real devices it also compiles one decode step from ShapeDtypeStructs
carrying those shardings and reports XLA's own per-device accounting beside it: the plan's
argument bytes must agree with XLA's (the test of both), and XLA adds the step's temporaries.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from prosocial_jax.decoding.decode import DecodeState, decode_chunk, prefill
from prosocial_jax.decoding.guidance import Guidance, GuideInputs, GuideSpec
from prosocial_jax.decoding.sampling import SamplingParams
from prosocial_jax.models import sharding
from prosocial_jax.models.adapters import AdapterConfig, init_adapter
from prosocial_jax.models.cache import KVCache
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import init_params_shapes

PROMPT_LEN = 64  # prompt slots of the planned batch (the rest of max_len is for new tokens)


def _with_shardings(shapes, shardings):
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        shapes, shardings)


@dataclasses.dataclass(frozen=True)
class _Parts:
    """Shapes and shardings of everything one guided decode step holds."""

    base: tuple[Any, Any]
    reward: tuple[Any, Any]
    adapter: tuple[Any, Any]
    base_cache: tuple[Any, Any]
    reward_cache: tuple[Any, Any]
    logits: tuple[Any, Any]


def _parts(base: ModelConfig, reward: ModelConfig, adapter: AdapterConfig,
           mesh: Mesh | AbstractMesh, batch: int, max_len: int, dtype, reward_layout: str,
           copies: int) -> _Parts:
    replicated = NamedSharding(mesh, P())
    base_params = init_params_shapes(base, dtype)
    reward_params = init_params_shapes(reward, dtype)
    adapter_params = jax.eval_shape(lambda: init_adapter(reward, adapter,
                                                         jax.random.key(0)).params)
    base_cache = jax.eval_shape(lambda: KVCache.zeros(base, batch, max_len, dtype))
    reward_cache = jax.eval_shape(lambda: KVCache.zeros(reward, copies * batch, max_len, dtype))
    logits = (jax.ShapeDtypeStruct((batch, base.vocab_size), jnp.float32),
              jax.ShapeDtypeStruct((copies * batch, reward.vocab_size), jnp.float32))
    return _Parts(
        base=(base_params, sharding.param_shardings(base, base_params, mesh)),
        reward=(reward_params, sharding.param_shardings(reward, reward_params, mesh,
                                                        reward_layout)),
        adapter=(adapter_params, jax.tree.map(lambda _: replicated, adapter_params)),
        base_cache=(base_cache, sharding.cache_shardings(base, base_cache, mesh)),
        reward_cache=(reward_cache, sharding.cache_shardings(reward, reward_cache, mesh,
                                                             reward_layout)),
        logits=(logits, tuple(sharding.batch_sharding(mesh, x.shape) for x in logits)))


def guided_decoding_plan(base: ModelConfig, reward: ModelConfig | None, adapter: AdapterConfig,
                         mesh: Mesh | AbstractMesh | str, batch: int, max_len: int,
                         dtype=jnp.bfloat16, reward_layout: str = "sharded",
                         safety_stage: bool = True, compile: bool = False) -> dict[str, Any]:
    """Bytes per device of guided decoding `batch` rows of `max_len` slots on `mesh` (a shape
    such as "2x4" needs no devices). `reward=None`: the base is its own Pv-Arm backbone (one
    set of weights). `compile=True` (a Mesh of real devices) adds XLA's accounting of one
    compiled decode step ("xla")."""
    if isinstance(mesh, str):
        mesh = sharding.abstract_mesh(mesh)
    shared = reward is None
    reward = base if shared else reward
    copies = 2 if safety_stage else 1
    parts = _parts(base, reward, adapter, mesh, batch, max_len, dtype, reward_layout, copies)
    per_device = {name: sharding.per_device_bytes(*getattr(parts, name))
                  for name in ("base", "reward", "adapter", "base_cache", "reward_cache",
                               "logits")}
    if shared:
        per_device["reward"] = 0
    plan = {"mesh": f"{mesh.shape['data']}x{mesh.shape['model']}", "batch": batch,
            "max_len": max_len, "dtype": str(np.dtype(dtype)), "reward_layout": reward_layout,
            "safety_stage": safety_stage, "bytes_per_device": per_device,
            "total_bytes_per_device": sum(per_device.values())}
    if compile:
        if not isinstance(mesh, Mesh):
            raise ValueError("compile=True needs a mesh of real devices")
        plan["xla"] = _compiled_step(base, reward, adapter, parts, mesh, batch, max_len,
                                     reward_layout, safety_stage, shared)
    return plan


def _compiled_step(base, reward, adapter, parts, mesh, batch, max_len, reward_layout,
                   safety_stage, shared) -> dict[str, int]:
    """XLA's per-device memory of one compiled guided decode step, from shapes alone."""
    base_params = _with_shardings(*parts.base)
    reward_params = base_params if shared else _with_shardings(*parts.reward)
    adapter_params = _with_shardings(*parts.adapter)
    guidance = Guidance.create(np.full((batch, adapter.num_attributes),
                                       1 / adapter.num_attributes, np.float32), 1.0, 1.0)
    guide = GuideInputs(reward_params, adapter_params, guidance)
    spec = GuideSpec(reward, adapter, min(base.vocab_size, reward.vocab_size), safety_stage,
                     reward_layout=reward_layout)
    tokens = jax.ShapeDtypeStruct((batch, PROMPT_LEN), jnp.int32,
                                  sharding=sharding.batch_sharding(mesh, (batch, PROMPT_LEN)))
    mask = jax.ShapeDtypeStruct(tokens.shape, jnp.bool_, sharding=tokens.sharding)
    state = jax.eval_shape(
        functools.partial(prefill, base, max_len=max_len, num_new=max_len - PROMPT_LEN,
                          mesh=mesh, spec=spec),
        base_params, tokens, mask, jax.random.key(0), max_len - PROMPT_LEN, guide)
    state = _state_with_shardings(state, parts, mesh)
    sampling = SamplingParams.create(batch)
    stops = jnp.asarray([2], jnp.int32)
    compiled = decode_chunk.lower(base, base_params, state, sampling, stops, 0, guide,
                                  num_steps=1, spec=spec).compile()
    analysis = compiled.memory_analysis()
    return {name: int(getattr(analysis, f"{name}_size_in_bytes"))
            for name in ("argument", "output", "alias", "temp")}


def _state_with_shardings(state: DecodeState, parts: _Parts, mesh: Mesh) -> DecodeState:
    """The decode state's shapes with the shardings prefill gives them (caches by the layout
    rules, per-row arrays over "data", scalars and the key replicated)."""
    replicated = NamedSharding(mesh, P())

    def rows(x):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=(
            sharding.batch_sharding(mesh, x.shape) if x.ndim else replicated))

    fields = {field.name: getattr(state, field.name) for field in dataclasses.fields(state)}
    out = {name: None if value is None else jax.tree.map(rows, value)
           for name, value in fields.items()}
    out["cache"] = _with_shardings(state.cache, parts.base_cache[1])
    if state.reward_cache is not None:
        out["reward_cache"] = _with_shardings(state.reward_cache, parts.reward_cache[1])
    out["rng"] = jax.ShapeDtypeStruct(state.rng.shape, state.rng.dtype, sharding=replicated)
    return DecodeState(**out)
