"""One Pv-Arm training step on SmolLM2-135M (K = 6 attributes, 8 preference pairs of 256 tokens
each, PBLoRA r1 = r2 = 4 on q/k/v), three ways:

  (a) the K attribute gradients from one backward pass + PCGrad (what `train_arm` runs),
  (b) the plain preference-weighted single loss, sum_i alpha_i L_i, one gradient (the floor),
  (c) K separate backward passes in a Python loop, then PCGrad (the naive way);
  (d) = (a) with the backbone's layers unrolled over per-layer views of its weights (the layout
      CPU decoding runs, `prosocial_jax.models.layers`), to see whether training gains from it.

    .venv/bin/python benchmarks/pvarm_step.py --out benchmarks/results/pvarm_step.json

Each method runs in its own worker process: compiled once, warmed up, then timed (median of
REPEATS steps); peak resident memory is measured over the timed steps only. Target: (a) <= 1.3x
(b). All three apply the same AdamW update on the same batch; (a) and (c) agree numerically.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from decode_speed import json_from_worker

from prosocial_jax.peak_memory import peak_rss_bytes, reset_peak_rss

K, PAIRS, LENGTH, REPEATS = 6, 8, 256, 3


def worker(method: str) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    import prosocial_jax as pj
    from prosocial_jax.evaluation.likelihood import pair_margins
    from prosocial_jax.models.adapters import AdapterConfig, init_adapter
    from prosocial_jax.pvarm.objective import attribute_losses, per_attribute_gradients
    from prosocial_jax.pvarm.pcgrad import pcgrad

    model = pj.load_model("bundled:smollm2", dtype="float32")
    config = AdapterConfig()
    adapter = init_adapter(model.config, config, jax.random.key(0))
    rng = np.random.RandomState(0)
    tokens = rng.randint(100, model.config.vocab_size, (PAIRS, 2, LENGTH)).astype(np.int32)
    response = np.zeros((PAIRS, 2, LENGTH), bool)
    response[:, :, 64:] = True  # 64 prompt tokens, 192 response tokens
    batch = {"tokens": jnp.asarray(tokens), "attention": jnp.ones((PAIRS, 2, LENGTH), bool),
             "response": jnp.asarray(response)}
    labels = jnp.asarray(rng.choice([-1, 0, 1], (PAIRS, K)), jnp.int8)
    betas = jnp.full((K,), 0.01)
    alpha = jnp.asarray(rng.dirichlet(np.ones(K)), jnp.float32)
    tx = optax.chain(pcgrad(K), optax.adamw(1e-3))
    plain_tx = optax.adamw(1e-3)
    params, frozen = adapter.params, model.params
    if method == "d":
        from prosocial_jax.models import layers

        frozen = layers.unstack(model.params)

    # The frozen backbone and the batch are arguments, not closed-over constants: XLA would
    # otherwise fold them into the executable (as train_arm never does).
    def attribute_loss(adapter_params, frozen, batch, i):
        margins = pair_margins(model.config, frozen, batch, config, adapter_params, alpha)
        return attribute_losses(margins, labels, betas)["loss"][i]

    @jax.jit
    def step_a(params, state, frozen, batch):
        stacked, _ = per_attribute_gradients(model.config, frozen, config, params, batch,
                                             labels, betas, alpha)
        updates, state = tx.update(stacked, state, params, preference=alpha)
        return optax.apply_updates(params, updates), state

    @jax.jit
    def step_b(params, state, frozen, batch):
        def loss(p):
            margins = pair_margins(model.config, frozen, batch, config, p, alpha)
            return alpha @ attribute_losses(margins, labels, betas)["loss"]
        updates, state = plain_tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    grad_i = jax.jit(jax.grad(attribute_loss), static_argnums=3)
    apply_c = jax.jit(lambda params, state, stacked: tx.update(stacked, state, params,
                                                               preference=alpha))

    def step_c(params, state, frozen, batch):
        grads = [grad_i(params, frozen, batch, i) for i in range(K)]  # K forward + backward
        stacked = jax.tree.map(lambda *g: jnp.stack(g), *grads)
        updates, state = apply_c(params, state, stacked)
        return optax.apply_updates(params, updates), state

    step, state = {"a": (step_a, tx.init(params)), "b": (step_b, plain_tx.init(params)),
                   "c": (step_c, tx.init(params)), "d": (step_a, tx.init(params))}[method]
    start = time.perf_counter()
    out = step(params, state, frozen, batch)  # compile + first run
    jax.block_until_ready(out)
    first = time.perf_counter() - start
    before = reset_peak_rss()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        jax.block_until_ready(step(params, state, frozen, batch))
        times.append(time.perf_counter() - start)
    new_params = jax.block_until_ready(out[0])
    checksum = float(sum(jnp.sum(jnp.abs(x)) for x in jax.tree.leaves(new_params)))
    return {"seconds": statistics.median(times), "first_call_seconds": first,
            "peak_rss": peak_rss_bytes(), "rss_before": before, "param_checksum": checksum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--worker", choices=("a", "b", "c", "d"), help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.result.write_text(json.dumps(worker(args.worker)))
        return
    labels = {"a": "(a) K gradients, one backward + PCGrad",
              "b": "(b) weighted single loss, one backward",
              "c": "(c) K separate backward passes + PCGrad",
              "d": "(d) = (a), backbone layers unrolled"}
    results = {method: json_from_worker(__file__, "--worker", method, flag="--result")
               for method in ("a", "b", "c", "d")}
    for method, r in results.items():
        print(f"{labels[method]:44s} {r['seconds']:7.2f} s/step   peak RSS "
              f"{r['peak_rss'] / 2**30:5.2f} GiB (steps alone: "
              f"+{(r['peak_rss'] - r['rss_before']) / 2**30:.2f} GiB)")
    ratio_ab = results["a"]["seconds"] / results["b"]["seconds"]
    ratio_cb = results["c"]["seconds"] / results["b"]["seconds"]
    memory_ab = results["a"]["peak_rss"] / results["b"]["peak_rss"]
    print(f"(a)/(b) time {ratio_ab:.2f}x (target <= 1.3x); (c)/(b) {ratio_cb:.2f}x; "
          f"(a)/(b) peak memory {memory_ab:.2f}x")
    print(f"(a) and (c) updated parameters agree: checksums {results['a']['param_checksum']:.6g}"
          f" vs {results['c']['param_checksum']:.6g}; (d) {results['d']['param_checksum']:.6g}"
          f"; (d)/(a) time {results['d']['seconds'] / results['a']['seconds']:.2f}x, first "
          f"call (compile) {results['d']['first_call_seconds']:.1f} s vs "
          f"{results['a']['first_call_seconds']:.1f} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "setting": {"attributes": K, "pairs": PAIRS, "sequence": LENGTH,
                        "model": "SmolLM2-135M-Instruct float32", "adapter": "r1=r2=4 q,k,v"},
            "results": {labels[m]: r for m, r in results.items()},
            "a_over_b_time": ratio_ab, "c_over_b_time": ratio_cb,
            "a_over_b_peak_memory": memory_ab}, indent=2) + "\n")


if __name__ == "__main__":
    main()
