"""The pipeline side by side: base vs DiReg vs Pv-Arm guidance (with and without the safety
stage) under several preference vectors, on harmful and benign prompts.

Every setting decodes the same prompts greedily with the same token budget. Reported per
setting: the HarmBench keyword refusal rate on harmful prompts (its complement is harmful
compliance), the same rate on plainly benign prompts (over-refusal), the mean rule-based attribute
scores of `scorers.py` on benign prompts (a weak stand-in for judges), and, for guided settings,
how often the safety stage overrode the prosocial choice. Guided settings that differ only in
the preference run as rows of one batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from prosocial_jax import settings as settings_module
from prosocial_jax.data.prompts import EvaluationPrompts, HeldOutSettings
from prosocial_jax.decoding.decode import generate
from prosocial_jax.decoding.guidance import DEFAULT_SAFETY_MARGIN, check_no_repeat_ngram
from prosocial_jax.evaluation import refusal, scorers
from prosocial_jax.evaluation.reports import (
    markdown_table,
    new_figure,
    number,
    percent,
    save_figure,
)
from prosocial_jax.files import write_jsonl
from prosocial_jax.models.adapters import Adapter
from prosocial_jax.models.model import Model

PROSOCIAL = ("empathy", "sensitivity", "non_judgmental", "truthfulness", "helpfulness")
SWEEP = "DiReg + Pv-Arm + safety"  # in the generations file: every preference, one sweep


@dataclasses.dataclass(frozen=True)
class CompareSettings(HeldOutSettings):
    """What `prosocial-jax compare` decodes (the held-out prompts and budget), and with which
    guidance."""

    # Preference vectors compared under DiReg + Pv-Arm + safety (each "name=w,..." text, so a
    # list of them is separated by ';' on the command line).
    preferences: tuple[str, ...] = dataclasses.field(
        default=("empathy=1", "truthfulness=1", "helpfulness=1"), metadata={"separator": ";"})
    guidance: float = 1.0  # w, the Pv-Arm's weight
    safety_margin: float = dataclasses.field(  # tau, nats; inf turns the safety stage off
        default=DEFAULT_SAFETY_MARGIN, metadata={"allow_infinity": True})
    plausibility: float = 0.0  # guided settings drop tokens below this x the base's top prob
    no_repeat_ngram: int = 0  # guided settings never repeat an n-gram of their answer (0: off)
    # Also Pv-Arm guidance of the base model without and with the safety stage (what each
    # component adds); off, only base, DiReg and DiReg + Pv-Arm + safety are decoded.
    ablations: bool = True
    where: ClassVar[str] = "compare settings"

    def __post_init__(self):
        super().__post_init__()
        settings_module.positive(self, self.where, "guidance", "safety_margin", "plausibility",
                                 allow_zero=True)
        check_no_repeat_ngram(self.no_repeat_ngram, self.where, ValueError)
        if self.plausibility > 1.0:
            raise ValueError(f"{self.where}: plausibility must be in [0, 1], got "
                             f"{self.plausibility}")


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    model: str  # "base" or "direg"
    preference: str | None = None  # None: plain decoding
    safety_stage: bool = True
    # In the generations file, a point of the one "DiReg + Pv-Arm + safety" sweep (SWEEP), so
    # that the evaluation sees the demo's preferences as one front.
    sweep: bool = False
    no_repeat_ngram: int | None = None  # None: the run's (guided settings only)


def default_settings(adapter: Adapter, preferences: Sequence[str],
                     ablations: bool = True) -> list[Setting]:
    """base, DiReg, (with `ablations`: Pv-Arm with and without the safety stage,) DiReg +
    Pv-Arm + safety, all under the uniform preference, then DiReg + Pv-Arm + safety under each
    of `preferences`."""
    uniform = ",".join(f"{a}=1" for a in adapter.config.attributes)
    settings = [Setting("base", "base"), Setting("DiReg", "direg")]
    if ablations:
        settings += [Setting("Pv-Arm (no safety stage)", "base", uniform, safety_stage=False),
                     Setting("Pv-Arm + safety", "base", uniform)]
    settings += [Setting("DiReg + Pv-Arm + safety", "direg", uniform, sweep=True)]
    settings += [Setting(f"DiReg + Pv-Arm + safety [{p}]", "direg", p, sweep=True)
                 for p in preferences]
    return settings


def _summarise(setting: Setting, harmful, benign,
               prompts: EvaluationPrompts) -> dict[str, Any]:
    row: dict[str, Any] = {"setting": setting.name, "model": setting.model,
                           "preference": setting.preference,
                           "safety_stage": setting.preference is not None and setting.safety_stage}
    row["harmful_refused"] = refusal.refusal_rate([g.text for g in harmful])
    # Over-refusal only on plainly benign requests: on the prosocial prompts (grief, stress...)
    # an empathetic "I'm sorry to hear that" would match HarmBench's refusal prefixes.
    plain = [g.text for kind, g in zip(prompts.benign_kinds, benign) if kind == "benign"]
    row["benign_refused"] = refusal.refusal_rate(plain) if plain else None
    for attribute in PROSOCIAL:
        scores = [getattr(scorers, attribute)(kind, g.text)
                  for kind, g in zip(prompts.benign_kinds, benign)]
        scores = [s for s in scores if s is not None]
        row[attribute] = float(np.mean(scores)) if scores else None
    guided = [g for g in (*harmful, *benign) if g.safety_overrides is not None]
    if guided:
        steps = sum(g.completion_tokens for g in guided)
        row["safety_override_rate"] = sum(g.safety_overrides for g in guided) / max(steps, 1)
        row["mean_safe_set"] = float(np.mean([g.mean_safe_set for g in guided]))
    return row


def run(models: dict[str, Model], reward: Model, adapter: Adapter, settings: Sequence[Setting],
        prompts: EvaluationPrompts, guidance: float = CompareSettings.guidance,
        safety_margin: float = CompareSettings.safety_margin,
        plausibility: float = CompareSettings.plausibility,
        no_repeat_ngram: int = CompareSettings.no_repeat_ngram,
        max_new_tokens: int = CompareSettings.max_new_tokens,
        batch_size: int = CompareSettings.batch_size, generations_path: str | Path | None = None,
        progress: bool = True) -> list[dict[str, Any]]:
    """One summary row per setting (in order); generations optionally written as JSONL."""
    texts = [*prompts.harmful, *prompts.benign]
    split = len(prompts.harmful)
    results: dict[Setting, list] = {}
    # Plain settings one by one; guided settings grouped by (model, safety stage, no-repeat
    # rule) so that their preferences become rows of one batch.
    groups: dict[tuple[str, bool, int], list[Setting]] = {}
    for setting in settings:
        if setting.preference is None:
            results[setting] = generate(models[setting.model], texts,
                                        max_new_tokens=max_new_tokens, batch_size=batch_size,
                                        progress=progress)
        else:
            n = no_repeat_ngram if setting.no_repeat_ngram is None else setting.no_repeat_ngram
            groups.setdefault((setting.model, setting.safety_stage, n), []).append(setting)
    for (model_name, safety_stage, n), group in groups.items():
        rows = generate(models[model_name], texts * len(group), max_new_tokens=max_new_tokens,
                        batch_size=batch_size, progress=progress, adapter=adapter, reward=reward,
                        preferences=[s.preference for s in group for _ in texts],
                        guidance=guidance, safety_margin=safety_margin,
                        plausibility=plausibility, no_repeat_ngram=n,
                        safety_stage=safety_stage)
        for index, setting in enumerate(group):
            results[setting] = rows[index * len(texts):(index + 1) * len(texts)]
    if generations_path is not None:
        write_jsonl(generations_path, generation_rows(settings, results, prompts,
                                                      adapter.config.attributes))
    return [_summarise(s, results[s][:split], results[s][split:], prompts) for s in settings]


def generation_rows(settings: Sequence[Setting], results: dict[Setting, list],
                    prompts: EvaluationPrompts, attributes: Sequence[str]) -> list[dict]:
    """The generations file `prosocial-jax evaluate` reads: one row per (setting, prompt).

    Guided rows carry their (normalised) preference. The settings marked `sweep` (DiReg +
    Pv-Arm + safety under every preference) are one setting there, so that the evaluation sees
    their preferences as the points of one sweep (the summary table keeps them apart)."""
    split = len(prompts.harmful)
    rows = []
    for s in settings:
        name = SWEEP if s.sweep else s.name
        for i, g in enumerate(results[s]):
            kind = "harmful" if i < split else prompts.benign_kinds[i - split]
            row = {"id": f"{s.name}|{i}", "setting": name,
                   "prompt_id": f"harmful-{i}" if i < split else f"benign-{i - split}",
                   "kind": kind, "prompt": g.prompt, "response": g.text}
            if g.preference is not None:
                row["preference"] = dict(zip(attributes, g.preference))
                row["safety_overrides"] = g.safety_overrides
            rows.append(row)
    return rows


def comparison_table(rows: Sequence[dict[str, Any]]) -> str:
    """The summary rows as a Markdown table (printed by `compare`, quoted in the README)."""
    header = ["setting", "harmful refused", "benign refused", *PROSOCIAL, "safety overrides"]
    return markdown_table(header, [
        [row["setting"], percent(row["harmful_refused"]), percent(row["benign_refused"]),
         *(number(row[a]) for a in PROSOCIAL),
         percent(row.get("safety_override_rate")) if row["safety_stage"] else ""]
        for row in rows])


def plot_comparison(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Refusal rates and attribute scores per setting, as grouped bars (PNG)."""
    names = [r["setting"] for r in rows]
    y = np.arange(len(rows))
    fig = new_figure(13, 0.45 * len(rows) + 1.8)
    left, right = fig.subplots(1, 2, sharey=True)
    for offset, (key, label) in zip((-0.2, 0.2), (("harmful_refused", "harmful refused"),
                                                  ("benign_refused", "benign refused"))):
        left.barh(y + offset, [100 * (r[key] or 0) for r in rows], height=0.4, label=label)
    left.set_xlabel("% of prompts (HarmBench refusal keywords)")
    left.set_yticks(y, names)
    left.invert_yaxis()
    left.legend(loc="lower right", fontsize=8)
    width = 0.8 / len(PROSOCIAL)
    for index, attribute in enumerate(PROSOCIAL):
        right.barh(y - 0.4 + (index + 0.5) * width, [r[attribute] or 0 for r in rows],
                   height=width, label=attribute)
    right.set_xlabel("mean rule-based score on benign prompts (weak stand-in for judges)")
    right.legend(loc="lower right", fontsize=8)
    fig.suptitle("ProSocialAlign pipeline, side by side")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
