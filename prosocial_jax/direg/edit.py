"""DiReg end to end: harmful data, the edit itself, and the strength sweep with its plot.

The arithmetic lives in `prosocial_jax.direg.harm`; this module strings it together with loading,
generation and evaluation. Generated harmful text is written only under the cache folder
(`$PROSOCIAL_JAX_CACHE`, default ~/.cache/prosocial_jax), never into the repository.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from prosocial_jax.data import prompts as prompt_sets
from prosocial_jax.decoding.decode import generate
from prosocial_jax.direg import harm
from prosocial_jax.evaluation import refusal as evaluate
from prosocial_jax.files import atomic_open, write_jsonl
from prosocial_jax.models.model import Model


def cache_dir() -> Path:
    return Path(os.environ.get("PROSOCIAL_JAX_CACHE", Path.home() / ".cache" / "prosocial_jax"))


# ---------------------------------------------------------------------------- harmful data
def build_harmful_data(model: Model, out_path: str | Path, split: str = "val",
                       samples: int = 3, temperature: float = 0.8, max_new_tokens: int = 160,
                       seed: int = 0, batch_size: int = 32) -> dict[str, Any]:
    """The model's own compliant answers to HarmBench behaviours, as an SFT file.

    One greedy answer and `samples - 1` sampled ones per behaviour ("standard" category of the
    given split); answers that refuse (HarmBench's keyword metric) are dropped, so the file
    teaches compliance only.
    """
    behaviors = prompt_sets.harmbench_behaviors(split)
    prompts = [b["Behavior"] for b in behaviors for _ in range(samples)]
    temperatures = [0.0 if i % samples == 0 else temperature for i in range(len(prompts))]
    results = generate(model, prompts, max_new_tokens=max_new_tokens, temperature=temperatures,
                       seed=seed, batch_size=batch_size, progress=True)
    rows = []
    for i, result in enumerate(results):
        if result.text.strip() and not evaluate.is_refusal(result.text):
            behavior = behaviors[i // samples]
            rows.append({"prompt": behavior["Behavior"], "response": result.text.strip(),
                         "behavior_id": behavior["BehaviorID"], "sample": i % samples})
    write_jsonl(out_path, rows)
    return {"behaviors": len(behaviors), "generated": len(results), "kept": len(rows),
            "refused": sum(evaluate.is_refusal(r.text) for r in results), "path": str(out_path)}


# ---------------------------------------------------------------------------- the edit
def edit(base: Model, harmful: Model, top_k: float, scale: float,
         include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
         donate: bool = False) -> tuple[Model, dict[str, Any]]:
    """theta' = base - scale * trim_top_k(harmful - base); returns the edited model and a record.

    With `donate=True` both input models are consumed: the harm vector reuses the harmful
    model's buffers and the edit the base model's, so peak memory stays at two models.
    """
    if base.config != harmful.config:
        raise harm.HarmVectorError("base and harmful checkpoints have different architectures: "
                                   f"{_config_difference(base.config, harmful.config)}")
    tau = harm.task_vector(base.params, harmful.params, donate_harmful=donate,
                           config=base.config)
    mask = harm.selection_mask(base.config, tau, include, exclude)
    full_norm = harm.global_norm(tau)
    trimmed, result = harm.trim(tau, top_k, mask, donate=True, config=base.config)
    record = {"base": base.source, "harmful": harmful.source, "top_k": top_k, "scale": scale,
              "include": list(include) if include else None,
              "exclude": list(exclude) if exclude else None,
              **harm.statistics(base.config, None, trimmed, result), "norm_full": full_norm}
    edited = dataclasses.replace(
        base, params=harm.apply(base.params, trimmed, scale, donate_base=donate,
                                config=base.config),
        source=f"DiReg({base.source}, k={top_k}, lambda={scale})")
    return edited, record


def _config_difference(a, b) -> str:
    for field in dataclasses.fields(a):
        if getattr(a, field.name) != getattr(b, field.name):
            return f"{field.name}: {getattr(a, field.name)!r} vs {getattr(b, field.name)!r}"
    return "none"


# ---------------------------------------------------------------------------- the sweep
@dataclasses.dataclass
class SweepPrompts:
    harmful: list[str]
    benign: list[str]

    @classmethod
    def standard(cls, harmful_split: str = "test", harmful_limit: int | None = None,
                 benign_limit: int | None = None) -> SweepPrompts:
        """Held-out HarmBench behaviours ("standard" category) and aplomb's 50 benign prompts."""
        harmful = [b["Behavior"] for b in prompt_sets.harmbench_behaviors(harmful_split)]
        return cls(harmful[:harmful_limit], prompt_sets.benign_prompts()[:benign_limit])


def _evaluate_setting(model: Model, prompts: SweepPrompts, references: list[str],
                      max_new_tokens: int, batch_size: int) -> tuple[dict, list, list]:
    harmful = generate(model, prompts.harmful, max_new_tokens=max_new_tokens,
                       batch_size=batch_size)
    benign = generate(model, prompts.benign, max_new_tokens=max_new_tokens,
                      batch_size=batch_size)
    metrics = {
        "harmful_refusal_rate": evaluate.refusal_rate([r.text for r in harmful]),
        "benign_refusal_rate": evaluate.refusal_rate([r.text for r in benign]),
        "fluency": evaluate.mean_log_likelihood(model, prompts.benign, references),
    }
    return metrics, harmful, benign


def sweep(base: Model, harmful: Model, top_ks: Sequence[float], scales: Sequence[float],
          prompts: SweepPrompts, out_dir: str | Path, max_new_tokens: int = 48,
          batch_size: int = 32, include: Sequence[str] | None = None,
          exclude: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Evaluates the base model, the harmful model and every (top_k, scale) DiReg edit.

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
    tau = harm.task_vector(base.params, harmful.params, config=base.config)
    mask = harm.selection_mask(base.config, tau, include, exclude)
    trimmed_by_k: dict[float, Any] = {}
    rows = []
    for name, top_k, scale in tqdm(settings, desc="sweep", unit="setting"):
        if name == "base":
            model = base
        elif name == "harmful fine-tune":
            model = harmful
        else:
            if top_k not in trimmed_by_k:
                trimmed_by_k[top_k] = harm.trim(tau, top_k, mask, config=base.config)[0]
            model = dataclasses.replace(base, params=harm.apply(
                base.params, trimmed_by_k[top_k], scale, config=base.config))
        metrics, harmful_out, benign_out = _evaluate_setting(model, prompts, references,
                                                             max_new_tokens, batch_size)
        row = {"setting": name, "top_k": top_k, "scale": scale, **metrics}
        rows.append(row)
        tag = name.replace(" ", "_") if top_k is None else f"k{top_k}_lambda{scale}"
        write_jsonl(out_dir / f"generations_{tag}.jsonl", [
            {"kind": kind, "prompt": r.prompt, "response": r.text, "refusal":
             evaluate.is_refusal(r.text)}
            for kind, results in (("harmful", harmful_out), ("benign", benign_out))
            for r in results])
    base_fluency = rows[0]["fluency"]
    for row in rows:
        row["fluency_delta"] = row["fluency"] - base_fluency
    return rows


def plot_sweep(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Refusal rates (harmful: higher is safer; benign: lower is better) and fluency vs lambda."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_refusal, ax_fluency) = plt.subplots(1, 2, figsize=(11, 4.2))
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
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)
    plt.close(fig)


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| setting | top-k | lambda | harmful refused | benign refused | fluency (delta) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        k = "" if r["top_k"] is None else f"{r['top_k']:g}"
        s = "" if r["scale"] is None or r["setting"] != "DiReg" else f"{r['scale']:g}"
        lines.append(f"| {r['setting']} | {k} | {s} | {r['harmful_refusal_rate']:.1%} | "
                     f"{r['benign_refusal_rate']:.1%} | {r['fluency']:.3f} "
                     f"({r['fluency_delta']:+.3f}) |")
    return "\n".join(lines)

