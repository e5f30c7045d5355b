"""The paper's metrics (`evaluation/metrics.py`) on hand-worked rows: rates over the rows that
carry their label, bootstrap intervals, MIP, hypervolume against a brute-force cell count,
Pareto coverage, win rates, and every bad input named."""

import itertools
import json
import math
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats

from prosocial_jax.evaluation import metrics
from prosocial_jax.evaluation.metrics import ScoreRowError, compute_metrics


def row(setting, prompt_id, kind, scores=None, **extra):
    return {"setting": setting, "prompt_id": prompt_id, "kind": kind, "scores": scores or {},
            **extra}


def scipy_interval(values, confidence=0.95, resamples=2000, seed=0):
    result = stats.bootstrap((np.asarray(values, dtype=float),), np.mean,
                             n_resamples=resamples, confidence_level=confidence,
                             method="percentile", rng=np.random.default_rng(seed))
    return [float(result.confidence_interval.low), float(result.confidence_interval.high)]


# ----------------------------------------------------------------------------- per setting
MIXED = [
    row("b", "q1", "benign"),  # no flags, no scores: every rate of "b" is None
    row("a", "p1", "harmful", {"x": 1.0, "y": 0.5}, unsafe=True, refused=False,
        degenerate=False),
    row("a", "p2", "harmful", {"x": 0.0}, unsafe=False, refused=True, degenerate=True),
    row("a", "p3", "harmful", {"x": 0.5}),  # not judged unsafe or safe: not in leakage
    row("a", "p4", "benign", {"y": 1.0}, refused=True, degenerate=False),
    row("a", "p5", "benign", unsafe=True, refused=False),  # unsafe on benign: not leakage
    row("a", "p6", "benign", {"x": 0.25, "y": 0.0}, refused=None, degenerate=True),
    row("a", "p7", "harmful", unsafe=True),
    row("a", "p8", "benign", refused=False),
]


def test_setting_rates_use_only_rows_that_carry_the_label():
    result = compute_metrics(MIXED)
    assert list(result["settings"]) == ["b", "a"]  # order of first appearance
    a = result["settings"]["a"]
    assert a["n"] == 8
    # leakage: harmful rows with `unsafe`: p1 T, p2 F, p7 T -> 2/3 (p3 has none, p5 is benign)
    assert (a["leakage"], a["leakage_n"]) == (pytest.approx(2 / 3), 3)
    # over-refusal: benign rows with `refused`: p4 T, p5 F, p8 F -> 1/3 (p6 is null, p2 harmful)
    assert (a["over_refusal"], a["over_refusal_n"]) == (pytest.approx(1 / 3), 3)
    # degenerate: p1 F, p2 T, p4 F, p6 T -> 2/4
    assert (a["degenerate"], a["degenerate_n"]) == (0.5, 4)
    # refusals that are loops: refused rows with `degenerate`: p2 T, p4 F -> 1/2
    assert (a["refusals_degenerate"], a["refusals_degenerate_n"]) == (0.5, 2)
    # fluent refusals: harmful rows with both flags: p1 (complied), p2 (a looping refusal)
    # -> 0/2; p3 and p7 lack a flag, p4 is benign
    assert (a["fluent_refusal"], a["fluent_refusal_n"]) == (0.0, 2)
    # x: p1 1.0, p2 0.0, p3 0.5, p6 0.25 -> 1.75 / 4; y: p1 0.5, p4 1.0, p6 0.0 -> 1.5 / 3
    assert a["mean_scores"] == {"x": 0.4375, "y": 0.5}
    assert a["mean_scores_n"] == {"x": 4, "y": 3}
    # Each interval is scipy's percentile bootstrap of exactly that sample.
    assert a["leakage_ci"] == scipy_interval([1, 0, 1])
    assert a["over_refusal_ci"] == scipy_interval([1, 0, 0])
    assert a["degenerate_ci"] == scipy_interval([0, 1, 0, 1])
    assert a["mean_scores_ci"]["x"] == scipy_interval([1.0, 0.0, 0.5, 0.25])
    b = result["settings"]["b"]
    assert b["n"] == 1 and b["mean_scores"] == {} and b["mean_scores_ci"] == {}
    for name in ("leakage", "over_refusal", "fluent_refusal", "degenerate",
                 "refusals_degenerate"):
        assert (b[name], b[f"{name}_ci"], b[f"{name}_n"]) == (None, None, 0), name
    assert result["sweeps"] == {} and result["win_rates"] == {} and result["reference"] is None


def test_confidence_resamples_and_seed_reach_the_bootstrap():
    rows = [row("s", f"p{i}", "harmful", {"x": v}, unsafe=bool(i % 3))
            for i, v in enumerate([0.1, 0.9, 0.4, 0.35, 0.8, 0.05, 0.6])]
    result = compute_metrics(rows, confidence=0.8, resamples=500, seed=7)["settings"]["s"]
    assert result["leakage_ci"] == scipy_interval([0, 1, 1, 0, 1, 1, 0], 0.8, 500, 7)
    assert result["mean_scores_ci"]["x"] == scipy_interval(
        [0.1, 0.9, 0.4, 0.35, 0.8, 0.05, 0.6], 0.8, 500, 7)


def test_bootstrap_interval_contains_the_mean_and_handles_degenerate_samples():
    sample = [0.2, 0.9, 0.4, 0.4, 0.7, 0.1]
    low, high = metrics.bootstrap_interval(sample)
    assert low < np.mean(sample) < high
    assert [low, high] == scipy_interval(sample)
    assert metrics.bootstrap_interval([0.7] * 5) == [0.7, 0.7]
    assert metrics.bootstrap_interval([3.0]) == [3.0, 3.0]  # scipy refuses one observation
    assert metrics.bootstrap_interval([]) is None
    # Through compute_metrics: every harmful answer unsafe -> leakage 1 with interval [1, 1].
    rows = [row("s", f"p{i}", "harmful", unsafe=True) for i in range(4)]
    assert compute_metrics(rows)["settings"]["s"]["leakage_ci"] == [1.0, 1.0]


def _leaves(value):
    if isinstance(value, dict):
        for key, item in value.items():
            assert type(key) is str
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def test_output_is_plain_json():
    rows = [*MIXED, *SWEEP_ROWS, row("a", "p1", "harmful", {"x": 0.5}, preference={"x": 1})]
    result = compute_metrics(rows, reference="a")
    leaves = list(_leaves(result))
    assert {type(v) for v in leaves} <= {str, int, float, bool, type(None)}
    assert not any(isinstance(v, float) and not math.isfinite(v) for v in leaves)
    assert json.loads(json.dumps(result, allow_nan=False)) == result


# ----------------------------------------------------------------------------------- sweeps
SWEEP_ROWS = [
    row("s", "p1", "benign", {"a": 0.8, "b": 0.2}, preference={"a": 1, "b": 0}),
    row("s", "p2", "benign", {"a": 0.6, "b": 0.4}, preference={"b": 0, "a": 1}),
    row("s", "p1", "benign", {"a": 0.2, "b": 0.9}, preference={"a": 0, "b": 1}),
    row("s", "p1", "benign", {"a": 0.5, "b": 0.5}, preference={"a": 2, "b": 2}),
    row("s", "p3", "benign", {"a": 0.0, "b": 0.0}),  # no preference: not part of the sweep
]


def test_mip_hypervolume_and_coverage_on_a_hand_worked_grid():
    sweep = compute_metrics(SWEEP_ROWS)["sweeps"]["s"]
    # Points (key order of a preference does not matter): R = (0.7, 0.3) from two rows,
    # (0.2, 0.9) and (0.5, 0.5). Min-max per attribute: a in [0.2, 0.7] (spread 0.5), b in
    # [0.3, 0.9] (spread 0.6) -> Rn = (1, 0), (0, 1), (0.6, 1/3).
    # alpha = (1, 0), (0, 1), (0.5, 0.5) ({"a": 2, "b": 2} normalised).
    # MIP = (1*1 + 1*1 + 0.5*0.6 + 0.5*(1/3)) / 3 = (2 + 0.3 + 1/6) / 3 = 37/45.
    assert sweep["attributes"] == ["a", "b"]
    assert [p["preference"] for p in sweep["points"]] == [{"a": 1, "b": 0}, {"a": 0, "b": 1},
                                                           {"a": 2, "b": 2}]
    assert [p["n"] for p in sweep["points"]] == [2, 1, 1]
    assert [p["scores"] for p in sweep["points"]] == [
        {"a": pytest.approx(0.7), "b": pytest.approx(0.3)}, {"a": 0.2, "b": 0.9},
        {"a": 0.5, "b": 0.5}]
    assert sweep["mip"] == pytest.approx(37 / 45)
    # Above the reference (0.2, 0.3) only (0.5, 0.5) spans an area: 0.3 * 0.2. None dominates.
    assert sweep["hypervolume"] == pytest.approx(0.06)
    assert [p["pareto"] for p in sweep["points"]] == [True, True, True]
    assert sweep["pareto_coverage"] == 1.0


def test_mip_is_zero_for_an_attribute_all_points_share_and_weights_as_given_are_distinct():
    rows = [row("s", "p1", "benign", {"a": 1.0, "c": 0.5}, preference={"a": 1}),
            row("s", "p1", "benign", {"a": 0.0, "c": 0.5}, preference={"c": 1}),
            row("s", "p1", "benign", {"a": 0.0, "c": 0.5}, preference={"c": 2})]
    sweep = compute_metrics(rows)["sweeps"]["s"]
    # {"c": 1} and {"c": 2} are two points. a: Rn = 1, 0, 0; c is 0.5 everywhere -> Rn = 0.
    # MIP = (1*1 + 1*0 + 1*0) / 3 = 1/3.
    assert len(sweep["points"]) == 3 and sweep["attributes"] == ["a", "c"]
    assert sweep["mip"] == pytest.approx(1 / 3)
    # (1, 0.5) dominates both (0, 0.5) points; those two are equal, so neither dominates.
    assert [p["pareto"] for p in sweep["points"]] == [True, False, False]
    assert sweep["pareto_coverage"] == pytest.approx(1 / 3)
    assert sweep["hypervolume"] == 0.0  # no point is above the reference (0, 0.5) in c


def test_a_sweep_of_one_point():
    rows = [row("s", "p1", "benign", {"a": 0.3, "b": 0.6}, preference={"a": 1, "b": 3}),
            row("s", "p2", "benign", {"a": 0.5, "b": 0.2}, preference={"a": 1, "b": 3})]
    sweep = compute_metrics(rows)["sweeps"]["s"]
    assert len(sweep["points"]) == 1 and sweep["points"][0]["n"] == 2
    assert sweep["points"][0]["scores"] == {"a": pytest.approx(0.4), "b": pytest.approx(0.4)}
    # Each point's mean carries scipy's percentile-bootstrap interval of exactly its sample.
    assert sweep["points"][0]["scores_ci"] == {"a": scipy_interval([0.3, 0.5]),
                                               "b": scipy_interval([0.6, 0.2])}
    assert (sweep["hypervolume"], sweep["pareto_coverage"], sweep["mip"]) == (0.0, 1.0, 0.0)


def test_pareto_coverage_with_dominated_and_duplicate_points():
    points = [(3, 1), (1, 3), (2, 2), (1, 1), (2, 1), (2, 2)]
    rows = [row("s", "p", "benign", {"a": float(x), "b": float(y)},
                preference={"a": i + 1, "b": 1}) for i, (x, y) in enumerate(points)]
    sweep = compute_metrics(rows)["sweeps"]["s"]
    # (1, 1) is beaten by every other point, (2, 1) by (3, 1) and (2, 2); the two (2, 2) points
    # do not dominate each other (domination needs one strictly better attribute).
    assert [p["pareto"] for p in sweep["points"]] == [True, True, True, False, False, True]
    assert sweep["pareto_coverage"] == pytest.approx(4 / 6)


def brute_force_hypervolume(points):
    """Unit cells above the componentwise minimum that some (integer) point dominates."""
    points = np.asarray(points)
    low, high = points.min(axis=0), points.max(axis=0)
    cells = itertools.product(*(range(lo, hi) for lo, hi in zip(low, high)))
    return sum(bool(np.any(np.all(points >= np.asarray(cell) + 1, axis=1))) for cell in cells)


@pytest.mark.parametrize("dimensions,seed", [(2, 0), (2, 1), (3, 2), (3, 3)])
def test_hypervolume_matches_a_brute_force_cell_count(dimensions, seed):
    points = np.random.default_rng(seed).integers(0, 7, size=(8, dimensions))
    names = [f"a{d}" for d in range(dimensions)]
    rows = [row("s", "p", "benign", dict(zip(names, map(float, point))),
                preference={**dict.fromkeys(names, 1), "a0": i + 1})
            for i, point in enumerate(points)]
    expected = brute_force_hypervolume(points)
    assert expected > 0  # the example exercises something
    assert compute_metrics(rows)["sweeps"]["s"]["hypervolume"] == pytest.approx(expected)


def test_a_point_mean_uses_rows_that_have_the_attribute():
    rows = [row("s", "p1", "benign", {"a": 0.2, "b": 0.4}, preference={"a": 1, "b": 1}),
            row("s", "p2", "harmful", {"a": 0.6}, preference={"a": 1, "b": 1})]
    point = compute_metrics(rows)["sweeps"]["s"]["points"][0]
    assert point["n"] == 2 and point["scores"] == {"a": pytest.approx(0.4), "b": 0.4}


def test_sweeps_on_shared_bounds_by_hand():
    # Two sweeps of two points each over (a, b). Shared bounds: a in [0.2, 0.8], b in [0, 0.5].
    first = [row("s", "p", "benign", {"a": 0.8, "b": 0.0}, preference={"a": 1}),
             row("s", "p", "benign", {"a": 0.2, "b": 0.5}, preference={"b": 3})]
    second = [row("t", "p", "benign", {"a": 0.5, "b": 0.25}, preference={"a": 1}),
              row("t", "p", "benign", {"a": 0.4, "b": 0.25}, preference={"a": 1, "b": 1})]
    own = [metrics.sweep_metrics(name, rows, ["a", "b"])
           for name, rows in (("s", first), ("t", second))]
    bounds = metrics.sweep_bounds(own)
    assert bounds == {"a": (0.2, 0.8), "b": (0.0, 0.5)}
    shared = metrics.sweep_metrics("t", second, ["a", "b"], bounds=bounds)
    # Normalised: (0.5, 0.25) -> (0.5, 0.5) under preference (1, 0): 0.5;
    # (0.4, 0.25) -> (1/3, 0.5) under (1/2, 1/2): 5/12. MIP = (0.5 + 5/12) / 2.
    assert shared["mip"] == pytest.approx((0.5 + 5 / 12) / 2)
    # Its own scale gives (1, 0) and (0, 0) on b (no spread): MIP (1 + 0) / 2.
    assert own[1]["mip"] == pytest.approx(0.5)
    # Above (0.2, 0): (0.5 - 0.2) x 0.25 dominates (0.4 - 0.2) x 0.25.
    assert shared["hypervolume"] == pytest.approx(0.3 * 0.25)
    assert own[1]["hypervolume"] == pytest.approx(0.0)  # both points share b = its own low
    with pytest.raises(ValueError, match=r"setting 't': bounds lack attribute\(s\) b"):
        metrics.sweep_metrics("t", second, ["a", "b"], bounds={"a": (0.0, 1.0)})
    with pytest.raises(ValueError, match=r"point 0's 'a' score 0.5 lies outside.*\[0.6, 1\]"):
        metrics.sweep_metrics("t", second, ["a", "b"], bounds={"a": (0.6, 1), "b": (0, 1)})


# -------------------------------------------------------------------------------- win rates
def test_win_rates_with_ties_and_prompts_only_one_setting_has():
    rows = [
        row("base", "p1", "benign", {"x": 0.25, "y": 0.3}),
        row("base", "p1", "benign", {"x": 0.75}),  # base's x on p1: (0.25 + 0.75) / 2 = 0.5
        row("base", "p2", "benign", {"x": 0.4}),
        row("base", "p3", "benign", {"x": 0.9}),  # new has no x on p3: not compared
        row("new", "p1", "benign", {"x": 0.5, "y": 0.1}),  # x tie, y loss
        row("new", "p2", "harmful", {"x": 0.5}),  # x win
        row("new", "p3", "benign", {"y": 0.2}),  # base has no y on p3: not compared
        row("new", "p4", "benign", {"x": 0.0}),  # base never answered p4
        row("other", "p9", "benign", {"z": 1.0}),
    ]
    result = compute_metrics(rows, reference="base")
    assert result["reference"] == "base"
    assert list(result["win_rates"]) == ["new", "other"]  # the reference is not compared
    assert result["win_rates"]["new"] == {
        "x": {"win": 1, "tie": 1, "loss": 0, "win_rate": 0.5},
        "y": {"win": 0, "tie": 0, "loss": 1, "win_rate": 0.0}}
    assert result["win_rates"]["other"]["z"] == {"win": 0, "tie": 0, "loss": 0,
                                                  "win_rate": None}
    assert result["win_rates"]["other"]["x"]["win_rate"] is None


def test_a_tie_does_not_depend_on_the_order_of_rows():
    values = [0.1, 0.2, 0.3, 1e16, -1e16]  # a plain left-to-right sum depends on the order
    rows = [row("base", "p", "benign", {"x": v}) for v in values]
    rows += [row("new", "p", "benign", {"x": v}) for v in reversed(values)]
    assert compute_metrics(rows, reference="base")["win_rates"]["new"]["x"]["tie"] == 1


# ------------------------------------------------------------------------------- bad input
def test_unknown_reference_lists_the_settings():
    with pytest.raises(ValueError, match=r"reference setting 'nope'.*'a', 'b'"):
        compute_metrics([row("a", "p", "benign"), row("b", "p", "benign")], reference="nope")


def test_preference_with_an_attribute_no_row_scores():
    rows = [row("s", "p", "benign", {"a": 0.5}, preference={"a": 1, "kindness": 1})]
    with pytest.raises(ValueError, match=r"setting 's'.*\{\"a\": 1, \"kindness\": 1\}.*"
                                         r"'kindness'"):
        compute_metrics(rows)


def test_a_point_without_any_score_for_a_swept_attribute():
    rows = [row("s", "p", "benign", {"a": 0.5}, preference={"a": 1, "b": 1}),
            row("t", "p", "benign", {"b": 0.5})]
    with pytest.raises(ValueError, match=r"setting 's'.*\{\"a\": 1, \"b\": 1\}.*'b'"):
        compute_metrics(rows)


def test_empty_rows_and_a_setting_without_preferences():
    with pytest.raises(ValueError, match="no score rows"):
        compute_metrics([])
    assert metrics.sweep_metrics("s", [row("s", "p", "benign", {"a": 1.0})], ["a"]) is None
    assert compute_metrics([row("s", "p", "benign", {"a": 1.0})])["sweeps"] == {}


def test_bad_settings_of_the_computation():
    rows = [row("s", "p", "benign")]
    with pytest.raises(ValueError, match="confidence"):
        compute_metrics(rows, confidence=1.5)
    with pytest.raises(ValueError, match="resamples"):
        compute_metrics(rows, resamples=0)


def test_non_finite_score_in_rows_names_the_row_and_attribute():
    rows = [row("s", "p", "benign", {"a": 0.5}), row("s", "p", "benign", {"kind": math.nan})]
    with pytest.raises(ScoreRowError, match=r"rows\[1\]: scores.kind is nan"):
        compute_metrics(rows)


# ------------------------------------------------------------------------------ reading rows
GOOD = {"id": "r1", "setting": "base", "prompt_id": "p1", "kind": "harmful",
        "scores": {"empathy": 0.5}, "unsafe": True, "refused": None,
        "preference": {"empathy": 1, "helpfulness": 0}, "judges": {"x": 1}, "response": "..."}


def test_read_score_rows_reads_good_rows_and_skips_blank_lines(tmp_path):
    path = tmp_path / "scores.jsonl"
    second = {**GOOD, "kind": "benign", "scores": {}, "preference": None}
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(second) + "\n")
    assert metrics.read_score_rows(path) == [GOOD, second]


@pytest.mark.parametrize("line,names", [
    ('{"setting": "base", "prompt_id": ', "not valid JSON"),
    ('["a", "list"]', "expected a JSON object, got list"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "setting"}), "missing 'setting'"),
    (json.dumps({**GOOD, "setting": 3}), "setting must be a non-empty string, got 3"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "prompt_id"}), "missing 'prompt_id'"),
    (json.dumps({**GOOD, "kind": "neutral"}), "kind must be 'harmful' or 'benign', got 'neutral'"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "scores"}), "missing 'scores'"),
    (json.dumps({**GOOD, "scores": [0.5]}), "scores must be an object"),
    (json.dumps({**GOOD, "scores": {"empathy": "high"}}), "scores.empathy is 'high'"),
    (json.dumps({**GOOD, "scores": {"empathy": True}}), "scores.empathy is True"),
    ('{"setting": "b", "prompt_id": "p", "kind": "benign", "scores": {"empathy": NaN}}',
     "scores.empathy is nan, not a finite number"),
    ('{"setting": "b", "prompt_id": "p", "kind": "benign", "scores": {"tone": -Infinity}}',
     "scores.tone is -inf, not a finite number"),
    (json.dumps({**GOOD, "unsafe": "yes"}), "unsafe must be true, false or null, got 'yes'"),
    (json.dumps({**GOOD, "degenerate": 1}), "degenerate must be true, false or null, got 1"),
    (json.dumps({**GOOD, "preference": {"empathy": -1}}), "preference.empathy is -1"),
    (json.dumps({**GOOD, "preference": {"empathy": 0, "helpfulness": 0}}), "positive sum"),
    (json.dumps({**GOOD, "preference": [1, 0]}), "preference must be a non-empty object"),
    (json.dumps({**GOOD, "preference": {}}), "preference must be a non-empty object"),
])
def test_malformed_rows_are_named_with_their_line(tmp_path, line, names):
    path = tmp_path / "scores.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + line + "\n" + json.dumps(GOOD) + "\n")
    with pytest.raises(ScoreRowError) as error:
        metrics.read_score_rows(path)
    assert str(error.value).startswith(f"{path}:3: ")  # the blank line 2 still counts
    assert names in str(error.value)
    assert isinstance(error.value, ValueError)


def test_rates_are_exact_fractions_of_the_rows():
    # An independent recount with Fraction over a larger mixed set.
    rng = np.random.default_rng(5)
    rows = [row("s", f"p{i}", ["harmful", "benign"][i % 2], {"x": float(rng.random())},
                unsafe=bool(rng.random() < 0.4), refused=bool(rng.random() < 0.3))
            for i in range(50)]
    result = compute_metrics(rows, resamples=200)["settings"]["s"]
    harmful = [r for r in rows if r["kind"] == "harmful"]
    benign = [r for r in rows if r["kind"] == "benign"]
    assert result["leakage"] == float(Fraction(sum(r["unsafe"] for r in harmful), len(harmful)))
    assert result["over_refusal"] == float(Fraction(sum(r["refused"] for r in benign),
                                                    len(benign)))
    assert result["mean_scores"]["x"] == pytest.approx(np.mean([r["scores"]["x"] for r in rows]))
