"""Supervised fine-tuning (full or LoRA merged back), used to build the harmful model for DiReg.

Loss: next-token cross-entropy on response tokens only (prompt and padding masked), i.e. minus
the mean response log-likelihood (`evaluation.likelihood.response_log_probs`). AdamW with linear
warm-up and cosine decay, global-norm clipping (`training.optimizer.warmup_cosine_adamw`).
Optional bfloat16 compute with float32 master weights. Data-parallel over the model's mesh
("data" axis).

The loop, checkpoints and resume are the shared ones (`training.loop.run_training`): the state
(trainable parameters, optimiser state, step) is checkpointed with orbax every
`checkpoint_every` steps, and the data order is a pure function of (seed, step)
(`data.order.batch_indices`), so a run restarted from its last checkpoint follows exactly the
path of an uninterrupted one. A checkpoint folder remembers the settings it was made with and
refuses to resume under different ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prosocial_jax import settings as settings_module
from prosocial_jax.data.order import batch_indices
from prosocial_jax.data.sft import SFTExample, sft_batch
from prosocial_jax.direg import lora
from prosocial_jax.evaluation.likelihood import response_log_probs
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.decoder import forward_logits
from prosocial_jax.models.model import Model, parse_dtype
from prosocial_jax.models.projections import PROJECTIONS
from prosocial_jax.training.checkpoints import fingerprint
from prosocial_jax.training.loop import Objective, initial_state, run_training
from prosocial_jax.training.optimizer import warmup_cosine_adamw


@dataclasses.dataclass(frozen=True)
class FinetuneSettings:
    steps: int = 100
    batch_size: int = 8
    max_len: int = 256
    learning_rate: float = 2e-5
    warmup_steps: int = 10
    end_learning_rate_fraction: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    lora_rank: int = 0  # 0 = full fine-tune
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = tuple(sorted(PROJECTIONS))
    compute_dtype: str = "float32"  # "bfloat16": bf16 forward/backward, float32 master weights
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self):
        settings_module.coerce(self, "finetune settings")
        for name in ("steps", "batch_size", "max_len", "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"finetune settings: {name} must be >= 1, got "
                                 f"{getattr(self, name)}")
        settings_module.positive(self, "finetune settings", "learning_rate", "grad_clip",
                                 "lora_alpha")
        settings_module.positive(self, "finetune settings", "warmup_steps", "weight_decay",
                                 "lora_rank", "end_learning_rate_fraction", allow_zero=True)
        unknown = sorted(set(self.lora_targets) - set(PROJECTIONS))
        if unknown or not self.lora_targets:
            raise ValueError(f"finetune settings: lora_targets {unknown or '[]'} are not "
                             f"projections (choose from {', '.join(sorted(PROJECTIONS))})")
        parse_dtype(self.compute_dtype)


def sft_loss(config: ModelConfig, params, batch: dict[str, jax.Array]
             ) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy over response tokens, and the number of those tokens.

    batch: tokens / attention_mask / loss_mask [B, T] (`data.sft.sft_batch`).
    """
    logits = forward_logits(config, params, batch["tokens"], batch["attention_mask"])
    log_probs_BxT, weights_BxT = response_log_probs(logits, batch["tokens"], batch["loss_mask"])
    count = jnp.sum(weights_BxT)
    return -jnp.sum(log_probs_BxT) / jnp.maximum(count, 1.0), count


@dataclasses.dataclass(frozen=True)
class _SFTObjective(Objective):
    """Next-token cross-entropy of the full model, or of LoRA factors over frozen weights."""

    config: ModelConfig
    settings: FinetuneSettings
    checkpoint_params: ClassVar[str] = "trainable"
    checkpoint_key: ClassVar[str | None] = None  # the fine-tune draws no randomness in a step

    @property
    def lora_scale(self) -> float:
        return self.settings.lora_alpha / max(self.settings.lora_rank, 1)

    def optimizer(self):
        return warmup_cosine_adamw(self.settings)

    def effective_params(self, trainable, frozen):
        """The decoder parameters a step computes with, in the compute dtype."""
        params = (lora.merge_lora(frozen, trainable, self.lora_scale)
                  if self.settings.lora_rank else trainable)
        compute_dtype = parse_dtype(self.settings.compute_dtype)
        return jax.tree.map(lambda x: x.astype(compute_dtype), params)

    def gradients(self, params, frozen, batch, key):
        del key  # the data order is the only randomness

        def loss_fn(trainable):
            return sft_loss(self.config, self.effective_params(trainable, frozen), batch)

        (loss, tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return grads, {}, {"loss": loss, "tokens": tokens,
                           "grad_norm": optax.global_norm(grads)}


def _trainable_and_frozen(model: Model, settings: FinetuneSettings) -> tuple[Any, Any]:
    """(what the optimiser updates, float32; what a step reads but never updates, or None)."""
    if settings.lora_rank:
        # Frozen weights can stay in the compute dtype; only the factors train (float32).
        compute_dtype = parse_dtype(settings.compute_dtype)
        frozen = jax.tree.map(lambda x: x.astype(compute_dtype), model.params)
        return lora.init_lora(model.params, settings.lora_targets, settings.lora_rank,
                              jax.random.key(settings.seed)), frozen
    # A copy even when already float32: the train step donates its state buffers.
    return jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True), model.params), None


def finetune(model: Model, examples: list[SFTExample], settings: FinetuneSettings,
             checkpoint_dir: str | Path, stop_after: int | None = None,
             progress: bool = True,
             restart_on_change: bool = False) -> tuple[Model, list[dict[str, float]]]:
    """Fine-tunes `model` on `examples`, resuming from `checkpoint_dir` if it holds a checkpoint.

    `stop_after` ends this call after that many total steps (the run can be resumed later).
    Returns the fine-tuned model (LoRA merged back, original dtype) and this call's metrics.
    """
    if not examples:
        raise ValueError("no training examples")
    folder = Path(checkpoint_dir).resolve()
    objective = _SFTObjective(model.config, settings)
    trainable, frozen = _trainable_and_frozen(model, settings)
    initial = initial_state(objective.optimizer(), trainable, jax.random.key(settings.seed + 1))
    record = {"settings": dataclasses.asdict(settings), "examples": len(examples),
              "data": fingerprint(a for e in examples for a in (e.input_ids, e.loss_mask)),
              "source": model.source, "dtype": str(model.dtype)}

    def batch_at(step: int, rows: slice) -> dict[str, np.ndarray]:
        indices = batch_indices(len(examples), settings.batch_size, settings.seed, step)
        return sft_batch([examples[i] for i in indices], model.pad_id, settings.max_len, rows)

    state, history = run_training(objective, initial, frozen, batch_at, settings, folder, record,
                                  mesh=model.mesh, stop_after=stop_after, progress=progress,
                                  description="finetune", restart_on_change=restart_on_change)
    params = (lora.merge_lora(model.params, state.params, objective.lora_scale)
              if settings.lora_rank else state.params)
    params = jax.tree.map(lambda x: x.astype(model.dtype), params)
    return dataclasses.replace(model, params=params,
                               source=f"{model.source} + finetune({folder})"), history


def training_examples_summary(examples: list[SFTExample]) -> dict[str, float]:
    """Counts and token lengths of the training examples (printed before a run)."""
    lengths = np.array([len(e.input_ids) for e in examples])
    response = np.array([sum(e.loss_mask) for e in examples])
    return {"examples": len(examples), "mean_tokens": float(lengths.mean()),
            "max_tokens": int(lengths.max()), "mean_response_tokens": float(response.mean())}
