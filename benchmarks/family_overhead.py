"""What the newer families' extra work costs per decode step: Qwen3, Gemma 2, Gemma 3 and Phi-3
against Llama of the same size.

    .venv/bin/python benchmarks/family_overhead.py --rounds 3 --profile \
        --out benchmarks/results/family_overhead.json

Each family as a random 30-layer model of SmolLM2-135M's shape (hidden 576, 9 query heads of
64, 3 key/value heads, MLP 1536, vocabulary 49,152), built with transformers from a config,
saved, and loaded like any checkpoint (float32). What each adds over Llama: Qwen3 a per-head
RMSNorm of queries and keys; Gemma 2 two more norms per layer, attention and final-logit
soft-capping, and local layers (window 4,096, longer than these contexts, so the same
attention work); Gemma 3 the q/k norms, the extra norms and two rotary tables; Phi-3 a partial
rotary, longrope tables (its projections are split at load time, so it runs Llama's products).
Decode step from the time difference between 96 and 32 new tokens, medians of 3, at batch 1
and 16, each family in its own process; the per-layer layout (the CPU default). Target: at
most 10% over Llama's step.

`--rounds N` measures every family N times, round by round (each round all five families), and
reports each family's median ratio to Llama's step of the same round: this VM's step times
drift by +-15% between runs, as much as the differences measured. `--profile` adds XLA's trace
of each family's batch-1 steps (`decode_profile.profile`): the time of every operation, summed
by the weight it reads and, for the rest, by the model module that produced it, so that the
extra work of a family (its norms, soft-caps, rotary tables) is timed directly, apart from the
noise of the whole step.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
from decode_speed import copy_bandwidth, decode_stats, json_from_worker, write_results

FAMILIES = ("llama", "qwen3", "gemma2", "gemma3", "phi3")
BATCHES = (1, 16)
SHAPE = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
             num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
             max_position_embeddings=8192, tie_word_embeddings=True)


def hf_config(family: str):
    import transformers

    if family == "llama":
        return transformers.LlamaConfig(**SHAPE, head_dim=64)
    if family == "qwen3":
        return transformers.Qwen3Config(**SHAPE, head_dim=64)
    if family == "gemma2":
        return transformers.Gemma2Config(**SHAPE, head_dim=64, query_pre_attn_scalar=64)
    if family == "gemma3":
        return transformers.Gemma3TextConfig(**SHAPE, head_dim=64, query_pre_attn_scalar=64)
    if family == "phi3":
        pairs = 24  # head_dim 64 x partial 0.75 = 48 rotating dimensions
        return transformers.Phi3Config(
            **SHAPE, partial_rotary_factor=0.75, original_max_position_embeddings=4096,
            rope_scaling={"rope_type": "longrope", "short_factor": [1.0] * pairs,
                          "long_factor": [4.0] * pairs})
    raise ValueError(family)


def worker(family: str) -> dict:
    import torch
    import transformers

    import prosocial_jax as pj

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        transformers.AutoModelForCausalLM.from_config(hf_config(family)).save_pretrained(tmp)
        model = pj.load_model(tmp, dtype="float32")
    prompts = [[7 + i] * 24 for i in range(max(BATCHES))]  # token ids, same for every family
    out = {}
    for batch in BATCHES:
        def run(n, rows=prompts[:batch]):
            import time
            start = time.perf_counter()
            results = pj.generate(model, rows, max_new_tokens=n, batch_size=len(rows),
                                  stop_tokens=[], use_chat_template=False)
            return time.perf_counter() - start, [r.tokens for r in results]
        out[str(batch)], _ = decode_stats(run)
        print(f"{family} batch {batch}: {out[str(batch)]['step_ms']:.1f} ms/step",
              file=sys.stderr)
    return out


def profile_worker(family: str) -> dict:
    """XLA's trace of the family's batch-1 decode steps (`decode_profile.profile`): where its
    step's time goes, operation by operation, grouped by weight and by model module."""
    import torch
    import transformers
    from decode_profile import profile

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        transformers.AutoModelForCausalLM.from_config(hf_config(family)).save_pretrained(tmp)
        return profile(1, copy_bandwidth(), tmp, prompts=[[7] * 24])


def print_profiles(profiles: dict[str, dict]) -> None:
    """Each family's traced batch-1 step by kind of operation, and the modules whose other
    operations cost more than Llama's by 0.02 ms or more."""
    llama = profiles["llama"]
    for family, entry in profiles.items():
        kinds = "; ".join(f"{kind.removeprefix('weight product: ')} {v['ms']:.2f} ms "
                          f"({v['ops']:.0f} ops)" for kind, v in entry["per_step"].items())
        print(f"{family:7s} traced step {entry['step_ms']:.1f} ms: {kinds}")
        extra = {module: ms - llama["other_by_module_ms"].get(module, 0.0)
                 for module, ms in entry["other_by_module_ms"].items()}
        print("        other ops over Llama's: " + ", ".join(
            f"{m} +{ms:.2f} ms" for m, ms in sorted(extra.items(), key=lambda kv: -kv[1])
            if ms >= 0.02))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--profile", action="store_true",
                        help="also trace each family's batch-1 step (decode_profile.py)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure every family this many times, interleaved (medians)")
    parser.add_argument("--worker", choices=FAMILIES, help=argparse.SUPPRESS)
    parser.add_argument("--profile-worker", choices=FAMILIES, help=argparse.SUPPRESS)
    parser.add_argument("--to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.to.write_text(json.dumps(worker(args.worker)))
        return
    if args.profile_worker:
        args.to.write_text(json.dumps(profile_worker(args.profile_worker)))
        return
    # Round by round, every family once: a drift of the machine's speed during the run then
    # falls on every family alike, and each family is compared with Llama's step of its round.
    rounds = [{family: json_from_worker(__file__, "--worker", family) for family in FAMILIES}
              for _ in range(args.rounds)]
    results = {"copy_bandwidth_gb_s": copy_bandwidth() / 1e9, "rounds": args.rounds,
               "families": {}}
    for family in FAMILIES:
        results["families"][family] = {}
        for batch in rounds[0][family]:
            steps = [run[family][batch]["step_ms"] for run in rounds]
            ratios = [run[family][batch]["step_ms"] / run["llama"][batch]["step_ms"]
                      for run in rounds]
            results["families"][family][batch] = {
                "step_ms": float(np.median(steps)), "over_llama": float(np.median(ratios)),
                "over_llama_by_round": ratios, "step_ms_by_round": steps,
                "runs": [run[family][batch] for run in rounds]}
    for family, entry in results["families"].items():
        print(f"{family:7s} " + "; ".join(
            f"batch {b}: {e['step_ms']:.1f} ms/step ({e['over_llama']:.2f}x Llama; rounds "
            + ", ".join(f"{r:.2f}" for r in e["over_llama_by_round"]) + ")"
            for b, e in entry.items()))
    if args.profile:
        results["profiles"] = {family: json_from_worker(__file__, "--profile-worker", family)
                               for family in FAMILIES}
        print_profiles(results["profiles"])
    write_results(args.out, results)


if __name__ == "__main__":
    main()
