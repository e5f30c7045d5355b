"""The one training loop: a pure step over a `TrainState`, compiled once per objective, and a
host loop that runs it, logs it and checkpoints it. The harmful fine-tune and Pv-Arm training
differ only in their `Objective` (loss, gradients, optimiser, what a metrics row holds) and their
batches.

Why it is built this way:
- `train_step` is a module-level pure function and the objective a frozen, hashable value passed to
  the compiled step (`jit_train_step`, `jit_train_step_on_mesh`) as a static argument: equal
  objectives share one compiled program (a run resumed in the same process compiles nothing new),
  and nothing is closed over. The frozen backbone and the batch are arguments; closed over, XLA
  would bake them into the executable as constants (slow compiles, a second copy, no sharding).
- The state is donated: the next state reuses its buffers.
- On a mesh the new state is pinned to the layout of the state it came from
  (`jit_train_step_on_mesh`). Left to itself XLA may lay the output out differently from a restored
  state, the two would run different (differently rounded) programs, and a resumed run would
  not repeat an uninterrupted one bit for bit.
- The host reads a step's metrics after dispatching the next step, so batch building, logging
  and the progress bar overlap the device's work. A step whose state is to be saved is read
  first: no state is saved before its metrics showed it finite, and a non-finite step is named
  (`checkpoints.check_finite`), never logged, never saved.
- The per-step randomness is `fold_in(key, step)`: batches and keys are pure functions of
  (seed, step), so a resumed run follows the uninterrupted one exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P
from tqdm.auto import tqdm

from prosocial_jax.models import sharding
from prosocial_jax.training.checkpoints import (
    check_finite,
    log_metrics,
    place_on_mesh,
    start_or_resume,
)


class TrainState(NamedTuple):
    """Everything a checkpoint holds; a pytree, donated to each step."""

    step: jax.Array  # int32 []: steps taken
    params: Any  # the trainable parameters (a model, LoRA factors or a PBLoRA adapter)
    opt_state: Any  # the state of `objective.optimizer()`
    key: jax.Array  # uint32 raw key data (orbax saves plain arrays); step t uses fold_in(key, t)


def initial_state(optimizer: optax.GradientTransformation, params: Any,
                  key: jax.Array) -> TrainState:
    """Step 0 of a run training `params` (a typed PRNG key is stored as its raw data)."""
    return TrainState(jnp.zeros((), jnp.int32), params, optimizer.init(params),
                      jax.random.key_data(key))


class Objective:
    """What one trainer trains. Subclasses are frozen dataclasses (hashable: the step compiles
    once per distinct objective). `optimizer`, `gradients` and `update_metrics` run inside the
    step's trace; `row` and `postfix` run on the host.

    `checkpoint_params` and `checkpoint_key` name the state's entries in the checkpoint files:
    each trainer keeps the tree its checkpoints have always had (see `checkpoint_tree`)."""

    checkpoint_params: ClassVar[str] = "params"  # the trainable parameters' key
    checkpoint_key: ClassVar[str | None] = "rng"  # the PRNG key's key; None: not saved

    def optimizer(self) -> optax.GradientTransformationExtraArgs:
        raise NotImplementedError

    def gradients(self, params: Any, frozen: Any, batch: dict[str, jax.Array],
                  key: jax.Array) -> tuple[Any, dict[str, Any], dict[str, jax.Array]]:
        """(gradients for the optimiser, keyword arguments of its `update`, metrics)."""
        raise NotImplementedError

    def update_metrics(self, opt_state: Any) -> dict[str, jax.Array]:
        """Metrics read from the optimiser state after the update (none by default)."""
        del opt_state
        return {}

    def row(self, step: int, metrics: dict[str, np.ndarray]) -> dict[str, Any]:
        """The metrics.jsonl row of `step` (JSON values; "finite" is the loop's own)."""
        return {"step": step, **{k: float(v) for k, v in metrics.items() if k != "finite"}}

    def postfix(self, row: dict[str, Any], metrics: dict[str, np.ndarray]) -> dict[str, Any]:
        """What the progress bar shows after a step."""
        del metrics
        return {"loss": f"{row['loss']:.3f}"}


def checkpoint_tree(state: TrainState, objective: Objective) -> dict[str, Any]:
    """The tree a checkpoint holds: {params name, "opt_state", "step"[, key name]}, the layout
    the trainers wrote before they shared this loop, so that their runs still resume."""
    tree = {objective.checkpoint_params: state.params, "opt_state": state.opt_state,
            "step": state.step}
    if objective.checkpoint_key is not None:
        tree[objective.checkpoint_key] = state.key
    return tree


def state_from_checkpoint(tree: Mapping[str, Any], objective: Objective,
                          initial: TrainState) -> TrainState:
    """`checkpoint_tree` inverted; an unsaved key is the run's initial one (a function of the
    seed, so the same on resume)."""
    key = initial.key if objective.checkpoint_key is None else tree[objective.checkpoint_key]
    return TrainState(tree["step"], tree[objective.checkpoint_params], tree["opt_state"], key)


class LoopSettings(Protocol):
    steps: int
    batch_size: int
    checkpoint_every: int
    keep_checkpoints: int


Layout = tuple[Any, tuple[NamedSharding, ...]]  # (state treedef, one sharding per leaf)


def state_layout(state: TrainState) -> Layout:
    """How `state` lies on the devices, as a hashable value (a cache key)."""
    return jax.tree.structure(state), tuple(leaf.sharding for leaf in jax.tree.leaves(state))


def train_step(state: TrainState, frozen: Any, batch: dict[str, jax.Array],
               objective: Objective) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimiser step, pure: (the next state, this step's metrics, "finite" included)."""
    key = jax.random.fold_in(jax.random.wrap_key_data(state.key), state.step)
    grads, update_args, metrics = objective.gradients(state.params, frozen, batch, key)
    updates, opt_state = objective.optimizer().update(grads, state.opt_state, state.params,
                                                      **update_args)
    params = optax.apply_updates(state.params, updates)
    # Read on the host before the state is saved: non-finite parameters are never saved.
    finite = jax.tree.map(lambda x: jnp.all(jnp.isfinite(x)), params)
    metrics = {**metrics, **objective.update_metrics(opt_state), "finite": finite}
    return TrainState(state.step + 1, params, opt_state, state.key), metrics


@functools.partial(jax.jit, static_argnames="objective", donate_argnums=0)
def jit_train_step(state: TrainState, frozen: Any, batch: dict[str, jax.Array], *,
                   objective: Objective) -> tuple[TrainState, dict[str, jax.Array]]:
    """`train_step` compiled, the state donated (one device: no layout to keep)."""
    return train_step(state, frozen, batch, objective)


@functools.lru_cache(maxsize=16)
def jit_train_step_on_mesh(layout: Layout) -> Callable:
    """`train_step` compiled for a state laid out as `layout`, the state donated: the new state
    keeps that layout and the metrics are replicated. Pinned by jit's `out_shardings`: a sharding
    constraint inside the step would pin them too, but XLA then partitions the step differently,
    and its results would differ in the last bits from those of earlier versions of this loop.
    One compiled step per layout (and objective), like `jit_train_step`."""
    treedef, shardings = layout
    replicated = NamedSharding(shardings[0].mesh, P())
    return jax.jit(train_step, static_argnames="objective", donate_argnums=0,
                   out_shardings=(jax.tree.unflatten(treedef, shardings), replicated))


def run_training(objective: Objective, initial: TrainState, frozen: Any,
                 batch_at: Callable[[int, slice], Mapping[str, np.ndarray]],
                 settings: LoopSettings,
                 folder: str | Path, record: dict[str, Any], mesh: Mesh | None = None,
                 stop_after: int | None = None, progress: bool = True,
                 description: str = "train",
                 on_row: Callable[[dict[str, Any]], None] | None = None,
                 restart_on_change: bool = False
                 ) -> tuple[TrainState, list[dict[str, Any]]]:
    """Trains (or resumes, see `checkpoints.start_or_resume`) to `settings.steps`, or to
    `stop_after` total steps (the run can be resumed later).

    `batch_at(index, rows)` gives rows `rows` of the host batch of the step from `index` to
    `index + 1` steps taken (every row in a one-process run; in a multi-process run, the block
    this process feeds, `sharding.process_rows`);
    `record` is the run's record (run.json). Each step's `objective.row` goes to
    `folder/metrics.jsonl` and to `on_row`. `restart_on_change`: a previous run in `folder`
    with a different record is discarded instead of refused. Returns the final state and this
    call's rows.
    """
    folder = Path(folder)
    manager, tree, start = start_or_resume(folder, record, checkpoint_tree(initial, objective),
                                           settings.keep_checkpoints, settings.checkpoint_every,
                                           settings.steps, mesh, restart_on_change)
    state = state_from_checkpoint(tree, objective, initial)
    if mesh is not None and objective.checkpoint_key is None:  # the key was not restored
        state = state._replace(key=place_on_mesh(state.key, mesh))
    last = min(settings.steps, stop_after if stop_after is not None else settings.steps)
    compiled = jit_train_step if mesh is None else jit_train_step_on_mesh(state_layout(state))
    history: list[dict[str, Any]] = []
    bar = tqdm(total=settings.steps, initial=start, desc=description, unit="step",
               disable=not progress)

    def read(number: int, metrics: dict[str, jax.Array]) -> None:
        metrics = jax.tree.map(np.asarray, metrics)  # waits for that step
        check_finite(metrics, number, manager.latest_step(), folder)
        row = objective.row(number, metrics)
        history.append(row)
        log_metrics(folder, row)
        if on_row is not None:
            on_row(row)
        bar.set_postfix(objective.postfix(row, metrics))
        bar.update(1)

    rows = sharding.process_rows(mesh, settings.batch_size)
    pending = None  # (step number, metrics) of a step dispatched but not read yet
    try:
        for index in range(start, last):
            batch = sharding.place_batch(batch_at(index, rows), mesh, rows=settings.batch_size)
            state, metrics = compiled(state, frozen, batch, objective=objective)
            if pending is not None:
                read(*pending)  # the previous step, while this one runs
            pending = (index + 1, metrics)
            final = index + 1 == settings.steps
            if final or manager.should_save(index + 1):
                read(*pending)  # a state is saved only once its step was seen finite
                pending = None
                manager.save(index + 1, args=ocp.args.StandardSave(
                    checkpoint_tree(state, objective)), force=final)
        if pending is not None:
            read(*pending)
    finally:
        bar.close()
    manager.wait_until_finished()
    return state, history
