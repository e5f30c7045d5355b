"""Sharding over a ("data", "model") mesh of 8 simulated CPU devices: same numbers as one device;
full-size Llama-3-8B / Qwen2.5-7B layouts checked with shapes only."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import VOCAB
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import prosocial_jax as pj
from prosocial_jax.models import sharding
from prosocial_jax.models.cache import KVCache
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import forward_logits, init_params_shapes

FIXTURES = Path(__file__).parents[1] / "fixtures"
PROMPTS = [[5, 17, 99, 3, 42], [7, 8], [11, 12, 13, 14, 15, 16, 17], [40, 41, 42]]


def _same_as_one_device(single, sharded, seed: int, *settings: dict) -> None:
    """Logits of random ids, and the tokens `generate` gives under each of `settings` (on
    PROMPTS, or on the setting's own `prompts`)."""
    ids = np.random.RandomState(seed).randint(3, VOCAB, (4, 12))
    np.testing.assert_allclose(np.asarray(sharded.logits(ids)), np.asarray(single.logits(ids)),
                               atol=1e-5)
    for kwargs in settings:
        kwargs = dict(kwargs)
        prompts = kwargs.pop("prompts", PROMPTS)
        assert ([r.tokens for r in pj.generate(sharded, prompts, **kwargs)]
                == [r.tokens for r in pj.generate(single, prompts, **kwargs)]), kwargs


@pytest.mark.parametrize("mesh_shape", ["2x4", "8x1"])
def test_sharded_logits_and_tokens_equal_single_device(tiny_checkpoints, mesh_shape):
    path = tiny_checkpoints["llama_mesh"].path
    single = pj.load_model(path)
    sharded = pj.load_model(path, mesh=mesh_shape)
    q_sharding = sharded.params["layers"]["attn"]["q_proj"]["weight"].sharding
    assert q_sharding.spec == P(None, "model", None)  # a 1-way "model" axis replicates
    assert q_sharding.is_fully_replicated == (mesh_shape == "8x1")
    greedy = dict(max_new_tokens=16, stop_tokens=[])
    _same_as_one_device(single, sharded, 0, greedy,
                        dict(greedy, temperature=0.8, top_p=0.9, seed=4))


@pytest.mark.parametrize("family", ["qwen3", "gemma2", "gemma3", "phi3"])
def test_newer_families_sharded_equal_single_device(tiny_checkpoints, family):
    """Their extra parameters (q/k norms, the output norms) placed by the sharding rules, and
    their extra work (soft-caps, local layers, longrope tables) on a 2x4 mesh: the same logits
    and greedy tokens as one device."""
    path = tiny_checkpoints[family].path
    settings = [dict(max_new_tokens=32, stop_tokens=[])]
    if family == "phi3":  # rows crossing the original 64 positions recompute their caches
        rng = np.random.RandomState(1)
        settings.append(dict(max_new_tokens=12, stop_tokens=[], prompts=[
            rng.randint(3, VOCAB, n).tolist() for n in (56, 60, 61, 70)]))
    _same_as_one_device(pj.load_model(path), pj.load_model(path, mesh="2x4"), 2, *settings)


def test_indivisible_axes_fall_back_to_replication(tiny_checkpoints):
    # The tiny Llama has 4 query / 2 kv heads: kv heads cannot split 4 ways, queries can.
    model = pj.load_model(tiny_checkpoints["llama"].path, mesh="2x4")
    attn = model.params["layers"]["attn"]
    assert attn["q_proj"]["weight"].sharding.spec == P(None, "model", None)
    assert attn["k_proj"]["weight"].sharding.spec == P(None, None, None)
    ids = np.random.RandomState(1).randint(3, VOCAB, (2, 10))
    single = pj.load_model(tiny_checkpoints["llama"].path)
    np.testing.assert_allclose(np.asarray(model.logits(ids)), np.asarray(single.logits(ids)),
                               atol=1e-5)


def test_mesh_errors():
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.make_mesh("2x3")
    with pytest.raises(ValueError, match="expected DATAxMODEL"):
        sharding.make_mesh("two-by-four")


@pytest.mark.parametrize("config_file", ["llama3_8b_instruct_config.json",
                                         "qwen2_5_7b_instruct_config.json"])
def test_full_size_configs_shard_validly_on_2x4(config_file):
    config = ModelConfig.from_json_file(FIXTURES / config_file)
    mesh = sharding.make_mesh("2x4")
    params = init_params_shapes(config, jnp.bfloat16)
    shardings = sharding.param_shardings(config, params, mesh)
    # Attention heads, MLP and vocabulary really are split 4 ways (nothing silently replicated).
    assert shardings["layers"]["attn"]["q_proj"]["weight"].spec == P(None, "model", None)
    assert shardings["layers"]["attn"]["k_proj"]["weight"].spec == P(None, "model", None)
    assert shardings["layers"]["mlp"]["down_proj"]["weight"].spec == P(None, None, "model")
    assert shardings["embed"]["embedding"].spec == P("model", None)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            params, shardings)
    tokens = jax.ShapeDtypeStruct((8, 128), jnp.int32,
                                  sharding=NamedSharding(mesh, P("data", None)))
    # Lowering checks every sharding against every shape without allocating the 8B weights.
    lowered = jax.jit(forward_logits, static_argnums=0).lower(config, abstract, tokens, tokens)
    assert lowered.out_info.shape == (8, 128, config.vocab_size)
    cache = jax.eval_shape(lambda: KVCache.zeros(config, 8, 4096, jnp.bfloat16))
    cache_shardings = sharding.cache_shardings(config, cache, mesh)
    assert cache_shardings.keys.spec == P(None, "data", "model", None, None)
    assert cache_shardings.values.spec == P(None, "data", "model", None, None)


def test_memory_report_for_llama3_8b():
    config = ModelConfig.from_json_file(FIXTURES / "llama3_8b_instruct_config.json")
    report = sharding.memory_report(config, "2x4", batch=8, max_len=4096, dtype=jnp.bfloat16)
    total = report["param_bytes_total"]
    assert total == 2 * config.num_parameters()
    # Everything but the norms is split over the 4-way model axis; data-parallel replicas repeat.
    assert total / 4 < report["param_bytes_per_device"] < total / 4 * 1.001
    cache_total = 2 * 32 * 8 * 8 * 4096 * 128 * 2  # k+v, layers, batch, kv heads, slots, dim
    assert report["cache_bytes_per_device"] == pytest.approx(cache_total / 8, rel=1e-3)
