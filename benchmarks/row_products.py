"""What a decode step's weight products cost on this CPU, by rows per product: XLA vs PyTorch.

    .venv/bin/python benchmarks/row_products.py --out benchmarks/results/row_products.json

The products of SmolLM2-135M's 30 MLP and attention-output layers alone (random float32
weights of its shapes, 358 MB; x <- x + x Wo^T, then x <- x + (silu(x Wg^T) * x Wu^T) Wd^T), at
1, 2, 4, 8, 16 and 32 rows: in XLA with the weights stacked [layers, ...] and scanned, and as
separate per-layer buffers unrolled; through the native kernel on weights packed in strips
(`prosocial_jax.kernels.rows_matmul`, what CPU decoding runs where it builds); and in PyTorch
(its CPU matmul, MKL / oneDNN). Each library in its own process; best of 15 after a warm-up,
next to the one-thread copy bandwidth measured in the same run (the decode benchmarks' bound).

It shows where the time of a batched decode step goes that no layout removes: a product of a
few rows costs more than reading its weights, in both libraries.

Also in XLA: one decode step's attention reads of a KV cache (30 layers, 3 key/value heads of 64,
3 query heads each, per-layer buffers) at batch 16 x 2,048 and 1 x 8,192 slots: the scores q K^T
with keys [B, G, S, H] and with the slots-last keys [B, G, H, S] the cache keeps, and the
weighted values probs x V ([B, G, S, H]), each against the bytes it reads.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from decode_speed import copy_bandwidth, json_from_worker, write_results

LAYERS, D, F = 30, 576, 1536
ROWS = (1, 2, 4, 8, 16, 32)


def weights(seed: int = 0) -> list[tuple[np.ndarray, ...]]:
    rng = np.random.default_rng(seed)
    shapes = ((F, D), (F, D), (D, F), (D, D))  # gate, up, down, o: HF [out, in]
    return [tuple((rng.standard_normal(s) * 0.02).astype(np.float32) for s in shapes)
            for _ in range(LAYERS)]


def best_ms(fn, *args, sync=lambda x: x) -> float:
    sync(fn(*args))
    times = []
    for _ in range(15):
        start = time.perf_counter()
        sync(fn(*args))
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def jax_worker() -> dict:
    import jax
    import jax.numpy as jnp

    from prosocial_jax.kernels import rows_matmul

    per_layer = [tuple(jnp.asarray(w) for w in layer) for layer in weights()]
    stacked = tuple(jnp.stack([layer[i] for layer in per_layer]) for i in range(4))

    def xla_product(x, w):
        return x @ w.T

    def kernel_product(x, w):  # w packed in strips
        return rows_matmul.rows_matmul(x, w, w.shape[0] * rows_matmul.STRIP)

    def layer(x, gate, up, down, out, product=xla_product):
        x = x + product(x, out)
        return x + product(jax.nn.silu(product(x, gate)) * product(x, up), down)

    @jax.jit
    def unrolled(x, layers):
        for w in layers:
            x = layer(x, *w)
        return x

    @jax.jit
    def scanned(x, stacked):
        return jax.lax.scan(lambda x, w: (layer(x, *w), None), x, stacked)[0]

    @jax.jit
    def packed(x, layers):  # the same products through the kernel
        for w in layers:
            x = layer(x, *w, product=kernel_product)
        return x

    packed_weights = ([tuple(jnp.asarray(rows_matmul.pack(w)) for w in layer)
                       for layer in weights()] if rows_matmul.available() else None)
    result = {"cache": cache_reads()}
    for rows in ROWS:
        x = jnp.ones((rows, D), jnp.float32)
        result[rows] = {"per_layer_ms": best_ms(unrolled, x, per_layer,
                                                sync=jax.block_until_ready),
                        "stacked_ms": best_ms(scanned, x, stacked, sync=jax.block_until_ready)}
        if packed_weights is not None:
            result[rows]["packed_ms"] = best_ms(packed, x, packed_weights,
                                                sync=jax.block_until_ready)
    return result


def cache_reads(heads: int = 3, per_head: int = 3, head_dim: int = 64) -> dict:
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(0)
    result = {}
    for batch, slots in ((16, 2048), (1, 8192)):
        def cache(*shape):
            return [jnp.asarray(rng.standard_normal(shape, np.float32)) for _ in range(LAYERS)]
        keys = cache(batch, heads, slots, head_dim)
        keys_t = [jnp.swapaxes(k, -1, -2).copy() for k in keys]
        values = cache(batch, heads, slots, head_dim)
        q = jnp.ones((batch, heads, per_head, head_dim), jnp.float32)
        probs = jnp.full((batch, heads, per_head, slots), 1.0 / slots, jnp.float32)

        def every_layer(product):  # one product per layer's buffer; a tiny result each
            return jax.jit(lambda x, caches: sum(product(x, c)[..., :8].sum() for c in caches))

        nbytes = sum(k.nbytes for k in keys)  # the same for keys and values
        times = {
            "scores_keys_slots_first_ms": best_ms(every_layer(
                lambda q, k: jnp.einsum("bgqh,bgsh->bgqs", q, k)), q, keys,
                sync=jax.block_until_ready),
            "scores_keys_slots_last_ms": best_ms(every_layer(
                lambda q, k: jnp.einsum("bgqh,bghs->bgqs", q, k)), q, keys_t,
                sync=jax.block_until_ready),
            "weighted_values_ms": best_ms(every_layer(
                lambda p, v: jnp.einsum("bgqs,bgsh->bgqh", p, v)), probs, values,
                sync=jax.block_until_ready)}
        result[f"{batch}x{slots}"] = {
            "bytes": nbytes, **times,
            **{k.replace("_ms", "_gb_s"): nbytes / (v / 1e3) / 1e9 for k, v in times.items()}}
        del keys, keys_t, values
    return result


def torch_worker() -> dict:
    import torch

    layers = [tuple(torch.from_numpy(w) for w in layer) for layer in weights()]

    def run(x):
        for gate, up, down, out in layers:
            x = x + x @ out.T
            x = x + (torch.nn.functional.silu(x @ gate.T) * (x @ up.T)) @ down.T
        return x

    with torch.no_grad():
        return {rows: {"torch_ms": best_ms(run, torch.ones(rows, D))} for rows in ROWS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.to.write_text(json.dumps((jax_worker if args.worker == "jax" else torch_worker)()))
        return
    bandwidth = copy_bandwidth()
    runs = {kind: json_from_worker(__file__, "--worker", kind) for kind in ("jax", "torch")}
    nbytes = sum(w.nbytes for layer in weights() for w in layer)
    bound = 1e3 * nbytes / bandwidth
    results = {"weight_bytes": nbytes, "copy_bandwidth_gb_s": bandwidth / 1e9,
               "bandwidth_bound_ms": bound, "rows": {}}
    print(f"{nbytes / 1e6:.0f} MB of weights; copy bandwidth {bandwidth / 1e9:.1f} GB/s; "
          f"bound {bound:.1f} ms")
    results["cache_reads"] = runs["jax"]["cache"]
    for name, entry in results["cache_reads"].items():
        print(f"cache reads, batch x slots {name} ({entry['bytes'] / 1e6:.0f} MB of keys): "
              f"q K^T {entry['scores_keys_slots_first_gb_s']:.1f} GB/s with [S, H] keys, "
              f"{entry['scores_keys_slots_last_gb_s']:.1f} GB/s with [H, S] keys; probs x V "
              f"{entry['weighted_values_gb_s']:.1f} GB/s")
    for rows in ROWS:
        entry = {**runs["jax"][str(rows)], **runs["torch"][str(rows)]}
        entry.update({f"{k[:-3]}_over_bound": v / bound for k, v in list(entry.items())})
        results["rows"][str(rows)] = entry
        print(f"{rows:2d} rows: XLA per-layer {entry['per_layer_ms']:.1f} ms "
              f"({entry['per_layer_over_bound']:.2f}x bound), XLA stacked "
              f"{entry['stacked_ms']:.1f} ms, packed kernel "
              f"{entry.get('packed_ms', float('nan')):.1f} ms "
              f"({entry.get('packed_over_bound', float('nan')):.2f}x), PyTorch "
              f"{entry['torch_ms']:.1f} ms ({entry['torch_over_bound']:.2f}x)")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
