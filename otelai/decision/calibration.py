"""Streaming calibration of raw detector scores to [0, 1] with an empirical CDF of recent traffic.

A calibrated score is the empirical CDF (ECDF) of the raw score over a window of recent raw
scores: the fraction of recent traffic that scored lower. This is quantile (probability
integral transform) calibration; ``1 - score`` is the conformal p-value of the item against the
window, as in inductive conformal anomaly detection (Vovk, Gammerman & Shafer, *Algorithmic
Learning in a Random World*, 2005; Laxhammar & Falkman, "Inductive conformal anomaly detection
for sequential detection of anomalous sub-trajectories", 2015). Whatever a detector's raw scale
(reconstruction error, isolation depth, z-score), thresholds then read as quantiles: 0.99 flags
the top 1% of recent traffic, on any service.

Ties count half (the mid-rank ECDF, Lancaster's mid-p): a detector that gives most items the
same raw score puts them at 0.5, not at 1.0, so a constant score never looks anomalous.

Memory is bounded: the window is a ring buffer of ``window`` raw scores. Each incoming score
enters it with probability ``sample_rate`` (seeded Bernoulli thinning), so the window spans
about ``window / sample_rate`` items whatever the batch sizes are.

Warm-up: until the window holds ``min_samples`` scores, :meth:`EcdfCalibrator.transform`
returns ``warmup_score`` (0.0 by default, i.e. everything is ``normal``): with few samples the
tail quantiles are meaningless and would flag ordinary traffic. Detection starts once the
window has filled to ``min_samples``.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from otelai.kernels import load_kernels

FloatArray = npt.NDArray[np.float64]


# "numpy" keeps the numpy path even where numba is installed (tests compare the two).
KERNEL_ENV = "OTELAI_CALIBRATION_KERNEL"
_NO_DRAWS: FloatArray = np.zeros(0)


class EcdfCalibrator:
    """Maps raw scores to their mid-rank ECDF over a thinned window of recent raw scores.

    Parameters
    ----------
    window
        Raw scores kept (ring buffer); 8 bytes each.
    sample_rate
        Probability that an incoming raw score enters the window.
    min_samples
        Scores needed in the window before calibrated scores are produced.
    warmup_score
        Calibrated score returned during warm-up.
    seed
        Seed of the thinning.

    Examples
    --------
    >>> import numpy as np
    >>> cal = EcdfCalibrator(window=1000, sample_rate=1.0, min_samples=10, seed=0)
    >>> cal.update(np.arange(1000.0))
    >>> cal.transform(np.array([-1.0, 499.5, 5000.0])).tolist()
    [0.0, 0.5, 1.0]
    """

    def __init__(
        self,
        *,
        window: int = 8192,
        sample_rate: float = 0.05,
        min_samples: int = 1024,
        warmup_score: float = 0.0,
        seed: int = 0,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        if not 0.0 < sample_rate <= 1.0:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        if not 1 <= min_samples <= window:
            raise ValueError(f"min_samples must be in [1, window], got {min_samples}")
        if not 0.0 <= warmup_score <= 1.0:
            raise ValueError(f"warmup_score must be in [0, 1], got {warmup_score}")
        self.window = window
        self.sample_rate = sample_rate
        self.min_samples = min_samples
        self.warmup_score = warmup_score
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._ring: FloatArray = np.empty(window, dtype=np.float64)
        self._filled = 0
        self._next = 0
        self._sorted: FloatArray | None = None
        _compiled()  # load the kernels at start-up, not on the first batch

    @property
    def samples(self) -> int:
        """Raw scores now in the window."""
        return self._filled

    @property
    def warm(self) -> bool:
        """Whether calibrated scores are produced (the window holds ``min_samples``)."""
        return self._filled >= self.min_samples

    def update(self, raw: npt.ArrayLike) -> None:
        """Add a batch of raw scores to the window (thinned; NaN and infinities are ignored)."""
        values = np.asarray(raw, dtype=np.float64).ravel()
        kernel = _compiled()
        if kernel is not None:
            self._update_compiled(kernel, values)
            return
        values = values[np.isfinite(values)]
        if self.sample_rate < 1.0:
            values = values[self._rng.random(values.size) < self.sample_rate]
        if values.size == 0:
            return
        if values.size >= self.window:
            values = values[-self.window :]
        self._merge_sorted(values)
        end = self._next + values.size
        if end <= self.window:
            self._ring[self._next : end] = values
        else:
            split = self.window - self._next
            self._ring[self._next :] = values[:split]
            self._ring[: end - self.window] = values[split:]
        self._next = end % self.window
        self._filled = min(self.window, self._filled + values.size)

    def _update_compiled(self, kernel: Any, values: FloatArray) -> None:
        """:meth:`update` by the compiled kernels: the same window, sorted copy and draws.

        The generator draws one number per finite score, as the numpy path does, so the
        thinning keeps the same scores and later draws stay in step.
        """
        draws = _NO_DRAWS
        if self.sample_rate < 1.0:
            draws = self._rng.random(kernel.finite(values))
        values = kernel.thin(values, draws, self.sample_rate, self.window)
        if values.size == 0:
            return
        keep = self._sorted is not None and values.size * 8 <= self.window
        window = self._sorted if self._sorted is not None else _NO_DRAWS
        added = np.sort(values) if keep else values
        merged = kernel.absorb(self._ring, window, keep, self._next, self._filled, values, added)
        self._sorted = merged if keep else None
        self._next = (self._next + values.size) % self.window
        self._filled = min(self.window, self._filled + values.size)

    def _merge_sorted(self, values: FloatArray) -> None:
        """Keep the sorted window in step: take out what ``values`` will overwrite, merge them in.

        Two memory moves of the window (tens of microseconds) instead of a sort of it (about
        0.5 ms for 8192 scores) on every batch; a large update just drops the sorted copy.
        """
        if self._sorted is None or values.size * 8 > self.window:
            self._sorted = None
            return
        slots = (self._next + np.arange(values.size)) % self.window
        evicted = np.sort(self._ring[slots[slots < self._filled]])
        current = self._sorted
        if evicted.size:
            # Equal evicted values take consecutive positions among the equal stored ones.
            first = np.searchsorted(current, evicted, side="left")
            current = np.delete(current, first + np.arange(evicted.size) - np.searchsorted(evicted, evicted))
        added = np.sort(values)
        self._sorted = np.insert(current, np.searchsorted(current, added), added)

    def transform(self, raw: npt.ArrayLike) -> FloatArray:
        """Calibrated scores in [0, 1] of a batch of raw scores; NaN stays NaN.

        Monotone non-decreasing in the raw score. Sorting the window happens at most once per
        :meth:`update` (about 0.5 ms for 8192 scores), then each score is two binary searches
        (about 0.1 us a score in batches of 1024). With numba, one compiled pass does the
        searches and the division (:mod:`otelai.decision.calibration_numba`), same results.
        """
        values = np.asarray(raw, dtype=np.float64)
        if not self.warm:
            out = np.full(values.shape, self.warmup_score, dtype=np.float64)
            out[np.isnan(values)] = np.nan
            return out
        if self._sorted is None:
            self._sorted = np.sort(self._ring[: self._filled])
        kernel = _compiled()
        if kernel is not None:
            flat = values.ravel()
            calibrated: FloatArray = np.empty(flat.size, dtype=np.float64)
            kernel.transform(self._sorted, flat, calibrated, 2.0 * self._filled)
            return calibrated.reshape(values.shape)
        # Binary searches with sorted needles walk the window in order: about 3x faster than
        # searching in arrival order (branch prediction and cache), sort included.
        flat = values.ravel()
        order = np.argsort(flat, kind="stable")
        needles = flat.take(order)
        ranks = np.searchsorted(self._sorted, needles, side="left")
        ranks += np.searchsorted(self._sorted, needles, side="right")
        scores: FloatArray = np.empty(flat.size, dtype=np.float64)
        scores[order] = ranks / (2.0 * self._filled)
        if needles.size and np.isnan(needles[-1]):  # NaNs sort last
            scores[np.isnan(flat)] = np.nan
        return scores.reshape(values.shape)

    def prime(self, quantiles: npt.ArrayLike) -> None:
        """Fill the window from a stored ECDF (a model bundle's quantiles of normal scores).

        The window then holds ``window`` values spread along that ECDF and is warm at once;
        live traffic replaces them as it arrives, so the calibration follows the user's data.
        """
        table = np.asarray(quantiles, dtype=np.float64).ravel()
        if table.size == 0:
            return
        grid = np.linspace(0.0, 1.0, self.window)
        self._ring[:] = np.interp(grid, np.linspace(0.0, 1.0, table.size), np.sort(table))
        self._filled = self.window
        self._next = 0
        self._sorted = None

    def quantile(self, q: float) -> float:
        """The raw score at quantile ``q`` of the window (NaN during warm-up)."""
        if not self.warm:
            return float("nan")
        return float(np.quantile(self._ring[: self._filled], q))


@cache
def _compiled() -> Any:
    """The compiled kernels' module, or None (numba missing or ``OTELAI_CALIBRATION_KERNEL=numpy``)."""
    return load_kernels("otelai.decision.calibration_numba", KERNEL_ENV, "calibration runs on numpy")
