import numpy as np
import numpy.typing as npt
import pytest

from otelai.backends.select import load_backend
from otelai.detectors.base import top_features
from otelai.detectors.multivariate import MultivariateAutoencoder, sliding_windows

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from otelai.models.training.multivariate import (  # noqa: E402
    WindowAutoencoderSettings,
    calibrate_resource,
    torch_errors,
    train_window_autoencoder,
)

WIDTH = 6
SETTINGS = WindowAutoencoderSettings(window=4, hidden=16, latent=2, epochs=8, batch_size=64)


def _series(rng: np.random.Generator, n: int, phase: float = 0.0) -> np.ndarray:
    # six metrics driven by one daily-like cycle: they move together
    t = 2 * np.pi * (np.arange(n) + phase) / 48
    sin, cos = np.sin(t), np.cos(t)
    rows = 0.5 + np.stack(
        [0.4 * sin, 0.2 * cos, -0.4 * sin, 0.1 * sin + 0.1 * cos, 0.3 * cos, -0.2 * sin], axis=1
    )
    return (rows + 0.01 * rng.standard_normal(rows.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def trained() -> object:
    rng = np.random.default_rng(0)
    return train_window_autoencoder([_series(rng, 600), _series(rng, 500, 7.0)], SETTINGS, progress=False)


def _detector(trained: object, weights: npt.NDArray[np.float32] | None = None) -> MultivariateAutoencoder:
    backend = load_backend(("onnxruntime",), trained.onnx)  # type: ignore[attr-defined]
    return MultivariateAutoencoder(
        backend=backend,
        window=SETTINGS.window,
        n_features=WIDTH,
        weights=np.ones(WIDTH, dtype=np.float32) if weights is None else weights,
    )


def test_windows_continue_across_batches() -> None:
    rows = np.arange(30, dtype=np.float32).reshape(10, 3)
    whole = sliding_windows(rows[:0], rows, 4)
    assert whole.shape == (10, 12)
    np.testing.assert_array_equal(whole[5], rows[2:6].ravel())
    np.testing.assert_array_equal(whole[0], np.tile(rows[0], 4))  # first row stands in for history
    split = np.concatenate([sliding_windows(rows[:0], rows[:3], 4), sliding_windows(rows[:3], rows[3:], 4)])
    np.testing.assert_array_equal(split, whole)


def test_onnx_errors_equal_torch(trained: object) -> None:
    rows = _series(np.random.default_rng(5), 120)
    detector = _detector(trained)
    served = np.concatenate([detector.errors_many(chunk) for chunk in np.array_split(rows, 7)])
    np.testing.assert_allclose(served, torch_errors(trained, rows), rtol=1e-4, atol=1e-6)  # type: ignore[arg-type]
    detector.reset()
    scores = detector.score_many(rows)
    np.testing.assert_allclose(scores, torch_errors(trained, rows).sum(axis=1), rtol=1e-4, atol=1e-6)  # type: ignore[arg-type]
    detector.close()


def test_injected_anomaly_scores_higher_and_is_explained(trained: object) -> None:
    rng = np.random.default_rng(9)
    held_out = _detector(trained).errors_many(_series(rng, 300))
    calibration = calibrate_resource(held_out, SETTINGS)
    detector = _detector(trained, calibration.weights)
    rows = _series(rng, 200)
    rows[120:130, 1] += 0.3  # metric 1 leaves its cycle
    scores, reasons = detector.score_explain_many(rows, top=3)
    # the window fills with the anomaly over its first steps
    assert scores[123:130].min() > calibration.threshold
    assert np.median(scores[120:130]) > 2 * np.median(scores[:115])
    assert np.quantile(np.r_[scores[:115], scores[140:]], 0.95) < calibration.threshold
    assert np.mean((reasons[123:130] == 1).any(axis=1)) >= 0.8  # among the top three
    detector.close()


def test_explain_does_not_advance_the_stream(trained: object) -> None:
    rows = _series(np.random.default_rng(3), 40)
    a, b = _detector(trained), _detector(trained)
    a.explain_many(rows[:20])
    np.testing.assert_allclose(a.score_many(rows[20:]), b.score_many(rows[20:]), rtol=1e-6)
    a.close()
    b.close()


def test_top_features_and_bad_weights(trained: object) -> None:
    contribution = np.array([[0.1, 0.5, 0.2], [3.0, 0.0, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(top_features(contribution, 2), [[1, 2], [0, 2]])
    with pytest.raises(ValueError, match="weights"):
        _detector(trained, np.ones(WIDTH + 1, dtype=np.float32))
