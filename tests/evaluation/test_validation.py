"""Judge agreement (accuracy, Cohen's kappa) against hand-computed 2x2 tables, the bundled
labelled set, and the two rule judges scored on it."""

from __future__ import annotations

import json
import re
import warnings

import pytest

from prosocial_jax.data.prompts import harmbench_behaviors
from prosocial_jax.evaluation.degeneracy import is_degenerate
from prosocial_jax.evaluation.refusal import is_refusal
from prosocial_jax.evaluation.validation import (
    LABELS,
    agreement,
    judge_agreement,
    load_validation_set,
)


def table(tp: int, fn: int, fp: int, tn: int) -> tuple[list[bool], list[bool]]:
    """(predicted, truth) lists realising a 2x2 table (rows: truth, columns: prediction)."""
    truth = [True] * (tp + fn) + [False] * (fp + tn)
    predicted = [True] * tp + [False] * fn + [True] * fp + [False] * tn
    return predicted, truth


def test_agreement_symmetric_table():
    # TP 4, FN 1, FP 2, TN 3 (n 10). po = (4 + 3) / 10 = 0.7.
    # The judge says yes 6/10, the labels 5/10: pe = 0.6 * 0.5 + 0.4 * 0.5 = 0.5.
    # kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    result = agreement(*table(4, 1, 2, 3))
    assert result["n"] == 10
    assert result["accuracy"] == pytest.approx(0.7)
    assert result["kappa"] == pytest.approx(0.4)


def test_agreement_skewed_table():
    # TP 6, FN 4, FP 2, TN 18 (n 30). po = 24 / 30 = 0.8.
    # The judge says yes 8/30, the labels 10/30:
    # pe = (8/30)(10/30) + (22/30)(20/30) = (80 + 440) / 900 = 520 / 900.
    # kappa = (720/900 - 520/900) / (1 - 520/900) = 200 / 380 = 10/19.
    result = agreement(*table(6, 4, 2, 18))
    assert result["n"] == 30
    assert result["accuracy"] == pytest.approx(0.8)
    assert result["kappa"] == pytest.approx(10 / 19)


def test_agreement_total_disagreement():
    # TP 0, FN 2, FP 2, TN 0: po = 0; both say yes half the time: pe = 0.25 + 0.25 = 0.5;
    # kappa = (0 - 0.5) / (1 - 0.5) = -1.
    result = agreement(*table(0, 2, 2, 0))
    assert result == {"n": 4, "accuracy": 0.0, "kappa": pytest.approx(-1.0)}


def test_abstentions_are_left_out():
    predicted, truth = table(4, 1, 2, 3)
    # Abstain on three extra rows that would all count as errors if read as False.
    predicted = [None, *predicted, None, None]
    truth = [True, *truth, True, True]
    result = agreement(predicted, truth)
    assert result["n"] == 10
    assert result["accuracy"] == pytest.approx(0.7)
    assert result["kappa"] == pytest.approx(0.4)
    assert agreement([None, None], [True, False]) == {"n": 0, "accuracy": None, "kappa": None}
    assert agreement([], []) == {"n": 0, "accuracy": None, "kappa": None}


def test_undefined_kappa_is_none_without_a_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # One class on both sides: pe = 1, kappa = 0/0.
        assert agreement([True, True, True], [True, True, True]) == {
            "n": 3, "accuracy": 1.0, "kappa": None}
        assert agreement([False, None], [False, True])["kappa"] is None
        # One class on each side but different ones: pe = 0, so kappa is defined: (0 - 0) / 1.
        assert agreement([True, True], [False, False]) == {"n": 2, "accuracy": 0.0, "kappa": 0.0}


def test_agreement_rejects_mismatched_or_non_bool_input():
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        agreement([True, False, True], [True, False])
    with pytest.raises(ValueError, match="prediction 1 must be a bool, got 1"):
        agreement([True, 1], [True, True])
    with pytest.raises(ValueError, match="label 0 must be a bool, got 'yes'"):
        agreement([True], ["yes"])


def _row(row_id: str, **labels: bool) -> dict:
    return {"id": row_id, "labels": {**dict.fromkeys(LABELS, False), **labels}}


def test_judge_agreement_per_label():
    rows = [_row("a", refused=True), _row("b", refused=True, degenerate=True),
            _row("c"), _row("d", degenerate=True)]
    predictions = {
        "a": {"refused": True, "degenerate": None},
        "b": {"refused": False, "degenerate": True},
        "c": {"refused": False, "degenerate": False},
        # "d" skipped entirely.
    }
    result = judge_agreement(predictions, rows)
    assert set(result) == {"refused", "degenerate"}  # only what the judge predicts
    # refused over a, b, c: truth T T F, predicted T F F: TP 1, FN 1, FP 0, TN 1.
    # po = 2/3; judge yes 1/3, labels yes 2/3: pe = (1/3)(2/3) + (2/3)(1/3) = 4/9;
    # kappa = (2/3 - 4/9) / (1 - 4/9) = (2/9) / (5/9) = 0.4.
    assert result["refused"]["n"] == 3
    assert result["refused"]["accuracy"] == pytest.approx(2 / 3)
    assert result["refused"]["kappa"] == pytest.approx(0.4)
    # degenerate over b, c (a abstained, d skipped): truth T F, predicted T F: po 1, pe 0.5.
    assert result["degenerate"] == {"n": 2, "accuracy": 1.0, "kappa": pytest.approx(1.0)}


def test_judge_agreement_rejects_unknown_ids_and_labels():
    rows = [_row("a")]
    with pytest.raises(ValueError, match="ids not in the validation rows: \\['zz'\\]"):
        judge_agreement({"zz": {"refused": True}}, rows)
    with pytest.raises(ValueError, match="row 'a': unknown labels \\['refusal'\\]"):
        judge_agreement({"a": {"refusal": True}}, rows)


# ---- the bundled set

HARMFUL_WORD_CAP, OTHER_WORD_CAP = 30, 60
SETTINGS = {"base", "DiReg", "Pv-Arm (no safety stage)", "Pv-Arm + safety",
            "DiReg + Pv-Arm + safety", "DiReg + Pv-Arm + safety [empathy=1]",
            "DiReg + Pv-Arm + safety [truthfulness=1]",
            "DiReg + Pv-Arm + safety [helpfulness=1]"}


@pytest.fixture(scope="module")
def bundled():
    return load_validation_set()


def test_bundled_set_shape(bundled):
    assert len(bundled) >= 130
    ids = [row["id"] for row in bundled]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"v\d{3}", i) for i in ids)
    assert {row["setting"] for row in bundled} == SETTINGS
    assert {row["kind"] for row in bundled} == {"harmful", "benign", "prosocial"}
    # Every setting contributes rows of every kind.
    assert {(row["setting"], row["kind"]) for row in bundled} == {
        (s, k) for s in SETTINGS for k in ("harmful", "benign", "prosocial")}
    for label in LABELS:
        counts = {value: sum(row["labels"][label] == value for row in bundled)
                  for value in (True, False)}
        assert min(counts.values()) >= 10, (label, counts)  # kappa needs both classes


def test_bundled_responses_respect_the_caps(bundled):
    for row in bundled:
        cap = HARMFUL_WORD_CAP if row["kind"] == "harmful" else OTHER_WORD_CAP
        assert len(row["response"].split()) <= cap, row["id"]
        # No code fence or numbered step survives the cut of a harmful answer.
        if row["kind"] == "harmful":
            assert "```" not in row["response"], row["id"]
            assert not re.search(r"(^|\n)\s*\d+\.\s*\*{0,2}[A-Za-z]", row["response"]), row["id"]


def test_bundled_harmful_prompts_are_harmbench_verbatim(bundled):
    behaviours = {row["Behavior"] for row in harmbench_behaviors("test")}
    harmful = {row["prompt"] for row in bundled if row["kind"] == "harmful"}
    assert len(harmful) == 23  # the comparison's 16, and 7 more from guided-eval (v200-v210)
    assert harmful <= behaviours


def test_malformed_user_file_names_file_line_and_field(tmp_path):
    good = {"id": "u1", "setting": "base", "kind": "benign", "prompt": "Name a colour.",
            "response": "Blue.", "truncated": False,
            "labels": {"unsafe": False, "refused": False, "degenerate": False,
                       "on_topic": True}}
    bad = {**good, "id": "u2", "labels": {**good["labels"], "refused": "yes"}}
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(bad) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: field 'labels.refused'")):
        load_validation_set(path)

    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "kind": "evil"}) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: field 'kind'")):
        load_validation_set(path)

    path.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: not valid JSON")):
        load_validation_set(path)

    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: field 'id' repeats 'u1' "
                                                   "(first on line 1)")):
        load_validation_set(path)

    missing = {k: v for k, v in good.items() if k != "response"}
    path.write_text(json.dumps(missing) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: field 'response'")):
        load_validation_set(path)

    path.write_text("\n")
    with pytest.raises(ValueError, match="no labelled rows"):
        load_validation_set(path)

    path.write_text(json.dumps(good) + "\n")
    assert load_validation_set(path) == [good]


# ---- the rule judges, scored on the bundled set

def _by_hand(predicted: list[bool], truth: list[bool]) -> tuple[float, float]:
    """Accuracy and Cohen's kappa from the 2x2 counts (the oracle for `agreement`)."""
    n = len(truth)
    tp = sum(p and t for p, t in zip(predicted, truth))
    tn = sum(not p and not t for p, t in zip(predicted, truth))
    po = (tp + tn) / n
    p_yes, t_yes = sum(predicted) / n, sum(truth) / n
    pe = p_yes * t_yes + (1 - p_yes) * (1 - t_yes)
    return po, (po - pe) / (1 - pe)


@pytest.mark.parametrize(("label", "judge"), [("refused", is_refusal),
                                              ("degenerate", is_degenerate)])
def test_rule_judges_scored_on_the_set(bundled, label, judge):
    predictions = {row["id"]: {label: judge(row["response"])} for row in bundled}
    result = judge_agreement(predictions, bundled)
    assert set(result) == {label}
    accuracy, kappa = _by_hand([predictions[row["id"]][label] for row in bundled],
                               [row["labels"][label] for row in bundled])
    assert result[label]["n"] == len(bundled)
    assert result[label]["accuracy"] == pytest.approx(accuracy)
    assert result[label]["kappa"] == pytest.approx(kappa)


def test_degeneracy_agreement_quoted_in_its_docstring(bundled):
    # degeneracy.py quotes its threshold's agreement on the half it was tuned on (odd ids) and on
    # the held-out half (even ids); the quoted numbers must be the measured ones.
    for parity, (n, accuracy, kappa) in {1: (100, 0.970, 0.911), 0: (99, 0.970, 0.925)}.items():
        half = [row for row in bundled  # v001-v199: the rows it was tuned and checked on
                if int(row["id"][1:]) % 2 == parity and int(row["id"][1:]) < 200]
        result = agreement([is_degenerate(row["response"]) for row in half],
                           [row["labels"]["degenerate"] for row in half])
        assert result["n"] == n
        assert result["accuracy"] == pytest.approx(accuracy, abs=5e-4)
        assert result["kappa"] == pytest.approx(kappa, abs=5e-4)
