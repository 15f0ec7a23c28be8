"""The streaming-baseline detector: how surprising an item is against its own key's history.

The features it reads are already normalised per key by streaming baselines
(:mod:`otelai.features.baseline`): a latency z-score against the operation's exponentially
weighted mean and variance, an error's ``-ln p`` under the operation's error rate, a metric
point's z-score against its series. The score is the largest of those surprises (positive
parts only: faster than usual is not an anomaly); it needs no training, so a fresh install
scores sensibly within its first minutes and follows the user's services as they change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import numpy as np

from otelai.detectors.base import Detector, FloatArray, IntArray
from otelai.features.schema import FeatureSchema


class SurpriseDetector(Detector):
    """Max of selected per-key surprise features.

    Parameters
    ----------
    schema
        The feature schema of the rows.
    columns
        Names of the surprise features (z-scores, ``-ln p`` values) to take the maximum of.
    """

    name: ClassVar[str] = "surprise"

    def __init__(self, schema: FeatureSchema, columns: Sequence[str]) -> None:
        self.schema = schema
        self.columns = tuple(columns)
        self._index = np.array([schema.names.index(column) for column in columns], dtype=np.int64)

    def learn_many(self, features: FloatArray) -> None:
        """Nothing to learn: the baselines behind the features learn as they are computed."""

    def score_many(self, features: FloatArray) -> FloatArray:
        picked = np.maximum(features[:, self._index], 0.0)
        scores: FloatArray = picked.max(axis=1).astype(np.float32)
        return scores

    def score_explain_many(self, features: FloatArray, top: int = 3) -> tuple[FloatArray, IntArray]:
        picked = np.maximum(features[:, self._index], 0.0)
        order = np.argsort(-picked, axis=1)[:, :top]
        reasons = self._index[order]
        reasons[np.take_along_axis(picked, order, axis=1) <= 0] = -1
        return picked.max(axis=1).astype(np.float32), reasons

    def explain_many(self, features: FloatArray, top: int = 3) -> IntArray:
        return self.score_explain_many(features, top)[1]
