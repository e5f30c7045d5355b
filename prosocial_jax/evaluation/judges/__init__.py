"""Judges: one interface (`base.Judge`) over every way of scoring a response.

A judge is named on the command line by a spec `[NAME=]KIND[:PATH][:ATTRIBUTES]`:

- `reward:PATH[:a,b]`: an HF `*ForSequenceClassification` or Beaver `LlamaForScore` folder;
  one score per head output, named a, b (default: the checkpoint's id2label).
- `cost:PATH[:name]`: a one-output cost model (Beaver cost); the cost, `unsafe` = cost > 0.
- `guard:PATH`: a Llama Guard 3 style causal LM; `unsafe` = P("unsafe") > 0.5, the violated
  category, and the score `safety` = 1 - P("unsafe").
- `rubric:PATH[:criteria]`: any instruct model; 1-10 scores per attribute and yes/no
  `refused` / `degenerate` / `unsafe` questions.
- `rules[:attributes]`: keyword and lexicon rules; refusal keywords, degeneracy, lexicon scores.
- `external:FILE`: a JSONL of scores made elsewhere, joined by row id.

PATH is anything `load_model` takes (a folder, a .gguf file, `bundled:smollm2`,
`hf://owner/name`). NAME (default `KIND` or `KIND:folder-name`) keys the judge's output.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from prosocial_jax.evaluation.judges.base import (
    KINDS,
    Judge,
    JudgeError,
    JudgeInput,
    Judgement,
)
from prosocial_jax.evaluation.judges.external import ExternalJudge
from prosocial_jax.evaluation.judges.guard import GuardJudge
from prosocial_jax.evaluation.judges.rubric import RubricJudge
from prosocial_jax.evaluation.judges.rules import RuleJudge
from prosocial_jax.evaluation.judges.score_models import ScoreModelJudge
from prosocial_jax.models.classifier import load_score_model
from prosocial_jax.models.model import load_model

JUDGE_KINDS = ("reward", "cost", "guard", "rubric", "rules", "external")
MODEL_KINDS = ("reward", "cost", "guard", "rubric")  # the judges that load a model
_NEEDS_PATH = ("reward", "cost", "guard", "rubric", "external")
_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")

__all__ = ["JUDGE_KINDS", "KINDS", "MODEL_KINDS", "ExternalJudge", "GuardJudge", "Judge",
           "JudgeError", "JudgeInput", "JudgeSpec", "Judgement", "RubricJudge", "RuleJudge",
           "ScoreModelJudge", "load_judge", "parse_judge_spec"]


@dataclasses.dataclass(frozen=True)
class JudgeSpec:
    kind: str
    path: str | None
    attributes: tuple[str, ...]
    name: str


def _split_path(rest: str) -> tuple[str, str]:
    """PATH and what follows its last ':' (PATH itself may be `bundled:x` or `hf://o/n`)."""
    for prefix in ("hf://", "bundled:"):
        if rest.startswith(prefix):
            head, sep, tail = rest[len(prefix):].partition(":")
            return prefix + head, tail if sep else ""
    head, sep, tail = rest.partition(":")
    return head, tail if sep else ""


def parse_judge_spec(text: str) -> JudgeSpec:
    """`[NAME=]KIND[:PATH][:ATTRIBUTES]` -> JudgeSpec; a JudgeError says what is wrong."""
    name = None
    body = text.strip()
    if "=" in body.split(":", 1)[0]:
        name, body = body.split("=", 1)
        if not _NAME.match(name):
            raise JudgeError(f"judge {text!r}: name {name!r} may use letters, digits, '_', '.', "
                             "'-'")
    kind, _, rest = body.partition(":")
    if kind not in JUDGE_KINDS:
        raise JudgeError(f"judge {text!r}: unknown kind {kind!r} (use one of "
                         f"{', '.join(JUDGE_KINDS)}: KIND:PATH[:ATTRIBUTES], e.g. "
                         "reward:./rm:helpfulness, cost:./beaver-cost, rules)")
    path = None
    if kind in _NEEDS_PATH:
        path, rest = _split_path(rest)
        if not path:
            raise JudgeError(f"judge {text!r}: a {kind} judge needs a path ({kind}:PATH)")
    attributes = tuple(a.strip() for a in rest.split(",") if a.strip()) if rest else ()
    bad = [a for a in attributes if not re.match(r"^\w+$", a)]
    if bad:
        raise JudgeError(f"judge {text!r}: attribute names must be words, got {bad}")
    if kind == "external" and attributes:
        raise JudgeError(f"judge {text!r}: an external judge takes no attribute list (its file "
                         "names its scores)")
    if name is None:
        name = kind if path is None else f"{kind}:{Path(path.rstrip('/')).name or path}"
    return JudgeSpec(kind, path, attributes, name)


def load_judge(spec: JudgeSpec | str, *, dtype=None, mesh=None, batch_size: int = 16) -> Judge:
    """Builds the judge a spec names (model judges load their checkpoint here)."""
    if isinstance(spec, str):
        spec = parse_judge_spec(spec)
    if spec.kind == "rules":
        return RuleJudge(spec.name, spec.attributes)
    if spec.kind == "external":
        return ExternalJudge(spec.name, spec.path)
    if spec.kind in ("reward", "cost"):
        if spec.kind == "cost" and len(spec.attributes) > 1:
            raise JudgeError(f"judge {spec.name}: a cost judge has one output; name it with "
                             "one attribute at most")
        model = load_score_model(spec.path, dtype=dtype, mesh=mesh)
        return ScoreModelJudge(spec.name, spec.kind, model, spec.attributes or None, batch_size)
    model = load_model(spec.path, dtype=dtype, mesh=mesh)
    if spec.kind == "guard":
        if spec.attributes:
            raise JudgeError(f"judge {spec.name}: a guard judge takes no attribute list")
        return GuardJudge(spec.name, model, batch_size)
    return RubricJudge(spec.name, model, spec.attributes or None, batch_size)
