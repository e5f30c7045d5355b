"""Decoding: batched, KV-cached generation, plain or guided (safe first, prosocial second).

- `sampling`: per-row temperature / top-k / top-p, traced (changing them never recompiles).
- `decode`: the decode state pytree, prefill, the jitted `lax.scan` chunk of steps, and
  `generate`, the host loop that reads one chunk behind; `GenerateSettings` holds its defaults.
- `guidance`: the guided-decoding rule: the safety stage removes next tokens the Pv-Arm's safety
  attribute scores more than tau below its best, then base + w * Pv-Arm(alpha) picks among the
  rest; `GuidanceSettings` holds the user's alpha, w, tau and plausibility floor.
- `sweep`: preference sweeps: `simplex_grid` (every preference whose weights are multiples of a
  step, or over a subset of attributes) and `sweep`, prompts x grid points as the rows of one
  batched guided decode, each prompt prefilled once per batch.

Imports only `models` (the decoder, its cache, adapters, sharding) and the leaf utilities.
"""

from prosocial_jax.decoding.decode import (
    GenerateSettings,
    Generation,
    NonFiniteError,
    generate,
)
from prosocial_jax.decoding.guidance import GuidanceError, GuidanceSettings
from prosocial_jax.decoding.sampling import SamplingParams
from prosocial_jax.decoding.sweep import SweepSettings, simplex_grid, sweep, sweep_batch_size

__all__ = ["GenerateSettings", "Generation", "GuidanceError", "GuidanceSettings",
           "NonFiniteError", "SamplingParams", "SweepSettings", "generate", "simplex_grid",
           "sweep", "sweep_batch_size"]
