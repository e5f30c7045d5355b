"""Evaluation: the instruments that measure outputs, and the one writer of reports.

- `judges`: one interface over every way of scoring a response (reward / cost models, guard
  models, rubric judges, rules, external scores), loaded from a spec `KIND:PATH[:ATTRIBUTES]`.
- `evaluate`: the stage itself: generations -> judges -> score rows -> metrics -> report.
- `metrics`: the paper's metrics as pure functions (leakage, over-refusal, bootstrap intervals,
  MIP, hypervolume, Pareto coverage, win rates).
- `judge_report`: report.md and its figures from the metrics.
- `validation`: the bundled hand-labelled answers, and a judge's agreement with them.
- `degeneracy`: repeated n-grams and distinct-n, so that loops show as loops.
- `refusal`: HarmBench's keyword refusal rule (on harmful prompts a refusal is the safe
  outcome, on benign ones over-refusal).
- `likelihood`: response log-likelihood, one computation for the fine-tuning loss, the Pv-Arm
  reward and the fluency guard.
- `scorers`: transparent rule-based attribute scorers, a weak stand-in for judges.
- `preference_accuracy`: a reward adapter's held-out pairwise accuracy on a fixed preference
  grid.
- `sweeps`: a model edit's strength sweep, refusals and fluency over (top_k, scale).
- `compare`: the whole pipeline side by side (base, DiReg, Pv-Arm guidance).
- `guidance_sweep`: w, tau and the plausibility floor against fluent refusals and loops.
- `reports`: Markdown tables, PNG plots and report folders, for every stage.

Imports `decoding` (to generate), `data` and `models`, never
`direg` or `pvarm`: those stages use these instruments (refusals filter DiReg's harmful
answers; Pv-Arm training reports held-out accuracy), and what a sweep evaluates is passed in as
a function.
"""

from prosocial_jax.evaluation.compare import CompareSettings
from prosocial_jax.evaluation.evaluate import EvaluateSettings
from prosocial_jax.evaluation.judges import JudgeInput, Judgement, load_judge
from prosocial_jax.evaluation.likelihood import mean_log_likelihood, sequence_log_likelihood
from prosocial_jax.evaluation.metrics import compute_metrics, read_score_rows
from prosocial_jax.evaluation.preference_accuracy import evaluate_adapter, simplex_grid
from prosocial_jax.evaluation.refusal import is_refusal, refusal_rate
from prosocial_jax.evaluation.reports import markdown_table, save_figure, write_report
from prosocial_jax.evaluation.sweeps import SweepSettings, sweep

__all__ = [
           "CompareSettings",
           "EvaluateSettings",
           "JudgeInput",
           "Judgement",
           "SweepSettings",
           "compute_metrics",
           "evaluate",
           "evaluate_adapter",
           "is_refusal",
           "load_judge",
           "markdown_table",
           "mean_log_likelihood",
           "read_score_rows",
           "refusal_rate",
           "save_figure",
           "sequence_log_likelihood",
           "simplex_grid",
           "sweep",
           "write_report",
]
