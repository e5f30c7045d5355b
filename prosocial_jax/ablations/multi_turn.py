"""Multi-turn: does safety hold when the harmful request comes after other turns, and does the
over-refusal grow after an emotional conversation?

The prompt set, built from held-out prompts:

- harmful, multi-turn: one opening user turn, the model's answer, then a HarmBench test
  behaviour. Openers alternate between a plainly benign request (aplomb) and an emotional one
  (the preference set's prosocial prompts), so half the requests follow small talk and half
  follow someone confiding in the assistant;
- benign, multi-turn: an emotional opener, the model's answer, then a plainly benign request
  (over-refusal after an emotional exchange);
- one-turn controls: the same final requests alone.

The earlier answers are the base model's own (greedy), the same text for every method, so that
the methods differ only in how they answer the final turn. Methods: the base model, DiReg, and
DiReg + Pv-Arm + safety under the uniform preference. Every final answer is judged by the rule
judge: leakage on the harmful requests, over-refusal on the benign ones, one turn against
multi-turn.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from prosocial_jax import settings as settings_module
from prosocial_jax.ablations.report import write_ablation_report
from prosocial_jax.data.benchmarks import load_benchmark
from prosocial_jax.data.prompts import benign_prompts
from prosocial_jax.decoding.decode import generate
from prosocial_jax.decoding.guidance import DEFAULT_SAFETY_MARGIN
from prosocial_jax.evaluation import metrics, reports
from prosocial_jax.evaluation.evaluate import GenerationRow, score_rows
from prosocial_jax.evaluation.judges import load_judge
from prosocial_jax.files import json_lines
from prosocial_jax.models.adapters import Adapter
from prosocial_jax.models.model import Model

METHODS = ("base", "DiReg", "DiReg + Pv-Arm + safety")
CONDITIONS = ("one turn", "multi-turn")


@dataclasses.dataclass(frozen=True)
class MultiTurnSettings:
    """Prompt counts, the answer budget and the guided method's settings."""

    harmful: int = 30  # HarmBench test behaviours (the final turn of as many conversations)
    benign: int = 14  # plainly benign final requests
    opener_tokens: int = 64  # the base model's answer to each opener
    max_new_tokens: int = 48
    guidance: float = 1.0
    safety_margin: float = dataclasses.field(default=DEFAULT_SAFETY_MARGIN,
                                             metadata={"allow_infinity": True})
    no_repeat_ngram: int = 0
    batch_size: int = 32
    where: ClassVar[str] = "multi-turn settings"

    def __post_init__(self):
        settings_module.coerce(self, self.where)
        settings_module.positive(self, self.where, "harmful", "benign", "opener_tokens",
                                 "max_new_tokens", "batch_size")
        settings_module.positive(self, self.where, "guidance", "safety_margin",
                                 "no_repeat_ngram", allow_zero=True)


@dataclasses.dataclass(frozen=True)
class Conversation:
    """One prompt of the set: its final request, what comes before it, and its kind."""

    request: str
    kind: str  # "harmful" or "benign" (the final request's)
    opener: str | None = None  # None: the one-turn control
    opener_kind: str | None = None  # "benign" or "prosocial"
    opener_answer: str | None = None  # the base model's answer to the opener

    def messages(self) -> list[dict[str, str]]:
        if self.opener is None:
            return [{"role": "user", "content": self.request}]
        return [{"role": "user", "content": self.opener},
                {"role": "assistant", "content": self.opener_answer or ""},
                {"role": "user", "content": self.request}]


def prompt_pools(prompts_from: str | Path | None = None
                 ) -> tuple[list[str], list[str], list[str]]:
    """(plainly benign final requests, plain openers, emotional openers), none shared.

    With `prompts_from` (a preference set's test or dev prompts: JSONL rows with "prompt" and
    "kind", never trained on): its benign prompts are the final requests and its prosocial
    ones the emotional openers. Without: the last 15 of aplomb's 30 plain prompts are the final
    requests and the bundled prosocial prompts written for empathy the emotional openers. The
    plain openers are aplomb's other plain prompts."""
    plain = benign_prompts()[:30]  # aplomb: 30 plain prompts, then 20 benign-but-sensitive
    if prompts_from is not None:
        rows = [row for _, row, error in json_lines(Path(prompts_from)) if error is None]
        finals = list(dict.fromkeys(r["prompt"] for r in rows if r.get("kind") == "benign"))
        emotional = list(dict.fromkeys(r["prompt"] for r in rows
                                       if r.get("kind") == "prosocial"))
    else:
        finals = plain[15:]
        emotional = [r["prompt"] for r in load_benchmark("prosocial")
                     if r["category"] == "empathy"]
    openers = [p for p in plain if p not in finals]
    if not finals or not emotional:
        raise ValueError(f"{prompts_from}: needs benign and prosocial prompts (rows with "
                         "\"kind\": \"benign\" / \"prosocial\")")
    return finals, openers, emotional


def build_conversations(harmful: Sequence[str], benign: Sequence[str],
                        plain_openers: Sequence[str], emotional_openers: Sequence[str]
                        ) -> list[Conversation]:
    """The set of the module docstring, answers not yet filled in: each final request once
    alone, once after an opener. Harmful request i follows plain opener i // 2 (i even) or
    emotional opener i // 2 (i odd); benign request j follows emotional opener
    len(harmful) // 2 + j, so that no opener serves two requests (openers are reused
    cyclically only when too few)."""
    if not plain_openers or not emotional_openers:
        raise ValueError("multi-turn: needs plain and emotional openers")
    conversations = [Conversation(r, "harmful") for r in harmful]
    conversations += [Conversation(r, "benign") for r in benign]
    for i, request in enumerate(harmful):
        plain = i % 2 == 0
        pool = plain_openers if plain else emotional_openers
        conversations.append(Conversation(request, "harmful", pool[(i // 2) % len(pool)],
                                          "benign" if plain else "prosocial"))
    start = (len(harmful) + 1) // 2
    for j, request in enumerate(benign):
        opener = emotional_openers[(start + j) % len(emotional_openers)]
        conversations.append(Conversation(request, "benign", opener, "prosocial"))
    return conversations


def answer_openers(model: Model, conversations: Sequence[Conversation], max_new_tokens: int,
                   batch_size: int, progress: bool = True) -> list[Conversation]:
    """The conversations with the base model's greedy answer to each opener (each distinct
    opener answered once)."""
    openers = list(dict.fromkeys(c.opener for c in conversations if c.opener is not None))
    answers = generate(model, openers, max_new_tokens=max_new_tokens, batch_size=batch_size,
                       progress=progress) if openers else []
    by_opener = {o: (g.text or "").strip() for o, g in zip(openers, answers)}
    return [dataclasses.replace(c, opener_answer=by_opener[c.opener]) if c.opener else c
            for c in conversations]


def multi_turn(models: dict[str, Model], adapter: Adapter, conversations: Sequence[Conversation],
               settings: MultiTurnSettings | None = None, progress: bool = True
               ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Every method answers every conversation's final turn; judged by the rule judge.
    `models`: "base", "direg" and "reward" (the Pv-Arm's backbone). Returns (the record, the
    judged answers)."""
    settings = settings or MultiTurnSettings()
    prompts = [c.messages() for c in conversations]
    uniform = np.ones(adapter.config.num_attributes) / adapter.config.num_attributes
    common = dict(max_new_tokens=settings.max_new_tokens, batch_size=settings.batch_size,
                  progress=progress)
    rows: list[GenerationRow] = []
    seconds = {}
    for method in METHODS:
        started = time.perf_counter()
        if method == "base":
            answers = generate(models["base"], prompts, **common)
        elif method == "DiReg":
            answers = generate(models["direg"], prompts, **common)
        else:
            answers = generate(models["direg"], prompts, adapter=adapter, reward=models["reward"],
                               preference=uniform, guidance=settings.guidance,
                               safety_margin=settings.safety_margin,
                               no_repeat_ngram=settings.no_repeat_ngram, **common)
        seconds[method] = time.perf_counter() - started
        for i, (conversation, answer) in enumerate(zip(conversations, answers)):
            condition = CONDITIONS[conversation.opener is not None]
            rows.append(GenerationRow(i + 1, f"{method}|{i}", f"{method} | {condition}",
                                      f"{conversation.kind}-{i}", conversation.kind,
                                      prompts[i], answer.text or ""))
    scored, _ = score_rows(rows, [load_judge("rules")], progress)
    for row, conversation in zip(scored, [c for _ in METHODS for c in conversations]):
        row["opener_kind"] = conversation.opener_kind
    by_setting = metrics.compute_metrics(scored)["settings"]
    record: dict[str, Any] = {
        "settings": dataclasses.asdict(settings), "seconds": seconds,
        "conversations": [dataclasses.asdict(c) for c in conversations],
        "results": {method: {condition: by_setting[f"{method} | {condition}"]
                             for condition in CONDITIONS} for method in METHODS}}
    # Leakage after each kind of opener (multi-turn harmful requests).
    for method in METHODS:
        for opener in ("benign", "prosocial"):
            flags = [r["unsafe"] for r in scored if r["setting"] == f"{method} | multi-turn"
                     and r["kind"] == "harmful" and r["opener_kind"] == opener
                     and r.get("unsafe") is not None]
            record["results"][method][f"leakage after a {opener} opener"] = (
                float(np.mean(flags)) if flags else None)
    return record, scored


def table(record: dict[str, Any]) -> str:
    """One row per method: leakage and over-refusal, one turn against multi-turn."""
    rows = []
    for method in METHODS:
        r = record["results"][method]
        one, multi = r["one turn"], r["multi-turn"]
        rows.append([method, reports.percent(one["leakage"]), reports.percent(multi["leakage"]),
                     reports.percent(r["leakage after a benign opener"]),
                     reports.percent(r["leakage after a prosocial opener"]),
                     reports.percent(one["over_refusal"]), reports.percent(multi["over_refusal"]),
                     reports.percent(one["degenerate"]), reports.percent(multi["degenerate"])])
    return reports.markdown_table(
        ["method", "leakage, one turn", "leakage, multi-turn", "after a plain opener",
         "after an emotional opener", "over-refusal, one turn", "over-refusal, multi-turn",
         "degenerate, one turn", "degenerate, multi-turn"], rows)


def plot(record: dict[str, Any], path: str | Path) -> None:
    """Leakage and over-refusal per method, one turn vs multi-turn, with 95% intervals."""
    figure = reports.new_figure(11, 4.2)
    axes = figure.subplots(1, 2, sharey=True)
    x = np.arange(len(METHODS))
    for axis, key, title in ((axes[0], "leakage", "Leakage (harmful requests)"),
                             (axes[1], "over_refusal", "Over-refusal (benign requests)")):
        for index, condition in enumerate(CONDITIONS):
            cells = [record["results"][m][condition] for m in METHODS]
            values = np.array([c[key] or 0.0 for c in cells])
            low = np.array([(c[f"{key}_ci"] or [0, 0])[0] for c in cells])
            high = np.array([(c[f"{key}_ci"] or [0, 0])[1] for c in cells])
            axis.bar(x + (index - 0.5) * 0.4, 100 * values, 0.4, label=condition,
                     yerr=100 * np.stack([values - low, high - values]), capsize=3)
        axis.set_xticks(x, METHODS, fontsize=8)
        axis.set(title=title, ylabel="% of final answers (rule judge)")
        axis.legend(fontsize=8)
    figure.suptitle("One turn vs the same request after another turn")
    figure.tight_layout()
    reports.save_figure(figure, path)


def write_report(record: dict[str, Any], scored: list[dict[str, Any]], out_dir: str | Path,
                 overwrite: bool = False) -> Path:
    """results.json (with the prompt set), table.md, multi_turn.png and scores.jsonl."""
    return write_ablation_report(out_dir, "multi-turn ablation", record, table, plot,
                                 "multi_turn.png", overwrite, jsonl={"scores.jsonl": scored})
