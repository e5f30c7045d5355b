"""DiReg: harm vectors as pure pytree arithmetic.

    tau = theta_harmful - theta_base                (task_vector)
    tau_k = keep the top-k fraction of |tau|        (trim: one exact global threshold)
    theta' = theta_base - lambda * tau_k            (apply)

Everything works leaf by leaf on parameter pytrees: structure, dtype and sharding are preserved,
and no flat copy of the model is ever made. The global top-k threshold is found exactly by a
bitwise binary search on the float32 bit patterns of |tau| (non-negative floats order like their
bits): at most 31 counting passes (15 when every leaf is bfloat16), each a fused
compare-and-sum per leaf, so a 7B model needs no more host memory than its two parameter sets
plus one leaf of temporaries.

Parameters are selected by fnmatch patterns over Hugging Face tensor names
(`model.layers.3.mlp.down_proj.weight`); inside a stacked `[layers, ...]` leaf each layer is
selected separately, so `--include 'model.layers.1?.*'` works as expected.

Non-finite numbers are refused where they enter: `task_vector` checks tau (a NaN or inf in either
checkpoint, or an overflowing difference, shows up there), `trim` the selected entries, `apply`
its result and its scale. Errors name the parameter (its HF tensor name when `config` is given,
else its pytree path) and count the NaN and infinite entries. Each check is a compare-and-count
on the same bit patterns the threshold search uses, fused into the arithmetic where it can be.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from collections.abc import Sequence
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.hf import fused_names, tensor_specs


class HarmVectorError(ValueError):
    """Incompatible models, unknown patterns or bad trimming settings."""


# ---------------------------------------------------------------------------- checks and names
def check_same_architecture(base, other, what: str = "harmful") -> None:
    """Two parameter pytrees (models, or harm vectors) of one architecture: same parameters,
    shapes and dtypes. Raises HarmVectorError naming the first parameter that differs."""
    base_flat = traverse_util.flatten_dict(base, sep="/")
    other_flat = traverse_util.flatten_dict(other, sep="/")
    for path in sorted(set(base_flat) | set(other_flat)):
        if path not in other_flat:
            raise HarmVectorError(f"parameter {path!r} is in the base model but not the {what}")
        if path not in base_flat:
            raise HarmVectorError(f"parameter {path!r} is in the {what} model but not the base")
        a, b = base_flat[path], other_flat[path]
        if a.shape != b.shape:
            raise HarmVectorError(f"parameter {path!r}: base shape {tuple(a.shape)} != {what} "
                                  f"shape {tuple(b.shape)}")
        if a.dtype != b.dtype:
            raise HarmVectorError(f"parameter {path!r}: base dtype {a.dtype} != {what} dtype "
                                  f"{b.dtype}")


def hf_names(config: ModelConfig) -> dict[str, list[str]]:
    """Parameter path ("layers/mlp/up_proj/weight") -> HF tensor names, one per stacked layer."""
    names = {}
    for spec in tensor_specs(config):
        path = "/".join(spec.path)
        names[path] = ([spec.hf_name.format(i=i) for i in range(config.num_layers)]
                       if spec.per_layer else [spec.hf_name])
    return names


def selection_mask(config: ModelConfig, params, include: Sequence[str] | None = None,
                   exclude: Sequence[str] | None = None) -> dict:
    """Per-leaf numpy bool masks (shape [layers] for stacked leaves, [] otherwise).

    `include=None` selects every floating-point parameter; `exclude` removes from that. A pattern
    that matches no parameter is an error (it is almost always a typo).
    """
    names = hf_names(config)
    fused = fused_names(config)  # Phi-3: "...qkv_proj.weight" selects q, k and v

    def matches(name: str, pattern: str) -> bool:
        return any(fnmatch.fnmatchcase(n, pattern) for n in (name, fused.get(name, name)))

    flat = traverse_util.flatten_dict(params, sep="/")
    for pattern in [*(include or []), *(exclude or [])]:
        if not any(matches(n, pattern) for ns in names.values() for n in ns):
            raise HarmVectorError(f"pattern {pattern!r} matches no parameter (names look like "
                                  "'model.layers.0.mlp.down_proj.weight')")
    masks = {}
    for path, leaf in flat.items():
        floating = jnp.issubdtype(leaf.dtype, jnp.floating)
        selected = [floating and (include is None or any(matches(n, p) for p in include))
                    and not any(matches(n, p) for p in (exclude or []))
                    for n in names[path]]
        masks[path] = np.array(selected) if len(names[path]) > 1 else np.array(selected[0])
    return traverse_util.unflatten_dict(masks, sep="/")


def _broadcast_mask(mask, leaf):
    mask = jnp.asarray(mask)
    return mask.reshape(mask.shape + (1,) * (leaf.ndim - mask.ndim))


def selected_count(params, mask) -> int:
    return sum(int(np.prod(leaf.shape[1:])) * int(np.sum(m)) if np.ndim(m) else
               (int(np.prod(leaf.shape)) if m else 0)
               for leaf, m in zip(jax.tree.leaves(params), jax.tree.leaves(mask)))


# ---------------------------------------------------------------------------- arithmetic
def _nonfinite_rows(leaf) -> jax.Array:
    """Per-row counts of NaN / +-inf entries (|x| >= inf in float32 bits)."""
    return _count_at_least(leaf, np.array(True), jnp.uint32(_INF_BITS))


def _sub_counting(base_leaf, harmful_leaf):
    # Counted in the same program as the difference: on a 1B-parameter bfloat16 tree this
    # measured about half the cost of a separate counting pass over tau.
    tau = harmful_leaf - base_leaf
    return tau, _nonfinite_rows(tau)


_sub_counting_copying = jax.jit(_sub_counting)
_sub_counting_donating = jax.jit(_sub_counting, donate_argnums=1)


def _map_counting(fn, first, second) -> tuple[object, bool]:
    """`fn` (returning a leaf and its non-finite row counts) over two trees of one structure;
    the new tree and whether any count is nonzero."""
    leaves, treedef = jax.tree.flatten(first)
    outs = [fn(a, b) for a, b in zip(leaves, treedef.flatten_up_to(second))]
    any_bad = any(bool(np.asarray(count).any()) for _, count in outs)
    return jax.tree.unflatten(treedef, [leaf for leaf, _ in outs]), any_bad


def task_vector(base, harmful, donate_harmful: bool = False,
                config: ModelConfig | None = None):
    """tau = harmful - base, leaf by leaf. `donate_harmful=True` reuses the harmful buffers
    (the harmful parameters are consumed) so no third model-sized allocation is made.

    Refuses a tau with NaN or inf entries (from either checkpoint, or an overflowing
    difference), naming the parameter (HF name with `config`) and the inputs' own counts.
    """
    check_same_architecture(base, harmful)
    tau, any_bad = _map_counting(_sub_counting_donating if donate_harmful
                                 else _sub_counting_copying, base, harmful)
    if any_bad:
        bad = _nonfinite(tau)
        def origin(path):  # which input brought them (error path only: extra passes are fine)
            inputs = {"base model": _count_nonfinite(base, path),
                      "harmful model": None if donate_harmful else _count_nonfinite(harmful,
                                                                                    path)}
            return _origin_text(inputs, "harmful - base")
        raise _nonfinite_error("the harm vector (harmful - base)", bad, config, origin)
    return tau


def _subtract_scaled(base_leaf, tau_leaf, scale):
    edited = (base_leaf - scale.astype(tau_leaf.dtype) * tau_leaf).astype(base_leaf.dtype)
    return edited, _nonfinite_rows(edited)


_subtract_scaled_copying = jax.jit(_subtract_scaled)
_subtract_scaled_donating = jax.jit(_subtract_scaled, donate_argnums=0)


def apply(base, tau, scale: float, donate_base: bool = False,
          config: ModelConfig | None = None):
    """theta' = base - scale * tau (DiReg subtracts the harm direction).

    `donate_base=True` writes the result into the base model's buffers (the base is consumed).
    A non-finite scale, or a result with NaN / inf entries (from base, tau or overflow), is an
    error naming the parameter (HF name with `config`).
    """
    check_same_architecture(base, tau, what="harm vector")
    with np.errstate(over="ignore"):
        scale32 = np.float32(scale)
    if not math.isfinite(float(scale)) or not math.isfinite(float(scale32)):
        raise HarmVectorError(f"the scale (lambda) must be a finite float32, got {scale}")
    fn = _subtract_scaled_donating if donate_base else _subtract_scaled_copying
    scale = jnp.asarray(scale, jnp.float32)
    edited, any_bad = _map_counting(lambda b, t: fn(b, t, scale), base, tau)
    if any_bad:
        bad = _nonfinite(edited)
        def origin(path):
            inputs = {"harm vector": _count_nonfinite(tau, path),
                      "base model": None if donate_base else _count_nonfinite(base, path)}
            return _origin_text(inputs, "base - scale * tau")
        raise _nonfinite_error("the edited model (base - scale * tau)", bad, config, origin)
    return edited


def combine(vectors: Sequence, weights: Sequence[float] | None = None):
    """Weighted sum of several harm vectors (default weights 1)."""
    if not vectors:
        raise HarmVectorError("combine() needs at least one vector")
    weights = [1.0] * len(vectors) if weights is None else list(weights)
    if len(weights) != len(vectors):
        raise HarmVectorError(f"{len(vectors)} vectors but {len(weights)} weights")
    total = optax.tree.scale(weights[0], vectors[0])
    for vector, weight in zip(vectors[1:], weights[1:]):
        check_same_architecture(vectors[0], vector, what="other harm vector")
        total = optax.tree.add_scale(total, weight, vector)
    return jax.tree.map(lambda t, v: t.astype(v.dtype), total, vectors[0])


# ---------------------------------------------------------------------------- trimming
# Magnitudes are compared through their float32 bit patterns (uint32): for non-negative floats
# the bits order exactly like the values, NaN sorting above +inf. bfloat16 leaves are compared
# on their own 16-bit codes (a bfloat16's float32 pattern is its code shifted left by 16), which
# avoids a conversion per element and means the low 16 bits need no search when every leaf is
# bfloat16.
_INF_BITS = 0x7F800000  # +inf: |x| >= inf holds for +-inf and NaN
_NAN_BITS = 0x7F800001  # smallest float32 pattern above +inf


def _codes(leaf) -> tuple[jax.Array, int]:
    """Unsigned magnitude codes ordered like |leaf|, and their shift into float32 bits."""
    if leaf.dtype == jnp.bfloat16:
        return jax.lax.bitcast_convert_type(leaf, jnp.uint16) & jnp.uint16(0x7FFF), 16
    return jax.lax.bitcast_convert_type(jnp.abs(leaf.astype(jnp.float32)), jnp.uint32), 0


def _codes_at_least(leaf, candidate_bits):
    codes, shift = _codes(leaf)
    if shift:  # code << 16 >= c  <=>  code >= ceil(c / 2**16)
        candidate_bits = (candidate_bits + jnp.uint32((1 << shift) - 1)) >> shift
    return codes >= candidate_bits.astype(codes.dtype)


def _block(n: int) -> int:
    """Largest divisor of n that is at most 127 (an int8 partial sum cannot overflow)."""
    return next(b for b in range(min(n, 127), 0, -1) if n % b == 0)


@jax.jit
def _count_at_least(leaf, mask, candidate_bits):
    """Per-row counts of selected entries with |x| >= the float32 value of `candidate_bits`.

    Counted in int8 blocks first: XLA's CPU reduction over bools is 3-4x faster that way, and
    int32 row counts stay exact for any model size.
    """
    hit = _codes_at_least(leaf, candidate_bits) & _broadcast_mask(mask, leaf)
    rows = hit.reshape(hit.shape[0], -1) if hit.ndim > 1 else hit.reshape(1, -1)
    block = _block(rows.shape[1])
    partial = jnp.sum(rows.reshape(rows.shape[0], -1, block).astype(jnp.int8), axis=-1,
                      dtype=jnp.int8)
    return jnp.sum(partial.astype(jnp.int32), axis=1)


def _keep(leaf, mask, threshold_bits, ties_to_keep, ties: str):
    """Zero all but selected entries above the threshold, plus ties at it: "all", "none", or
    "first" (the first `ties_to_keep` in row-major order; needs a cumulative count)."""
    selected = _broadcast_mask(mask, leaf)
    keep = _codes_at_least(leaf, threshold_bits + jnp.uint32(1)) & selected
    if ties != "none":
        tie = _codes_at_least(leaf, threshold_bits) & selected & ~keep
        if ties == "first":
            rank = jnp.cumsum(tie.reshape(-1), dtype=jnp.int32).reshape(tie.shape)
            tie &= rank <= ties_to_keep
        keep |= tie
    return jnp.where(keep, leaf, jnp.zeros((), leaf.dtype))


_keep_copying = jax.jit(_keep, static_argnames="ties")
_keep_donating = jax.jit(_keep, static_argnames="ties", donate_argnums=0)


@dataclasses.dataclass(frozen=True)
class TrimResult:
    selected: int  # entries eligible for trimming
    kept: int  # entries kept (exactly floor(k * selected))
    threshold: float  # smallest kept magnitude (0 when nothing is kept)
    ties_broken: int  # entries equal to the threshold that were dropped to keep the count exact


def keep_count(k, selected: int) -> int:
    """floor(k * selected), computed exactly with k read as the decimal it prints as.

    In binary 0.29 is 0.28999999999999998..., so the float product floor(0.29 * 100) is 28
    where the user asked for 29. `str` of a float (Python's or numpy's, float32 included) is the
    shortest decimal that reads back as the same number: what was typed on a command line or in
    a config. Fractions ("1/3", `fractions.Fraction`) and `decimal.Decimal` are exact already.
    """
    try:
        exact = Fraction(str(k))
    except (TypeError, ValueError):  # NaN, inf, or not a number at all
        exact = None
    if exact is None or not 0 <= exact <= 1:
        raise HarmVectorError(f"top-k fraction must be in [0, 1], got {k}")
    return math.floor(exact * selected)


def trim(tau, k: float, mask=None, donate: bool = False, config: ModelConfig | None = None):
    """Keeps exactly floor(k * n) of the n selected entries of `tau` with the largest magnitude.

    One global threshold over all selected parameters, found by a bitwise binary search: each
    step counts, leaf by leaf, the entries at or above a candidate (no flat copy, no sort).
    Ties at the threshold are broken by position (leaf order of the pytree, then row-major
    inside a leaf), so the kept count is exact. Unselected entries become 0. Magnitudes are
    compared in float32 (exact for bfloat16, float16 and float32 weights).
    With `donate=True` the input leaves are consumed (no second copy of tau is made).
    A selected NaN or +-inf entry is an error naming the parameter (HF name with `config`).
    Returns (trimmed tau, TrimResult).
    """
    leaves, treedef = jax.tree.flatten(tau)
    if mask is None:
        mask = jax.tree.map(lambda leaf: np.array(True), tau)
    masks = [jnp.asarray(m) for m in jax.tree.leaves(mask)]
    if len(masks) != len(leaves):
        raise HarmVectorError("the selection mask does not match the harm vector's structure")
    selected = selected_count(tau, mask)
    kept = keep_count(k, selected)

    def counts(candidate: int) -> list[int]:
        value = jnp.uint32(candidate)
        return [int(np.asarray(_count_at_least(leaf, m, value), np.int64).sum())
                for leaf, m in zip(leaves, masks)]

    if sum(counts(_INF_BITS)):  # |x| >= inf: NaN or +-inf, where the search cannot go
        bad = _nonfinite(tau, mask)
        raise _nonfinite_error("the harm vector (selected entries)", bad, config,
                               lambda path: "; are both checkpoints intact?")
    if kept == 0:  # keep nothing
        threshold_bits, ties_per_leaf = _NAN_BITS - 1, [0] * len(leaves)
    else:
        # The kept-th largest magnitude is the largest t with count(|x| >= t) >= kept; bits
        # below `lowest` are zero in every leaf's values, so they need no search.
        lowest = 16 if all(leaf.dtype == jnp.bfloat16 for leaf in leaves) else 0
        threshold_bits = 0
        for bit in range(30, lowest - 1, -1):
            candidate = threshold_bits | (1 << bit)
            if sum(counts(candidate)) >= kept:
                threshold_bits = candidate
        at_least, above = counts(threshold_bits), counts(threshold_bits + 1)
        ties_per_leaf = [a - b for a, b in zip(at_least, above)]
        kept_above = sum(above)
    out, remaining = [], kept - (kept_above if kept else 0)
    dropped = 0
    keep_fn = _keep_donating if donate else _keep_copying
    for leaf, m, tied_here in zip(leaves, masks, ties_per_leaf):
        take = min(remaining, tied_here)
        remaining -= take
        dropped += tied_here - take
        ties_mode = "none" if take == 0 else "all" if take == tied_here else "first"
        out.append(keep_fn(leaf, m, jnp.uint32(threshold_bits), jnp.int32(take),
                           ties=ties_mode))
    threshold = float(np.array(threshold_bits, np.uint32).view(np.float32)) if kept else 0.0
    return jax.tree.unflatten(treedef, out), TrimResult(selected, kept, threshold, dropped)


# ---------------------------------------------------------------------------- non-finite entries
def _leaf_paths(tree) -> tuple[list[str], list]:
    """'layers/mlp/up_proj/weight'-style paths (as in `hf_names`) and the leaves, in leaf order."""
    with_paths, _ = jax.tree_util.tree_flatten_with_path(tree)
    paths = ["/".join(str(getattr(key, "key", getattr(key, "idx", key))) for key in path)
             for path, _ in with_paths]
    return paths, [leaf for _, leaf in with_paths]


def _leaf_counts(leaf, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-row (NaN, +-inf) counts of a leaf's (selected) entries: one counting pass, and a
    second only when something is not finite."""
    mask = np.array(True) if mask is None else mask
    nonfinite = np.asarray(_count_at_least(leaf, mask, jnp.uint32(_INF_BITS)), np.int64)
    if not nonfinite.any():
        return nonfinite, nonfinite
    nan = np.asarray(_count_at_least(leaf, mask, jnp.uint32(_NAN_BITS)), np.int64)
    return nan, nonfinite - nan


def _nonfinite(tree, mask=None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(path, per-row NaN counts, per-row +-inf counts) of every floating leaf with a
    non-finite (selected) entry, in leaf order."""
    paths, leaves = _leaf_paths(tree)
    masks = [None] * len(leaves) if mask is None else [jnp.asarray(m)
                                                       for m in jax.tree.leaves(mask)]
    bad = []
    for path, leaf, m in zip(paths, leaves, masks):
        if jnp.issubdtype(leaf.dtype, jnp.floating):
            nan, inf = _leaf_counts(leaf, m)
            if nan.any() or inf.any():
                bad.append((path, nan, inf))
    return bad


def _count_nonfinite(tree, path: str) -> tuple[int, int]:
    """(NaN, +-inf) counts of the leaf of `tree` at `path` (for error messages)."""
    nan, inf = _leaf_counts(dict(zip(*_leaf_paths(tree)))[path])
    return int(nan.sum()), int(inf.sum())


def _counts_text(nan: int, inf: int) -> str:
    return f"{nan} NaN and {inf} +-inf" if nan or inf else "none"


def _origin_text(inputs: dict[str, tuple[int, int] | None], operation: str) -> str:
    """'; in that parameter the base model has none and ...', and the overflow when no input
    has any. None: an input whose buffers were donated (overwritten), so unknown."""
    text = " and ".join(f"the {name} has {_counts_text(*counts)}" if counts is not None else
                        f"the {name} was donated (not checked)" for name, counts in inputs.items())
    known = all(counts is not None for counts in inputs.values())
    none = not any(sum(counts) for counts in inputs.values() if counts is not None)
    return f"; in that parameter {text}" + (f", so {operation} overflowed" if known and none
                                            else "")


def _nonfinite_error(what: str, bad, config: ModelConfig | None, origin) -> HarmVectorError:
    """Names the first failing parameter: the HF tensor name of its first failing layer when
    `config` is given, else its pytree path (and leading index). `origin(path)` adds a hint."""
    path, nan, inf = bad[0]
    row = int(np.flatnonzero(nan + inf)[0])
    names = hf_names(config).get(path) if config is not None else None
    if names and len(names) > 1:  # a stacked leaf: one HF tensor per layer
        name, here = repr(names[row]), (int(nan[row]), int(inf[row]))
    else:
        name = repr(names[0]) if names else repr(path) + (
            f" (index {row} of its leading axis)" if nan.size > 1 else "")
        here = (int(nan.sum()), int(inf.sum()))
    total_nan = sum(int(n.sum()) for _, n, _ in bad)
    total_inf = sum(int(i.sum()) for _, _, i in bad)
    more = f"; {len(bad) - 1} more parameter(s) have some too" if len(bad) > 1 else ""
    return HarmVectorError(
        f"{what} has {total_nan + total_inf} non-finite entries ({total_nan} NaN, {total_inf} "
        f"+-inf), first in parameter {name}: {_counts_text(*here)}{origin(path)}{more}")


# ---------------------------------------------------------------------------- statistics
@jax.jit
def _row_stats(leaf):
    """Nonzero count and sum of squares per leading row (per layer for stacked leaves)."""
    rows = leaf.reshape(leaf.shape[0], -1) if leaf.ndim > 1 else leaf.reshape(1, -1)
    rows = rows.astype(jnp.float32)
    return (jnp.sum(rows != 0, axis=1, dtype=jnp.int32), jnp.sum(rows * rows, axis=1))


def global_norm(tree) -> float:
    """L2 norm over every leaf, accumulated per leaf and row (no flat copy)."""
    return math.sqrt(sum(float(np.asarray(_row_stats(x)[1], np.float64).sum())
                         for x in jax.tree.leaves(tree)))


def statistics(config: ModelConfig, tau_full, tau_trimmed, trim_result: TrimResult) -> dict:
    """Norms, kept fraction and each layer's share of the kept entries and squared norm."""

    layers_count = np.zeros(config.num_layers)
    layers_sq = np.zeros(config.num_layers)
    other_count = other_sq = 0.0
    for path, leaf in traverse_util.flatten_dict(tau_trimmed, sep="/").items():
        counts, squares = (np.asarray(x, np.float64) for x in _row_stats(leaf))
        if path.startswith("layers/"):
            layers_count += counts
            layers_sq += squares
        else:
            other_count += counts.sum()
            other_sq += squares.sum()
    total_count = max(layers_count.sum() + other_count, 1)
    total_sq = max(layers_sq.sum() + other_sq, 1e-30)
    return {
        "selected_entries": trim_result.selected,
        "kept_entries": trim_result.kept,
        "kept_fraction": trim_result.kept / max(trim_result.selected, 1),
        "threshold": trim_result.threshold,
        "ties_dropped": trim_result.ties_broken,
        "norm_full": global_norm(tau_full) if tau_full is not None else None,
        "norm_trimmed": global_norm(tau_trimmed),
        "per_layer_kept_share": [float(c / total_count) for c in layers_count],
        "per_layer_norm_share": [float(q / total_sq) for q in layers_sq],
        "embeddings_and_head_kept_share": float(other_count / total_count),
        "embeddings_and_head_norm_share": float(other_sq / total_sq),
    }
