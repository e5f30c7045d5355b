"""Evaluation: the instruments that measure outputs, and the one writer of reports.

- `refusal`: HarmBench's keyword refusal rule (on harmful prompts a refusal is the safe
  outcome, on benign ones over-refusal).
- `likelihood`: response log-likelihood, one computation for the fine-tuning loss, the Pv-Arm
  reward and the fluency guard.
- `scorers`: transparent rule-based attribute scorers, a weak stand-in for judges.
- `preference_accuracy`: a reward adapter's held-out pairwise accuracy on a fixed preference
  grid.
- `sweeps`: a model edit's strength sweep, refusals and fluency over (top_k, scale).
- `compare`: the whole pipeline side by side (base, DiReg, Pv-Arm guidance).
- `reports`: Markdown tables, PNG plots and report folders, for every stage.

Imports `decoding` (to generate), `data` and `models`, never
`direg` or `pvarm`: those stages use these instruments to build their data (refusals filter
DiReg's harmful answers, scorers label Pv-Arm's preference pairs), and what a sweep evaluates is
passed in as a function.
"""

from prosocial_jax.evaluation.compare import CompareSettings
from prosocial_jax.evaluation.likelihood import mean_log_likelihood, sequence_log_likelihood
from prosocial_jax.evaluation.preference_accuracy import evaluate_adapter, simplex_grid
from prosocial_jax.evaluation.refusal import is_refusal, refusal_rate
from prosocial_jax.evaluation.reports import markdown_table, save_figure, write_report
from prosocial_jax.evaluation.sweeps import SweepSettings, sweep

__all__ = ["CompareSettings", "SweepSettings", "evaluate_adapter", "is_refusal",
           "markdown_table", "mean_log_likelihood", "refusal_rate", "save_figure",
           "sequence_log_likelihood", "simplex_grid", "sweep", "write_report"]
