"""Fitting the seasonal residual detector (:mod:`otelai.detectors.seasonal`) and its combination.

The baseline is a robust seasonal naive forecast (Hyndman & Athanasopoulos, *Forecasting:
Principles and Practice*, section 5.2: the value one season earlier; here the median over the
last ``days`` seasons), so nothing is learned but the scale of its residuals: per metric, their
median and standard deviation on the *fit* part of a resource's normal training rows. The
seasonal score's normaliser and the combined threshold (:mod:`otelai.scoring.combine`) are high
quantiles of the scores on the *held-out* part (inductive conformal calibration: Vovk,
Gammerman & Shafer, *Algorithmic Learning in a Random World*, 2005). No label is ever used, and
the settings are fixed in advance rather than tuned on any data set's test part.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from otelai.detectors.seasonal import SeasonalResidual, residual_stats, standardised
from otelai.scoring.combine import Combination, combined, geometric

F64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

SCORE_FLOOR = 1e-6  # a normaliser of 0 (a perfectly repeating held-out part) would divide by 0


@dataclass(frozen=True, slots=True)
class SeasonalSettings:
    """Fixed choices of the seasonal residual detector.

    Attributes
    ----------
    days
        Past days whose per-metric median is the baseline (5: one odd day cannot move it).
    clip
        Standardised residuals are clipped to ``[0, clip]``.
    quantile
        The seasonal normaliser and the combined threshold are this quantile of held-out scores
        (the autoencoder's own threshold uses its settings' quantile).
    """

    days: int = 5
    clip: float = 100.0
    quantile: float = 0.995


@dataclass(frozen=True, slots=True)
class Residuals:
    """A resource's training rows as seasonal residuals, and where they were cut."""

    values: F64  # (rows, metrics); 0 where not ready
    ready: Bool  # rows with at least one past period
    cut: int  # rows before it are fitted on, the rest held out (all rows when cut >= rows)

    def fit(self) -> F64:
        return self.values[: self.cut][self.ready[: self.cut]]

    def held_out(self) -> tuple[F64, Bool]:
        part = slice(self.cut, None) if self.cut < len(self.values) else slice(None)
        return self.values[part], self.ready[part]


@dataclass(frozen=True, slots=True)
class SeasonalCalibration:
    """Statistics of one resource (or the pool) and its combination with the autoencoder."""

    mu: F64
    sigma: F64
    combination: Combination
    scores: F64  # combined raw scores on the held-out rows


def training_residuals(rows: npt.ArrayLike, cut: int, period: int, settings: SeasonalSettings) -> Residuals:
    """Seasonal residuals of a resource's training rows, through the detector itself."""
    values = np.asarray(rows, dtype=np.float64)
    detector = SeasonalResidual(n_features=values.shape[1], period=period, days=settings.days)
    residuals, ready = detector.residuals_many(values)
    return Residuals(residuals, ready, cut)


def calibrate_seasonal(
    parts: list[Residuals], ae_scores: F64, ae_threshold: float, settings: SeasonalSettings
) -> SeasonalCalibration | None:
    """Fit on ``parts`` (one resource, or all for the pool); None without a ready fit row.

    Parameters
    ----------
    parts
        The residuals of the resource(s).
    ae_scores
        The autoencoder's raw scores on the held-out rows of ``parts``, in the same order.
    ae_threshold
        The autoencoder's threshold for this calibration (its normaliser in the combination).
    settings
        Fixed choices.
    """
    fit = np.concatenate([part.fit() for part in parts])
    if not len(fit):
        return None
    mu, sigma = residual_stats(fit)
    held = [part.held_out() for part in parts]
    residuals = np.concatenate([values for values, _ in held])
    ready = np.concatenate([flags for _, flags in held])
    if len(residuals) != len(ae_scores):
        raise ValueError(f"{len(residuals)} held-out rows but {len(ae_scores)} autoencoder scores")
    z = standardised(residuals, mu, sigma, settings.clip)
    seasonal = np.where(ready, (z * z).mean(axis=1), 0.0)
    score_threshold = SCORE_FLOOR
    threshold = 1.0  # no ready held-out row: every row falls back to the autoencoder, at 1.0
    if ready.any():
        score_threshold = max(float(np.quantile(seasonal[ready], settings.quantile)), SCORE_FLOOR)
        geo = geometric(ae_scores[ready], seasonal[ready], ae_threshold, score_threshold)
        threshold = max(float(np.quantile(geo, settings.quantile)), SCORE_FLOOR)
    combination = Combination(ae_threshold, score_threshold, threshold)
    return SeasonalCalibration(mu, sigma, combination, combined(ae_scores, seasonal, ready, combination))
