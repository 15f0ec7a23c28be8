"""Seasonal residual detector: how far each metric is from its value at the same time on past days.

A seasonal naive forecast predicts a step by the value one season earlier (Hyndman &
Athanasopoulos, *Forecasting: Principles and Practice*, 3rd ed., 2021, section 5.2 "seasonal
naive method"); its residual is what the daily cycle does not explain, the idea behind STL's
remainder (Cleveland, Cleveland, McRae & Terpenning, "STL: A Seasonal-Trend Decomposition
Procedure Based on Loess", J. Official Statistics, 1990). Here the forecast of a row ``x_t`` is
the per-metric *median* of the rows one, two, ... ``days`` periods earlier (those that exist),
so one unusual past day does not move the baseline (a robust seasonal naive baseline).

The residual ``r = x_t - b_t`` of each metric is standardised by that metric's residual
median ``mu`` and standard deviation ``sigma`` on the resource's normal training rows,
``z = |r - mu| / sigma`` clipped to ``[0, clip]``, and the score is the mean of ``z**2`` over
metrics (a row's metrics with the largest ``z`` are its reasons). A value that is normal for a
busy hour but arrives in a quiet hour has a large residual, while a detector that only sees a
short window of recent rows cannot tell the two apart.

State is numpy only: per resource (one detector each), a ring buffer of the last
``days * period`` rows and the count of rows seen. Until one full period of history exists a
row has no baseline: it is *not ready* (score 0, see :meth:`SeasonalResidual.residuals_many`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Self

import numpy as np
import numpy.typing as npt

from otelai.detectors.base import Detector, FloatArray, IntArray, top_features
from otelai.detectors.multivariate import ANY_RESOURCE

if TYPE_CHECKING:
    from otelai.detectors.registry import Serving
    from otelai.models.bundle import Bundle, DetectorSpec

KIND = "seasonal_residual"
DAY_SECONDS = 86_400

F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]


def period_of(step_seconds: float) -> int:
    """Rows per day at ``step_seconds`` between rows (288 at 5 minutes, 1440 at 1 minute)."""
    if step_seconds <= 0:
        raise ValueError(f"step_seconds must be positive, got {step_seconds}")
    return max(1, round(DAY_SECONDS / step_seconds))


def residual_stats(residuals: npt.ArrayLike) -> tuple[F64, F64]:
    """Per-metric ``(mu, sigma)`` of normal residuals ``(rows, metrics)``.

    ``mu`` is the median (robust to the odd bad day in training); ``sigma`` the standard
    deviation, floored at ``max(1e-3, 0.05 * mean sigma)`` so that a metric that never moved in
    training does not turn every later wobble into an anomaly.
    """
    r = np.asarray(residuals, dtype=np.float64)
    if r.ndim != 2 or not len(r):
        raise ValueError("need a non-empty (rows, metrics) matrix of residuals")
    mu = np.median(r, axis=0)
    sigma = r.std(axis=0)
    return mu, np.maximum(sigma, max(1e-3, 0.05 * float(sigma.mean())))


def standardised(residuals: F64, mu: F64, sigma: F64, clip: float) -> F64:
    """``|r - mu| / sigma`` clipped to ``[0, clip]``, per metric."""
    z: F64 = np.minimum(np.abs(residuals - mu) / sigma, clip)
    return z


class SeasonalResidual(Detector):
    """Robust seasonal naive residuals of one resource's metrics; see the module docstring.

    Parameters
    ----------
    n_features
        Metrics per row.
    period
        Rows per season (a day).
    days
        Past seasons whose median is the baseline (fewer while fewer exist).
    mu, sigma
        Per metric, the median and standard deviation of normal residuals.
    clip
        Standardised residuals are clipped to ``[0, clip]``: one wild metric cannot make a
        score without bound.
    resource
        The resource these statistics belong to (``*``: any).
    """

    name: ClassVar[str] = KIND

    def __init__(
        self,
        *,
        n_features: int,
        period: int,
        days: int = 5,
        mu: Sequence[float] | F64 | None = None,
        sigma: Sequence[float] | F64 | None = None,
        clip: float = 100.0,
        resource: str = ANY_RESOURCE,
    ) -> None:
        if n_features < 1 or period < 1 or days < 1:
            raise ValueError(f"need n_features, period, days >= 1, got {n_features}, {period}, {days}")
        if clip <= 0:
            raise ValueError(f"clip must be positive, got {clip}")
        self.mu = np.zeros(n_features) if mu is None else np.asarray(mu, dtype=np.float64)
        self.sigma = np.ones(n_features) if sigma is None else np.asarray(sigma, dtype=np.float64)
        if self.mu.shape != (n_features,) or self.sigma.shape != (n_features,):
            raise ValueError(f"mu and sigma must have shape ({n_features},)")
        if not (self.sigma > 0).all():
            raise ValueError("sigma must be positive")
        self.n_features = n_features
        self.period = period
        self.days = days
        self.clip = float(clip)
        self.resource = resource
        self.capacity = days * period
        self._ring = np.zeros((0, n_features), dtype=np.float32)  # allocated on first rows
        self.seen = 0  # rows ever remembered; row g of the stream sits at ring[g % capacity]

    @classmethod
    def from_spec(cls, bundle: Bundle, spec: DetectorSpec, serving: Serving) -> Self:
        """Build from a bundle entry (``params`` only: there is no graph to serve)."""
        from otelai.models.bundle import BundleError

        params = spec.params
        try:
            return cls(
                n_features=int(params["n_features"]),
                period=int(params["period"]),
                days=int(params["days"]),
                mu=[float(v) for v in params["mu"]],
                sigma=[float(v) for v in params["sigma"]],
                clip=float(params["clip"]),
                resource=str(params.get("resource", ANY_RESOURCE)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bundle {bundle.path}: detector {spec.name!r}: bad params: {exc}") from exc

    def reset(self) -> None:
        """Forget the history: the next row starts a new stream."""
        self._ring = self._ring[:0]
        self.seen = 0

    @property
    def ready(self) -> bool:
        """Whether the next row has a baseline (one full period of history)."""
        return self.seen >= self.period

    def _rows(self, features: npt.ArrayLike) -> F64:
        return np.asarray(features, dtype=np.float64).reshape(-1, self.n_features)

    def remember(self, features: npt.ArrayLike) -> None:
        """Append rows to the history without scoring them (e.g. a stream's earlier rows)."""
        rows = self._rows(features)
        if not len(rows):
            return
        if not len(self._ring):
            # float32: days of history per resource are the service's largest state (SMD: 5 x
            # 1440 rows x 38 metrics), and metric values carry no more than 7 significant digits.
            self._ring = np.zeros((self.capacity, self.n_features), dtype=np.float32)
        keep = rows[-self.capacity :]  # older rows would be overwritten within this call anyway
        first = self.seen + len(rows) - len(keep)
        self._ring[(first + np.arange(len(keep))) % self.capacity] = keep
        self.seen += len(rows)

    def baseline(self, features: npt.ArrayLike) -> tuple[F64, Bool]:
        """Baselines ``(n, n_features)`` of consecutive rows and whether each has one; no advance.

        Row ``i`` (stream position ``g = seen + i``) has as baseline the median of the rows at
        ``g - period * j``, ``j = 1..days``, that exist (``>= 0``); lag ``j`` existing implies
        every shorter lag does, so rows are grouped by how many lags they have and each group is
        one vectorised gather and median. Rows without any lag get NaN and ``False``.
        """
        rows = self._rows(features)
        n = len(rows)
        out = np.full((n, self.n_features), np.nan)
        position = self.seen + np.arange(n)
        lags = np.minimum(position // self.period, self.days)
        for count in np.unique(lags[lags > 0]).tolist():
            at = np.flatnonzero(lags == count)
            source = position[at][None, :] - self.period * np.arange(1, count + 1)[:, None]  # (count, m)
            earlier = source < self.seen  # in the ring; the rest are rows of this call
            gathered = np.empty((*source.shape, self.n_features))
            gathered[earlier] = self._ring[source[earlier] % self.capacity]
            # Through float32 as the ring stores them: a row gives the same baseline whether it
            # is still in this call or already remembered.
            gathered[~earlier] = rows[source[~earlier] - self.seen].astype(np.float32)
            out[at] = np.median(gathered, axis=0)
        return out, lags > 0

    def residuals_many(self, features: npt.ArrayLike) -> tuple[F64, Bool]:
        """Residuals ``x - baseline`` ``(n, n_features)`` (0 where not ready) and readiness; advances."""
        rows = self._rows(features)
        base, ready = self.baseline(rows)
        self.remember(rows)
        return np.where(ready[:, None], rows - np.nan_to_num(base), 0.0), ready

    def contributions_ready_many(self, features: npt.ArrayLike) -> tuple[F64, Bool]:
        """Per-metric ``z**2 / n_features`` (a row's score is their sum; 0 where not ready); advances."""
        residuals, ready = self.residuals_many(features)
        z = standardised(residuals, self.mu, self.sigma, self.clip)
        return np.where(ready[:, None], z * z / self.n_features, 0.0), ready

    def learn_many(self, features: FloatArray) -> None:
        """Remember the rows as history (the statistics are fitted offline, ``otelai train``)."""
        self.remember(features)

    def score_many(self, features: FloatArray) -> FloatArray:
        return self.score_explain_many(features, 0)[0]

    def score_explain_many(self, features: FloatArray, top: int = 3) -> tuple[FloatArray, IntArray]:
        """Scores (mean of clipped ``z**2``; 0 while not ready) and the top metrics; advances."""
        contribution, _ = self.contributions_ready_many(features)
        return contribution.sum(axis=1).astype(np.float32), top_features(contribution.astype(np.float32), top)

    def explain_many(self, features: FloatArray, top: int = 3) -> IntArray:
        """Top metrics of each row's score, without advancing the stream."""
        rows = self._rows(features)
        base, ready = self.baseline(rows)
        z = standardised(
            np.where(ready[:, None], rows - np.nan_to_num(base), 0.0), self.mu, self.sigma, self.clip
        )
        return top_features(np.where(ready[:, None], z * z, 0.0).astype(np.float32), top)
