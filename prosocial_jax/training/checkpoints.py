"""Resumable training runs: a settings record, orbax checkpoints and a metrics log in one folder.

The run folder of the one training loop (`loop.py`), which both the harmful fine-tune and
Pv-Arm training run through.

- `run.json` records what the run was made with (settings, data fingerprint, dtype, model); a
  folder refuses to resume under a different record and names the field that changed. `steps`
  alone may grow: the run is then extended (its learning-rate schedule is that of the new
  length, evaluated from the step reached).
- The state is any pytree (parameters, optimiser state, step, RNG key data), restored with the
  shapes, dtypes and shardings of a fresh one: on a device mesh, the fresh state is placed on
  the mesh first, so the restored arrays land there too.
- `metrics.jsonl` holds each step once: on resume, rows past the restored step (written before
  an interruption) are dropped.
- A state with NaN or inf is never saved and never resumed (`nonfinite_paths`).
- A folder that exists and holds anything but a run of ours is refused, never written into.
- Several processes (`jax.distributed`) share one folder: process 0 checks and writes `run.json`
  and `metrics.jsonl` (the others stop with its error, if any), and all of them save and
  restore the orbax checkpoints together.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from prosocial_jax import processes
from prosocial_jax.files import atomic_open, write_jsonl

RECORD, METRICS = "run.json", "metrics.jsonl"
_OURS = {RECORD, METRICS, "checkpoints", "tensorboard"}
EXTENDABLE = ("settings.steps",)


class RunError(ValueError):
    """A checkpoint folder that cannot be (re)used as asked."""


def fingerprint(arrays: Iterable[Any]) -> str:
    """sha256 over a sequence of integer/bool arrays (training data), order included."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(np.asarray(array, np.int64))
        digest.update(str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def _flatten(record: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(record, dict):
        out = {}
        for key, value in record.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: record}


def read_record(folder: Path) -> dict[str, Any] | None:
    path = Path(folder) / RECORD
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunError(f"{path}: not valid JSON ({err}); the run record is damaged. Restore it, "
                       "or start the run in a new checkpoint folder") from None
    if not isinstance(record, dict):
        raise RunError(f"{path}: expected a JSON object, got {type(record).__name__}")
    return record


def check_checkpoint_folder(folder: str | Path) -> None:
    """Refuses a folder that exists and holds anything but a run of ours (call it before long
    work); reads its run record if it has one."""
    folder = Path(folder)
    if read_record(folder) is not None or not folder.exists():
        return
    if not folder.is_dir():
        raise RunError(f"{folder} exists and is not a folder")
    foreign = sorted(set(p.name for p in folder.iterdir()) - _OURS)
    if foreign:
        raise RunError(f"{folder} exists and holds files that are not a prosocial-jax "
                       f"training run (e.g. {foreign[0]!r}); choose a new checkpoint folder")


def check_run_record(folder: Path, record: dict[str, Any],
                     restart_on_change: bool = False) -> None:
    """Remembers a resumable run's record in `folder/run.json`; refuses a different one later
    (naming the first dotted field that differs), or with `restart_on_change` discards that
    run (its checkpoints and metrics; nothing else is ever in the folder) and starts afresh.
    A larger `settings.steps` extends the run."""
    folder = Path(folder)
    record = json.loads(json.dumps(record))  # as it reads back (tuples: lists)
    # Process 0 checks and writes; the others wait for it, and stop with its error if it
    # found one (they would read the folder while process 0 writes it).
    error = None
    if processes.is_writer():
        try:
            _check_and_write_record(folder, record, restart_on_change)
        except (OSError, ValueError) as err:
            error = err
    processes.check_all_processes(f"checking the run folder {folder}", error)


def _check_and_write_record(folder: Path, record: dict[str, Any],
                            restart_on_change: bool) -> None:
    previous = read_record(folder)
    if previous is None:
        check_checkpoint_folder(folder)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        old, new = _flatten(previous), _flatten(record)
        changed = sorted(k for k in set(old) | set(new)
                         if k not in EXTENDABLE and old.get(k) != new.get(k))
        if changed:
            key = changed[0]
            what = (f"{folder} holds a run with different settings: {key} is "
                    f"{old.get(key)!r} there and {new.get(key)!r} now")
            if not restart_on_change:
                raise RunError(f"{what}. Use another checkpoint folder, the same settings to "
                               "resume, or --restart-on-change to discard that run")
            print(f"{what}; discarding that run and starting afresh (--restart-on-change)",
                  file=sys.stderr)
            # Only the names a run writes are removed (anything else in the folder stays).
            # The old record goes last: a kill in between leaves it with no checkpoints, which
            # the next start reads as that run at step 0, never as this one.
            for name in sorted(_OURS - {RECORD}):
                path = folder / name
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
        elif previous == record:
            return
    with atomic_open(folder / RECORD) as handle:
        json.dump(record, handle, indent=2)


def nonfinite_paths(tree: Any) -> list[str]:
    """Pytree paths ('adapter/q_proj/B1') of the floating leaves holding NaN or inf.

    Checked on the host, one copy of each locally held shard: no device program is compiled
    for a state just restored onto a mesh (eager multi-device ops right after an orbax restore
    have aborted jaxlib 0.10 on CPU now and then), and on many hosts each checks its own shards.
    """
    def finite(x) -> bool:
        if not jnp.issubdtype(x.dtype, jnp.floating):
            return True
        if isinstance(x, jax.Array):
            return all(np.isfinite(np.asarray(shard.data, np.float32)).all()
                       for shard in x.addressable_shards if shard.replica_id == 0)
        return bool(np.isfinite(np.asarray(x, np.float32)).all())

    return [jax.tree_util.keystr(path, simple=True, separator="/")
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree) if not finite(leaf)]


def place_on_mesh(tree: Any, mesh: Mesh | None) -> Any:
    """Leaves already laid out on `mesh` keep their sharding; the rest are replicated on it.

    A fresh training state mixes mesh-sharded parameters with small arrays created on one
    device (step counters, keys, adapter factors). Restoring into it as is would put those on
    one device and the next jitted step would mix devices.
    """
    if mesh is None:
        return tree
    replicated = NamedSharding(mesh, P())

    def place(x):
        if isinstance(x, jax.Array) and isinstance(x.sharding, NamedSharding) and \
                x.sharding.mesh == mesh:
            return x
        if jax.process_count() > 1 and isinstance(x, jax.Array) and x.is_fully_addressable:
            # This process's own copy (the same in every process: same seeds), as a host
            # value: a device array committed to one local device can't join a global mesh.
            if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
                data = jax.device_put(np.asarray(jax.random.key_data(x)), replicated)
                return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
            x = np.asarray(x)
        return jax.device_put(x, replicated)

    return jax.tree.map(place, tree)


def check_finite(metrics: dict[str, Any], step: int, saved: int | None, folder: Path) -> None:
    """Stops a run whose step produced NaN or inf (loss or parameters), before it is saved."""
    bad = [jax.tree_util.keystr(path, simple=True, separator="/")
           for path, ok in jax.tree_util.tree_leaves_with_path(metrics["finite"]) if not ok]
    losses = np.asarray(metrics["loss"])
    if not bad and np.isfinite(losses).all():
        return
    where = f"parameter(s) {', '.join(bad[:3])}" if bad else "the loss"
    last = (f"the last good checkpoint in {folder} is step {saved}" if saved
            else f"no checkpoint was saved in {folder} yet")
    raise RunError(f"step {step}: non-finite values (NaN or inf) in {where}; stopped before "
                   f"saving ({last}). Check the model and data or lower the learning rate, "
                   "then rerun to resume")


def _trim_metrics(folder: Path, step: int) -> None:
    """Keeps the metrics rows of steps <= `step` (the rest were made after the checkpoint the
    run resumes from, and will be made again)."""
    path = folder / METRICS
    if not path.exists() or not processes.is_writer():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by the interruption
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
            rows.append(row)
    write_jsonl(path, rows)


def log_metrics(folder: Path, row: dict[str, Any]) -> None:
    """Appends one step's row to `folder/metrics.jsonl` (process 0 only)."""
    if not processes.is_writer():
        return
    with (Path(folder) / METRICS).open("a") as handle:
        handle.write(json.dumps(row) + "\n")


def start_or_resume(folder: str | Path, record: dict[str, Any], initial: Any, keep: int,
                    every: int, steps: int, mesh: Mesh | None = None,
                    restart_on_change: bool = False
                    ) -> tuple[ocp.CheckpointManager, Any, int]:
    """Checks `record` against the folder's (`check_run_record`), opens `folder/checkpoints`
    (synchronous saves every `every` steps, `keep` kept) and returns it with the latest saved
    state (or `initial`) and its step. The state is placed on `mesh` (see `place_on_mesh`)."""
    folder = Path(folder)
    check_run_record(folder, record, restart_on_change)
    initial = place_on_mesh(initial, mesh)
    manager = ocp.CheckpointManager(
        folder / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                             enable_async_checkpointing=False))
    latest = manager.latest_step()
    if latest is None:
        _trim_metrics(folder, 0)
        return manager, initial, 0
    if latest > steps:
        raise RunError(f"{folder} holds a run already at step {latest}, past steps={steps}; "
                       "ask for at least that many steps (or use another checkpoint folder)")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, initial)
    try:
        state = manager.restore(latest, args=ocp.args.StandardRestore(abstract))
    except Exception as err:  # orbax/tensorstore raise many types for damaged checkpoints
        raise RunError(f"{folder / 'checkpoints' / str(latest)}: the checkpoint does not "
                       f"restore ({type(err).__name__}: {str(err)[:300]}). Remove that step's "
                       "folder to resume from an earlier one") from None
    bad = nonfinite_paths(state)
    if bad:
        raise RunError(f"{folder / 'checkpoints' / str(latest)}: the checkpoint holds NaN or inf "
                       f"in {', '.join(bad[:3])}; refusing to resume from it")
    _trim_metrics(folder, latest)
    print(f"{folder}: resuming from its checkpoint at step {latest} of {steps}", file=sys.stderr)
    return manager, state, latest
