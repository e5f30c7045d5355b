"""Preference pairs: two responses to one prompt, and per attribute which one is better.

The native row is `{prompt | messages, response_a, response_b, winners: {attribute: "a" | "b" |
null}}`, optionally with `truncated: ["a" | "b", ...]`, the responses that are cut-off prefixes
of an answer (their end-of-turn token is not scored). Converters read the public sets in their
own columns: PKU-SafeRLHF, Anthropic HH-RLHF, UltraFeedback and HelpSteer2
(`load_preference_pairs` says how each maps to attributes); the format is told from the columns.
Pairs are tokenised as two SFT sequences (`sft.py`), and a label vector holds +1 (a wins), -1 (b
wins) or 0 (unknown) per attribute. Rows that cannot be used are skipped and reported with their
line numbers.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from prosocial_jax.data.rows import DataError, SkippedRows, load_rows
from prosocial_jax.data.sft import SFTExample, encode_sft, sft_batch


@dataclasses.dataclass
class PreferencePair:
    """Two responses to one prompt and, per attribute, which is better ("a", "b" or None)."""

    prompt: str | list[dict[str, Any]]
    response_a: str
    response_b: str
    winners: dict[str, str | None]
    line: int = 0
    truncated: tuple[str, ...] = ()  # "a" / "b": cut-off answers, scored without an ending


@dataclasses.dataclass
class PairExample:
    """A tokenised pair: both sequences and the label vector (+1 a wins, -1 b wins, 0 unknown)."""

    a: SFTExample
    b: SFTExample
    labels: list[int]  # [K], in the order of the attributes it was encoded for
    line: int


def pair_labels(winners: dict[str, str | None], attributes: Sequence[str]) -> list[int]:
    """+1 / -1 / 0 per attribute, in the order of `attributes` (absent attributes are 0)."""
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
            a, b = (SFTExample(*encode_sft(tokenizer, pair.prompt, response, max_len,
                                           end_of_turn=side not in pair.truncated), pair.line)
                    for side, response in (("a", pair.response_a), ("b", pair.response_b)))
        except ValueError as err:
            skipped.add(str(err), pair.line)
            continue
        examples.append(PairExample(a, b, labels, pair.line))
    return examples


def pair_batch(examples: Sequence[PairExample], pad_id: int, max_len: int,
               rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """tokens / attention / response [P, 2, T] (a first) and labels [P, K], length bucketed.
    `rows`: build only those pairs (one process's share), T still that of the whole batch."""
    start, stop, _ = rows.indices(len(examples))
    flat = sft_batch([s for e in examples for s in (e.a, e.b)], pad_id, max_len,
                     slice(2 * start, 2 * max(start, stop)))
    examples = examples[rows]
    pairs = len(examples)
    batch = {"tokens": flat["tokens"], "attention": flat["attention_mask"],
             "response": flat["loss_mask"]}
    batch = {k: v.reshape(pairs, 2, -1) for k, v in batch.items()}
    batch["labels"] = np.array([e.labels for e in examples], np.int8)
    return batch


# ---------------------------------------------------------------------------- the public sets
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
    """The first format in PREFERENCE_FORMATS whose columns the row has all of."""
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


def _checked(prompt, a: str, b: str, winners: dict[str, str | None], line: int,
             truncated: tuple[str, ...] = ()) -> PreferencePair:
    if a.strip() == b.strip():
        raise ValueError("identical responses")
    return PreferencePair(prompt, a, b, winners, line, truncated)


def _native(row, line):
    prompt = row.get("messages") if row.get("messages") else _text(row, "prompt")
    winners = row.get("winners")
    if not isinstance(winners, dict):
        raise ValueError("winners must be an object {attribute: 'a' | 'b' | null}")
    bad = {k: v for k, v in winners.items() if v not in ("a", "b", None)}
    if bad:
        raise ValueError(f"winner values must be 'a', 'b' or null, got {bad}")
    truncated = row.get("truncated") or []
    if not isinstance(truncated, list) or not set(truncated) <= {"a", "b"}:
        raise ValueError(f"truncated must be a list of 'a' / 'b', got {truncated!r}")
    return _checked(prompt, _text(row, "response_a"), _text(row, "response_b"), winners, line,
                    tuple(truncated))


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

    Formats: native ({prompt|messages, response_a, response_b, winners[, truncated]}), PKU-
    SafeRLHF (safer -> harmlessness, better -> helpfulness), Anthropic HH-RLHF (chosen beats
    rejected on `hh_attribute`: harmlessness for harmless-base, helpfulness for helpful-base;
    guessed from the file name when not given), UltraFeedback (best vs worst completion;
    helpfulness and truthfulness (with honesty) ratings decide per attribute) and HelpSteer2
    (consecutive responses to one prompt; helpfulness, correctness -> truthfulness). Ties leave
    an attribute unlabelled. Bad rows are skipped and reported.
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
