"""What Phi-3's longrope crossing check costs a decode step.

    .venv/bin/python benchmarks/longrope_check_cost.py --out benchmarks/results/longrope_check.json

A random 30-layer Phi-3 of SmolLM2-135M's shape (`family_overhead.SHAPE`, longrope, partial
rotary 0.75), float32, per-layer layout, decoding 32-token prompts in 256 cache slots, in three
modes:
- "no crossing": an original length of 4,096, which no row can reach (no prompts kept, no check);
- "chunk without a crossing": an original length of 250, which a row could reach, so the state
  keeps the prompts, but the chunk holds no row's crossing step (`decode.crossing_steps`):
  `generate` compiles no check into it;
- "chunk holding a crossing": the same, with the check and the recomputation compiled into
  every step (`refill_chunk`), as `generate` does for the chunks holding a crossing step; no row
  gets past position 250 in the steps timed, so the recomputation itself is never taken.
Median per-step time of 8 chunks of 16 steps, at batch 1 and 16, two interleaved rounds.
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

# (original length, refill_chunk): beyond the 256 slots no row can cross; inside them a row can
MODES = {"no crossing": (4096, None), "chunk without a crossing": (250, None),
         "chunk holding a crossing": (250, 32)}
BATCHES = (1, 16)


def step_ms(mode: str) -> dict[str, float]:
    import jax
    import jax.numpy as jnp
    import torch
    import transformers

    import prosocial_jax as pj
    from prosocial_jax.decoding import decode, sampling
    from prosocial_jax.models import layers

    original, refill_chunk = MODES[mode]
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
            state, _ = decode.decode_chunk(model.config, params, state, *args, num_steps=16,
                                           refill_chunk=refill_chunk)
            jax.block_until_ready(state.tokens)
            if chunk:
                times.append(1e3 * (time.perf_counter() - start) / 16)
        out[str(batch)] = statistics.median(times)
        print(f"{mode}, batch {batch}: {out[str(batch)]:.1f} ms/step", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    runs = [{mode: step_ms(mode) for mode in MODES} for _ in range(2)]
    results = {"rounds": runs, "mean_step_ms": {
        f"{mode}, batch {batch}": statistics.mean(run[mode][str(batch)] for run in runs)
        for mode in MODES for batch in BATCHES}}
    for name, value in results["mean_step_ms"].items():
        print(f"{name}: {value:.1f} ms/step")
    write_results(args.out, results)


if __name__ == "__main__":
    main()
