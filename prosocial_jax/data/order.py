"""Which examples each training step sees: a pure function of (seed, step).

Fine-tuning and Pv-Arm training both draw their batches here, so a run resumed from a checkpoint
at step s sees exactly the examples an uninterrupted run would have seen from step s on.
"""

from __future__ import annotations

import numpy as np


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: a pure function of (seed, epoch), so resumes are exact."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Example indices of training step `step` (batches run on across epoch boundaries)."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = np.divmod(positions, num_examples)
    orders = {e: epoch_order(num_examples, seed, int(e)) for e in np.unique(epochs)}
    return np.array([orders[e][o] for e, o in zip(epochs, offsets)])
