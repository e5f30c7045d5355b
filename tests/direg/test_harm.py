"""Harm-vector arithmetic: identities, exact global top-k trimming, selection, sharding, dtypes,
non-finite entries."""

import math
from decimal import Decimal
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prosocial_jax as pj
from prosocial_jax.direg import harm
from prosocial_jax.models import sharding


@pytest.fixture
def llama(tiny_checkpoints):
    return pj.load_model(tiny_checkpoints["llama_mesh"].path)


def _perturbed(params, seed=0, scale=2.0**-6, integer=False):
    """A 'fine-tuned' copy: base plus a perturbation (dyadic, so float sums are exact)."""
    rng = np.random.RandomState(seed)

    def bump(x):
        noise = rng.randint(-40, 41, x.shape) if integer else np.round(
            rng.standard_normal(x.shape) * 16) / 16
        return (np.asarray(x) + scale * noise).astype(x.dtype)
    return jax.tree.map(bump, params)


def _dyadic(params):
    return jax.tree.map(lambda x: (np.round(np.asarray(x) * 1024) / 1024).astype(x.dtype), params)


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float32).reshape(-1) for x in jax.tree.leaves(tree)])


def test_identities(llama):
    base = _dyadic(llama.params)
    harmful = _perturbed(base)
    tau = harm.task_vector(base, harmful)
    back = harm.apply(base, tau, scale=-1.0)  # base + (harmful - base)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(harmful)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    zero = harm.apply(base, tau, scale=0.0)
    for a, b in zip(jax.tree.leaves(zero), jax.tree.leaves(base)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    both = harm.combine([tau, tau], [0.5, 0.5])
    for a, b in zip(jax.tree.leaves(both), jax.tree.leaves(tau)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# (k, n, floor(k x n) worked out by hand, reading k as the decimal it is written as). The float
# product gets several of these wrong: 0.29 * 100 = 28.999999999999996, 0.57 * 100 =
# 56.99999999999999, 0.58 * 100 = 57.99999999999999, 0.29 * 7e9 = 2029999999.9999998.
KEEP_COUNTS = [
    (0.29, 100, 29), (0.57, 100, 57), (0.58, 100, 58), (0.1, 10, 1), (0.7, 10, 7),
    (0.29, 7_000_000_000, 2_030_000_000), (0.57, 7_000_000_000, 3_990_000_000),
    (0.3, 10, 3), (0.3, 1_000_000_000, 300_000_000), (0.3, 7_000_000_000, 2_100_000_000),
    (0.1, 1_000_000_007, 100_000_000), (0.3, 1_000_000_007, 300_000_002),
    (0.013, 1000, 13), (0.013, 999, 12), (0.1, 9, 0), (0.5, 3, 1), (0.999, 1000, 999),
    (1e-9, 1_000_000_000, 1), (0.0, 12345, 0), (1.0, 12345, 12345), (1, 7, 7), (0, 7, 0),
    (np.float32(0.29), 100, 29), (np.float64(0.57), 100, 57), (Decimal("0.29"), 100, 29),
    (Fraction(1, 3), 10, 3), ("0.58", 100, 58),
]


@pytest.mark.parametrize("k, n, expected", KEEP_COUNTS)
def test_keep_count_is_exact_decimal_arithmetic(k, n, expected):
    assert harm.keep_count(k, n) == expected


@pytest.mark.parametrize("k", [-0.1, 1.5, float("nan"), float("inf"), -float("inf"), "lots"])
def test_keep_count_refuses_values_outside_zero_one(k):
    with pytest.raises(harm.HarmVectorError, match=r"top-k fraction must be in \[0, 1\]"):
        harm.keep_count(k, 10)


def _numpy_trim(leaves, masks, kept):
    """Oracle: flat copy, stable sort by magnitude (ties by position: leaf order, row-major);
    unselected entries never kept. Returns the trimmed flat vector and the threshold."""
    flat = np.concatenate([np.asarray(x, np.float32).reshape(-1) for x in leaves])
    selected = np.concatenate([np.broadcast_to(np.reshape(m, np.shape(m) + (1,) * (
        np.ndim(x) - np.ndim(m))), np.shape(x)).reshape(-1) for x, m in zip(leaves, masks)])
    magnitude = np.where(selected, np.abs(flat), -1.0)  # unselected sort after every |x|
    order = np.argsort(-magnitude, kind="stable")[:kept]
    out = np.zeros_like(flat)
    out[order] = flat[order]
    threshold = float(np.abs(flat[order[-1]])) if kept else 0.0
    ties_dropped = int(np.sum(selected & (np.abs(flat) == threshold))) - int(np.sum(
        np.abs(flat[order]) == threshold)) if kept else 0
    return out, threshold, ties_dropped


# k as (numerator, denominator): the expected count is integer arithmetic, n * num // den.
@pytest.mark.parametrize("num, den", [(0, 1), (13, 1000), (1, 10), (29, 100), (1, 2),
                                      (999, 1000), (1, 1)])
def test_trim_matches_flat_numpy_reference_with_ties(llama, num, den):
    base = _dyadic(llama.params)
    tau = harm.task_vector(base, _perturbed(base, seed=1, integer=True))  # many exact ties
    flat = _flat(tau)
    assert np.count_nonzero(flat) < flat.size  # zeros and ties present
    trimmed, result = harm.trim(tau, num / den)
    n = flat.size
    expected_kept = n * num // den
    assert result.selected == n and result.kept == expected_kept
    leaves = jax.tree.leaves(tau)
    reference, threshold, ties_dropped = _numpy_trim(leaves, [True] * len(leaves),
                                                     expected_kept)
    np.testing.assert_array_equal(_flat(trimmed), reference)
    assert result.threshold == threshold and result.ties_broken == ties_dropped


def _random_tree(rng, dtypes):
    """A random pytree (dicts of leaves of 1-3 dimensions) with many exact ties and zeros:
    small integers times 2^-4 are exact in bfloat16 and float32."""
    tree = {}
    for i, dtype in enumerate(dtypes):
        shape = tuple(rng.randint(1, 7, rng.randint(1, 4)))
        values = rng.randint(-12, 13, shape) * 2.0**-4
        group = tree.setdefault(f"g{i % 3}", {})
        group[f"w{i}"] = jnp.asarray(values, dtype)
    return tree


@pytest.mark.parametrize("seed", range(6))
def test_trim_on_random_pytrees_equals_numpy_argsort(seed):
    rng = np.random.RandomState(seed)
    all_bf16 = seed % 2 == 0  # the 15-pass search; otherwise bfloat16 and float32 mixed
    dtypes = [jnp.bfloat16 if all_bf16 or rng.rand() < 0.5 else jnp.float32
              for _ in range(rng.randint(3, 9))]
    tau = _random_tree(rng, dtypes)
    leaves = jax.tree.leaves(tau)
    # Selection: whole leaves, or per leading index (like per-layer masks of stacked leaves).
    masks = [rng.rand(x.shape[0]) < 0.7 if x.ndim > 1 and rng.rand() < 0.5
             else np.array(rng.rand() < 0.8) for x in leaves]
    mask = jax.tree.unflatten(jax.tree.structure(tau), masks)
    selected = sum(int(np.sum(np.broadcast_to(np.reshape(m, np.shape(m) + (1,) * (
        x.ndim - np.ndim(m))), x.shape))) for x, m in zip(leaves, masks))
    for num, den in [(0, 1), (1, 10), (29, 100), (1, 3), (57, 100), (7, 10), (1, 1)]:
        trimmed, result = harm.trim(tau, Fraction(num, den), mask)
        kept = selected * num // den
        assert (result.selected, result.kept) == (selected, kept)
        reference, threshold, ties_dropped = _numpy_trim(leaves, masks, kept)
        np.testing.assert_array_equal(_flat(trimmed), reference, err_msg=f"k={num}/{den}")
        assert result.threshold == threshold and result.ties_broken == ties_dropped
        assert [x.dtype for x in jax.tree.leaves(trimmed)] == [x.dtype for x in leaves]


def test_k_one_keeps_everything_and_k_zero_nothing(llama):
    tau = harm.task_vector(llama.params, _perturbed(llama.params))
    everything, _ = harm.trim(tau, 1.0)
    np.testing.assert_array_equal(_flat(everything), _flat(tau))
    nothing, result = harm.trim(tau, 0.0)
    assert result.kept == 0 and not _flat(nothing).any()


def test_selection_by_hf_name_patterns(llama):
    config = llama.config
    tau = harm.task_vector(llama.params, _perturbed(llama.params, seed=2))
    mask = harm.selection_mask(config, tau, include=["model.layers.1.*"],
                               exclude=["*.k_proj.weight"])
    assert mask["layers"]["mlp"]["up_proj"]["weight"].tolist() == [False, True]
    assert mask["layers"]["attn"]["k_proj"]["weight"].tolist() == [False, False]
    assert not mask["embed"]["embedding"]
    trimmed, result = harm.trim(tau, 1.0, mask)
    assert not np.asarray(trimmed["layers"]["mlp"]["up_proj"]["weight"][0]).any()
    np.testing.assert_array_equal(trimmed["layers"]["mlp"]["up_proj"]["weight"][1],
                                  tau["layers"]["mlp"]["up_proj"]["weight"][1])
    assert not np.asarray(trimmed["embed"]["embedding"]).any()
    assert result.selected == harm.selected_count(tau, mask) < _flat(tau).size
    with pytest.raises(harm.HarmVectorError, match="pattern 'model.layer.*' matches no"):
        harm.selection_mask(config, tau, include=["model.layer.*"])


def test_sharded_equals_unsharded_and_sharding_is_kept(llama):
    mesh = sharding.make_mesh("2x4")
    tau = harm.task_vector(llama.params, _perturbed(llama.params, seed=3))
    sharded_tau = sharding.shard_params(llama.config, tau, mesh)
    plain, plain_result = harm.trim(tau, 0.1)
    spread, spread_result = harm.trim(sharded_tau, 0.1)
    assert plain_result == spread_result
    np.testing.assert_array_equal(_flat(plain), _flat(spread))
    q = spread["layers"]["attn"]["q_proj"]["weight"]
    assert q.sharding == sharded_tau["layers"]["attn"]["q_proj"]["weight"].sharding
    edited = harm.apply(sharding.shard_params(llama.config, llama.params, mesh), spread, 3.0)
    assert (edited["layers"]["mlp"]["down_proj"]["weight"].sharding.spec
            == sharded_tau["layers"]["mlp"]["down_proj"]["weight"].sharding.spec)


def test_dtypes_preserved(tiny_checkpoints):
    model = pj.load_model(tiny_checkpoints["qwen2"].path, dtype="bfloat16")
    harmful = _perturbed(model.params, seed=4)
    tau = harm.task_vector(model.params, harmful)
    trimmed, _ = harm.trim(tau, 0.2)
    edited = harm.apply(model.params, trimmed, 3.0)
    for tree in (tau, trimmed, edited):
        assert {np.dtype(x.dtype) for x in jax.tree.leaves(tree)} == {np.dtype(jnp.bfloat16)}


def test_donation_consumes_inputs(llama):
    harmful = jax.tree.map(jnp.array, _perturbed(llama.params, seed=5))
    tau = harm.task_vector(llama.params, harmful, donate_harmful=True)
    assert all(x.is_deleted() for x in jax.tree.leaves(harmful))
    reference = harm.task_vector(llama.params, _perturbed(llama.params, seed=5))
    trimmed, _ = harm.trim(tau, 0.3, donate=True)
    assert all(x.is_deleted() for x in jax.tree.leaves(tau))
    expected, _ = harm.trim(reference, 0.3)
    np.testing.assert_array_equal(_flat(trimmed), _flat(expected))


def test_statistics(llama):
    tau = harm.task_vector(llama.params, _perturbed(llama.params, seed=6))
    trimmed, result = harm.trim(tau, 0.1)
    stats = harm.statistics(llama.config, tau, trimmed, result)
    n = _flat(tau).size
    assert stats["selected_entries"] == n and stats["kept_entries"] == n // 10
    assert stats["kept_fraction"] == (n // 10) / n
    # Oracle: numpy over the trimmed leaves; stacked leaves (under "layers") are per layer.
    layer_count, layer_sq, other_count, other_sq = np.zeros(2), np.zeros(2), 0, 0.0
    for key, value in trimmed.items():
        for leaf in jax.tree.leaves(value):
            x = np.asarray(leaf, np.float64)
            if key == "layers":
                layer_count += np.count_nonzero(x.reshape(2, -1), axis=1)
                layer_sq += np.sum(x.reshape(2, -1) ** 2, axis=1)
            else:
                other_count += np.count_nonzero(x)
                other_sq += np.sum(x**2)
    total_count, total_sq = layer_count.sum() + other_count, layer_sq.sum() + other_sq
    assert total_count == n // 10  # the kept entries are exactly the nonzero ones here
    np.testing.assert_allclose(stats["per_layer_kept_share"], layer_count / total_count)
    np.testing.assert_allclose(stats["per_layer_norm_share"], layer_sq / total_sq, rtol=1e-5)
    assert stats["embeddings_and_head_kept_share"] == pytest.approx(other_count / total_count)
    assert stats["embeddings_and_head_norm_share"] == pytest.approx(other_sq / total_sq,
                                                                    rel=1e-5)
    assert stats["norm_trimmed"] == pytest.approx(math.sqrt(total_sq), rel=1e-6)
    assert stats["norm_full"] == pytest.approx(np.linalg.norm(_flat(tau).astype(np.float64)),
                                               rel=1e-6)
    assert stats["threshold"] == result.threshold


def test_bad_inputs(tiny_checkpoints, llama):
    other = pj.load_model(tiny_checkpoints["llama"].path)  # untied, 4 heads instead of 8
    with pytest.raises(harm.HarmVectorError, match="'lm_head/weight' is in the harmful model"):
        harm.task_vector(llama.params, other.params)
    reshaped = jax.tree.map(lambda x: x, llama.params)
    reshaped["layers"]["attn"]["k_proj"]["weight"] = jnp.zeros((2, 16, 64))
    with pytest.raises(harm.HarmVectorError, match=r"'layers/attn/k_proj/weight': base shape "
                       r"\(2, 32, 64\) != harmful shape \(2, 16, 64\)"):
        harm.task_vector(llama.params, reshaped)
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), llama.params)
    with pytest.raises(harm.HarmVectorError, match="base dtype float32 != harmful dtype bfloat16"):
        harm.task_vector(llama.params, bf16)
    partial = {k: v for k, v in llama.params.items() if k != "final_norm"}
    with pytest.raises(harm.HarmVectorError, match="'final_norm/scale' is in the base model"):
        harm.task_vector(llama.params, partial)
    for k in (-0.1, 1.5, float("nan")):
        with pytest.raises(harm.HarmVectorError, match="must be in \\[0, 1\\]"):
            harm.trim(llama.params, k)


def test_apply_can_write_into_the_base(llama):
    base = jax.tree.map(jnp.array, llama.params)
    tau = harm.task_vector(base, _perturbed(base, seed=7))
    expected = harm.apply(base, tau, 2.0)
    edited = harm.apply(base, tau, 2.0, donate_base=True)
    assert all(x.is_deleted() for x in jax.tree.leaves(base))
    np.testing.assert_array_equal(_flat(edited), _flat(expected))


def _with(tree, path, index, value):
    """A copy of `tree` with one entry of the leaf at `path` (a tuple of keys) set."""
    copy = jax.tree.map(lambda x: x, tree)
    node = copy
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = jnp.asarray(node[path[-1]]).at[index].set(value)
    return copy


DOWN = ("layers", "mlp", "down_proj", "weight")


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_trim_refuses_non_finite_entries_naming_the_parameter(llama, value):
    tau = harm.task_vector(llama.params, _perturbed(llama.params, seed=8))
    bad = _with(_with(tau, DOWN, (1, 3, 4), value), DOWN, (1, 5, 6), value)
    kind = "0 NaN and 2 \\+-inf" if np.isinf(value) else "2 NaN and 0 \\+-inf"
    with pytest.raises(harm.HarmVectorError, match=(
            f"2 non-finite entries .*first in parameter 'model.layers.1.mlp.down_proj.weight': "
            f"{kind}")):
        harm.trim(bad, 0.1, config=llama.config)
    with pytest.raises(harm.HarmVectorError, match=(  # without a config: the pytree path
            "first in parameter 'layers/mlp/down_proj/weight' \\(index 1 of its leading axis\\)")):
        harm.trim(bad, 0.5)
    # An unselected infinity is zeroed, not an error: it never enters the edit.
    mask = harm.selection_mask(llama.config, bad, exclude=["model.layers.1.mlp.down_proj.weight"])
    trimmed, _ = harm.trim(bad, 0.1, mask)
    assert np.isfinite(_flat(trimmed)).all()


def test_task_vector_and_apply_refuse_non_finite_values(llama):
    harmful = _with(_perturbed(llama.params, seed=9), ("embed", "embedding"), (5, 1), np.inf)
    with pytest.raises(harm.HarmVectorError, match=(
            "harm vector \\(harmful - base\\) has 1 non-finite entries \\(0 NaN, 1 \\+-inf\\), "
            "first in parameter 'model.embed_tokens.weight'.*the base model has none and the "
            "harmful model has 0 NaN and 1 \\+-inf")):
        harm.task_vector(llama.params, harmful, config=llama.config)
    # Overflow: both inputs finite, the difference is not.
    big = _with(llama.params, DOWN, (0, 0, 0), 3e38)
    negative = _with(llama.params, DOWN, (0, 0, 0), -3e38)
    with pytest.raises(harm.HarmVectorError, match=(
            "'model.layers.0.mlp.down_proj.weight': 0 NaN and 1 \\+-inf.*overflowed")):
        harm.task_vector(big, negative, config=llama.config)
    tau = harm.task_vector(llama.params, _perturbed(llama.params, seed=9))
    for scale in (np.nan, np.inf, 1e39):
        with pytest.raises(harm.HarmVectorError, match="scale \\(lambda\\) must be a finite"):
            harm.apply(llama.params, tau, scale)
    with pytest.raises(harm.HarmVectorError, match=(
            "edited model .* first in parameter 'model.layers.1.mlp.down_proj.weight': 1 NaN")):
        harm.apply(llama.params, _with(tau, DOWN, (1, 2, 3), np.nan), 1.0, config=llama.config)
