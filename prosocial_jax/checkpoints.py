"""Resumable training runs: a settings record and orbax checkpoints in one folder.

Shared by the harmful fine-tune (`finetune.py`) and Pv-Arm training (`train.py`). The record
(`run.json`) makes a folder refuse to resume under different settings; the state is any pytree
(parameters, optimiser state, step, RNG key data) restored with the shapes and dtypes of a fresh
one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from prosocial_jax.files import atomic_open


def check_run_record(folder: Path, record: dict[str, Any]) -> None:
    """Remembers a resumable run's settings in `folder/run.json`; refuses different ones later."""
    folder = Path(folder)
    path = folder / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in set(previous) | set(record)
                         if previous.get(k) != record.get(k))
        if changed:
            key = changed[0]
            raise ValueError(f"{folder} holds a run with different settings ({key}: "
                             f"{previous.get(key)!r} there, {record.get(key)!r} now); use "
                             "another checkpoint folder or the same settings")
    else:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_open(path) as handle:
            json.dump(record, handle, indent=2)


def start_or_resume(folder: str | Path, record: dict[str, Any], initial: Any,
                    keep: int, every: int) -> tuple[ocp.CheckpointManager, Any]:
    """Checks `record` against the folder's, opens `folder/checkpoints` (synchronous saves every
    `every` steps, `keep` kept) and returns it with the latest saved state, or `initial`."""
    folder = Path(folder)
    check_run_record(folder, json.loads(json.dumps(record)))  # as it reads back (tuples: lists)
    manager = ocp.CheckpointManager(
        folder / "checkpoints",
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every,
                                             enable_async_checkpointing=False))
    if manager.latest_step() is None:
        return manager, initial
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, initial)
    return manager, manager.restore(manager.latest_step(),
                                    args=ocp.args.StandardRestore(abstract))
