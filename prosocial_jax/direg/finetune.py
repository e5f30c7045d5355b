"""Supervised fine-tuning (full or LoRA merged back), used to build the harmful model for DiReg.

Loss: next-token cross-entropy on response tokens only (prompt and padding masked). AdamW with
linear warm-up and cosine decay, global-norm clipping. Optional bfloat16 compute with float32
master weights. Data-parallel over the model's mesh ("data" axis).

Exact resume: the training state (trainable parameters, optimiser state, step) is checkpointed
with orbax every `checkpoint_every` steps, and the data order is a pure function of (seed, step)
(`data.batch_indices`), so a run restarted from its last checkpoint follows exactly the path of
an uninterrupted one. A checkpoint folder remembers the settings it was made with and refuses to
resume under different ones.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from prosocial_jax import settings as settings_module
from prosocial_jax.data import rows as data
from prosocial_jax.direg import lora
from prosocial_jax.models import sharding
from prosocial_jax.models.decoder import forward_logits
from prosocial_jax.models.model import Model, parse_dtype
from prosocial_jax.training.checkpoints import (
    check_finite,
    fingerprint,
    jit_train_step,
    log_metrics,
    place_on_mesh,
    start_or_resume,
)


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
    lora_targets: tuple[str, ...] = tuple(sorted(lora.PROJECTIONS))
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
        unknown = sorted(set(self.lora_targets) - set(lora.PROJECTIONS))
        if unknown or not self.lora_targets:
            raise ValueError(f"finetune settings: lora_targets {unknown or '[]'} are not "
                             f"projections (choose from {', '.join(sorted(lora.PROJECTIONS))})")
        parse_dtype(self.compute_dtype)


def optimizer(settings: FinetuneSettings) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=settings.learning_rate,
        warmup_steps=settings.warmup_steps,
        decay_steps=max(settings.steps, settings.warmup_steps + 1),  # counts the warm-up too
        end_value=settings.learning_rate * settings.end_learning_rate_fraction)
    return optax.chain(optax.clip_by_global_norm(settings.grad_clip),
                       optax.adamw(schedule, weight_decay=settings.weight_decay))


def sft_loss(config, params, batch) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy over response tokens, and the number of those tokens."""
    logits = forward_logits(config, params, batch["tokens"], batch["attention_mask"])
    targets = batch["tokens"][:, 1:]
    weights = batch["loss_mask"][:, 1:].astype(jnp.float32)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], targets)
    count = jnp.sum(weights)
    return jnp.sum(losses * weights) / jnp.maximum(count, 1.0), count


class _Run:
    """Everything one fine-tuning run needs, built from the model and settings."""

    def __init__(self, model: Model, settings: FinetuneSettings):
        self.model, self.settings = model, settings
        self.compute_dtype = parse_dtype(settings.compute_dtype)
        self.tx = optimizer(settings)
        self.scale = settings.lora_alpha / max(settings.lora_rank, 1)
        if settings.lora_rank:
            # Frozen weights can stay in the compute dtype; only the factors train (float32).
            self.frozen = jax.tree.map(lambda x: x.astype(self.compute_dtype), model.params)
            trainable = lora.init(model.params, settings.lora_targets, settings.lora_rank,
                                  jax.random.key(settings.seed))
        else:
            self.frozen = None
            # A copy even when already float32: the train step donates its state buffers.
            trainable = jax.tree.map(lambda x: jnp.array(x, jnp.float32, copy=True),
                                     model.params)
        self.initial = {"trainable": trainable, "opt_state": self.tx.init(trainable),
                        "step": jnp.zeros((), jnp.int32)}
        self.initial = place_on_mesh(self.initial, model.mesh)
        self.train_step = jit_train_step(self._train_step, self.initial, model.mesh)

    def effective_params(self, trainable, frozen):
        params = lora.merge(frozen, trainable, self.scale) if self.settings.lora_rank \
            else trainable
        return jax.tree.map(lambda x: x.astype(self.compute_dtype), params)

    def _train_step(self, state, frozen, batch):
        def loss_fn(trainable):
            return sft_loss(self.model.config, self.effective_params(trainable, frozen), batch)

        (loss, tokens), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["trainable"])
        updates, opt_state = self.tx.update(grads, state["opt_state"], state["trainable"])
        trainable = optax.apply_updates(state["trainable"], updates)
        new_state = {"trainable": trainable, "opt_state": opt_state, "step": state["step"] + 1}
        # Read on the host before the state is saved: non-finite weights are never saved.
        finite = jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), trainable)
        return new_state, {"loss": loss, "tokens": tokens, "grad_norm": optax.global_norm(grads),
                           "finite": finite}

    def final_params(self, trainable):
        dtype = self.model.dtype
        params = (lora.merge(self.model.params, trainable, self.scale) if self.settings.lora_rank
                  else trainable)
        return jax.tree.map(lambda x: x.astype(dtype), params)


def finetune(model: Model, examples: list[data.SFTExample], settings: FinetuneSettings,
             checkpoint_dir: str | Path, stop_after: int | None = None,
             progress: bool = True) -> tuple[Model, list[dict[str, float]]]:
    """Fine-tunes `model` on `examples`, resuming from `checkpoint_dir` if it holds a checkpoint.

    `stop_after` ends this call after that many total steps (the run can be resumed later).
    Returns the fine-tuned model (LoRA merged back, original dtype) and this call's metrics.
    """
    if not examples:
        raise ValueError("no training examples")
    folder = Path(checkpoint_dir).resolve()
    run = _Run(model, settings)
    record = {"settings": dataclasses.asdict(settings), "examples": len(examples),
              "data": fingerprint(a for e in examples for a in (e.input_ids, e.loss_mask)),
              "source": model.source, "dtype": str(model.dtype)}
    manager, state, start = start_or_resume(folder, record, run.initial,
                                            settings.keep_checkpoints, settings.checkpoint_every,
                                            settings.steps, model.mesh)
    last = min(settings.steps, stop_after if stop_after is not None else settings.steps)
    pad_id = model.pad_id
    history = []
    bar = tqdm(total=settings.steps, initial=start, desc="finetune", unit="step",
               disable=not progress)
    for step in range(start, last):
        indices = data.batch_indices(len(examples), settings.batch_size, settings.seed, step)
        batch = data.sft_batch([examples[i] for i in indices], pad_id, settings.max_len)
        if model.mesh is not None:
            batch = {k: jax.device_put(v, sharding.batch_sharding(model.mesh, v.shape))
                     for k, v in batch.items()}
        state, metrics = run.train_step(state, run.frozen, batch)
        metrics = jax.tree.map(np.asarray, metrics)
        check_finite(metrics, step + 1, manager.latest_step(), folder)
        record = {"step": step + 1, **{k: float(v) for k, v in metrics.items() if k != "finite"}}
        history.append(record)
        log_metrics(folder, record)
        manager.save(step + 1, args=ocp.args.StandardSave(state),
                     force=(step + 1 == settings.steps))
        bar.set_postfix(loss=f"{record['loss']:.3f}")
        bar.update(1)
    bar.close()
    manager.wait_until_finished()
    tuned = dataclasses.replace(model, params=run.final_params(state["trainable"]),
                                source=f"{model.source} + finetune({folder})")
    return tuned, history


def training_examples_summary(examples: list[data.SFTExample]) -> dict[str, float]:
    lengths = np.array([len(e.input_ids) for e in examples])
    response = np.array([sum(e.loss_mask) for e in examples])
    return {"examples": len(examples), "mean_tokens": float(lengths.mean()),
            "max_tokens": int(lengths.max()), "mean_response_tokens": float(response.mean())}
