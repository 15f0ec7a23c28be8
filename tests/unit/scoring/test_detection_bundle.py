"""The scorer built from a model bundle: its trained detectors, calibrated from the first batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from otelai.config import Scoring
from otelai.decision.calibration import EcdfCalibrator
from otelai.features.schema import FeatureSchema
from otelai.models.bundle import DetectorSpec, Manifest, SchemaSpec, SignalModel, save_bundle
from otelai.scoring.detection import default_scorer

pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")

from otelai.models.training.calibration import calibration_of
from otelai.models.training.isolation_forest import ForestSettings, train_isolation_forest

WIDTH = 4
SCHEMA = FeatureSchema(names=("a", "b", "c", "d"), version="t-1")


def _normal(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.standard_normal((n, WIDTH)).astype(np.float32)


def test_calibrator_primed_from_quantiles_is_warm_and_matches_them() -> None:
    calibrator = EcdfCalibrator(window=1000, sample_rate=0.05, min_samples=500, seed=0)
    calibrator.prime(np.linspace(0.0, 10.0, 101))
    assert calibrator.warm
    np.testing.assert_allclose(
        calibrator.transform([0.0, 5.0, 10.0, 20.0]), [0.0005, 0.5, 0.9995, 1.0], atol=2e-3
    )


def test_scorer_from_bundle_scores_outliers_from_its_first_batch(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    trained = train_isolation_forest(_normal(rng, 2000), settings=ForestSettings(n_estimators=30), seed=1)
    (tmp_path / "forest.onnx").write_bytes(trained.onnx)
    held_out = trained.score(_normal(rng, 2000))
    spec = DetectorSpec(
        name="forest",
        kind="isolation_forest",
        file="forest.onnx",
        params=trained.params,
        calibration=calibration_of(held_out),
    )
    manifest = Manifest(
        name="t",
        version="7",
        signals={"traces": SignalModel(feature_schema=SchemaSpec.of("t", SCHEMA), detectors=[spec])},
    )
    bundle = save_bundle(tmp_path, manifest)
    scorer = default_scorer(SCHEMA, ["a"], Scoring(), bundle=bundle, signal="traces")
    try:
        assert [d.name for d in scorer.detectors][1:] == ["isolation_forest"]
        assert scorer.warm  # no warm-up: the bundle's quantiles calibrate it
        rows = _normal(rng, 200)
        rows[:5] = 8.0  # far outside everything the forest saw
        scored = scorer.score(rows)
        assert scored.score[:5].min() > 0.99
        assert np.median(scored.score[5:]) < 0.9
        # Without the signal in the bundle, the online detectors are used and nothing is warm yet.
        online = default_scorer(SCHEMA, ["a"], Scoring(), bundle=bundle, signal="logs")
        assert not online.warm
        online.close()
    finally:
        scorer.close()


def test_trace_processor_starts_from_a_traces_bundle(tmp_path: Path) -> None:
    from prometheus_client import CollectorRegistry

    from otelai.config import Selection, load_config
    from otelai.features.spans import SPAN_SCHEMA
    from otelai.models.bundle import Thresholds
    from otelai.scoring.traces import TraceProcessor
    from otelai.telemetry.metrics import Metrics

    rng = np.random.default_rng(0)
    width = SPAN_SCHEMA.width
    rows = rng.standard_normal((1000, width)).astype(np.float32)
    trained = train_isolation_forest(rows, settings=ForestSettings(n_estimators=10), seed=1)
    (tmp_path / "forest.onnx").write_bytes(trained.onnx)
    spec = DetectorSpec(
        name="forest",
        kind="isolation_forest",
        file="forest.onnx",
        params=trained.params,
        calibration=calibration_of(trained.score(rows)),
    )
    manifest = Manifest(
        name="t",
        version="traces-7",
        signals={
            "traces": SignalModel(
                feature_schema=SchemaSpec.of("spans", SPAN_SCHEMA),
                detectors=[spec],
                thresholds=Thresholds(anomaly=0.99, critical=0.9999),
            )
        },
    )
    bundle = save_bundle(tmp_path, manifest)
    config = load_config(None)
    registry = CollectorRegistry()
    processor = TraceProcessor(config, Metrics(registry), bundle=bundle)
    try:
        assert processor.scorer.warm
        assert registry.get_sample_value("otelai_calibration_warm", {"signal": "traces"}) == 1
        assert [d.name for d in processor.scorer.detectors][-1] == "isolation_forest"
        assert (processor._anomaly, processor._critical, processor._model_version) == (
            0.99,
            0.9999,
            "traces-7",
        )
    finally:
        processor.close()
    # A threshold set in the configuration wins over the bundle's.
    selection = Selection.model_validate({"anomaly_threshold": 0.98})
    explicit = config.model_copy(update={"selection": selection})
    processor = TraceProcessor(explicit, Metrics(CollectorRegistry()), bundle=bundle)
    try:
        assert (processor._anomaly, processor._critical) == (0.98, 0.9999)
    finally:
        processor.close()
