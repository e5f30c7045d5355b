"""What every judge shares: its input and output, and how judge inputs become padded batches.

A judge takes a batch of `JudgeInput`s (the prompt as text or chat messages, the response, and
the prompt's kind) and returns one `Judgement` per input: a score per attribute, plus `unsafe`,
`refused` and `degenerate` flags where the judge gives them (None where it does not), and any
judge-specific details in `extra` (a guard's category, a rubric's probability mass ...).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np

from prosocial_jax.models.tokenizer import Messages, has_chat_template

KINDS = ("harmful", "benign", "prosocial")  # "prosocial": benign but emotional


class JudgeError(ValueError):
    """A judge that cannot run as asked (a bad spec, a head that does not fit its attribute
    names, a tokenizer without the chat template the judge needs ...)."""


@dataclasses.dataclass(frozen=True)
class JudgeInput:
    id: str
    prompt: str | Messages
    response: str
    kind: str  # one of KINDS


@dataclasses.dataclass
class Judgement:
    scores: dict[str, float] = dataclasses.field(default_factory=dict)
    unsafe: bool | None = None
    refused: bool | None = None
    degenerate: bool | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scores": dict(self.scores)}
        for flag in ("unsafe", "refused", "degenerate"):
            if getattr(self, flag) is not None:
                out[flag] = bool(getattr(self, flag))
        if self.extra:
            out["extra"] = dict(self.extra)
        return out


class Judge(Protocol):
    name: str  # unique within one evaluation ("rules", "reward:my-rm", ...)
    kind: str  # "reward", "cost", "guard", "rubric", "rules", "external"

    def judge(self, items: Sequence[JudgeInput], progress: bool = False) -> list[Judgement]:
        ...


def user_messages(prompt: str | Messages) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_text(prompt: str | Messages) -> str:
    """The prompt as plain text (a conversation as "role: content" lines), for rubric
    prompts that quote it."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def chat_ids(tokenizer, messages: Messages, add_generation_prompt: bool, what: str) -> list[int]:
    """Token ids of a conversation rendered by the tokenizer's chat template."""
    if not has_chat_template(tokenizer):
        raise JudgeError(f"{what}: its tokenizer has no chat template, which this judge needs "
                         "to frame the conversation")
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt,
                                         tokenize=False)
    # The template writes any BOS itself; adding special tokens again would double it.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def single_token(tokenizer, text: str, what: str) -> int:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise JudgeError(f"{what}: {text!r} is {len(ids)} tokens in this tokenizer; the judge "
                         "reads it as one answer token")
    return int(ids[0])


PAD_STEP = 16  # padded lengths are multiples of this: little padding, few compilations
MIN_PREFIX = 8  # shorter shared openings are run with every row


def bucket_length(length: int, step: int = PAD_STEP) -> int:
    """Padded length of a batch: a multiple of `step`, so few distinct shapes compile."""
    return max(step, -(-length // step) * step)


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    first = sequences[0]
    length = min(len(s) for s in sequences)
    for other in sequences[1:]:
        length = next((i for i in range(length) if other[i] != first[i]), length)
    return length


@dataclasses.dataclass
class Batch:
    rows: np.ndarray  # [b] indices into the encoded inputs (b <= batch size)
    prefix: np.ndarray  # [P] ids every row of the batch starts with (run once; may be empty)
    tokens: np.ndarray  # [B, T] int32: each row after the prefix, right-padded
    mask: np.ndarray  # [B, T] bool
    lengths: np.ndarray  # [B] real tokens per row after the prefix (1 for filler rows)


def padded_batches(encoded: Sequence[Sequence[int]], batch_size: int, pad_id: int,
                   extra_length: int = 0, keep: int = 1) -> Iterator[Batch]:
    """Right-padded batches of `batch_size` rows, longest first (similar lengths share a batch,
    so little compute goes to padding). A short last batch is filled with one-token rows so
    that every batch has the same shape; `extra_length` reserves room for appended tokens.

    Judge inputs share long openings (a chat template's system turn, a rubric's instructions):
    the tokens all rows of a batch start with (at least MIN_PREFIX of them, leaving each row at
    least `keep` tokens) become the batch's `prefix`, which the model runs once
    (`Model.logits_at`, `ScoreModel.scores`); `tokens` and `lengths` count from its end.
    """
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    for start in range(0, len(order), batch_size):
        rows = np.asarray(order[start:start + batch_size])
        members = [encoded[i] for i in rows]
        shared = max(min(common_prefix_length(members), min(len(m) for m in members) - keep),
                     0)
        if shared < MIN_PREFIX:  # too short to be worth a second program
            shared = 0
        width = bucket_length(max(len(m) for m in members) - shared + extra_length)
        tokens = np.full((batch_size, width), pad_id, np.int32)
        mask = np.zeros((batch_size, width), bool)
        lengths = np.ones(batch_size, np.int64)
        mask[len(rows):, 0] = True  # filler rows: one real token, results dropped
        for slot, ids in enumerate(members):
            rest = ids[shared:]
            tokens[slot, :len(rest)] = rest
            mask[slot, :len(rest)] = True
            lengths[slot] = len(rest)
        yield Batch(rows, np.asarray(members[0][:shared], np.int32), tokens, mask, lengths)


def data_parallel_batch_size(batch_size: int, mesh) -> int:
    """Rows must split evenly over a mesh's "data" axis."""
    if mesh is None:
        return batch_size
    data = mesh.shape["data"]
    return -(-batch_size // data) * data


def check_length(encoded: Sequence[Sequence[int]], limit: int, names: Sequence[str],
                 what: str) -> None:
    """Every input fits the model's positions; else a JudgeError naming the input."""
    for ids, name in zip(encoded, names, strict=True):
        if len(ids) > limit:
            raise JudgeError(f"{what}: the input for {name} is {len(ids)} tokens, more than "
                             f"the model's {limit} positions")
