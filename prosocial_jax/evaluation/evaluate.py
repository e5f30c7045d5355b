"""The evaluation stage: a generations file in; judged scores, the paper's metrics and a report out.

    generations.jsonl --judges--> scores.jsonl --metrics--> metrics.json --> report.md + PNGs

Generation rows (what `prosocial-jax compare` and `generate` write, or any tool): a JSON object
with `"response"` (str) and `"prompt"` (str) or `"messages"` (chat turns), and optionally `"id"`
(default: its line number), `"setting"` (default "default"), `"prompt_id"` (default: a hash of
the prompt), `"kind"` ("harmful", "benign" or "prosocial"; `EvaluateSettings.kind` fills it
in for rows without one) and `"preference"` ({attribute: weight}). A malformed row is reported
with its line number and skipped.

Each judge scores every row; a score row keeps every judge's output under `"judges"`, and its
top-level `"scores"`, `"unsafe"`, `"refused"`, `"degenerate"` (what the metrics read) each come
from one judge for the whole file: the first, in the order given, that provides that field
(`metrics.json` records which), so that no rate mixes judges from row to row.
"prosocial" rows count as benign for the metrics (`"subset"` keeps the finer kind). Per-judge
metrics use one judge's fields alone. Judges that give flags are also run on the bundled
labelled set (`validation`), and their accuracy and Cohen's kappa go in the report.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from prosocial_jax import settings as settings_module
from prosocial_jax.data.prompts import RowError, parse_prompt_row
from prosocial_jax.evaluation import judge_report, metrics, validation
from prosocial_jax.evaluation.judges import (
    KINDS,
    ExternalJudge,
    Judge,
    JudgeInput,
    RubricJudge,
    load_judge,
    parse_judge_spec,
)
from prosocial_jax.evaluation.judges.rubric import CRITERIA_BY_KIND, RUBRICS
from prosocial_jax.files import json_lines, write_output_folder

FLAGS = ("unsafe", "refused", "degenerate")


@dataclasses.dataclass(frozen=True)
class EvaluateSettings:
    """Which judges score the generations, and how the metrics are computed."""

    judge: tuple[str, ...] = dataclasses.field(default=("rules",), metadata={
        "repeatable": True, "separator": ";",
        "help": "a judge, KIND:PATH[:ATTRIBUTES] (repeatable; kinds: reward, cost, guard, "
                "rubric, rules, external)"})
    reference: str | None = dataclasses.field(default=None, metadata={
        "help": "the setting the others are compared with (win rates)"})
    pairwise: str | None = dataclasses.field(default=None, metadata={
        "help": "name of a rubric judge that also compares each setting with --reference "
                "head to head"})
    kind: str | None = dataclasses.field(default=None, metadata={
        "help": "the kind of rows that name none (harmful, benign or prosocial)"})
    batch_size: int = dataclasses.field(default=16, metadata={
        "help": "responses per judge forward pass"})
    validate: bool = dataclasses.field(default=True, metadata={
        "help": "also run the judges on the bundled labelled set (agreement in the report)"})
    resamples: int = dataclasses.field(default=2000, metadata={
        "help": "bootstrap resamples per interval"})
    seed: int = dataclasses.field(default=0, metadata={
        "help": "seed of the bootstrap and of the pairwise order"})
    where: ClassVar[str] = "evaluate settings"

    def __post_init__(self):
        settings_module.coerce(self, self.where)
        settings_module.positive(self, self.where, "batch_size", "resamples")
        if not self.judge:
            raise ValueError(f"{self.where}: give at least one judge")
        names = [parse_judge_spec(spec).name for spec in self.judge]  # checks every spec
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"{self.where}: judge names {repeated} repeat; name them "
                             "NAME=KIND:PATH")
        if self.kind is not None and self.kind not in KINDS:
            raise ValueError(f"{self.where}: kind must be one of {list(KINDS)}, got "
                             f"{self.kind!r}")
        if self.pairwise is not None:
            if self.pairwise not in names:
                raise ValueError(f"{self.where}: pairwise judge {self.pairwise!r} is not one of "
                                 f"the judges {names}")
            if parse_judge_spec(self.judge[names.index(self.pairwise)]).kind != "rubric":
                raise ValueError(f"{self.where}: pairwise comparisons need a rubric judge; "
                                 f"{self.pairwise!r} is not one")
            if self.reference is None:
                raise ValueError(f"{self.where}: pairwise comparisons need a reference setting")


# ---------------------------------------------------------------------------- generations
@dataclasses.dataclass
class GenerationRow:
    line: int
    id: str
    setting: str
    prompt_id: str
    kind: str  # one of judges.KINDS
    prompt: str | list[dict[str, Any]]
    response: str
    preference: dict[str, float] | None = None

    def judge_input(self) -> JudgeInput:
        return JudgeInput(self.id, self.prompt, self.response, self.kind)


def prompt_hash(prompt: str | list[dict[str, Any]]) -> str:
    """A stable id for a prompt that names none (same text, same id, in every file)."""
    text = json.dumps(prompt, sort_keys=True, ensure_ascii=False)
    return "p" + hashlib.sha1(text.encode()).hexdigest()[:12]


def _parse_preference(value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value or not all(
            isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
            and math.isfinite(v) and v >= 0 for k, v in value.items()) or sum(
            value.values()) <= 0:
        raise ValueError(f'"preference" must be an object of attribute: weight >= 0 with a '
                         f"positive sum, got {value!r}")
    return {k: float(v) for k, v in value.items()}


def parse_generation_row(raw: Any, line: int, default_kind: str | None = None
                         ) -> GenerationRow:
    """One generation row; ValueError saying what is wrong."""
    prompt, extra = parse_prompt_row(raw)
    response = extra.get("response")
    if not isinstance(response, str):
        raise ValueError(f'"response" must be a string, got {response!r}')
    kind = extra.get("kind", default_kind)
    if kind not in KINDS:
        raise ValueError(f'"kind" must be one of {list(KINDS)}, got {kind!r}' + (
            "" if "kind" in extra else " (or pass a default kind)"))
    fields = {}
    for key, default in (("id", str(line)), ("setting", "default"),
                         ("prompt_id", prompt_hash(prompt))):
        value = extra.get(key, default)
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise ValueError(f'"{key}" must be a non-empty string, got {value!r}')
        fields[key] = value
    return GenerationRow(line, fields["id"], fields["setting"], fields["prompt_id"], kind,
                         prompt, response, _parse_preference(extra.get("preference")))


def read_generations(path: str | Path, default_kind: str | None = None
                     ) -> tuple[list[GenerationRow], list[RowError]]:
    """Every usable row of a generations JSONL file, and the bad ones with their line numbers
    (a repeated id is a bad row: scores are joined by id)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such generations file")
    rows: list[GenerationRow] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for number, raw, error in json_lines(path):
        if error is not None:
            errors.append(RowError(number, error))
            continue
        try:
            row = parse_generation_row(raw, number, default_kind)
        except ValueError as err:
            errors.append(RowError(number, str(err)))
            continue
        if row.id in seen:
            errors.append(RowError(number, f'"id" {row.id!r} repeats line {seen[row.id]}'))
            continue
        seen[row.id] = number
        rows.append(row)
    return rows, errors


# ---------------------------------------------------------------------------- scoring
def score_rows(rows: Sequence[GenerationRow], judges: Sequence[Judge],
               progress: bool = False) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Score rows (the metrics' input, with every judge's output under "judges") and, per
    top-level field, the judge it comes from: the first judge, in the order given, that gives
    that field for any row. One judge per field for the whole file, so that no rate mixes
    judges from row to row (a row that judge left out has no value for it)."""
    items = [row.judge_input() for row in rows]
    outputs = {judge.name: judge.judge(items, progress=progress) for judge in judges}
    sources: dict[str, str] = {}
    for judge in judges:
        for judgement in outputs[judge.name]:
            for attribute, value in judgement.scores.items():
                if math.isfinite(value):
                    sources.setdefault(f"scores.{attribute}", judge.name)
            for flag in FLAGS:
                if getattr(judgement, flag) is not None:
                    sources.setdefault(flag, judge.name)
    scored = []
    for index, row in enumerate(rows):
        out: dict[str, Any] = {
            "id": row.id, "setting": row.setting, "prompt_id": row.prompt_id,
            "kind": "harmful" if row.kind == "harmful" else "benign", "subset": row.kind}
        if row.preference is not None:
            out["preference"] = row.preference
        scores: dict[str, float] = {}
        for field, name in sources.items():
            judgement = outputs[name][index]
            if field.startswith("scores."):
                value = judgement.scores.get(field[len("scores."):])
                if value is not None and math.isfinite(value):
                    scores[field[len("scores."):]] = value
            elif getattr(judgement, field) is not None:
                out[field] = getattr(judgement, field)
        out["scores"] = scores
        out["judges"] = {judge.name: outputs[judge.name][index].to_json() for judge in judges}
        out["prompt"], out["response"] = row.prompt, row.response
        scored.append(out)
    return scored, sources


def restrict_preferences(scored: list[dict[str, Any]]) -> list[str]:
    """Drops, from every row's preference, attributes that no judge scored (a sweep is measured
    on scored attributes only; a preference left with no weight is dropped). Returns the
    attributes dropped."""
    have = {a for row in scored for a in row["scores"]}
    dropped: set[str] = set()
    for row in scored:
        preference = row.get("preference")
        if preference is None:
            continue
        dropped.update(a for a in preference if a not in have)
        kept = {a: w for a, w in preference.items() if a in have}
        if sum(kept.values()) > 0:
            row["preference"] = kept
        else:
            del row["preference"]
    return sorted(dropped)


def rows_for_judge(scored: Sequence[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The score rows as one judge alone sees them (its scores and flags only; no preference,
    since a sweep needs the attributes every judge together scored)."""
    out = []
    for row in scored:
        own = row["judges"][name]
        view = {k: row[k] for k in ("id", "setting", "prompt_id", "kind") if k in row}
        view["scores"] = {k: v for k, v in own["scores"].items() if math.isfinite(v)}
        view.update({flag: own[flag] for flag in FLAGS if flag in own})
        out.append(view)
    return out


def judge_agreement(judges: Sequence[Judge], rows: Sequence[dict] | None = None,
                    progress: bool = False) -> dict[str, dict[str, Any]]:
    """Each flag-giving judge's accuracy and Cohen's kappa against the labelled set."""
    rows = validation.load_validation_set() if rows is None else rows
    items = [JudgeInput(r["id"], r["prompt"], r["response"], r["kind"]) for r in rows]
    out = {}
    for judge in judges:
        if isinstance(judge, ExternalJudge):  # its scores are for the generations, not these
            continue
        predictions = {item.id: {flag: getattr(j, flag) for flag in FLAGS
                                 if getattr(j, flag) is not None}
                       for item, j in zip(items, judge.judge(items, progress=progress))}
        result = validation.judge_agreement(predictions, rows)
        if result:
            out[judge.name] = result
    return out


def pairwise_win_rates(rows: Sequence[GenerationRow], judge: RubricJudge, reference: str,
                       seed: int = 0, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Head-to-head verdicts of a rubric judge: each setting's response vs the reference's for
    the same prompt (first row of each), per rubric attribute that applies to the prompt."""
    by_setting: dict[str, dict[str, GenerationRow]] = {}
    for row in rows:
        by_setting.setdefault(row.setting, {}).setdefault(row.prompt_id, row)
    if reference not in by_setting:
        raise ValueError(f"reference setting {reference!r} is not in the generations "
                         f"(settings: {', '.join(by_setting)})")
    out: dict[str, dict[str, Any]] = {}
    for setting, prompts in by_setting.items():
        if setting == reference:
            continue
        counts: dict[str, dict[str, int]] = {}
        shared = [p for p in prompts if p in by_setting[reference]]
        for criterion in (c for c in RUBRICS if c in judge.criteria):
            pairs = [(prompts[p], by_setting[reference][p]) for p in shared
                     if criterion in CRITERIA_BY_KIND[prompts[p].kind]]
            if not pairs:
                continue
            verdicts = judge.pairwise([a.prompt for a, _ in pairs], [a.response for a, _ in pairs],
                                      [b.response for _, b in pairs], criterion, seed, progress)
            tally = {"win": 0, "tie": 0, "loss": 0}
            for verdict, _ in verdicts:
                tally[{"a": "win", "b": "loss", "tie": "tie"}[verdict]] += 1
            counts[criterion] = {**tally, "win_rate": tally["win"] / len(verdicts)}
        out[setting] = counts
    return out


def rubric_format(scored: Sequence[dict[str, Any]], judges: Sequence[Judge]
                  ) -> dict[str, dict[str, float]]:
    """Per rubric judge, how well it kept to the answer format: the probability it put on a
    valid score token (median, min, max over its 1-10 scores) and the mean and spread of those
    scores. A judge that rarely answers with a number, or gives every answer the same score, is
    not measuring anything."""
    out = {}
    for judge in judges:
        if not isinstance(judge, RubricJudge):
            continue
        own = [row["judges"][judge.name] for row in scored]
        mass = [v for j in own for k, v in j.get("extra", {}).items() if k.endswith("_mass")]
        scores = [v for j in own for v in j["scores"].values() if math.isfinite(v)]
        if mass and scores:
            out[judge.name] = {"scores": len(scores), "mass_median": float(np.median(mass)),
                               "mass_min": float(np.min(mass)), "mass_max": float(np.max(mass)),
                               "score_mean": float(np.mean(scores)),
                               "score_sd": float(np.std(scores))}
    return out


# ---------------------------------------------------------------------------- the stage
def evaluate(generations: str | Path, out: str | Path, settings: EvaluateSettings,
             *, mesh=None, dtype=None, overwrite: bool = False, progress: bool = True,
             validation_rows: Sequence[dict] | None = None) -> dict[str, Any]:
    """Scores `generations` with every judge and writes `out/` (scores.jsonl, metrics.json,
    report.md and its figures) as one output folder. Returns the metrics."""
    rows, errors = read_generations(generations, settings.kind)
    for error in errors:
        print(f"{generations}: skipped {error}")
    if not rows:
        raise ValueError(f"{generations}: no usable generation rows")
    judges = [load_judge(spec, dtype=dtype, mesh=mesh, batch_size=settings.batch_size)
              for spec in settings.judge]
    scored, sources = score_rows(rows, judges, progress)
    unscored = restrict_preferences(scored)
    if unscored:
        print(f"note: no judge scores {unscored}; preference sweeps are measured on the "
              "attributes the judges score")
    for judge in judges:
        if isinstance(judge, ExternalJudge) and judge.missing:
            print(f"judge {judge.name}: no external scores for {judge.missing} of {len(rows)} "
                  "rows")
    result = metrics.compute_metrics(scored, settings.reference, resamples=settings.resamples,
                                     seed=settings.seed)
    per_judge = {judge.name: metrics.compute_metrics(
        rows_for_judge(scored, judge.name), settings.reference, resamples=settings.resamples,
        seed=settings.seed) for judge in judges} if len(judges) > 1 else None
    if settings.pairwise is not None:
        rubric = next(j for j in judges if j.name == settings.pairwise)
        result["pairwise_win_rates"] = pairwise_win_rates(rows, rubric, settings.reference,
                                                          settings.seed, progress)
    agreement = (judge_agreement(judges, validation_rows, progress) if settings.validate
                 else None)
    result.update(sources=sources, judges=list(settings.judge),
                  generations=str(generations), rows=len(rows),
                  skipped=[str(e) for e in errors], agreement=agreement,
                  unscored_preference_attributes=unscored,
                  rubric_format=rubric_format(scored, judges))
    if per_judge:
        result["per_judge"] = per_judge

    def write(folder: Path) -> None:
        with (folder / "scores.jsonl").open("w", encoding="utf-8") as handle:
            for row in scored:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        (folder / "metrics.json").write_text(json.dumps(result, indent=2))
        judge_report.write_report_files(folder, result, per_judge=per_judge,
                                        agreement=agreement, title="Evaluation of "
                                        f"{Path(generations).name}")

    write_output_folder(out, "evaluation", write, overwrite)
    return result
