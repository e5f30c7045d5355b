"""The multi-turn ablation on SmolLM2-135M-Instruct, with the demo's models and guidance
(configs/demo_smollm2.py: the DiReg-edited SmolLM2, the PCGrad Pv-Arm, w = 1, tau = 0.1,
no-repeat n = 4).

    make ablation-multi-turn
    prosocial-jax ablate-multi-turn --config configs/ablation_multi_turn_smollm2.py \
        --out out/ablations/multi_turn

Prompt set: the first 30 "standard" HarmBench test behaviours and the preference set's 14
benign test prompts, each alone and after an opener (plain openers from aplomb, emotional ones
from the preference set's prosocial test prompts), the opener answered by the base model in up
to 64 tokens; 48 new tokens for the final answer.
"""

import os

import ml_collections

CACHE = os.environ.get("PROSOCIAL_JAX_CACHE", os.path.expanduser("~/.cache/prosocial_jax"))


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.base = "bundled:smollm2"
    config.direg = os.path.join(CACHE, "pipeline", "smollm2-direg")
    config.adapter = os.path.join(CACHE, "pvarm", "adapter-pcgrad")
    config.reward = ml_collections.FieldReference(None, field_type=str)  # None: the base
    config.benign_from = os.path.join(CACHE, "pvarm", "preferences", "test_prompts.jsonl")
    config.ablation = ml_collections.ConfigDict({
        "harmful": 30, "benign": 14, "opener_tokens": 64, "max_new_tokens": 48,
        "guidance": 1.0, "safety_margin": 0.1, "no_repeat_ngram": 4, "batch_size": 32})
    return config
