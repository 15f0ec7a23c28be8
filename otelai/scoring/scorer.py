"""One calibrated score per item from several detectors, with the features that drove it.

Each detector's raw score is calibrated to [0, 1] by an empirical CDF over recent traffic
(:class:`otelai.decision.calibration.EcdfCalibrator`), so ``1 - c`` is an empirical p-value
(Laxhammar & Falkman's conformal anomaly detection). The detectors are combined by the
Bonferroni rule: ``p = min(1, k * min_d p_d)`` over the ``k`` ready detectors, and the score
is ``1 - p``. So a threshold of 0.995 flags at most about 0.5% of normal traffic however many
detectors vote, and a value beyond everything in a detector's window scores 1. (Calibrating
the maximum again by its own ECDF fails when many items tie at the top: the ties' mid-rank
then caps every later score below the threshold.) Detectors that are not ready yet (still
warming up) are left out. The reason is the top features of the detector that scored highest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from otelai.config import Calibration
from otelai.decision.calibration import EcdfCalibrator
from otelai.decision.severity import p_value_floor
from otelai.detectors.base import Detector, FloatArray, IntArray
from otelai.features.schema import FeatureSchema

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores in [0, 1] (``score``), and per item the index of the deciding detector and
    the feature indices that drove it (``features``, -1 padded)."""

    score: F64
    detector: npt.NDArray[np.int64]
    features: npt.NDArray[np.int64]
    # Each detector's raw scores (None: not ready), kept when the calibration update is left
    # to :meth:`Scorer.calibrate`.
    raw: tuple[FloatArray | None, ...] = ()


class Scorer:
    """Runs the detectors of one signal and calibrates their scores.

    Parameters
    ----------
    schema
        Names of the feature columns, for reasons.
    detectors
        Detectors over the same feature rows.
    calibration
        Window and warm-up of every calibrator.
    top
        Features named in a reason.
    """

    def __init__(
        self,
        schema: FeatureSchema,
        detectors: Sequence[Detector],
        calibration: Calibration,
        *,
        top: int = 2,
    ) -> None:
        self.schema = schema
        self.detectors = list(detectors)
        self.top = top
        self._calibrators = [self._calibrator(calibration, i) for i in range(len(detectors))]

    @staticmethod
    def _calibrator(calibration: Calibration, offset: int) -> EcdfCalibrator:
        return EcdfCalibrator(
            window=calibration.window,
            sample_rate=calibration.sample_rate,
            min_samples=calibration.min_samples,
            seed=calibration.seed + offset,
        )

    @property
    def warm(self) -> bool:
        return any(calibrator.warm for calibrator in self._calibrators)

    @property
    def p_floor(self) -> float:
        """The smallest combined p-value (``1 - score``) the calibration windows attest now."""
        windows = [
            c.samples for d, c in zip(self.detectors, self._calibrators, strict=True) if d.ready and c.warm
        ]
        return p_value_floor(len(windows), max(windows, default=0))

    def score(
        self,
        features: FloatArray,
        *,
        keys: IntArray | None = None,
        explain_above: float | None = None,
        calibrate: bool = True,
    ) -> Scored:
        """Calibrated scores of ``features``, with the deciding detector and its top features.

        ``keys``: the series key of each row, for detectors whose state is per series
        (:meth:`~otelai.detectors.base.Detector.score_keyed`; the others ignore it). Rows of
        one series must come in time order. ``explain_above``: find the top features only
        for rows scoring at least this much (the others get -1): the reasons are read for
        anomalies alone, and ranking every row's features costs more than scoring it.
        ``calibrate=False``: leave the calibration windows as they are and keep the raw scores
        in :attr:`Scored.raw` for a later :meth:`calibrate` (learning after forwarding).
        """
        n = len(features)
        calibrated = np.zeros((len(self.detectors), n), dtype=np.float64)
        explained = np.full((len(self.detectors), n, self.top), -1, dtype=np.int64)
        ready = [detector.ready for detector in self.detectors]
        raws: list[FloatArray | None] = [None] * len(self.detectors)
        for i, detector in enumerate(self.detectors):
            if not ready[i]:
                continue
            if explain_above is None:
                raw, reasons = detector.score_explain_keyed(features, keys, self.top)
                explained[i, :, : reasons.shape[1]] = reasons[:, : self.top]
            else:
                raw = detector.score_keyed(features, keys)
            # Against the window as it was before this batch, then learn it: a burst of
            # identical anomalies in one batch must not calibrate itself into normal.
            row = calibrated[i]
            row[:] = self._calibrators[i].transform(raw)
            row[np.isnan(row)] = 0.0  # a detector that could not score an item has no say on it
            if calibrate:
                self._calibrators[i].update(raw)
            else:
                raws[i] = raw
        voting = sum(1 for i, warm in enumerate(ready) if warm and self._calibrators[i].warm)
        if voting:
            deciding = calibrated.argmax(axis=0)
            score = 1.0 - np.minimum(1.0, voting * (1.0 - calibrated.max(axis=0)))
        else:  # nothing calibrated yet: everything is normal
            deciding = np.zeros(n, dtype=np.int64)
            score = np.zeros(n, dtype=np.float64)
        if explain_above is not None:
            self._explain(features, ready, deciding, np.flatnonzero(score >= explain_above), explained)
        features_used = explained[deciding, np.arange(n)]
        kept = () if calibrate else tuple(raws)
        return Scored(score=score, detector=deciding.astype(np.int64), features=features_used, raw=kept)

    def calibrate(self, scored: Scored) -> None:
        """Add the raw scores of a batch scored with ``calibrate=False`` to the windows."""
        for calibrator, raw in zip(self._calibrators, scored.raw, strict=False):
            if raw is not None:
                calibrator.update(raw)

    def _explain(
        self,
        features: FloatArray,
        ready: list[bool],
        deciding: npt.NDArray[np.intp],
        rows: npt.NDArray[np.intp],
        explained: npt.NDArray[np.int64],
    ) -> None:
        """Top features of ``rows`` by their deciding detector (a row's ranking is its own)."""
        if not rows.size:
            return
        for i, detector in enumerate(self.detectors):
            mine = rows[deciding.take(rows) == i]
            if ready[i] and mine.size:
                reasons = detector.explain_many(features[mine], self.top)
                explained[i, mine, : reasons.shape[1]] = reasons[:, : self.top]

    def learn(self, features: FloatArray) -> None:
        """Teach the detectors with rows judged normal."""
        if len(features):
            for detector in self.detectors:
                detector.learn_many(features)

    def reason(self, detector: int, features: Sequence[int]) -> str:
        """``"pca: latency_z, error_surprise"``: the deciding detector and its top features."""
        names = [self.schema.names[i] for i in features if i >= 0]
        label = self.detectors[detector].name if self.detectors else "none"
        return f"{label}: {', '.join(names)}" if names else label

    def prime(self, detector: int, quantiles: Sequence[float]) -> None:
        """Start detector ``detector``'s calibration from stored quantiles (a model bundle's)."""
        self._calibrators[detector].prime(quantiles)

    def close(self) -> None:
        for detector in self.detectors:
            detector.close()
