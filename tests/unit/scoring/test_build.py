import numpy as np
from prometheus_client import CollectorRegistry

from otelai.config import load_config
from otelai.pipeline import Pipeline
from otelai.scoring.build import Scoring
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics


async def test_model_info_names_the_backend_in_use() -> None:
    # No bundle: the version is the configured one (a loaded bundle names its own).
    config = load_config(
        text="scoring: {signals: [traces], pca: {min_samples: 64}, model_version: v9, model: {enabled: false}}"
    )
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    scoring = Scoring(config, Pipeline([], metrics), metrics)
    assert registry.get_sample_value("otelai_model_info", {"version": "v9", "backend": "none"}) == 1
    processor = scoring.stages[Signal.TRACES].processor
    pca = processor.scorer.detectors[1]  # type: ignore[attr-defined]
    pca.learn_many(np.random.default_rng(0).standard_normal((100, pca.n_features)).astype(np.float32))
    assert pca.wait_fitted()
    scoring._refresh_model_info()
    assert registry.get_sample_value("otelai_model_info", {"version": "v9", "backend": "onnxruntime"}) == 1
    assert registry.get_sample_value("otelai_model_info", {"version": "v9", "backend": "none"}) is None
    await scoring.start()
    await scoring.stop()


async def test_a_worker_thread_scores_and_stops_cleanly() -> None:
    config = load_config(text="scoring: {signals: [traces, logs], model: {enabled: false}}")
    metrics = Metrics(CollectorRegistry())
    scoring = Scoring(config, Pipeline([], metrics), metrics, worker_thread=True)
    await scoring.start()
    assert await scoring.drain(5.0)  # the ticks ran on the thread
    await scoring.stop()
