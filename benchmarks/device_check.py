"""Device check for a GPU or TPU host: guided decoding of an 8B-shaped base by a 1B-shaped
Pv-Arm, and one Pv-Arm training step, against the device's memory bandwidth measured in the
same run. One summary table at the end; under 8 minutes on one H200.

    .venv/bin/python benchmarks/device_check.py --out benchmarks/results/device_check.json

Weights are random (no download): Llama-3.1-8B and Llama-3.2-1B shapes from their real
config.json files, bfloat16, made on the device. For batch 1, 32 and 128 (64-token prompts,
greedy, w = 1, safety stage on, per-row preferences), the step time is measured from two
decode lengths (the difference cancels prefill and compilation) and set against its bound:
the bytes one step must read (both models' weights, the adapter, both KV caches) over the
bandwidth of a jitted device copy (STREAM convention: bytes read + written over time). The
figure to aim for is bound / step >= 0.6 at batch 1. `--scale tiny` runs the same code on the
test suite's tiny shapes, on any machine (the suite does, on CPU).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import prosocial_jax as pj
from prosocial_jax.models.adapters import AdapterConfig, init_adapter
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import init_params_shapes
from prosocial_jax.pvarm.train import ArmSettings, _ArmObjective
from prosocial_jax.training.loop import initial_state, jit_train_step

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "configs"
SCALES = {  # base config, Pv-Arm backbone config, batches, short/long decode, training batch
    "8b": (FIXTURES / "llama-3.1-8b.json",
           FIXTURES / "llama-3.2-1b-instruct__save_pretrained-5.25.0.json",
           (1, 32, 128), (16, 80), (8, 512)),
    "tiny": (None, None, (2,), (16, 48), (4, 64)),
}
PROMPT = 64


def tiny_config(hidden: int, layers: int) -> ModelConfig:
    return ModelConfig.from_hf_dict({
        "model_type": "llama", "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": 4, "num_key_value_heads": 2,
        "vocab_size": 256, "max_position_embeddings": 512, "rms_norm_eps": 1e-5,
        "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": False})


def random_model(config: ModelConfig, seed: int, dtype=jnp.bfloat16) -> pj.Model:
    """Random weights of `config`'s shapes, made on the default device (no host copy)."""
    shapes = init_params_shapes(config, dtype)
    leaves, treedef = jax.tree.flatten(shapes)

    @jax.jit
    def make(key):
        keys = jax.random.split(key, len(leaves))
        return [(0.02 * jax.random.normal(k, x.shape, jnp.float32)).astype(x.dtype)
                for k, x in zip(keys, leaves)]

    params = jax.tree.unflatten(treedef, make(jax.random.key(seed)))
    return pj.Model(config, params, None, None, f"random {config.model_type}")


def device_bandwidth(gib: float, repeats: int = 5) -> float:
    """Best-of-N copy bandwidth of the default device: 2 x bytes / time of a jitted copy."""
    x = jnp.ones((int(gib * 2**30) // 4,), jnp.float32)
    copy = jax.jit(lambda a: a + 0)  # reads and writes every byte once
    copy(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        copy(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * x.nbytes / best


def nbytes(tree) -> int:
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def random_adapter(config: ModelConfig) -> pj.Adapter:
    adapter = init_adapter(config, AdapterConfig(), jax.random.key(0))
    rng = np.random.RandomState(0)
    return pj.Adapter(adapter.config, jax.tree.map(
        lambda x: jnp.asarray(rng.standard_normal(x.shape) * 0.02, jnp.float32), adapter.params))


def guided_step(base, reward, adapter, batch: int, short: int, long: int) -> dict:
    rng = np.random.RandomState(batch)
    prompts = [rng.randint(3, base.config.vocab_size, PROMPT).tolist() for _ in range(batch)]
    k = adapter.config.num_attributes
    kwargs = dict(adapter=adapter, reward=reward, preferences=rng.dirichlet(np.ones(k), batch),
                  guidance=1.0, safety_margin=3.0, stop_tokens=[], batch_size=batch)

    def run(n: int) -> float:
        start = time.perf_counter()
        pj.generate(base, prompts, max_new_tokens=n, **kwargs)
        return time.perf_counter() - start

    run(short), run(long)  # compile both lengths
    times = {n: statistics.median(run(n) for _ in range(3)) for n in (short, long)}
    step = (times[long] - times[short]) / (long - short)
    c, r = base.config, reward.config
    slots = PROMPT + long
    # KV bytes read per step: every slot of both caches (the Pv-Arm's has 2 rows per prompt).
    kv = batch * slots * 2 * 2 * (c.num_layers * c.num_kv_heads * c.head_dim
                                  + 2 * r.num_layers * r.num_kv_heads * r.head_dim)
    read = nbytes(base.params) + nbytes(reward.params) + nbytes(adapter.params) + kv
    return {"batch": batch, "step_ms": 1e3 * step, "tokens_per_s": batch / step,
            "bytes_per_step": read}


def training_step(backbone: pj.Model, pairs: int, length: int) -> dict:
    adapter_config = AdapterConfig()
    settings = ArmSettings(batch_size=pairs, max_len=length)
    objective = _ArmObjective(backbone.config, adapter_config, settings)
    state = initial_state(objective.optimizer(),
                          init_adapter(backbone.config, adapter_config, jax.random.key(0)).params,
                          jax.random.key(1))
    rng = np.random.RandomState(0)
    response = np.zeros((pairs, 2, length), bool)
    response[:, :, length // 4:] = True
    batch = {"tokens": jnp.asarray(rng.randint(3, backbone.config.vocab_size,
                                               (pairs, 2, length)), jnp.int32),
             "attention": jnp.ones((pairs, 2, length), bool), "response": jnp.asarray(response),
             "labels": jnp.asarray(rng.choice([-1, 1], (pairs, adapter_config.num_attributes)),
                                   jnp.int8)}
    times = []
    for _ in range(4):  # the first compiles
        start = time.perf_counter()
        state, metrics = jit_train_step(state, backbone.params, batch, objective=objective)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - start)
    return {"pairs": pairs, "tokens": length, "step_s": statistics.median(times[1:]),
            "compile_and_first_step_s": times[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", choices=sorted(SCALES), default="8b")
    parser.add_argument("--out", type=Path, help="write the figures here (JSON)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    base_path, reward_path, batches, (short, long), (pairs, length) = SCALES[args.scale]
    base_config = (ModelConfig.from_json_file(base_path) if base_path else tiny_config(64, 4))
    reward_config = (ModelConfig.from_json_file(reward_path) if reward_path
                     else tiny_config(32, 2))
    device = jax.devices()[0]
    bandwidth = device_bandwidth(4.0 if args.scale == "8b" else 0.25)
    base, reward = random_model(base_config, 0), random_model(reward_config, 1)
    adapter = random_adapter(reward_config)
    rows = []
    for batch in batches:
        row = guided_step(base, reward, adapter, batch, short, long)
        row["bound_ms"] = 1e3 * row["bytes_per_step"] / bandwidth
        row["bound_over_step"] = row["bound_ms"] / row["step_ms"]
        rows.append(row)
        print(f"batch {batch}: {row['step_ms']:.2f} ms/step", file=sys.stderr)
    train = training_step(reward, pairs, length)
    results = {"device": f"{device.platform}: {device.device_kind}", "scale": args.scale,
               "jax": jax.__version__, "bandwidth_gb_s": bandwidth / 1e9,
               "base_params": base_config.num_parameters(),
               "reward_params": reward_config.num_parameters(), "guided": rows,
               "pvarm_training": train, "total_s": time.perf_counter() - started}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{results['device']}, copy bandwidth {bandwidth / 1e9:.0f} GB/s; base "
          f"{base_config.num_parameters() / 1e9:.2f}B + Pv-Arm "
          f"{reward_config.num_parameters() / 1e9:.2f}B parameters, bfloat16")
    print(f"{'batch':>6} {'ms/step':>9} {'tokens/s':>10} {'bound ms':>9} {'bound/step':>11}")
    for row in rows:
        print(f"{row['batch']:>6} {row['step_ms']:>9.2f} {row['tokens_per_s']:>10.0f} "
              f"{row['bound_ms']:>9.2f} {row['bound_over_step']:>11.2f}")
    print(f"Pv-Arm training step ({pairs} pairs x {length} tokens, 1B-shaped backbone"
          f"{'' if args.scale == '8b' else ', tiny'}): {train['step_s']:.3f} s; whole check "
          f"{results['total_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
