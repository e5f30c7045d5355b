"""DiReg: remove harmful behaviour by subtracting a trimmed harm vector from the weights.

The base model is fine-tuned on its own compliant answers to harmful requests; the difference
harmful - base is the harm vector, and the edited model is base - scale * top_k(harm vector).

- `harmful_data`: the base model's compliant answers to HarmBench behaviours, as SFT rows.
- `finetune`, `lora`: supervised fine-tuning (full, or LoRA merged back) -> the harmful model.
- `harm`: the arithmetic on parameter trees (harm vector, selection, exact top-k trim, apply).
- `edit`: the edit of two loaded models, once (`edit`) or for a sweep's grid (`editor`, which
  the command line hands to `prosocial_jax.evaluation.sweeps`).

Imports `evaluation` (the refusal rule), `decoding`, `training`, `data` and `models`; never
`pvarm`, its sibling stage.
"""

# `edit.edit` and `finetune.finetune` are reached through their modules (a package attribute
# of the same name as a submodule would hide it).
from prosocial_jax.direg.edit import EditSettings, editor
from prosocial_jax.direg.finetune import FinetuneSettings
from prosocial_jax.direg.harm import HarmVectorError, apply, task_vector, trim
from prosocial_jax.direg.harmful_data import HarmfulDataSettings, build_harmful_data

__all__ = ["EditSettings", "FinetuneSettings", "HarmVectorError", "HarmfulDataSettings",
           "apply", "build_harmful_data", "editor", "task_vector", "trim"]
