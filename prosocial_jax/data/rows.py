"""Training data through `datasets`: supervised (prompt, response) pairs and their batches.

Local JSONL / JSON / Parquet / CSV files load offline. A hub data set is named explicitly as
`hf://owner/name` (or `hf://owner/name@revision`) and needs a hub or the local `datasets` cache;
a local path that does not exist is an error naming it, never a download. Rows with missing
fields or empty responses are reported (count and first line numbers) and skipped; a line that
is not valid JSON is an error naming the line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from prosocial_jax.models.tokenizer import encode_prompt, has_chat_template

LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
LENGTH_BUCKET = 32  # batches are padded to a multiple of this: few distinct shapes, few compiles


class DataError(ValueError):
    """A data set that cannot be used as given."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A local data file that does not exist, or a hub data set that cannot be reached.

    Both a DataError (callers that handle bad data sets keep working) and a FileNotFoundError.
    """


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
    """All rows of a local data file, or of a hub data set named `hf://owner/name[@revision]`."""
    import datasets

    from prosocial_jax.models.model import HUB_SCHEME, hub_hint

    text = str(source)
    if text.startswith(HUB_SCHEME):
        return _load_hub_rows(text, split)
    path = Path(text).expanduser()
    if not path.exists():
        raise DataFileNotFoundError(f"{text}: no such data file{hub_hint(text)}")
    builder = LOCAL_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"{path}: unsupported data file type {path.suffix!r} (use "
                        f"{', '.join(LOCAL_FORMATS)})")
    # datasets logs its own ERROR line for a malformed file; ours, naming the line, is enough.
    logger = logging.getLogger("datasets")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        rows = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # datasets wraps parse errors in several exception types
        if builder == "json":
            _raise_json_line_error(path)
        raise DataError(f"{path}: could not be read as {builder} ({err})") from err
    finally:
        logger.setLevel(level)
    return list(rows)


def _load_hub_rows(reference: str, split: str) -> list[dict[str, Any]]:
    import datasets

    from prosocial_jax.models.model import hub_offline, parse_hub_reference

    try:
        repo_id, revision = parse_hub_reference(reference)
    except ValueError as err:
        raise DataError(str(err)) from None
    try:
        return list(datasets.load_dataset(repo_id, revision=revision, split=split))
    except (ConnectionError, FileNotFoundError) as err:
        # Offline or unreachable with nothing cached, datasets says "Couldn't reach ..."
        # (ConnectionError); online, a repository that does not exist is a FileNotFoundError.
        if hub_offline() or isinstance(err, ConnectionError):
            why = "HF_HUB_OFFLINE is set" if hub_offline() else "the hub could not be reached"
            raise DataFileNotFoundError(
                f"{reference}: {why}, and the data set is not in the local datasets cache; "
                "download it where a hub is reachable, or pass a local JSONL/Parquet/CSV file"
            ) from err
        raise DataFileNotFoundError(f"{reference}: no such data set on the hub ({err})") from err
    except Exception as err:
        raise DataError(f"{reference}: could not be loaded from the hub "
                        f"({type(err).__name__}: {err})") from err


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


# ---------------------------------------------------------------------------- converters
# Columns that identify each supported preference format (the public sets' own column names).
PREFERENCE_FORMATS = {
    "native": {"response_a", "response_b", "winners"},
    "pku_saferlhf": {"prompt", "response_0", "response_1", "safer_response_id",
                     "better_response_id"},
    "hh_rlhf": {"chosen", "rejected"},
    "ultrafeedback": {"instruction", "completions"},
    "helpsteer2": {"prompt", "response", "helpfulness", "correctness"},
}


def detect_format(row: dict[str, Any]) -> str:
    for name, columns in PREFERENCE_FORMATS.items():
        if columns <= set(row):
            return name
    raise DataError(f"cannot tell the preference format from columns {sorted(row)}; expected "
                    + "; ".join(f"{n}: {sorted(c)}" for n, c in PREFERENCE_FORMATS.items()))


def _text(row: dict[str, Any], key: str, what: str | None = None) -> str:
    value = row.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"missing or empty {what or key}")
    return value


def _checked(prompt, a: str, b: str, winners: dict[str, str | None], line: int) -> PreferencePair:
    if a.strip() == b.strip():
        raise ValueError("identical responses")
    return PreferencePair(prompt, a, b, winners, line)


def _native(row, line):
    prompt = row.get("messages") if row.get("messages") else _text(row, "prompt")
    winners = row.get("winners")
    if not isinstance(winners, dict):
        raise ValueError("winners must be an object {attribute: 'a' | 'b' | null}")
    bad = {k: v for k, v in winners.items() if v not in ("a", "b", None)}
    if bad:
        raise ValueError(f"winner values must be 'a', 'b' or null, got {bad}")
    return _checked(prompt, _text(row, "response_a"), _text(row, "response_b"), winners, line)


def _pku(row, line):
    safer, better = row.get("safer_response_id"), row.get("better_response_id")
    if safer not in (0, 1) or better not in (0, 1):
        raise ValueError("safer_response_id and better_response_id must be 0 or 1")
    winners = {"harmlessness": "ab"[safer], "helpfulness": "ab"[better]}
    return _checked(_text(row, "prompt"), _text(row, "response_0"), _text(row, "response_1"),
                    winners, line)


_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")


def _hh_split(conversation: str) -> tuple[list[dict[str, str]], str]:
    """Anthropic HH text -> (messages before the last assistant turn, that turn's text)."""
    parts = _HH_TURN.split("\n\n" + conversation.lstrip("\n")) if conversation else []
    turns = [(parts[i], parts[i + 1]) for i in range(1, len(parts) - 1, 2)]
    if not turns or turns[-1][0] != "Assistant":
        raise ValueError("conversation does not end with an Assistant turn")
    messages = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
                for who, text in turns[:-1]]
    if not messages or messages[-1]["role"] != "user":
        raise ValueError("no Human turn before the final Assistant turn")
    return messages, turns[-1][1].strip()


def _hh(attribute):
    def convert(row, line):
        chosen_messages, chosen = _hh_split(_text(row, "chosen"))
        rejected_messages, rejected = _hh_split(_text(row, "rejected"))
        if chosen_messages != rejected_messages:
            raise ValueError("chosen and rejected do not share the same conversation")
        if not chosen or not rejected:
            raise ValueError("empty response")
        return _checked(chosen_messages, chosen, rejected, {attribute: "a"}, line)
    return convert


def _rating(completion: dict, aspect: str) -> float | None:
    try:
        return float(completion["annotations"][aspect]["Rating"])
    except (KeyError, TypeError, ValueError):
        return None  # missing or "N/A"


ULTRAFEEDBACK_ASPECTS = {"helpfulness": ("helpfulness",),
                         "truthfulness": ("truthfulness", "honesty")}


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def _ultrafeedback(row, line):
    prompt = _text(row, "instruction")
    completions = [c for c in (row.get("completions") or [])
                   if isinstance(c, dict) and isinstance(c.get("response"), str)
                   and c["response"].strip()]
    if len(completions) < 2:
        raise ValueError("fewer than two non-empty completions")
    scored = []
    for completion in completions:
        per_attribute = {attr: _mean([_rating(completion, a) for a in aspects])
                         for attr, aspects in ULTRAFEEDBACK_ASPECTS.items()}
        overall = _mean(per_attribute.values())
        if overall is not None:
            scored.append((overall, completion["response"], per_attribute))
    if len(scored) < 2:
        raise ValueError("fewer than two rated completions")
    scored.sort(key=lambda s: s[0])
    (_, worst, worst_scores), (_, best, best_scores) = scored[0], scored[-1]
    winners = {attr: None if best_scores[attr] is None or worst_scores[attr] is None
               or best_scores[attr] == worst_scores[attr]
               else "a" if best_scores[attr] > worst_scores[attr] else "b"
               for attr in ULTRAFEEDBACK_ASPECTS}
    return _checked(prompt, best, worst, winners, line)


HELPSTEER2_ATTRIBUTES = {"helpfulness": "helpfulness", "correctness": "truthfulness"}


def _helpsteer2_pairs(rows, skipped: SkippedRows) -> list[PreferencePair]:
    """HelpSteer2 lists two responses per prompt on consecutive rows: pair them up."""
    pairs, pending = [], None
    for line, row in enumerate(rows, start=1):
        try:
            prompt, response = _text(row, "prompt"), _text(row, "response")
            scores = {attr: float(row[column])
                      for column, attr in HELPSTEER2_ATTRIBUTES.items()}
        except (ValueError, TypeError, KeyError) as err:
            skipped.add(str(err) if isinstance(err, ValueError) else "missing scores", line)
            continue
        if pending is None or pending[1] != prompt:
            if pending is not None:
                skipped.add("response without a second response to the same prompt",
                            pending[0])
            pending = (line, prompt, response, scores)
            continue
        first_line, _, first, first_scores = pending
        pending = None
        winners = {attr: None if first_scores[attr] == scores[attr]
                   else "a" if first_scores[attr] > scores[attr] else "b"
                   for attr in HELPSTEER2_ATTRIBUTES.values()}
        try:
            pairs.append(_checked(prompt, first, response, winners, first_line))
        except ValueError as err:
            skipped.add(str(err), first_line)
    if pending is not None:
        skipped.add("response without a second response to the same prompt", pending[0])
    return pairs


def load_preference_pairs(source: str | os.PathLike, format: str = "auto",
                          split: str = "train", hh_attribute: str | None = None
                          ) -> tuple[list[PreferencePair], SkippedRows]:
    """Preference pairs from a local file or hub data set in any supported format.

    Formats: native ({prompt|messages, response_a, response_b, winners}), PKU-SafeRLHF
    (safer -> harmlessness, better -> helpfulness), Anthropic HH-RLHF (chosen beats rejected on
    `hh_attribute`: harmlessness for harmless-base, helpfulness for helpful-base; guessed from
    the file name when not given), UltraFeedback (best vs worst completion; helpfulness and
    truthfulness (with honesty) ratings decide per attribute) and HelpSteer2 (consecutive
    responses to one prompt; helpfulness, correctness -> truthfulness). Ties leave an
    attribute unlabelled. Bad rows are skipped and reported.
    """
    rows = load_rows(source, split)
    if not rows:
        raise DataError(f"{source}: empty data set")
    name = detect_format(rows[0]) if format == "auto" else format
    if name not in PREFERENCE_FORMATS:
        raise DataError(f"unknown preference format {name!r} (choose from "
                        f"{', '.join(PREFERENCE_FORMATS)})")
    skipped = SkippedRows()
    if name == "helpsteer2":
        return _helpsteer2_pairs(rows, skipped), skipped
    if name == "hh_rlhf":
        if hh_attribute is None:
            lowered = str(source).lower()
            hh_attribute = ("harmlessness" if "harmless" in lowered else
                            "helpfulness" if "helpful" in lowered else None)
            if hh_attribute is None:
                raise DataError(f"{source}: HH-RLHF data; say which attribute its choices "
                                "judge (hh_attribute='harmlessness' or 'helpfulness')")
        convert = _hh(hh_attribute)
    else:
        convert = {"native": _native, "pku_saferlhf": _pku, "ultrafeedback": _ultrafeedback}[name]
    pairs = []
    for line, row in enumerate(rows, start=1):
        try:
            pairs.append(convert(row, line))
        except ValueError as err:
            skipped.add(str(err), line)
    return pairs, skipped
