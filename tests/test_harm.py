"""Harm-vector arithmetic: identities, exact global top-k trimming, selection, sharding, dtypes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import prosocial_jax as pj
from prosocial_jax import harm, sharding


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


@pytest.mark.parametrize("k", [0.0, 0.013, 0.1, 0.5, 0.999, 1.0])
def test_trim_matches_flat_numpy_reference_with_ties(llama, k):
    base = _dyadic(llama.params)
    tau = harm.task_vector(base, _perturbed(base, seed=1, integer=True))  # many exact ties
    flat = _flat(tau)
    assert np.count_nonzero(flat) < flat.size  # zeros and ties present
    trimmed, result = harm.trim(tau, k)
    n = flat.size
    expected_kept = harm.keep_count(k, n)
    assert result.selected == n and result.kept == expected_kept
    # Reference: stable sort by magnitude over the whole model, first `kept` win (position order).
    order = np.argsort(-np.abs(flat), kind="stable")
    reference = np.zeros_like(flat)
    reference[order[:expected_kept]] = flat[order[:expected_kept]]
    np.testing.assert_array_equal(_flat(trimmed), reference)
    if 0 < expected_kept < n:
        assert result.threshold == np.abs(flat[order[expected_kept - 1]])


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
    assert stats["kept_fraction"] == pytest.approx(0.1, abs=1e-4)
    assert len(stats["per_layer_kept_share"]) == llama.config.num_layers
    shares = sum(stats["per_layer_kept_share"]) + stats["embeddings_and_head_kept_share"]
    assert shares == pytest.approx(1.0)
    assert stats["norm_trimmed"] == pytest.approx(np.linalg.norm(_flat(trimmed)), rel=1e-5)
    assert stats["norm_trimmed"] < stats["norm_full"]


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
