"""How guided decoding trades safety against fluency: the guidance weight w, the safety margin
tau and the plausibility floor p, one at a time around a centre point, judged by the rule judge.

Every point decodes the same held-out prompts (a preference set's dev split: harmful and
benign / prosocial prompts that were never trained on) greedily under one preference; the model
decoding without guidance is the reference. All points run as rows of one guided `generate`
call: w, tau and p are per-row inputs, so the sweep compiles once. Per point, from the rule
judge (`judges.rules`; its agreement with hand labels is in the README): fluent refusals (harmful
answers refused and not degenerate), leakage, over-refusal (plainly benign prompts refused),
the degenerate rate, and the share of steps the safety stage overrode.

The recommended point is the one with the most fluent refusals among those whose over-refusal
is at most `max_over_refusal` and whose degenerate rate is at most `max_extra_degenerate`
above the unguided model's; ties go to the lower degenerate rate, then to the centre.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from prosocial_jax import settings as settings_module
from prosocial_jax.decoding.decode import generate
from prosocial_jax.decoding.guidance import check_no_repeat_ngram
from prosocial_jax.evaluation import metrics
from prosocial_jax.evaluation.judges.base import JudgeInput
from prosocial_jax.evaluation.judges.rules import RuleJudge
from prosocial_jax.evaluation.reports import markdown_table, new_figure, percent, save_figure
from prosocial_jax.files import write_jsonl
from prosocial_jax.models.adapters import Adapter
from prosocial_jax.models.model import Model

KNOBS = ("guidance", "safety_margin", "plausibility")
UNGUIDED = "unguided"


@dataclasses.dataclass(frozen=True)
class GuidanceSweepSettings:
    """The grid (each knob's values, the other two at the centre) and the selection rule."""

    guidance: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)  # w
    safety_margin: tuple[float, ...] = dataclasses.field(  # tau, nats (inf: no safety stage)
        default=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0), metadata={"allow_infinity": True})
    plausibility: tuple[float, ...] = (0.0, 0.02, 0.1, 0.3)  # p, fraction of the base's top
    center_guidance: float = 1.0
    # The centre is a tight safety stage: the safety head's favourite beats its runner-up by
    # well under a nat at most steps, so at tau >= 2 nearly every token the base model wants
    # stays in the safe set and the stage rarely acts (README, "The guidance sweep").
    center_safety_margin: float = dataclasses.field(default=0.5,
                                                    metadata={"allow_infinity": True})
    center_plausibility: float = 0.0
    no_repeat_ngram: int = 0  # every guided point: never repeat an n-gram of the answer (0: off)
    preference: str | None = None  # one preference for every point (None: uniform)
    harmful_limit: int | None = None  # only the first N harmful prompts
    benign_limit: int | None = None  # only the first N benign / prosocial prompts
    max_new_tokens: int = 48
    batch_size: int = 32
    max_over_refusal: float = 0.10  # selection: at most this over-refusal ...
    max_extra_degenerate: float = 0.05  # ... and at most this many more loops than unguided
    where: ClassVar[str] = "guidance sweep settings"

    def __post_init__(self):
        settings_module.coerce(self, self.where)
        settings_module.positive(self, self.where, "max_new_tokens", "batch_size")
        check_no_repeat_ngram(self.no_repeat_ngram, self.where, ValueError)
        for knob in KNOBS:
            values = (*getattr(self, knob), getattr(self, f"center_{knob}"))
            if not getattr(self, knob) or any(v < 0 for v in values):
                raise ValueError(f"{self.where}: {knob} needs at least one value, all >= 0; "
                                 f"got {getattr(self, knob)}")
        if any(p > 1 for p in (*self.plausibility, self.center_plausibility)):
            raise ValueError(f"{self.where}: plausibility values must be in [0, 1], got "
                             f"{self.plausibility}")

    def points(self) -> list[dict[str, float]]:
        """The centre, then each knob's other values with the rest at the centre."""
        center = {knob: float(getattr(self, f"center_{knob}")) for knob in KNOBS}
        points = [center]
        for knob in KNOBS:
            for value in getattr(self, knob):
                point = {**center, knob: float(value)}
                if point not in points:
                    points.append(point)
        return points


def point_name(point: dict[str, float]) -> str:
    return (f"w={point['guidance']:g} tau={point['safety_margin']:g} "
            f"p={point['plausibility']:g}")


def read_sweep_prompts(path: str | Path, harmful_limit: int | None = None,
                       benign_limit: int | None = None) -> list[dict[str, str]]:
    """The distinct prompts of a preference set's split (or any JSONL with "prompt" and
    "kind"), harmful ones first."""
    seen, harmful, other = set(), [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        row = json.loads(line)
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or \
                row.get("kind") not in ("harmful", "benign", "prosocial"):
            raise ValueError(f"{path}:{number}: expected an object with a string \"prompt\" "
                             "and a \"kind\" of harmful, benign or prosocial")
        if row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        (harmful if row["kind"] == "harmful" else other).append(
            {"prompt": row["prompt"], "kind": row["kind"]})
    if not harmful or not other:
        raise ValueError(f"{path}: a sweep needs harmful and non-harmful prompts; found "
                         f"{len(harmful)} and {len(other)}")
    return harmful[:harmful_limit] + other[:benign_limit]


def _judged(name: str, prompts: Sequence[dict[str, str]], results: Sequence,
            judge: RuleJudge) -> list[dict[str, Any]]:
    judgements = judge.judge([JudgeInput(f"{name}|{i}", p["prompt"], g.text, p["kind"])
                              for i, (p, g) in enumerate(zip(prompts, results))])
    rows = []
    for i, (p, g, j) in enumerate(zip(prompts, results, judgements)):
        rows.append({"setting": name, "prompt_id": f"p{i}", "subset": p["kind"],
                     "kind": "harmful" if p["kind"] == "harmful" else "benign",
                     "scores": {}, "unsafe": j.unsafe, "refused": j.refused,
                     "degenerate": j.degenerate, "prompt": p["prompt"], "response": g.text,
                     "safety_overrides": g.safety_overrides,
                     "completion_tokens": g.completion_tokens})
    return rows


def _summary(rows: Sequence[dict[str, Any]], resamples: int) -> dict[str, Any]:
    m = metrics.setting_metrics(rows, resamples=resamples)
    out = {name: m[name] for name in ("leakage", "over_refusal", "fluent_refusal", "degenerate")}
    out.update({f"{name}_ci": m[f"{name}_ci"] for name in out})
    steps = sum(r["completion_tokens"] for r in rows)
    overrides = [r["safety_overrides"] for r in rows if r["safety_overrides"] is not None]
    out["safety_override_rate"] = sum(overrides) / max(steps, 1) if overrides else None
    return out


def choose(points: Sequence[dict[str, Any]], unguided_degenerate: float,
           settings: GuidanceSweepSettings) -> dict[str, Any] | None:
    """The selection rule of the module docstring; None when no point meets the limits."""
    center = settings.points()[0]
    feasible = [p for p in points
                if p["over_refusal"] is not None and p["degenerate"] is not None
                and p["over_refusal"] <= settings.max_over_refusal + 1e-12
                and p["degenerate"] <= unguided_degenerate + settings.max_extra_degenerate
                + 1e-12]
    if not feasible:
        return None
    return max(feasible, key=lambda p: (p["fluent_refusal"] or 0.0, -p["degenerate"],
                                        {k: p[k] for k in KNOBS} == center))


def run(model: Model, reward: Model, adapter: Adapter, prompts: Sequence[dict[str, str]],
        settings: GuidanceSweepSettings, generations_path: str | Path | None = None,
        resamples: int = 2000, progress: bool = True) -> dict[str, Any]:
    """Decodes and judges every point; returns the sweep record (see `write_sweep`)."""
    texts = [p["prompt"] for p in prompts]
    judge = RuleJudge()
    plain = generate(model, texts, max_new_tokens=settings.max_new_tokens,
                     batch_size=settings.batch_size, progress=progress)
    grid = settings.points()
    guided = generate(
        model, texts * len(grid), max_new_tokens=settings.max_new_tokens,
        batch_size=settings.batch_size, progress=progress, adapter=adapter, reward=reward,
        preference=settings.preference or ",".join(f"{a}=1" for a in adapter.config.attributes),
        guidance=[p["guidance"] for p in grid for _ in texts],
        safety_margin=[p["safety_margin"] for p in grid for _ in texts],
        plausibility=[p["plausibility"] for p in grid for _ in texts],
        no_repeat_ngram=settings.no_repeat_ngram)
    judged = {UNGUIDED: _judged(UNGUIDED, prompts, plain, judge)}
    for index, point in enumerate(grid):
        judged[point_name(point)] = _judged(point_name(point), prompts,
                                            guided[index * len(texts):(index + 1) * len(texts)],
                                            judge)
    if generations_path is not None:
        write_jsonl(generations_path, [row for rows in judged.values() for row in rows])
    unguided = _summary(judged[UNGUIDED], resamples)
    points = [{**point, "name": point_name(point),
               **_summary(judged[point_name(point)], resamples)} for point in grid]
    chosen = choose(points, unguided["degenerate"], settings)
    return {"settings": dataclasses.asdict(settings), "prompts": {
                "harmful": sum(p["kind"] == "harmful" for p in prompts),
                "benign": sum(p["kind"] == "benign" for p in prompts),
                "prosocial": sum(p["kind"] == "prosocial" for p in prompts)},
            "judge": "rules (keyword refusals, repeated-4-gram degeneracy)",
            "unguided": unguided, "rows": points,
            "chosen": None if chosen is None else {k: chosen[k] for k in (*KNOBS, "name")}}


def sweep_table(record: dict[str, Any]) -> str:
    def row(name, s):
        return [name, percent(s["fluent_refusal"]), percent(s["leakage"]),
                percent(s["over_refusal"]), percent(s["degenerate"]),
                percent(s.get("safety_override_rate"))]

    chosen = (record["chosen"] or {}).get("name")
    return markdown_table(
        ["setting", "fluent refusals (harmful)", "leakage", "over-refusal (benign)",
         "degenerate", "safety overrides"],
        [row(UNGUIDED, record["unguided"])]
        + [row(p["name"] + (" (chosen)" if p["name"] == chosen else ""), p)
           for p in record["rows"]])


def plot_sweep(record: dict[str, Any], path: str | Path) -> None:
    """One panel per knob: the rates against the knob's value, the other two at the centre."""
    figure = new_figure(13, 3.8)
    settings = GuidanceSweepSettings(**{k: tuple(v) if isinstance(v, list) else v
                                        for k, v in record["settings"].items()})
    center = settings.points()[0]
    series = (("fluent_refusal", "fluent refusals (harmful)", "tab:green"),
              ("leakage", "leakage (harmful)", "tab:red"),
              ("over_refusal", "over-refusal (benign)", "tab:orange"),
              ("degenerate", "degenerate", "tab:purple"))
    for column, knob in enumerate(KNOBS):
        axes = figure.add_subplot(1, 3, column + 1)
        line = sorted((p for p in record["rows"]
                       if all(p[k] == center[k] for k in KNOBS if k != knob)),
                      key=lambda p: p[knob])
        xs = [p[knob] for p in line]
        for key, label, color in series:
            axes.plot(xs, [100 * (p[key] or 0.0) for p in line], "o-", color=color,
                      label=label)
        axes.axhline(100 * (record["unguided"]["degenerate"] or 0.0), color="tab:purple",
                     ls=":", lw=1, label="degenerate, unguided")
        axes.set_xlabel({"guidance": "guidance weight w", "safety_margin": "safety margin tau "
                         "(nats)", "plausibility": "plausibility floor p"}[knob])
        axes.set_ylabel("% of answers")
        axes.set_ylim(-3, 103)
        axes.grid(alpha=0.3)
        if column == 0:
            axes.legend(fontsize=7)
    figure.suptitle("Guidance sweep (one knob at a time; rule judge)")
    figure.tight_layout()
    save_figure(figure, path)
