"""Detection-quality metrics shared by every evaluation task, in plain numpy.

Scores are "higher = more anomalous" and an item is predicted anomalous when its score is at or
above the threshold (``score >= threshold``). Labels are 0/1 (anything non-zero is anomalous).

- ROC curve and its area: Fawcett, "An introduction to ROC analysis", Pattern Recognition
  Letters 27 (2006). Tied scores are one threshold, so the curve takes a diagonal step across
  them and the trapezoid rule gives the Mann-Whitney statistic with ties counted as one half;
  equal to scikit-learn's ``roc_curve`` / ``roc_auc_score``.
- Precision-recall curve and average precision (the step-wise area, no interpolation):
  Manning, Raghavan and Schuetze, "Introduction to Information Retrieval" (2008), ch. 8;
  equal to scikit-learn's ``precision_recall_curve`` / ``average_precision_score``.
- Best F1 over all thresholds: the "best-F1" protocol of Su et al., "Robust Anomaly Detection
  for Multivariate Time Series through Stochastic Recurrent Neural Network" (OmniAnomaly,
  KDD 2019), used for SMD/ASD results.
- Point adjustment: Xu et al., "Unsupervised Anomaly Detection via Variational Auto-Encoder for
  Seasonal KPIs in Web Applications" (Donut, WWW 2018), section 4.3: when any point of a
  contiguous anomalous segment is detected, the whole segment counts as detected. It inflates
  scores (Kim et al., "Towards a Rigorous Evaluation of Time-Series Anomaly Detection",
  AAAI 2022), so tasks report numbers with and without it.

Degenerate inputs (one class only) give NaN for the areas instead of raising, so a task can
report a part with no anomalies without special cases; the report prints NaN as "n/a".

>>> labels = np.array([0, 0, 1, 1])
>>> scores = np.array([0.1, 0.4, 0.35, 0.8])
>>> round(roc_auc(labels, scores), 2), round(pr_auc(labels, scores), 2)
(0.75, 0.83)
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

__all__ = [
    "best_f1",
    "point_adjust",
    "point_adjust_scores",
    "pr_auc",
    "pr_curve",
    "precision_recall_f1",
    "roc_auc",
    "roc_curve",
    "score_metrics",
    "segments",
]


def _labels(labels: npt.ArrayLike) -> Bool:
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {array.shape}")
    truth: Bool = array != 0
    return truth


def _pair(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[Bool, F64]:
    truth = _labels(labels)
    values = np.asarray(scores, dtype=np.float64)
    if values.shape != truth.shape:
        raise ValueError(f"labels and scores differ in shape: {truth.shape} vs {values.shape}")
    if np.isnan(values).any():
        raise ValueError("scores contain NaN")
    return truth, values


def _counts(truth: Bool, values: F64) -> tuple[F64, F64, F64]:
    """True and false positives at each distinct threshold, thresholds descending.

    The counting core of scikit-learn's ``_binary_clf_curve``: sort scores descending and
    keep the last index of each run of equal scores, so ties enter the counts together.
    """
    order = np.argsort(values, kind="mergesort")[::-1]
    sorted_values = values[order]
    sorted_truth = truth[order]
    # compare, not subtract: inf - inf is NaN and would split a tie of infinite scores
    last_of_run = np.r_[np.flatnonzero(sorted_values[1:] != sorted_values[:-1]), sorted_values.size - 1]
    tps = np.cumsum(sorted_truth, dtype=np.float64)[last_of_run]
    fps = (last_of_run + 1).astype(np.float64) - tps
    return tps, fps, sorted_values[last_of_run]


def roc_curve(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[F64, F64, F64]:
    """Receiver operating characteristic: one point per distinct score, plus the origin.

    Returns
    -------
    fpr, tpr, thresholds
        Rising false/true positive rates at ``score >= thresholds[i]``; ``thresholds`` is
        descending and starts at +inf (nothing predicted). A rate whose class is absent is NaN.
    """
    truth, values = _pair(labels, scores)
    if values.size == 0:
        return np.zeros(1), np.zeros(1), np.full(1, np.inf)
    tps, fps, thresholds = _counts(truth, values)
    tps = np.r_[0.0, tps]
    fps = np.r_[0.0, fps]
    with np.errstate(invalid="ignore", divide="ignore"):
        tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
        fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
    return fpr, tpr, np.r_[np.inf, thresholds]


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve by the trapezoid rule (ties score one half); NaN with one class."""
    fpr, tpr, _ = roc_curve(labels, scores)
    if np.isnan(fpr).any() or np.isnan(tpr).any():
        return math.nan
    return float(np.trapezoid(tpr, fpr))


def pr_curve(labels: npt.ArrayLike, scores: npt.ArrayLike) -> tuple[F64, F64, F64]:
    """Precision-recall curve, in scikit-learn's ``precision_recall_curve`` order.

    Returns
    -------
    precision, recall, thresholds
        ``precision[i]``, ``recall[i]`` at ``score >= thresholds[i]``; thresholds ascending,
        recall falling; a last point (precision 1, recall 0) with no threshold closes the
        curve, so the first two arrays are one longer than ``thresholds``. With no anomalies
        recall is 1 everywhere (scikit-learn's convention).
    """
    truth, values = _pair(labels, scores)
    if values.size == 0:
        return np.ones(1), np.zeros(1), np.zeros(0)
    tps, fps, thresholds = _counts(truth, values)
    predicted = tps + fps  # never zero: each threshold predicts at least its own run
    precision = tps / predicted
    recall = tps / tps[-1] if tps[-1] > 0 else np.ones_like(tps)
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def pr_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Average precision: sum over thresholds of precision times the rise in recall.

    The step-wise (not trapezoidal) area, equal to scikit-learn's ``average_precision_score``;
    NaN when there are no anomalies.
    """
    truth, _ = _pair(labels, scores)
    if not truth.any():
        return math.nan
    precision, recall, _ = pr_curve(labels, scores)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def precision_recall_f1(labels: npt.ArrayLike, predicted: npt.ArrayLike) -> tuple[float, float, float]:
    """Precision, recall and F1 of 0/1 predictions; a ratio with a zero denominator is 0.

    Zero for an empty denominator follows scikit-learn's ``zero_division`` result (without its
    warning): predicting nothing has precision 0, a data set without anomalies recall 0.
    """
    truth = _labels(labels)
    guess = _labels(predicted)
    if guess.shape != truth.shape:
        raise ValueError(f"labels and predictions differ in shape: {truth.shape} vs {guess.shape}")
    tp = float(np.count_nonzero(truth & guess))
    fp = float(np.count_nonzero(~truth & guess))
    fn = float(np.count_nonzero(truth & ~guess))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def best_f1(
    labels: npt.ArrayLike, scores: npt.ArrayLike, *, adjust: bool = False
) -> tuple[float, float, float, float]:
    """The highest F1 over all thresholds ``score >= t`` (OmniAnomaly's best-F1 protocol).

    Parameters
    ----------
    labels, scores
        Ground truth (0/1) and anomaly scores of the same items, in time order if ``adjust``.
    adjust
        Score each threshold after point adjustment (:func:`point_adjust`). Computed exactly in
        one pass through :func:`point_adjust_scores`.

    Returns
    -------
    f1, threshold, precision, recall
        At the best threshold; the highest such threshold when several tie. ``(0, inf, 0, 0)``
        when there is nothing to find.
    """
    truth, values = _pair(labels, scores)
    if adjust:
        values = point_adjust_scores(truth, values)
    if values.size == 0 or not truth.any():
        return 0.0, math.inf, 0.0, 0.0
    tps, fps, thresholds = _counts(truth, values)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    denominator = precision + recall
    f1 = np.divide(2 * precision * recall, denominator, out=np.zeros_like(tps), where=denominator > 0)
    best = int(np.argmax(f1))  # thresholds descend, so the first maximum is the highest threshold
    return float(f1[best]), float(thresholds[best]), float(precision[best]), float(recall[best])


def segments(labels: npt.ArrayLike) -> I64:
    """Contiguous runs of anomalous items as ``[start, end)`` index pairs, shape ``(n, 2)``."""
    truth = _labels(labels).astype(np.int8)
    edges = np.diff(np.r_[np.int8(0), truth, np.int8(0)])
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    return np.stack([starts, ends], axis=1).astype(np.int64).reshape(-1, 2)


def point_adjust(labels: npt.ArrayLike, predicted: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """Point-adjusted predictions (Xu et al., WWW 2018): a segment hit anywhere is hit entirely.

    Predictions outside anomalous segments are left as they are (they stay false positives).
    """
    truth = _labels(labels)
    guess = _labels(predicted)
    if guess.shape != truth.shape:
        raise ValueError(f"labels and predictions differ in shape: {truth.shape} vs {guess.shape}")
    adjusted = guess.copy()
    for start, end in segments(truth):
        if guess[start:end].any():
            adjusted[start:end] = True
    return adjusted.astype(np.int8)


def point_adjust_scores(labels: npt.ArrayLike, scores: npt.ArrayLike) -> F64:
    """Scores whose threshold at ``t`` gives exactly :func:`point_adjust` of ``scores >= t``.

    A segment is detected at ``t`` when its highest score reaches ``t``, and then all of its
    points are, so every point of a segment takes the segment's maximum. This turns the
    adjusted best-F1 search into one pass over the curve instead of one per threshold.
    """
    truth, values = _pair(labels, scores)
    adjusted = values.copy()
    for start, end in segments(truth):
        adjusted[start:end] = values[start:end].max()
    return adjusted


def score_metrics(
    labels: npt.ArrayLike,
    scores: npt.ArrayLike,
    *,
    threshold: float | None = None,
    adjust: bool = False,
) -> dict[str, float]:
    """The headline numbers under the names every task and the report use.

    Keys: ``roc_auc``, ``pr_auc``, ``best_f1`` (with ``best_f1_threshold``,
    ``best_f1_precision``, ``best_f1_recall``); with ``threshold`` also ``precision``,
    ``recall`` and ``f1`` at ``score >= threshold``; with ``adjust`` the best-F1 and
    at-threshold numbers again after point adjustment, suffixed ``_pa``.
    """
    truth, values = _pair(labels, scores)
    out = {"roc_auc": roc_auc(truth, values), "pr_auc": pr_auc(truth, values)}
    passes = [(False, "")] + ([(True, "_pa")] if adjust else [])
    for adjusted, suffix in passes:
        f1, best, precision, recall = best_f1(truth, values, adjust=adjusted)
        out |= {
            f"best_f1{suffix}": f1,
            f"best_f1_threshold{suffix}": best,
            f"best_f1_precision{suffix}": precision,
            f"best_f1_recall{suffix}": recall,
        }
        if threshold is not None:
            predicted = values >= threshold
            if adjusted:
                predicted = point_adjust(truth, predicted).astype(bool)
            p, r, f = precision_recall_f1(truth, predicted)
            out |= {f"precision{suffix}": p, f"recall{suffix}": r, f"f1{suffix}": f}
    return out
