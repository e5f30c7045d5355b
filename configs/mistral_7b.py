"""Mistral-7B-Instruct-v0.3 guided by a Pv-Arm on itself.

    prosocial-jax generate --config configs/mistral_7b.py:v5e-8 --config.adapter=ADAPTER \\
        --prompts prompts.jsonl --out out.jsonl

After the colon, the platform: v4-16 (TPU v4, 8 chips x 32 GiB), v5e-8 (TPU v5e, 8 chips x 16 GiB),
h100 and h200 (one node of 8 GPUs, 80 / 141 GB). Each picks a mesh, a Pv-Arm layout and a batch
that fit its devices with room to spare (plans below, bfloat16, batch rows of 4096 KV slots, from
`prosocial-jax memory`; the suite checks them and compiles the guided decode step from shapes on 8
CPU devices). No small public model shares Mistral v0.3's 32,768-token vocabulary, so the base is
its own Pv-Arm backbone: one set of weights, two KV caches (config.reward stays unset).

`ADAPTER` is a Pv-Arm adapter trained on the backbone (`prosocial-jax train-arm --model
hf://mistralai/Mistral-7B-Instruct-v0.3 ...`). The hf:// ids need a reachable hub or the hub cache;
offline machines pass `--config.model=/path/to/folder` and `--config.reward=/path/to/folder`.

Per-device memory plans (weights + both KV caches + adapter + logits):
    v4-16  mesh 2x4, Pv-Arm sharded     32 rows:   9.4 GiB of 32
    v5e-8  mesh 1x8, Pv-Arm sharded     32 rows:   7.7 GiB of 16
    h100   mesh 8x1, Pv-Arm sharded     32 rows:  19.5 GiB of 75
    h200   mesh 8x1, Pv-Arm sharded     64 rows:  25.5 GiB of 131
"""

import ml_collections

from prosocial_jax.cli.decoding import platform_config

# platform: (mesh DATAxMODEL, the Pv-Arm backbone's layout, rows per batch)
PLATFORMS = {
    "v4-16": ("2x4", "sharded", 32),
    "v5e-8": ("1x8", "sharded", 32),
    "h100": ("8x1", "sharded", 32),
    "h200": ("8x1", "sharded", 64),
}


def get_config(platform: str = "v4-16") -> ml_collections.ConfigDict:
    return platform_config(platform, PLATFORMS, model="hf://mistralai/Mistral-7B-Instruct-v0.3",
                           reward=None)
