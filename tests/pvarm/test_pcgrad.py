"""PCGrad: golden geometry, a numpy reference, the weighted-sum ablation, sharding."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from prosocial_jax.models import sharding
from prosocial_jax.pvarm.pcgrad import gram_matrix, pcgrad, projection_coefficients, random_orders


def numpy_pcgrad(grads, orders, eps=1e-12):
    """Textbook PCGrad on explicit vectors, in the given orders."""
    out = []
    for i, g in enumerate(grads):
        projected = g.astype(np.float64).copy()
        for j in orders[i]:
            if j == i:
                continue
            dot = projected @ grads[j]
            if dot < 0:
                projected -= dot / (grads[j] @ grads[j] + eps) * grads[j]
        out.append(projected)
    return np.stack(out)


def _coefficients(grads, orders):
    grads = jnp.asarray(grads, jnp.float32)
    weights = projection_coefficients(gram_matrix(grads), jnp.asarray(orders))
    return np.asarray(weights @ grads)


@pytest.mark.parametrize("grads, expected", [
    ([[1, 0], [-1, 1]], [[0.5, 0.5], [0, 1]]),  # conflicting
    ([[1, 0], [1, 1]], [[1, 0], [1, 1]]),  # not conflicting
    ([[1, 0], [-2, 0]], [[0, 0], [0, 0]]),  # exactly opposed: each loses everything
    ([[1, 0], [2, 0]], [[1, 0], [2, 0]]),  # parallel, same direction
    ([[0, 0], [1, -1]], [[0, 0], [1, -1]]),  # a zero gradient conflicts with nothing
])
def test_golden_2d(grads, expected):
    result = _coefficients(np.array(grads, float), [[0, 1], [0, 1]])
    np.testing.assert_allclose(result, expected, atol=1e-6)


def test_3d_matches_numpy_reference_for_fixed_orders():
    rng = np.random.RandomState(0)
    for trial in range(20):
        grads = rng.standard_normal((3, 3))
        orders = np.stack([rng.permutation(3) for _ in range(3)])
        np.testing.assert_allclose(_coefficients(grads, orders), numpy_pcgrad(grads, orders),
                                   atol=1e-5, err_msg=f"trial {trial}")


def test_transform_on_a_pytree_matches_numpy_with_its_own_orders():
    k = 4
    rng = np.random.RandomState(1)
    stacked = {"a": jnp.asarray(rng.standard_normal((k, 3, 2)), jnp.float32),
               "b": {"c": jnp.asarray(rng.standard_normal((k, 5)), jnp.float32)}}
    flat = np.concatenate([np.asarray(stacked["a"]).reshape(k, -1),
                           np.asarray(stacked["b"]["c"]).reshape(k, -1)], axis=1)
    alpha = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    tx = pcgrad(k, seed=3)
    state = tx.init(None)
    update, new_state = tx.update(stacked, state, preference=alpha)
    _, step_key = jax.random.split(state.key)
    orders = np.asarray(random_orders(step_key, k))
    expected = alpha @ numpy_pcgrad(flat, orders)
    got = np.concatenate([np.asarray(update["a"]).reshape(-1), np.asarray(update["b"]["c"])])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    gram = flat @ flat.T
    assert int(new_state.conflicts) == int(np.sum(np.triu(gram < 0, 1)))
    np.testing.assert_allclose(np.diag(np.asarray(new_state.cosines)), 1.0, atol=1e-6)
    # The next step draws new orders.
    _, second_key = jax.random.split(new_state.key)
    assert not np.array_equal(np.asarray(random_orders(second_key, k)), orders)


def test_without_projection_it_is_the_weighted_sum():
    k = 3
    stacked = {"w": jnp.asarray(np.random.RandomState(2).standard_normal((k, 7)), jnp.float32)}
    alpha = np.array([0.5, 0.25, 0.25], np.float32)
    tx = pcgrad(k, project=False)
    update, _ = tx.update(stacked, tx.init(None), preference=alpha)
    np.testing.assert_allclose(np.asarray(update["w"]), alpha @ np.asarray(stacked["w"]),
                               atol=1e-6)


def test_chains_with_adamw_and_passes_the_preference():
    k = 2
    tx = optax.chain(pcgrad(k), optax.adamw(optax.cosine_decay_schedule(1e-2, 10)))
    params = {"w": jnp.zeros(3)}
    state = tx.init(params)
    stacked = {"w": jnp.asarray([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])}
    updates, state = tx.update(stacked, state, params, preference=jnp.array([1.0, 0.0]))
    # By hand: g_0 . g_1 = -1 < 0, so g_0' = g_0 - (-1 / 2) g_1 = [0.5, 0.5, 0] (in either
    # order: g_1 is the only other gradient), and alpha = (1, 0) keeps just g_0'. AdamW's first
    # step from zero parameters is -lr * g / (|g| + eps) = -1e-2 * sign(g), up to float32
    # rounding in its bias corrections (1 - 0.999 in float32 is off by 5e-5).
    np.testing.assert_allclose(np.asarray(updates["w"]), [-1e-2, -1e-2, 0.0], rtol=1e-4)
    # alpha = (0, 1): g_1' = g_1 - (-1 / 1) g_0 = [0, 1, 0].
    updates, _ = tx.update(stacked, tx.init(params), params, preference=jnp.array([0.0, 1.0]))
    np.testing.assert_allclose(np.asarray(updates["w"]), [0.0, -1e-2, 0.0], rtol=1e-4)


def test_sharded_equals_unsharded():
    k = 6
    rng = np.random.RandomState(4)
    stacked = {"a": jnp.asarray(rng.standard_normal((k, 16, 8)), jnp.float32),
               "b": jnp.asarray(rng.standard_normal((k, 8)), jnp.float32)}
    mesh = sharding.make_mesh("2x4")
    spread = {"a": jax.device_put(stacked["a"], NamedSharding(mesh, P(None, "model", "data"))),
              "b": jax.device_put(stacked["b"], NamedSharding(mesh, P(None, "model")))}
    alpha = rng.dirichlet(np.ones(k)).astype(np.float32)
    tx = pcgrad(k, seed=5)
    plain, plain_state = jax.jit(lambda g: tx.update(g, tx.init(None), preference=alpha))(stacked)
    split, split_state = jax.jit(lambda g: tx.update(g, tx.init(None), preference=alpha))(spread)
    for name in ("a", "b"):
        np.testing.assert_allclose(np.asarray(split[name]), np.asarray(plain[name]), atol=1e-5)
    assert int(split_state.conflicts) == int(plain_state.conflicts)


def test_every_product_asks_for_full_float32_precision():
    """TPUs run float32 matmuls in bfloat16 passes by default; the sign of a Gram entry decides
    whether two attributes conflict, so PCGrad's products must ask for HIGHEST."""
    tx = pcgrad(3)
    grads = {"w": jnp.ones((3, 4, 5)), "b": jnp.ones((3, 5))}
    params = {"w": jnp.ones((4, 5)), "b": jnp.ones(5)}
    state = tx.init(params)
    jaxpr = jax.make_jaxpr(lambda g, s: tx.update(g, s, params, preference=jnp.ones(3) / 3))(
        grads, state)
    dots = [e for e in _all_equations(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert len(dots) >= 4  # Gram matrix per leaf, projections, preference mix, weighted sum
    for eqn in dots:
        assert eqn.params["precision"] == (jax.lax.Precision.HIGHEST,) * 2, eqn


def _all_equations(jaxpr):
    for eqn in jaxpr.eqns:
        yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(sub, "jaxpr", sub)  # ClosedJaxpr or Jaxpr
                if hasattr(inner, "eqns"):
                    yield from _all_equations(inner)
