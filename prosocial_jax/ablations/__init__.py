"""Ablations: the questions the paper leaves open, each one command that trains or decodes what
it compares, times it, and writes a table, a plot and the numbers into one report folder.

- `add_value`: a new value added to a trained adapter (one new row of the preference-to-core
  map, the rest frozen) against retraining every attribute: training time and held-out
  accuracy of the new and the old attributes.

Imports the stages it compares (`pvarm`, `decoding`, `evaluation`) and nothing above them.
"""

from prosocial_jax.ablations.add_value import AddValueSettings, add_value

__all__ = ["AddValueSettings", "add_value"]
