"""Detectors trained offline and shipped in a model bundle as an ONNX graph.

The graph reads ``x`` (float32, ``[batch, width]``) and writes ``score`` (``[batch]``, higher =
more anomalous) and, where the model has one, ``residual`` (``[batch, width]``, each feature's
share of the score), which names the features behind a score. The graph runs on the first
inference backend of the configured order that works here (:mod:`otelai.backends`), so the
service needs neither PyTorch nor scikit-learn. The models are frozen: ``learn_many`` leaves
them as they are (the calibration above them still follows the traffic).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Self

import numpy as np

from otelai.backends.base import Backend
from otelai.backends.select import load_backend
from otelai.detectors.base import Detector, FloatArray, IntArray, top_features
from otelai.detectors.registry import Serving

if TYPE_CHECKING:
    from otelai.models.bundle import Bundle, DetectorSpec


class OnnxModelDetector(Detector):
    """A frozen detector whose scores come from an ONNX graph run by a backend.

    Parameters
    ----------
    backend
        The loaded graph (see the module docstring for its inputs and outputs).
    n_features
        Width of the feature rows.
    """

    name: ClassVar[str] = "onnx"

    def __init__(self, backend: Backend, *, n_features: int) -> None:
        self._backend: Backend | None = backend
        self.n_features = n_features
        self._has_residual = "residual" in backend.output_names

    @classmethod
    def from_spec(cls, bundle: Bundle, spec: DetectorSpec, serving: Serving) -> Self:
        """Load the detector's graph from ``bundle`` through the serving backends."""
        from otelai.models.bundle import BundleError

        if spec.file is None:
            raise BundleError(f"bundle {bundle.path}: detector {spec.name!r} names no model file")
        n_features = int(spec.params.get("n_features", 0))
        if n_features <= 0:
            raise BundleError(f"bundle {bundle.path}: detector {spec.name!r} has no params.n_features")
        return cls.from_model(
            bundle.file(spec.file),
            n_features=n_features,
            serving=serving,
            **cls._options(spec.params),
        )

    @classmethod
    def _options(cls, params: dict[str, object]) -> dict[str, object]:
        """Extra constructor arguments a subclass reads from ``DetectorSpec.params``."""
        return {}

    @classmethod
    def from_model(
        cls, model: Path | bytes, *, n_features: int, serving: Serving | None = None, **options: object
    ) -> Self:
        """The detector over the graph ``model`` (a path or the serialised bytes)."""
        serving = serving or Serving()
        backend = load_backend(
            serving.backend_order,
            model,
            options=serving.backend_options,
            on_fallback=serving.on_fallback,
        )
        return cls(backend, n_features=n_features, **options)

    @property
    def ready(self) -> bool:
        return self._backend is not None

    @property
    def backend_name(self) -> str | None:
        backend = self._backend
        return backend.name if backend is not None else None

    def learn_many(self, features: FloatArray) -> None:
        """Nothing: the model was trained offline (retrain with ``otelai train``)."""

    def _run(self, features: FloatArray) -> dict[str, FloatArray] | None:
        backend = self._backend
        if backend is None or not len(features):
            return None
        return backend.run({"x": np.ascontiguousarray(features, dtype=np.float32)})

    def score_many(self, features: FloatArray) -> FloatArray:
        out = self._run(features)
        if out is None:
            return np.zeros(len(features), dtype=np.float32)
        return out["score"].reshape(-1)

    def explain_many(self, features: FloatArray, top: int = 3) -> IntArray:
        return self.score_explain_many(features, top)[1]

    def score_explain_many(self, features: FloatArray, top: int = 3) -> tuple[FloatArray, IntArray]:
        out = self._run(features)
        if out is None:
            return np.zeros(len(features), dtype=np.float32), super().explain_many(features, top)
        score = out["score"].reshape(-1)
        if self._has_residual:
            return score, top_features(out["residual"], top)
        return score, self._explain(features, top)

    def _explain(self, features: FloatArray, top: int) -> IntArray:
        """Top features of a graph without a ``residual`` output (none by default)."""
        return super().explain_many(features, top)

    def close(self) -> None:
        backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
