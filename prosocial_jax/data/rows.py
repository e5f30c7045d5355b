"""Rows of a training data set, from a local file or the hub, through `datasets`.

Local JSONL / JSON / Parquet / CSV files load offline. A hub data set is named explicitly as
`hf://owner/name` (or `hf://owner/name@revision`) and needs a hub or the local `datasets` cache;
a local path that does not exist is an error naming it, never a download. A line that is not
valid JSON is an error naming the line. What the rows mean is the business of `sft.py`
(supervised pairs) and `preferences.py` (preference pairs); rows they cannot use are collected
in `SkippedRows` (reason and line numbers), reported, and skipped.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


class DataError(ValueError):
    """A data set that cannot be used as given."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A local data file that does not exist, or a hub data set that cannot be reached.

    Both a DataError (callers that handle bad data sets keep working) and a FileNotFoundError.
    """


@dataclasses.dataclass
class SkippedRows:
    """Rows left out of a data set, with the reason: reported, never fatal."""

    reasons: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # reason -> lines

    def add(self, reason: str, line: int) -> None:
        self.reasons.setdefault(reason, []).append(line)

    @property
    def count(self) -> int:
        return sum(len(lines) for lines in self.reasons.values())

    def summary(self, source: str) -> str:
        parts = [f"{len(lines)} {reason} (line{'s' if len(lines) > 1 else ''} "
                 f"{', '.join(map(str, lines[:5]))}{', ...' if len(lines) > 5 else ''})"
                 for reason, lines in self.reasons.items()]
        return f"{source}: skipped {self.count} row(s): " + "; ".join(parts)


def load_rows(source: str | os.PathLike, split: str = "train") -> list[dict[str, Any]]:
    """All rows of a local data file, or of a hub data set named `hf://owner/name[@revision]`."""
    import datasets

    from prosocial_jax.models.model import HUB_SCHEME, hub_hint

    text = str(source)
    if text.startswith(HUB_SCHEME):
        return _load_hub_rows(text, split)
    path = Path(text).expanduser()
    if not path.exists():
        raise DataFileNotFoundError(f"{text}: no such data file{hub_hint(text)}")
    builder = LOCAL_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r} (use "
                        f"{', '.join(LOCAL_FORMATS)})")
    # datasets logs its own ERROR line for a malformed file; ours, naming the line, is enough.
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        rows = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets wraps parse errors in several exception types
        if builder == "json":
            _raise_json_line_error(path)
        raise DataError(f"{path}: could not be read as {builder} ({err})") from err
    finally:
        logger.setLevel(level)
    return list(rows)


def _load_hub_rows(reference: str, split: str) -> list[dict[str, Any]]:
    import datasets

    from prosocial_jax.models.model import hub_offline, parse_hub_reference

    try:
        repo_id, revision = parse_hub_reference(reference)
    except ValueError as err:
        raise DataError(str(err)) from None
    try:
        return list(datasets.load_dataset(repo_id, revision=revision, split=split))
    except (ConnectionError, FileNotFoundError) as err:
        # Offline or unreachable with nothing cached, datasets says "Couldn't reach ..."
        # (ConnectionError); online, a repository that does not exist is a FileNotFoundError.
        if hub_offline() or isinstance(err, ConnectionError):
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub could not be reached"
            raise DataFileNotFoundError(
                f"{reference}: {why}, and the data set is not in the local datasets cache; "
                "download it where a hub is reachable, or pass a local JSONL/Parquet/CSV file"
            ) from err
        raise DataFileNotFoundError(f"{reference}: no such data set on the hub ({err})") from err
    except Exception as err:
        raise DataError(f"{reference}: could not be loaded from the hub "
                        f"({type(err).__name__}: {err})") from err


def _raise_json_line_error(path: Path) -> None:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    raise DataError(f"{path}: could not be read as JSON lines")
