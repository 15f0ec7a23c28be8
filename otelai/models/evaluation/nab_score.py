"""The Numenta Anomaly Benchmark score (NAB v1.x: ``nab/sweeper.py``, ``nab/runner.py``).

Lavin & Ahmad, "Evaluating Real-time Anomaly Detection Algorithms -- the Numenta Anomaly
Benchmark" (IEEE ICMLA 2015); the scoring follows NAB's own code (numenta/NAB), vectorised:

- Each labelled window of a series rewards its *first* detection by the scaled sigmoid of
  its position, ``2 sigmoid(-5 p) - 1`` with ``p = -(right - i + 1) / width`` (``-1`` at the left
  edge, so early detections earn the most), times ``A_TP / sigmoid_scaled(-1)``; a window with no
  detection costs ``A_FN``.
- Every detection outside a window is a false positive weighted by ``A_FP`` times the sigmoid
  of its distance past the preceding window's right edge in window widths (``-1`` when no window
  precedes it), so a late detection just after a window costs little.
- The first ``min(floor(0.15 n), 0.15 * 5000)`` rows of each series are probationary: not scored.
- A detection is ``score >= threshold``; one threshold per detector and profile, the one that
  maximises the corpus' total (the sweeper: every distinct score is tried).
- The total is normalised against the null detector (never detects) and the perfect one
  (detects every window at its left edge): ``100 (raw - null) / (perfect - null)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

PROBATION_PERCENT = 0.15
NOTHING_DETECTED = 1.1  # NAB's first sweep threshold: above every score in [0, 1]


@dataclass(frozen=True, slots=True)
class Profile:
    """A NAB application profile: weights of true positives, false positives, false negatives."""

    tp: float
    fp: float
    fn: float


PROFILES: dict[str, Profile] = {  # NAB config/profiles.json
    "standard": Profile(tp=1.0, fp=0.11, fn=1.0),
    "reward_low_FP_rate": Profile(tp=1.0, fp=0.22, fn=1.0),
    "reward_low_FN_rate": Profile(tp=1.0, fp=0.11, fn=2.0),
}


def scaled_sigmoid(position: F64) -> F64:
    """``2 sigmoid(-5 p) - 1``, and ``-1`` beyond 3 window widths (NAB ``scaledSigmoid``)."""
    position = np.asarray(position, dtype=np.float64)
    value: F64 = np.where(position > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * position)) - 1.0)
    return value


def probation_length(rows: int, percent: float = PROBATION_PERCENT) -> int:
    """Rows at the start of a series that are not scored (NAB ``_getProbationaryLength``)."""
    return math.ceil(min(math.floor(percent * rows), percent * 5000))


@dataclass(frozen=True, slots=True)
class LabeledSeries:
    """One series' anomaly scores and its labelled windows.

    Attributes
    ----------
    name
        The series (its path in the corpus), for tables.
    scores
        Anomaly scores in [0, 1], one per row, in time order.
    windows
        Inclusive ``(first_row, last_row)`` of each labelled window, in order, not overlapping.
    probation
        Rows at the start that are not scored (default: NAB's 15 %).
    """

    name: str
    scores: F64
    windows: Sequence[tuple[int, int]]
    probation: int | None = None

    @property
    def scored_from(self) -> int:
        return probation_length(len(self.scores)) if self.probation is None else self.probation


def window_rows(
    timestamps: npt.NDArray[np.datetime64], limits: Sequence[tuple[str, str]]
) -> list[tuple[int, int]]:
    """Row ranges of windows given by their first and last timestamps (NAB matches them exactly).

    Raises
    ------
    ValueError
        When a window's limit is not one of the timestamps.
    """
    times = timestamps.astype("datetime64[ns]")
    rows = []
    for first, last in limits:
        found = []
        for limit in (first, last):
            at = np.datetime64(limit.replace(" ", "T"), "ns")
            index = int(np.searchsorted(times, at))
            if index >= times.size or times[index] != at:
                raise ValueError(f"window limit {limit} is not a timestamp of the series")
            found.append(index)
        rows.append((found[0], found[1]))
    return rows


@dataclass(frozen=True, slots=True)
class _Points:
    """Scored (non-probationary) rows of a corpus: score, NAB weight, global window id (-1: none)."""

    score: F64
    weight: F64
    window: I64
    windows: int  # windows with at least one scored row
    series: I64  # which series each row belongs to


def _sweep_weights(series: LabeledSeries, profile: Profile) -> tuple[F64, I64]:
    """Per row: the NAB weight of a detection there, and its window (-1 outside all)."""
    n = len(series.scores)
    index = np.arange(n, dtype=np.float64)
    window = np.full(n, -1, dtype=np.int64)
    weight = np.full(n, -profile.fp, dtype=np.float64)  # no preceding window: scaledSigmoid = -1
    max_tp = float(scaled_sigmoid(np.array(-1.0)))
    bounds = sorted(series.windows)
    for number, (first, last) in enumerate(bounds):
        width = float(last - first + 1)
        inside = slice(first, last + 1)
        window[inside] = number
        weight[inside] = scaled_sigmoid(-(last - index[inside] + 1) / width) * profile.tp / max_tp
        end = bounds[number + 1][0] if number + 1 < len(bounds) else n
        after = slice(last + 1, end)
        # NAB divides by (width - 1); a one-row window puts every later FP "far" (-1).
        distance = np.abs(last - index[after]) / (width - 1) if width > 1 else np.full(end - last - 1, np.inf)
        weight[after] = scaled_sigmoid(distance) * profile.fp
    return weight, window


def _points(corpus: Sequence[LabeledSeries], profile: Profile) -> _Points:
    scores, weights, windows, owners = [], [], [], []
    offset = 0
    for number, series in enumerate(corpus):
        weight, window = _sweep_weights(series, profile)
        keep = slice(series.scored_from, None)
        window = window[keep]
        scored = np.unique(window[window >= 0])
        # Number the windows that have scored rows 0..k-1 across the corpus.
        renumbered = np.where(window >= 0, np.searchsorted(scored, window) + offset, -1)
        offset += scored.size
        scores.append(np.nan_to_num(np.asarray(series.scores, dtype=np.float64)[keep]))
        weights.append(weight[keep])
        windows.append(renumbered)
        owners.append(np.full(renumbered.size, number, dtype=np.int64))
    empty = np.zeros(0)
    return _Points(
        score=np.concatenate(scores) if scores else empty,
        weight=np.concatenate(weights) if weights else empty,
        window=np.concatenate(windows).astype(np.int64) if windows else empty.astype(np.int64),
        windows=offset,
        series=np.concatenate(owners) if owners else empty.astype(np.int64),
    )


@dataclass(frozen=True, slots=True)
class ThresholdScores:
    """Raw NAB score and point counts at every candidate threshold, highest threshold first."""

    threshold: F64
    score: F64
    tp: I64
    fp: I64
    tn: I64
    fn: I64

    def best(self) -> int:
        """Index of the best threshold (the highest one among equal scores, as NAB's sort keeps)."""
        return int(np.argmax(self.score))


def _window_gains(window: I64, weight: F64, fn: float) -> F64:
    """Per row (in sweep order), how much detecting it raises its window's contribution."""
    gain = np.zeros(window.size, dtype=np.float64)
    rows = np.flatnonzero(window >= 0)
    if rows.size == 0:
        return gain
    order = rows[np.lexsort((rows, window[rows]))]  # by window, then sweep order
    group = window[order].astype(np.float64)
    value = weight[order]
    # Running maximum per window in one pass: offset each window above all earlier ones.
    spread = 2.0 * float(np.abs(value).max()) + 1.0
    best = np.maximum.accumulate(value + group * spread) - group * spread
    current = np.maximum(best, -fn)
    previous = np.empty_like(current)
    previous[0] = -fn
    previous[1:] = current[:-1]
    previous[np.flatnonzero(np.diff(group)) + 1] = -fn  # a window's first row starts from a miss
    gain[order] = current - previous
    return gain


def sweep(corpus: Sequence[LabeledSeries], profile: Profile | str = "standard") -> ThresholdScores:
    """The raw NAB score of ``corpus`` at every threshold (NAB ``Sweeper.calcScoreByThreshold``)."""
    weights = PROFILES[profile] if isinstance(profile, str) else profile
    points = _points(corpus, weights)
    order = np.argsort(-points.score, kind="stable")
    score, window, weight = points.score[order], points.window[order], points.weight[order]
    in_window = window >= 0
    gain = np.where(in_window, 0.0, weight) + _window_gains(window, weight, weights.fn)
    base = -weights.fn * points.windows
    ends = np.flatnonzero(np.append(score[1:] != score[:-1], True)) if score.size else np.zeros(0, np.int64)
    tp = np.cumsum(in_window)[ends] if score.size else np.zeros(0, np.int64)
    fp = np.cumsum(~in_window)[ends] if score.size else np.zeros(0, np.int64)
    positives, negatives = int(in_window.sum()), int((~in_window).sum())
    tp = np.concatenate([[0], tp]).astype(np.int64)
    fp = np.concatenate([[0], fp]).astype(np.int64)
    return ThresholdScores(
        threshold=np.concatenate([[NOTHING_DETECTED], score[ends]]),
        score=np.concatenate([[base], base + np.cumsum(gain)[ends]]),
        tp=tp,
        fp=fp,
        tn=negatives - fp,
        fn=positives - tp,
    )


def raw_score_at(
    corpus: Sequence[LabeledSeries], threshold: float, profile: Profile | str = "standard"
) -> F64:
    """Raw NAB score of each series with detections ``score >= threshold`` (NAB ``scoreDataSet``)."""
    weights = PROFILES[profile] if isinstance(profile, str) else profile
    points = _points(corpus, weights)
    detected = points.score >= threshold
    outside = detected & (points.window < 0)
    per_series = np.bincount(points.series[outside], weights=points.weight[outside], minlength=len(corpus))
    best = np.full(points.windows, -weights.fn)
    inside = detected & (points.window >= 0)
    np.maximum.at(best, points.window[inside], points.weight[inside])
    owner = np.zeros(points.windows, dtype=np.int64)
    owner[points.window[points.window >= 0]] = points.series[points.window >= 0]
    total: F64 = (per_series + np.bincount(owner, weights=best, minlength=len(corpus))).astype(np.float64)
    return total


@dataclass(frozen=True, slots=True)
class NabResult:
    """A detector's NAB result under one profile.

    Attributes
    ----------
    score
        Normalised score: 0 is the null detector, 100 the perfect one.
    raw, null, perfect
        The corpus totals behind it.
    threshold
        The detection threshold the score was computed at.
    per_series
        Raw score of each series at ``threshold``.
    windows, detected_windows, false_alarms
        Labelled windows, those with a detection, and false-alarm events (runs of consecutive
        detections outside the windows) after the probationary period.
    tp, fp, fn, tn
        Point counts at ``threshold`` (NAB's confusion counts).
    """

    score: float
    raw: float
    null: float
    perfect: float
    threshold: float
    per_series: F64
    windows: int
    detected_windows: int
    false_alarms: int
    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def window_recall(self) -> float:
        """Share of the labelled windows with at least one detection."""
        return self.detected_windows / self.windows if self.windows else 0.0

    @property
    def window_precision(self) -> float:
        """Detected windows over detected windows plus false-alarm events."""
        alarms = self.detected_windows + self.false_alarms
        return self.detected_windows / alarms if alarms else 0.0


def null_score(corpus: Sequence[LabeledSeries], profile: Profile | str = "standard") -> float:
    """Raw score of NAB's null detector (a constant 0.5), at its best threshold."""
    constant = [LabeledSeries(s.name, np.full(len(s.scores), 0.5), s.windows, s.probation) for s in corpus]
    return float(sweep(constant, profile).score.max())


def _events(corpus: Sequence[LabeledSeries], threshold: float) -> tuple[int, int]:
    """Detected windows and false-alarm runs at ``threshold`` (the scored rows only)."""
    detected, alarms = 0, 0
    for series in corpus:
        scores = np.nan_to_num(np.asarray(series.scores, dtype=np.float64))
        hit = scores >= threshold
        hit[: series.scored_from] = False
        outside = hit.copy()
        for first, last in series.windows:
            if last >= series.scored_from and hit[first : last + 1].any():
                detected += 1
            outside[first : last + 1] = False
        alarms += int(np.count_nonzero(outside[1:] & ~outside[:-1]) + (outside[:1].sum()))
    return detected, alarms


def nab_score(
    corpus: Sequence[LabeledSeries],
    profile: Profile | str = "standard",
    *,
    threshold: float | None = None,
) -> NabResult:
    """NAB's normalised score of ``corpus`` under ``profile``.

    Parameters
    ----------
    corpus
        Every series' scores and windows.
    profile
        A name in :data:`PROFILES` or the weights.
    threshold
        Detect at ``score >= threshold``; ``None`` picks the best one over the corpus as NAB's
        optimiser does (so the published numbers compare with this).
    """
    weights = PROFILES[profile] if isinstance(profile, str) else profile
    swept = sweep(corpus, weights)
    if threshold is None:
        threshold = float(swept.threshold[swept.best()])
    per_series = raw_score_at(corpus, threshold, weights)
    # Counts at the threshold: the last sweep row whose threshold is not below it.
    row = int(np.searchsorted(-swept.threshold, -threshold, side="right") - 1)
    row = max(row, 0)
    windows = sum(len(series.windows) for series in corpus)
    null = null_score(corpus, weights)
    perfect = weights.tp * windows
    raw = float(per_series.sum())
    detected, alarms = _events(corpus, threshold)
    return NabResult(
        score=100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0,
        raw=raw,
        null=null,
        perfect=perfect,
        threshold=threshold,
        per_series=per_series,
        windows=windows,
        detected_windows=detected,
        false_alarms=alarms,
        tp=int(swept.tp[row]),
        fp=int(swept.fp[row]),
        fn=int(swept.fn[row]),
        tn=int(swept.tn[row]),
    )
