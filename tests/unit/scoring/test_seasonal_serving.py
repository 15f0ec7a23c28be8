"""The service flags exactly the rows ``otelai evaluate`` counts as alarms: the seasonal fixture
replayed through MetricProcessor (train rows, then test rows, a few steps a request) against the
AsdTask's evaluation of the same bundle, with the seasonal detector and without it (a bundle of
autoencoder specs only, as older bundles are)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from prometheus_client import CollectorRegistry

from otelai.config import load_config
from otelai.features.metrics import MetricBatch
from otelai.models.bundle import Bundle
from otelai.models.serving import load_configured_bundle
from otelai.pipeline import Payload
from otelai.replay.batch import Batch
from otelai.replay.server_metrics import ASD, EPOCH_UNIX_NANO, layout_batches
from otelai.scoring.metrics import MetricProcessor
from otelai.scoring.resource_metrics import RowAnomaly
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from otelai.models.tasks.server_metrics import AsdTask
from otelai.models.training.seasonal import SeasonalSettings
from tests.unit.models.tasks.seasonal_fixtures import ANOMALY, DAY, TRAIN_DAYS, write_seasonal_asd
from tests.unit.models.tasks.test_server_metrics_task import SETTINGS

TRAIN_STEPS = TRAIN_DAYS * DAY


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("seasonal_serving")
    write_seasonal_asd(root / "data")
    return root / "data"


def _served_flags(bundle: Bundle, data: Path) -> set[tuple[str, int]]:
    """(host, test step) of every row the service flags, replaying train then test rows."""
    config = load_config(text=f'scoring: {{model: {{path: "{bundle.path}"}}}}')
    processor = MetricProcessor(
        config, Metrics(CollectorRegistry()), bundle=load_configured_bundle(config.scoring.model)
    )
    model = processor.resource_metrics
    assert model is not None
    found: list[RowAnomaly] = []
    score = model.score

    def recorded(payloads: Sequence[bytes], batch: MetricBatch) -> list[RowAnomaly]:
        rows = score(payloads, batch)
        found.extend(rows)
        return rows

    model.score = recorded  # type: ignore[method-assign]
    for batch in layout_batches(ASD, data, max_items=90):  # 15 steps of both servers
        assert isinstance(batch, Batch)
        processor.process([Payload(Signal.METRICS, batch.data, batch.items, 0)])
    processor.close()
    step = ASD.step_seconds * 1_000_000_000
    flags = set()
    for row in found:
        host = next(
            a.value.string_value for a in Resource.FromString(row.resource).attributes if a.key == "host.name"
        )
        flags.add((host, (row.time_ns - EPOCH_UNIX_NANO) // step - TRAIN_STEPS))
    return {(host, i) for host, i in flags if i >= 0}


def _evaluated_flags(task: AsdTask, bundle: Bundle, data: Path) -> set[tuple[str, int]]:
    evaluation = task.evaluate(bundle, data, progress=False)
    return {
        (timeline.name, int(i))
        for timeline in evaluation.timelines
        for i in np.flatnonzero(timeline.score >= 1.0)  # the shipped threshold, as evaluated
    }


@pytest.mark.parametrize("seasonal", [SeasonalSettings(), None], ids=["combined", "autoencoder_only"])
def test_the_service_flags_what_evaluation_counts(
    data: Path, tmp_path: Path, seasonal: SeasonalSettings | None
) -> None:
    task = AsdTask(settings=SETTINGS, seasonal=seasonal)
    bundle = task.train(data, tmp_path / "bundle", seed=0, progress=False)
    evaluated = _evaluated_flags(task, bundle, data)
    served = _served_flags(bundle, data)
    assert evaluated and served == evaluated
    caught = {(host, i) for host, i in evaluated if i in ANOMALY}
    if seasonal is not None:  # the combination catches the busy-at-night stretch
        assert len(caught) > 0.8 * 2 * len(ANOMALY)


def test_seasonal_history_memory_bounds_the_resources_remembered(data: Path, tmp_path: Path) -> None:
    from otelai.detectors.registry import Serving
    from otelai.scoring.resource_metrics import ResourceMetrics

    bundle = AsdTask(settings=SETTINGS, seasonal=SeasonalSettings()).train(
        data, tmp_path / "bundle", seed=0, progress=False
    )
    model = bundle.signal("metrics")
    assert model is not None
    seasonal = next(spec for spec in model.detectors if spec.kind == "seasonal_residual")
    per_resource = (
        int(seasonal.params["days"]) * int(seasonal.params["period"]) * len(model.feature_schema.columns) * 4
    )
    bounded = ResourceMetrics(
        bundle, model, Serving(), thresholds=(0.995, 0.9995), max_history_bytes=3 * per_resource + 1
    )
    assert bounded.max_resources == 3
    assert bounded.rows.max_resources == 3
    unbounded = ResourceMetrics(bundle, model, Serving(), thresholds=(0.995, 0.9995))
    assert unbounded.max_resources == min(10_000, (256 << 20) // per_resource)
    bounded.close()
    unbounded.close()
