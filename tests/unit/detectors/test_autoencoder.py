from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from otelai.detectors.autoencoder import AutoencoderDetector
from otelai.detectors.registry import Serving
from otelai.features.schema import FeatureSchema
from otelai.models.bundle import DetectorSpec, Manifest, SchemaSpec, SignalModel, save_bundle
from otelai.models.training.calibration import calibration_of

pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from otelai.models.training.autoencoder import AutoencoderSettings, TrainedAutoencoder, train_autoencoder

WIDTH = 8


def _normal(rng: np.random.Generator, n: int) -> np.ndarray:
    # two latent factors spread over eight features, plus a little noise
    latent = rng.standard_normal((n, 2))
    mixing = np.linspace(0.5, 2.0, 2 * WIDTH).reshape(2, WIDTH)
    return (latent @ mixing + 0.05 * rng.standard_normal((n, WIDTH)) + 3.0).astype(np.float32)


@pytest.fixture(scope="module")
def trained() -> TrainedAutoencoder:
    rows = _normal(np.random.default_rng(0), 1500)
    return train_autoencoder(
        rows, settings=AutoencoderSettings(hidden=16, bottleneck=2, epochs=40, learning_rate=1e-2), seed=1
    )


def test_onnx_scores_equal_pytorch_scores(trained: TrainedAutoencoder) -> None:
    rows = _normal(np.random.default_rng(2), 300)
    rows[:10, 3] += 4.0
    detector = AutoencoderDetector.from_model(trained.onnx, n_features=WIDTH)
    np.testing.assert_allclose(detector.score_many(rows), trained.score(rows), rtol=1e-4, atol=1e-5)
    assert detector.backend_name == "onnxruntime"
    detector.close()


def test_injected_anomaly_scores_above_normal_and_names_its_feature(trained: TrainedAutoencoder) -> None:
    rng = np.random.default_rng(3)
    normal = _normal(rng, 400)
    odd = _normal(rng, 20)
    odd[:, 5] += 3.0  # breaks the correlation structure in one feature
    detector = AutoencoderDetector.from_model(trained.onnx, n_features=WIDTH)
    normal_scores = detector.score_many(normal)
    odd_scores, reasons = detector.score_explain_many(odd, top=2)
    assert np.median(odd_scores) > 3 * np.quantile(normal_scores, 0.99)
    assert np.mean(reasons[:, 0] == 5) >= 0.9
    assert not np.allclose(detector.score_one(odd[0]), 0.0)
    detector.close()


def test_from_spec_serves_the_bundled_graph(tmp_path: Path, trained: TrainedAutoencoder) -> None:
    (tmp_path / "ae.onnx").write_bytes(trained.onnx)
    rows = _normal(np.random.default_rng(4), 50)
    spec = DetectorSpec(
        name="ae",
        kind="autoencoder",
        file="ae.onnx",
        params=trained.params,
        calibration=calibration_of(trained.score(rows)),
    )
    schema = FeatureSchema(names=tuple(f"f{i}" for i in range(WIDTH)), version="t-1")
    manifest = Manifest(
        name="t",
        version="1",
        signals={"traces": SignalModel(feature_schema=SchemaSpec.of("t", schema), detectors=[spec])},
    )
    bundle = save_bundle(tmp_path, manifest)
    detector = AutoencoderDetector.from_spec(bundle, spec, Serving())
    assert detector.ready
    detector.learn_many(rows)  # frozen: learning changes nothing
    np.testing.assert_allclose(detector.score_many(rows), trained.score(rows), rtol=1e-4, atol=1e-5)
    assert trained.params["n_features"] == WIDTH
    assert len(spec.calibration.quantiles) > 100
    detector.close()
    assert not detector.ready
    assert np.all(detector.score_many(rows) == 0)


def test_training_is_seeded() -> None:
    rows = _normal(np.random.default_rng(5), 300)
    settings = AutoencoderSettings(hidden=8, bottleneck=2, epochs=3)
    a = train_autoencoder(rows, settings=settings, seed=7)
    b = train_autoencoder(rows, settings=settings, seed=7)
    np.testing.assert_array_equal(a.score(rows), b.score(rows))
    with pytest.raises(ValueError, match="2-D"):
        train_autoencoder(rows[0], settings=settings)
