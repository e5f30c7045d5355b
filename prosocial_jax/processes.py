"""The processes of a multi-process run (`jax.distributed`): who writes, and failing together.

Every process runs the same program over one global device mesh. Outputs, reports, run records
and metrics logs are written by process 0 alone (`is_writer`); orbax checkpoints are saved by
all processes together, as orbax requires. A step that can fail on one process only (a file
that one host cannot read) goes through `check_all_processes`, so every process stops with the
failing process's message instead of the others waiting in the next collective until a timeout.
With one process every function here is a no-op or a plain `raise`.
"""

from __future__ import annotations

import hashlib

import jax
import numpy as np

_MESSAGE_BYTES = 2048


class ProcessError(ValueError):
    """Another process of a multi-process run failed, or disagrees with this one."""


def is_writer() -> bool:
    """True in the one process that writes outputs (process 0)."""
    return jax.process_index() == 0


def _gather_bytes(data: bytes) -> list[bytes]:
    """`data` (at most _MESSAGE_BYTES) from every process, in process order."""
    from jax.experimental import multihost_utils
    buffer = np.zeros(_MESSAGE_BYTES + 4, np.uint8)
    data = data[:_MESSAGE_BYTES]
    buffer[:4] = np.frombuffer(len(data).to_bytes(4, "little"), np.uint8)
    buffer[4:4 + len(data)] = np.frombuffer(data, np.uint8)
    rows = np.asarray(multihost_utils.process_allgather(buffer))
    return [row[4:4 + int.from_bytes(row[:4].tobytes(), "little")].tobytes() for row in rows]


def check_all_processes(what: str, error: BaseException | None = None,
                        fingerprint: str | None = None) -> None:
    """Every process calls this after `what` (e.g. "reading prompts.jsonl") with the error it
    met, if any: then all of them raise, this process's own error or a `ProcessError` naming
    the process that failed and its message. `fingerprint` (e.g. a hash of the rows read) must
    agree across processes: the same file on every host."""
    if jax.process_count() == 1:
        if error is not None:
            raise error
        return
    text = "" if error is None else f"{type(error).__name__}: {error}"
    statuses = [s.decode(errors="replace") for s in _gather_bytes(text.encode())]
    failed = [(index, status) for index, status in enumerate(statuses) if status]
    if error is not None:
        raise error
    if failed:
        index, status = failed[0]
        raise ProcessError(f"process {index} of {len(statuses)} failed {what}: {status}")
    if fingerprint is not None:
        prints = [p.decode() for p in _gather_bytes(fingerprint.encode())]
        if len(set(prints)) > 1:
            other = next(i for i, p in enumerate(prints) if p != prints[0])
            raise ProcessError(f"{what}: process {other} read other data than process 0 "
                               f"({prints[other]} vs {prints[0]}); every host needs the same "
                               "file")


def text_fingerprint(texts) -> str:
    """A short hash of a sequence of strings (rows read), for `check_all_processes`."""
    digest = hashlib.sha256()
    count = 0
    for text in texts:
        digest.update(text.encode() + b"\0")
        count += 1
    return f"{count} rows, sha256 {digest.hexdigest()[:12]}"
