"""The one place that maps logical array axes to the ("data", "model") device mesh.

Every parameter and cache axis has a logical name ("vocab", "embed", "heads", ...). `LOGICAL_RULES`
maps names to mesh axes; everything else asks this module for shardings, so changing how a model
is laid out over devices is a one-line edit here. The projections' logical axes come from their
table (`projections.PROJECTIONS`), the cache's from `cache.KEYS_LOGICAL_AXES` and
`VALUES_LOGICAL_AXES`. Shardings are a pure function of (shapes, rules, mesh). An axis whose
size does not divide evenly over its mesh axis (or, for attention heads, whose head count does
not) is replicated instead, so small models still run on any mesh.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from prosocial_jax.models.cache import (
    KEYS_LOGICAL_AXES,
    VALID_LOGICAL_AXES,
    VALUES_LOGICAL_AXES,
    KVCache,
)
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import init_params_shapes
from prosocial_jax.models.projections import PROJECTIONS

MESH_AXES = ("data", "model")

LOGICAL_RULES: dict[str, str | None] = {
    "batch": "data",
    "heads": "model",
    "kv_heads": "model",
    "mlp": "model",
    "vocab": "model",
    "embed": None,
    "layers": None,
    "seq": None,
    "head_dim": None,
}

# Two layouts of a model on the mesh. "sharded" (the default) splits weights over "model" and
# rows over "data". "replicated" keeps a whole copy of the weights on every device, rows still
# over "data": the layout of a small Pv-Arm guiding a large base on one mesh (weak-to-strong),
# which then needs no collective inside its own forward pass.
LAYOUTS: dict[str, dict[str, str | None]] = {
    "sharded": LOGICAL_RULES,
    "replicated": {name: "data" if name == "batch" else None for name in LOGICAL_RULES},
}


# The platforms the real-size configs (configs/*_7b.py, configs/llama3_8b.py) plan for: devices
# per slice or host, and memory per device in GiB (HBM).
PLATFORMS: dict[str, tuple[int, float]] = {
    "v4-16": (8, 32.0),  # Cloud TPU v4, 8 chips on 2 hosts
    "v5e-8": (8, 16.0),  # Cloud TPU v5e (v5litepod-8), one host
    "h100": (8, 80e9 / 2**30),  # 8 x H100 80GB, one node
    "h200": (8, 141e9 / 2**30),  # 8 x H200 141GB, one node
}


def layout_rules(layout: str) -> dict[str, str | None]:
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: expected one of {sorted(LAYOUTS)}")
    return LAYOUTS[layout]


# Parameter path (joined with "/") -> logical axes. A bias has its weight's output axis.
_PARAM_AXES: dict[str, tuple[str, ...]] = {
    "embed/embedding": ("vocab", "embed"),
    "lm_head/weight": ("vocab", "embed"),
    "final_norm/scale": ("embed",),
    "layers/input_norm/scale": ("layers", "embed"),
    "layers/post_attn_norm/scale": ("layers", "embed"),
    "layers/attn_out_norm/scale": ("layers", "embed"),  # Gemma 2 / 3
    "layers/mlp_out_norm/scale": ("layers", "embed"),
    # Qwen3's and Gemma 3's per-head query/key norms: one head_dim-long scale, on every device.
    "layers/attn/q_norm/scale": ("layers", None),
    "layers/attn/k_norm/scale": ("layers", None),
    **{"/".join((*p.param_path, "weight")): ("layers", *p.weight_axes)
       for p in PROJECTIONS.values()},
    **{"/".join((*p.param_path, "bias")): ("layers", p.weight_axes[0])
       for p in PROJECTIONS.values() if p.bias_flag is not None},
}


def parse_mesh_shape(text: str | Sequence[int] | None) -> tuple[int, int]:
    """'2x4' or (2, 4) -> (data, model). None -> all local devices on "data"."""
    if text is None:
        return (jax.device_count(), 1)
    if isinstance(text, str):
        parts = re.split(r"[x,]", text.strip().lower())
        try:
            shape = tuple(int(p) for p in parts)
        except ValueError:
            raise ValueError(f"mesh {text!r}: expected DATAxMODEL, e.g. 2x4") from None
    else:
        shape = tuple(int(p) for p in text)
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"mesh {text!r}: expected two positive sizes DATAxMODEL, e.g. 2x4")
    return shape  # type: ignore[return-value]


def make_mesh(shape: str | Sequence[int] | None = None) -> Mesh:
    """A ("data", "model") mesh with Auto axis types over the available devices."""
    data, model = parse_mesh_shape(shape)
    if data * model != jax.device_count():
        raise ValueError(f"mesh {data}x{model} needs {data * model} devices, but "
                         f"{jax.device_count()} are available")
    return jax.make_mesh((data, model), MESH_AXES, axis_types=(AxisType.Auto,) * 2)


def abstract_mesh(shape: str | Sequence[int]) -> AbstractMesh:
    """A device-free mesh of the given shape, for planning shardings of models we can't hold."""
    return AbstractMesh(parse_mesh_shape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 2)


def _unit_counts(config: ModelConfig) -> dict[str, int]:
    # A flattened heads axis (num_heads * head_dim) must split between heads, not inside one.
    return {"heads": config.num_heads, "kv_heads": config.num_kv_heads}


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int],
                    mesh: Mesh | AbstractMesh, config: ModelConfig | None = None,
                    layout: str = "sharded") -> P:
    """PartitionSpec for the given logical axes; an axis that doesn't divide is replicated."""
    units = _unit_counts(config) if config is not None else {}
    rules = layout_rules(layout)
    spec = []
    for name, size in zip(logical_axes, shape):
        mesh_axis = rules.get(name) if name is not None else None
        if mesh_axis is not None:
            count = units.get(name, size)
            if count % mesh.shape[mesh_axis] or size % mesh.shape[mesh_axis]:
                mesh_axis = None
        spec.append(mesh_axis)
    return P(*spec)


def param_logical_axes(params) -> dict:
    """Logical axes for every leaf of a decoder parameter pytree (same structure)."""
    axes = {}
    for path in traverse_util.flatten_dict(params, sep="/"):
        if path not in _PARAM_AXES:
            raise KeyError(f"no sharding rule for parameter {path!r}")
        axes[path] = _PARAM_AXES[path]
    return traverse_util.unflatten_dict(axes, sep="/")


def param_shardings(config: ModelConfig, params, mesh: Mesh | AbstractMesh,
                    layout: str = "sharded"):
    """NamedSharding for every parameter leaf."""
    axes = param_logical_axes(params)
    # `params` is a prefix of `axes` (whose leaves are tuples), so each leaf meets its tuple.
    return jax.tree.map(
        lambda leaf, logical: NamedSharding(
            mesh, logical_to_spec(logical, leaf.shape, mesh, config, layout)),
        params, axes)


def cache_shardings(config: ModelConfig, cache: KVCache, mesh: Mesh | AbstractMesh,
                    layout: str = "sharded") -> KVCache:
    def spec(axes, array):
        if cache.per_layer:  # an L-tuple: one layer's axes for every entry
            one = NamedSharding(mesh, logical_to_spec(axes[1:], array[0].shape, mesh, config,
                                                      layout))
            return (one,) * cache.num_layers
        return NamedSharding(mesh, logical_to_spec(axes, array.shape, mesh, config, layout))

    valid = NamedSharding(mesh, logical_to_spec(VALID_LOGICAL_AXES, cache.valid.shape, mesh,
                                                layout=layout))
    return KVCache(keys=spec(KEYS_LOGICAL_AXES, cache.keys),
                   values=spec(VALUES_LOGICAL_AXES, cache.values), valid=valid,
                   index=NamedSharding(mesh, P()))


def batch_sharding(mesh: Mesh, shape: Sequence[int]) -> NamedSharding:
    """Shard a batch-leading array over "data" (replicated on trailing axes)."""
    return NamedSharding(mesh, logical_to_spec(("batch",) + (None,) * (len(shape) - 1), shape,
                                               mesh))


def process_rows(mesh: Mesh | None, rows: int) -> slice:
    """The rows of a `rows`-row batch that this process feeds to its devices.

    One process feeds them all. With several (`jax.distributed`), the "data" axis splits rows
    over processes in contiguous blocks (process 0 first), so each process builds only its block
    and `place_batch` assembles the global array; a batch that does not split over "data" is
    replicated and every process feeds all of it."""
    if mesh is None or jax.process_count() == 1:
        return slice(0, rows)
    held = batch_sharding(mesh, (rows,)).addressable_devices_indices_map((rows,)).values()
    starts = [index[0].start or 0 for index in held]
    stops = [rows if index[0].stop is None else index[0].stop for index in held]
    start, stop = min(starts), max(stops)
    if sum(b - a for a, b in sorted(set(zip(starts, stops)))) != stop - start:
        raise ValueError(f"mesh {dict(mesh.shape)}: process {jax.process_index()}'s devices hold "
                         "rows that are not one block; build the mesh with make_mesh")
    return slice(start, stop)


def place_batch(batch: Mapping[str, Any], mesh: Mesh | None,
                rows: int | None = None) -> dict[str, jax.Array]:
    """Host arrays onto the devices: the one way a batch goes there (training, evaluation,
    decoding, `Model.logits`). Rows split over the mesh's "data" axis (`batch_sharding`), or
    the default device without a mesh.

    `rows=None`: `batch` holds every row. Otherwise `batch` holds only this process's rows
    (`process_rows(mesh, rows)`) of a `rows`-row global batch, as each process of a multi-process
    run builds them; one process holds them all, so both forms agree there."""
    if mesh is None:
        return {name: jnp.asarray(array) for name, array in batch.items()}
    if jax.process_count() == 1:
        return {name: jax.device_put(array, batch_sharding(mesh, np.shape(array)))
                for name, array in batch.items()}
    placed = {}
    for name, array in batch.items():
        array = np.asarray(array)
        total = array.shape[0] if rows is None else rows
        mine = process_rows(mesh, total)
        local = array[mine] if rows is None else array
        shape = (total, *array.shape[1:])
        if local.shape[0] != mine.stop - mine.start:
            raise ValueError(f"batch {name!r}: process {jax.process_index()} holds "
                             f"{local.shape[0]} rows, but feeds rows {mine.start}:{mine.stop} "
                             f"of {total}")
        placed[name] = jax.make_array_from_process_local_data(
            batch_sharding(mesh, shape), local, shape)
    return placed


def to_host(array: jax.Array | np.ndarray) -> np.ndarray:
    """A device array's value on the host, whole, in every process (a multi-process array whose
    shards lie on other processes' devices is gathered from them: every process must call)."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable \
            and not array.is_fully_replicated:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def shard_params(config: ModelConfig, params, mesh: Mesh, layout: str = "sharded"):
    return jax.device_put(params, param_shardings(config, params, mesh, layout))


def place_params(config: ModelConfig, params, mesh: Mesh | str | Sequence[int] | None,
                 layout: str = "sharded"):
    """Host parameters onto the devices, laid out by `layout` (see LAYOUTS) when a mesh (or its
    shape, "2x4") is given: the one way a loaded model's weights go there. Returns (params,
    mesh)."""
    layout_rules(layout)
    if isinstance(mesh, str | tuple | list):
        mesh = make_mesh(mesh)
    if mesh is None:
        return jax.device_put(params), None
    return shard_params(config, params, mesh, layout), mesh


def _itemsize(dtype) -> int:
    if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        return 8  # a threefry key: two uint32
    return np.dtype(dtype).itemsize


def per_device_bytes(shapes, shardings) -> int:
    """Bytes one device holds of the arrays `shapes` (any pytree of shaped leaves) laid out by
    `shardings` (the same structure): the largest shard's size, from shapes alone."""
    return sum(math.prod(sharding.shard_shape(leaf.shape)) * _itemsize(leaf.dtype)
               for leaf, sharding in zip(jax.tree.leaves(shapes), jax.tree.leaves(shardings)))


def memory_report(config: ModelConfig, mesh_shape: str | Sequence[int], batch: int,
                  max_len: int, dtype=jax.numpy.bfloat16) -> dict[str, float]:
    """Per-device bytes of parameters and a [batch, max_len] KV cache, from shapes only.

    Uses `jax.eval_shape` and an abstract mesh, so it works for an 8B model on a laptop.
    """
    mesh = abstract_mesh(mesh_shape)
    params = init_params_shapes(config, dtype)
    cache = jax.eval_shape(lambda: KVCache.zeros(config, batch, max_len, dtype))
    param_bytes = per_device_bytes(params, param_shardings(config, params, mesh))
    cache_bytes = per_device_bytes(cache, cache_shardings(config, cache, mesh))
    total_params = sum(math.prod(x.shape) * np.dtype(x.dtype).itemsize
                       for x in jax.tree.leaves(params))
    return {
        "mesh": f"{mesh.shape['data']}x{mesh.shape['model']}",
        "num_parameters": sum(math.prod(x.shape) for x in jax.tree.leaves(params)),
        "param_bytes_total": total_params,
        "param_bytes_per_device": param_bytes,
        "cache_bytes_per_device": cache_bytes,
        "total_bytes_per_device": param_bytes + cache_bytes,
    }
