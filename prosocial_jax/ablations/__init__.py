"""Ablations: the questions the paper leaves open, each one command that trains or decodes what
it compares, times it, and writes a table, a plot and the numbers into one report folder.

- `add_value`: a new value added to a trained adapter (one new row of the preference-to-core
  map, the rest frozen) against retraining every attribute: training time and held-out
  accuracy of the new and the old attributes.
- `k_scaling`: adapter size, training step (one backward pass vs K) and guided decode step as
  the number of attributes grows, and held-out accuracy where labels exist.

Imports the stages it compares (`pvarm`, `decoding`, `evaluation`) and nothing above them.
"""

from prosocial_jax.ablations.add_value import AddValueSettings, add_value
from prosocial_jax.ablations.k_scaling import KScalingSettings, k_scaling

__all__ = ["AddValueSettings", "KScalingSettings", "add_value", "k_scaling"]
