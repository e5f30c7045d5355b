"""Supervised (prompt, response) examples: from data set rows to token ids and padded batches.

A row is `{prompt, response}` or `{messages}` ending in the assistant's answer (or `{messages,
response}`); it is rendered through the tokenizer's chat template, and the loss mask marks the
response tokens only. Rows with a missing or empty prompt or response are skipped and reported.
Batches are right-padded to a multiple of LENGTH_BUCKET, so a run compiles for few shapes.
Preference pairs (`preferences.py`) are two of these sequences per prompt.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from prosocial_jax.data.rows import DataError, SkippedRows, load_rows
from prosocial_jax.models.tokenizer import encode_prompt, has_chat_template

LENGTH_BUCKET = 32  # batches are padded to a multiple of this: few distinct shapes, few compiles


@dataclasses.dataclass
class SFTExample:
    """One tokenised sequence (prompt + response) and the row it came from."""

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
               max_len: int, end_of_turn: bool = True) -> tuple[list[int], list[bool]]:
    """Token ids of prompt + response through the chat template, and the response-token mask.

    `end_of_turn=False` encodes the response as an unfinished answer (a prefix of what a model
    wrote, cut before it ended): nothing the template puts after the answer (end-of-turn token,
    EOS) is included, so a reward or loss never scores an ending the answer did not have.
    Over-long examples keep their whole prompt and lose the end of the response.
    """
    prompt_ids = encode_prompt(tokenizer, prompt)
    if has_chat_template(tokenizer):
        messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                    else list(prompt))
        text = tokenizer.apply_chat_template(
            [*messages, {"role": "assistant", "content": response}], tokenize=False)
        if not end_of_turn:
            # The template may strip the answer; it is the last occurrence of its text.
            end = text.rfind(response.strip())
            if end < 0:
                raise ValueError("chat template does not render the answer verbatim")
            text = text[: end + len(response.strip())]
        full = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        if full[: len(prompt_ids)] != prompt_ids:
            raise ValueError("chat template renders the prompt differently with an answer")
    else:
        eos = ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None and end_of_turn
               else [])
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


def sft_batch(examples: Sequence[SFTExample], pad_id: int, max_len: int,
              rows: slice = slice(None)) -> dict[str, np.ndarray]:
    """Right-padded tokens, attention mask and loss mask, each [B, T]; T is the longest example
    rounded up to LENGTH_BUCKET (at most `max_len`). `rows`: build only those examples' rows
    (one process's share of a multi-process batch), T still that of the whole batch."""
    longest = max(len(e.input_ids) for e in examples)
    length = min(max_len, -(-longest // LENGTH_BUCKET) * LENGTH_BUCKET)
    examples = examples[rows]
    tokens = np.full((len(examples), length), pad_id, np.int32)
    attention = np.zeros((len(examples), length), bool)
    loss = np.zeros((len(examples), length), bool)
    for row, example in enumerate(examples):
        n = len(example.input_ids)
        tokens[row, :n] = example.input_ids
        attention[row, :n] = True
        loss[row, :n] = example.loss_mask
    return {"tokens": tokens, "attention_mask": attention, "loss_mask": loss}
