"""Calibration of a detector's raw scores on held-out normal data, stored in the bundle.

The service calibrates raw scores by their empirical CDF over recent traffic
(:mod:`otelai.decision.calibration`); the quantiles stored here are the ECDF it starts from,
so a fresh install is calibrated from its first batch (Vovk, Gammerman & Shafer, *Algorithmic
Learning in a Random World*, 2005: inductive conformal prediction calibrates on data held out
from training).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from otelai.models.bundle import Calibration

DEFAULT_POINTS = 2049  # quantiles stored: resolution 1/2048 in the calibrated score


def calibration_of(raw: npt.ArrayLike, points: int = DEFAULT_POINTS) -> Calibration:
    """Quantiles of ``raw`` at ``points`` evenly spaced probabilities 0..1 (NaNs dropped)."""
    values = np.asarray(raw, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Calibration()
    quantiles = np.quantile(values, np.linspace(0.0, 1.0, points))
    return Calibration(quantiles=[float(q) for q in quantiles], samples=int(values.size))


def calibrated(calibration: Calibration, raw: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Mid-rank ECDF of ``raw`` against the stored quantiles (what a seeded calibrator gives)."""
    table = np.asarray(calibration.quantiles, dtype=np.float64)
    values = np.asarray(raw, dtype=np.float64)
    if table.size == 0:
        return np.zeros(values.shape)
    ranks = np.searchsorted(table, values, side="left") + np.searchsorted(table, values, side="right")
    result: npt.NDArray[np.float64] = ranks / (2.0 * table.size)
    return result
