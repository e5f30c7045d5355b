"""evaluate (judges -> scores -> metrics -> report) and metrics (score rows -> metrics)."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from prosocial_jax import settings
from prosocial_jax.cli.common import add_overwrite_arg
from prosocial_jax.cli.options import (
    Command,
    Section,
    add_command,
    report_given,
    require,
)
from prosocial_jax.evaluation.evaluate import EvaluateSettings

JUDGE_EPILOG = """judges (--judge, repeatable; the first judge giving a field is the one the
metrics read, every judge's output is kept in scores.jsonl):
  rules                      keyword refusals, degeneracy, lexicon scores (instant, weak)
  reward:PATH[:a,b]          HF *ForSequenceClassification or Beaver LlamaForScore folder;
                             outputs named a, b (default: its id2label)
  cost:PATH[:name]           one-output cost model (Beaver cost): unsafe = cost > 0
  guard:PATH                 Llama Guard 3 style model: unsafe = P("unsafe") > 0.5
  rubric:PATH[:criteria]     any instruct model: 1-10 scores, refused/degenerate/unsafe
  external:FILE              JSONL {"id", "scores", "unsafe", ...} made elsewhere
  NAME=KIND:...              names a judge (two judges of one kind need names)
PATH is a folder, a .gguf file, bundled:smollm2 or hf://owner/name."""


@dataclasses.dataclass(frozen=True)
class EvaluateInputs:
    """What `evaluate` reads, and where its model judges run (top level of a config file)."""

    generations: str | None = dataclasses.field(default=None, metadata={
        "help": "JSONL of generations (prosocial-jax compare / generate, or any tool)"})
    dtype: str | None = dataclasses.field(default=None, metadata={
        "help": "dtype of model judges: float32 | bfloat16 | float16 (none: the checkpoint's)"})
    mesh: str | None = dataclasses.field(default=None, metadata={
        "help": "device mesh DATAxMODEL for model judges, e.g. 2x4 (none: one device)"})

    def __post_init__(self):
        settings.coerce(self, "evaluate inputs")


EVALUATE = (Section("inputs", EvaluateInputs, title="inputs"),
            Section("evaluate", EvaluateSettings, key="evaluate", title="evaluation"))


def _evaluate_parser(sub) -> dict:
    import argparse

    command = Command(_cmd_evaluate, EVALUATE, config_example="evaluate.reference=base")
    p = add_command(
        sub, "evaluate", command, help="judge generations: scores, metrics, report",
        description="Scores every response of a generations file with one or more judges, "
        "then computes the paper's metrics (unsafe leakage, over-refusal, mean scores with "
        "bootstrap intervals; MIP, hypervolume and Pareto coverage of preference sweeps; win "
        "rates against --reference) and writes scores.jsonl, metrics.json, report.md and "
        "figures to --out.")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = JUDGE_EPILOG
    p.add_argument("--out", type=Path, required=True, help="report folder")
    add_overwrite_arg(p, "evaluation")
    return {"evaluate": command}


def _cmd_evaluate(args) -> int:
    import time

    from prosocial_jax.evaluation import evaluate, judge_report
    from prosocial_jax.files import check_output_folder

    inputs, chosen = args.settings.inputs, args.settings.evaluate
    require(inputs, "generations")
    from prosocial_jax.evaluation.judges import MODEL_KINDS, parse_judge_spec

    if not any(parse_judge_spec(spec).kind in MODEL_KINDS for spec in chosen.judge):
        report_given(args.given, ("inputs.dtype", "inputs.mesh"),  # where model judges run
                     "without a model judge (reward, cost, guard or rubric)", "evaluate",
                     "give a model --judge")
    check_output_folder(args.out, "evaluation", args.overwrite)  # before any judge runs
    started = time.perf_counter()
    result = evaluate.evaluate(inputs.generations, args.out, chosen, mesh=inputs.mesh,
                               dtype=inputs.dtype, overwrite=args.overwrite)
    print(judge_report.summary_table(result))
    print(f"\n{result['rows']} responses, {len(chosen.judge)} judge(s) in "
          f"{time.perf_counter() - started:.0f}s; wrote {args.out / 'report.md'}, "
          f"{args.out / 'metrics.json'}, {args.out / 'scores.jsonl'}", file=sys.stderr)
    return 0


def _metrics_parser(sub) -> dict:
    command = Command(_cmd_metrics)
    p = add_command(
        sub, "metrics", command, help="metrics and report from a scores file",
        description="The paper's metrics from score rows (scores.jsonl of evaluate, or rows "
        "made elsewhere: {setting, prompt_id, kind, preference?, scores, unsafe?, refused?}); "
        "writes metrics.json, report.md and figures to --out.")
    p.add_argument("--scores", type=Path, required=True, help="JSONL of score rows")
    p.add_argument("--reference", help="the setting the others are compared with (win rates)")
    p.add_argument("--resamples", type=int, default=2000,
                   help="bootstrap resamples per interval (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    p.add_argument("--out", type=Path, required=True, help="report folder")
    add_overwrite_arg(p, "metrics report")
    return {"metrics": command}


def _cmd_metrics(args) -> int:
    from prosocial_jax.evaluation import judge_report, metrics
    from prosocial_jax.files import check_output_folder, write_output_folder

    if not args.scores.is_file():
        raise FileNotFoundError(f"--scores {args.scores}: no such file")
    check_output_folder(args.out, "metrics report", args.overwrite)
    rows = metrics.read_score_rows(args.scores)
    result = metrics.compute_metrics(rows, args.reference, resamples=args.resamples,
                                     seed=args.seed)

    def write(folder: Path) -> None:
        (folder / "metrics.json").write_text(json.dumps(result, indent=2))
        judge_report.write_report_files(folder, result, title=f"Metrics of {args.scores.name}")

    write_output_folder(args.out, "metrics report", write, args.overwrite)
    print(judge_report.summary_table(result))
    print(f"\n{len(rows)} score rows; wrote {args.out / 'metrics.json'}, "
          f"{args.out / 'report.md'}", file=sys.stderr)
    return 0


def register(sub) -> dict:
    return {**_evaluate_parser(sub), **_metrics_parser(sub)}
