"""Llama-3.1-8B-Instruct guided by a Pv-Arm on Llama-3.2-1B-Instruct (one tokenizer).

    prosocial-jax generate --config configs/llama3_8b.py:v5e-8 --config.adapter=ADAPTER \\
        --prompts prompts.jsonl --out out.jsonl

After the colon, the platform: v4-16 (TPU v4, 8 chips x 32 GiB), v5e-8 (TPU v5e, 8 chips x 16 GiB),
h100 and h200 (one node of 8 GPUs, 80 / 141 GB). Each picks a mesh, a Pv-Arm layout and a batch
that fit its devices with room to spare (plans below, bfloat16, batch rows of 4096 KV slots, from
`prosocial-jax memory`; the suite checks them and compiles the guided decode step from shapes on 8
CPU devices). Where memory allows, the 1B backbone is replicated over "model" (its forward needs no
collective) while the 8B base is sharded over both axes (weak-to-strong).

`ADAPTER` is a Pv-Arm adapter trained on the backbone (`prosocial-jax train-arm --model
hf://meta-llama/Llama-3.2-1B-Instruct ...`). The hf:// ids need a reachable hub or the hub cache;
offline machines pass `--config.model=/path/to/folder` and `--config.reward=/path/to/folder`.

Per-device memory plans (weights + both KV caches + adapter + logits):
    v4-16  mesh 2x4, Pv-Arm replicated  32 rows:  12.1 GiB of 32
    v5e-8  mesh 1x8, Pv-Arm sharded     32 rows:   5.2 GiB of 16
    h100   mesh 8x1, Pv-Arm replicated  32 rows:  20.3 GiB of 75
    h200   mesh 8x1, Pv-Arm replicated  64 rows:  23.3 GiB of 131
"""

import ml_collections

from prosocial_jax.cli.decoding import platform_config

# platform: (mesh DATAxMODEL, the Pv-Arm backbone's layout, rows per batch)
PLATFORMS = {
    "v4-16": ("2x4", "replicated", 32),
    "v5e-8": ("1x8", "sharded", 32),
    "h100": ("8x1", "replicated", 32),
    "h200": ("8x1", "replicated", 64),
}


def get_config(platform: str = "v4-16") -> ml_collections.ConfigDict:
    return platform_config(platform, PLATFORMS, model="hf://meta-llama/Llama-3.1-8B-Instruct",
                           reward="hf://meta-llama/Llama-3.2-1B-Instruct")
