"""Pv-Arm on SmolLM2-135M-Instruct: one PBLoRA adapter for six attributes, on the offline set.

    make pvarm     # preference-set -> train-arm with and without PCGrad (see README)
    prosocial-jax train-arm --config configs/pvarm_smollm2.py --config.arm.steps=200

Backbone: the bundled SmolLM2 (frozen, float32). Data: `prosocial-jax preference-set`
(SmolLM2's own answers under personas that embody or violate each attribute; the contrast is
the label), cached outside the repo.
Adapter: PBLoRA r1 = r2 = 4, lora_alpha 8, on q/k/v (the paper's reference defaults).
beta = 0.05 instead of 0.01: with 60 training steps on CPU, the margins need a steeper
Bradley-Terry curve to move at all.
Budget (`make demo`'s first run must fit in 30 minutes on a 2-core CPU): the answers are at
most ~30 tokens and the prompts short, so max_len 96 holds every pair; 60 steps of 6 pairs
(harmlessness, the one attribute that has to read the prompt, is still improving at 40); the
held-out accuracy grid (7 preferences) is computed on a seeded sample of 32 dev pairs (one
batch), so its per-attribute accuracies rest on a handful of pairs each.
"""

import os

import ml_collections

CACHE = os.path.join(os.environ.get("PROSOCIAL_JAX_CACHE",
                                    os.path.expanduser("~/.cache/prosocial_jax")), "pvarm")


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "bundled:smollm2"
    config.dtype = "float32"
    config.mesh = ml_collections.FieldReference(None, field_type=str)
    config.train_data = os.path.join(CACHE, "preferences", "train.jsonl")
    config.dev_data = os.path.join(CACHE, "preferences", "dev.jsonl")
    config.format = "native"
    config.out = os.path.join(CACHE, "adapter-pcgrad")
    config.checkpoint_dir = os.path.join(CACHE, "checkpoints-pcgrad")
    config.arm = ml_collections.ConfigDict({
        "steps": 60,
        "batch_size": 6,
        "max_len": 96,
        "learning_rate": 2e-3,
        "warmup_steps": 10,
        "beta": 0.05,
        "dirichlet": 0.5,
        "pcgrad": True,
        # The winner anchor (prosocial_jax/pvarm/objective.py) on the safety attribute only:
        # without it the harmlessness head learns to make each loser unlikely at its first
        # differing token and never makes the refusal its favourite, so the safety stage has
        # no refusal to keep (README, "What the reward learned, token by token").
        "winner_nll": 0.0,
        "winner_nlls": (1.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # per attribute, in the adapter's order
        "checkpoint_every": 30,
        "eval_batch_size": 32,
        "eval_limit": 32,
        "seed": 0,
    })
    config.adapter = ml_collections.ConfigDict({
        "r1": 4,
        "r2": 4,
        "lora_alpha": 8.0,
        "dropout": 0.05,
        "target_modules": ("q_proj", "k_proj", "v_proj"),
        "attributes": ("harmlessness", "empathy", "sensitivity", "non_judgmental",
                       "truthfulness", "helpfulness"),
        "safety_attribute": "harmlessness",
    })
    return config
