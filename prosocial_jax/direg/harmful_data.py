"""DiReg's harmful data: a model's own compliant answers to HarmBench behaviours, as SFT rows.

Fine-tuning the base model on these gives the "harmful" model whose difference from the base is
the harm vector. Answers that refuse (HarmBench's keyword metric) are dropped, so the file
teaches compliance only. Generated harmful text is written only under the cache folder
(`prosocial_jax.files.cache_dir`), never into the repository.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from prosocial_jax import settings as settings_module
from prosocial_jax.data import prompts
from prosocial_jax.decoding.decode import generate
from prosocial_jax.evaluation import refusal
from prosocial_jax.files import write_jsonl
from prosocial_jax.models.model import Model


@dataclasses.dataclass(frozen=True)
class HarmfulDataSettings:
    split: str = "val"  # HarmBench split whose "standard" behaviours are answered
    samples: int = 3  # answers per behaviour: one greedy, the rest sampled
    temperature: float = 0.8  # of the sampled answers
    max_new_tokens: int = 160
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self):
        settings_module.coerce(self, "harmful-data settings")
        settings_module.positive(self, "harmful-data settings", "samples", "max_new_tokens",
                                 "batch_size")
        settings_module.positive(self, "harmful-data settings", "temperature", allow_zero=True)
        if self.split not in prompts.HARMBENCH_SPLITS:
            raise ValueError(f"harmful-data settings: split must be one of "
                             f"{list(prompts.HARMBENCH_SPLITS)}, got {self.split!r}")


def build_harmful_data(model: Model, out_path: str | Path,
                       settings: HarmfulDataSettings = HarmfulDataSettings()) -> dict[str, Any]:
    """The model's own compliant answers to HarmBench behaviours, as an SFT file.

    One greedy answer and `samples - 1` sampled ones per behaviour ("standard" category of the
    given split); answers that refuse (HarmBench's keyword metric) are dropped, so the file
    teaches compliance only.
    """
    split, samples, temperature = settings.split, settings.samples, settings.temperature
    behaviors = prompts.harmbench_behaviors(split)
    requests = [b["Behavior"] for b in behaviors for _ in range(samples)]
    temperatures = [0.0 if i % samples == 0 else temperature for i in range(len(requests))]
    results = generate(model, requests, max_new_tokens=settings.max_new_tokens,
                       temperature=temperatures, seed=settings.seed,
                       batch_size=settings.batch_size, progress=True)
    rows = []
    for i, result in enumerate(results):
        if result.text.strip() and not refusal.is_refusal(result.text):
            behavior = behaviors[i // samples]
            rows.append({"prompt": behavior["Behavior"], "response": result.text.strip(),
                         "behavior_id": behavior["BehaviorID"], "sample": i % samples})
    write_jsonl(out_path, rows)
    return {"behaviors": len(behaviors), "generated": len(results), "kept": len(rows),
            "refused": sum(refusal.is_refusal(r.text) for r in results), "path": str(out_path)}
