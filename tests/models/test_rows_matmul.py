"""The native few-row product (`kernels.rows_matmul`) and the packed layer layout that feeds it:
products against NumPy in float64, the packing against a hand-worked example, decoding in the
packed layout against the per-layer one and transformers, and the fallbacks (no compiler, a
failing build, too little memory) that keep decoding on XLA's products."""

import logging
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import VOCAB, hf_greedy, torch_logits

import prosocial_jax as pj
from prosocial_jax.kernels import rows_matmul
from prosocial_jax.models import layers

needs_kernel = pytest.mark.skipif(not rows_matmul.available(),
                                  reason="the native kernel does not build on this machine")


def test_pack_lays_out_strips_of_16_output_features():
    """Hand-worked: W [20, 2] (out, in) packs into 2 strips; strip s, row k holds
    W[16 s : 16 s + 16, k], the second strip zero-padded past output 20."""
    weight = np.arange(40, dtype=np.float32).reshape(20, 2)  # W[n, k] = 2 n + k
    packed = rows_matmul.pack(weight)
    assert packed.shape == (2, 2, 16)
    assert packed[0, 0].tolist() == [2.0 * n for n in range(16)]
    assert packed[0, 1].tolist() == [2.0 * n + 1 for n in range(16)]
    assert packed[1, 1].tolist() == [2.0 * n + 1 for n in range(16, 20)] + [0.0] * 12
    np.testing.assert_array_equal(np.asarray(rows_matmul.unpack(jnp.asarray(packed), 20)),
                                  weight)


@needs_kernel
@pytest.mark.parametrize("rows,features,inputs", [
    (1, 576, 576), (2, 1536, 576), (3, 40, 7), (5, 576, 1536), (12, 48, 33), (16, 192, 576),
    (17, 576, 64), (33, 16, 1), (64, 100, 64)])
def test_kernel_equals_numpy_in_float64(rows, features, inputs):
    """Every size of the last row group (groups of 6: 1 to 6 rows); more than one group, so
    the blocked path runs, with K one block (64 and under) and several (576: partial sums carry
    over between blocks, and the prefetch is taken); padded strips, odd K; jitted, as a decode
    step runs it."""
    rng = np.random.default_rng(rows * features + inputs)
    weight = rng.standard_normal((features, inputs)).astype(np.float32)
    x = rng.standard_normal((rows, inputs)).astype(np.float32)
    out = jax.jit(rows_matmul.rows_matmul, static_argnums=2)(
        jnp.asarray(x), jnp.asarray(rows_matmul.pack(weight)), features)
    assert out.shape == (rows, features) and out.dtype == jnp.float32
    expected = x.astype(np.float64) @ weight.astype(np.float64).T
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5,
                               atol=1e-5 * np.sqrt(inputs))


@needs_kernel
def test_kernel_runs_concurrent_products_without_deadlock():
    """120 independent products in one program: XLA:CPU runs them concurrently on its intra-op
    pool, which is also where the kernel schedules its parts (a kernel that waited for a queued
    part hung here)."""
    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((64, 48)).astype(np.float32) for _ in range(120)]
    packed = [jnp.asarray(rows_matmul.pack(w)) for w in weights]
    x = rng.standard_normal((4, 48)).astype(np.float32)

    @jax.jit
    def all_products(x, packed):
        return jnp.stack([rows_matmul.rows_matmul(x, p, 64) for p in packed])

    # On a thread with a deadline: a deadlock fails the test instead of hanging the suite.
    result = []
    worker = threading.Thread(target=lambda: result.append(np.asarray(
        all_products(jnp.asarray(x), packed))), daemon=True)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive(), "120 concurrent products did not finish in 120 s (deadlock)"
    out = result[0]
    np.testing.assert_allclose(out, np.stack([x @ w.T for w in weights]), rtol=1e-5, atol=1e-5)


@needs_kernel
def test_packed_layout_logits_and_greedy_match_transformers(tiny):
    """Every family's tiny checkpoint: a forward pass over the packed layout (24 rows: every
    projection and the output head through the kernel, one call each, counted in the lowered
    program) gives transformers' logits, and greedy decoding transformers' tokens."""
    model = pj.load_model(tiny.path)
    params = layers.for_forward(model.params, "packed")
    assert layers.is_packed(params) and layers.resolve("auto", model.params) == "packed"
    ids = np.random.RandomState(3).randint(3, VOCAB, (2, 12))
    from prosocial_jax.models.decoder import forward_logits

    forward = jax.jit(forward_logits, static_argnums=0)
    args = (model.config, params, jnp.asarray(ids), jnp.ones(ids.shape, bool))
    packed_arrays = sum(path[-1].key == "packed" for path, _ in
                        jax.tree_util.tree_flatten_with_path(params)[0])
    assert forward.lower(*args).as_text().count("@prosocial_rows_matmul") == packed_arrays
    ours = np.asarray(forward(*args))
    np.testing.assert_allclose(ours, torch_logits(tiny.torch_model, ids), atol=1e-4)
    prompt = ids[0].tolist()
    result = pj.generate(model, [prompt], max_new_tokens=10, stop_tokens=[],
                         layer_layout="packed")[0]
    assert result.tokens == hf_greedy(tiny.torch_model, prompt, 10, eos_token_id=VOCAB + 1)


@needs_kernel
def test_packed_copy_is_made_once_and_dropped_with_the_model(tiny_checkpoints):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    first = layers.for_forward(model.params, "auto")
    again = layers.for_forward(model.params, "packed")
    assert all(a is b for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(first)))
    # A pytree sharing the layers but not the output head gets its own head back, and its own
    # packed head: the strips of that weight.
    assert not model.config.tie_word_embeddings
    other = {**model.params, "lm_head": {"weight": model.params["lm_head"]["weight"] + 1}}
    packed_other = layers.for_forward(other, "auto")
    assert packed_other["lm_head"] is other["lm_head"]
    assert packed_other["layers"] is first["layers"]
    np.testing.assert_array_equal(  # strip 0, output feature 0: the weight's row 0
        np.asarray(packed_other["packed_head"]["packed"])[0, :, 0],
        np.asarray(other["lm_head"]["weight"])[0])
    key, head = layers._key(model.params), id(model.params["lm_head"]["weight"])
    assert key in layers._id_packed and head in layers._id_packed_head
    del model, first, again, other, packed_other
    import gc

    gc.collect()
    assert key not in layers._id_packed and head not in layers._id_packed_head


def test_auto_keeps_per_layer_where_the_copy_would_not_fit(tiny_checkpoints, monkeypatch):
    model = pj.load_model(tiny_checkpoints["llama"].path)
    # The copy: every layer array and the output head (this model's untied lm_head).
    copy = sum(x.nbytes for x in jax.tree.leaves(model.params["layers"])) + (
        model.params["lm_head"]["weight"].nbytes)
    monkeypatch.setattr(layers, "_available_memory", lambda: 4 * copy - 1)
    assert layers.resolve("auto", model.params) == "per_layer"
    monkeypatch.setattr(layers, "_available_memory", lambda: 4 * copy + 1)
    assert layers.resolve("auto", model.params) == ("packed" if rows_matmul.available()
                                                    else "per_layer")
    bf16 = pj.load_model(tiny_checkpoints["llama"].path, dtype="bfloat16")
    assert layers.resolve("auto", bf16.params) == "per_layer"  # the kernel is float32
    with pytest.raises(ValueError, match="packed layer layout needs float32 weights"):
        layers.for_forward(bf16.params, "packed")


@pytest.mark.parametrize("setting", ["switched off", "failing compiler"])
def test_no_kernel_falls_back_to_xla_products(tiny_checkpoints, monkeypatch, tmp_path, caplog,
                                              setting):
    """Switched off by PROSOCIAL_JAX_NATIVE_KERNELS=0, or a compiler that fails: the kernel is
    unavailable (a failed build is logged with the compiler's message), "auto" decodes per
    layer with the same tokens, and "packed" is an error naming what it needs."""
    monkeypatch.setenv("PROSOCIAL_JAX_CACHE", str(tmp_path))
    if setting == "switched off":
        monkeypatch.setenv(rows_matmul.ENV_SWITCH, "0")
    else:
        compiler = tmp_path / "broken-c++"
        compiler.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo broken 1.0 && exit 0\n"
                            "echo 'rows_matmul.cc:1: error: no AVX2 here' >&2; exit 1\n")
        compiler.chmod(0o755)
        monkeypatch.setenv("CXX", str(compiler))
    with caplog.at_level(logging.WARNING, logger=rows_matmul.__name__):
        assert rows_matmul.available.__wrapped__() is False
    if setting == "failing compiler":
        assert "no AVX2 here" in caplog.text
        assert not list(tmp_path.glob("kernels/*.so"))  # nothing half-written is left
    monkeypatch.setattr(rows_matmul, "available", lambda: False)
    model = pj.load_model(tiny_checkpoints["llama"].path)
    assert layers.resolve("auto", model.params) == "per_layer"
    with pytest.raises(ValueError, match="native kernel"):
        layers.for_forward(model.params, "packed")
    prompt = np.random.RandomState(4).randint(3, VOCAB, 9).tolist()
    tokens = pj.generate(model, [prompt], max_new_tokens=6, stop_tokens=[])[0].tokens
    assert tokens == hf_greedy(tiny_checkpoints["llama"].torch_model, prompt, 6,
                               eos_token_id=VOCAB + 1)
