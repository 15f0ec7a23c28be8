"""Severity classification of calibrated scores."""

from __future__ import annotations

import numpy as np
import pytest

from otelai.decision.calibration import EcdfCalibrator
from otelai.decision.severity import Severity, classify, p_value_floor, tags


def test_classify_thresholds_are_inclusive() -> None:
    scores = np.array([0.0, 0.5, 0.99, 0.995, 0.999, 1.0, np.nan])
    severity = classify(scores, anomaly=0.99, critical=0.999)
    assert severity.dtype == np.int8
    assert severity.tolist() == [0, 0, 1, 1, 2, 2, 0]
    assert tags(severity).tolist() == [
        "normal",
        "normal",
        "anomaly",
        "anomaly",
        "critical",
        "critical",
        "normal",
    ]


def test_severity_enum_tags_and_order() -> None:
    assert [s.tag for s in Severity] == ["normal", "anomaly", "critical"]
    assert max(Severity.ANOMALY, Severity.CRITICAL) is Severity.CRITICAL
    assert Severity(int(classify(np.array([1.0]), 0.9, 0.95)[0])) is Severity.CRITICAL


def test_equal_thresholds_have_no_anomaly_band() -> None:
    assert classify(np.array([0.5, 0.9]), anomaly=0.9, critical=0.9).tolist() == [0, 2]


@pytest.mark.parametrize(("anomaly", "critical"), [(0.99, 0.9), (-0.1, 0.5), (0.5, 1.1)])
def test_invalid_thresholds(anomaly: float, critical: float) -> None:
    with pytest.raises(ValueError):
        classify(np.zeros(1), anomaly, critical)


def test_a_level_the_window_cannot_attest_is_not_given() -> None:
    scores = np.array([0.5, 0.996, 1.0, np.nan])
    # Two detectors, windows of 1,024 scores: p >= 2/1025 attests "anomaly" (0.995), not "critical".
    floor = p_value_floor(2, 1024)
    assert classify(scores, 0.995, 0.9995, p_floor=floor).tolist() == [0, 1, 1, 0]
    # Windows of 8,192 attest both; a floor of 0 trusts every score.
    for trusted in (p_value_floor(2, 8192), 0.0):
        assert classify(scores, 0.995, 0.9995, p_floor=trusted).tolist() == [0, 1, 2, 0]
    # 100 scores attest neither level.
    assert classify(scores, 0.995, 0.9995, p_floor=p_value_floor(2, 100)).tolist() == [0, 0, 0, 0]


def test_the_floor_is_exact_at_a_threshold_written_in_decimal() -> None:
    # 1 - 0.9995 is not 5e-4 in binary; a window of 1,999 scores (one detector) attests it exactly.
    assert p_value_floor(1, 1999) == 1 / 2000
    assert classify(np.array([1.0]), 0.99, 0.9995, p_floor=p_value_floor(1, 1999)).tolist() == [2]
    assert classify(np.array([1.0]), 0.99, 0.9995, p_floor=p_value_floor(1, 1998)).tolist() == [1]


def test_p_value_floor_without_calibration_attests_nothing() -> None:
    assert p_value_floor(0, 5000) == 1.0
    assert p_value_floor(2, 0) == 1.0
    assert p_value_floor(3, 1) == 1.0


def test_beyond_the_window_is_score_one_whatever_its_size() -> None:
    """Why the floor is needed: the calibrated score of an item above everything in a window is 1.0
    whether the window holds 1,024 scores or 8,192, so the score alone cannot tell how rare it is."""
    rng = np.random.default_rng(3)
    for size in (1024, 8192):
        calibrator = EcdfCalibrator(window=size, sample_rate=1.0, min_samples=size, seed=0)
        calibrator.update(rng.normal(size=size))
        assert calibrator.transform(np.array([10.0])).tolist() == [1.0]


def test_critical_holds_per_trace_by_bonferroni() -> None:
    from otelai.decision.severity import critical_per_trace

    keys = np.array([7] * 10 + [8, 9, 9], dtype=np.uint64)
    scores = np.full(13, 0.5)
    scores[0] = scores[10] = scores[11] = 1 - 1e-4  # p = 1e-4 in traces of 10, 1 and 2 spans
    severity = classify(scores, 0.99, 0.9995)
    out = critical_per_trace(severity, scores, keys, 0.9995)
    assert out[[0, 10, 11]].tolist() == [Severity.ANOMALY, Severity.CRITICAL, Severity.CRITICAL]
    assert severity[0] == Severity.CRITICAL  # not modified
    # Spans of the trace seen before this batch count too: 2 + 4 earlier spans x 1e-4 > 5e-4.
    earlier = critical_per_trace(
        severity, scores, keys, 0.9995, earlier_spans=lambda k: np.where(k == 9, 4, 0).astype(np.int64)
    )
    assert earlier[[10, 11]].tolist() == [Severity.CRITICAL, Severity.ANOMALY]
    nothing = classify(np.array([0.5]), 0.99, 0.9995)
    assert critical_per_trace(nothing, np.array([0.5]), keys[:1], 0.9995) is nothing
