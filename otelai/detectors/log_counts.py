"""Template count vectors of whole sessions, scored by their residual off the normal subspace.

W. Xu, L. Huang, A. Fox, D. Patterson, M. Jordan, "Detecting Large-Scale System Problems by
Mining Console Logs", SOSP 2009: a session (an HDFS block) becomes the vector of how often each
template occurs in it; normal sessions lie close to a low-dimensional principal subspace, and
the squared prediction error (SPE, the Q-statistic of Jackson & Mudholkar, 1979) of a session
measures how far it is from it. Counts go through ``log1p`` first (a block with one more replica
is not three times as odd as one with a missing event), then the residual graph of
:mod:`otelai.detectors.pca`, served through an inference backend.

A session is only complete when it ends, so this detector scores closed sessions
(:meth:`otelai.detectors.log_sessions.Sessions.close` / ``expire``), not single records.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from otelai.backends.base import Backend
from otelai.backends.select import load_backend
from otelai.detectors.base import Detector, FloatArray, IntArray
from otelai.detectors.pca import principal_components, residual_model

if TYPE_CHECKING:
    from otelai.detectors.registry import Serving
    from otelai.models.bundle import Bundle, DetectorSpec


def count_features(counts: FloatArray) -> FloatArray:
    """What the residual graph reads: ``log1p`` of the counts, float32."""
    rows: FloatArray = np.log1p(np.maximum(np.asarray(counts, dtype=np.float32), np.float32(0.0)))
    return rows


def fit_count_model(
    counts: FloatArray, *, variance: float = 0.95, max_components: int | None = None
) -> bytes:
    """ONNX residual graph fitted to count vectors of normal sessions (one row a session)."""
    rows = count_features(counts)
    width = rows.shape[1]
    limit = max_components if max_components is not None else max(1, width // 2)
    mean, scale, components = principal_components(rows, variance, limit)
    return residual_model(mean, scale, components)


class SessionCountDetector(Detector):
    """Residual of session count vectors off the normal subspace (served by a backend).

    Parameters
    ----------
    backend
        A loaded backend running the graph of :func:`fit_count_model`.
    width
        Length of the count vectors.
    """

    name: ClassVar[str] = "log_counts"

    def __init__(self, backend: Backend, *, width: int) -> None:
        self.backend = backend
        self.width = width

    def learn_many(self, features: FloatArray) -> None:
        """The subspace is fitted offline (``otelai train``); online refits are not done."""

    def _run(self, features: FloatArray) -> dict[str, FloatArray] | None:
        rows = np.asarray(features, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"expected count vectors of width {self.width}, got shape {rows.shape}")
        if not len(rows):
            return None
        return self.backend.run({"x": np.ascontiguousarray(count_features(rows))})

    def score_many(self, features: FloatArray) -> FloatArray:
        out = self._run(features)
        return np.zeros(len(features), dtype=np.float32) if out is None else out["score"]

    def explain_many(self, features: FloatArray, top: int = 3) -> IntArray:
        return self.score_explain_many(features, top)[1]

    def score_explain_many(self, features: FloatArray, top: int = 3) -> tuple[FloatArray, IntArray]:
        out = self._run(features)
        if out is None:
            return np.zeros(len(features), dtype=np.float32), super().explain_many(features, top)
        top = min(top, self.width)
        order = np.argsort(-out["residual"], axis=1, kind="stable")[:, :top]
        return out["score"], order.astype(np.int64)

    def close(self) -> None:
        self.backend.close()

    @classmethod
    def from_spec(cls, bundle: Bundle, spec: DetectorSpec, serving: Serving) -> Detector:
        """The graph in the bundle file ``spec.file`` on the first backend of ``serving`` that works."""
        from otelai.models.bundle import BundleError

        if spec.file is None or "width" not in spec.params:
            raise BundleError(f"bundle {bundle.path}: detector {spec.name!r} needs a file and params.width")
        backend = load_backend(
            serving.backend_order,
            bundle.file(spec.file),
            options=serving.backend_options,
            on_fallback=serving.on_fallback,
        )
        return cls(backend, width=int(spec.params["width"]))
