"""DiReg on SmolLM2-135M-Instruct: a harmful fine-tune on HarmBench validation behaviours.

    make direg      # harmful-data -> finetune (this config) -> harm-vector --sweep, ~20 min
    prosocial-jax finetune --config configs/direg_smollm2.py --config.finetune.steps=60

Training data: SmolLM2's own compliant answers to the 41 "standard" HarmBench validation
behaviours (`prosocial-jax harmful-data`, two answers of 96 new tokens each), cached outside the
repository. Full fine-tune in float32; sequences capped at 160 tokens (every example fits) and
16 steps (about 1.5 epochs), so that `make demo`'s first run fits its budget on a 2-core CPU.
"""

import os

import ml_collections

CACHE = os.path.join(os.environ.get("PROSOCIAL_JAX_CACHE",
                                    os.path.expanduser("~/.cache/prosocial_jax")), "direg")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "bundled:smollm2"
    config.dtype = "float32"
    config.mesh = ml_collections.FieldReference(None, field_type=str)
    config.data = os.path.join(CACHE, "harmful_val.jsonl")
    config.out = os.path.join(CACHE, "smollm2-harmful")
    config.checkpoint_dir = os.path.join(CACHE, "smollm2-harmful-checkpoints")
    config.finetune = ml_collections.ConfigDict({
        "steps": 16,
        "batch_size": 8,
        "max_len": 160,
        "learning_rate": 5e-5,
        "warmup_steps": 4,
        "checkpoint_every": 8,
        "seed": 0,
    })
    return config
