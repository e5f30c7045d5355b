"""Llama-3-8B-Instruct in bfloat16 on a data=2 x model=4 mesh (a v4-8/v5e-8 TPU slice or 8 GPUs).

    prosocial-jax generate --config configs/llama3_8b.py --prompts prompts.jsonl --out out.jsonl
    prosocial-jax memory --model-config path/to/Meta-Llama-3-8B-Instruct/config.json --mesh 2x4

The hf:// model id needs a reachable hub (or a local copy in the hub cache); offline machines pass
`--config.model=/path/to/folder`. Memory plan: ~4.0 GiB of weights per device, plus 0.5 GiB of
KV cache per device for batch 8 x 4096 slots.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "hf://meta-llama/Meta-Llama-3-8B-Instruct"
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
