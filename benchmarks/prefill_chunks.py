"""Prefill of one long prompt by chunk length and attention key block, on SmolLM2-135M.

    .venv/bin/python benchmarks/prefill_chunks.py --out benchmarks/results/prefill_chunks.json

SmolLM2-135M-Instruct float32, one prompt of 2,048 and of 8,192 random tokens, per-layer layout
(the CPU default): the time of `decode.prefill` (after a warm-up call, which compiles) with
chunks of 256, 512, 1,024 and 2,048 tokens (2,048 at 2,048 tokens is one pass, no cache), and at
chunks of 512 with key blocks (`decoder.KEY_BLOCK`) of 256, 512 and 1,024 slots. It is how
decode.PREFILL_CHUNK and decoder.KEY_BLOCK were chosen; `benchmarks/decode_speed.py` compares
the chosen setting with transformers and with one pass at 8,192 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from decode_speed import write_results

SETTINGS = [(2048, chunk, 512) for chunk in (256, 512, 1024, 2048)] + [
    (8192, chunk, 512) for chunk in (256, 512, 1024)] + [
    (context, 512, block) for context in (2048, 8192) for block in (256, 1024)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import jax
    import jax.numpy as jnp

    import prosocial_jax as pj
    from prosocial_jax.decoding import decode
    from prosocial_jax.models import decoder, layers

    model = pj.load_model("bundled:smollm2", dtype="float32")
    params = layers.for_forward(model.params, "auto")
    key = jax.random.key(0)
    runs = []
    for context, chunk, block in SETTINGS:
        decoder.KEY_BLOCK = block  # read when the prefill is traced
        jax.clear_caches()
        prompt_len, chunk = decode.prefill_chunks(context, chunk)
        tokens = np.random.default_rng(context).integers(100, model.config.vocab_size - 100,
                                                         (1, prompt_len))
        tokens, mask = jnp.asarray(tokens, jnp.int32), jnp.ones((1, prompt_len), bool)

        def prefill(chunk=chunk, tokens=tokens, mask=mask, prompt_len=prompt_len):
            state = decode.prefill(model.config, params, tokens, mask, key, 16,
                                   max_len=prompt_len + 16, num_new=16, chunk=chunk)
            return jax.block_until_ready(state.logits)

        prefill()
        start = time.perf_counter()
        prefill()
        seconds = time.perf_counter() - start
        runs.append({"context": context, "chunk": chunk, "key_block": block,
                     "one_pass": chunk == prompt_len, "prefill_s": seconds,
                     "tokens_per_s": context / seconds})
        print(f"{context} tokens, chunks of {chunk}{' (one pass)' if chunk == prompt_len else ''}"
              f", key blocks of {block}: {seconds:.2f} s", file=sys.stderr)
    results = {"model": "SmolLM2-135M-Instruct float32, one prompt, per-layer layout",
               "cpus": os.cpu_count(), "runs": runs}
    print(json.dumps(results, indent=2))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
