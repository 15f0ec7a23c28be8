"""A linear autoencoder: reconstruction error outside the principal subspace of normal traffic.

Shyu, Chen, Sarinnapakorn & Chang, "A Novel Anomaly Detection Scheme Based on Principal
Component Classifier" (ICDM Foundations of Data Mining, 2003); the residual-subspace (SPE, or
Q-statistic) form of Jackson & Mudholkar (1979). Rows are standardised with statistics of a
reservoir of recent rows, projected onto the components that explain ``variance`` of it, and
scored by the squared norm of what the projection misses.

The fitted model is an ONNX graph run by an inference backend (``otelai.backends``), so the
same scorer runs on ONNX Runtime, OpenVINO or a GPU backend. Fitting happens in a background
thread on a copy of the reservoir; the new backend replaces the old one atomically (hot swap).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from otelai.backends.base import Backend
from otelai.backends.select import FallbackCallback, load_backend
from otelai.detectors.base import Detector, FloatArray, IntArray, top_features

log = logging.getLogger("otelai.detectors")

IR_VERSION = 10  # newer onnx writes IR versions some runtimes refuse
OPSET = 17
_MIN_SCALE = 1e-3  # floor on a feature's spread: a constant feature must not explode z-scores


def residual_model(mean: FloatArray, scale: FloatArray, components: FloatArray) -> bytes:
    """ONNX graph: ``r = ((x - mean) / scale) (I - P P^T)``; outputs ``score = sum(r^2)`` and ``r^2``."""
    from onnx import TensorProto, helper, numpy_helper

    width = len(mean)
    projector = np.eye(width, dtype=np.float64) - components.T.astype(np.float64) @ components
    initializers = [
        numpy_helper.from_array(mean.astype(np.float32), "mean"),
        numpy_helper.from_array((1.0 / scale).astype(np.float32), "inv_scale"),
        numpy_helper.from_array(projector.astype(np.float32), "projector"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis"),
    ]
    nodes = [
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Mul", ["centred", "inv_scale"], ["z"]),
        helper.make_node("MatMul", ["z", "projector"], ["r"]),
        helper.make_node("Mul", ["r", "r"], ["residual"]),
        helper.make_node("ReduceSum", ["residual", "axis"], ["score"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "otelai_pca_residual",
        inputs=[helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        outputs=[
            helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("residual", TensorProto.FLOAT, ["batch", width]),
        ],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="otelai")
    model.ir_version = IR_VERSION
    data: bytes = model.SerializeToString()
    return data


def principal_components(rows: FloatArray, variance: float, max_components: int) -> tuple[FloatArray, ...]:
    """Mean, scale and the top principal directions (rows of the last array) of ``rows``."""
    data = rows.astype(np.float64)
    mean = data.mean(axis=0)
    scale = np.maximum(data.std(axis=0), _MIN_SCALE)
    z = (data - mean) / scale
    _, singular, vt = np.linalg.svd(z, full_matrices=False)
    energy = singular**2
    total = energy.sum()
    k = 0 if total <= 0 else int(np.searchsorted(np.cumsum(energy) / total, variance) + 1)
    k = min(k, max_components, vt.shape[0] - 1)
    return mean.astype(np.float32), scale.astype(np.float32), vt[:k].astype(np.float32)


class PcaDetector(Detector):
    """Principal-subspace residual detector, fitted online on recent traffic.

    Parameters
    ----------
    n_features
        Width of the feature rows.
    variance
        Share of variance the kept components explain.
    max_components
        Upper bound on kept components (default: half the width).
    min_samples
        Rows to see before the first fit; scores are 0 until then (``ready`` is False).
    reservoir_size
        Rows kept (uniform reservoir sample, Vitter's algorithm R) to fit on.
    refit_every
        Rows learned between refits, so the model follows the traffic.
    backend_order, backend_options, on_fallback
        Passed to `otelai.backends.select.load_backend`.
    seed
        Seeds the reservoir sampling.
    """

    name: ClassVar[str] = "pca"

    def __init__(
        self,
        *,
        n_features: int,
        variance: float = 0.95,
        max_components: int | None = None,
        min_samples: int = 1024,
        reservoir_size: int = 8192,
        refit_every: int = 100_000,
        backend_order: Sequence[str] = ("onnxruntime",),
        backend_options: Mapping[str, Mapping[str, Any]] | None = None,
        on_fallback: FallbackCallback | None = None,
        seed: int = 0,
    ) -> None:
        self.n_features = n_features
        self.variance = variance
        self.max_components = max_components or max(1, n_features // 2)
        self.min_samples = min_samples
        self.reservoir_size = reservoir_size
        self.refit_every = refit_every
        self.backend_order = tuple(backend_order)
        self.backend_options = backend_options
        self.on_fallback = on_fallback
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._reservoir = np.zeros((reservoir_size, n_features), dtype=np.float32)
        self._seen = 0
        self._since_fit = 0
        self._backend: Backend | None = None
        self._fitting: threading.Thread | None = None
        self._lock = threading.Lock()
        self.fits = 0

    @property
    def ready(self) -> bool:
        return self._backend is not None

    @property
    def backend_name(self) -> str | None:
        backend = self._backend
        return backend.name if backend is not None else None

    def learn_many(self, features: FloatArray) -> None:
        rows = np.asarray(features, dtype=np.float32)
        self._sample(rows)
        self._seen += len(rows)
        self._since_fit += len(rows)
        due = self._backend is None and self._seen >= self.min_samples
        due = due or (self._backend is not None and self._since_fit >= self.refit_every)
        if due and (self._fitting is None or not self._fitting.is_alive()):
            self._since_fit = 0
            sample = self._reservoir[: min(self._seen, self.reservoir_size)].copy()
            self._fitting = threading.Thread(
                target=self._fit, args=(sample,), name="otelai-pca-fit", daemon=True
            )
            self._fitting.start()

    def _sample(self, rows: FloatArray) -> None:
        start = self._seen
        fill = max(0, min(self.reservoir_size - start, len(rows)))
        if fill:
            self._reservoir[start : start + fill] = rows[:fill]
        rest = rows[fill:]
        if not len(rest):
            return
        # Algorithm R, vectorised: row i (global index t) replaces slot j ~ U[0, t] if j < size.
        positions = start + fill + np.arange(len(rest))
        slots = (self._rng.random(len(rest)) * (positions + 1)).astype(np.int64)
        keep = slots < self.reservoir_size
        self._reservoir[slots[keep]] = rest[keep]

    def _fit(self, sample: FloatArray) -> None:
        try:
            mean, scale, components = principal_components(sample, self.variance, self.max_components)
            model = residual_model(mean, scale, components)
            backend = load_backend(
                self.backend_order, model, options=self.backend_options, on_fallback=self.on_fallback
            )
        except Exception:  # keep scoring with the model we have
            log.exception("PCA detector fit failed")
            return
        with self._lock:
            old, self._backend = self._backend, backend
            self.fits += 1
        log.info(
            "PCA detector fitted",
            extra={"rows": len(sample), "components": len(components), "backend": backend.name},
        )
        if old is not None:
            old.close()

    def wait_fitted(self, timeout: float = 30.0) -> bool:
        """Wait for a fit in progress (tests, start-up); True when a model is loaded."""
        thread = self._fitting
        if thread is not None:
            thread.join(timeout)
        return self.ready

    def _run(self, features: FloatArray) -> dict[str, FloatArray] | None:
        with self._lock:
            backend = self._backend
        if backend is None or not len(features):
            return None
        return backend.run({"x": np.ascontiguousarray(features, dtype=np.float32)})

    def score_many(self, features: FloatArray) -> FloatArray:
        out = self._run(features)
        if out is None:
            return np.zeros(len(features), dtype=np.float32)
        return out["score"]

    def explain_many(self, features: FloatArray, top: int = 3) -> IntArray:
        return self.score_explain_many(features, top)[1]

    def score_explain_many(self, features: FloatArray, top: int = 3) -> tuple[FloatArray, IntArray]:
        out = self._run(features)
        if out is None:
            return np.zeros(len(features), dtype=np.float32), super().explain_many(features, top)
        return out["score"], top_features(out["residual"], top)

    def close(self) -> None:
        with self._lock:
            backend, self._backend = self._backend, None
        if backend is not None:
            backend.close()
