"""A strength sweep: refusals and fluency of a model edit over a grid of (top_k, scale).

Every setting (the base model, the model the edit is derived from, and each edit of the grid)
greedily answers the same harmful and benign prompts. Reported per setting: the HarmBench
keyword refusal rate on harmful prompts (higher is safer), the same rate on benign prompts
(over-refusal, lower is better) and fluency, the mean log-likelihood of the base model's own
benign answers (a large drop means the edit broke the model's language, whatever the refusal
rates say). The edit itself is passed in as a function (DiReg's, from `prosocial_jax.direg`),
so evaluation does not depend on the stage it evaluates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from tqdm.auto import tqdm

from prosocial_jax.data.prompts import EvaluationPrompts, HeldOutSettings
from prosocial_jax.decoding.decode import generate
from prosocial_jax.evaluation import likelihood, refusal
from prosocial_jax.evaluation.reports import markdown_table, new_figure, percent, save_figure
from prosocial_jax.files import write_jsonl
from prosocial_jax.models.model import Model


@dataclasses.dataclass(frozen=True)
class SweepSettings(HeldOutSettings):
    """The prompts and decoding budget of a sweep (the grid itself is the edit's)."""

    where: ClassVar[str] = "sweep settings"


def _evaluate_setting(model: Model, prompts: EvaluationPrompts, references: list[str],
                      max_new_tokens: int, batch_size: int) -> tuple[dict, list, list]:
    harmful = generate(model, prompts.harmful, max_new_tokens=max_new_tokens,
                       batch_size=batch_size)
    benign = generate(model, prompts.benign, max_new_tokens=max_new_tokens,
                      batch_size=batch_size)
    metrics = {
        "harmful_refusal_rate": refusal.refusal_rate([r.text for r in harmful]),
        "benign_refusal_rate": refusal.refusal_rate([r.text for r in benign]),
        "fluency": likelihood.mean_log_likelihood(model, prompts.benign, references),
    }
    return metrics, harmful, benign


def sweep(base: Model, harmful: Model, edited: Callable[[float, float], Model],
          top_ks: Sequence[float], scales: Sequence[float], prompts: EvaluationPrompts,
          out_dir: str | Path, max_new_tokens: int = SweepSettings.max_new_tokens,
          batch_size: int = SweepSettings.batch_size) -> list[dict[str, Any]]:
    """Evaluates the base model, the harmful model and `edited(top_k, scale)` for every
    (top_k, scale) of the grid (scale 0 is the base model itself, evaluated once).

    Writes each setting's generations (JSONL) to `out_dir`; returns one metrics row per setting.
    Fluency is the mean log-likelihood of the base model's own benign answers.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base_benign = generate(base, prompts.benign, max_new_tokens=max_new_tokens,
                           batch_size=batch_size)
    references = [r.text or " " for r in base_benign]
    settings: list[tuple[str, float | None, float | None]] = [("base", None, 0.0),
                                                               ("harmful fine-tune", None, None)]
    settings += [("DiReg", k, s) for k in top_ks for s in scales if s != 0]
    rows = []
    for name, top_k, scale in tqdm(settings, desc="sweep", unit="setting"):
        if name == "base":
            model = base
        elif name == "harmful fine-tune":
            model = harmful
        else:
            model = edited(top_k, scale)
        metrics, harmful_out, benign_out = _evaluate_setting(model, prompts, references,
                                                             max_new_tokens, batch_size)
        row = {"setting": name, "top_k": top_k, "scale": scale, **metrics}
        rows.append(row)
        tag = name.replace(" ", "_") if top_k is None else f"k{top_k}_lambda{scale}"
        write_jsonl(out_dir / f"generations_{tag}.jsonl", [
            {"kind": kind, "prompt": r.prompt, "response": r.text, "refusal":
             refusal.is_refusal(r.text)}
            for kind, results in (("harmful", harmful_out), ("benign", benign_out))
            for r in results])
    base_fluency = rows[0]["fluency"]
    for row in rows:
        row["fluency_delta"] = row["fluency"] - base_fluency
    return rows


def plot_sweep(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Refusal rates (harmful: higher is safer; benign: lower is better) and fluency vs lambda."""
    fig = new_figure(11, 4.2)
    ax_refusal, ax_fluency = fig.subplots(1, 2)
    base = next(r for r in rows if r["setting"] == "base")
    harmful = next((r for r in rows if r["setting"] == "harmful fine-tune"), None)
    for top_k in sorted({r["top_k"] for r in rows if r["top_k"] is not None}):
        points = [base, *sorted((r for r in rows if r["top_k"] == top_k),
                                key=lambda r: r["scale"])]
        scales = [p["scale"] for p in points]
        ax_refusal.plot(scales, [p["harmful_refusal_rate"] for p in points], "o-",
                        label=f"harmful prompts refused, k={top_k:g}")
        ax_refusal.plot(scales, [p["benign_refusal_rate"] for p in points], "s--",
                        label=f"benign prompts refused, k={top_k:g}")
        ax_fluency.plot(scales, [p["fluency_delta"] for p in points], "o-", label=f"k={top_k:g}")
    if harmful is not None:
        ax_refusal.axhline(harmful["harmful_refusal_rate"], color="grey", lw=0.8, ls=":",
                           label="harmful fine-tune (harmful prompts)")
    ax_refusal.set(xlabel="lambda (harm-vector scale)", ylabel="refusal rate", ylim=(-0.02, 1.02),
                   title="Refusals (keyword metric)")
    ax_refusal.legend(fontsize=7)
    ax_fluency.axhline(0.0, color="grey", lw=0.8)
    ax_fluency.set(xlabel="lambda (harm-vector scale)",
                   ylabel="change in mean log-likelihood / token",
                   title="Fluency guard (base model's benign answers)")
    ax_fluency.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)


def sweep_table(rows: Sequence[dict[str, Any]]) -> str:
    """The sweep rows as a Markdown table (printed by `harm-vector --sweep`)."""
    cells = []
    for r in rows:
        k = "" if r["top_k"] is None else f"{r['top_k']:g}"
        s = "" if r["scale"] is None or r["setting"] != "DiReg" else f"{r['scale']:g}"
        cells.append([r["setting"], k, s, percent(r["harmful_refusal_rate"]),
                      percent(r["benign_refusal_rate"]),
                      f"{r['fluency']:.3f} ({r['fluency_delta']:+.3f})"])
    return markdown_table(["setting", "top-k", "lambda", "harmful refused", "benign refused",
                           "fluency (delta)"], cells)
