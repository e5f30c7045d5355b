"""A preference sweep in one batched decode against one `generate` call per preference.

    .venv/bin/python benchmarks/sweep_speed.py --out benchmarks/results/sweep_speed.json

SmolLM2-135M-Instruct float32 as base and as Pv-Arm backbone (two copies of the weights), a
random PBLoRA adapter, K = 6 attributes: the 21 preferences of the step-0.5 simplex lattice x
16 chat prompts, 48 new tokens, greedy, no early stop, guidance w = 1, safety stage on
(tau = 3). Two ways in one process:

- separate: 21 `pj.generate` calls, one per preference, each decoding the 16 prompts as one
  batch (what a user without `sweep` runs);
- sweep: one `pj.sweep` call, the 336 rows in batches of `sweep_batch_size` (or --batch-sizes),
  each prompt prefilled once per batch for the base model and the safety rows.

Each is timed twice: the first run includes compiling, the second does not. The rows' tokens
are compared one by one. Peak resident memory is read after each part.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from decode_speed import chat_prompts, copy_bandwidth, peak_memory_gb, write_results, xla_limits
from guided_decode_speed import random_adapter

PROMPTS, NEW_TOKENS, STEP, WEIGHT, TAU = 16, 48, 0.5, 1.0, 3.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--batch-sizes", default="auto",
                        help="sweep rows per batch, comma-separated (auto: sweep_batch_size)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    import prosocial_jax as pj
    from prosocial_jax.decoding.sweep import simplex_grid, sweep, sweep_batch_size
    from prosocial_jax.models.tokenizer import encode_prompt

    base = pj.load_model("bundled:smollm2", dtype="float32")
    reward = pj.load_model("bundled:smollm2", dtype="float32")  # its own copy of the weights
    adapter = random_adapter(reward)
    prompts = chat_prompts(PROMPTS)
    grid = simplex_grid(adapter.config.attributes, STEP, centre=False)
    common = dict(reward=reward, max_new_tokens=NEW_TOKENS, stop_tokens=[], guidance=WEIGHT,
                  safety_margin=TAU)
    longest = max(len(encode_prompt(base.tokenizer, p)) for p in prompts)
    results: dict = {"prompts": PROMPTS, "preferences": len(grid), "new_tokens": NEW_TOKENS,
                     "rows": PROMPTS * len(grid), "copy_bandwidth_gb_s": copy_bandwidth() / 1e9,
                     **xla_limits(), "longest_prompt_tokens": longest,
                     # Products per new token of a row: every weight of the base and of the
                     # Pv-Arm backbone (its prosocial and safety rows) once, 2 FLOPs each.
                     "flops_per_row_token": 2 * (_parameters(base) + 2 * _parameters(reward))}
    print(f"{PROMPTS} prompts x {len(grid)} preferences, {NEW_TOKENS} new tokens",
          file=sys.stderr)

    separate_runs = []
    for run in range(2):
        start, tokens = time.perf_counter(), []
        for point in grid:
            out = pj.generate(base, prompts, adapter=adapter, preference=point,
                              batch_size=PROMPTS, **common)
            tokens.append([r.tokens for r in out])
        separate_runs.append(time.perf_counter() - start)
        print(f"separate, run {run + 1}: {separate_runs[-1]:.1f} s", file=sys.stderr)
    separate_tokens = [[tokens[g][p] for g in range(len(grid))] for p in range(PROMPTS)]
    total_flops = results["flops_per_row_token"] * results["rows"] * NEW_TOKENS
    results["separate"] = {"first_s": separate_runs[0], "second_s": separate_runs[1],
                           "gflop_s": total_flops / separate_runs[1] / 1e9,
                           "peak_rss_gb": peak_memory_gb()}

    results["fitting_batch_size"] = sweep_batch_size(base, reward, longest, NEW_TOKENS)
    sizes = [None] if args.batch_sizes == "auto" else [int(b) for b in args.batch_sizes.split(",")]
    results["sweep"] = {}
    for size in sizes:
        runs = []
        for run in range(2):
            start = time.perf_counter()
            swept = sweep(base, prompts, adapter, grid, batch_size=size, **common)
            runs.append(time.perf_counter() - start)
            print(f"sweep, batches of {size or 'auto'}, run {run + 1}: {runs[-1]:.1f} s",
                  file=sys.stderr)
        same = sum(r.tokens == t for answers, expected in zip(swept, separate_tokens)
                   for r, t in zip(answers, expected))
        total_flops = results["flops_per_row_token"] * results["rows"] * NEW_TOKENS
        results["sweep"][str(size or "auto")] = {
            "first_s": runs[0], "second_s": runs[1], "identical_rows": same,
            "gflop_s": total_flops / runs[1] / 1e9,
            "speedup_first": separate_runs[0] / runs[0],
            "speedup_second": separate_runs[1] / runs[1], "peak_rss_gb": peak_memory_gb()}
    write_results(args.out, results)
    report(results)


def _parameters(model) -> int:
    import jax

    return sum(x.size for x in jax.tree.leaves(model.params))


def report(results: dict) -> None:
    separate = results["separate"]
    gemm = results["xla_gemm_f32_gflop_s"]
    print(f"\ncopy bandwidth {results['copy_bandwidth_gb_s']:.1f} GB/s, XLA float32 GEMM "
          f"{gemm:.0f} GFLOP/s; {results['rows']} rows ({results['prompts']} prompts x "
          f"{results['preferences']} preferences), {results['new_tokens']} new tokens; rows "
          f"that fit in memory: {results['fitting_batch_size']}")
    print("| | first run (with compiling) | second run | speed-up (first / second) | products "
          "(second run) | identical rows | peak RSS so far |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {results['preferences']} generate calls of {results['prompts']} rows | "
          f"{separate['first_s']:.1f} s | {separate['second_s']:.1f} s | 1 | "
          f"{separate['gflop_s']:.0f} GFLOP/s ({separate['gflop_s'] / gemm:.0%} of GEMM) | | "
          f"{separate['peak_rss_gb']:.2f} GB |")
    for size, row in results["sweep"].items():
        print(f"| one sweep, batches of {size} | {row['first_s']:.1f} s | {row['second_s']:.1f} s "
              f"| **{row['speedup_first']:.2f}x** / **{row['speedup_second']:.2f}x** | "
              f"{row['gflop_s']:.0f} GFLOP/s ({row['gflop_s'] / gemm:.0%}) | "
              f"{row['identical_rows']} / {results['rows']} | {row['peak_rss_gb']:.2f} GB |")
    tokens = results["rows"] * results["new_tokens"]
    best = min(r["second_s"] for r in results["sweep"].values())
    print(f"\nsweep: {tokens / best:.0f} tokens/s; separate: "
          f"{tokens / separate['second_s']:.0f} tokens/s (second runs)")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
