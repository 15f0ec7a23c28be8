"""One calibrated score per item from several detectors, with the features that drove it.

Each detector's raw score is calibrated to [0, 1] by an empirical CDF over recent traffic
(:class:`otelai.decision.calibration.EcdfCalibrator`); the item's combined raw score is the
largest calibrated one, itself calibrated again so the final score is a quantile of recent
traffic (0.99 = rarer than 99% of what passed). Detectors that are not ready yet (still
warming up) are left out. The reason is the top features of the detector that scored highest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from otelai.config import Calibration
from otelai.decision.calibration import EcdfCalibrator
from otelai.detectors.base import Detector, FloatArray
from otelai.features.schema import FeatureSchema

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Scored:
    """Scores in [0, 1] (``score``), and per item the index of the deciding detector and
    the feature indices that drove it (``features``, -1 padded)."""

    score: F64
    detector: npt.NDArray[np.int64]
    features: npt.NDArray[np.int64]


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
        self._combined = self._calibrator(calibration, len(detectors))

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
        return self._combined.warm

    def score(self, features: FloatArray) -> Scored:
        n = len(features)
        calibrated = np.zeros((len(self.detectors), n), dtype=np.float64)
        explained = np.full((len(self.detectors), n, self.top), -1, dtype=np.int64)
        for i, detector in enumerate(self.detectors):
            if not detector.ready:
                continue
            raw, reasons = detector.score_explain_many(features, self.top)
            # Against the window as it was before this batch, then learn it: a burst of
            # identical anomalies in one batch must not calibrate itself into normal.
            calibrated[i] = np.nan_to_num(self._calibrators[i].transform(raw), nan=0.0)
            self._calibrators[i].update(raw)
            explained[i, :, : reasons.shape[1]] = reasons[:, : self.top]
        deciding = calibrated.argmax(axis=0) if len(self.detectors) else np.zeros(n, dtype=np.int64)
        combined = calibrated.max(axis=0) if len(self.detectors) else np.zeros(n)
        score = np.nan_to_num(self._combined.transform(combined), nan=0.0)
        self._combined.update(combined)
        features_used = explained[deciding, np.arange(n)]
        return Scored(score=score, detector=deciding.astype(np.int64), features=features_used)

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

    def close(self) -> None:
        for detector in self.detectors:
            detector.close()
