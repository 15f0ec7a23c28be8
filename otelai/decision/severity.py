"""Severity of calibrated anomaly scores: ``normal``, ``anomaly`` or ``critical``.

The values are the ``otelai.anomaly.severity`` tag of DESIGN.md ("Tags written on forwarded
spans and log records"). Scores are calibrated to [0, 1] (see :mod:`otelai.decision.calibration`),
so a threshold reads as a quantile of recent traffic: 0.99 flags the top 1%.
"""

from __future__ import annotations

import enum

import numpy as np
import numpy.typing as npt

DEFAULT_ANOMALY_THRESHOLD = 0.99
DEFAULT_CRITICAL_THRESHOLD = 0.999


class Severity(enum.IntEnum):
    """Severity levels, ordered so that ``max`` over a trace gives the trace's severity."""

    NORMAL = 0
    ANOMALY = 1
    CRITICAL = 2

    @property
    def tag(self) -> str:
        """The ``otelai.anomaly.severity`` attribute value."""
        return TAGS[self]


TAGS: tuple[str, ...] = ("normal", "anomaly", "critical")
# Indexing this with a severity array gives the tag of every item without a Python loop.
TAG_ARRAY: npt.NDArray[np.object_] = np.array(TAGS, dtype=object)


def classify(scores: npt.NDArray[np.floating], anomaly: float, critical: float) -> npt.NDArray[np.int8]:
    """Severity of each score: critical if ``>= critical``, anomaly if ``>= anomaly``, else normal.

    A NaN score (a failed detector) is ``normal`` here; the caller fails open on it and tags the
    reason, which is not a severity.

    Parameters
    ----------
    scores
        Calibrated scores in [0, 1].
    anomaly, critical
        Thresholds with ``0 <= anomaly <= critical <= 1``.
    """
    if not 0.0 <= anomaly <= critical <= 1.0:
        raise ValueError(f"thresholds must satisfy 0 <= anomaly <= critical <= 1, got {anomaly}, {critical}")
    out = (scores >= anomaly).astype(np.int8)
    out += scores >= critical
    return out


def tags(severity: npt.NDArray[np.int8]) -> npt.NDArray[np.object_]:
    """The tag string of each severity."""
    result: npt.NDArray[np.object_] = TAG_ARRAY[severity]
    return result
