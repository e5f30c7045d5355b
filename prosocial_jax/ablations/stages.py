"""The stages: what DiReg, the Pv-Arm and its safety stage each add, alone and together.

The same held-out harmful and benign prompts, decoded greedily with the same budget, by

- "base": the base model, plain decoding;
- "DiReg": the DiReg-edited model, plain decoding;
- "Pv-Arm": the base model guided by the Pv-Arm, no safety stage (tau = inf);
- "Pv-Arm + safety": the base model guided by the Pv-Arm with the safety stage;
- "all three": the DiReg-edited model guided by the Pv-Arm with the safety stage;
- "all three + no-repeat" (only when `no_repeat_ngram` > 0): the same, with the no-repeat
  rule, as `make demo` decodes. It is a separate row because the rule forbids exactly what the
  degeneracy judge looks for (a repeated 4-gram): the stages above run without it, so that
  their degeneracy is the stage's own.

Guided stages use the uniform preference over the adapter's attributes. Every answer is scored
by the rule judge (`evaluation.judges`), and the evaluation stage's metrics
(`evaluation.metrics.setting_metrics`) give, per stage: leakage (harmful requests not refused),
over-refusal (plainly benign requests refused), degenerate answers, and the mean rule scores of
the five prosocial attributes on the non-harmful prompts, each with a bootstrap interval.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from prosocial_jax.ablations.report import write_ablation_report
from prosocial_jax.data.prompts import EvaluationPrompts
from prosocial_jax.evaluation import compare, metrics, reports
from prosocial_jax.evaluation.evaluate import read_generations, score_rows
from prosocial_jax.evaluation.judges import load_judge
from prosocial_jax.models.adapters import Adapter
from prosocial_jax.models.model import Model

NO_REPEAT = "all three + no-repeat"


def stage_settings(adapter: Adapter, no_repeat_ngram: int = 0) -> list[compare.Setting]:
    """The stages of the module docstring, as `compare` settings."""
    uniform = ",".join(f"{a}=1" for a in adapter.config.attributes)
    stages = [compare.Setting("base", "base"), compare.Setting("DiReg", "direg"),
              compare.Setting("Pv-Arm", "base", uniform, safety_stage=False, no_repeat_ngram=0),
              compare.Setting("Pv-Arm + safety", "base", uniform, no_repeat_ngram=0),
              compare.Setting("all three", "direg", uniform, no_repeat_ngram=0)]
    if no_repeat_ngram:
        stages.append(compare.Setting(NO_REPEAT, "direg", uniform,
                                      no_repeat_ngram=no_repeat_ngram))
    return stages


def stages(models: dict[str, Model], reward: Model, adapter: Adapter,
           prompts: EvaluationPrompts, chosen: compare.CompareSettings,
           progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Decodes every stage on `prompts` with `chosen`'s guidance and budget (its preference
    list is not used: every guided stage runs the uniform preference) and judges the answers.
    Returns (the results record, the scored rows: one per stage and prompt, with the text)."""
    settings = stage_settings(adapter, chosen.no_repeat_ngram)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="stages-") as folder:
        path = Path(folder) / "generations.jsonl"
        compare.run(models, reward, adapter, settings, prompts, chosen.guidance,
                    chosen.safety_margin, chosen.plausibility,
                    no_repeat_ngram=chosen.no_repeat_ngram,
                    max_new_tokens=chosen.max_new_tokens, batch_size=chosen.batch_size,
                    generations_path=path, progress=progress)
        generations, errors = read_generations(path)
    if errors:  # written by compare a moment ago: a bad row is a bug, not bad input
        raise RuntimeError(f"stages: unreadable generation rows {[str(e) for e in errors]}")
    seconds = time.perf_counter() - started
    scored, sources = score_rows(generations, [load_judge("rules")], progress)
    by_stage = metrics.compute_metrics(scored)["settings"]
    record = {
        "stages": [s.name for s in settings], "judge": "rules", "sources": sources,
        "harmful_prompts": len(prompts.harmful), "benign_prompts": len(prompts.benign),
        "plainly_benign_prompts": prompts.benign_kinds.count("benign"),
        "settings": {**dataclasses.asdict(chosen), "preferences": ["uniform"]},
        "decode_seconds": seconds,
        "metrics": {s.name: by_stage[s.name] for s in settings}}
    return record, scored


def _interval(value: float | None, interval: list[float] | None) -> str:
    if value is None:
        return "-"
    return f"{reports.percent(value)} [{reports.percent(interval[0])}, " \
           f"{reports.percent(interval[1])}]"


def table(record: dict[str, Any]) -> str:
    """One row per stage: leakage, over-refusal, degenerate (with 95% intervals) and the mean
    rule score of each prosocial attribute."""
    rows = []
    for name in record["stages"]:
        m = record["metrics"][name]
        rows.append([name, _interval(m["leakage"], m["leakage_ci"]),
                     _interval(m["over_refusal"], m["over_refusal_ci"]),
                     _interval(m["degenerate"], m["degenerate_ci"]),
                     *(reports.number(m["mean_scores"].get(a)) for a in compare.PROSOCIAL)])
    return reports.markdown_table(
        ["stage", "leakage (harmful)", "over-refusal (benign)", "degenerate",
         *compare.PROSOCIAL], rows)


def plot(record: dict[str, Any], path: str | Path) -> None:
    """Left: leakage, over-refusal and degenerate rates per stage, with their intervals;
    right: the mean rule score of each prosocial attribute per stage."""
    names = record["stages"]
    y = np.arange(len(names))
    figure = reports.new_figure(13, 0.5 * len(names) + 2.0)
    left, right = figure.subplots(1, 2, sharey=True)
    keys = (("leakage", "leakage (harmful)"), ("over_refusal", "over-refusal (benign)"),
            ("degenerate", "degenerate (all)"))
    height = 0.8 / len(keys)
    for index, (key, label) in enumerate(keys):
        values = np.array([record["metrics"][n][key] or 0.0 for n in names])
        low = np.array([(record["metrics"][n][f"{key}_ci"] or [0, 0])[0] for n in names])
        high = np.array([(record["metrics"][n][f"{key}_ci"] or [0, 0])[1] for n in names])
        left.barh(y - 0.4 + (index + 0.5) * height, 100 * values, height=height, label=label,
                  xerr=100 * np.stack([values - low, high - values]), capsize=2)
    left.set_xlabel("% of answers (rule judge; bars: 95% bootstrap intervals)")
    left.set_yticks(y, names)
    left.invert_yaxis()
    left.legend(loc="lower right", fontsize=8)
    width = 0.8 / len(compare.PROSOCIAL)
    for index, attribute in enumerate(compare.PROSOCIAL):
        right.barh(y - 0.4 + (index + 0.5) * width,
                   [record["metrics"][n]["mean_scores"].get(attribute) or 0.0 for n in names],
                   height=width, label=attribute)
    right.set_xlabel("mean rule score on the non-harmful prompts")
    right.legend(loc="lower right", fontsize=8)
    figure.suptitle(f"What each stage adds ({record['harmful_prompts']} harmful, "
                    f"{record['benign_prompts']} benign prompts, greedy)")
    figure.tight_layout()
    reports.save_figure(figure, path, dpi=110)


def write_report(record: dict[str, Any], scored: list[dict[str, Any]], out_dir: str | Path,
                 overwrite: bool = False) -> Path:
    """results.json, table.md, stages.png and scores.jsonl (every judged answer) in one
    output folder."""
    return write_ablation_report(out_dir, "stages ablation", record, table, plot, "stages.png",
                                 overwrite, jsonl={"scores.jsonl": scored})
