"""Plain LoRA for supervised fine-tuning, as a reparameterisation of the frozen parameter pytree.

    W = W0 + (alpha / r) * B @ A,   A [r, in] ~ U(-1/sqrt(in), 1/sqrt(in)),   B [out, r] = 0

Factors are stacked like the layers they adapt ([L, r, in], [L, out, r]). `merge_lora` builds the
effective weights (used inside the loss, and once at the end to export a merged checkpoint), so
the decoder itself needs no LoRA code path. Any of the decoder's projections
(`prosocial_jax.models.projections.PROJECTIONS`) can be a target.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prosocial_jax.models.projections import PROJECTIONS


def init_lora(params, targets, rank: int, key: jax.Array) -> dict:
    """LoRA factors for every targeted projection (float32, B = 0 so the model is unchanged)."""
    unknown = sorted(set(targets) - set(PROJECTIONS))
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; choose from {sorted(PROJECTIONS)}")
    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    factors = {}
    for name, key_i in zip(sorted(targets), jax.random.split(key, len(targets))):
        weight = params["layers"][PROJECTIONS[name].group][name]["weight"]
        layers, out_features, in_features = weight.shape
        bound = in_features ** -0.5
        factors[name] = {
            "A": jax.random.uniform(key_i, (layers, rank, in_features), jnp.float32,
                                    -bound, bound),
            "B": jnp.zeros((layers, out_features, rank), jnp.float32),
        }
    return factors


def merge_lora(params, factors: dict, scale: float):
    """Parameters with every adapted weight replaced by W0 + scale * B @ A (W0's dtype)."""
    layers = dict(params["layers"])
    for name, factor in factors.items():
        group_name = PROJECTIONS[name].group
        group = dict(layers[group_name])
        weight = group[name]["weight"]
        delta = jnp.einsum("lor,lri->loi", factor["B"], factor["A"])
        group[name] = {**group[name], "weight": (weight + scale * delta).astype(weight.dtype)}
        layers[group_name] = group
    return {**params, "layers": layers}
