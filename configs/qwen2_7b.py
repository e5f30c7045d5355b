"""Qwen2.5-7B-Instruct guided by a Pv-Arm on Qwen2.5-0.5B-Instruct (one tokenizer).

    prosocial-jax generate --config configs/qwen2_7b.py:v5e-8 --config.adapter=ADAPTER \\
        --prompts prompts.jsonl --out out.jsonl

After the colon, the platform: v4-16 (TPU v4, 8 chips x 32 GiB), v5e-8 (TPU v5e, 8 chips x 16 GiB),
h100 and h200 (one node of 8 GPUs, 80 / 141 GB). Each picks a mesh, a Pv-Arm layout and a batch
that fit its devices with room to spare (plans below, bfloat16, batch rows of 4096 KV slots, from
`prosocial-jax memory`; the suite checks them and compiles the guided decode step from shapes on 8
CPU devices). Qwen2.5-7B has 28 attention heads: a "model" axis of 8 cannot split them, so no mesh
here uses one. The 0.5B backbone is replicated over "model" (weak-to-strong); the two vocabularies
differ in padding only (152,064 vs 151,936 rows), and guidance runs over the shared 151,936.

`ADAPTER` is a Pv-Arm adapter trained on the backbone (`prosocial-jax train-arm --model
hf://Qwen/Qwen2.5-0.5B-Instruct ...`). The hf:// ids need a reachable hub or the hub cache; offline
machines pass `--config.model=/path/to/folder` and `--config.reward=/path/to/folder`.

Per-device memory plans (weights + both KV caches + adapter + logits):
    v4-16  mesh 2x4, Pv-Arm replicated  32 rows:   6.9 GiB of 32
    v5e-8  mesh 2x4, Pv-Arm replicated  32 rows:   6.9 GiB of 16
    h100   mesh 8x1, Pv-Arm replicated  32 rows:  16.4 GiB of 75
    h200   mesh 8x1, Pv-Arm replicated  64 rows:  17.6 GiB of 131
"""

import ml_collections

from prosocial_jax.cli.decoding import platform_config

# platform: (mesh DATAxMODEL, the Pv-Arm backbone's layout, rows per batch)
PLATFORMS = {
    "v4-16": ("2x4", "replicated", 32),
    "v5e-8": ("2x4", "replicated", 32),
    "h100": ("8x1", "replicated", 32),
    "h200": ("8x1", "replicated", 64),
}


def get_config(platform: str = "v4-16") -> ml_collections.ConfigDict:
    return platform_config(platform, PLATFORMS, model="hf://Qwen/Qwen2.5-7B-Instruct",
                           reward="hf://Qwen/Qwen2.5-0.5B-Instruct")
