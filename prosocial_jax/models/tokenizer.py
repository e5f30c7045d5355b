"""Tokenizers and chat templates, through transformers.

A checkpoint folder's own tokenizer files are loaded with `AutoTokenizer` (local files only, so it
works offline); GGUF files carry theirs in metadata (see `prosocial_jax.models.gguf`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")

Messages = list[dict[str, Any]]


def load_tokenizer(folder: str | Path):
    """The folder's tokenizer, or None when the checkpoint ships no tokenizer files.

    Files that are there but cannot be read (corrupt JSON, a truncated tokenizer.model) are a
    CheckpointError naming the folder, not whatever transformers or tokenizers raised.
    """
    from transformers import AutoTokenizer

    from prosocial_jax.models.hf import CheckpointError

    folder = Path(folder)
    present = [name for name in _TOKENIZER_FILES if (folder / name).exists()]
    if not present:
        return None
    try:
        return AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # json, tokenizers, sentencepiece and transformers errors alike
        raise CheckpointError(f"{folder}: the tokenizer ({', '.join(present)}) could not be "
                              f"loaded ({type(err).__name__}: {err})") from err


def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(tokenizer, prompt: str | Messages, use_chat_template: bool | None = None,
                  system: str | None = None) -> list[int]:
    """Token ids for one prompt: a plain string or a list of chat messages.

    With `use_chat_template=None` the template is used whenever the tokenizer has one (instruct
    models). A plain string then becomes one user turn; `system` adds a system turn in front.
    """
    if tokenizer is None:
        raise ValueError("this model has no tokenizer; pass token ids instead of text")
    template = has_chat_template(tokenizer) if use_chat_template is None else use_chat_template
    if isinstance(prompt, str) and not template:
        return list(tokenizer(prompt)["input_ids"])
    if not has_chat_template(tokenizer):
        raise ValueError("chat messages were given but the tokenizer has no chat template")
    messages: Messages = ([{"role": "user", "content": prompt}] if isinstance(prompt, str)
                          else list(prompt))
    if system is not None:
        messages = [{"role": "system", "content": system}, *messages]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # The template writes any BOS itself; adding special tokens again would double it.
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def decode(tokenizer, token_ids: Sequence[int]) -> str:
    return tokenizer.decode(list(token_ids), skip_special_tokens=True)
