"""The Flax decoder shared by every supported family (Llama, Mistral, Qwen2, Qwen3, Gemma 1-3).

Applied functionally: parameters are a plain pytree, the KV cache an explicit pytree passed in and
returned. Layers are stacked on a leading axis and run by `nn.scan`, so compile time does not grow
with depth; given per-layer parameters (`models.layers`, what CPU decoding runs) they are
unrolled instead, each reading its own weight and cache buffers. The cache is only read inside the
layers; the caller writes every layer's new slots once, with `dynamic_update_slice`, which XLA
performs in place.

Numerics follow transformers: RMSNorm in float32, rotary tables in float32, attention softmax in
float32, logits always float32; weights and activations in the checkpoint's dtype otherwise.
"""

from __future__ import annotations

import math
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from flax import struct

from prosocial_jax.kernels import rows_matmul
from prosocial_jax.models import adapters
from prosocial_jax.models.cache import KVCache
from prosocial_jax.models.config import ModelConfig, RopeConfig
from prosocial_jax.models.projections import PROJECTIONS

# A finite "minus infinity": a padding query whose keys are all masked then gets a uniform (and
# harmless) attention row instead of NaN, and NaNs never reach the cache.
_MASKED = float(np.finfo(np.float32).min)

# Cache slots per block of the blockwise attention of a continued prefill (`_attend_blockwise`).
# On a 2-core CPU, SmolLM2's prefill of 8,192 tokens in chunks of 512 was fastest with blocks of
# 512 among 256, 512 and 1,024 (benchmarks/prefill_chunks.py).
KEY_BLOCK = 512


class RMSNorm(nn.Module):
    eps: float
    offset: float = 0.0  # Gemma: the stored weight is (scale - 1)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.zeros if self.offset else nn.initializers.ones
        scale = self.param("scale", init, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.offset:  # Gemma multiplies in float32, then casts
            return (normed * (self.offset + scale.astype(jnp.float32))).astype(x.dtype)
        return scale.astype(x.dtype) * normed.astype(x.dtype)  # Llama casts, then multiplies


def rotary_tables(config: ModelConfig, positions: jax.Array, rope: RopeConfig | None = None,
                  extent: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """cos and sin [B, T, R] in float32 for the given per-row positions [B, T] (under `rope`,
    default the config's; R = the rotating dimensions of a head, all of them unless the rope is
    partial).

    Longrope (Phi-3) switches a row to its long frequencies when this call reaches past its
    original length in that row, for every position of the call, as transformers does for one
    sequence; keys a cache rotated before that point with the short factors are recomputed by
    the decoder when a row crosses it (`decoding.decode._refill_at_original`), as transformers'
    `generate` recomputes its cache. (transformers decides for a whole batch by its longest
    row; here each row decides alone, so a row's tokens do not depend on the rows batched with
    it.) `extent` [B] (positions) stands for the rest of a call that arrives in pieces: a
    prompt prefilled in chunks decides by its last position, as one pass over it would."""
    rope = rope or config.rope
    inv_freq = jnp.asarray(rope.inverse_frequencies(config.head_dim))
    if rope.rope_type == "longrope":
        long = jnp.asarray(rope.inverse_frequencies(config.head_dim, long=True))
        last = jnp.max(positions, axis=-1)  # [B]
        if extent is not None:
            last = jnp.maximum(last, extent)
        past = (last + 1 > rope.original_max_position_embeddings)[:, None, None]
        inv_freq = jnp.where(past, long, inv_freq)  # [B, 1, R/2]
    angles = positions.astype(jnp.float32)[..., None] * inv_freq
    angles = jnp.concatenate([angles, angles], axis=-1)
    if rope.attention_factor != 1.0:
        return jnp.cos(angles) * rope.attention_factor, jnp.sin(angles) * rope.attention_factor
    return jnp.cos(angles), jnp.sin(angles)


def apply_rotary(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotates queries or keys x [B, T, heads, H] by the tables cos, sin [B, T, R]: the first R
    dimensions of each head (R = H but for a partial rotary), the rest pass through."""
    rotating = cos.shape[-1]
    if rotating < x.shape[-1]:
        return jnp.concatenate([apply_rotary(x[..., :rotating], cos, sin),
                                x[..., rotating:]], axis=-1)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos = cos[:, :, None, :].astype(x.dtype)
    sin = sin[:, :, None, :].astype(x.dtype)
    return x * cos + rotated * sin


def attention_mask(query_slots: jax.Array, key_slots: jax.Array, key_valid: jax.Array,
                   window: int | None = None) -> jax.Array:
    """[B, T, S] bool from query slots [T], key slots [S] and real keys [B, S]: causal by slot,
    real keys only, and a sliding window (Mistral's layers, Gemma's local layers): a query sees
    the `window` latest slots, its own included.

    Real tokens of a row are contiguous (left padding or right padding), so slot distance equals
    position distance and the window can be applied to slots.
    """
    distance = query_slots[:, None] - key_slots[None, :]
    allowed = distance >= 0
    if window is not None:
        allowed &= distance < window
    return allowed[None] & key_valid[:, None, :]


@struct.dataclass
class LayerViews:
    """What a layer reads besides its weights and cache that depends on its kind (global or
    local): the rotary tables cos, sin [B, T, H] and the masks over this call's own keys
    [B, T, T] and over the cache [B, T, S] (None without a cache). Gemma 2 / 3 interleave local
    (sliding-window; Gemma 3: their own rotary) and global layers: each kind's views are
    computed once per call and every layer takes its kind's."""

    cos: jax.Array
    sin: jax.Array
    self_mask: jax.Array
    cache_mask: jax.Array | None


def layer_views(config: ModelConfig, local: bool, positions: jax.Array, token_mask: jax.Array,
                cache: KVCache | None, rope_extent: jax.Array | None = None) -> LayerViews:
    rope = config.local_rope if local and config.local_rope is not None else config.rope
    window = config.sliding_window if local else None
    cos, sin = rotary_tables(config, positions, rope, rope_extent)
    slots = jnp.arange(positions.shape[1])
    self_mask = attention_mask(slots, slots, token_mask.astype(bool), window)
    cache_mask = None if cache is None else attention_mask(
        cache.index + slots, jnp.arange(cache.max_len), cache.valid, window)
    return LayerViews(cos, sin, self_mask, cache_mask)


class Linear(nn.Module):
    """y = x W^T (+ b) with W stored [out, in], the HF orientation.

    On CPU, XLA's matrix-vector products stream an [out, in] matrix 1.5-3x faster than an
    [in, out] one, and batch-1 decoding is nothing but matrix-vector products. `in_axes` > 1
    contracts several trailing axes of x (flattened in W's `in`) without reshaping x.
    """

    features: int
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, in_axes: int = 1) -> jax.Array:
        in_shape = x.shape[x.ndim - in_axes:]
        if self.has_variable("params", "packed"):  # the packed decode layout (models.layers)
            y = _packed_product(x.reshape(-1, math.prod(in_shape)),
                                self.get_variable("params", "packed"), self.features)
            y = y.reshape(*x.shape[:x.ndim - in_axes], self.features)
            if self.use_bias:
                y = y + self.get_variable("params", "bias").astype(x.dtype)
            return y
        weight = self.param("weight", nn.initializers.lecun_normal(in_axis=1, out_axis=0),
                            (self.features, math.prod(in_shape)), jnp.float32)
        weight = weight.astype(x.dtype)
        if in_axes == 1:
            # The 2-D `rows @ W.T` form lets XLA fuse the slice of this layer's weight out of the
            # stacked array into the product; other forms copy the weight out first.
            y = (x.reshape(-1, in_shape[0]) @ weight.T).reshape(*x.shape[:-1], self.features)
        else:
            y = jnp.tensordot(x, weight.reshape(self.features, *in_shape),
                              axes=(tuple(range(x.ndim - in_axes, x.ndim)),
                                    tuple(range(1, in_axes + 1))))
        if self.use_bias:
            bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
            y = y + bias.astype(x.dtype)
        return y


def _packed_product(rows: jax.Array, packed: jax.Array, features: int) -> jax.Array:
    """rows [M, K] @ W^T for W packed in strips (`kernels.rows_matmul`): the native kernel for
    the few rows of a decode step, XLA's product on the unpacked weight for more (prefill)."""
    if rows_matmul.takes(rows):
        return rows_matmul.rows_matmul(rows, packed, features)
    weight = rows_matmul.unpack(packed, features).astype(rows.dtype)
    return rows @ weight.T


def _linear(config: ModelConfig, name: str) -> Linear:
    """The Linear module of one of PROJECTIONS, sized by the config."""
    spec = PROJECTIONS[name]
    return Linear(spec.shape(config)[0], spec.has_bias(config), name=name)


@struct.dataclass
class Adaptation:
    """One layer's PBLoRA factors and the per-row preference, handed to its projections."""

    factors: dict  # {target: {"A1": ..., ...}} for this layer
    preference: jax.Array  # [B, K]
    dropout_key: jax.Array | None
    config: Any = struct.field(pytree_node=False)  # adapters.AdapterConfig (scale, dropout)
    rows: jax.Array | None = None  # [B] bool: the rows the adapter applies to (None: all)

    def __call__(self, name: str, x: jax.Array, y: jax.Array) -> jax.Array:
        """y plus this projection's preference-conditioned update, if the adapter targets it."""
        if name not in self.factors:
            return y
        key = None
        if self.dropout_key is not None:
            key = jax.random.fold_in(self.dropout_key, sorted(self.factors).index(name))
        if self.rows is not None:  # the update is linear in x: a zero input gives none
            x = jnp.where(self.rows[:, None, None], x, 0).astype(x.dtype)
        return y + adapters.delta(x, self.factors[name], self.preference, self.config.scale,
                                  self.config.dropout, key)


def _adapt(adaptation: Adaptation | None, name: str, x: jax.Array, y: jax.Array) -> jax.Array:
    return y if adaptation is None else adaptation(name, x, y)


def _attend_blockwise(scores, cache_keys, cache_values, cache_mask, self_scores, values):
    """Attention of many queries over a cache plus their own keys, one block of KEY_BLOCK cache
    slots at a time with a running (online) softmax, visiting only the blocks that hold a slot
    some query may attend to: a prompt prefilled in chunks then reads each earlier chunk's keys
    once per chunk and never scores the empty slots after it, and the scores held at once are
    [queries, KEY_BLOCK], not [queries, slots].

    `scores(keys_BxGxHxK, mask_BxTxK)` gives masked float32 scores [B, G, Q*T, K]; cache_keys
    [B, G, H, S], cache_values [B, G, S, H], cache_mask [B, T, S]; self_scores [B, G, Q*T, T]
    and values [B, G, T, H] are the queries' own. Returns [B, G, Q*T, H] in values' dtype.
    """
    slots = cache_keys.shape[3]
    block = min(KEY_BLOCK, slots)
    # The span of slots any query may attend to: blocks outside it (empty slots after the
    # prompt so far, slots before Mistral's window) are skipped.
    attended = jnp.any(cache_mask, axis=(0, 1))  # [S]
    first = jnp.argmax(attended)
    end = jnp.where(jnp.any(attended), slots - jnp.argmax(attended[::-1]), 0)

    def visit(j, carry):
        top, total, acc = carry  # running max, sum of exp and weighted values
        start = j * block
        at = jnp.minimum(start, slots - block)  # the last block may overlap the one before it
        mask = jax.lax.dynamic_slice_in_dim(cache_mask, at, block, axis=2)
        mask &= (at + jnp.arange(block) >= start)[None, None, :]  # count no slot twice
        s = scores(jax.lax.dynamic_slice_in_dim(cache_keys, at, block, axis=3), mask)
        new_top = jnp.maximum(top, s.max(-1))
        p = jnp.exp(s - new_top[..., None])
        keep = jnp.exp(top - new_top)
        block_values = jax.lax.dynamic_slice_in_dim(cache_values, at, block, axis=2)
        acc = acc * keep[..., None] + jnp.einsum(
            "bgqs,bgsh->bgqh", p.astype(values.dtype), block_values.astype(values.dtype),
            preferred_element_type=jnp.float32)
        return new_top, total * keep + p.sum(-1), acc

    rows = self_scores.shape[:3]
    init = (jnp.full(rows, _MASKED, jnp.float32), jnp.zeros(rows, jnp.float32),
            jnp.zeros((*rows, values.shape[-1]), jnp.float32))
    top, total, acc = jax.lax.fori_loop(first // block, -(-end // block), visit, init)
    # The queries' own keys last, as one more block.
    new_top = jnp.maximum(top, self_scores.max(-1))
    p = jnp.exp(self_scores - new_top[..., None])
    keep = jnp.exp(top - new_top)
    acc = acc * keep[..., None] + jnp.einsum("bgqs,bgsh->bgqh", p.astype(values.dtype), values,
                                             preferred_element_type=jnp.float32)
    total = total * keep + p.sum(-1)
    return (acc / total[..., None]).astype(values.dtype)


class Attention(nn.Module):
    """Grouped-query attention over a read-only cache plus this call's own keys.

    Scores against the cache and against the new keys are computed separately and share one
    softmax, so the cache is never concatenated or copied; the caller appends the returned new
    keys/values to the cache once for all layers.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, x, cos, sin, self_mask, cache_keys, cache_values, cache_mask,
                 adaptation: Adaptation | None = None):
        """x [B, T, D]; cos, sin [B, T, H]; self_mask [B, T, T]; one layer's cache_keys
        [B, G, H, S] and cache_values [B, G, S, H] (None without a cache) and cache_mask
        [B, T, S]. Returns the output [B, T, D] and this call's keys [B, G, H, T] and values
        [B, G, T, H] (the cache's layouts)."""
        cfg = self.config
        b, t, _ = x.shape
        n, g, q_per_g, h = cfg.num_heads, cfg.num_kv_heads, cfg.num_groups, cfg.head_dim

        def project(name: str) -> jax.Array:
            return _adapt(adaptation, name, x, _linear(cfg, name)(x))

        q_BxTxNxH = project("q_proj").reshape(b, t, n, h)
        k_BxTxGxH = project("k_proj").reshape(b, t, g, h)
        if cfg.qk_norm:  # Qwen3: each head's query and key normalised before the rotation
            q_BxTxNxH = RMSNorm(cfg.rms_norm_eps, cfg.norm_offset, name="q_norm")(q_BxTxNxH)
            k_BxTxGxH = RMSNorm(cfg.rms_norm_eps, cfg.norm_offset, name="k_norm")(k_BxTxGxH)
        q_BxTxNxH = apply_rotary(q_BxTxNxH, cos, sin)
        k_BxTxGxH = apply_rotary(k_BxTxGxH, cos, sin)
        v_BxTxGxH = project("v_proj").reshape(b, t, g, h)
        # Queries as [B, G, Q*T, H]: every score product is then a plain batched matmul over
        # (batch, kv head); a separate size-1 T axis makes XLA's CPU dot 2x slower.
        q = q_BxTxNxH.reshape(b, t, g, q_per_g, h).transpose(0, 2, 3, 1, 4)
        q = q.reshape(b, g, q_per_g * t, h)
        q = q * jnp.asarray(cfg.query_scale, q.dtype)
        # Keys and values in the cache's layouts, [B, G, H, T] and [B, G, T, H].
        k = k_BxTxGxH.transpose(0, 2, 3, 1)
        v = v_BxTxGxH.transpose(0, 2, 1, 3)

        def scores(keys_BxGxHxS, mask_BxTxS):
            s = jnp.einsum("bgqh,bghs->bgqs", q, keys_BxGxHxS.astype(q.dtype),
                           preferred_element_type=jnp.float32)
            if cfg.attn_softcap is not None:  # Gemma 2: before the mask, as transformers
                s = jnp.tanh(s / cfg.attn_softcap) * cfg.attn_softcap
            mask = jnp.broadcast_to(mask_BxTxS[:, None, None],
                                    (b, 1, q_per_g, t, mask_BxTxS.shape[-1]))
            return jnp.where(mask.reshape(b, 1, q_per_g * t, -1), s, _MASKED)

        self_scores = scores(k, self_mask)
        o_proj = _linear(cfg, "o_proj")

        def heads_to_rows(parts):  # [parts, B, G, Q*T, H] -> [B * parts * T, N*H]
            # Batch-major rows: on a mesh, each device's block of B stays one block of rows
            # (parts-major rows would make XLA gather every row to every device each layer).
            count = parts.shape[0]
            out = parts.reshape(count, b, g, q_per_g, t, h)
            return out.transpose(1, 0, 4, 2, 3, 5).reshape(b * count * t, -1)

        def output(attended):  # [B, G, Q*T, H] -> o_proj (and its adapter), one row a token
            rows = heads_to_rows(attended[None])
            out = o_proj(rows).reshape(b, t, cfg.hidden_size)
            return _adapt(adaptation, "o_proj", rows.reshape(b, t, -1), out), (k, v)

        if cache_keys is None:
            probs = jax.nn.softmax(self_scores, axis=-1).astype(v.dtype)
            return output(jnp.einsum("bgqs,bgsh->bgqh", probs, v))
        if t > 1:  # many query tokens (a continued prefill): blockwise over the cache
            return output(_attend_blockwise(scores, cache_keys, cache_values, cache_mask,
                                            self_scores, v))
        cached = cache_keys.shape[3]
        probs = jax.nn.softmax(
            jnp.concatenate([scores(cache_keys, cache_mask), self_scores], axis=-1),
            axis=-1).astype(v.dtype)
        from_cache = jnp.einsum("bgqs,bgsh->bgqh", probs[..., :cached],
                                cache_values.astype(v.dtype))
        from_self = jnp.einsum("bgqs,bgsh->bgqh", probs[..., cached:], v)
        if "packed" in self.variables.get("params", {}).get("o_proj", {}):
            # The native kernel reads its rows from memory, so the sum is made once, before it,
            # and o_proj multiplies B rows, not 2B (at batch 16, 2B rows cost 1.7x as much).
            return output(from_cache + from_self)
        # XLA's product: the two parts go through o_proj as separate rows and are summed after
        # it (o_proj is linear). Summing first lets XLA fold the sum into o_proj's fused
        # matrix-vector loop, re-evaluated unvectorised for every weight element: o_proj was 5x
        # slower at batch 1.
        rows = heads_to_rows(jnp.stack([from_cache, from_self]))
        out = o_proj(rows).reshape(b, 2, t, cfg.hidden_size).sum(axis=1)
        if cfg.o_bias:  # added to both parts by o_proj: once is right
            out = out - o_proj.variables["params"]["bias"].astype(out.dtype)
        if adaptation is not None:  # on the summed input, [B, T, N*H]
            out = adaptation("o_proj", rows.reshape(b, 2, t, -1).sum(axis=1), out)
        return out, (k, v)


class MLP(nn.Module):
    config: ModelConfig

    @nn.compact
    def __call__(self, x, adaptation: Adaptation | None = None):
        """x [B, T, D] -> [B, T, D] through a gated hidden layer [B, T, F]."""
        cfg = self.config

        def project(name: str, inputs: jax.Array) -> jax.Array:
            return _adapt(adaptation, name, inputs, _linear(cfg, name)(inputs))

        gate, up = project("gate_proj", x), project("up_proj", x)
        if cfg.activation == "gelu_tanh":
            gate = jax.nn.gelu(gate, approximate=True)
        else:
            gate = jax.nn.silu(gate)
        return project("down_proj", gate * up)


def project_to_vocab(hidden: jax.Array, weight: jax.Array) -> jax.Array:
    """Float32 logits [..., V] from hidden states [..., D] and an output weight [V, D]."""
    return jnp.einsum("...d,vd->...v", hidden, weight.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)


class Unembed(nn.Module):
    """The untied output head: weight [V, D] (HF orientation), float32 logits."""

    vocab_size: int

    @nn.compact
    def __call__(self, hidden: jax.Array) -> jax.Array:
        weight = self.param("weight", nn.initializers.lecun_normal(in_axis=1, out_axis=0),
                            (self.vocab_size, hidden.shape[-1]), jnp.float32)
        return project_to_vocab(hidden, weight)


class DecoderLayer(nn.Module):
    """One pre-norm block; scanned over the stacked layer axis by `Decoder`."""

    config: ModelConfig
    adapter_config: Any = None  # adapters.AdapterConfig when an adapter is applied

    @nn.compact
    def __call__(self, x, cache_keys, cache_values, views: LayerViews, adapter_factors,
                 preference, dropout_key, layer_kind=None, adapter_rows=None):
        """`layer_kind` (scanned, interleaved local/global layers only): 0 global, 1 local, the
        index of this layer's entry in `views`, whose leaves then have a leading axis of 2.
        `adapter_rows` [B] (bool, None: all): the rows the adapter applies to."""
        cfg = self.config
        if layer_kind is not None:
            views = jax.tree.map(lambda both: both[layer_kind], views)
        adaptation = None
        if adapter_factors is not None:
            adaptation = Adaptation(adapter_factors, preference, dropout_key, self.adapter_config,
                                    adapter_rows)

        def norm(name):
            return RMSNorm(cfg.rms_norm_eps, cfg.norm_offset, name=name)

        h, new_kv = Attention(cfg, name="attn")(
            norm("input_norm")(x), views.cos, views.sin, views.self_mask, cache_keys,
            cache_values, views.cache_mask, adaptation)
        if cfg.sandwich_norms:  # Gemma 2 / 3 also normalise each sub-block's output
            h = norm("attn_out_norm")(h)
        x = x + h
        # The MLP's input norm (HF: Llama's post_attention_layernorm, Gemma 2's
        # pre_feedforward_layernorm).
        h = MLP(cfg, name="mlp")(norm("post_attn_norm")(x), adaptation)
        if cfg.sandwich_norms:
            h = norm("mlp_out_norm")(h)
        return x + h, new_kv


class Decoder(nn.Module):
    config: ModelConfig
    adapter_config: Any = None  # adapters.AdapterConfig (static) when `adapter` is passed

    def setup(self):
        cfg = self.config
        self.embed = nn.Embed(cfg.vocab_size, cfg.hidden_size, name="embed")
        self.layers = nn.scan(
            DecoderLayer,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            # scanned: caches, adapter factors, dropout keys, layer kinds; broadcast: the rest
            in_axes=(0, 0, nn.broadcast, 0, nn.broadcast, 0, 0, nn.broadcast),
            length=cfg.num_layers,
        )(cfg, self.adapter_config, name="layers")
        self.final_norm = RMSNorm(cfg.rms_norm_eps, cfg.norm_offset, name="final_norm")
        if not cfg.tie_word_embeddings:
            self.lm_head = Unembed(cfg.vocab_size, name="lm_head")

    def __call__(self, tokens: jax.Array, positions: jax.Array, token_mask: jax.Array,
                 cache: KVCache | None = None, adapter: dict | None = None,
                 preference: jax.Array | None = None, dropout_key: jax.Array | None = None,
                 rope_extent: jax.Array | None = None, adapter_rows: jax.Array | None = None
                 ) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        """Final-norm hidden states [B, T, D] and this call's keys [L, B, G, H, T] and values
        [L, B, G, T, H] (with per-layer parameters, see `models.layers`: L-tuples of one
        layer's).

        `tokens`, `positions` and `token_mask` are [B, T]. The cache (if any) is only read;
        `KVCache.append` stores the returned keys/values. `adapter` is a PBLoRA factor pytree
        (stacked over layers) applied under the per-row `preference` [B, K]; `dropout_key` turns
        on the adapter's input dropout (training). `rope_extent`: see `rotary_tables`.
        `adapter_rows` [B] (bool): the rows the adapter applies to (None: all; the others run
        the bare model, so that one pass serves a model and its Pv-Arm on the same weights).
        """
        cfg = self.config
        x = self.embed(tokens)
        if cfg.scale_embeddings:
            x = x * jnp.asarray(cfg.hidden_size ** 0.5, x.dtype)
        local = cfg.local_layers
        # One set of views per kind of layer present (most models: one kind).
        views = {kind: layer_views(cfg, kind, positions, token_mask, cache, rope_extent)
                 for kind in sorted(set(local))}
        cache_keys, cache_values = (None, None) if cache is None else (cache.keys, cache.values)
        dropout_keys = None
        if adapter is not None and dropout_key is not None:
            dropout_keys = jax.random.split(dropout_key, cfg.num_layers)
        per_layer = None if self.is_initializing() else self.variables["params"]["layers"]
        if not isinstance(per_layer, tuple):  # stacked: one scanned layer
            if len(views) == 1:
                shared, kinds = next(iter(views.values())), None
            else:  # each layer picks its kind's views inside the scan
                shared = jax.tree.map(lambda g, lo: jnp.stack([g, lo]), views[False],
                                      views[True])
                kinds = jnp.asarray(local, jnp.int32)
            x, new_kv = self.layers(x, cache_keys, cache_values, shared, adapter, preference,
                                    dropout_keys, kinds, adapter_rows)
            return self.final_norm(x), new_kv
        # Per-layer parameters (`models.layers`): the layers unrolled, each reading its own
        # weight and cache buffers. Adapter factors and dropout keys stay stacked (they are
        # tiny, so slicing them out costs nothing).
        layer = DecoderLayer(cfg, self.adapter_config, parent=None)  # applied per layer
        keys, values = [], []
        for i, layer_params in enumerate(per_layer):
            def pick(tree, i=i):  # layer i of a stacked pytree (adapter factors, keys)
                return None if tree is None else jax.tree.map(lambda a: a[i], tree)
            layer_kv = (None, None) if cache is None else cache.layer(i)
            x, (k, v) = layer.apply({"params": layer_params}, x, *layer_kv, views[local[i]],
                                    pick(adapter), preference, pick(dropout_keys),
                                    adapter_rows=adapter_rows)
            keys.append(k)
            values.append(v)
        return self.final_norm(x), (tuple(keys), tuple(values))

    def unembed(self, hidden: jax.Array) -> jax.Array:
        """Float32 logits [..., V] from final-norm hidden states."""
        # The packed decode layout (models.layers) keeps the head's weight beside its strips,
        # so products the kernel does not take read the weight, not an unpacked copy.
        head = None if self.is_initializing() else self.variables["params"].get("packed_head")
        rows = hidden.reshape(-1, hidden.shape[-1])
        if head is not None and rows_matmul.takes(rows):
            logits = rows_matmul.rows_matmul(rows, head["packed"], self.config.vocab_size)
            logits = logits.reshape(*hidden.shape[:-1], self.config.vocab_size)
        elif self.config.tie_word_embeddings:
            logits = project_to_vocab(hidden, self.embed.embedding)
        else:
            logits = self.lm_head(hidden)
        cap = self.config.final_softcap
        return logits if cap is None else jnp.tanh(logits / cap) * cap  # Gemma 2

    def forward_for_init(self, tokens: jax.Array) -> jax.Array:
        """Touches every parameter once; only used to initialise or eval_shape the pytree."""
        mask = jnp.ones(tokens.shape, bool)
        hidden, _ = self(tokens, positions_from_mask(mask), mask)
        return self.unembed(hidden)


def positions_from_mask(token_mask: jax.Array) -> jax.Array:
    """Rotary positions [B, T] for padded rows [B, T]: 0 at each row's first real token (as
    transformers does)."""
    return jnp.maximum(jnp.cumsum(token_mask.astype(jnp.int32), axis=-1) - 1, 0)


def _check_inputs(config: ModelConfig, tokens, token_mask, positions=None, adapter_config=None,
                  adapter=None, preference=None) -> None:
    """Shape and dtype checks at the entry of a forward pass (at trace time: free under jit)."""
    chex.assert_rank(tokens, 2)
    chex.assert_type(tokens, int)
    chex.assert_equal_shape([tokens, token_mask] + ([] if positions is None else [positions]))
    if adapter is not None:
        if adapter_config is None or preference is None:
            raise ValueError("an adapter needs its AdapterConfig and a preference per row")
        chex.assert_shape(preference, (tokens.shape[0], adapter_config.num_attributes))
        for factors in adapter.values():  # stacked over layers, like the decoder's weights
            chex.assert_axis_dimension(factors["A1"], 0, config.num_layers)


def forward_logits(config: ModelConfig, params, tokens: jax.Array, token_mask: jax.Array,
                   adapter_config=None, adapter=None, preference=None,
                   dropout_key=None) -> jax.Array:
    """Full-sequence float32 logits [B, T, V] for tokens [B, T] (real ones marked by
    `token_mask`), no cache; optionally through a PBLoRA adapter under `preference` [B, K]."""
    _check_inputs(config, tokens, token_mask, None, adapter_config, adapter, preference)
    decoder = Decoder(config, adapter_config)
    positions = positions_from_mask(token_mask)
    hidden, _ = decoder.apply({"params": params}, tokens, positions, token_mask, None,
                              adapter, preference, dropout_key)
    return decoder.apply({"params": params}, hidden, method=Decoder.unembed)


def forward_hidden(config: ModelConfig, params, tokens: jax.Array, token_mask: jax.Array,
                   prefix: jax.Array | None = None) -> jax.Array:
    """Final-norm hidden states [B, T, D] for tokens [B, T], no cache: what a score head reads
    (sequence classifiers and reward models). `params` need no `lm_head`.

    `prefix` [1, P]: tokens every row starts with (a judge's instructions, a chat template's
    system turn). They run once, for one row, and every row's `tokens` continue from their
    keys and values: the same hidden states as running each row whole, for P x (B - 1) fewer
    token-passes. Rows are then right-padded continuations (real tokens first)."""
    _check_inputs(config, tokens, token_mask)
    decoder = Decoder(config)
    variables = {"params": params}
    if prefix is None:
        hidden, _ = decoder.apply(variables, tokens, positions_from_mask(token_mask),
                                  token_mask)
        return hidden
    chex.assert_rank(prefix, 2)
    chex.assert_axis_dimension(prefix, 0, 1)
    batch, length = tokens.shape[0], prefix.shape[1]
    prefix_mask = jnp.ones(prefix.shape, bool)
    prefix_kv = decoder.apply(variables, prefix, positions_from_mask(prefix_mask),
                              prefix_mask)[1]

    def every_row(kv):  # one row's [(L,) 1, G, ., .] -> [(L,) B, G, ., .], either layout
        return jnp.broadcast_to(kv, (*kv.shape[:-4], batch, *kv.shape[-3:]))

    keys, values = jax.tree.map(every_row, prefix_kv)
    cache = KVCache(keys=keys, values=values, valid=jnp.ones((batch, length), bool),
                    index=jnp.asarray(length, jnp.int32))
    hidden, _ = decoder.apply(variables, tokens, length + positions_from_mask(token_mask),
                              token_mask, cache)
    return hidden


def forward_logits_at(config: ModelConfig, params, tokens: jax.Array, token_mask: jax.Array,
                      positions_BxP: jax.Array, prefix: jax.Array | None = None) -> jax.Array:
    """Float32 logits [B, P, V] at chosen positions [B, P] of each row (counted within
    `tokens`, after any shared `prefix`, see `forward_hidden`): a judge that reads a few answer
    tokens never materialises the [B, T, V] logits of the whole sequence."""
    hidden_BxTxD = forward_hidden(config, params, tokens, token_mask, prefix)
    picked_BxPxD = jnp.take_along_axis(hidden_BxTxD, positions_BxP[..., None], axis=1)
    return Decoder(config).apply({"params": params}, picked_BxPxD, method=Decoder.unembed)


def forward_with_cache(config: ModelConfig, params, tokens: jax.Array, positions: jax.Array,
                       mask: jax.Array, cache: KVCache | None, last_only: bool = True,
                       adapter_config=None, adapter=None, preference=None, rope_extent=None,
                       adapter_rows=None):
    """Logits (last position [B, V], or all [B, T, V]) and this call's keys [L, B, G, H, T] and
    values [L, B, G, T, H] (L-tuples with per-layer parameters), for tokens, positions and
    mask [B, T].

    The cache is only read (None = empty, e.g. at prefill); store the returned keys/values with
    `cache.append(keys, values, mask)`. `rope_extent`: the last position of a prompt that this
    call prefills a chunk of (see `rotary_tables`). `adapter_rows` [B] (bool): the rows the
    adapter applies to (None: all).
    """
    _check_inputs(config, tokens, mask, positions, adapter_config, adapter, preference)
    if cache is not None:
        chex.assert_axis_dimension(cache.valid, 0, tokens.shape[0])
    decoder = Decoder(config, adapter_config)
    hidden, new_kv = decoder.apply({"params": params}, tokens, positions, mask, cache,
                                   adapter, preference, rope_extent=rope_extent,
                                   adapter_rows=adapter_rows)
    if last_only:
        hidden = hidden[:, -1]
    logits = decoder.apply({"params": params}, hidden, method=Decoder.unembed)
    return logits, new_kv


def init_params_shapes(config: ModelConfig, dtype: jnp.dtype = jnp.float32):
    """Parameter ShapeDtypeStructs without allocating memory (for sharding and memory plans)."""
    def init():
        tokens = jnp.zeros((1, 1), jnp.int32)
        variables = Decoder(config).init(jax.random.key(0), tokens,
                                         method=Decoder.forward_for_init)
        return jax.tree.map(lambda x: x.astype(dtype), variables["params"])
    return jax.eval_shape(init)
