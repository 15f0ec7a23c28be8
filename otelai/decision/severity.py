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


def tags(severity: npt.NDArray[np.int8]) -> npt.NDArray[np.object_]:
    """The tag string of each severity."""
    result: npt.NDArray[np.object_] = TAG_ARRAY[severity]
    return result
