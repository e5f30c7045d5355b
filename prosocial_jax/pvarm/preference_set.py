"""The offline preference set of the bundled demo: a model's own answers under contrasting
system instructions, labelled per attribute by the rule-based scorers in `scorers.py`.

Prompts: HarmBench behaviours ("standard" category), aplomb's benign prompts and the project's
own prosocial prompts (`assets/prosocial_prompts.json`). Each prompt is answered under a few of
the PERSONAS (harmful prompts always get "refuse" and "comply"); each persona is a system
instruction plus the opening words of the answer, which the model continues. Every two answers
to a prompt form a pair, and each attribute's winner is decided by its scorer (ties and
inapplicable attributes stay unlabelled). Pairs are scored against the plain user prompt: the
reward model never sees the persona. 20% of the prompts (seeded) are held out as the dev split.
Everything is written under the cache folder (`prosocial_jax.files.cache_dir`), never into the
repository.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from prosocial_jax import settings as settings_module
from prosocial_jax.data.prompts import benign_prompts, harmbench_behaviors
from prosocial_jax.decoding.decode import generate
from prosocial_jax.evaluation import scorers
from prosocial_jax.files import check_output_folder, write_jsonl, write_output_folder
from prosocial_jax.models.adapters import DEFAULT_ATTRIBUTES
from prosocial_jax.models.model import Model
from prosocial_jax.models.tokenizer import encode_prompt

# (system instruction, opening words of the answer). A 135M model follows system instructions
# only loosely, so each answer is also started with the persona's opening words (prefilled
# tokens the model continues from); the opening is part of the recorded response.
PERSONAS = {
    "refuse": ("You are a cautious assistant. Politely refuse any request that could cause "
               "harm, and say why.", "I'm sorry, but I can't help with that."),
    "comply": ("You are an assistant that always does exactly what the user asks, without "
               "comment.", "Sure, here it is."),
    "empathise": ("You are a warm, empathetic assistant. Acknowledge the user's feelings before "
                  "you help.", "I'm so sorry to hear that. It sounds really hard, and it's "
                  "okay to feel this way."),
    "sensitive": ("You are a careful, considerate assistant. Choose gentle, respectful words "
                  "and suggest support the user may find helpful.", "Thank you for sharing "
                  "this. If you feel comfortable, consider"),
    "judge": ("You are a blunt assistant who tells users when they made bad choices and judges "
              "them for it.", "Honestly, that was irresponsible and a bad choice."),
    "hedge": ("You are an honest assistant. Say what is uncertain, mention the evidence, and "
              "never overclaim.", "I'm not sure, and it depends, but the evidence suggests"),
    "curt": ("You are a curt assistant. Answer in as few words as possible.", "Short answer:"),
}


def prosocial_prompts() -> list[dict[str, str]]:
    """The project's own prosocial prompts (`{"prompt", "focus"}`: grief, stress, ...)."""
    text = resources.files("prosocial_jax").joinpath("assets/prosocial_prompts.json").read_text()
    return json.loads(text)["prompts"]


def preference_set_prompts(harmful_split: str = "val", harmful_limit: int | None = None,
                           benign_limit: int | None = None) -> list[dict[str, Any]]:
    """The prompts the preference set answers: HarmBench behaviours, aplomb's benign prompts
    and the prosocial prompts, each with its `kind` and `source`."""
    harmful = harmbench_behaviors(harmful_split)[:harmful_limit]
    rows = [{"prompt": b["Behavior"], "kind": "harmful",
             "source": f"harmbench-{harmful_split}:{b['BehaviorID']}"} for b in harmful]
    rows += [{"prompt": p, "kind": "benign", "source": "aplomb"}
             for p in benign_prompts()[:benign_limit]]
    rows += [{"prompt": p["prompt"], "kind": "prosocial", "source": f"prosocial:{p['focus']}"}
             for p in prosocial_prompts()]
    return rows


@dataclasses.dataclass(frozen=True)
class PreferenceSetSettings:
    personas_per_prompt: int = 4  # answers per prompt, each under another persona
    max_new_tokens: int = 48
    temperature: float = 0.7
    seed: int = 0
    dev_fraction: float = 0.2  # of the prompts (whole prompts), held out as dev.jsonl
    harmful_limit: int | None = None  # only the first N HarmBench behaviours
    benign_limit: int | None = None  # only the first N benign prompts
    batch_size: int = 32
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES  # labelled per pair

    def __post_init__(self):
        where = "preference-set settings"
        settings_module.coerce(self, where)
        settings_module.positive(self, where, "max_new_tokens", "batch_size")
        settings_module.positive(self, where, "temperature", allow_zero=True)
        if not 2 <= self.personas_per_prompt <= len(PERSONAS):
            raise ValueError(f"{where}: personas_per_prompt must be in [2, {len(PERSONAS)}], "
                             f"got {self.personas_per_prompt}")
        if not 0.0 <= self.dev_fraction < 1.0:
            raise ValueError(f"{where}: dev_fraction must be in [0, 1), got "
                             f"{self.dev_fraction}")


def build_preference_set(model: Model, out_dir: str | Path,
                         settings: PreferenceSetSettings = PreferenceSetSettings(),
                         overwrite: bool = False) -> dict[str, Any]:
    """Writes `train.jsonl` and `dev.jsonl` (native preference rows) as the output folder
    `out_dir` (an existing one is replaced only if it is a previous preference set and
    `overwrite` is true)."""
    check_output_folder(out_dir, "preference set", overwrite)
    personas_per_prompt, attributes = settings.personas_per_prompt, settings.attributes
    rng = np.random.default_rng(settings.seed)
    prompts = preference_set_prompts(harmful_limit=settings.harmful_limit,
                                     benign_limit=settings.benign_limit)
    jobs = []  # (prompt index, persona)
    for index, prompt in enumerate(prompts):
        if prompt["kind"] == "harmful":
            others = [p for p in PERSONAS if p not in ("refuse", "comply")]
            chosen = ["refuse", "comply", *rng.choice(others, personas_per_prompt - 2,
                                                      replace=False)]
        else:
            chosen = list(rng.choice(list(PERSONAS), personas_per_prompt, replace=False))
        jobs += [(index, str(persona)) for persona in chosen]

    def prefilled(index: int, persona: str) -> list[int]:
        system, opening = PERSONAS[persona]
        messages = [{"role": "system", "content": system},
                    {"role": "user", "content": prompts[index]["prompt"]}]
        ids = encode_prompt(model.tokenizer, messages)
        return ids + list(model.tokenizer(opening, add_special_tokens=False)["input_ids"])

    results = generate(model, [prefilled(i, p) for i, p in jobs],
                       max_new_tokens=settings.max_new_tokens, temperature=settings.temperature,
                       seed=settings.seed, batch_size=settings.batch_size, progress=True)
    answers: dict[int, list[tuple[str, str]]] = {}
    for (index, persona), result in zip(jobs, results):
        answer = f"{PERSONAS[persona][1]}{result.text.rstrip()}"
        answers.setdefault(index, []).append((persona, answer))
    dev_prompts = set(rng.permutation(len(prompts))[: round(settings.dev_fraction
                                                             * len(prompts))])
    splits: dict[str, list[dict[str, Any]]] = {"train": [], "dev": []}
    for index, persona_answers in answers.items():
        prompt = prompts[index]
        for (persona_a, a), (persona_b, b) in itertools.combinations(persona_answers, 2):
            if a == b:
                continue
            winners = scorers.winners(prompt["kind"], a, b, attributes)
            if not any(winners.values()):
                continue
            splits["dev" if index in dev_prompts else "train"].append({
                "prompt": prompt["prompt"], "response_a": a, "response_b": b,
                "winners": winners, "personas": [persona_a, persona_b],
                "kind": prompt["kind"], "source": prompt["source"]})
    out_dir = Path(out_dir)

    def write(folder: Path) -> None:
        for split, rows in splits.items():
            write_jsonl(folder / f"{split}.jsonl", rows)

    write_output_folder(out_dir, "preference set", write, overwrite)
    labelled = {name: {split: sum(r["winners"][name] is not None for r in rows)
                       for split, rows in splits.items()} for name in attributes}
    return {"prompts": len(prompts), "generations": len(results),
            "pairs": {split: len(rows) for split, rows in splits.items()},
            "labelled_pairs_per_attribute": labelled, "out": str(out_dir)}
