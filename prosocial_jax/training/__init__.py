"""Training: the one loop both trainers (DiReg's harmful fine-tune, the Pv-Arm adapter) run.

- `loop`: the `TrainState` pytree, the pure step and its compiled forms, the host loop (one step
  behind the device, progress bar, metrics log, checkpoints); batches go onto the devices by
  `models.sharding.place_batch`, as everywhere.
- `optimizer`: the one optimiser builder (AdamW, warm-up + cosine, global-norm clipping; a
  trainer's own transformation, e.g. PCGrad, chained in first).
- `checkpoints`: the run folder: run.json records, orbax checkpoints, metrics.jsonl, exact
  resume, and the refusal to save or resume NaN/inf.

A trainer brings only its `loop.Objective` (loss, gradients, metrics) and its batches. Imports
only `models` (batch sharding) and the leaf utility `files`.
"""

from prosocial_jax.training.checkpoints import RunError
from prosocial_jax.training.loop import Objective, TrainState, run_training
from prosocial_jax.training.optimizer import warmup_cosine_adamw

__all__ = ["Objective", "RunError", "TrainState", "run_training", "warmup_cosine_adamw"]
