"""The shared metrics against scikit-learn (test-only reference) and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm  # type: ignore[import-untyped]

from otelai.models.evaluation import metrics as m


def _cases() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(7)
    cases = []
    for n in (2, 5, 50, 1000):
        for rate in (0.05, 0.3, 0.5):
            labels = (rng.random(n) < rate).astype(np.int8)
            labels[0], labels[-1] = 0, 1  # both classes present
            continuous = rng.normal(size=n) + labels
            tied = np.round(continuous * 2) / 2  # heavy ties
            cases += [(labels, continuous), (labels, tied), (labels, np.zeros(n))]
    return cases


CASES = _cases()


@pytest.mark.parametrize(("labels", "scores"), CASES)
def test_roc_matches_sklearn(labels: np.ndarray, scores: np.ndarray) -> None:
    fpr, tpr, thresholds = m.roc_curve(labels, scores)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)
    np.testing.assert_array_equal(thresholds, sk_thr)
    assert m.roc_auc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)


@pytest.mark.parametrize(("labels", "scores"), CASES)
def test_pr_matches_sklearn(labels: np.ndarray, scores: np.ndarray) -> None:
    precision, recall, thresholds = m.pr_curve(labels, scores)
    sk_p, sk_r, sk_t = skm.precision_recall_curve(labels, scores)
    np.testing.assert_allclose(precision, sk_p)
    np.testing.assert_allclose(recall, sk_r)
    np.testing.assert_array_equal(thresholds, sk_t)
    expected = skm.average_precision_score(labels, scores)
    assert m.pr_auc(labels, scores) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("labels", "scores"), CASES[:18])
def test_best_f1_is_the_best_threshold(labels: np.ndarray, scores: np.ndarray) -> None:
    f1, threshold, precision, recall = m.best_f1(labels, scores)
    brute = max(skm.f1_score(labels, scores >= t, zero_division=0) for t in np.unique(scores))
    assert f1 == pytest.approx(brute)
    predicted = scores >= threshold
    assert skm.f1_score(labels, predicted) == pytest.approx(f1)
    assert skm.precision_score(labels, predicted) == pytest.approx(precision)
    assert skm.recall_score(labels, predicted) == pytest.approx(recall)


@pytest.mark.parametrize(("labels", "scores"), CASES[:18])
def test_adjusted_best_f1_matches_adjusting_each_threshold(labels: np.ndarray, scores: np.ndarray) -> None:
    f1, threshold, _, _ = m.best_f1(labels, scores, adjust=True)
    brute = [m.precision_recall_f1(labels, m.point_adjust(labels, scores >= t))[2] for t in np.unique(scores)]
    assert f1 == pytest.approx(max(brute))
    assert m.precision_recall_f1(labels, m.point_adjust(labels, scores >= threshold))[2] == pytest.approx(f1)


@pytest.mark.parametrize(("labels", "scores"), CASES)
def test_precision_recall_f1_matches_sklearn(labels: np.ndarray, scores: np.ndarray) -> None:
    predicted = (scores > np.median(scores)).astype(np.int8)
    p, r, f = m.precision_recall_f1(labels, predicted)
    assert p == pytest.approx(skm.precision_score(labels, predicted, zero_division=0))
    assert r == pytest.approx(skm.recall_score(labels, predicted, zero_division=0))
    assert f == pytest.approx(skm.f1_score(labels, predicted, zero_division=0))


def test_docstring_example() -> None:
    labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
    assert m.roc_auc(labels, scores) == pytest.approx(0.75)
    assert m.pr_auc(labels, scores) == pytest.approx(0.8333333)


def test_one_class_gives_nan_areas_and_zero_f1() -> None:
    scores = np.array([0.1, 0.2, 0.3])
    assert math.isnan(m.roc_auc([0, 0, 0], scores))
    assert math.isnan(m.pr_auc([0, 0, 0], scores))
    assert math.isnan(m.roc_auc([1, 1, 1], scores))
    assert m.pr_auc([1, 1, 1], scores) == pytest.approx(1.0)
    assert m.best_f1([0, 0, 0], scores) == (0.0, math.inf, 0.0, 0.0)
    assert m.precision_recall_f1([0, 0, 0], [0, 0, 0]) == (0.0, 0.0, 0.0)


def test_infinite_scores_tie_like_any_other() -> None:
    labels = np.array([0, 1, 1, 0, 1])
    scores = np.array([np.inf, np.inf, 0.5, -np.inf, np.inf])
    assert m.roc_auc(labels, scores) == pytest.approx(m.roc_auc(labels, [9.0, 9.0, 0.5, -9.0, 9.0]))
    assert m.roc_curve(labels, scores)[2].tolist() == [np.inf, np.inf, 0.5, -np.inf]


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="shape"):
        m.roc_auc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        m.roc_auc([0, 1], [0.1, math.nan])
    with pytest.raises(ValueError, match="one-dimensional"):
        m.segments(np.zeros((2, 2)))


def test_segments() -> None:
    assert m.segments([]).shape == (0, 2)
    assert m.segments([0, 0]).tolist() == []
    assert m.segments([1, 1, 0, 1, 0, 0, 1]).tolist() == [[0, 2], [3, 4], [6, 7]]
    assert m.segments([0, 1, 1, 1]).tolist() == [[1, 4]]


@pytest.mark.parametrize(
    ("labels", "predicted", "expected"),
    [
        # one hit inside a segment marks the whole segment
        ([0, 1, 1, 1, 0], [0, 0, 1, 0, 0], [0, 1, 1, 1, 0]),
        # an unhit segment stays missed; false positives stay as they are
        ([0, 1, 1, 0, 1, 1], [1, 0, 0, 0, 0, 1], [1, 0, 0, 0, 1, 1]),
        # segments at both ends
        ([1, 1, 0, 0, 1], [1, 0, 0, 0, 1], [1, 1, 0, 0, 1]),
        ([0, 0, 0], [0, 1, 0], [0, 1, 0]),
        ([], [], []),
    ],
)
def test_point_adjust(labels: list[int], predicted: list[int], expected: list[int]) -> None:
    adjusted = m.point_adjust(labels, predicted)
    assert adjusted.dtype == np.int8
    assert adjusted.tolist() == expected


def test_point_adjust_scores_take_the_segment_maximum() -> None:
    labels = [0, 1, 1, 0, 1]
    scores = [0.9, 0.2, 0.5, 0.1, 0.3]
    assert m.point_adjust_scores(labels, scores).tolist() == [0.9, 0.5, 0.5, 0.1, 0.3]


def test_score_metrics_names() -> None:
    labels = np.array([0, 1, 1, 0, 0, 1])
    scores = np.array([0.1, 0.9, 0.2, 0.3, 0.1, 0.8])
    out = m.score_metrics(labels, scores, threshold=0.5, adjust=True)
    assert set(out) >= {"roc_auc", "pr_auc", "best_f1", "f1", "precision", "recall", "best_f1_pa", "f1_pa"}
    assert out["f1"] == pytest.approx(0.8)
    assert out["f1_pa"] == pytest.approx(1.0)
    assert out["best_f1_pa"] == pytest.approx(1.0)
