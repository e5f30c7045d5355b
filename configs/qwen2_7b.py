"""Qwen2.5-7B-Instruct in bfloat16 on a data=2 x model=4 mesh.

    prosocial-jax generate --config configs/qwen2_7b.py --prompts prompts.jsonl --out out.jsonl

The hf:// id needs a reachable hub (or the hub cache); or pass a local folder
(`--config.model=/path/to/folder`).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "hf://Qwen/Qwen2.5-7B-Instruct"
    config.dtype = "bfloat16"
    config.mesh = "2x4"
    config.generate = ml_collections.ConfigDict({
        "max_new_tokens": 256,
        "temperature": 0.0,
        "top_k": 0,
        "top_p": 1.0,
        "seed": 0,
        "batch_size": 32,
    })
    return config
