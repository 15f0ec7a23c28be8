"""The detector interface: learn from normal traffic, score new items (high = anomalous).

Shaped like River's anomaly detectors (``learn_one`` / ``score_one``), with batch forms that
the hot path uses: every detector works on a float32 feature matrix, one row an item.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int64]


def top_features(contribution: FloatArray, top: int) -> IntArray:
    """Column indices of the ``top`` largest values of each row, largest first."""
    top = min(top, contribution.shape[1])
    if top <= 0:
        return np.empty((len(contribution), 0), dtype=np.int64)
    # argpartition then sort only the few picked: O(n F) instead of a full sort per row
    part = np.argpartition(-contribution, top - 1, axis=1)[:, :top]
    picked = np.take_along_axis(contribution, part, axis=1)
    order = np.take_along_axis(part, np.argsort(-picked, axis=1), axis=1)
    return order.astype(np.int64)


class Detector(abc.ABC):
    """An anomaly detector over feature vectors of one fixed width."""

    name: ClassVar[str]

    @abc.abstractmethod
    def learn_many(self, features: FloatArray) -> None:
        """Update the detector with a batch of (presumed normal) rows."""

    @abc.abstractmethod
    def score_many(self, features: FloatArray) -> FloatArray:
        """Raw anomaly scores, one per row, higher = more anomalous; 0 while not ready."""

    def explain_many(self, features: FloatArray, top: int = 3) -> IntArray:
        """Indices of the ``top`` features that drove each row's score (-1 where none did)."""
        return np.full((len(features), top), -1, dtype=np.int64)

    def score_explain_many(self, features: FloatArray, top: int = 3) -> tuple[FloatArray, IntArray]:
        """Scores and top contributing features in one pass (one inference run where possible)."""
        return self.score_many(features), self.explain_many(features, top)

    def score_keyed(self, features: FloatArray, keys: IntArray | None) -> FloatArray:
        """Raw scores of rows that belong to the series ``keys`` (one key a row; None: unknown).

        A detector whose state is per series (the key, in arrival order, says which state a row
        advances) overrides this and :meth:`score_explain_keyed`; every other detector scores
        the rows alone, which is this default.
        """
        return self.score_many(features)

    def score_explain_keyed(
        self, features: FloatArray, keys: IntArray | None, top: int = 3
    ) -> tuple[FloatArray, IntArray]:
        """:meth:`score_keyed` with the top contributing features (see :meth:`score_explain_many`)."""
        return self.score_explain_many(features, top)

    @property
    def ready(self) -> bool:
        """Whether the scores mean anything yet (enough has been learned)."""
        return True

    def learn_one(self, features: FloatArray) -> None:
        self.learn_many(np.asarray(features, dtype=np.float32).reshape(1, -1))

    def score_one(self, features: FloatArray) -> float:
        return float(self.score_many(np.asarray(features, dtype=np.float32).reshape(1, -1))[0])

    def close(self) -> None:
        """Release what the detector holds (inference sessions)."""
