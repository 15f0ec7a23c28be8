"""Severity of calibrated anomaly scores: ``normal``, ``anomaly`` or ``critical``.

The values are the ``otelai.anomaly.severity`` tag of DESIGN.md ("Tags written on forwarded
spans and log records"). Scores are calibrated to [0, 1] (see :mod:`otelai.decision.calibration`),
so a threshold reads as a quantile of recent traffic: 0.99 flags the top 1%.

A level is given only when the calibration can attest it. ``1 - score`` is a conformal
p-value, and one computed against a window of ``n`` scores is never below ``1 / (n + 1)``
(Vovk, Gammerman & Shafer, *Algorithmic Learning in a Random World*, 2005, ch. 2: an item
beyond everything in the window is as extreme as the window can tell, no more); the
Bonferroni combination of ``k`` detectors multiplies that by ``k``. So ``critical`` at 0.9995
with two detectors needs windows of about 4,000 scores: with 1,024, "beyond the window's
maximum" happens to 0.1% of normal items per detector, four times the rate the threshold
promises, and each critical span forwards its whole trace.

``critical`` forwards a whole trace, so its rate is promised per trace, not per span: a trace of
``m`` spans holds a span at ``p < 5e-4`` by chance with probability ``1 - (1 - 5e-4)^m`` (40%
for 1,000 spans). :func:`critical_per_trace` applies the Bonferroni correction over the spans of
the trace seen so far (Dunn, *Multiple Comparisons Among Means*, JASA 1961): a span stays
critical only if ``p * m <= 1 - critical``, so a normal trace turns critical with probability
at most ``1 - critical``, whatever its size.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

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


# Thresholds are decimal fractions (0.9995): 1 - 0.9995 is 5e-4 only to within rounding.
_ROUNDING = 1e-12


def p_value_floor(detectors: int, samples: int) -> float:
    """The smallest p-value (``1 - score``) that calibrated windows can attest.

    Parameters
    ----------
    detectors
        Calibrated detectors combined by the Bonferroni rule (``k``).
    samples
        Raw scores in the largest of their windows (``n``).

    Returns
    -------
    float
        ``k / (n + 1)``, at most 1; 1.0 when nothing is calibrated.

    Examples
    --------
    >>> p_value_floor(2, 1024) > 1 - 0.9995  # too few scores to attest "critical"
    True
    >>> p_value_floor(2, 8192) <= 1 - 0.9995
    True
    """
    if detectors <= 0 or samples <= 0:
        return 1.0
    return min(1.0, detectors / (samples + 1))


def classify(
    scores: npt.NDArray[np.floating], anomaly: float, critical: float, *, p_floor: float = 0.0
) -> npt.NDArray[np.int8]:
    """Severity of each score: critical if ``>= critical``, anomaly if ``>= anomaly``, else normal.

    A NaN score (a failed detector) is ``normal`` here; the caller fails open on it and tags the
    reason, which is not a severity.

    Parameters
    ----------
    scores
        Calibrated scores in [0, 1].
    anomaly, critical
        Thresholds with ``0 <= anomaly <= critical <= 1``.
    p_floor
        The smallest p-value the calibration attests now (:func:`p_value_floor`). A level
        whose threshold asks for less (``1 - threshold < p_floor``) is not given: such items
        get the highest level that is attested. 0 takes every score at its word.
    """
    if not 0.0 <= anomaly <= critical <= 1.0:
        raise ValueError(f"thresholds must satisfy 0 <= anomaly <= critical <= 1, got {anomaly}, {critical}")
    out = np.zeros(np.shape(scores), dtype=np.int8)
    for threshold in (anomaly, critical):
        if 1.0 - threshold + _ROUNDING >= p_floor:
            out += scores >= threshold
    return out


def critical_per_trace(
    severity: npt.NDArray[np.int8],
    scores: npt.NDArray[np.floating],
    trace_keys: npt.NDArray[np.uint64],
    critical: float,
    *,
    earlier_spans: Callable[[npt.NDArray[np.uint64]], npt.NDArray[np.int64]] | None = None,
) -> npt.NDArray[np.int8]:
    """``severity`` with ``critical`` kept only where it holds for the span's whole trace.

    A critical span of a trace with ``m`` spans seen so far (in this batch, plus
    ``earlier_spans``) stays critical if ``(1 - score) * m <= 1 - critical`` (Bonferroni);
    otherwise it is an ``anomaly`` (its score passed the anomaly threshold, which is lower).

    Parameters
    ----------
    severity
        From :func:`classify`; not modified.
    scores
        The calibrated scores ``severity`` was classified from.
    trace_keys
        The trace of every item (:func:`otelai.decision.trace_buffer.trace_keys`).
    critical
        The critical threshold.
    earlier_spans
        Spans of each given trace seen before this batch (the trace buffer's count).

    Examples
    --------
    >>> keys = np.array([1, 1, 1, 1, 1, 1, 2], dtype=np.uint64)  # traces of 6 spans and 1
    >>> scores = np.array([0.9999, 0.5, 0.5, 0.5, 0.5, 0.5, 0.9999])  # p = 1e-4 twice
    >>> severity = classify(scores, 0.99, 0.9995)
    >>> critical_per_trace(severity, scores, keys, 0.9995).tolist()  # 6 x 1e-4 > 5e-4
    [1, 0, 0, 0, 0, 0, 2]
    """
    rows = np.flatnonzero(severity == Severity.CRITICAL)
    if not rows.size:  # the usual batch: nothing to count
        return severity
    keys = trace_keys.take(rows)
    ordered = np.sort(trace_keys)
    spans = np.searchsorted(ordered, keys, side="right") - np.searchsorted(ordered, keys, side="left")
    if earlier_spans is not None:
        spans = spans + earlier_spans(keys)
    p_values = 1.0 - np.asarray(scores, dtype=np.float64).take(rows)
    demoted = p_values * spans > 1.0 - critical + _ROUNDING
    if not demoted.any():
        return severity
    out = severity.copy()
    out[rows[demoted]] = Severity.ANOMALY
    return out


def tags(severity: npt.NDArray[np.int8]) -> npt.NDArray[np.object_]:
    """The tag string of each severity."""
    result: npt.NDArray[np.object_] = TAG_ARRAY[severity]
    return result
