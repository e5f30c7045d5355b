"""Two layouts of a decoder's layer parameters, and which one a forward pass gets.

Stacked (what every parameter pytree holds: checkpoints, training, sharding, DiReg): each
weight is one [L, ...] array and the layers run as one `nn.scan`, so compile time does not grow
with depth. Per layer (decoding on one CPU device): `params["layers"]` is a tuple of L pytrees
and the layers are unrolled.

Why two: with more than one row per product (batch > 1, the Pv-Arm's safety rows, prefill),
XLA:CPU runs a matrix-matrix product through a library kernel that needs its operand in a buffer
of its own, so a scanned layer's weight is first copied out of the stacked array, in every step
(`benchmarks/row_products.py` times a decode step's MLP products both ways: about a quarter less
time per layer at 16 rows). Separate per-layer buffers are read where they lie. On CPU the
per-layer arrays are views of the stacked buffers (`jax.device_put` of a NumPy view aliases host
memory), so the second layout costs no memory. Accelerators and meshes keep the stacked layout.
"""

from __future__ import annotations

import jax
import numpy as np

LAYER_LAYOUTS = ("auto", "stacked", "per_layer")


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


def resolve(layout: str, params, mesh=None) -> str:
    """"stacked" or "per_layer" for `layout` ("auto": per layer on a lone CPU device)."""
    if layout not in LAYER_LAYOUTS:
        raise ValueError(f"layer layout {layout!r}: choose from {', '.join(LAYER_LAYOUTS)}")
    if layout != "auto":
        return layout
    if is_per_layer(params):
        return "per_layer"
    one_cpu = _one_cpu_device(jax.tree.leaves(params)[0])
    return "per_layer" if mesh is None and one_cpu else "stacked"


def for_forward(params, layout: str = "auto", mesh=None) -> dict:
    """`params` in the layout `layout` resolves to (a no-op for "stacked" params staying so)."""
    if resolve(layout, params, mesh) == "per_layer":
        return unstack(params)
    if is_per_layer(params):
        raise ValueError("per-layer parameters cannot be restacked here; keep the stacked "
                         "pytree and pass it instead")
    return params
