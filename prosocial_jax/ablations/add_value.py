"""Adding a value: extend a trained adapter by one attribute, or retrain all of them?

Three adapters on the same backbone, pairs and training settings:

- "without": the K - 1 other attributes, trained from scratch (the adapter one already has);
- "extended": "without" plus the new attribute, only its zeta row trained, on the pairs labelled
  for it (`pvarm.train_arm(extend=...)`);
- "retrained": all K attributes from scratch.

Reported: the wall time of each training, the parameters it trains, and the held-out pairwise
accuracy of every attribute under its own one-hot preference (`evaluation.preference_accuracy`;
on `arm.eval_limit` held-out pairs, a seeded sample, as `train_arm` evaluates),
so that both questions are answered: how well the new value is learned, and whether the old
ones kept what they had (the extended adapter's old attributes are "without"'s exactly, by
construction; the retrained adapter's are not).
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from prosocial_jax import settings as settings_module
from prosocial_jax.ablations.report import write_ablation_report
from prosocial_jax.data.preferences import PreferencePair, encode_pairs
from prosocial_jax.evaluation import reports
from prosocial_jax.evaluation.preference_accuracy import evaluate_adapter
from prosocial_jax.models.adapters import Adapter, AdapterConfig
from prosocial_jax.models.model import Model
from prosocial_jax.pvarm.train import ArmSettings, sample_held_out, train_arm

ADAPTERS = ("without", "extended", "retrained")


@dataclasses.dataclass(frozen=True)
class AddValueSettings:
    """The attribute added, and how its row is trained."""

    new_attribute: str = dataclasses.field(default="helpfulness", metadata={
        "help": "the value added (one of the adapter attributes; the others form the adapter "
                "it is added to)"})
    extend_learning_rate: float | None = dataclasses.field(default=None, metadata={
        "help": "learning rate of the new row alone (none: the training settings' rate)"})

    def __post_init__(self):
        settings_module.coerce(self, "add-value settings")
        if self.extend_learning_rate is not None:
            settings_module.positive(self, "add-value settings", "extend_learning_rate")


def add_value(model: Model, adapter_config: AdapterConfig, train: Sequence[PreferencePair],
              dev: Sequence[PreferencePair], settings: ArmSettings,
              ablation: AddValueSettings | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Trains the three adapters (module docstring) and evaluates them on `dev`; returns the
    results record (`write_report` renders it)."""
    ablation = ablation or AddValueSettings()
    attributes = adapter_config.attributes
    new = ablation.new_attribute
    if new not in attributes:
        raise ValueError(f"new_attribute {new!r} is not one of the adapter's attributes "
                         f"({', '.join(attributes)})")
    if new == adapter_config.safety_attribute:
        raise ValueError(f"new_attribute {new!r} is the safety attribute: an adapter without "
                         "it has no safety stage to keep")
    settings.beta_vector(len(attributes))  # wrong vector lengths fail before any training
    settings.winner_nll_vector(len(attributes))
    keep = [i for i, a in enumerate(attributes) if a != new]
    configs = {"without": dataclasses.replace(adapter_config,
                                              attributes=tuple(attributes[i] for i in keep))}
    configs["extended"] = dataclasses.replace(
        configs["without"], attributes=(*configs["without"].attributes, new))
    configs["retrained"] = adapter_config
    runs = {
        "without": settings.for_attributes(keep),
        "extended": dataclasses.replace(
            settings.for_attributes([*keep, attributes.index(new)]),
            learning_rate=ablation.extend_learning_rate or settings.learning_rate),
        "retrained": settings,
    }

    def encoded(pairs, config):
        return encode_pairs(pairs, model.tokenizer, config.attributes, settings.max_len)

    # One sample of the held-out pairs for all three adapters, drawn before encoding: encoded
    # for fewer attributes, the pairs labelled only for the new one would drop out and shift
    # a sample drawn after (each adapter then scores the sampled pairs it has labels for).
    held_out = sample_held_out(list(dev), settings.eval_limit, settings.seed)
    trained: dict[str, Adapter] = {}
    record: dict[str, Any] = {"new_attribute": new, "attributes": list(attributes),
                              "train_pairs": len(train), "dev_pairs": len(held_out),
                              "settings": dataclasses.asdict(settings),
                              "extend_learning_rate": runs["extended"].learning_rate,
                              "adapters": {}}
    with tempfile.TemporaryDirectory(prefix="add-value-") as checkpoints:
        for name in ADAPTERS:
            config = configs[name]
            examples = encoded(train, config)
            started = time.perf_counter()
            trained[name], history, _ = train_arm(
                model, config, examples, [], runs[name], Path(checkpoints) / name,
                progress=progress, extend=trained["without"] if name == "extended" else None)
            seconds = time.perf_counter() - started
            used = [e for e in examples if e.labels[-1]] if name == "extended" else examples
            grid = np.eye(config.num_attributes, dtype=np.float32)
            evaluation = evaluate_adapter(model, trained[name], encoded(held_out, config), grid,
                                          settings.max_len, settings.eval_batch_size, progress)
            accuracy = np.asarray(evaluation["accuracy"])
            record["adapters"][name] = {
                "attributes": list(config.attributes), "seconds": seconds,
                "steps": runs[name].steps, "train_pairs": len(used),
                "trained_parameters": _trained_parameters(trained[name], name == "extended"),
                "accuracy": {a: float(accuracy[i, i]) for i, a in enumerate(config.attributes)},
                "labelled_dev_pairs": dict(zip(config.attributes,
                                               map(int, evaluation["labelled_pairs"]))),
                "final_loss": history[-1]["loss"] if history else None}
    return record


def _trained_parameters(adapter: Adapter, new_row_only: bool) -> int:
    if new_row_only:  # one row of every zeta: [L, r2 * r2] per target
        return sum(int(np.prod(f["zeta"].shape)) // f["zeta"].shape[1]
                   for f in adapter.params.values())
    return sum(int(np.size(x)) for x in jax.tree.leaves(adapter.params))


def table(record: dict[str, Any]) -> str:
    """The record as a Markdown table: one row per adapter."""
    attributes = record["attributes"]
    rows = []
    for name in ADAPTERS:
        run = record["adapters"][name]
        rows.append([name, f"{run['seconds']:.1f} s", f"{run['trained_parameters']:,}",
                     str(run["train_pairs"]),
                     *(reports.number(run["accuracy"].get(a), 2) for a in attributes)])
    return reports.markdown_table(
        ["adapter", "training time", "trained parameters", "training pairs",
         *(f"{a} (new)" if a == record["new_attribute"] else a for a in attributes)], rows)


def plot(record: dict[str, Any], path: str | Path) -> None:
    """Held-out accuracy per attribute for the three adapters, and their training times."""
    attributes = record["attributes"]
    figure = reports.new_figure(12, 4.2)
    left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    x = np.arange(len(attributes))
    width = 0.8 / len(ADAPTERS)
    for index, name in enumerate(ADAPTERS):
        accuracy = record["adapters"][name]["accuracy"]
        values = [accuracy.get(a, np.nan) for a in attributes]
        left.bar(x + (index - 1) * width, values, width, label=name)
    left.axhline(0.5, color="grey", lw=0.8, ls=":")
    labels = [f"{a}\n(new)" if a == record["new_attribute"] else a for a in attributes]
    left.set_xticks(x, labels, fontsize=8)
    left.set(ylim=(0, 1), ylabel="held-out pairwise accuracy (own one-hot)",
             title="Accuracy per attribute")
    left.legend(fontsize=8)
    seconds = [record["adapters"][name]["seconds"] for name in ADAPTERS]
    right.bar(ADAPTERS, seconds, color=["C0", "C1", "C2"])
    right.set(ylabel="seconds", title="Training time")
    figure.suptitle(f"Adding {record['new_attribute']!r} to a trained adapter vs retraining all")
    figure.tight_layout()
    reports.save_figure(figure, path)


def write_report(record: dict[str, Any], out_dir: str | Path, overwrite: bool = False) -> Path:
    """results.json, table.md and add_value.png in one output folder."""
    return write_ablation_report(out_dir, "add-value ablation", record, table, plot,
                                 "add_value.png", overwrite)
