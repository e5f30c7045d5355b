"""Training data through `datasets`: supervised (prompt, response) pairs and their batches.

Local JSONL / JSON / Parquet / CSV files load offline; any other string is a hub id (needs a hub,
and fails clearly without one). Rows with missing fields or empty responses are reported (count
and first line numbers) and skipped; a line that is not valid JSON is an error naming the line.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prosocial_jax.models.tokenizer import encode_prompt, has_chat_template

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
LENGTH_BUCKET = 32  # batches are padded to a multiple of this: few distinct shapes, few compiles


class DataError(ValueError):
    """A data set that cannot be used as given."""


@dataclasses.dataclass
class SkippedRows:
    """Rows left out of a data set, with the reason: reported, never fatal."""

    reasons: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # reason -> lines

    def add(self, reason: str, line: int) -> None:
        self.reasons.setdefault(reason, []).append(line)

    @property
    def count(self) -> int:
        return sum(len(lines) for lines in self.reasons.values())

    def summary(self, source: str) -> str:
        parts = [f"{len(lines)} {reason} (line{'s' if len(lines) > 1 else ''} "
                 f"{', '.join(map(str, lines[:5]))}{', ...' if len(lines) > 5 else ''})"
                 for reason, lines in self.reasons.items()]
        return f"{source}: skipped {self.count} row(s): " + "; ".join(parts)


def load_rows(source: str | os.PathLike, split: str = "train") -> list[dict[str, Any]]:
    """All rows of a local data file or a hub data set, via `datasets`."""
    import datasets

    path = Path(source).expanduser()
    if path.exists():
        builder = LOCAL_FORMATS.get(path.suffix.lower())
        if builder is None:
            raise DataError(f"{path}: unsupported data file type {path.suffix!r} (use "
                            f"{', '.join(LOCAL_FORMATS)})")
        try:
            rows = datasets.load_dataset(builder, data_files=str(path), split="train")
        except Exception as err:  # datasets wraps parse errors in several exception types
            if builder == "json":
                _raise_json_line_error(path)
            raise DataError(f"{path}: could not be read as {builder} ({err})") from err
        return list(rows)
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise DataError(f"{source}: no such file, and HF_HUB_OFFLINE is set so it cannot be "
                        "fetched as a hub data set")
    try:
        return list(datasets.load_dataset(str(source), split=split))
    except Exception as err:
        raise DataError(f"{source}: not a local file and not loadable from the hub ({err})") \
            from err


def _raise_json_line_error(path: Path) -> None:
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                try:
                    json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
    raise DataError(f"{path}: could not be read as JSON lines")


# ---------------------------------------------------------------------------- supervised pairs
@dataclasses.dataclass
class SFTExample:
    input_ids: list[int]
    loss_mask: list[bool]  # True on response tokens (the ones the loss trains)
    line: int


def sft_pair(row: dict[str, Any]) -> tuple[str | list[dict], str]:
    """(prompt or chat messages, response) from a row; raises ValueError with the reason."""
    response = row.get("response")
    if response is None and isinstance(row.get("messages"), list) and row["messages"]:
        last = row["messages"][-1]
        if isinstance(last, dict) and last.get("role") == "assistant":
            return row["messages"][:-1], last.get("content") or ""
    if not isinstance(response, str) or not response.strip():
        raise ValueError("missing or empty response")
    if isinstance(row.get("messages"), list) and row["messages"]:
        return row["messages"], response
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError("missing or empty prompt")
    return prompt, response


def encode_sft(tokenizer, prompt: str | list[dict], response: str,
               max_len: int) -> tuple[list[int], list[bool]]:
    """Token ids of prompt + response through the chat template, and the response-token mask.

    Over-long examples keep their whole prompt and lose the end of the response.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    if has_chat_template(tokenizer):
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                    else list(prompt))
        text = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": response}], tokenize=False)
        full = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if full[: len(prompt_ids)] != prompt_ids:
            raise ValueError("chat template renders the prompt differently with an answer")
    else:
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        full = prompt_ids + list(tokenizer(response, add_special_tokens=False)["input_ids"]) + eos
    if len(prompt_ids) >= max_len - 1:
        raise ValueError(f"prompt longer than max_len={max_len}")
    full = full[:max_len]
    return full, [i >= len(prompt_ids) for i in range(len(full))]


def load_sft(source: str | os.PathLike, tokenizer, max_len: int,
             split: str = "train") -> tuple[list[SFTExample], SkippedRows]:
    """Tokenised SFT examples from a data set; bad rows are skipped and reported."""
    skipped = SkippedRows()
    examples = []
    for line, row in enumerate(load_rows(source, split), start=1):
        try:
            prompt, response = sft_pair(row)
            ids, mask = encode_sft(tokenizer, prompt, response, max_len)
        except ValueError as err:
            skipped.add(str(err), line)
            continue
        examples.append(SFTExample(ids, mask, line))
    if not examples:
        raise DataError(f"{source}: no usable rows"
                        + (f" ({skipped.summary(str(source))})" if skipped.count else ""))
    return examples, skipped


def sft_batch(examples: Sequence[SFTExample], pad_id: int,
              max_len: int) -> dict[str, np.ndarray]:
    """Right-padded tokens, attention mask and loss mask, length rounded up to LENGTH_BUCKET."""
    longest = max(len(e.input_ids) for e in examples)
    length = min(max_len, -(-longest // LENGTH_BUCKET) * LENGTH_BUCKET)
    tokens = np.full((len(examples), length), pad_id, np.int32)
    attention = np.zeros((len(examples), length), bool)
    loss = np.zeros((len(examples), length), bool)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        tokens[row, :n] = example.input_ids
        attention[row, :n] = True
        loss[row, :n] = example.loss_mask
    return {"tokens": tokens, "attention_mask": attention, "loss_mask": loss}


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: a pure function of (seed, epoch), so resumes are exact."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_indices(num_examples: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Example indices of training step `step` (batches run on across epoch boundaries)."""
    positions = np.arange(step * batch_size, (step + 1) * batch_size)
    epochs, offsets = np.divmod(positions, num_examples)
    orders = {e: epoch_order(num_examples, seed, int(e)) for e in np.unique(epochs)}
    return np.array([orders[e][o] for e, o in zip(epochs, offsets)])


# ---------------------------------------------------------------------------- preference pairs
@dataclasses.dataclass
class PreferencePair:
    """Two responses to one prompt and, per attribute, which is better ("a", "b" or None)."""

    prompt: str | list[dict[str, Any]]
    response_a: str
    response_b: str
    winners: dict[str, str | None]
    line: int = 0


@dataclasses.dataclass
class PairExample:
    """A tokenised pair: both sequences and the label vector (+1 a wins, -1 b wins, 0 unknown)."""

    a: SFTExample
    b: SFTExample
    labels: list[int]
    line: int


def pair_labels(winners: dict[str, str | None], attributes: Sequence[str]) -> list[int]:
    return [{"a": 1, "b": -1}.get(winners.get(name) or "", 0) for name in attributes]


def encode_pairs(pairs: Sequence[PreferencePair], tokenizer, attributes: Sequence[str],
                 max_len: int, skipped: SkippedRows | None = None) -> list[PairExample]:
    """Tokenises pairs through the chat template; pairs with no usable label are skipped."""
    skipped = skipped if skipped is not None else SkippedRows()
    examples = []
    for pair in pairs:
        labels = pair_labels(pair.winners, attributes)
        if not any(labels):
            skipped.add("no label for any attribute", pair.line)
            continue
        try:
            a = SFTExample(*encode_sft(tokenizer, pair.prompt, pair.response_a, max_len),
                           pair.line)
            b = SFTExample(*encode_sft(tokenizer, pair.prompt, pair.response_b, max_len),
                           pair.line)
        except ValueError as err:
            skipped.add(str(err), pair.line)
            continue
        examples.append(PairExample(a, b, labels, pair.line))
    return examples


def pair_batch(examples: Sequence[PairExample], pad_id: int,
               max_len: int) -> dict[str, np.ndarray]:
    """tokens / attention / response [N, 2, T] (a first) and labels [N, K], length bucketed."""
    flat = sft_batch([s for e in examples for s in (e.a, e.b)], pad_id, max_len)
    n = len(examples)
    batch = {"tokens": flat["tokens"], "attention": flat["attention_mask"],
             "response": flat["loss_mask"]}
    batch = {k: v.reshape(n, 2, -1) for k, v in batch.items()}
    batch["labels"] = np.array([e.labels for e in examples], np.int8)
    return batch
