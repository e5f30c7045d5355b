"""Data: the rows the stages train on and the prompts they are evaluated on.

- `rows`: loading a local JSONL / JSON / Parquet / CSV file or an `hf://` hub data set, with
  clear errors (a missing path is never fetched), and `SkippedRows` for rows left out.
- `sft`: supervised (prompt, response) examples through the chat template, and their batches.
- `preferences`: preference pairs (native rows and the PKU-SafeRLHF, HH-RLHF, UltraFeedback and
  HelpSteer2 converters), tokenised as two `sft` sequences plus per-attribute labels.
- `order`: which examples each training step sees, a pure function of (seed, step).
- `prompts`: the HarmBench and aplomb prompt sets, `EvaluationPrompts`, JSONL prompt files.
- `benchmarks`: the safety benchmarks (HarmBench, AdvBench, HarmfulQA, DangerousQA, CatQA,
  HEx-PHI, XSTest, BeaverTails, PKU-SafeRLHF, aplomb, prosocial) as prompt rows.

Imports only `models` (the tokenizer's chat template, hub references) from this package.
"""

from prosocial_jax.data.benchmarks import BENCHMARKS, load_benchmark
from prosocial_jax.data.preferences import (
    PairExample,
    PreferencePair,
    encode_pairs,
    load_preference_pairs,
)
from prosocial_jax.data.prompts import (
    EvaluationPrompts,
    benign_prompts,
    harmbench_behaviors,
    read_prompt_file,
)
from prosocial_jax.data.rows import DataError, DataFileNotFoundError, SkippedRows, load_rows
from prosocial_jax.data.sft import SFTExample, encode_sft, load_sft

__all__ = ["BENCHMARKS", "DataError", "DataFileNotFoundError", "EvaluationPrompts",
           "PairExample", "PreferencePair", "SFTExample", "SkippedRows", "benign_prompts",
           "encode_pairs", "encode_sft", "harmbench_behaviors", "load_benchmark",
           "load_preference_pairs", "load_rows", "load_sft", "read_prompt_file"]
