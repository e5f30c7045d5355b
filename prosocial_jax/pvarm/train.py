"""Pv-Arm training: one PBLoRA adapter on a frozen backbone for K attributes at once.

Each step draws alpha ~ Dirichlet(p * 1_K), computes the K attribute gradients with respect to
the adapter from one backward pass (`objective.per_attribute_gradients`), resolves conflicts with
PCGrad and applies sum_i alpha_i g_i^PC through AdamW with warm-up and cosine decay (all one
optax chain: `training.optimizer.warmup_cosine_adamw` with `pcgrad` first). Data-parallel over
the backbone's mesh ("data" axis; the backbone may also be sharded over "model"). Sequence
lengths are bucketed, so few shapes compile.

The loop, checkpoints and resume are the shared ones (`training.loop.run_training`): orbax
checkpoints hold the adapter, the optimiser state (PCGrad's key included), the step and the
run's RNG key; batches and alpha are pure functions of (seed, step), so a resumed run repeats an
uninterrupted one exactly, and a checkpoint folder refuses to resume under different settings.

A new value joins a trained adapter without retraining it (`train_arm(extend=...)`): the
adapter gains one attribute (`models.adapters.extend_adapter`: a new row of every zeta) and only
that row is trained, on the new attribute's pairs; every other factor stays bit for bit as it
was, so the old attributes behave exactly as before under any preference that gives the new one
weight 0.

Evaluation uses a FIXED simplex grid of preferences (never random alphas): per grid point, the
pairwise accuracy per attribute on held-out pairs (`evaluation.preference_accuracy`).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from prosocial_jax import processes
from prosocial_jax import settings as settings_module
from prosocial_jax.data.order import batch_indices
from prosocial_jax.data.preferences import PairExample, PreferencePair, pair_batch
from prosocial_jax.evaluation.preference_accuracy import evaluate_adapter, simplex_grid
from prosocial_jax.models.adapters import (
    Adapter,
    AdapterConfig,
    AdapterError,
    extend_adapter,
    init_adapter,
)
from prosocial_jax.models.config import ModelConfig
from prosocial_jax.models.model import Model
from prosocial_jax.pvarm.objective import attribute_losses, per_attribute_gradients
from prosocial_jax.pvarm.pcgrad import pcgrad
from prosocial_jax.training.checkpoints import fingerprint
from prosocial_jax.training.loop import Objective, initial_state, run_training
from prosocial_jax.training.optimizer import warmup_cosine_adamw


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
    # lambda of the winner anchor (`objective`): + lambda * the winner's per-token NLL per
    # attribute; 0 = the paper's Bradley-Terry objective alone. `winner_nlls`: one lambda per
    # attribute instead (e.g. the safety attribute's only)
    winner_nll: float = 0.0
    winner_nlls: tuple[float, ...] = ()
    pcgrad: bool = True  # False: the plain preference-weighted sum (ablation)
    eval_resolution: int = 1  # simplex grid step 1/resolution (1: the K vertices), + uniform
    eval_batch_size: int = 16
    # held-out pairs evaluated (a seeded sample; 0 = all): the grid scores every pair under
    # every preference, so its cost is pairs x grid points
    eval_limit: int = 0
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
                                 "eval_limit", "winner_nll", "winner_nlls",
                                 "grad_clip", "end_learning_rate_fraction", allow_zero=True)

    def for_attributes(self, keep: Sequence[int]) -> ArmSettings:
        """These settings for an adapter of some of the attributes (indices `keep`, in the new
        order): the per-attribute vectors (betas, winner_nlls) cut to them."""
        return dataclasses.replace(
            self, betas=tuple(self.betas[i] for i in keep) if self.betas else (),
            winner_nlls=tuple(self.winner_nlls[i] for i in keep) if self.winner_nlls else ())

    def beta_vector(self, num_attributes: int) -> np.ndarray:
        """The [K] Bradley-Terry betas: `betas`, or `beta` for every attribute."""
        if self.betas and len(self.betas) != num_attributes:
            raise ValueError(f"betas has {len(self.betas)} entries for {num_attributes} "
                             "attributes")
        return np.asarray(self.betas or [self.beta] * num_attributes, np.float32)

    def winner_nll_vector(self, num_attributes: int) -> np.ndarray:
        """The [K] winner-anchor weights: `winner_nlls`, or `winner_nll` for every attribute."""
        if self.winner_nlls and len(self.winner_nlls) != num_attributes:
            raise ValueError(f"winner_nlls has {len(self.winner_nlls)} entries for "
                             f"{num_attributes} attributes")
        return np.asarray(self.winner_nlls or [self.winner_nll] * num_attributes, np.float32)


@dataclasses.dataclass(frozen=True)
class _ArmObjective(Objective):
    """The Bradley-Terry objective of every attribute, PCGrad-combined under a random alpha."""

    config: ModelConfig
    adapter_config: AdapterConfig
    settings: ArmSettings
    # Extending an adapter: the one attribute (index) whose zeta row is trained; None: all.
    trained_attribute: int | None = None
    checkpoint_params: ClassVar[str] = "adapter"

    @property
    def num_attributes(self) -> int:
        return self.adapter_config.num_attributes

    def optimizer(self):
        last = (None if self.trained_attribute is None
                else only_attribute_row(self.trained_attribute))
        return warmup_cosine_adamw(self.settings, first=pcgrad(
            self.num_attributes, project=self.settings.pcgrad, seed=self.settings.seed),
            last=last)

    def gradients(self, params, frozen, batch, key):
        labels_PxK = batch["labels"]
        pairs = {name: array for name, array in batch.items() if name != "labels"}
        alpha_key, dropout_key = jax.random.split(key)
        alpha_K = jax.random.dirichlet(alpha_key,
                                       jnp.full((self.num_attributes,), self.settings.dirichlet))
        betas_K = jnp.asarray(self.settings.beta_vector(self.num_attributes))
        stacked, terms = per_attribute_gradients(
            self.config, frozen, self.adapter_config, params, pairs, labels_PxK, betas_K,
            alpha_K, dropout_key,
            nll_weights=jnp.asarray(self.settings.winner_nll_vector(self.num_attributes)))
        metrics = attribute_losses(terms["margins"], labels_PxK, betas_K)
        return stacked, {"preference": alpha_K}, {**metrics, "alpha": alpha_K,
                                                   "winner_nll": terms["winner_nll"]}

    def update_metrics(self, opt_state):
        pcgrad_state = opt_state[0]  # the head of the chain
        return {"conflicts": pcgrad_state.conflicts, "cosines": pcgrad_state.cosines}

    def row(self, step, metrics):
        names = self.adapter_config.attributes
        upper = np.triu_indices(len(names), 1)
        return {"step": step, "alpha": metrics["alpha"].round(4).tolist(),
                "loss": dict(zip(names, metrics["loss"].tolist())),
                "accuracy": dict(zip(names, metrics["accuracy"].tolist())),
                "margin": dict(zip(names, metrics["margin"].tolist())),
                "winner_nll": dict(zip(names, metrics["winner_nll"].tolist())),
                "conflicts": int(metrics["conflicts"]),
                "cosines": metrics["cosines"][upper].round(4).tolist()}

    def postfix(self, row, metrics):
        labelled = metrics["labelled"] > 0
        mean_loss = float(metrics["loss"][labelled].mean()) if labelled.any() else 0.0
        return {"loss": f"{mean_loss:.4f}", "conflicts": row["conflicts"]}


def only_attribute_row(index: int) -> optax.GradientTransformation:
    """Zeroes every update but row `index` of each zeta (the preference-to-core map of one
    attribute). Last in the chain, it keeps every other factor exactly where it was, weight
    decay included."""
    def update(updates, state, params=None):
        del params

        def keep(path, value):
            if getattr(path[-1], "key", None) == "zeta":  # [L, K, r2 * r2]
                return jnp.zeros_like(value).at[:, index].set(value[:, index])
            return jnp.zeros_like(value)

        return jax.tree_util.tree_map_with_path(keep, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def pair_fingerprint(examples: Sequence[PairExample]) -> str:
    """Identifies the training pairs (tokens, masks, labels, order) in the run record."""
    return fingerprint(array for e in examples
                       for array in (e.a.input_ids, e.a.loss_mask, e.b.input_ids,
                                     e.b.loss_mask, e.labels))


class _TensorBoard:
    """Loss, accuracy and conflicts per step, when tensorboardX or torch's tensorboard support
    is installed; the writer is opened at the first step this call trains."""

    def __init__(self, folder: Path, names: Sequence[str]):
        self.folder, self.names = folder, names
        self.writer, self.opened = None, False

    def add(self, row: dict[str, Any]) -> None:
        if not processes.is_writer():  # one event file per run, however many processes
            return
        if not self.opened:
            self.writer, self.opened = _summary_writer(self.folder), True
        if self.writer is None:
            return
        step = row["step"]
        for name in self.names:
            self.writer.add_scalar(f"loss/{name}", row["loss"][name], step)
            self.writer.add_scalar(f"accuracy/{name}", row["accuracy"][name], step)
        self.writer.add_scalar("pcgrad/conflicts", row["conflicts"], step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _summary_writer(folder: Path):
    for module in ("tensorboardX", "torch.utils.tensorboard"):
        try:
            if importlib.util.find_spec(module.split(".")[0]) is None:
                continue
            writer_module = importlib.import_module(module)
            return writer_module.SummaryWriter(str(folder / "tensorboard"))
        except (ImportError, ModuleNotFoundError):
            continue
    return None


def train_arm(model: Model, adapter_config: AdapterConfig, train: Sequence[PairExample],
              dev: Sequence[PairExample], settings: ArmSettings, checkpoint_dir: str | Path,
              stop_after: int | None = None, progress: bool = True,
              restart_on_change: bool = False,
              extend: Adapter | None = None) -> tuple[Adapter, list[dict], dict | None]:
    """Trains (or resumes) a Pv-Arm adapter; returns it, this call's metrics and the final
    evaluation on `dev` over the fixed preference grid (None if `dev` is empty or the run
    stopped early).

    `extend`: a trained adapter whose attributes are `adapter_config`'s but its last one, the
    new value. Only the new attribute's zeta row is trained (see the module docstring), on the
    pairs labelled for it, by those labels alone (the old attributes' are dropped: their part
    of the adapter is fixed)."""
    if extend is not None:
        train = [dataclasses.replace(e, labels=[0] * (len(e.labels) - 1) + [e.labels[-1]])
                 for e in train if e.labels[-1]]
        if not train:
            raise ValueError(f"no training pairs labelled for the new attribute "
                             f"{adapter_config.attributes[-1]!r}")
    if not train:
        raise ValueError("no training pairs")
    settings.beta_vector(adapter_config.num_attributes)  # a wrong betas length fails here
    settings.winner_nll_vector(adapter_config.num_attributes)  # ... and winner_nlls'
    folder = Path(checkpoint_dir).resolve()
    record = {"settings": dataclasses.asdict(settings), "adapter": adapter_config.to_json(),
              "train_pairs": len(train), "train_data": pair_fingerprint(train),
              "backbone": model.source, "dtype": str(model.dtype)}
    if extend is None:
        objective = _ArmObjective(model.config, adapter_config, settings)
        adapter = init_adapter(model.config, adapter_config, jax.random.key(settings.seed))
    else:
        _check_extends(extend, adapter_config)
        objective = _ArmObjective(model.config, adapter_config, settings,
                                  trained_attribute=adapter_config.num_attributes - 1)
        adapter = extend_adapter(extend, adapter_config.attributes[-1],
                                 jax.random.key(settings.seed))
        # Copies: the training step donates its parameters, and the shared factors are the
        # caller's adapter's own buffers.
        adapter = dataclasses.replace(adapter, params=jax.tree.map(jnp.copy, adapter.params))
        record["extends"] = {"attributes": list(extend.config.attributes),
                             "factors": fingerprint(np.asarray(x, np.float32).view(np.int32)
                                                    for x in jax.tree.leaves(extend.params))}
    initial = initial_state(objective.optimizer(), adapter.params,
                            jax.random.key(settings.seed + 1))

    def batch_at(step: int, rows: slice) -> dict[str, np.ndarray]:
        indices = batch_indices(len(train), settings.batch_size, settings.seed, step)
        return pair_batch([train[i] for i in indices], model.pad_id, settings.max_len, rows)

    tensorboard = _TensorBoard(folder, adapter_config.attributes)
    try:
        # The frozen backbone is an argument of the step, never a constant baked into it.
        state, history = run_training(objective, initial, model.params, batch_at, settings,
                                      folder, record, mesh=model.mesh, stop_after=stop_after,
                                      progress=progress, description="train-arm",
                                      on_row=tensorboard.add,
                                      restart_on_change=restart_on_change)
    finally:
        tensorboard.close()
    trained = Adapter(dataclasses.replace(adapter_config, base_model=model.source),
                      state.params)
    evaluation = None
    if dev and int(state.step) == settings.steps:
        evaluation = evaluate_adapter(
            model, trained, dev, simplex_grid(adapter_config.num_attributes,
                                              settings.eval_resolution),
            settings.max_len, settings.eval_batch_size, progress)
    return trained, history, evaluation


def _check_extends(extend: Adapter, adapter_config: AdapterConfig) -> None:
    """`adapter_config` must be `extend`'s with one attribute added last."""
    old, new = extend.config, adapter_config
    if new.attributes[:-1] != old.attributes:
        raise AdapterError(f"extending an adapter of attributes {list(old.attributes)}: the new "
                           f"attributes must be those plus one new one, got "
                           f"{list(new.attributes)}")
    same = dataclasses.replace(new, attributes=old.attributes, base_model=old.base_model)
    if same != old:
        differs = [f.name for f in dataclasses.fields(old)
                   if getattr(same, f.name) != getattr(old, f.name)]
        raise AdapterError(f"extending an adapter: {', '.join(differs)} must stay as the "
                           "adapter's")


def sample_held_out(examples: Sequence, limit: int, seed: int = 0) -> list:
    """At most `limit` of `examples` (0: all), a seeded sample kept in its original order."""
    if not limit or len(examples) <= limit:
        return list(examples)
    keep = np.sort(np.random.default_rng(seed).permutation(len(examples))[:limit])
    return [examples[i] for i in keep]


def split_by_prompt(pairs: Sequence[PreferencePair], dev_fraction: float,
                    seed: int = 0) -> tuple[list, list]:
    """Deterministic held-out split: whole prompts go to dev, so no prompt is in both."""
    prompts = sorted({json.dumps(p.prompt, sort_keys=True) for p in pairs})
    rng = np.random.default_rng(seed)
    dev = set(rng.permutation(len(prompts))[: round(dev_fraction * len(prompts))])
    dev_prompts = {prompts[i] for i in dev}
    train = [p for p in pairs if json.dumps(p.prompt, sort_keys=True) not in dev_prompts]
    held = [p for p in pairs if json.dumps(p.prompt, sort_keys=True) in dev_prompts]
    return train, held
