"""Overhead: what guided decoding costs per token and in memory against other test-time methods,
and what each buys.

Methods, all on the same base model and Pv-Arm backbone:

- "plain": the base model alone, greedy;
- "Pv-Arm + safety": guided decoding by one PBLoRA Pv-Arm with the safety stage (per step, one
  adapted forward of two rows per prompt: the user's preference and the safety one-hot);
- "Pv-Arm": the same without the safety stage (one row per prompt);
- "multi-ARM": the GenARM-style alternative, one single-attribute adapter per attribute, each
  run every step with its own cache (`models.adapters.AdapterSet`), the safety stage from the
  safety attribute's member;
- "best-of-N" (e.g. "best-of-4", "best-of-16"): N answers sampled from the base model, the one
  the Pv-Arm rewards most kept (`evaluation.best_of_n`; no token-level safety stage).

Timing, for every batch size and context length: each row a prompt of exactly `context` token
ids (seeded), `new_tokens` new tokens and no stop token, so that every row runs every step. A
cell's first call compiles, its second is timed: the seconds of the whole call (prefill
included) and per new token (those seconds / `new_tokens`: what a user waits per token of the
batch). With `isolate`, each cell runs in a fresh process and reports its peak resident memory
(VmHWM), which then holds that cell's weights, caches and temporaries and nothing else.

Quality (optional): every method on held-out prompts (HarmBench harmful behaviours and a
preference set's benign and prosocial prompts), judged by the rule judge: leakage,
over-refusal, the mean prosocial scores, beside the method's wall time on those prompts (the
compute each spent for it). Multi-ARM needs trained single-attribute adapters for this
(`arms`): without them its members are untrained and it is timed only. The quality run goes
first and both are printed as they finish (the quality table, then each timing cell), so a
long grid stopped part-way keeps what it measured.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import multiprocessing
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import jax
import numpy as np
from tqdm.auto import tqdm

from prosocial_jax import settings as settings_module
from prosocial_jax.ablations.report import write_ablation_report
from prosocial_jax.data.prompts import EvaluationPrompts
from prosocial_jax.decoding.decode import generate
from prosocial_jax.decoding.guidance import DEFAULT_SAFETY_MARGIN
from prosocial_jax.evaluation import compare, metrics, reports
from prosocial_jax.evaluation.best_of_n import best_of_n
from prosocial_jax.evaluation.evaluate import GenerationRow, score_rows
from prosocial_jax.evaluation.judges import load_judge
from prosocial_jax.models.adapters import (
    Adapter,
    AdapterSet,
    init_adapter,
    load_adapter,
    load_adapter_set,
    single_attribute_config,
)
from prosocial_jax.models.model import Model, load_model
from prosocial_jax.peak_memory import peak_rss_bytes

METHODS = ("plain", "Pv-Arm + safety", "Pv-Arm", "multi-ARM", "best-of-4", "best-of-16")
BEST_OF = re.compile(r"best-of-(\d+)$")
# Rows decoded (and scored) at once by best-of-N: its N x batch rows at context 2,048 would
# hold 256 caches of SmolLM2 (25 GB) at batch 16, N = 16.
BEST_OF_ROWS = 64


@dataclasses.dataclass(frozen=True)
class OverheadSettings:
    """The methods, the timing grid and the quality run."""

    methods: tuple[str, ...] = METHODS
    batches: tuple[int, ...] = (1, 16)
    contexts: tuple[int, ...] = (256, 2048)  # prompt tokens per row
    new_tokens: int = 32  # timed new tokens per row
    isolate: bool = True  # each timing cell in a fresh process (its own peak memory)
    guidance: float = 1.0  # w of the guided methods
    safety_margin: float = dataclasses.field(  # tau of the guided methods with a safety stage
        default=DEFAULT_SAFETY_MARGIN, metadata={"allow_infinity": True})
    no_repeat_ngram: int = 0  # the guided methods' no-repeat rule (quality run)
    temperature: float = 1.0  # best-of-N's sampling temperature
    quality: bool = True  # also judge every method's answers on held-out prompts
    harmful_limit: int = 30  # held-out HarmBench test behaviours of the quality run
    benign_limit: int = 30  # held-out benign / prosocial prompts of the quality run
    max_new_tokens: int = 48  # the quality run's budget
    seed: int = 0
    where: ClassVar[str] = "overhead settings"

    def __post_init__(self):
        settings_module.coerce(self, self.where)
        settings_module.positive(self, self.where, "new_tokens", "max_new_tokens",
                                 "temperature", "harmful_limit", "benign_limit")
        settings_module.positive(self, self.where, "guidance", "safety_margin",
                                 "no_repeat_ngram", allow_zero=True)
        for method in self.methods:
            if method not in METHODS[:4] and not BEST_OF.match(method):
                raise ValueError(f"{self.where}: unknown method {method!r} (one of "
                                 f"{', '.join(METHODS[:4])} or best-of-N)")
        for name in ("batches", "contexts"):
            if not getattr(self, name) or min(getattr(self, name)) < 1:
                raise ValueError(f"{self.where}: {name} must be positive integers, got "
                                 f"{getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class Models:
    """Where the models come from: paths, so that an isolated cell can load them itself."""

    model: str
    adapter: str
    reward: str | None = None  # None: the model
    arms: str | None = None  # trained single-attribute adapters (`save_adapter_set`)
    dtype: str | None = None


@functools.lru_cache(maxsize=1)
def _load(models: Models) -> tuple[Model, Model, Adapter, AdapterSet, bool]:
    """(model, Pv-Arm backbone, Pv-Arm, the multi-ARM members, whether they are trained)."""
    model = load_model(models.model, dtype=models.dtype)
    reward = load_model(models.reward, dtype=models.dtype) if models.reward else model
    adapter = load_adapter(models.adapter, reward.config)
    if models.arms:
        return model, reward, adapter, load_adapter_set(models.arms, reward.config), True
    # Untrained members of the Pv-Arm's ranks and targets: a step costs what a trained one
    # costs (the time does not depend on the values).
    members = tuple(init_adapter(reward.config, single_attribute_config(adapter.config, name),
                                 jax.random.key(i)) for i, name in
                    enumerate(adapter.config.attributes))
    return model, reward, adapter, AdapterSet(members, adapter.config.safety_attribute), False


def run_method(method: str, loaded, prompts: Sequence, settings: OverheadSettings,
               max_new_tokens: int, stop_tokens: Sequence[int] | None,
               batch_size: int | None) -> list:
    """One method's answers to `prompts` (uniform preference for the guided ones)."""
    model, reward, adapter, arms, _ = loaded
    uniform = np.ones(adapter.config.num_attributes) / adapter.config.num_attributes
    common = dict(max_new_tokens=max_new_tokens, stop_tokens=stop_tokens)
    if method == "plain":
        return generate(model, prompts, batch_size=batch_size, **common)
    best_of = BEST_OF.match(method)
    if best_of:
        n = int(best_of.group(1))
        rows = min(BEST_OF_ROWS, n * (batch_size or len(prompts)))
        return best_of_n(model, prompts, n, adapter, reward=reward, preference=uniform,
                         temperature=settings.temperature, seed=settings.seed,
                         batch_size=rows, score_batch=max(1, rows // n), **common)
    return generate(model, prompts, batch_size=batch_size, reward=reward,
                    adapter=arms if method == "multi-ARM" else adapter, preference=uniform,
                    guidance=settings.guidance, safety_margin=settings.safety_margin,
                    safety_stage=method != "Pv-Arm", no_repeat_ngram=settings.no_repeat_ngram,
                    **common)


def time_cell(models: Models, method: str, batch: int, context: int,
              settings: OverheadSettings, isolated: bool = False) -> dict[str, Any]:
    """One timing cell (module docstring): compile by a first call, time the second."""
    loaded = _load(models)
    vocab = loaded[0].config.vocab_size
    rng = np.random.default_rng(settings.seed + context + batch)
    prompts = rng.integers(100, vocab - 100, (batch, context)).tolist()

    def call():
        return run_method(method, loaded, prompts, settings, settings.new_tokens, [], batch)

    started = time.perf_counter()
    call()
    first = time.perf_counter() - started
    started = time.perf_counter()
    out = call()
    seconds = time.perf_counter() - started
    tokens = sum(len(g.tokens) for g in out)
    if tokens != batch * settings.new_tokens:
        raise RuntimeError(f"{method}: {tokens} new tokens, expected {batch} x "
                           f"{settings.new_tokens} (no stop token)")
    return {"method": method, "batch": batch, "context": context, "seconds": seconds,
            "seconds_per_token": seconds / settings.new_tokens,
            "first_call_seconds": first,
            "peak_memory_bytes": peak_rss_bytes() if isolated else None}


def _isolated_cell(*args) -> dict[str, Any]:
    return time_cell(*args, isolated=True)


def _timing(models: Models, settings: OverheadSettings, progress: bool) -> list[dict]:
    cells = [(m, b, c) for c in settings.contexts for b in settings.batches
             for m in settings.methods]
    rows = []
    for method, batch, context in tqdm(cells, desc="overhead", unit="cell",
                                       disable=not progress):
        if settings.isolate:  # a fresh process: the cell's peak memory is its own
            with concurrent.futures.ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn")) as pool:
                rows.append(pool.submit(_isolated_cell, models, method, batch, context,
                                        settings).result())
        else:
            rows.append(time_cell(models, method, batch, context, settings))
        # Each cell as it is measured: a long grid stopped part-way keeps what it measured.
        tqdm.write(f"overhead cell: {json.dumps(rows[-1])}", file=sys.stderr)
    return rows


def _quality(models: Models, settings: OverheadSettings, prompts: EvaluationPrompts,
             progress: bool) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    loaded = _load(models)
    texts = [*prompts.harmful, *prompts.benign]
    kinds = ["harmful"] * len(prompts.harmful) + prompts.benign_kinds
    rows, seconds = [], {}
    for method in tqdm(settings.methods, desc="overhead quality", unit="method",
                       disable=not progress):
        if method == "multi-ARM" and not loaded[4]:
            continue  # untrained members: timed, not judged
        started = time.perf_counter()
        answers = run_method(method, loaded, texts, settings, settings.max_new_tokens, None,
                             None)
        seconds[method] = time.perf_counter() - started
        rows += [GenerationRow(i + 1, f"{method}|{i}", method, f"{kind}-{i}", kind, text,
                               g.text or "")
                 for i, (text, kind, g) in enumerate(zip(texts, kinds, answers))]
    scored, _ = score_rows(rows, [load_judge("rules")], progress)
    by_method = metrics.compute_metrics(scored)["settings"]
    return {method: {**by_method[method], "seconds": seconds[method]}
            for method in seconds}, scored


def overhead(models: Models, settings: OverheadSettings | None = None,
             prompts: EvaluationPrompts | None = None,
             progress: bool = True) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The timing grid and (with `settings.quality` and `prompts`) the judged quality of every
    method. Returns (the results record, the judged answers)."""
    settings = settings or OverheadSettings()
    if settings.quality and prompts is None:
        raise ValueError("overhead: the quality run needs held-out prompts")
    model = _load(models)[0]
    record: dict[str, Any] = {
        "models": dataclasses.asdict(models), "settings": dataclasses.asdict(settings),
        "trained_arms": _load(models)[4],
        "weight_bytes": sum(x.nbytes for x in jax.tree.leaves(model.params))}
    scored: list[dict[str, Any]] = []
    if settings.quality:  # first: minutes, where the timing grid can take an hour
        record["quality"], scored = _quality(models, settings, prompts, progress)
        tqdm.write(f"overhead quality: {json.dumps(record['quality'])}", file=sys.stderr)
        jax.clear_caches()  # the timing cells run in processes of their own
    record["timing"] = _timing(models, settings, progress)
    return record, scored


def _gigabytes(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e9:.2f} GB"


def table(record: dict[str, Any]) -> str:
    """Timing: one row per method, a column per (batch, context); quality below it."""
    cells = sorted({(r["batch"], r["context"]) for r in record["timing"]},
                   key=lambda bc: (bc[1], bc[0]))
    methods = list(dict.fromkeys(r["method"] for r in record["timing"]))
    by = {(r["method"], r["batch"], r["context"]): r for r in record["timing"]}
    plain = {(b, c): by.get(("plain", b, c)) for b, c in cells}
    rows = []
    for method in methods:
        row = [method]
        for b, c in cells:
            r = by.get((method, b, c))
            if r is None:  # a run stopped before this cell
                row.append("not measured")
                continue
            ratio = (f" ({r['seconds'] / plain[(b, c)]['seconds']:.1f}x)"
                     if plain[(b, c)] else "")
            row.append(f"{1e3 * r['seconds_per_token']:.0f} ms{ratio}, "
                       f"{_gigabytes(r['peak_memory_bytes'])}")
        rows.append(row)
    text = reports.markdown_table(
        ["method", *(f"batch {b}, context {c}" for b, c in cells)], rows)
    quality = record.get("quality")
    if quality:
        text += "\n\n" + reports.markdown_table(
            ["method", "wall time", "leakage (harmful)", "over-refusal (benign)", "degenerate",
             *compare.PROSOCIAL],
            [[m, f"{q['seconds']:.0f} s", reports.percent(q["leakage"]),
              reports.percent(q["over_refusal"]), reports.percent(q["degenerate"]),
              *(reports.number(q["mean_scores"].get(a)) for a in compare.PROSOCIAL)]
             for m, q in quality.items()])
    return text


def plot(record: dict[str, Any], path: str | Path) -> None:
    """Seconds per new token of every method in every (batch, context) cell (log scale), and
    peak memory where measured (a cell a stopped run did not reach has no bar)."""
    cells = sorted({(r["batch"], r["context"]) for r in record["timing"]},
                   key=lambda bc: (bc[1], bc[0]))
    methods = list(dict.fromkeys(r["method"] for r in record["timing"]))
    by = {(r["method"], r["batch"], r["context"]): r for r in record["timing"]}
    figure = reports.new_figure(13, 4.5)
    left, right = figure.subplots(1, 2)
    x = np.arange(len(cells))
    width = 0.8 / len(methods)
    for index, method in enumerate(methods):
        offset = x - 0.4 + (index + 0.5) * width
        measured = [by.get((method, *c), {}) for c in cells]
        left.bar(offset, [1e3 * r.get("seconds_per_token", np.nan) for r in measured], width,
                 label=method)
        memory = [r.get("peak_memory_bytes", np.nan) for r in measured]
        if not any(m is None for m in memory):
            right.bar(offset, [m / 1e9 for m in memory], width, label=method)
    labels = [f"batch {b}\ncontext {c}" for b, c in cells]
    left.set_xticks(x, labels, fontsize=8)
    left.set(yscale="log", ylabel="ms per new token (whole call / new tokens)",
             title="Time")
    left.legend(fontsize=7)
    right.set_xticks(x, labels, fontsize=8)
    right.set(ylabel="peak resident memory (GB)", title="Memory (one process per cell)")
    figure.suptitle("Guided decoding against other test-time methods")
    figure.tight_layout()
    reports.save_figure(figure, path)


def write_report(record: dict[str, Any], scored: list[dict[str, Any]], out_dir: str | Path,
                 overwrite: bool = False) -> Path:
    """results.json, table.md, overhead.png and scores.jsonl (the judged answers)."""
    return write_ablation_report(out_dir, "overhead ablation", record, table, plot,
                                 "overhead.png", overwrite, jsonl={"scores.jsonl": scored})

