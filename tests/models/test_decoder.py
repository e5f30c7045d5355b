"""The Flax decoder against transformers' PyTorch models, and its own invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import VOCAB, torch_logits

import prosocial_jax as pj
from prosocial_jax.kernels import rows_matmul
from prosocial_jax.models import layers
from prosocial_jax.models.cache import KVCache
from prosocial_jax.models.decoder import forward_logits, forward_logits_at, forward_with_cache

cached_forward = jax.jit(forward_with_cache, static_argnums=0)
append = jax.jit(KVCache.append)
SEQ = 16  # longer than the tiny Mistral's sliding window (6)


def _ids(batch, length, seed=0):
    return np.random.RandomState(seed).randint(3, VOCAB, (batch, length))


def test_logits_match_transformers(tiny):
    ids = _ids(2, SEQ)
    ours = np.asarray(pj.load_model(tiny.path).logits(ids))
    reference = torch_logits(tiny.torch_model, ids)
    assert ours.dtype == np.float32 and ours.shape == (2, SEQ, VOCAB)
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)


def test_left_padded_rows_match_unpadded(tiny):
    model = pj.load_model(tiny.path)
    short, long_ = _ids(1, 9, seed=1)[0], _ids(1, SEQ, seed=2)[0]
    batch = np.zeros((2, SEQ), np.int64)
    mask = np.zeros((2, SEQ), bool)
    batch[0, SEQ - 9:], mask[0, SEQ - 9:] = short, True
    batch[1], mask[1] = long_, True
    padded = np.asarray(model.logits(batch, mask))
    np.testing.assert_allclose(padded[0, SEQ - 9:], np.asarray(model.logits(short[None]))[0],
                               atol=1e-5)
    np.testing.assert_allclose(padded[1], np.asarray(model.logits(long_[None]))[0], atol=1e-5)


def test_bfloat16_weights_give_float32_logits_close_to_float32(tiny_checkpoints):
    path = tiny_checkpoints["llama"].path
    f32 = pj.load_model(path)
    bf16 = pj.load_model(path, dtype="bfloat16")
    assert {np.dtype(x.dtype) for x in jax.tree.leaves(bf16.params)} == {np.dtype(jnp.bfloat16)}
    ids = _ids(2, SEQ)
    low = np.asarray(bf16.logits(ids))
    assert low.dtype == np.float32
    high = np.asarray(f32.logits(ids))
    assert np.abs(low - high).max() < 0.05 * np.abs(high).max()
    assert (low.argmax(-1) == high.argmax(-1)).mean() > 0.9


@pytest.mark.parametrize("layer_layout", ["stacked", "per_layer", pytest.param(
    "packed", marks=pytest.mark.skipif(not rows_matmul.available(), reason="no native kernel"))])
def test_prefill_then_cached_steps_equal_full_recomputation(tiny, layer_layout):
    model = pj.load_model(tiny.path)
    config, params = model.config, layers.for_forward(model.params, layer_layout)
    lengths = [5, 8]  # ragged prompts, left-padded to 8
    total = 8 + 8
    seqs = [_ids(1, n + 8, seed=10 + n)[0] for n in lengths]
    tokens = np.zeros((2, 8), np.int32)
    mask = np.zeros((2, 8), bool)
    for row, (seq, n) in enumerate(zip(seqs, lengths)):
        tokens[row, 8 - n:], mask[row, 8 - n:] = seq[:n], True
    cache = KVCache.zeros(config, 2, total, per_layer=layer_layout != "stacked")
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    logits, (k, v) = cached_forward(config, params, tokens, positions, mask, None)
    cache = append(cache, k, v, mask)
    next_pos = mask.sum(-1)
    # Causal model: full-sequence logits at position p are the next-token logits after p+1 tokens.
    full = [np.asarray(model.logits(seq[None]))[0] for seq in seqs]
    for step in range(8):
        expected = np.stack([f[n + step - 1] for f, n in zip(full, lengths)])
        np.testing.assert_allclose(np.asarray(logits), expected, atol=1e-4)
        token = np.array([seq[n + step] for seq, n in zip(seqs, lengths)], np.int32)[:, None]
        step_mask = np.ones((2, 1), bool)
        logits, (k, v) = cached_forward(config, params, token, (next_pos + step)[:, None],
                                        step_mask, cache)
        cache = append(cache, k, v, step_mask)
    assert int(cache.index) == total


def test_out_of_vocabulary_token_rejected(tiny_checkpoints):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    with pytest.raises(ValueError, match=f"token id {VOCAB} is outside"):
        model.logits([[1, VOCAB]])
    with pytest.raises(ValueError, match="must be \\[batch, time\\]"):
        model.logits([1, 2, 3])


def test_shared_prefix_run_once_equals_whole_rows(tiny, monkeypatch):
    """Rows that start with the same tokens: the prefix run once (one row, its keys and values
    continued by every row) gives the logits of running each row whole, for every family
    (Mistral's sliding window of 6 is shorter than the prefix here). The rows attend to the
    prefix's 9 slots in blocks of 4: the last block is read as slots 5-8 (overlapping), and
    Mistral's window skips the first."""
    from prosocial_jax.models import decoder

    monkeypatch.setattr(decoder, "KEY_BLOCK", 4)
    jax.clear_caches()  # programs traced with the default block would be reused otherwise
    model = pj.load_model(tiny.path)
    rng = np.random.default_rng(7)
    prefix = rng.integers(3, VOCAB, 9).tolist()
    rests = [rng.integers(3, VOCAB, n).tolist() for n in (5, 2, 7)]
    width = 8
    whole = np.zeros((3, 9 + width), np.int32)
    whole_mask = np.zeros(whole.shape, bool)
    rest = np.zeros((3, width), np.int32)
    rest_mask = np.zeros(rest.shape, bool)
    for row, ids in enumerate(rests):
        whole[row, :9 + len(ids)] = prefix + ids
        whole_mask[row, :9 + len(ids)] = True
        rest[row, :len(ids)] = ids
        rest_mask[row, :len(ids)] = True
    last = np.array([[len(ids) - 1, 0] for ids in rests])
    split = model.logits_at(rest, rest_mask, last, prefix=prefix)
    full = model.logits_at(whole, whole_mask, last + np.array([[9, 9]]))
    np.testing.assert_allclose(split, full, atol=2e-5, rtol=2e-5)


def test_per_layer_views_alias_the_stacked_weights_and_outlive_them(tiny_checkpoints):
    """On CPU the per-layer layout costs no memory: each layer's weight is a view of its slice
    of the stacked buffer, and stays valid after the stacked pytree is dropped. Its logits
    equal the scanned layers' (different fusion, so float rounding only)."""
    model = pj.load_model(tiny_checkpoints["llama"].path)
    stacked = model.params["layers"]["mlp"]["up_proj"]["weight"]
    per_layer = layers.unstack(model.params)
    auto = "packed" if rows_matmul.available() else "per_layer"  # test_rows_matmul.py
    assert layers.resolve("auto", model.params) == auto
    mesh = jax.make_mesh((1, 1), ("data", "model"))
    assert layers.resolve("auto", model.params, mesh) == "stacked"  # meshes scan the layers
    assert len(per_layer["layers"]) == model.config.num_layers
    view = per_layer["layers"][1]["mlp"]["up_proj"]["weight"]
    assert view.unsafe_buffer_pointer() == (stacked.unsafe_buffer_pointer()
                                            + stacked[0].nbytes)
    expected = np.asarray(stacked[1]).copy()
    stacked_copy = np.asarray(stacked).copy()
    ids = _ids(2, SEQ)
    scanned = np.asarray(model.logits(ids))
    config = model.config
    del model, stacked
    jax.block_until_ready(jnp.ones((512, 512)) * 3)  # reuse freed memory, if any was freed
    np.testing.assert_array_equal(np.asarray(view), expected)
    unrolled = jax.jit(forward_logits, static_argnums=0)(config, per_layer, ids,
                                                         np.ones(ids.shape, bool))
    np.testing.assert_allclose(np.asarray(unrolled), scanned, atol=2e-5, rtol=0)
    # A shared prefix's per-layer keys and values, broadcast to every row.
    split = jax.jit(forward_logits_at, static_argnums=0)(
        config, per_layer, ids[:, 5:], np.ones((2, SEQ - 5), bool), np.array([[0, 3], [2, 10]]),
        prefix=ids[:1, :5])
    same_prefix = np.concatenate([np.repeat(ids[:1, :5], 2, 0), ids[:, 5:]], axis=1)
    whole = np.asarray(jax.jit(forward_logits, static_argnums=0)(
        config, per_layer, same_prefix, np.ones(ids.shape, bool)))
    np.testing.assert_allclose(np.asarray(split), whole[[[0], [1]], [[5, 8], [7, 15]]],
                               atol=2e-5, rtol=0)
    # Over several devices (a mesh, an accelerator) the layers are copies, not views.
    replicated = jax.device_put(stacked_copy, jax.sharding.NamedSharding(
        jax.make_mesh((2, 1), ("data", "model")), jax.sharding.PartitionSpec()))
    split = layers.unstack({"layers": replicated})["layers"]
    assert len(split[1].devices()) == 2
    np.testing.assert_array_equal(np.asarray(split[1]), expected)
    with pytest.raises(ValueError, match="layer layout 'unrolled': choose from auto"):
        layers.resolve("unrolled", per_layer)
    with pytest.raises(ValueError, match="cannot be restacked"):
        layers.for_forward(per_layer, "stacked")


@pytest.mark.parametrize("key_block", [4, 32])  # blocks overlapping at the end; one block
def test_blockwise_attention_equals_numpy_softmax(monkeypatch, key_block):
    """A continued prefill's attention, one block of cache slots at a time with a running
    softmax (skipping blocks no query attends to), equals numpy's softmax over all the cache's
    scores and the queries' own; rows that attend to nothing stay finite."""
    from prosocial_jax.models import decoder

    monkeypatch.setattr(decoder, "KEY_BLOCK", key_block)
    b, g, q_per_g, t, h, s = 2, 2, 3, 5, 4, 14
    rng = np.random.default_rng(0)
    q = rng.standard_normal((b, g, q_per_g * t, h)).astype(np.float32)
    keys = rng.standard_normal((b, g, h, s)).astype(np.float32)
    values = rng.standard_normal((b, g, s, h)).astype(np.float32)
    own_keys = rng.standard_normal((b, g, h, t)).astype(np.float32)
    own_values = rng.standard_normal((b, g, t, h)).astype(np.float32)
    # Cache slots 6..12 attendable (a window over a prompt so far: blocks of 4 skip slots 0-3,
    # and the last block, slots 12-15, is read as 10-13), some keys padding; the queries' own
    # keys causal; row 1's query 0 attends to nothing at all.
    cache_mask = np.zeros((b, t, s), bool)
    cache_mask[:, :, 6:13] = rng.random((b, t, 7)) < 0.7
    cache_mask[1, 0] = False
    self_mask = np.tril(np.ones((t, t), bool))[None].repeat(b, 0)
    self_mask[1, 0] = False

    def masked_scores(keys_BxGxHxK, mask_BxTxK):
        scores = jnp.einsum("bgqh,bghs->bgqs", q, keys_BxGxHxK)
        mask = jnp.broadcast_to(mask_BxTxK[:, None, None], (b, 1, q_per_g, t, mask_BxTxK.shape[-1]))
        return jnp.where(mask.reshape(b, 1, q_per_g * t, -1), scores, decoder._MASKED)

    ours = np.asarray(jax.jit(decoder._attend_blockwise, static_argnums=0)(
        masked_scores, keys, values, cache_mask, masked_scores(own_keys, self_mask),
        own_values))

    all_scores = np.concatenate([q @ keys, q @ own_keys], axis=-1)  # [B, G, Q*T, S+T]
    allowed = np.concatenate([cache_mask, self_mask], axis=-1)  # [B, T, S+T]
    allowed = np.tile(allowed[:, None], (1, 1, q_per_g, 1)).reshape(b, 1, q_per_g * t, -1)
    weights = np.where(allowed, np.exp(all_scores - all_scores.max(-1, keepdims=True)), 0)
    with np.errstate(invalid="ignore"):
        weights /= weights.sum(-1, keepdims=True)
    expected = weights @ np.concatenate([values, own_values], axis=2)
    attends = allowed.any(-1)[:, 0]  # [B, Q*T]
    assert not attends.all() and np.isfinite(ours).all()
    np.testing.assert_allclose(ours[attends[:, None].repeat(g, 1)],
                               expected[attends[:, None].repeat(g, 1)], atol=1e-5)
