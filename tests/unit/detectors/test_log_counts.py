import numpy as np
import pytest

from otelai.backends.select import load_backend
from otelai.detectors.log_counts import SessionCountDetector, count_features, fit_count_model
from otelai.detectors.pca import principal_components

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _counts(rng: np.random.Generator, n: int) -> np.ndarray:
    replicas = rng.integers(2, 4, n)
    counts = np.zeros((n, 6), dtype=np.float32)
    counts[:, 0] = 1
    counts[:, 1] = replicas
    counts[:, 2] = replicas
    counts[:, 3] = replicas
    counts[:, 4] = rng.integers(0, 2, n)
    return counts


def test_onnx_residual_equals_numpy_and_flags_missing_events() -> None:
    rng = np.random.default_rng(2)
    train = _counts(rng, 400)
    detector = SessionCountDetector(load_backend(["onnxruntime"], fit_count_model(train)), width=6)
    test = _counts(rng, 50)
    odd = test[:5].copy()
    odd[:, 2] = 0  # a replica never acknowledged
    odd[:, 5] = 1  # and a template normal sessions never have
    mean, scale, components = principal_components(count_features(train), 0.95, 3)
    z = (count_features(test) - mean) / scale
    residual = z - z @ components.T @ components
    np.testing.assert_allclose(detector.score_many(test), (residual**2).sum(axis=1), rtol=1e-3, atol=1e-3)
    scores, reasons = detector.score_explain_many(odd, top=1)
    assert scores.min() > 10 * detector.score_many(test).max()
    assert set(reasons[:, 0].tolist()) <= {2, 5}
    detector.close()
