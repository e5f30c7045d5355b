"""Three layouts of a decoder's layer parameters, and which one a forward pass gets.

Stacked (what every parameter pytree holds: checkpoints, training, sharding, DiReg): each
weight is one [L, ...] array and the layers run as one `nn.scan`, so compile time does not grow
with depth. Per layer (decoding on one CPU device): `params["layers"]` is a tuple of L pytrees
and the layers are unrolled. Packed (decoding on one CPU device, float32, where the native
kernel builds): per layer too, with every projection's weight packed in strips of 16 output
features for `kernels.rows_matmul` (the parameter "packed" in place of "weight"), and the output
head (the tied embedding or `lm_head`) packed beside its weight as `params["packed_head"]`: the
head keeps its weight, which the embedding lookup and products of many rows (prefill) read.

Why per layer: with more than one row per product (batch > 1, the Pv-Arm's safety rows,
prefill), XLA:CPU runs a matrix-matrix product through a library kernel that needs its operand
in a buffer of its own, so a scanned layer's weight is first copied out of the stacked array, in
every step (`benchmarks/row_products.py` times a decode step's MLP products both ways: about a
quarter less time per layer at 16 rows). Separate per-layer buffers are read where they lie. On
CPU the per-layer arrays are views of the stacked buffers (`jax.device_put` of a NumPy view
aliases host memory), so that layout costs no memory.

Why packed: even from its own buffer, XLA:CPU's product of 2 to 32 rows takes 1.8-2.4x the time
of reading the weights once; the native kernel streams each packed strip once. The packed
arrays are a second copy of the layer and head weights, made once per parameter pytree and kept
while it lives (`pack`); "auto" takes them only while they fit in a quarter of the memory
available.
Accelerators and meshes keep the stacked layout.
"""

from __future__ import annotations

import os
import weakref

import jax
import numpy as np

from prosocial_jax.kernels import rows_matmul

LAYER_LAYOUTS = ("auto", "stacked", "per_layer", "packed")


def is_per_layer(params) -> bool:
    return isinstance(params.get("layers"), tuple)


def _one_cpu_device(x: jax.Array) -> bool:
    devices = x.devices()
    return len(devices) == 1 and next(iter(devices)).platform == "cpu"


def _layer(x: jax.Array, index: int) -> jax.Array:
    """Layer `index` of a stacked array: a view of its buffer on one CPU device (np.asarray of
    a CPU array and device_put of an aligned NumPy view are both zero-copy), else a copy."""
    if _one_cpu_device(x):
        return jax.device_put(np.asarray(x)[index], next(iter(x.devices())))
    return x[index]


def unstack(params) -> dict:
    """`params` with `layers` as a tuple of per-layer pytrees (unchanged if it already is)."""
    if is_per_layer(params):
        return params
    stacked = params["layers"]
    count = jax.tree.leaves(stacked)[0].shape[0]
    layers = tuple(jax.tree.map(lambda x, i=i: _layer(x, i), stacked) for i in range(count))
    return {**params, "layers": layers}


def is_packed(params) -> bool:
    return is_per_layer(params) and any("packed" in group[name]
                                        for group, name in _projections(params["layers"][0]))


def _projections(layer) -> list[tuple[dict, str]]:
    """(parent dict, name) of every projection module of one layer's parameter pytree."""
    return [(group, name) for group in layer.values() if isinstance(group, dict)
            for name, module in group.items() if isinstance(module, dict) and (
                "weight" in module or "packed" in module) and name.endswith("_proj")]


def _packable(params, mesh) -> bool:
    """The packed layout's conditions: one CPU device, no mesh, float32 projection weights,
    and the native kernel available."""
    if mesh is not None or not _one_cpu_device(jax.tree.leaves(params)[0]):
        return False
    stacked = params["layers"]
    weights = [m[name]["weight"] for m, name in _projections(stacked)] if isinstance(
        stacked, dict) else []
    return bool(weights) and all(w.dtype == np.float32 for w in weights) and (
        rows_matmul.available())


def _available_memory() -> int:
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def resolve(layout: str, params, mesh=None) -> str:
    """"stacked", "per_layer" or "packed" for `layout` ("auto": packed on a lone CPU device
    where it applies and its copy of the layer weights takes under a quarter of the memory
    available, else per layer there; stacked elsewhere)."""
    if layout not in LAYER_LAYOUTS:
        raise ValueError(f"layer layout {layout!r}: choose from {', '.join(LAYER_LAYOUTS)}")
    if layout == "packed" and not is_packed(params) and not _packable(params, mesh):
        raise ValueError("the packed layer layout needs float32 weights on one CPU device, no "
                         "mesh, and the native kernel (kernels.rows_matmul: a C++ compiler and "
                         "an AVX2/FMA CPU); use per_layer")
    if layout != "auto":
        return layout
    if is_per_layer(params):
        return "packed" if is_packed(params) else "per_layer"
    if not (mesh is None and _one_cpu_device(jax.tree.leaves(params)[0])):
        return "stacked"
    if _packable(params, mesh) and (_key(params) in _id_packed
                                    or 4 * _packed_bytes(params) < _available_memory()):
        return "packed"
    return "per_layer"


def _head_weight(params) -> jax.Array:
    """The output head's weight [V, D]: the untied `lm_head`, else the tied embedding."""
    return params["lm_head"]["weight"] if "lm_head" in params else params["embed"]["embedding"]


def _packed_bytes(params) -> int:
    """Bytes of the packed copy: the layer weights and the output head."""
    return sum(x.nbytes for x in jax.tree.leaves(params["layers"])) + (
        _head_weight(params).nbytes)


# Packed layers by the stacked layer arrays they were made from, and packed heads by the head
# weight: made once, dropped with those arrays. Kept apart: pytrees that share the layers may
# differ in the head (a reward model on the base model's layers).
_id_packed: dict[tuple[int, ...], tuple] = {}
_id_packed_head: dict[int, jax.Array] = {}


def _key(params) -> tuple[int, ...]:
    return tuple(id(x) for x in jax.tree.leaves(params["layers"]))


def pack(params) -> dict:
    """`params` per layer with every projection's weight packed for `kernels.rows_matmul` (the
    parameter "packed" in place of "weight"; biases and norms as they are), and the output head
    packed as `params["packed_head"]["packed"]`. Made once per stacked pytree and kept until its
    layer arrays (the head's weight) are freed."""
    device = next(iter(jax.tree.leaves(params)[0].devices()))
    head = _head_weight(params)
    if id(head) not in _id_packed_head:
        _id_packed_head[id(head)] = jax.device_put(rows_matmul.pack(head), device)
        weakref.finalize(head, _id_packed_head.pop, id(head), None)
    params = {**params, "packed_head": {"packed": _id_packed_head[id(head)]}}
    key = _key(params)
    if key in _id_packed:
        return {**params, "layers": _id_packed[key]}
    layers = []
    for layer in unstack(params)["layers"]:
        layer = jax.tree.map(lambda x: x, layer)  # a copy of the dicts, not of the arrays
        for group, name in _projections(layer):
            module = dict(group[name])
            module["packed"] = jax.device_put(rows_matmul.pack(module.pop("weight")), device)
            group[name] = module
        layers.append(layer)
    _id_packed[key] = tuple(layers)
    for leaf in jax.tree.leaves(params["layers"]):  # any of them freed: its id may be reused
        weakref.finalize(leaf, _id_packed.pop, key, None)
    return {**params, "layers": _id_packed[key]}


def for_forward(params, layout: str = "auto", mesh=None) -> dict:
    """`params` in the layout `layout` resolves to (a no-op for "stacked" params staying so)."""
    resolved = resolve(layout, params, mesh)
    if resolved == "packed":
        return params if is_packed(params) else pack(params)
    if resolved == "per_layer":
        if is_packed(params):
            raise ValueError("packed parameters cannot be unpacked here; keep the stacked "
                             "pytree and pass it instead")
        return unstack(params)
    if is_per_layer(params):
        raise ValueError("per-layer parameters cannot be restacked here; keep the stacked "
                         "pytree and pass it instead")
    return params
