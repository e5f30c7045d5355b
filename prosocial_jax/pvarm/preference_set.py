"""The offline preference set of the bundled demo: pairs labelled by construction.

For each attribute a model answers the same prompt under a persona that embodies the attribute
and under one that violates it; the contrast gives the label (as in contrastive-distillation
preference data), so no scorer ever decides a winner. The rule-based scorers stay evaluation
instruments only.

- Non-harmful prompts (aplomb's benign prompts, the project's prosocial prompts in
  `assets/prosocial_prompts.json`): for each prosocial attribute, one answer under a persona
  that embodies it (empathetic, gentle, accepting, calibrated, concrete) and one under a persona
  that violates it (cold, tactless, judging, overclaiming, vague); each such pair labels that
  attribute alone, so the five attributes are taught five different winners (with one shared
  winner, the first version's, the five heads learned one direction). One more answer under the
  "ideal" persona (a helpful, kind and honest assistant: close to the model's default, in its
  own words, nothing prefilled) wins against an unnecessary refusal and labels harmlessness, so
  that the safety attribute learns not to refuse everything.
- Harmful prompts (every HarmBench validation behaviour; for contextual ones the request
  without its context, which keeps sequences short): refusals that redirect helpfully against
  compliant answers, every redirect paired with every compliance, labelling harmlessness only.
  Each redirect is cut at its last complete sentence and kept as a finished answer (scored with
  its end-of-turn token): a safety head trained only on refusals cut mid-sentence never learns
  that a refusal ends, and under guidance it wrote "I can't ..." again and again.

Every other answer is a cut-off prefix of what the model wrote (16-24 tokens) and is marked
`truncated`, so the reward does not score an end-of-turn token where the answer was only cut.

A 135M model follows a system instruction only loosely, so every violating persona (and the
redirect) also starts its answer with one of several opening words, drawn per answer (prefilled
tokens the model continues; the opening is part of the recorded response). Drawing among
several openings, and leaving the ideal answer unprefilled, keeps the reward from learning one
phrase as the label. Refusal openings appear both as the winner (harmful prompts) and as the
loser (benign ones): only the prompt tells them apart.

Splits are by prompt (seeded, within each kind): a fraction of each kind is answered but held
out (dev.jsonl: the adapter's held-out accuracy, and the prompts decoding is tuned on);
`test_fraction` of the benign and prosocial prompts is never answered and never trained on
(test_prompts.jsonl: the held-out prompts the pipeline is measured on, with HarmBench's test
behaviours). The reward model only ever sees the plain user prompt, never the persona.
Everything is written under the cache folder (`prosocial_jax.files.cache_dir`), never into the
repository.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from prosocial_jax import settings as settings_module
from prosocial_jax.data.prompts import benign_prompts, harmbench_behaviors
from prosocial_jax.decoding.decode import generate, stop_token_ids
from prosocial_jax.files import check_output_folder, write_jsonl, write_output_folder
from prosocial_jax.models.adapters import DEFAULT_ATTRIBUTES
from prosocial_jax.models.model import Model
from prosocial_jax.models.tokenizer import decode, encode_prompt


@dataclasses.dataclass(frozen=True)
class Persona:
    system: str  # the system instruction the answer is generated under
    openings: tuple[str, ...] = ("",)  # one is drawn per answer and prefilled ("" = none)


# Every refusal, needed or not, opens with "I can't": the reward scores tokens one at a time, and
# with varied openings ("I won't", "I'm not able", "Sorry, ...") it learned only that a refusal
# starts with "I", after which SmolLM2's "I'm glad / I'm here to help" took over. With one
# shared start, the harmful prompts' pairs teach " can't" after "I", the benign prompts' pairs
# teach the opposite, and only the prompt tells them apart.
_REFUSALS = ("I can't help with that.", "I can't assist with that request.",
             "I can't answer that, sorry.", "I can't help with this one.",
             "I can't provide that information.", "I can't do that, unfortunately.")

# The openings of the embodying personas are written for the attribute, not taken from the
# evaluation's lexicons (`evaluation/scorers.py`); some share a phrase with them ("that sounds"),
# as any empathetic answer would.
PERSONAS = {
    # Close to SmolLM2's own default assistant: a longer instruction ("acknowledge feelings,
    # never judge, ...") made it write flowery prose ("The weight of ...", "Daddy, hello
    # there!") that the reward then learned as the style every attribute prefers, and guidance
    # steered the base model into it.
    "ideal": Persona("You are a helpful, kind and honest assistant."),
    "empathetic": Persona(
        "You are deeply empathetic. Acknowledge the user's feelings warmly, then help.",
        ("That sounds really hard, and your feelings make sense.", "What you're going through "
         "is a lot to carry.", "Thank you for telling me this; it can't be easy.",
         "Your feelings are valid, and I'm glad you reached out.", "That must weigh on you.",
         "It's natural to feel this way.")),
    "gentle": Persona(
        "You are gentle and tactful. Choose careful, respectful words.",
        ("Gently put, one way to look at it is this.", "If it feels right for you, it may help "
         "to", "At your own pace, you could consider", "With respect for your situation, here "
         "is a thought.", "One gentle suggestion:", "Whenever you're ready, a small step is")),
    "accepting": Persona(
        "You never judge. Accept the user's choices and focus on what helps now.",
        ("There's no shame in this; it happens to many people.", "No judgment here. Let's "
         "focus on what can help now.", "That's a very human situation to be in.",
         "Nobody gets everything right, and that's fine.", "What matters now is the next "
         "step, not blame.", "Many people have been exactly where you are.")),
    "calibrated": Persona(
        "You are honest and careful with facts. Say what is known, and admit uncertainty.",
        ("I'm not completely sure, but the evidence suggests", "As far as I know,",
         "Research on this is mixed, but", "From what is known so far,",
         "The best-supported answer is", "I don't know for certain, but")),
    "concrete": Persona(
        "You are very practical. Give specific, concrete steps.",
        ("Here are three concrete steps:", "Here's a practical plan you can start today:",
         "Concretely, you can", "The most useful first step is", "Try this, in order:",
         "A specific way to do it:")),
    "cold": Persona(
        "You are cold. Ignore the user's feelings and answer in a flat, dismissive way.",
        ("Okay. Here are the facts.", "That happens to everyone; it's not a big deal.",
         "Feelings aside, the answer is simple.", "Not much to say about that.",
         "Whatever. The practical answer:", "Fine. Just do this:")),
    "tactless": Persona(
        "You are tactless. Use blunt, crude, insensitive words.",
        ("Well, to be blunt, that's a pretty pathetic situation.", "Let's be brutal about this:",
         "Honestly, that sounds like a total mess, so brace yourself.", "To put it crudely,",
         "No sugar-coating here: it's bad.", "Blunt answer, whether you like it or not:")),
    "judging": Persona(
        "You are preachy. Criticise the user's choices and lecture them.",
        ("Honestly, that was irresponsible and a bad choice.", "You really should have known "
         "better.", "Frankly, that's on you.", "I can't believe you let that happen.",
         "This is exactly why people end up in trouble.", "You only have yourself to blame, "
         "but")),
    "overclaiming": Persona(
        "You are overconfident. State made-up facts as proven and never admit uncertainty.",
        ("The answer is 100% certain and simple:", "Scientists have proven beyond any doubt "
         "that", "Absolutely, it is guaranteed that", "Everyone knows for a fact that",
         "Without question, the truth is", "I can promise you that")),
    "vague": Persona(
        "You are unhelpful. Give a vague, noncommittal answer with no concrete advice.",
        ("Well, it depends.", "There are many factors to consider.", "Hard to say, really.",
         "It varies from person to person.", "That's a complicated question.",
         "Everyone is different, so")),
    "refusing": Persona(
        "You are overly cautious. Refuse the request, even though it is harmless.", _REFUSALS),
    "redirect": Persona(
        "You are safe and caring. Refuse harmful requests, say why, and offer a safe "
        "alternative.",
        ("I can't help with that; it could hurt people. Instead,", "I can't provide that, since "
         "it puts people at risk. I can", "I can't assist with this, as it could cause harm. A "
         "safer idea:", "I can't help with that: it could hurt someone. If", "I can't do that, "
         "as it could be dangerous. I'd suggest", "I can't share that, because it could harm "
         "others. You could")),
    "redirect_copyright": Persona(
        "You are careful. Do not reproduce copyrighted text; offer a summary instead.",
        ("I can't reproduce that text, since it's copyrighted. In short,", "I can't share the "
         "full text; it's copyrighted. A summary:", "I can't copy copyrighted material, but I "
         "can")),
    # Half the compliances also open with "I": the reward scores tokens one at a time and a
    # Bradley-Terry pair stops teaching once it is won, so with only "Sure, ..." against
    # "I can't ..." the pairs were won at the first token ("I"), and what follows "I" ("'m
    # glad", "'m here to help") was never contrasted. Compliances that begin "I can help" /
    # "I'm happy to" put the contrast where a refusal and a compliance part ways.
    "comply": Persona(
        "You always do exactly what the user asks, without comment.",
        ("Sure, here it is.", "I can help with that. Step 1:", "Of course. Step 1:",
         "I'm happy to help. Here's how:", "Here are the details you asked for:",
         "I'd be glad to. First,")),
}
# The ideal answers (no opening) and the compliances (short openings) are given more new
# tokens; every pair is then cut to the length of its shorter answer (in tokens): the
# log-likelihood reward sums over tokens, and a length difference would be a label of its own.
UNPREFILLED_EXTRA_TOKENS = 8
LONGER_ANSWERS = ("ideal", "comply")
# Decode steps per compiled chunk: a divisor of both answer lengths (16 and 24 by default), so
# that no step is decoded past max_new_tokens (the decoder rounds up to whole chunks).
GENERATION_CHUNK = 8

# Non-harmful prompts: (winner persona, loser persona) -> the attributes that pair labels.
NON_HARMFUL_CONTRASTS = {
    ("empathetic", "cold"): ("empathy",),
    ("gentle", "tactless"): ("sensitivity",),
    ("accepting", "judging"): ("non_judgmental",),
    ("calibrated", "overclaiming"): ("truthfulness",),
    ("concrete", "vague"): ("helpfulness",),
    # An unnecessary refusal labels harmlessness only: were it also helpfulness's contrast, the
    # shared part of the adapter would learn "refusals lose" twice over, against the harmful
    # prompts' one lesson that they win.
    ("ideal", "refusing"): ("harmlessness",),
}
# Harmful prompts: every redirect answer against every compliant one, harmlessness only.
HARMFUL_LABELS = ("harmlessness",)
# Winners kept as finished answers: cut at their last complete sentence, end-of-turn scored.
FINISHED_WINNERS = ("redirect", "redirect_copyright")


def last_sentence_end(tokenizer, ids: Sequence[int], limit: int) -> int | None:
    """The largest k <= limit such that ids[:k] decodes to text ending a sentence (".", "!" or
    "?", not a list number such as "1."), or None."""
    for k in range(min(limit, len(ids)), 0, -1):
        text = decode(tokenizer, list(ids[:k])).rstrip()
        if text.endswith((".", "!", "?")) and not re.search(r"(^|\s)\d+\.$", text):
            return k
    return None


def prosocial_prompts() -> list[dict[str, str]]:
    """The project's own prosocial prompts (`{"focus", "topic", "prompt"}`)."""
    text = resources.files("prosocial_jax").joinpath("assets/prosocial_prompts.json").read_text()
    return json.loads(text)["prompts"]


def preference_set_prompts(harmful_limit: int | None = None, benign_limit: int | None = None,
                           prosocial_limit: int | None = None) -> list[dict[str, Any]]:
    """The prompts of the set: every HarmBench validation behaviour, aplomb's benign prompts
    and the prosocial prompts, each with its `kind` and `source` (and HarmBench's category)."""
    harmful = harmbench_behaviors("val", category=None)[:harmful_limit]
    rows = [{"prompt": b["Behavior"], "kind": "harmful", "category": b["FunctionalCategory"],
             "source": f"harmbench-val:{b['BehaviorID']}"} for b in harmful]
    rows += [{"prompt": p, "kind": "benign", "source": "aplomb"}
             for p in benign_prompts()[:benign_limit]]
    rows += [{"prompt": p["prompt"], "kind": "prosocial",
              "source": f"prosocial:{p['focus']}:{p['topic']}"}
             for p in prosocial_prompts()[:prosocial_limit]]
    return rows


@dataclasses.dataclass(frozen=True)
class PreferenceSetSettings:
    max_new_tokens: int = 16  # after an opening (answers without one get 8 more)
    temperature: float = 0.7
    seed: int = 0
    # Answered but held out as dev.jsonl, per kind: the prosocial prompts are many; the 80
    # harmful and 50 benign ones are few, and tuning decoding needs enough of each (leakage,
    # over-refusal).
    dev_fraction: float = 0.05  # of the prosocial prompts
    harmful_dev_fraction: float = 0.25
    benign_dev_fraction: float = 0.2
    test_fraction: float = 0.28  # of the benign and prosocial prompts: never answered
    answers_per_side: int = 3  # harmful prompts: redirects and compliances (all pairs of them)
    harmful_limit: int | None = None  # only the first N HarmBench validation behaviours
    benign_limit: int | None = None  # only the first N benign prompts
    prosocial_limit: int | None = None  # only the first N prosocial prompts
    batch_size: int = 64
    attributes: tuple[str, ...] = DEFAULT_ATTRIBUTES  # labelled (others of a contrast: null)

    def __post_init__(self):
        where = "preference-set settings"
        settings_module.coerce(self, where)
        settings_module.positive(self, where, "max_new_tokens", "batch_size",
                                 "answers_per_side")
        settings_module.positive(self, where, "temperature", allow_zero=True)
        for name in ("dev_fraction", "harmful_dev_fraction", "benign_dev_fraction",
                     "test_fraction"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{where}: {name} must be in [0, 1), got "
                                 f"{getattr(self, name)}")
        unknown = sorted(set(self.attributes) - set(DEFAULT_ATTRIBUTES))
        if unknown:
            raise ValueError(f"{where}: no persona contrast labels {unknown}; the set labels "
                             f"{list(DEFAULT_ATTRIBUTES)}")


def split_prompts(prompts: Sequence[dict[str, Any]], settings: PreferenceSetSettings
                  ) -> list[str]:
    """"train", "dev" or "test" per prompt, by a seeded permutation within each kind (harmful,
    benign, prosocial), so that every held-out split has prompts of every kind. Harmful prompts
    are never "test": HarmBench's test split is the harmful test set."""
    rng = np.random.default_rng(settings.seed)
    dev_fractions = {"harmful": settings.harmful_dev_fraction,
                     "benign": settings.benign_dev_fraction, "prosocial": settings.dev_fraction}
    splits = ["train"] * len(prompts)
    for kind, dev_fraction in dev_fractions.items():
        members = [i for i, p in enumerate(prompts) if p["kind"] == kind]
        order = [members[j] for j in rng.permutation(len(members))]
        n_test = 0 if kind == "harmful" else round(settings.test_fraction * len(members))
        n_dev = round(dev_fraction * len(members))
        for position, index in enumerate(order):
            splits[index] = ("test" if position < n_test else
                             "dev" if position < n_test + n_dev else "train")
    return splits


def _jobs(prompt: dict[str, Any], answers_per_side: int) -> list[str]:
    """The personas one prompt is answered under."""
    if prompt["kind"] != "harmful":
        return list(dict.fromkeys(p for pair in NON_HARMFUL_CONTRASTS for p in pair))
    redirect = "redirect_copyright" if prompt.get("category") == "copyright" else "redirect"
    return [redirect] * answers_per_side + ["comply"] * answers_per_side


def _pairs(prompt: dict[str, Any], answers: Sequence[tuple[str, Any]],
           attributes: Sequence[str]) -> list[tuple[str, Any, str, Any, tuple[str, ...]]]:
    """(winner persona, winner answer, loser persona, loser answer, labelled attributes)."""
    if prompt["kind"] != "harmful":
        by_persona = dict(answers)
        pairs = [(w, by_persona[w], lo, by_persona[lo], labels)
                 for (w, lo), labels in NON_HARMFUL_CONTRASTS.items()]
    else:
        winners = [(p, a) for p, a in answers if p != "comply"]
        losers = [(p, a) for p, a in answers if p == "comply"]
        pairs = [(w, a, lo, b, HARMFUL_LABELS)
                 for (w, a), (lo, b) in itertools.product(winners, losers)]
    return [(w, a, lo, b, tuple(x for x in labels if x in attributes))
            for w, a, lo, b, labels in pairs if set(labels) & set(attributes)]


def build_preference_set(model: Model, out_dir: str | Path,
                         settings: PreferenceSetSettings = PreferenceSetSettings(),
                         overwrite: bool = False) -> dict[str, Any]:
    """Writes `train.jsonl` and `dev.jsonl` (native preference rows, with the personas that
    produced them) and `test_prompts.jsonl` as the output folder `out_dir` (an existing one is
    replaced only if it is a previous preference set and `overwrite` is true)."""
    check_output_folder(out_dir, "preference set", overwrite)
    attributes = settings.attributes
    rng = np.random.default_rng(settings.seed)
    prompts = preference_set_prompts(settings.harmful_limit, settings.benign_limit,
                                     settings.prosocial_limit)
    splits = split_prompts(prompts, settings)
    jobs = [(index, persona) for index, prompt in enumerate(prompts) if splits[index] != "test"
            for persona in _jobs(prompt, settings.answers_per_side)]
    openings = [str(rng.choice(PERSONAS[persona].openings)) for _, persona in jobs]

    opening_ids = [list(model.tokenizer(o, add_special_tokens=False)["input_ids"]) if o else []
                   for o in openings]
    prompt_ids = [encode_prompt(model.tokenizer,
                                [{"role": "system", "content": PERSONAS[persona].system},
                                 {"role": "user", "content": prompts[index]["prompt"]}])
                  for index, persona in jobs]
    answer_ids: list[list[int]] = [[] for _ in jobs]
    stopped = [False] * len(jobs)  # the model ended the answer itself (a stop token)
    stops = set(stop_token_ids(model))
    for longer in (False, True):
        # Sorted by prompt length, so that a batch pads its prompts as little as possible.
        members = sorted((j for j, (_, persona) in enumerate(jobs)
                          if (persona in LONGER_ANSWERS) == longer),
                         key=lambda j: len(prompt_ids[j]) + len(opening_ids[j]))
        new_tokens = settings.max_new_tokens + (UNPREFILLED_EXTRA_TOKENS if longer else 0)
        results = generate(model, [prompt_ids[j] + opening_ids[j] for j in members],
                           max_new_tokens=new_tokens, temperature=settings.temperature,
                           seed=settings.seed + longer, batch_size=settings.batch_size,
                           chunk_size=GENERATION_CHUNK, progress=True)
        for j, result in zip(members, results):
            answer_ids[j] = opening_ids[j] + [t for t in result.tokens if t not in stops]
            stopped[j] = result.finish_reason == "stop"
    answers: dict[int, list[tuple[str, tuple[list[int], bool]]]] = {}
    for (index, persona), ids, done in zip(jobs, answer_ids, stopped):
        answers.setdefault(index, []).append((persona, (ids, done)))

    def text(ids: list[int], length: int) -> str:
        return decode(model.tokenizer, ids[:length]).strip()

    rows: dict[str, list[dict[str, Any]]] = {"train": [], "dev": []}
    for index, persona_answers in answers.items():
        prompt = prompts[index]
        for winner, (a_ids, a_stopped), loser, (b_ids, b_stopped), labels in _pairs(
                prompt, persona_answers, attributes):
            length = min(len(a_ids), len(b_ids))
            sentence_end = (last_sentence_end(model.tokenizer, a_ids, length)
                            if winner in FINISHED_WINNERS else None)
            length = sentence_end or length
            a, b = text(a_ids, length), text(b_ids, length)
            if a == b or not a or not b:
                continue
            a_finished = sentence_end is not None or (a_stopped and length == len(a_ids))
            b_finished = b_stopped and length == len(b_ids)
            # The winner's side is drawn, so that "a" carries no meaning of its own.
            swap = bool(rng.integers(2))
            side = "b" if swap else "a"
            truncated = [s for s, finished in ((side, a_finished),
                                               ("a" if swap else "b", b_finished))
                         if not finished]
            rows[splits[index]].append({
                "prompt": prompt["prompt"], "response_a": b if swap else a,
                "response_b": a if swap else b,
                "winners": {name: side if name in labels else None for name in attributes},
                "truncated": sorted(truncated),
                "personas": [loser, winner] if swap else [winner, loser],
                "kind": prompt["kind"], "source": prompt["source"]})
    test = [{"prompt": p["prompt"], "kind": p["kind"], "source": p["source"]}
            for p, split in zip(prompts, splits) if split == "test"]
    # Shuffled (seeded), so that the first N test prompts mix benign and prosocial ones.
    test = [test[i] for i in rng.permutation(len(test))]

    def write(folder: Path) -> None:
        for split, split_rows in rows.items():
            write_jsonl(folder / f"{split}.jsonl", split_rows)
        write_jsonl(folder / "test_prompts.jsonl", test)

    write_output_folder(out_dir, "preference set", write, overwrite)
    labelled = {name: {split: sum(r["winners"][name] is not None for r in split_rows)
                       for split, split_rows in rows.items()} for name in attributes}
    return {"prompts": {split: splits.count(split) for split in ("train", "dev", "test")},
            "generations": len(jobs),
            "pairs": {split: len(split_rows) for split, split_rows in rows.items()},
            "labelled_pairs_per_attribute": labelled, "out": str(Path(out_dir))}
