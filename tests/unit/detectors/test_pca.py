import numpy as np
import pytest

from otelai.detectors.pca import PcaDetector, principal_components

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")


def _normal(rng: np.random.Generator, n: int, width: int = 8) -> np.ndarray:
    # two latent factors spread over eight features, plus a little noise
    latent = rng.standard_normal((n, 2))
    mixing = np.linspace(0.5, 2.0, 2 * width).reshape(2, width)
    return (latent @ mixing + 0.05 * rng.standard_normal((n, width)) + 3.0).astype(np.float32)


def _fitted(width: int = 8) -> tuple[PcaDetector, np.random.Generator]:
    rng = np.random.default_rng(1)
    detector = PcaDetector(n_features=width, min_samples=500, reservoir_size=1000, seed=3)
    assert not detector.ready
    assert np.all(detector.score_many(_normal(rng, 5, width)) == 0)
    detector.learn_many(_normal(rng, 600, width))
    assert detector.wait_fitted()
    return detector, rng


def test_off_subspace_rows_score_high_and_name_the_feature() -> None:
    detector, rng = _fitted()
    normal = _normal(rng, 200)
    odd = normal[:20].copy()
    odd[:, 5] += 3.0  # breaks the correlation structure in one feature
    normal_scores = detector.score_many(normal)
    odd_scores, reasons = detector.score_explain_many(odd, top=2)
    assert np.median(odd_scores) > 5 * np.quantile(normal_scores, 0.99)
    assert np.all(reasons[:, 0] == 5)
    detector.close()


def test_backend_matches_numpy_reference() -> None:
    detector, rng = _fitted()
    rows = _normal(rng, 64)
    sample = detector._reservoir[: min(detector._seen, detector.reservoir_size)]
    mean, scale, components = principal_components(sample, detector.variance, detector.max_components)
    z = (rows.astype(np.float64) - mean) / scale
    residual = z - (z @ components.T.astype(np.float64)) @ components
    expected = (residual**2).sum(axis=1)
    np.testing.assert_allclose(detector.score_many(rows), expected, rtol=1e-3, atol=1e-4)
    assert detector.backend_name == "onnxruntime"
    detector.close()


def test_reservoir_is_uniform_and_seeded() -> None:
    a = PcaDetector(n_features=1, min_samples=10**9, reservoir_size=1000, seed=7)
    b = PcaDetector(n_features=1, min_samples=10**9, reservoir_size=1000, seed=7)
    stream = np.arange(100_000, dtype=np.float32).reshape(-1, 1)
    for chunk in np.array_split(stream, 37):
        a.learn_many(chunk)
        b.learn_many(chunk)
    np.testing.assert_array_equal(a._reservoir, b._reservoir)
    # a uniform sample of 0..99999 has mean near 50000 (sd of the mean about 900)
    assert abs(float(a._reservoir.mean()) - 50_000) < 4_000


def test_refits_follow_the_traffic() -> None:
    detector = PcaDetector(n_features=8, min_samples=200, reservoir_size=400, refit_every=400, seed=0)
    rng = np.random.default_rng(2)
    detector.learn_many(_normal(rng, 300))
    detector.wait_fitted()
    detector.learn_many(_normal(rng, 500))
    detector.wait_fitted()
    assert detector.fits == 2
    detector.close()
    assert not detector.ready
