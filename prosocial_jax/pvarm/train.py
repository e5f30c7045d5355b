"""Pv-Arm training: one PBLoRA adapter on a frozen backbone for K attributes at once.

Each step draws alpha ~ Dirichlet(p * 1_K), computes the K attribute gradients with respect to
the adapter from one backward pass (`pcgrad.per_attribute_gradients`), resolves conflicts with
PCGrad and applies sum_i alpha_i g_i^PC through AdamW with warm-up and cosine decay (all one
optax chain). Data-parallel over the backbone's mesh ("data" axis; the backbone may also be
sharded over "model"). Sequence lengths are bucketed, so few shapes compile.

Exact resume: orbax checkpoints hold the adapter, the optimiser state (PCGrad's key included),
the step and the run's RNG key; batches and alpha are pure functions of (seed, step). A
checkpoint folder refuses to resume under different settings.

Evaluation uses a FIXED simplex grid of preferences (never random alphas): per grid point, the
pairwise accuracy per attribute on held-out pairs.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from prosocial_jax import settings as settings_module
from prosocial_jax.data import rows as data
from prosocial_jax.models import adapters as pblora
from prosocial_jax.models import sharding
from prosocial_jax.models.model import Model
from prosocial_jax.pvarm import objective as reward
from prosocial_jax.pvarm.pcgrad import pcgrad, per_attribute_gradients
from prosocial_jax.training.checkpoints import (
    check_finite,
    fingerprint,
    jit_train_step,
    log_metrics,
    place_on_mesh,
    start_or_resume,
)


@dataclasses.dataclass(frozen=True)
class ArmSettings:
    steps: int = 100
    batch_size: int = 8  # preference pairs per step
    max_len: int = 256
    learning_rate: float = 5e-4
    warmup_steps: int = 10
    end_learning_rate_fraction: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 0.0  # global-norm clipping of the combined update; 0 = off
    beta: float = 0.01  # Bradley-Terry beta, the same for every attribute unless `betas` is set
    betas: tuple[float, ...] = ()
    dirichlet: float = 0.5  # alpha ~ Dirichlet(dirichlet * 1_K)
    pcgrad: bool = True  # False: the plain preference-weighted sum (ablation)
    eval_resolution: int = 1  # simplex grid step 1/resolution (1: the K vertices), + uniform
    eval_batch_size: int = 16
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    seed: int = 0

    def __post_init__(self):
        settings_module.coerce(self, "arm settings")
        for name in ("steps", "batch_size", "max_len", "checkpoint_every", "eval_resolution",
                     "eval_batch_size", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"arm settings: {name} must be >= 1, got "
                                 f"{getattr(self, name)}")
        # A beta <= 0 would silently flip or erase the Bradley-Terry objective.
        settings_module.positive(self, "arm settings", "learning_rate", "dirichlet", "beta",
                                 "betas")
        settings_module.positive(self, "arm settings", "warmup_steps", "weight_decay",
                                 "grad_clip", "end_learning_rate_fraction", allow_zero=True)

    def beta_vector(self, num_attributes: int) -> np.ndarray:
        if self.betas and len(self.betas) != num_attributes:
            raise ValueError(f"betas has {len(self.betas)} entries for {num_attributes} "
                             "attributes")
        return np.asarray(self.betas or [self.beta] * num_attributes, np.float32)


def simplex_grid(num_attributes: int, resolution: int = 1) -> np.ndarray:
    """Every alpha with entries in {0, 1/n, ..., 1} summing to 1, plus the uniform vector."""
    points = [np.array(c, np.float32) / resolution
              for c in itertools.product(range(resolution + 1), repeat=num_attributes)
              if sum(c) == resolution]
    points.sort(key=lambda p: tuple(-p))
    uniform = np.full(num_attributes, 1.0 / num_attributes, np.float32)
    if not any(np.allclose(p, uniform) for p in points):
        points.append(uniform)
    return np.stack(points)


def grid_names(grid: np.ndarray, attributes: Sequence[str]) -> list[str]:
    names = []
    for point in grid:
        if np.isclose(point.max(), 1.0):
            names.append(attributes[int(point.argmax())])
        elif np.allclose(point, point[0]):
            names.append("uniform")
        else:
            names.append(",".join(f"{a}={w:g}" for a, w in zip(attributes, point) if w))
    return names


def optimizer(settings: ArmSettings, num_attributes: int) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=settings.learning_rate, warmup_steps=settings.warmup_steps,
        decay_steps=max(settings.steps, settings.warmup_steps + 1),
        end_value=settings.learning_rate * settings.end_learning_rate_fraction)
    clip = (optax.clip_by_global_norm(settings.grad_clip) if settings.grad_clip > 0
            else optax.identity())
    return optax.chain(pcgrad(num_attributes, project=settings.pcgrad, seed=settings.seed),
                       clip, optax.adamw(schedule, weight_decay=settings.weight_decay))


class _Trainer:
    def __init__(self, model: Model, adapter_config: pblora.AdapterConfig,
                 settings: ArmSettings):
        self.model, self.adapter_config, self.settings = model, adapter_config, settings
        self.k = adapter_config.num_attributes
        self.betas = jnp.asarray(settings.beta_vector(self.k))
        self.tx = optimizer(settings, self.k)
        adapter = pblora.init(model.config, adapter_config, jax.random.key(settings.seed))
        self.initial = {"adapter": adapter.params, "opt_state": self.tx.init(adapter.params),
                        "step": jnp.zeros((), jnp.int32),
                        "rng": jax.random.key_data(jax.random.key(settings.seed + 1))}
        self.initial = place_on_mesh(self.initial, model.mesh)
        self.train_step = jit_train_step(self._train_step, self.initial, model.mesh)

    def _train_step(self, state, frozen, batch):
        # The frozen backbone is an argument: closed over, XLA would bake it into the
        # executable as constants (slow compiles, a second copy, no sharding).
        labels = batch["labels"]
        pairs = {k: v for k, v in batch.items() if k != "labels"}
        key = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
        alpha_key, dropout_key = jax.random.split(key)
        alpha = jax.random.dirichlet(alpha_key, jnp.full((self.k,), self.settings.dirichlet))
        stacked, margins = per_attribute_gradients(
            self.model.config, frozen, self.adapter_config, state["adapter"], pairs,
            labels, self.betas, alpha, dropout_key)
        metrics = reward.attribute_losses(margins, labels, self.betas)
        updates, opt_state = self.tx.update(stacked, state["opt_state"], state["adapter"],
                                            preference=alpha)
        pc_state = opt_state[0]
        adapter = optax.apply_updates(state["adapter"], updates)
        new_state = {"adapter": adapter, "opt_state": opt_state, "step": state["step"] + 1,
                     "rng": state["rng"]}
        # Read on the host before the state is saved: a non-finite adapter is never saved.
        finite = jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), adapter)
        return new_state, {**metrics, "alpha": alpha, "conflicts": pc_state.conflicts,
                           "cosines": pc_state.cosines, "finite": finite}


def pair_fingerprint(examples: Sequence[data.PairExample]) -> str:
    """Identifies the training pairs (tokens, masks, labels, order) in the run record."""
    return fingerprint(array for e in examples
                       for array in (e.a.input_ids, e.a.loss_mask, e.b.input_ids,
                                     e.b.loss_mask, e.labels))


def _place(batch: dict[str, np.ndarray], model: Model) -> dict:
    if model.mesh is None:
        return {k: jnp.asarray(v) for k, v in batch.items()}
    return {k: jax.device_put(v, sharding.batch_sharding(model.mesh, v.shape))
            for k, v in batch.items()}


@functools.partial(jax.jit, static_argnums=(0, 1))
def _margins(config, adapter_config, params, adapter_params, pairs, preference_K):
    return reward.pair_margins(config, params, pairs, adapter_config, adapter_params,
                               preference_K)


def evaluate_adapter(model: Model, adapter: pblora.Adapter,
                     examples: Sequence[data.PairExample], grid: np.ndarray,
                     max_len: int = 256, batch_size: int = 16,
                     progress: bool = False) -> dict[str, Any]:
    """Pairwise accuracy and mean signed margin per attribute, for every grid preference.

    Accuracy counts pairs where r(winner) > r(loser) under that preference, over the pairs
    labelled for the attribute.
    """
    n, k = len(examples), adapter.config.num_attributes
    accuracy = np.zeros((len(grid), k))
    margin = np.zeros((len(grid), k))
    labels = np.array([e.labels for e in examples], np.int8)
    labelled = (labels != 0).sum(0)
    batches = []
    for start in range(0, n, batch_size):
        chunk = list(examples[start:start + batch_size])
        chunk += [chunk[-1]] * (batch_size - len(chunk))  # one shape per length bucket
        batch = data.pair_batch(chunk, model.pad_id, max_len)
        batch.pop("labels")
        batches.append((_place(batch, model), min(batch_size, n - start)))
    for g, point in enumerate(tqdm(grid, desc="evaluate", unit="preference",
                                   disable=not progress)):
        margins = np.concatenate([
            np.asarray(_margins(model.config, adapter.config, model.params, adapter.params,
                                batch, jnp.asarray(point)))[:real]
            for batch, real in batches])
        signed = labels * margins[:, None]
        accuracy[g] = ((signed > 0) & (labels != 0)).sum(0) / np.maximum(labelled, 1)
        margin[g] = (signed * (labels != 0)).sum(0) / np.maximum(labelled, 1)
    return {"attributes": list(adapter.config.attributes), "grid": grid.tolist(),
            "grid_names": grid_names(grid, adapter.config.attributes),
            "accuracy": accuracy.tolist(), "margin": margin.tolist(),
            "labelled_pairs": labelled.tolist(), "pairs": n}


def _tensorboard(folder: Path):
    """A SummaryWriter when tensorboardX or torch's tensorboard support is installed."""
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            if importlib.util.find_spec(module.split(".")[0]) is None:
                continue
            writer_module = importlib.import_module(module)
            return writer_module.SummaryWriter(str(folder / "tensorboard"))
        except (ImportError, ModuleNotFoundError):
            continue
    return None


def train_arm(model: Model, adapter_config: pblora.AdapterConfig,
              train: Sequence[data.PairExample], dev: Sequence[data.PairExample],
              settings: ArmSettings, checkpoint_dir: str | Path, stop_after: int | None = None,
              progress: bool = True) -> tuple[pblora.Adapter, list[dict], dict | None]:
    """Trains (or resumes) a Pv-Arm adapter; returns it, this call's metrics and the final
    evaluation on `dev` over the fixed preference grid (None if `dev` is empty or the run
    stopped early)."""
    if not train:
        raise ValueError("no training pairs")
    folder = Path(checkpoint_dir).resolve()
    trainer = _Trainer(model, adapter_config, settings)
    record = {"settings": dataclasses.asdict(settings), "adapter": adapter_config.to_json(),
              "train_pairs": len(train), "train_data": pair_fingerprint(train),
              "backbone": model.source, "dtype": str(model.dtype)}
    manager, state, start = start_or_resume(folder, record, trainer.initial,
                                            settings.keep_checkpoints, settings.checkpoint_every,
                                            settings.steps, model.mesh)
    last = min(settings.steps, stop_after if stop_after is not None else settings.steps)
    names = adapter_config.attributes
    writer = _tensorboard(folder) if start < last else None
    history = []
    bar = tqdm(total=settings.steps, initial=start, desc="train-arm", unit="step",
               disable=not progress)
    for step in range(start, last):
        indices = data.batch_indices(len(train), settings.batch_size, settings.seed, step)
        batch = data.pair_batch([train[i] for i in indices], model.pad_id, settings.max_len)
        state, metrics = trainer.train_step(state, model.params, _place(batch, model))
        metrics = jax.tree.map(np.asarray, metrics)
        check_finite(metrics, step + 1, manager.latest_step(), folder)
        upper = np.triu_indices(len(names), 1)
        record = {"step": step + 1, "alpha": metrics["alpha"].round(4).tolist(),
                  "loss": dict(zip(names, metrics["loss"].tolist())),
                  "accuracy": dict(zip(names, metrics["accuracy"].tolist())),
                  "margin": dict(zip(names, metrics["margin"].tolist())),
                  "conflicts": int(metrics["conflicts"]),
                  "cosines": metrics["cosines"][upper].round(4).tolist()}
        history.append(record)
        log_metrics(folder, record)
        if writer is not None:
            for name in names:
                writer.add_scalar(f"loss/{name}", record["loss"][name], step + 1)
                writer.add_scalar(f"accuracy/{name}", record["accuracy"][name], step + 1)
            writer.add_scalar("pcgrad/conflicts", record["conflicts"], step + 1)
        manager.save(step + 1, args=ocp.args.StandardSave(state),
                     force=(step + 1 == settings.steps))
        labelled = metrics["labelled"] > 0
        mean_loss = float(metrics["loss"][labelled].mean()) if labelled.any() else 0.0
        bar.set_postfix(loss=f"{mean_loss:.4f}", conflicts=record["conflicts"])
        bar.update(1)
    bar.close()
    manager.wait_until_finished()
    if writer is not None:
        writer.close()
    adapter = pblora.Adapter(dataclasses.replace(adapter_config, base_model=model.source),
                             state["adapter"])
    evaluation = None
    if dev and int(state["step"]) == settings.steps:
        evaluation = evaluate_adapter(model, adapter, dev,
                                      simplex_grid(trainer.k, settings.eval_resolution),
                                      settings.max_len, settings.eval_batch_size, progress)
    return adapter, history, evaluation


def plot_evaluation(evaluation: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Heat map: pairwise accuracy per attribute (columns) under each grid preference (rows)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from prosocial_jax.files import atomic_open

    accuracy = np.array(evaluation["accuracy"])
    names = [f"alpha: {n}" for n in evaluation["grid_names"]]
    if evaluation.get("backbone_accuracy") is not None:  # the reference row: no adapter
        accuracy = np.vstack([evaluation["backbone_accuracy"], accuracy])
        names = ["backbone alone", *names]
    fig, ax = plt.subplots(figsize=(1.2 * accuracy.shape[1] + 2.5, 0.45 * accuracy.shape[0] + 1.8))
    image = ax.imshow(accuracy, vmin=0.0, vmax=1.0, cmap="RdYlGn")
    ax.set_xticks(range(accuracy.shape[1]), evaluation["attributes"], rotation=30, ha="right")
    ax.set_yticks(range(accuracy.shape[0]), names)
    for (row, col), value in np.ndenumerate(accuracy):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(title or "held-out pairwise accuracy by preference")
    fig.colorbar(image, ax=ax, fraction=0.03)
    fig.tight_layout()
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def split_by_prompt(pairs: Sequence[data.PreferencePair], dev_fraction: float,
                    seed: int = 0) -> tuple[list, list]:
    """Deterministic held-out split: whole prompts go to dev, so no prompt is in both."""
    prompts = sorted({json.dumps(p.prompt, sort_keys=True) for p in pairs})
    rng = np.random.default_rng(seed)
    dev = set(rng.permutation(len(prompts))[: round(dev_fraction * len(prompts))])
    dev_prompts = {prompts[i] for i in dev}
    train = [p for p in pairs if json.dumps(p.prompt, sort_keys=True) not in dev_prompts]
    held = [p for p in pairs if json.dumps(p.prompt, sort_keys=True) in dev_prompts]
    return train, held


def format_evaluation(evaluation: dict[str, Any]) -> str:
    """Markdown table: accuracy per attribute under each grid preference (+ the backbone)."""
    names = evaluation["attributes"]
    lines = ["| preference | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    if evaluation.get("backbone_accuracy") is not None:
        lines.append("| backbone (no adapter) | "
                     + " | ".join(f"{a:.2f}" for a in evaluation["backbone_accuracy"]) + " |")
    for name, row in zip(evaluation["grid_names"], evaluation["accuracy"]):
        lines.append(f"| {name} | " + " | ".join(f"{a:.2f}" for a in row) + " |")
    lines.append("| labelled pairs | " + " | ".join(map(str, evaluation["labelled_pairs"]))
                 + " |")
    return "\n".join(lines)
