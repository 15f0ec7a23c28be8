"""Multivariate metric detector: reconstruction error of a window of all of a resource's metrics.

Audibert, Michiardi, Guyard, Marti & Zuluaga, "USAD: UnSupervised Anomaly Detection on
Multivariate Time Series" (KDD 2020): a dense autoencoder over a flattened sliding window of
every metric of one server, trained on normal data, scores a time step by how badly it
reconstructs the window that ends there. Here the score is the reconstruction error of the
window's last step, metric by metric, each weighted by the inverse of that metric's error on
held-out normal data of the same server, so a metric that is noisy by nature does not drown
the others (and the weighted errors name the metrics that drove a score).

The autoencoder, with the min-max normalisation in front of it, is one ONNX graph served by an
inference backend (``otelai.backends``); it outputs the per-metric squared error ``error``
``(batch, metrics)``. The per-resource weights and threshold are plain numbers in the bundle.

Rows given to :meth:`MultivariateAutoencoder.score_many` are consecutive time steps of one
resource (a row = the resource's metrics at one step, in the columns of the bundle's feature
schema). The detector keeps the last ``window - 1`` rows it scored, so consecutive batches
continue one stream; before a full window has been seen, the first row stands in for the
missing earlier ones, as in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar, Self

import numpy as np

from otelai.backends.base import Backend
from otelai.backends.select import load_backend
from otelai.detectors.base import Detector, FloatArray, IntArray, top_features

if TYPE_CHECKING:
    from otelai.detectors.registry import Serving
    from otelai.models.bundle import Bundle, DetectorSpec

KIND = "multivariate_ae"
ANY_RESOURCE = "*"  # the spec that serves resources the bundle has no calibration for


def sliding_windows(context: FloatArray, rows: FloatArray, window: int) -> FloatArray:
    """Flattened windows ``(len(rows), window * width)``: row ``i``'s window ends at row ``i``.

    Parameters
    ----------
    context
        Rows that came just before ``rows`` (at most the last ``window - 1`` are used).
    rows
        The new rows, ``(n, width)``.
    window
        Steps per window.

    Where fewer than ``window - 1`` earlier rows exist, the earliest known row is repeated.
    """
    rows = np.asarray(rows, dtype=np.float32)
    n, width = rows.shape
    if n == 0:
        return np.zeros((0, window * width), dtype=np.float32)
    stream = np.concatenate([np.asarray(context, dtype=np.float32)[-(window - 1) :][: window - 1], rows])
    missing = window - 1 - (len(stream) - n)
    if missing > 0:
        stream = np.concatenate([np.repeat(stream[:1], missing, axis=0), stream])
    # (n, width, window) view; transpose to time-major before flattening
    view = np.lib.stride_tricks.sliding_window_view(stream, window, axis=0)
    return np.ascontiguousarray(view.transpose(0, 2, 1)).reshape(n, window * width)


class MultivariateAutoencoder(Detector):
    """Windowed autoencoder over one resource's metrics, served through a backend.

    Parameters
    ----------
    backend
        Runs the ONNX graph: input ``x`` ``(batch, window * n_features)``, output ``error``
        ``(batch, n_features)``.
    window
        Steps per window.
    n_features
        Metrics per row.
    weights
        Per metric, the weight of its squared error in the score (from held-out normal data).
    threshold
        Raw score at which a step is anomalous (from held-out normal data); informational.
    resource
        The resource this calibration belongs to (``*``: any).
    """

    name: ClassVar[str] = KIND

    def __init__(
        self,
        *,
        backend: Backend,
        window: int,
        n_features: int,
        weights: Sequence[float] | FloatArray,
        threshold: float = 1.0,
        resource: str = ANY_RESOURCE,
    ) -> None:
        if window < 1:
            raise ValueError(f"window must be at least 1, got {window}")
        self.weights = np.asarray(weights, dtype=np.float32)
        if self.weights.shape != (n_features,):
            raise ValueError(f"weights has shape {self.weights.shape}, want ({n_features},)")
        self.window = window
        self.n_features = n_features
        self.threshold = threshold
        self.resource = resource
        self._backend = backend
        self._context = np.zeros((0, n_features), dtype=np.float32)

    @classmethod
    def from_spec(cls, bundle: Bundle, spec: DetectorSpec, serving: Serving) -> Self:
        """Build from a bundle entry: ``file`` is the graph, ``params`` the rest."""
        from otelai.models.bundle import BundleError

        params = spec.params
        try:
            window, width = int(params["window"]), int(params["n_features"])
            weights = [float(w) for w in params["weights"]]
            threshold = float(params.get("threshold", 1.0))
            resource = str(params.get("resource", ANY_RESOURCE))
        except (KeyError, TypeError, ValueError) as exc:
            raise BundleError(f"bundle {bundle.path}: detector {spec.name!r}: bad params: {exc}") from exc
        if spec.file is None:
            raise BundleError(f"bundle {bundle.path}: detector {spec.name!r} names no model file")
        backend = load_backend(
            serving.backend_order,
            bundle.file(spec.file),
            options=serving.backend_options,
            on_fallback=serving.on_fallback,
        )
        try:
            return cls(
                backend=backend,
                window=window,
                n_features=width,
                weights=weights,
                threshold=threshold,
                resource=resource,
            )
        except ValueError as exc:
            backend.close()
            raise BundleError(f"bundle {bundle.path}: detector {spec.name!r}: {exc}") from exc

    @property
    def backend_name(self) -> str:
        return self._backend.name

    def reset(self) -> None:
        """Forget the rows seen: the next row starts a new stream."""
        self._context = self._context[:0]

    def _errors(self, features: FloatArray, *, advance: bool) -> FloatArray:
        rows = np.asarray(features, dtype=np.float32).reshape(-1, self.n_features)
        if not len(rows):
            return np.zeros((0, self.n_features), dtype=np.float32)
        windows = sliding_windows(self._context, rows, self.window)
        error = self._backend.run({"x": windows})["error"]
        if advance and self.window > 1:
            self._context = np.concatenate([self._context, rows])[-(self.window - 1) :].copy()
        return np.asarray(error, dtype=np.float32)

    def errors_many(self, features: FloatArray) -> FloatArray:
        """Per-metric squared reconstruction errors ``(n, n_features)``; advances the stream."""
        return self._errors(features, advance=True)

    def contributions_many(self, features: FloatArray) -> FloatArray:
        """Weighted per-metric errors ``(n, n_features)`` (a row's score is their sum); advances."""
        return self._errors(features, advance=True) * self.weights

    def learn_many(self, features: FloatArray) -> None:
        """Nothing to learn online: the autoencoder is trained offline (``otelai train``)."""

    def score_many(self, features: FloatArray) -> FloatArray:
        return self.score_explain_many(features, 0)[0]

    def explain_many(self, features: FloatArray, top: int = 3) -> IntArray:
        """Top metrics of each row's score, without advancing the stream."""
        contribution = self._errors(features, advance=False) * self.weights
        return top_features(contribution, top)

    def score_explain_many(self, features: FloatArray, top: int = 3) -> tuple[FloatArray, IntArray]:
        """Scores (weighted sums of per-metric errors) and their top metrics; advances the stream."""
        contribution = self._errors(features, advance=True) * self.weights
        return contribution.sum(axis=1, dtype=np.float32), top_features(contribution, top)

    def close(self) -> None:
        self._backend.close()
