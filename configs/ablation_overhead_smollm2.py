"""The overhead ablation on SmolLM2-135M-Instruct: plain decoding, the demo's Pv-Arm with and
without the safety stage, multi-ARM (one adapter per attribute, six, each run every step) and
best-of-4 / best-of-16 reranking by the Pv-Arm.

    make ablation-overhead
    prosocial-jax ablate-overhead --config configs/ablation_overhead_smollm2.py \
        --out out/ablations/overhead

Timing: batch 1 and 16, prompts of 256 and 2,048 tokens, 32 new tokens, float32, each cell in a
fresh process (its peak memory). Quality: 30 held-out HarmBench test behaviours and the first 30
of the preference set's test prompts, 48 new tokens, the demo's guidance (w = 1, tau = 0.1,
no-repeat n = 4), judged by the rule judge. Multi-ARM is judged with the six single-attribute
adapters the conflict-mitigation ablation trains (`make ablation-overhead` passes
--config.arms=<cache>/pvarm/arms and runs that ablation first if they are missing); without
`arms` its members are untrained, and multi-ARM is timed, not judged.
"""

import os

import ml_collections

CACHE = os.environ.get("PROSOCIAL_JAX_CACHE", os.path.expanduser("~/.cache/prosocial_jax"))


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "bundled:smollm2"
    config.adapter = os.path.join(CACHE, "pvarm", "adapter-pcgrad")
    config.reward = ml_collections.FieldReference(None, field_type=str)  # None: the model
    config.arms = ml_collections.FieldReference(None, field_type=str)  # None: untrained
    config.dtype = "float32"
    config.benign_from = os.path.join(CACHE, "pvarm", "preferences", "test_prompts.jsonl")
    config.ablation = ml_collections.ConfigDict({
        "methods": ("plain", "Pv-Arm + safety", "Pv-Arm", "multi-ARM", "best-of-4",
                    "best-of-16"),
        "batches": (1, 16),
        "contexts": (256, 2048),
        "new_tokens": 32,
        "guidance": 1.0,
        "safety_margin": 0.1,
        "no_repeat_ngram": 4,
        "harmful_limit": 30,
        "benign_limit": 30,
        "max_new_tokens": 48,
    })
    return config
