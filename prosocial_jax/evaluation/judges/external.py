"""External scores: judgements produced elsewhere (an API judge, human labels), joined by row id.

The file is JSONL, one object per judged response: `{"id": str, "scores": {attribute: number}
(optional), "unsafe": bool, "refused": bool, "degenerate": bool (each optional)}`; other keys
are kept as the judgement's `extra`. A malformed row is an error naming the file and line (a
judge file is small and hand-made, so it is better fixed than half used). Generation rows with
no external row get an empty judgement and are counted in `missing`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from prosocial_jax.evaluation.judges.base import JudgeError, JudgeInput, Judgement
from prosocial_jax.files import json_lines

FLAGS = ("unsafe", "refused", "degenerate")


def _parse(raw, where: str) -> tuple[str, Judgement]:
    if not isinstance(raw, dict):
        raise JudgeError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    row_id = raw.get("id")
    if not isinstance(row_id, str | int) or isinstance(row_id, bool) or str(row_id) == "":
        raise JudgeError(f"{where}: \"id\" must be a non-empty string (the generation row's "
                         f"id), got {row_id!r}")
    scores = raw.get("scores", {})
    if not isinstance(scores, dict):
        raise JudgeError(f"{where}: \"scores\" must be an object, got {scores!r}")
    for name, value in scores.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            raise JudgeError(f"{where}: score {name!r} must be a finite number, got {value!r}")
    judgement = Judgement(scores={k: float(v) for k, v in scores.items()})
    for flag in FLAGS:
        if flag in raw:
            if not isinstance(raw[flag], bool):
                raise JudgeError(f"{where}: \"{flag}\" must be true or false, got "
                                 f"{raw[flag]!r}")
            setattr(judgement, flag, raw[flag])
    judgement.extra = {k: v for k, v in raw.items() if k not in ("id", "scores", *FLAGS)}
    return str(row_id), judgement


def read_external_scores(path: str | Path) -> dict[str, Judgement]:
    path = Path(path)
    if not path.is_file():
        raise JudgeError(f"{path}: no such external scores file")
    rows: dict[str, Judgement] = {}
    for number, raw, error in json_lines(path):
        where = f"{path}:{number}"
        if error is not None:
            raise JudgeError(f"{where}: {error}")
        row_id, judgement = _parse(raw, where)
        if row_id in rows:
            raise JudgeError(f"{where}: id {row_id!r} appears twice")
        rows[row_id] = judgement
    if not rows:
        raise JudgeError(f"{path}: no score rows")
    return rows


class ExternalJudge:
    kind = "external"

    def __init__(self, name: str, path: str | Path):
        self.name, self.path = name, Path(path)
        self.rows = read_external_scores(path)
        self.missing = 0

    def judge(self, items: Sequence[JudgeInput], progress: bool = False) -> list[Judgement]:
        out = []
        for item in items:
            judgement = self.rows.get(item.id)
            if judgement is None:
                self.missing += 1
                judgement = Judgement()
            out.append(judgement)
        return out
