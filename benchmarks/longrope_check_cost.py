"""What Phi-3's longrope crossing check costs a decode step when it is compiled in but not taken.

    .venv/bin/python benchmarks/longrope_check_cost.py --out benchmarks/results/longrope_check.json

A random 30-layer Phi-3 of SmolLM2-135M's shape (`family_overhead.SHAPE`, longrope, partial
rotary 0.75), float32, per-layer layout, decoding 32-token prompts in 256 cache slots: once
with an original length of 4,096 (no row can reach it: no check compiled) and once of 250 (a
row could: every step checks for a crossing, and its recomputation is compiled in, but no row
gets past position 250 in the steps timed). Median per-step time of 8 chunks of 16 steps, at
batch 1 and 16, two interleaved rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from decode_speed import write_results
from family_overhead import SHAPE

ORIGINALS = (4096, 250)  # beyond the 256 slots: no check; inside them: the check compiled
BATCHES = (1, 16)


def step_ms(original: int) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    import prosocial_jax as pj
    from prosocial_jax.decoding import decode, sampling
    from prosocial_jax.models import layers

    pairs = 24  # head_dim 64 x partial 0.75 = 48 rotating dimensions
    config = transformers.Phi3Config(
        **SHAPE, partial_rotary_factor=0.75, original_max_position_embeddings=original,
        rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * pairs,
                      "long_factor": [4.0] * pairs})
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        transformers.AutoModelForCausalLM.from_config(config).save_pretrained(tmp)
        model = pj.load_model(tmp, dtype="float32")
    params = layers.for_forward(model.params, "auto")
    out = {}
    for batch in BATCHES:
        tokens = jnp.full((batch, 32), 7, jnp.int32)
        mask = jnp.ones((batch, 32), bool)
        state = decode.prefill(model.config, params, tokens, mask, jax.random.key(0), 200,
                               max_len=256, num_new=224)
        assert (state.prompt_tokens is not None) == decode.crosses_original(model.config, 256)
        args = (sampling.SamplingParams.create(batch), jnp.asarray([-1], jnp.int32), 0)
        times = []
        for chunk in range(9):  # the first compiles; positions stay below 32 + 9 x 16 = 176
            start = time.perf_counter()
            state, _ = decode.decode_chunk(model.config, params, state, *args, num_steps=16)
            jax.block_until_ready(state.tokens)
            if chunk:
                times.append(1e3 * (time.perf_counter() - start) / 16)
        out[str(batch)] = statistics.median(times)
        print(f"original {original}, batch {batch}: {out[str(batch)]:.1f} ms/step",
              file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    runs = [{original: step_ms(original) for original in ORIGINALS} for _ in range(2)]
    results = {"rounds": runs, "mean_step_ms": {
        f"{'check' if original < 256 else 'no check'}, batch {batch}":
            statistics.mean(run[original][str(batch)] for run in runs)
        for original in ORIGINALS for batch in BATCHES}}
    for name, value in results["mean_step_ms"].items():
        print(f"{name}: {value:.1f} ms/step")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
