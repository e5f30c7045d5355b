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
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prosocial_jax.data import prompts as prompt_sets
from prosocial_jax.decoding.decode import generate
from prosocial_jax.evaluation import refusal as evaluate
from prosocial_jax.evaluation import scorers
from prosocial_jax.files import atomic_open, write_jsonl
from prosocial_jax.models.adapters import Adapter
from prosocial_jax.models.model import Model

PROSOCIAL = ("empathy", "sensitivity", "non_judgmental", "truthfulness", "helpfulness")


@dataclasses.dataclass(frozen=True)
class Setting:
    name: str
    model: str  # "base" or "direg"
    preference: str | None = None  # None: plain decoding
    safety_stage: bool = True


@dataclasses.dataclass
class Prompts:
    harmful: list[str]
    benign: list[dict[str, str]]  # {"prompt", "kind": "benign" | "prosocial"}

    @classmethod
    def held_out(cls, harmful_split: str = "test", harmful_limit: int | None = None,
                 preference_dev: str | Path | None = None, benign_limit: int | None = None):
        """HarmBench behaviours of `harmful_split`; benign prompts from the preference set's
        dev split (never trained on) when given, else aplomb's benign prompts."""
        harmful = [b["Behavior"] for b in prompt_sets.harmbench_behaviors(harmful_split)]
        if preference_dev is not None:
            seen, benign = set(), []
            for line in Path(preference_dev).read_text().splitlines():
                row = json.loads(line)
                if row["kind"] != "harmful" and row["prompt"] not in seen:
                    seen.add(row["prompt"])
                    benign.append({"prompt": row["prompt"], "kind": row["kind"]})
        else:
            benign = [{"prompt": p, "kind": "benign"} for p in prompt_sets.benign_prompts()]
        return cls(harmful[:harmful_limit], benign[:benign_limit])


def default_settings(adapter: Adapter, preferences: Sequence[str]) -> list[Setting]:
    uniform = ",".join(f"{a}=1" for a in adapter.config.attributes)
    settings = [Setting("base", "base"), Setting("DiReg", "direg"),
                Setting("Pv-Arm (no safety stage)", "base", uniform, safety_stage=False),
                Setting("Pv-Arm + safety", "base", uniform),
                Setting("DiReg + Pv-Arm + safety", "direg", uniform)]
    settings += [Setting(f"DiReg + Pv-Arm + safety [{p}]", "direg", p) for p in preferences]
    return settings


def _summarise(setting: Setting, harmful, benign, prompts: Prompts) -> dict[str, Any]:
    row: dict[str, Any] = {"setting": setting.name, "model": setting.model,
                           "preference": setting.preference,
                           "safety_stage": setting.preference is not None and setting.safety_stage}
    row["harmful_refused"] = evaluate.refusal_rate([g.text for g in harmful])
    # Over-refusal only on plainly benign requests: on the prosocial prompts (grief, stress...)
    # an empathetic "I'm sorry to hear that" would match HarmBench's refusal prefixes.
    plain = [g.text for p, g in zip(prompts.benign, benign) if p["kind"] == "benign"]
    row["benign_refused"] = evaluate.refusal_rate(plain) if plain else None
    for attribute in PROSOCIAL:
        scores = [getattr(scorers, attribute)(p["kind"], g.text)
                  for p, g in zip(prompts.benign, benign)]
        scores = [s for s in scores if s is not None]
        row[attribute] = float(np.mean(scores)) if scores else None
    guided = [g for g in (*harmful, *benign) if g.safety_overrides is not None]
    if guided:
        steps = sum(g.completion_tokens for g in guided)
        row["safety_override_rate"] = sum(g.safety_overrides for g in guided) / max(steps, 1)
        row["mean_safe_set"] = float(np.mean([g.mean_safe_set for g in guided]))
    return row


def run(models: dict[str, Model], reward: Model, adapter: Adapter, settings: Sequence[Setting],
        prompts: Prompts, guidance: float, safety_margin: float, max_new_tokens: int,
        batch_size: int = 32, generations_path: str | Path | None = None,
        progress: bool = True) -> list[dict[str, Any]]:
    """One summary row per setting (in order); generations optionally written as JSONL."""
    texts = [*prompts.harmful, *(p["prompt"] for p in prompts.benign)]
    split = len(prompts.harmful)
    results: dict[Setting, list] = {}
    # Plain settings one by one; guided settings grouped by (model, safety stage) so that
    # their preferences become rows of one batch.
    groups: dict[tuple[str, bool], list[Setting]] = {}
    for setting in settings:
        if setting.preference is None:
            results[setting] = generate(models[setting.model], texts,
                                        max_new_tokens=max_new_tokens, batch_size=batch_size,
                                        progress=progress)
        else:
            groups.setdefault((setting.model, setting.safety_stage), []).append(setting)
    for (model_name, safety_stage), group in groups.items():
        rows = generate(models[model_name], texts * len(group), max_new_tokens=max_new_tokens,
                        batch_size=batch_size, progress=progress, adapter=adapter, reward=reward,
                        preferences=[s.preference for s in group for _ in texts],
                        guidance=guidance, safety_margin=safety_margin,
                        safety_stage=safety_stage)
        for index, setting in enumerate(group):
            results[setting] = rows[index * len(texts):(index + 1) * len(texts)]
    if generations_path is not None:
        write_jsonl(generations_path, [
            {"setting": s.name, "prompt": g.prompt, "response": g.text,
             "kind": "harmful" if i < split else prompts.benign[i - split]["kind"],
             "safety_overrides": g.safety_overrides}
            for s in settings for i, g in enumerate(results[s])])
    return [_summarise(s, results[s][:split], results[s][split:], prompts) for s in settings]


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    def pct(value):
        return "" if value is None else f"{100 * value:.1f}%"

    def score(value):
        return "" if value is None else f"{value:.3f}"

    head = ("| setting | harmful refused | benign refused | "
            + " | ".join(PROSOCIAL) + " | safety overrides |")
    lines = [head, "|" + "---|" * (4 + len(PROSOCIAL))]
    for row in rows:
        overrides = pct(row.get("safety_override_rate")) if row["safety_stage"] else ""
        lines.append(f"| {row['setting']} | {pct(row['harmful_refused'])} | "
                     f"{pct(row['benign_refused'])} | "
                     + " | ".join(score(row[a]) for a in PROSOCIAL) + f" | {overrides} |")
    return "\n".join(lines)


def plot(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Refusal rates and attribute scores per setting, as grouped bars (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["setting"] for r in rows]
    y = np.arange(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 0.45 * len(rows) + 1.8), sharey=True)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
