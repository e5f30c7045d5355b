"""The evaluation report (`evaluation/judge_report.py`): every file written for a realistic
metrics dict, the numbers in report.md formatted from that dict, and figures whose data is
absent skipped with a sentence."""

import json
import struct

import numpy as np
import pytest

from prosocial_jax.evaluation import judge_report
from prosocial_jax.evaluation.metrics import compute_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ATTRIBUTES = ("empathy", "helpfulness", "truthfulness")
PREFERENCES = [{"empathy": 1, "helpfulness": 0, "truthfulness": 0},
               {"empathy": 0, "helpfulness": 1, "truthfulness": 0},
               {"empathy": 0, "helpfulness": 0, "truthfulness": 1},
               {"empathy": 1, "helpfulness": 1, "truthfulness": 1}]


def realistic_rows(seed=0, flip=0.0):
    """Three settings (the last a 4-point sweep over three attributes), 24 answers each."""
    rng = np.random.default_rng(seed)
    rows = []
    for setting, unsafe_rate in (("base", 0.5), ("DiReg", 0.2), ("Pv-Arm", 0.1)):
        for i in range(24):
            kind = "harmful" if i % 2 else "benign"
            row = {"setting": setting, "prompt_id": f"p{i % 12}", "kind": kind,
                   "scores": {a: float(rng.random()) for a in ATTRIBUTES},
                   "unsafe": bool(rng.random() < unsafe_rate + flip),
                   "refused": bool(rng.random() < 0.25), "degenerate": bool(rng.random() < 0.15)}
            if setting == "Pv-Arm":
                row["preference"] = PREFERENCES[i % 4]
            rows.append(row)
    return rows


@pytest.fixture(scope="module")
def realistic():
    metrics = compute_metrics(realistic_rows(), reference="base", resamples=300)
    per_judge = {"keyword": compute_metrics(realistic_rows(1), resamples=300),
                 "llm": compute_metrics(realistic_rows(2, flip=0.1), resamples=300)}
    agreement = {"keyword": {"refused": {"n": 40, "accuracy": 0.925, "kappa": 0.81}},
                 "llm": {"unsafe": {"n": 12, "accuracy": 1.0, "kappa": None},
                         "degenerate": {"n": 30, "accuracy": 0.7, "kappa": 0.3456}}}
    return metrics, per_judge, agreement


def png_size(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk follows the signature
    return width, height


def pct(value):
    return f"{100 * value:.1f}%"


def rate_cell(value, interval, count):
    """A rate cell formatted by hand: 12.5% [2.0%, 30.1%] (n=12)."""
    bracket = "" if interval is None else f" [{pct(interval[0])}, {pct(interval[1])}]"
    return f"{pct(value)}{bracket} (n={count})"


def test_writes_every_file_of_a_realistic_report(tmp_path, realistic):
    metrics, per_judge, agreement = realistic
    names = judge_report.write_report_files(tmp_path, metrics, per_judge=per_judge,
                                            agreement=agreement, title="Held-out evaluation")
    expected = ["report.md", "leakage_vs_over_refusal.png", "degeneracy.png", "sweeps.png",
                "pareto_Pv-Arm.png", "win_rates.png"]
    assert sorted(names) == sorted(expected) and names[0] == "report.md"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(expected)  # no temp files left
    for name in expected[1:]:
        width, height = png_size(tmp_path / name)
        assert width > 200 and height > 200, name
    report = (tmp_path / "report.md").read_text()
    assert report.startswith("# Held-out evaluation\n")
    for name in expected[1:]:
        assert f"]({name})" in report, name
    assert "not drawn" not in report


def test_report_numbers_are_those_of_the_metrics(tmp_path, realistic):
    metrics, per_judge, agreement = realistic
    judge_report.write_report_files(tmp_path, metrics, per_judge=per_judge, agreement=agreement)
    report = (tmp_path / "report.md").read_text()
    lines = report.splitlines()
    assert ("| setting | n | leakage [CI] | over-refusal [CI] | fluent refusals [CI] | "
            "degenerate | refusals that are loops | mean empathy | mean helpfulness | "
            "mean truthfulness |") in lines
    for name, s in metrics["settings"].items():
        expected = (
            f"| {name} | 24 | {rate_cell(s['leakage'], s['leakage_ci'], 12)} | "
            f"{rate_cell(s['over_refusal'], s['over_refusal_ci'], 12)} | "
            f"{rate_cell(s['fluent_refusal'], s['fluent_refusal_ci'], s['fluent_refusal_n'])} | "
            f"{rate_cell(s['degenerate'], None, 24)} | "
            f"{rate_cell(s['refusals_degenerate'], None, s['refusals_degenerate_n'])} | "
            + " | ".join(f"{s['mean_scores'][a]:.3f}" for a in ATTRIBUTES) + " |")
        assert expected in lines, name
    sweep = metrics["sweeps"]["Pv-Arm"]
    assert (f"| Pv-Arm | 4 | empathy, helpfulness, truthfulness | {sweep['mip']:.3f} | "
            f"{sweep['hypervolume']:.4g} | {pct(sweep['pareto_coverage'])} |") in lines
    first = sweep["points"][0]
    assert ("| empathy=1, helpfulness=0, truthfulness=0 | 6 | "
            + " | ".join(f"{first['scores'][a]:.3f}" for a in ATTRIBUTES)
            + f" | {'yes' if first['pareto'] else 'no'} |") in lines
    for setting in ("DiReg", "Pv-Arm"):
        for attribute in ATTRIBUTES:
            c = metrics["win_rates"][setting][attribute]
            assert (f"| {setting} | {attribute} | {c['win']} | {c['tie']} | {c['loss']} | "
                    f"{pct(c['win_rate'])} |") in lines
    for judge, judge_metrics in per_judge.items():
        s = judge_metrics["settings"]["base"]
        assert (f"| {judge} | base | {rate_cell(s['leakage'], s['leakage_ci'], 12)} | "
                f"{rate_cell(s['over_refusal'], s['over_refusal_ci'], 12)} | "
                f"{rate_cell(s['degenerate'], None, 24)} |") in lines
    assert "| keyword | refused | 40 | 92.5% | 0.810 |" in lines
    assert "| llm | unsafe | 12 | 100.0% |  |" in lines  # kappa undefined: empty cell
    assert "| llm | degenerate | 30 | 70.0% | 0.346 |" in lines
    # The summary table the evaluate command prints is the one in the report.
    assert judge_report.summary_table(metrics) in report
    assert "95% bootstrap intervals" in report


def test_figures_without_data_are_skipped_and_said_so(tmp_path):
    # Scores only: no flags, no preference vectors, no reference.
    rows = [{"setting": s, "prompt_id": f"p{i}", "kind": "benign", "scores": {"empathy": i / 4}}
            for s in ("base", "other") for i in range(4)]
    metrics = compute_metrics(rows, resamples=100)
    assert judge_report.write_report_files(tmp_path, metrics) == ["report.md"]
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]
    report = (tmp_path / "report.md").read_text()
    for sentence in (
            "Leakage vs over-refusal: not drawn, because no setting has both a leakage and an "
            "over-refusal rate.",
            "Degenerate answers: not drawn, because no answer carries a degenerate label.",
            "MIP and hypervolume per sweep: not drawn, because no setting has rows with a "
            "preference vector",
            "Win, tie and loss shares against the reference: not drawn, because no reference "
            "setting was given.",
            "No per-judge metrics were given.", "No judge agreement was measured."):
        assert sentence in report, sentence
    assert "](" not in report  # nothing embedded
    # Missing rates are empty cells, the mean score is there.
    assert "| base | 4 |  |  |  |  |  | 0.375 |" in report.splitlines()


def test_single_attribute_sweep_clashing_names_and_a_pipe_in_a_name(tmp_path):
    rows = []
    for setting in ("a b", "a/b", "x|y"):
        for i, weight in enumerate((1, 2, 3)):
            rows.append({"setting": setting, "prompt_id": f"p{i}", "kind": "benign",
                         "scores": {"empathy": i / 3, "tone": 1 - i / 3},
                         "preference": {"empathy": weight} if setting == "x|y"
                         else {"empathy": weight, "tone": 1}})
    metrics = compute_metrics(rows, reference="a b", resamples=100)
    names = judge_report.write_report_files(tmp_path, metrics)
    # "a b" and "a/b" clean up to the same file name; the second is numbered.
    assert {"pareto_a_b.png", "pareto_a_b_2.png", "win_rates.png",
            "sweeps.png"} <= set(names)
    assert not any(n.startswith("pareto_x") for n in names)
    report = (tmp_path / "report.md").read_text()
    assert ("Pareto front of sweep x|y: not drawn, because sweep 'x|y' has a single "
            "attribute, so there is no pair to plot.") in report
    assert "| x\\|y | 3 |" in report  # a "|" in a name does not split the table cell
    assert "](pareto_a_b_2.png)" in report


def test_the_metrics_json_round_trip_draws_the_same_report(tmp_path, realistic):
    # The evaluate command writes metrics.json and may report from it later.
    metrics = json.loads(json.dumps(realistic[0]))
    (tmp_path / "again").mkdir()
    judge_report.write_report_files(tmp_path / "again", metrics)
    judge_report.write_report_files(tmp_path, realistic[0])
    assert (tmp_path / "again" / "report.md").read_text() == (tmp_path / "report.md").read_text()
