"""Held-out preference accuracy of a Pv-Arm adapter, on a FIXED simplex grid of preferences.

A random alpha per evaluation would make numbers incomparable between runs, so the adapter is
scored under every point of `simplex_grid` (by default the K one-hot vertices plus the uniform
vector). Under each, a pair counts as correct for an attribute when the reward of the labelled
winner is higher; the reward r(x, y) is the response log-likelihood under the adapter
(`likelihood.pair_margins`), the quantity Pv-Arm trains. The result is the evaluation.json record
`train_arm` writes; `plot_evaluation` and `format_evaluation` render it through `reports`.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from prosocial_jax.data.preferences import PairExample, pair_batch
from prosocial_jax.evaluation import reports
from prosocial_jax.evaluation.likelihood import pair_margins
from prosocial_jax.models import sharding
from prosocial_jax.models.adapters import Adapter
from prosocial_jax.models.model import Model


def simplex_grid(num_attributes: int, resolution: int = 1) -> np.ndarray:
    """Every alpha with entries in {0, 1/n, ..., 1} summing to 1, plus the uniform vector."""
    points = [np.array(c, np.float32) / resolution
              for c in itertools.product(range(resolution + 1), repeat=num_attributes)
              if sum(c) == resolution]
    points.sort(key=lambda p: tuple(-p))
    uniform = np.full(num_attributes, 1.0 / num_attributes, np.float32)
    if not any(np.allclose(p, uniform) for p in points):
        points.append(uniform)
    return np.stack(points)


def grid_names(grid: np.ndarray, attributes: Sequence[str]) -> list[str]:
    """A readable name per grid point: the attribute of a vertex, "uniform", or the weights."""
    names = []
    for point in grid:
        if np.isclose(point.max(), 1.0):
            names.append(attributes[int(point.argmax())])
        elif np.allclose(point, point[0]):
            names.append("uniform")
        else:
            names.append(",".join(f"{a}={w:g}" for a, w in zip(attributes, point) if w))
    return names


@functools.partial(jax.jit, static_argnums=(0, 1))
def _margins(config, adapter_config, params, adapter_params, pairs, preference_K):
    return pair_margins(config, params, pairs, adapter_config, adapter_params, preference_K)


def evaluate_adapter(model: Model, adapter: Adapter, examples: Sequence[PairExample],
                     grid: np.ndarray, max_len: int = 256, batch_size: int = 16,
                     progress: bool = False) -> dict[str, Any]:
    """Pairwise accuracy and mean signed margin per attribute, for every grid preference.

    Accuracy counts pairs where r(winner) > r(loser) under that preference, over the pairs
    labelled for the attribute.
    """
    n, k = len(examples), adapter.config.num_attributes
    accuracy = np.zeros((len(grid), k))
    margin = np.zeros((len(grid), k))
    labels = np.array([e.labels for e in examples], np.int8)
    labelled = (labels != 0).sum(0)
    batches = []
    for start in range(0, n, batch_size):
        chunk = list(examples[start:start + batch_size])
        chunk += [chunk[-1]] * (batch_size - len(chunk))  # one shape per length bucket
        batch = pair_batch(chunk, model.pad_id, max_len)
        batch.pop("labels")
        batches.append((sharding.place_batch(batch, model.mesh), min(batch_size, n - start)))
    for g, point in enumerate(tqdm(grid, desc="evaluate", unit="preference",
                                   disable=not progress)):
        margins = np.concatenate([
            sharding.to_host(_margins(model.config, adapter.config, model.params, adapter.params,
                                batch, jnp.asarray(point)))[:real]
            for batch, real in batches])
        signed = labels * margins[:, None]
        accuracy[g] = ((signed > 0) & (labels != 0)).sum(0) / np.maximum(labelled, 1)
        margin[g] = (signed * (labels != 0)).sum(0) / np.maximum(labelled, 1)
    return {"attributes": list(adapter.config.attributes), "grid": grid.tolist(),
            "grid_names": grid_names(grid, adapter.config.attributes),
            "accuracy": accuracy.tolist(), "margin": margin.tolist(),
            "labelled_pairs": labelled.tolist(), "pairs": n}


def plot_evaluation(evaluation: dict[str, Any], path: str | Path, title: str = "") -> None:
    """Heat map: pairwise accuracy per attribute (columns) under each grid preference (rows)."""
    accuracy = np.array(evaluation["accuracy"])
    names = [f"alpha: {n}" for n in evaluation["grid_names"]]
    if evaluation.get("backbone_accuracy") is not None:  # the reference row: no adapter
        accuracy = np.vstack([evaluation["backbone_accuracy"], accuracy])
        names = ["backbone alone", *names]
    figure = reports.new_figure(1.2 * accuracy.shape[1] + 2.5, 0.45 * accuracy.shape[0] + 1.8)
    ax = figure.add_subplot()
    image = ax.imshow(accuracy, vmin=0.0, vmax=1.0, cmap="RdYlGn")
    ax.set_xticks(range(accuracy.shape[1]), evaluation["attributes"], rotation=30, ha="right")
    ax.set_yticks(range(accuracy.shape[0]), names)
    for (row, col), value in np.ndenumerate(accuracy):
        ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8)
    ax.set_title(title or "held-out pairwise accuracy by preference")
    figure.colorbar(image, ax=ax, fraction=0.03)
    figure.tight_layout()
    reports.save_figure(figure, path, bbox_inches="tight")


def format_evaluation(evaluation: dict[str, Any]) -> str:
    """Markdown table: accuracy per attribute under each grid preference (+ the backbone)."""
    def cells(values) -> list[str]:
        return [reports.number(a, 2) for a in values]

    rows = []
    if evaluation.get("backbone_accuracy") is not None:
        rows.append([evaluation.get("baseline_name", "backbone (no adapter)"),
                     *cells(evaluation["backbone_accuracy"])])
    for name, row in zip(evaluation["grid_names"], evaluation["accuracy"]):
        rows.append([name, *cells(row)])
    rows.append(["labelled pairs", *map(str, evaluation["labelled_pairs"])])
    return reports.markdown_table(["preference", *evaluation["attributes"]], rows)
