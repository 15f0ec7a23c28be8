"""Severity classification of calibrated scores."""

from __future__ import annotations

import numpy as np
import pytest

from otelai.decision.severity import Severity, classify, tags


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
