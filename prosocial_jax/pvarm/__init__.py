"""Pv-Arm: one preference-conditioned reward adapter (PBLoRA) for K attributes at once.

- `preference_set`: the offline demo preference set, a model's own answers under personas that
  embody or violate each attribute; the persona contrast is the label.
- `objective`: the autoregressive reward model's loss (Bradley-Terry per attribute), and the
  K attribute gradients from one backward pass (`per_attribute_gradients`).
- `pcgrad`: PCGrad over the K attribute gradients, as an optax transformation.
- `train`: training with exact resume; the held-out evaluation it records is
  `prosocial_jax.evaluation.preference_accuracy`.

The adapter itself (weights, files) is `prosocial_jax.models.adapters`, so decoding can guide
with it without this stage. Imports `evaluation` (the scorers), `decoding`, `training`, `data`
and `models`; never `direg`, its sibling stage.
"""

# `pcgrad.pcgrad` is also `pj.pcgrad`; it is reached through its module here (a package
# attribute of the same name as a submodule would hide it).
from prosocial_jax.pvarm.objective import attribute_losses, per_attribute_gradients
from prosocial_jax.pvarm.preference_set import PreferenceSetSettings, build_preference_set
from prosocial_jax.pvarm.train import ArmSettings, train_arm

__all__ = ["ArmSettings", "PreferenceSetSettings", "attribute_losses", "build_preference_set",
           "per_attribute_gradients", "train_arm"]
