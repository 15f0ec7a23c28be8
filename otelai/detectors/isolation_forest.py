"""An isolation forest served from its ONNX graph (scikit-learn, converted by skl2onnx).

Liu, Ting & Zhou, "Isolation Forest" (ICDM 2008): random axis-parallel splits isolate a row
unlike the training rows in fewer steps; the score is ``2 ** (-E[h(x)] / c(n))``, here
scikit-learn's ``-score_samples`` (in 0.5..1 for anomalies, high = anomalous). A forest has no
per-feature error, so the features named behind a score are those farthest from their
training mean in training standard deviations (kept in the bundle entry's ``params``).
Training is in :mod:`otelai.models.training.isolation_forest`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from otelai.backends.base import Backend
from otelai.detectors.base import FloatArray, IntArray, top_features
from otelai.detectors.bundled import OnnxModelDetector


class IsolationForestDetector(OnnxModelDetector):
    """Isolation-forest score (bundle kind ``isolation_forest``).

    Parameters
    ----------
    backend
        The converted forest; ``score`` = ``-score_samples``.
    n_features
        Width of the feature rows.
    mean, scale
        Training mean and spread of each feature, for explanations (none without them).
    """

    name: ClassVar[str] = "isolation_forest"

    def __init__(
        self,
        backend: Backend,
        *,
        n_features: int,
        mean: Sequence[float] | None = None,
        scale: Sequence[float] | None = None,
    ) -> None:
        super().__init__(backend, n_features=n_features)
        self._mean = None if mean is None else np.asarray(mean, dtype=np.float32)
        self._inv_scale = None if scale is None else 1.0 / np.asarray(scale, dtype=np.float32)

    @classmethod
    def _options(cls, params: dict[str, object]) -> dict[str, object]:
        return {"mean": params.get("mean"), "scale": params.get("scale")}

    def _explain(self, features: FloatArray, top: int) -> IntArray:
        if self._mean is None or self._inv_scale is None:
            return super()._explain(features, top)
        distance = np.abs((np.asarray(features, dtype=np.float32) - self._mean) * self._inv_scale)
        return top_features(distance, top)
