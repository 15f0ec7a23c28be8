"""NAB scoring, with cases ported from numenta/NAB (tests/unit/scorer_test.py and
tests/integration/scorer_test.py, sweeper_test.py): the expected values are NAB's own."""

from __future__ import annotations

import math

import numpy as np
import pytest

from otelai.models.evaluation.nab_score import (
    LabeledSeries,
    Profile,
    nab_score,
    probation_length,
    raw_score_at,
    scaled_sigmoid,
    sweep,
)

# NAB's tests/unit/scorer_test.py cost matrix.
UNIT = Profile(tp=1.1, fp=0.11, fn=1.2)
ONES = Profile(tp=1.0, fp=1.0, fn=1.0)
MAX_TP = 0.9866142981514305  # scaledSigmoid(-1.0)
MID = 0.8482836399575131  # scaledSigmoid(-0.5)


def raw(
    predictions: list[int], windows: list[tuple[int, int]], probation: int = 0, profile: Profile = UNIT
) -> float:
    series = LabeledSeries("s", np.asarray(predictions, dtype=np.float64), windows, probation)
    return float(raw_score_at([series], 0.5, profile)[0])


def test_scaled_sigmoid_matches_nab() -> None:
    values = scaled_sigmoid(np.array([-1.0, -0.5, 0.0, 1.0, 3.5]))
    assert values == pytest.approx([MAX_TP, MID, 0.0, -MAX_TP, -1.0])


def test_probation_length_is_nab_s() -> None:
    assert probation_length(1000) == 150
    assert probation_length(22_695) == 750  # capped at 15 % of 5000 rows


def test_null() -> None:
    assert raw([0] * 5, []) == pytest.approx(0.0)


def test_false_positives() -> None:
    assert raw([0, 1, 0, 1, 0], []) == pytest.approx(-2.0 * UNIT.fp)


def test_false_negatives() -> None:
    assert raw([0] * 7, [(1, 2), (4, 5)]) == pytest.approx(-2.0 * UNIT.fn)


def test_false_positives_in_probationary() -> None:
    assert raw([0, 1, 0, 1, 0], [], probation=4) == pytest.approx(0.0)


def test_false_positives_before_and_after_probationary() -> None:
    assert raw([0, 1, 0, 1, 0], [], probation=3) == pytest.approx(-1.0 * UNIT.fp)


def test_true_positive_at_window_end() -> None:
    assert raw([0, 0, 1, 0, 0, 0, 0], [(1, 2)]) == pytest.approx(MID * UNIT.tp / MAX_TP)


def test_true_positive_with_a_missed_window() -> None:
    got = raw([0, 0, 1, 0, 0, 0, 0], [(1, 2), (4, 5)])
    assert got == pytest.approx(MID * UNIT.tp / MAX_TP - UNIT.fn)


@pytest.mark.parametrize("predictions", [[0, 0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 1, 1, 0]])
def test_true_positive_at_window_start_counts_once(predictions: list[int]) -> None:
    assert raw(predictions, [(4, 5)]) == pytest.approx(UNIT.tp)


def test_true_positives_multiple() -> None:
    got = raw([0, 0, 1, 0, 1, 0, 0], [(1, 2), (4, 5)])
    assert got == pytest.approx(MID * UNIT.tp / MAX_TP + UNIT.tp)


def all_metrics_case() -> LabeledSeries:
    # NAB integration testScoringAllMetrics: 100 rows, windows of 5 at rows 30 and 65
    # (nab.test_helpers.generateWindows), detections at 30, 31 (TP) and 37 (FP).
    scores = np.zeros(100)
    scores[[30, 31, 37]] = 1.0
    return LabeledSeries("all", scores, [(30, 34), (65, 69)], probation=0)


def test_scoring_all_metrics() -> None:
    swept = sweep([all_metrics_case()], ONES)
    at_one = int(np.flatnonzero(swept.threshold == 1.0)[0])
    assert swept.score[at_one] == pytest.approx(-0.9540, abs=1e-4)
    assert (swept.tn[at_one], swept.tp[at_one], swept.fp[at_one], swept.fn[at_one]) == (89, 2, 1, 8)
    assert raw_score_at([all_metrics_case()], 0.5, ONES)[0] == pytest.approx(-0.9540, abs=1e-4)


def test_reward_low_false_negatives_doubles_the_miss() -> None:
    series = LabeledSeries("fn", np.zeros(100), [(45, 54)], probation=0)
    standard = raw_score_at([series], 0.5, ONES)[0]
    low_fn = raw_score_at([series], 0.5, Profile(tp=1.0, fp=0.055, fn=2.0))[0]
    assert standard == pytest.approx(0.5 * low_fn)


def test_sweep_agrees_with_scoring_at_each_threshold() -> None:
    rng = np.random.default_rng(3)
    corpus = [
        LabeledSeries("a", rng.random(300).round(2), [(100, 129), (200, 229)]),
        LabeledSeries("b", rng.random(200).round(2), [(150, 169)]),
        LabeledSeries("c", rng.random(120).round(2), []),
    ]
    swept = sweep(corpus, "standard")
    for threshold, score in zip(swept.threshold[::7], swept.score[::7], strict=True):
        assert raw_score_at(corpus, float(threshold), "standard").sum() == pytest.approx(score)


def test_normalisation_null_zero_perfect_hundred() -> None:
    windows = [(300, 349), (600, 649)]
    perfect = np.zeros(1000)
    perfect[[300, 600]] = 1.0
    corpus = [LabeledSeries("p", perfect, windows)]
    assert nab_score(corpus).score == pytest.approx(100.0)
    result = nab_score([LabeledSeries("n", np.zeros(1000), windows)])
    assert result.score == pytest.approx(0.0)
    assert result.null == -2.0 and result.perfect == 2.0


def test_result_counts_windows_and_false_alarms() -> None:
    scores = np.zeros(1000)
    scores[[310, 311, 500, 501, 502, 800]] = 1.0
    result = nab_score([LabeledSeries("s", scores, [(300, 349), (600, 649)])], threshold=0.5)
    assert (result.detected_windows, result.false_alarms, result.windows) == (1, 2, 2)
    assert result.window_recall == 0.5 and math.isclose(result.window_precision, 1 / 3)
    assert (result.tp, result.fp) == (2, 4)
