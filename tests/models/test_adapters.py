"""PBLoRA: the cheap-order update equals the explicit dW(alpha); files round-trip."""

import dataclasses
import json

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import VOCAB

import prosocial_jax as pj
from prosocial_jax.models import adapters, layers
from prosocial_jax.models.cache import KVCache
from prosocial_jax.models.decoder import forward_with_cache
from prosocial_jax.models.projections import PROJECTIONS

ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _random_adapter(model, targets=adapters.DEFAULT_TARGETS, seed=0, r1=3, r2=2):
    config = adapters.AdapterConfig(r1=r1, r2=r2, lora_alpha=4.0, target_modules=targets)
    adapter = adapters.init_adapter(model.config, config, jax.random.key(seed))
    rng = np.random.RandomState(seed)
    params = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape) * 0.2,
                                                jnp.float32), adapter.params)
    return adapters.Adapter(config, params)


def _with_dense_update(model, adapter, preference):
    """Backbone params with W0 + dW(alpha) written into every targeted weight."""
    layers = jax.tree.map(np.array, model.params["layers"])
    for target, factors in adapter.params.items():
        weight = layers[PROJECTIONS[target].group][target]["weight"]
        for layer in range(weight.shape[0]):
            layer_factors = {k: np.asarray(v[layer], np.float64) for k, v in factors.items()}
            weight[layer] += adapters.dense_delta(layer_factors, preference, adapter.config.scale)
    return {**model.params, "layers": jax.tree.map(jnp.asarray, layers)}


@pytest.mark.parametrize("targets", [adapters.DEFAULT_TARGETS, ALL_TARGETS])
def test_adapter_equals_explicit_weight_update_per_row(tiny_checkpoints, targets):
    model = pj.load_model(tiny_checkpoints["qwen2"].path)
    adapter = _random_adapter(model, targets)
    k = adapter.config.num_attributes
    preferences = np.random.RandomState(1).dirichlet(np.ones(k), size=2).astype(np.float32)
    ids = np.random.RandomState(2).randint(3, VOCAB, (2, 9))
    adapted = np.asarray(model.logits(ids, adapter=adapter, preference=preferences))
    for row in range(2):
        dense = dataclasses.replace(model, params=_with_dense_update(model, adapter,
                                                                     preferences[row]))
        np.testing.assert_allclose(adapted[row], np.asarray(dense.logits(ids[row:row + 1]))[0],
                                   atol=2e-4)
    assert not np.allclose(adapted[0], np.asarray(model.logits(ids))[0], atol=1e-3)


def test_extended_adapter_keeps_the_old_attributes_and_adds_a_new_one(tiny_checkpoints,
                                                                     tmp_path):
    model = pj.load_model(tiny_checkpoints["qwen2"].path)
    adapter = _random_adapter(model, ("q_proj", "v_proj", "down_proj"))
    extended = adapters.extend_adapter(adapter, "curiosity", jax.random.key(5))
    assert extended.config.attributes == (*adapter.config.attributes, "curiosity")
    k = adapter.config.num_attributes
    old = np.random.RandomState(1).dirichlet(np.ones(k), size=2).astype(np.float32)
    ids = np.random.RandomState(2).randint(3, VOCAB, (2, 9))
    np.testing.assert_allclose(  # new weight 0: the old adapter's logits
        np.asarray(model.logits(ids, adapter=extended, preference=np.pad(old, ((0, 0),
                                                                             (0, 1))))),
        np.asarray(model.logits(ids, adapter=adapter, preference=old)), atol=1e-6)
    # The new attribute alone: W0 + dW(one-hot) written into the weights, the new zeta row.
    curious = np.eye(k + 1, dtype=np.float32)[k]
    dense = dataclasses.replace(model, params=_with_dense_update(model, extended, curious))
    new_logits = np.asarray(model.logits(ids[:1], adapter=extended, preference=curious))
    np.testing.assert_allclose(new_logits, np.asarray(dense.logits(ids[:1])), atol=2e-4)
    assert not np.allclose(new_logits, np.asarray(model.logits(ids[:1], adapter=adapter,
                                                               preference=old[:1])), atol=1e-3)
    loaded = pj.load_adapter(pj.save_adapter(extended, tmp_path / "extended"), model.config)
    assert loaded.config == extended.config
    chex.assert_trees_all_equal(loaded.params, extended.params)
    with pytest.raises(adapters.AdapterError, match="'empathy' is already one of"):
        adapters.extend_adapter(adapter, "empathy", jax.random.key(0))


def test_delta_checks_shapes_at_its_entry(tiny_checkpoints):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    adapter = _random_adapter(model, ("q_proj", "down_proj"))
    factors = jax.tree.map(lambda x: x[0], adapter.params["q_proj"])  # layer 0
    x = jnp.ones((2, 5, model.config.hidden_size))
    preference = jnp.full((2, adapter.config.num_attributes), 1 / 6)
    out = adapters.delta(x, factors, preference, adapter.config.scale)
    chex.assert_shape(out, (2, 5, model.config.num_heads * model.config.head_dim))
    with pytest.raises(AssertionError, match="shape"):  # one preference, two rows
        adapters.delta(x, factors, preference[:1], adapter.config.scale)
    with pytest.raises(AssertionError, match="shape"):  # down_proj's factors: input width F
        adapters.delta(x, jax.tree.map(lambda f: f[0], adapter.params["down_proj"]), preference,
                       adapter.config.scale)


def test_zero_initialised_adapter_is_the_identity(tiny):
    model = pj.load_model(tiny.path)
    config = adapters.AdapterConfig(target_modules=ALL_TARGETS)
    adapter = adapters.init_adapter(model.config, config, jax.random.key(0))
    ids = np.random.RandomState(3).randint(3, VOCAB, (2, 8))
    np.testing.assert_array_equal(
        np.asarray(model.logits(ids, adapter=adapter, preference={"empathy": 1.0})),
        np.asarray(model.logits(ids)))


@pytest.mark.parametrize("layer_layout", ["stacked", "auto"])
def test_cached_adapter_steps_equal_full_forward(tiny_checkpoints, layer_layout):
    """Cached one-token steps with an adapter on every kind of projection give the full
    forward's logits, in the stacked layout and the CPU default (packed where the native kernel
    builds: o_proj then takes the summed attention output)."""
    model = pj.load_model(tiny_checkpoints["llama"].path)
    params = layers.for_forward(model.params, layer_layout)
    adapter = _random_adapter(model, ("q_proj", "v_proj", "o_proj", "down_proj"), seed=4)
    preferences = np.random.RandomState(5).dirichlet(np.ones(6), size=2).astype(np.float32)
    seq = np.random.RandomState(6).randint(3, VOCAB, (2, 10)).astype(np.int32)
    full = np.asarray(model.logits(seq, adapter=adapter, preference=preferences))
    run = jax.jit(forward_with_cache, static_argnums=(0, 6, 7))
    mask = np.ones((2, 6), bool)
    positions = np.broadcast_to(np.arange(6), (2, 6))
    logits, (k, v) = run(model.config, params, seq[:, :6], positions, mask, None, True,
                         adapter.config, adapter.params, preferences)
    cache = KVCache.zeros(model.config, 2, 10).append(k, v, mask)
    for step in range(6, 10):
        np.testing.assert_allclose(np.asarray(logits), full[:, step - 1], atol=1e-4)
        one = np.ones((2, 1), bool)
        logits, (k, v) = run(model.config, params, seq[:, step:step + 1],
                             np.full((2, 1), step), one, cache, True, adapter.config,
                             adapter.params, preferences)
        cache = cache.append(k, v, one)


def test_save_load_round_trip_and_checks(tiny_checkpoints, tmp_path):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    adapter = _random_adapter(model, ("q_proj", "down_proj"), seed=7)
    path = pj.save_adapter(adapter, tmp_path / "adapter")
    config = json.loads((path / "adapter_config.json").read_text())
    assert config["attributes"][0] == "harmlessness" and config["safety_attribute"] == \
        "harmlessness"
    from safetensors.numpy import load_file
    names = load_file(path / "adapter.safetensors")
    assert names["model.layers.1.mlp.down_proj.B1"].shape == (64, 3)  # [out, r1]
    assert names["model.layers.0.self_attn.q_proj.zeta"].shape == (6, 4)  # [K, r2*r2]
    loaded = pj.load_adapter(path, model.config)
    assert loaded.config == adapter.config
    chex.assert_trees_all_equal(loaded.params, adapter.params)
    other = pj.load_model(tiny_checkpoints["mistral"].path)  # 1 kv head instead of 2
    wrong = dataclasses.replace(adapter.config, target_modules=("k_proj",))
    pj.save_adapter(adapters.init_adapter(model.config, wrong, jax.random.key(0)), tmp_path / "k")
    with pytest.raises(adapters.AdapterError,
                       match=r"'model.layers.0.self_attn.k_proj.B1' has shape \(32, 3\)"):
        pj.load_adapter(tmp_path / "k", other.config)
    with pytest.raises(FileNotFoundError, match="no adapter_config.json"):
        pj.load_adapter(tmp_path)


@pytest.mark.parametrize("value, message", [
    ([0.5, 0.5], "needs 6 entries"),
    ([1, 0, 0, 0, 0, -1], "must be finite and >= 0"),
    ([0] * 6, "must not be all zeros"),
    ({"kindness": 1.0}, "'kindness'"),
    ("empathy=lots", "cannot read preference"),
])
def test_bad_preferences(value, message):
    with pytest.raises(adapters.AdapterError, match=message):
        adapters.resolve_preference(adapters.AdapterConfig(), value)


def test_preference_parsing_and_normalisation():
    config = adapters.AdapterConfig()
    vector, normalised = adapters.resolve_preference(config, "empathy=1,helpfulness=3")
    assert normalised and vector.tolist() == [0, 0.25, 0, 0, 0, 0.75]
    vector, normalised = adapters.resolve_preference(config, "0,0.4,0.2,0.1,0.2,0.1")
    assert not normalised and vector.sum() == pytest.approx(1.0)
    with pytest.raises(adapters.AdapterError, match="safety_attribute 'safety'"):
        adapters.AdapterConfig(safety_attribute="safety")
