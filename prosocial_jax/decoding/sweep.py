"""Preference sweeps: every point of a grid on the preference simplex, for every prompt, in one
batched guided decode.

ProSocialAlign's claim is that one Pv-Arm adapter serves every preference; a sweep is its
evidence: the same prompts answered under each point of a grid over the attributes' simplex,
then judged (`prosocial-jax evaluate` reads the rows' `preference` and reports the front, MIP
and hypervolume).

- `simplex_grid`: the points whose weights are multiples of `step` (the lattice of the K-simplex
  with n = 1 / step divisions: C(n + K - 1, K - 1) points, every corner among them), plus the
  centre where the lattice misses it; or the same over a subset of the attributes, the others
  held at fixed weights.
- `sweep`: prompts x grid points as the rows of `generate`, prompt-major. A batch's rows that
  continue the same prompt share its prefill (see `decode.prefill`'s `sources`): the base
  model's cache and the Pv-Arm's safety rows are computed once per prompt, not once per point.
- `sweep_batch_size`: rows per batch from the memory a batch's caches and logits take, so a
  sweep too large for memory runs in batches of what fits.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import jax
import numpy as np

from prosocial_jax import settings
from prosocial_jax.decoding.decode import (
    Generation,
    generate,
    is_token_ids,
    prefill_chunks,
)
from prosocial_jax.decoding.guidance import GuidanceError, row_preferences
from prosocial_jax.models.adapters import Adapter, AdapterSet
from prosocial_jax.models.model import Model
from prosocial_jax.models.tokenizer import encode_prompt

# Rows per batch at most. On CPU a row's share of a step keeps falling up to here (SmolLM2 with
# the safety stage, benchmarks/sweep_speed.py: 14.2 ms per row and token at 16 rows, 9.4 at 32,
# 8.9 at 64, 7.6 at 128), as the weight products turn from reading the weights to computing.
MAX_SWEEP_BATCH = 128
MEMORY_FRACTION = 0.5  # of the memory free when the sweep starts, for one batch's state


@dataclasses.dataclass(frozen=True)
class SweepSettings:
    """The grid of `prosocial-jax sweep` (see `simplex_grid`) and the name its rows carry."""

    step: float = dataclasses.field(default=0.5, metadata={
        "help": "grid resolution: weights are multiples of it (1/n)"})
    over: tuple[str, ...] = dataclasses.field(default=(), metadata={
        "help": "attributes varied over their simplex (empty: all of the adapter's)"})
    fixed: str | None = dataclasses.field(default=None, metadata={
        "help": "weights of the attributes not varied, name=w pairs (unnamed: 0)"})
    centre: bool = dataclasses.field(default=True, metadata={
        "help": "add the centre (equal weights) where the grid misses it"})
    setting: str = dataclasses.field(default="sweep", metadata={
        "help": "the rows' setting name (evaluate reports each setting's sweep)"})

    def __post_init__(self):
        settings.coerce(self, "sweep settings")
        _divisions(self.step)
        if self.fixed is not None and not self.over:
            raise ValueError(f"sweep settings: fixed weights ({self.fixed}) need `over`, the "
                             "attributes varied; without it every attribute is varied and "
                             "none is held fixed")
        if not self.setting:
            raise ValueError("sweep settings: setting must be a non-empty name")


def simplex_grid(attributes: Sequence[str], step: float, over: Sequence[str] | None = None,
                 fixed: Mapping[str, float] | str | None = None,
                 centre: bool = True) -> np.ndarray:
    """Preference vectors [G, K] in `attributes` order, each summing to 1.

    Without `over`: every vector whose entries are multiples of `step` (1 / step must be a whole
    number n): the C(n + K - 1, K - 1) lattice points of the simplex, the K corners among them.
    With `over` (a subset of the attributes): the same lattice over those attributes only,
    scaled to the weight the `fixed` ones leave (`fixed`: {name: weight} or "name=w,..." for
    attributes outside `over`; unnamed ones get 0). `centre`: add the centre (equal weights over
    the varied attributes) where the lattice does not hold it (n not a multiple of their
    count). Lattice points come in lexicographic order, largest first weight first.
    """
    names = list(attributes)
    if len(set(names)) != len(names) or not names:
        raise ValueError(f"simplex_grid: attributes must be distinct names, got {names}")
    divisions = _divisions(step)
    varied = list(names if over is None else over)
    unknown = sorted(set(varied) - set(names))
    if unknown or not varied or len(set(varied)) != len(varied):
        raise ValueError(f"simplex_grid: over={varied} must be distinct attributes among "
                         f"{', '.join(names)}" + (f" (unknown: {unknown})" if unknown else ""))
    held = _fixed_weights(fixed, names, varied)
    mass = 1.0 - sum(held.values())
    if mass <= 1e-9:
        raise ValueError(f"simplex_grid: the fixed weights {held} leave no weight (sum "
                         f"{sum(held.values()):g}) for the varied attributes {varied}")
    k = len(varied)
    points = [[count / divisions for count in counts]
              for counts in sorted(_compositions(divisions, k), reverse=True)]
    if centre and divisions % k:
        points.append([1.0 / k] * k)
    grid = np.zeros((len(points), len(names)), np.float64)
    for name, weight in held.items():
        grid[:, names.index(name)] = weight
    columns = [names.index(name) for name in varied]
    grid[:, columns] = mass * np.asarray(points)
    return grid.astype(np.float32)


def _divisions(step: float) -> int:
    if not isinstance(step, int | float) or not 0 < step <= 1:
        raise ValueError(f"simplex_grid: step must be in (0, 1], got {step!r}")
    divisions = round(1 / step)
    if abs(divisions * step - 1) > 1e-6:
        raise ValueError(f"simplex_grid: step {step!r} does not divide 1 (use 1/n: 0.5, 0.25, "
                         f"0.2, 0.1, ...)")
    return divisions


def _compositions(total: int, parts: int):
    """Every tuple of `parts` non-negative integers summing to `total` (stars and bars)."""
    for bars in itertools.combinations(range(total + parts - 1), parts - 1):
        edges = (-1, *bars, total + parts - 1)
        yield tuple(edges[i + 1] - edges[i] - 1 for i in range(parts))


def _fixed_weights(fixed, names: list[str], varied: list[str]) -> dict[str, float]:
    if fixed is None:
        fixed = {}
    if isinstance(fixed, str):
        try:
            fixed = {k.strip(): float(v) for k, v in (part.split("=", 1)
                                                      for part in fixed.split(",") if part.strip())}
        except ValueError:
            raise ValueError(f"simplex_grid: cannot read fixed weights {fixed!r}: use "
                             "name=weight pairs, e.g. truthfulness=0.2,harmlessness=0") from None
    unknown = sorted(set(fixed) - set(names))
    if unknown:
        raise ValueError(f"simplex_grid: fixed weights for unknown attributes {unknown} (known: "
                         f"{', '.join(names)})")
    clash = sorted(set(fixed) & set(varied))
    if clash:
        raise ValueError(f"simplex_grid: {clash} cannot be both varied (over) and fixed")
    for name, weight in fixed.items():
        if not math.isfinite(weight) or weight < 0:
            raise ValueError(f"simplex_grid: fixed weight {name}={weight!r} must be finite and "
                             ">= 0")
    return {name: float(fixed.get(name, 0.0)) for name in names if name not in varied}


def sweep_batch_size(model: Model, reward: Model, prompt_tokens: int, max_new_tokens: int,
                     safety_stage: bool = True, free_bytes: int | None = None,
                     cap: int = MAX_SWEEP_BATCH, reward_rows: int | None = None) -> int:
    """Rows per batch of a sweep: the most (up to `cap`, a power of two) whose decode state
    takes at most MEMORY_FRACTION of `free_bytes` (None: the memory free on the model's device
    now). A row holds its base cache, `reward_rows` rows of the reward backbone's cache (None:
    the Pv-Arm's two, one without the safety stage; an AdapterSet's: one per member), and
    float32 logits of both models (next-token logits and the guided scores' temporaries)."""
    if free_bytes is None:
        free_bytes = free_memory_bytes(model)
    slots = prefill_chunks(prompt_tokens, prompt_tokens)[0] + max_new_tokens
    copies = reward_rows or (2 if safety_stage else 1)
    per_row = slots * (_kv_bytes_per_token(model) + copies * _kv_bytes_per_token(reward))
    per_row += 4 * (1 + copies) * 4 * max(model.config.vocab_size, reward.config.vocab_size)
    rows = int(MEMORY_FRACTION * free_bytes // per_row)
    if rows < 1:
        raise MemoryError(f"one sweep row needs {per_row / 2**20:.0f} MiB of caches and logits "
                          f"({slots} slots); {free_bytes / 2**20:.0f} MiB are free")
    return min(cap, 1 << (rows.bit_length() - 1))


def _kv_bytes_per_token(model: Model) -> int:
    c = model.config
    itemsize = np.dtype(jax.tree.leaves(model.params)[0].dtype).itemsize
    return 2 * c.num_layers * c.num_kv_heads * c.head_dim * itemsize


def free_memory_bytes(model: Model) -> int:
    """Free memory where the model's arrays live: the accelerator's (limit minus in use, per
    device) or, on CPU, the host's MemAvailable."""
    device = jax.tree.leaves(model.params)[0].devices().pop()
    stats = device.memory_stats() if device.platform != "cpu" else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def sweep(model: Model, prompts: Sequence, adapter: Adapter | AdapterSet, grid, *,
          reward: Model | None = None, batch_size: int | None = None,
          safety_stage: bool = True, max_new_tokens: int = 128, progress: bool = False,
          **generate_kwargs) -> list[list[Generation]]:
    """Answers every prompt under every preference of `grid` ([G, K] in the adapter's attribute
    order, e.g. from `simplex_grid`, or G preferences in any form `generate` takes) with guided
    decoding; returns, per prompt, its G generations in grid order.

    The P x G rows run as batches of `generate` (prompt-major, so a batch's rows share few
    prompts and each prompt is prefilled once per batch); `batch_size=None`: the fewest batches
    of at most `sweep_batch_size` rows, all of one size. Other keywords (guidance,
    safety_margin, temperature, ...) go to `generate` as they are: scalars, or one value per
    row (P x G, prompt-major).
    """
    if "preferences" in generate_kwargs or "preference" in generate_kwargs:
        raise GuidanceError("sweep: the grid gives every row's preference; pass no "
                            "preference(s)")
    if not len(grid):
        raise GuidanceError("sweep: the grid has no points")
    try:
        points, _ = row_preferences(adapter, None, len(grid), list(grid))
    except GuidanceError as error:
        raise GuidanceError(f"sweep: grid {error}") from None
    if not prompts:
        return []
    reward = reward or model
    rows = [prompt for prompt in prompts for _ in points]
    if batch_size is None:  # the fewest batches that fit, made equal (no padding rows)
        longest = max(_prompt_tokens(model, p, generate_kwargs) for p in prompts)
        members = len(adapter.adapters) if isinstance(adapter, AdapterSet) else None
        fits = sweep_batch_size(model, reward, longest, max_new_tokens, safety_stage,
                                reward_rows=members)
        batch_size = -(-len(rows) // -(-len(rows) // fits))
    results = generate(model, rows, adapter=adapter, reward=reward,
                       preferences=[p for _ in prompts for p in points], batch_size=batch_size,
                       safety_stage=safety_stage, max_new_tokens=max_new_tokens,
                       progress=progress, **generate_kwargs)
    return [results[i:i + len(points)] for i in range(0, len(results), len(points))]


def _prompt_tokens(model: Model, prompt, generate_kwargs) -> int:
    """The prompt's length in tokens, encoded as `generate` encodes it."""
    if is_token_ids(prompt):
        return len(prompt)
    return len(encode_prompt(model.tokenizer, prompt, generate_kwargs.get("use_chat_template"),
                             generate_kwargs.get("system")))
