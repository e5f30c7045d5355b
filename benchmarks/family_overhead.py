"""What the newer families' extra work costs per decode step: Qwen3, Gemma 2, Gemma 3 and Phi-3
against Llama of the same size.

    .venv/bin/python benchmarks/family_overhead.py --out benchmarks/results/family_overhead.json

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
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    parser.add_argument("--worker", choices=FAMILIES, help=argparse.SUPPRESS)
    parser.add_argument("--to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.to.write_text(json.dumps(worker(args.worker)))
        return
    runs = {family: json_from_worker(__file__, "--worker", family) for family in FAMILIES}
    results = {"copy_bandwidth_gb_s": copy_bandwidth() / 1e9, "families": {}}
    for family in FAMILIES:
        results["families"][family] = {
            batch: {**runs[family][batch],
                    "over_llama": runs[family][batch]["step_ms"] / runs["llama"][batch]["step_ms"]}
            for batch in runs[family]}
    for family, entry in results["families"].items():
        print(f"{family:7s} " + "; ".join(
            f"batch {b}: {e['step_ms']:.1f} ms/step ({e['over_llama']:.2f}x Llama)"
            for b, e in entry.items()))
    write_results(args.out, results)


if __name__ == "__main__":
    main()
