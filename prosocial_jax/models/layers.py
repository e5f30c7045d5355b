"""Two layouts of a decoder's layer parameters, and which one a forward pass gets.

Stacked (what every parameter pytree holds: checkpoints, training, sharding, DiReg): each
weight is one [L, ...] array and the layers run as one `nn.scan`, so compile time does not grow
with depth. Per layer (decoding on one CPU device): `params["layers"]` is a tuple of L pytrees
and the layers are unrolled.

Why two: with more than one row per product (batch > 1, the Pv-Arm's safety rows, prefill),
XLA:CPU runs a matrix-matrix product through a library kernel that needs its operand in a buffer
of its own, so a scanned layer's weight is first copied out of the stacked array, in every step.
That copy was about a quarter of a batch-16 decode step of SmolLM2-135M. Separate per-layer
buffers are read where they lie. On CPU the per-layer arrays are views of the stacked buffers
(`jax.device_put` of a NumPy view aliases host memory), so the second layout costs no memory.
Accelerators keep the stacked layout.
"""

from __future__ import annotations

import jax
import numpy as np

LAYER_LAYOUTS = ("auto", "stacked", "per_layer")


def is_per_layer(params) -> bool:
    return isinstance(params.get("layers"), tuple)


def unstack(params) -> dict:
    """`params` with `layers` as a tuple of per-layer pytrees (unchanged if it already is).

    On a CPU device each per-layer array aliases its slice of the stacked buffer (no copy);
    elsewhere, or where the slice is not aligned for aliasing, it is a copy."""
    if is_per_layer(params):
        return params
    stacked = params["layers"]
    count = jax.tree.leaves(stacked)[0].shape[0]
    hosts = jax.tree.map(_host_view, stacked)
    layers = tuple(jax.tree.map(lambda host, x, i=i: _layer(host, x, i), hosts, stacked)
                   for i in range(count))
    return {**params, "layers": layers}


def _host_view(x: jax.Array):
    """A NumPy view of a single-CPU-device array (no copy), or None."""
    if len(x.devices()) == 1 and next(iter(x.devices())).platform == "cpu":
        return np.asarray(x)
    return None


def _layer(host, x: jax.Array, index: int) -> jax.Array:
    if host is None:
        return x[index]
    return jax.device_put(host[index], next(iter(x.devices())))


def resolve(layout: str, params, mesh=None) -> str:
    """"stacked" or "per_layer" for `layout` ("auto": per layer on a lone CPU device)."""
    if layout not in LAYER_LAYOUTS:
        raise ValueError(f"layer layout {layout!r}: choose from {', '.join(LAYER_LAYOUTS)}")
    if layout != "auto":
        return layout
    if is_per_layer(params):
        return "per_layer"
    leaf = jax.tree.leaves(params)[0]
    one_cpu = len(leaf.devices()) == 1 and next(iter(leaf.devices())).platform == "cpu"
    return "per_layer" if mesh is None and one_cpu else "stacked"


def for_forward(params, layout: str = "auto", mesh=None) -> dict:
    """`params` in the layout `layout` resolves to (a no-op for "stacked" params staying so)."""
    if resolve(layout, params, mesh) == "per_layer":
        return unstack(params)
    if is_per_layer(params):
        raise ValueError("per-layer parameters cannot be restacked here; keep the stacked "
                         "pytree and pass it instead")
    return params
