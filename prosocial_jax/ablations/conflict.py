"""Conflict mitigation: PCGrad vs the plain weighted sum vs K separately trained adapters.

Three ways to serve K attributes from the same backbone, pairs and training steps:

- "PCGrad": one Pv-Arm, the K attribute gradients projected by PCGrad (`train_arm`);
- "weighted sum": one Pv-Arm, the plain preference-weighted sum of those gradients
  (`pcgrad=False`);
- "separate": K single-attribute adapters, each trained for the same number of steps on the
  pairs labelled for its attribute (K times the training compute), decoded together as the
  GenARM-style multi-ARM (`models.adapters.AdapterSet`: every member runs every step).

Reported per method: training time and trained parameters; the held-out pairwise accuracy of
every attribute under its own one-hot (`evaluation.preference_accuracy`, on one seeded sample
of held-out pairs for all three); and a preference sweep: held-out prompts answered under every
point of a simplex grid (guided decoding with the safety stage, the same w and tau), judged by
the rule judge. A sweep's MIP and hypervolume (`evaluation.metrics.sweep_metrics`) normalise
by that sweep's own points, so the three fronts are also measured on one common scale: scores
min-max normalised over the points of all three, hypervolume above their componentwise worst.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import numpy as np

from prosocial_jax import settings as settings_module
from prosocial_jax.ablations.report import write_ablation_report
from prosocial_jax.data.preferences import PreferencePair, encode_pairs
from prosocial_jax.decoding.guidance import DEFAULT_SAFETY_MARGIN
from prosocial_jax.decoding.sweep import simplex_grid, sweep
from prosocial_jax.evaluation import metrics, reports
from prosocial_jax.evaluation.evaluate import GenerationRow, restrict_preferences, score_rows
from prosocial_jax.evaluation.judges import load_judge
from prosocial_jax.evaluation.preference_accuracy import evaluate_adapter
from prosocial_jax.files import check_output_folder
from prosocial_jax.models.adapters import (
    Adapter,
    AdapterConfig,
    AdapterSet,
    load_adapter,
    save_adapter_set,
    single_attribute_config,
)
from prosocial_jax.models.model import Model
from prosocial_jax.pvarm.train import ArmSettings, sample_held_out, train_arm

METHODS = ("PCGrad", "weighted sum", "separate")


@dataclasses.dataclass(frozen=True)
class ConflictSettings:
    """The sweep each method decodes, and adapters trained before (to reuse)."""

    step: float = 0.5  # simplex grid step (0.5 over six attributes: 21 points + the centre)
    prompts: int = 16  # held-out non-harmful prompts answered at every grid point
    max_new_tokens: int = 48
    guidance: float = 1.0
    safety_margin: float = dataclasses.field(default=DEFAULT_SAFETY_MARGIN,
                                             metadata={"allow_infinity": True})
    no_repeat_ngram: int = 0
    # Adapters already trained with these pairs and settings (e.g. by `make pvarm`): loaded
    # instead of trained (their training time is then not measured).
    pcgrad_adapter: str | None = None
    sum_adapter: str | None = None
    # Where to keep the single-attribute adapters trained here (an adapter set folder, replaced
    # if it is one this wrote), e.g. for the overhead ablation's multi-ARM (`arms`).
    save_separate: str | None = None
    where: ClassVar[str] = "conflict settings"

    def __post_init__(self):
        settings_module.coerce(self, self.where)
        settings_module.positive(self, self.where, "step", "prompts", "max_new_tokens")
        settings_module.positive(self, self.where, "guidance", "safety_margin",
                                 "no_repeat_ngram", allow_zero=True)


def _trained_parameters(adapter: Adapter | AdapterSet) -> int:
    return sum(int(np.size(x)) for x in jax.tree.leaves(adapter.params))


def train_methods(model: Model, adapter_config: AdapterConfig,
                  train: Sequence[PreferencePair], settings: ArmSettings,
                  ablation: ConflictSettings, progress: bool = True
                  ) -> tuple[dict[str, Adapter | AdapterSet], dict[str, float | None]]:
    """The three methods' adapters and their training seconds (None: loaded, not trained)."""
    attributes = adapter_config.attributes
    trained: dict[str, Adapter | AdapterSet] = {}
    seconds: dict[str, float | None] = {}
    with tempfile.TemporaryDirectory(prefix="conflict-") as checkpoints:
        def fit(config: AdapterConfig, run: ArmSettings, name: str, keep_labelled: bool):
            examples = encode_pairs(train, model.tokenizer, config.attributes, run.max_len)
            if keep_labelled:  # a single attribute: only the pairs that label it
                examples = [e for e in examples if e.labels[0]]
            adapter, _, _ = train_arm(model, config, examples, [], run,
                                      Path(checkpoints) / name, progress=progress)
            return adapter

        for name, path, pcgrad in (("PCGrad", ablation.pcgrad_adapter, True),
                                   ("weighted sum", ablation.sum_adapter, False)):
            started = time.perf_counter()
            if path is not None:
                trained[name], seconds[name] = load_adapter(path, model.config), None
                if trained[name].config.attributes != attributes:
                    raise ValueError(f"{path}: attributes {trained[name].config.attributes}, "
                                     f"expected {attributes}")
                continue
            trained[name] = fit(adapter_config, dataclasses.replace(settings, pcgrad=pcgrad),
                                name.replace(" ", "-"), False)
            seconds[name] = time.perf_counter() - started
        started = time.perf_counter()
        members = tuple(fit(single_attribute_config(adapter_config, attribute),
                            settings.for_attributes([i]), f"single-{attribute}", True)
                        for i, attribute in enumerate(attributes))
        trained["separate"] = AdapterSet(members, adapter_config.safety_attribute)
        seconds["separate"] = time.perf_counter() - started
    return trained, seconds


def held_out_accuracy(model: Model, adapter: Adapter | AdapterSet,
                      held_out: Sequence[PreferencePair], settings: ArmSettings,
                      progress: bool) -> dict[str, float | None]:
    """Each attribute's held-out accuracy under its own one-hot (for an adapter set: its
    member's, under its one attribute)."""
    def accuracy(member: Adapter) -> np.ndarray:
        config = member.config
        encoded = encode_pairs(held_out, model.tokenizer, config.attributes, settings.max_len)
        if not encoded:  # no held-out pair labels the member's attribute
            return np.full(config.num_attributes, np.nan)
        result = evaluate_adapter(model, member, encoded, np.eye(config.num_attributes,
                                                                 dtype=np.float32),
                                  settings.max_len, settings.eval_batch_size, progress)
        return np.diag(np.asarray(result["accuracy"], dtype=float))

    if isinstance(adapter, AdapterSet):
        values = [accuracy(member)[0] for member in adapter.adapters]
    else:
        values = list(accuracy(adapter))
    return {a: None if np.isnan(v) else float(v)
            for a, v in zip(adapter.config.attributes, values)}


def _sweep_rows(model: Model, method: str, adapter: Adapter | AdapterSet,
                prompts: Sequence[tuple[str, str]], grid: np.ndarray,
                ablation: ConflictSettings, progress: bool) -> list[GenerationRow]:
    answers = sweep(model, [text for text, _ in prompts], adapter, grid,
                    max_new_tokens=ablation.max_new_tokens, guidance=ablation.guidance,
                    safety_margin=ablation.safety_margin,
                    no_repeat_ngram=ablation.no_repeat_ngram, progress=progress)
    names = adapter.config.attributes
    return [GenerationRow(0, f"{method}|{i}|{j}", method, f"prompt-{i}", kind, text,
                          g.text or "", dict(zip(names, map(float, grid[j]))))
            for i, ((text, kind), row) in enumerate(zip(prompts, answers))
            for j, g in enumerate(row)]


def conflict(model: Model, adapter_config: AdapterConfig, train: Sequence[PreferencePair],
             dev: Sequence[PreferencePair], prompts: Sequence[tuple[str, str]],
             settings: ArmSettings, ablation: ConflictSettings | None = None,
             progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Trains (or loads) the three methods, scores their held-out accuracy and sweeps
    `prompts` ((text, kind) pairs) under the grid. Returns (the record, the judged answers)."""
    ablation = ablation or ConflictSettings()
    if ablation.save_separate is not None:  # refused before training, not after
        check_output_folder(ablation.save_separate, "adapter set", overwrite=True,
                            flag="a new ablation.save_separate")
    attributes = adapter_config.attributes
    grid = simplex_grid(attributes, ablation.step)
    trained, seconds = train_methods(model, adapter_config, train, settings, ablation,
                                     progress)
    if ablation.save_separate is not None:
        save_adapter_set(trained["separate"], ablation.save_separate, overwrite=True)
    held_out = sample_held_out(list(dev), settings.eval_limit, settings.seed)
    rows: list[GenerationRow] = []
    record: dict[str, Any] = {"attributes": list(attributes), "train_pairs": len(train),
                              "dev_pairs": len(held_out), "grid_points": len(grid),
                              "prompts": len(prompts), "settings": dataclasses.asdict(settings),
                              "ablation": dataclasses.asdict(ablation), "methods": {}}
    for method in METHODS:
        adapter = trained[method]
        started = time.perf_counter()
        rows += _sweep_rows(model, method, adapter, prompts, grid, ablation, progress)
        record["methods"][method] = {
            "training_seconds": seconds[method], "sweep_seconds": time.perf_counter() - started,
            "trained_parameters": _trained_parameters(adapter),
            "accuracy": held_out_accuracy(model, adapter, held_out, settings, progress)}
    scored, _ = score_rows(rows, [load_judge("rules")], progress)
    record["unscored_preference_attributes"] = restrict_preferences(scored)
    judged = sorted({a for r in scored for a in r["scores"]})
    rows_of = {method: [r for r in scored if r["setting"] == method] for method in METHODS}
    sweeps = {method: metrics.sweep_metrics(method, rows_of[method], judged)
              for method in METHODS}
    # Each sweep normalises over its own points; the comparison needs one scale for all three.
    bounds = metrics.sweep_bounds(sweeps.values())
    for method in METHODS:
        common = metrics.sweep_metrics(method, rows_of[method], judged, bounds=bounds)
        record["methods"][method]["sweep"] = {
            **{k: sweeps[method][k] for k in ("mip", "hypervolume", "pareto_coverage",
                                              "attributes")},
            "points": sweeps[method]["points"],
            "common_scale": {k: common[k] for k in ("mip", "hypervolume")}}
    return record, scored


def table(record: dict[str, Any]) -> str:
    """One row per method: training, accuracy per attribute, the sweep's measures."""
    attributes = record["attributes"]
    rows = []
    for method in METHODS:
        m = record["methods"][method]
        s = m["sweep"]
        rows.append([method, "-" if m["training_seconds"] is None
                     else f"{m['training_seconds']:.0f} s", f"{m['trained_parameters']:,}",
                     *(reports.number(m["accuracy"].get(a), 2) for a in attributes),
                     reports.number(s["common_scale"]["mip"]),
                     # a product of K small spreads: significant digits, not decimals
                     f"{s['common_scale']['hypervolume']:.3g}",
                     reports.percent(s["pareto_coverage"])])
    return reports.markdown_table(
        ["method", "training", "parameters", *attributes, "MIP (common scale)",
         "hypervolume (common)", "Pareto coverage"], rows)


def plot(record: dict[str, Any], path: str | Path) -> None:
    """Left: held-out accuracy per attribute and method; right: each sweep's points in the
    plane of its two most spread judged attributes, front points filled."""
    attributes = record["attributes"]
    figure = reports.new_figure(13, 4.5)
    left, right = figure.subplots(1, 2)
    x = np.arange(len(attributes))
    width = 0.8 / len(METHODS)
    for index, method in enumerate(METHODS):
        accuracy = record["methods"][method]["accuracy"]
        left.bar(x - 0.4 + (index + 0.5) * width,
                 [np.nan if accuracy.get(a) is None else accuracy[a] for a in attributes],
                 width, label=method)
    left.axhline(0.5, color="grey", lw=0.8, ls=":")
    left.set_xticks(x, attributes, fontsize=8, rotation=20)
    left.set(ylim=(0, 1), ylabel="held-out pairwise accuracy (own one-hot)",
             title="Accuracy per attribute")
    left.legend(fontsize=8)
    judged = record["methods"][METHODS[0]]["sweep"]["attributes"]
    points = {m: np.array([[p["scores"][a] for a in judged]
                           for p in record["methods"][m]["sweep"]["points"]]) for m in METHODS}
    every = np.concatenate(list(points.values()))
    first, second = np.argsort(-every.std(axis=0))[:2] if len(judged) > 1 else (0, 0)
    for index, method in enumerate(METHODS):
        front = np.array([p["pareto"] for p in record["methods"][method]["sweep"]["points"]])
        xy = points[method][:, [first, second]]
        right.scatter(*xy[front].T, color=f"C{index}", label=f"{method} (front)")
        right.scatter(*xy[~front].T, facecolors="none", edgecolors=f"C{index}")
    right.set(xlabel=f"{judged[first]} (rule judge)", ylabel=f"{judged[second]} (rule judge)",
              title=f"Sweep: {record['grid_points']} preferences x {record['prompts']} prompts")
    right.legend(fontsize=8)
    figure.suptitle("Conflict mitigation: PCGrad vs weighted sum vs separate adapters")
    figure.tight_layout()
    reports.save_figure(figure, path)


def write_report(record: dict[str, Any], scored: list[dict[str, Any]], out_dir: str | Path,
                 overwrite: bool = False) -> Path:
    """results.json, table.md, conflict.png and scores.jsonl (every judged sweep answer)."""
    return write_ablation_report(out_dir, "conflict ablation", record, table, plot,
                                 "conflict.png", overwrite, jsonl={"scores.jsonl": scored})
