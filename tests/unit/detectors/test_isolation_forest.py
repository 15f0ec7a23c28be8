from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from otelai.detectors.isolation_forest import IsolationForestDetector
from otelai.detectors.registry import Serving
from otelai.features.schema import FeatureSchema
from otelai.models.bundle import DetectorSpec, Manifest, SchemaSpec, SignalModel, save_bundle

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")
pytest.importorskip("onnxruntime")

from otelai.models.training.isolation_forest import (
    ForestSettings,
    TrainedForest,
    train_isolation_forest,
)

WIDTH = 6


def _normal(rng: np.random.Generator, n: int) -> np.ndarray:
    return (rng.standard_normal((n, WIDTH)) * np.arange(1, WIDTH + 1)).astype(np.float32)


@pytest.fixture(scope="module")
def trained() -> TrainedForest:
    return train_isolation_forest(
        _normal(np.random.default_rng(0), 2000), settings=ForestSettings(n_estimators=20), seed=3
    )


def _detector(trained: TrainedForest) -> IsolationForestDetector:
    params = trained.params
    return IsolationForestDetector.from_model(
        trained.onnx, n_features=WIDTH, mean=params["mean"], scale=params["scale"]
    )


def test_onnx_scores_equal_scikit_learn_scores(trained: TrainedForest) -> None:
    rows = _normal(np.random.default_rng(1), 500)
    rows[:20] *= 5
    detector = _detector(trained)
    scores = detector.score_many(rows)
    assert scores.shape == (500,)
    np.testing.assert_allclose(scores, trained.score(rows), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(scores, -trained.model.score_samples(rows), rtol=1e-4, atol=1e-5)
    detector.close()


def test_injected_anomaly_scores_above_normal_and_names_its_feature(trained: TrainedForest) -> None:
    rng = np.random.default_rng(2)
    normal = _normal(rng, 500)
    odd = _normal(rng, 20)
    odd[:, 2] = 60.0  # far outside the training range: 20 training sds in feature 2,
    odd[:, 4] = 50.0  # 10 in feature 4
    detector = _detector(trained)
    odd_scores, reasons = detector.score_explain_many(odd, top=2)
    assert np.median(odd_scores) > np.quantile(detector.score_many(normal), 0.99)
    assert np.all(reasons[:, 0] == 2)
    detector.close()


def test_from_spec_and_explanations_without_statistics(tmp_path: Path, trained: TrainedForest) -> None:
    (tmp_path / "forest.onnx").write_bytes(trained.onnx)
    spec = DetectorSpec(name="if", kind="isolation_forest", file="forest.onnx", params=trained.params)
    schema = FeatureSchema(names=tuple(f"f{i}" for i in range(WIDTH)), version="t-1")
    manifest = Manifest(
        name="t",
        version="1",
        signals={"traces": SignalModel(feature_schema=SchemaSpec.of("t", schema), detectors=[spec])},
    )
    bundle = save_bundle(tmp_path, manifest)
    rows = _normal(np.random.default_rng(3), 10)
    detector = IsolationForestDetector.from_spec(bundle, spec, Serving())
    np.testing.assert_allclose(detector.score_many(rows), trained.score(rows), rtol=1e-4, atol=1e-5)
    detector.close()
    bare = IsolationForestDetector.from_model(trained.onnx, n_features=WIDTH)
    assert np.all(bare.score_explain_many(rows, top=2)[1] == -1)
    bare.close()
