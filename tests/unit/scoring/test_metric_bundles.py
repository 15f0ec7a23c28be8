"""MetricProcessor serving metric bundles: a tiny ASD-like multivariate bundle (companion gauges
on the injected anomalous steps' top metric, few elsewhere) and a NAB-like novelty bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from prometheus_client import CollectorRegistry

from otelai.config import Config, load_config
from otelai.decision.actions import Alert
from otelai.models.bundle import Bundle
from otelai.models.serving import load_configured_bundle
from otelai.pipeline import Payload
from otelai.replay.batch import Batch
from otelai.replay.nab import read_series, series_batches
from otelai.replay.server_metrics import ASD, EPOCH_UNIX_NANO, layout_batches
from otelai.scoring.metrics import METRIC_NAME, SCORE_METRIC, MetricProcessor
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics
from tests.unit.replay.nab_layout import write_nab

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from otelai.models.tasks.nab import NabTask
from otelai.models.tasks.server_metrics import AsdTask
from tests.unit.models.tasks.test_server_metrics_task import SETTINGS, _asd

TRAIN_STEPS, ANOMALY = 700, range(150, 170)


class Alerts:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def submit(self, alerts: list[Alert]) -> None:
        self.alerts.extend(alerts)


def _config(bundle: Path) -> Config:
    return load_config(text=f'scoring: {{model: {{path: "{bundle}"}}}}')


def _companions(out: list[Payload], n_in: int) -> list[tuple[str, str, int, float]]:
    """(host.name, otelai.metric.name, time, score) of every companion point."""
    found = []
    for payload in out[n_in:]:
        request = ExportMetricsServiceRequest.FromString(payload.data)
        for resource in request.resource_metrics:
            attrs = {a.key: a.value.string_value for a in resource.resource.attributes}
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    assert metric.name == SCORE_METRIC
                    for point in metric.gauge.data_points:
                        name = next(a.value.string_value for a in point.attributes if a.key == METRIC_NAME)
                        found.append(
                            (attrs.get("host.name", ""), name, point.time_unix_nano, point.as_double)
                        )
    return found


@pytest.fixture(scope="module")
def asd(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Bundle]:
    root = tmp_path_factory.mktemp("asd")
    _asd(root / "data")
    bundle = AsdTask(settings=SETTINGS).train(root / "data", root / "bundle", seed=1, progress=False)
    return root / "data", bundle


def test_multivariate_bundle_emits_companions_on_the_anomalous_steps(asd: tuple[Path, Bundle]) -> None:
    data, bundle = asd
    config = _config(bundle.path)
    alerts = Alerts()
    processor = MetricProcessor(
        config,
        Metrics(CollectorRegistry()),
        bundle=load_configured_bundle(config.scoring.model),
        alerter=alerts,  # type: ignore[arg-type]
    )
    assert processor.resource_metrics is not None
    found = []
    points = 0
    for batch in layout_batches(ASD, data, max_items=60):  # 6 steps of both servers a request
        assert isinstance(batch, Batch)
        payload = Payload(Signal.METRICS, batch.data, batch.items, 0)
        out = processor.process([payload])
        assert out[0] is payload  # every original request forwarded as received
        points += batch.items
        found.extend(_companions(out, 1))
    assert points == 2 * 1000 * 5
    step = ASD.step_seconds * 1_000_000_000
    test_steps = {(host, (t - EPOCH_UNIX_NANO) // step - TRAIN_STEPS) for host, name, t, _ in found if name}
    multivariate = [
        f
        for f in found
        if f[1] == "asd.metric_01" and (f[2] - EPOCH_UNIX_NANO) // step - TRAIN_STEPS in ANOMALY
    ]
    assert {host for host, *_ in multivariate} == {"omi-1", "omi-2"}
    assert all(score >= 0.995 for *_, score in multivariate)
    normal = {(h, i) for h, i in test_steps if i >= 0 and i not in ANOMALY}
    assert len(normal) < 0.05 * 2 * (300 - len(ANOMALY))
    # the part that drove the row (autoencoder or seasonal residual), then its top metric
    assert any(
        a.reason.split(": ")[0] in {"multivariate_ae", "seasonal_residual"}
        and a.reason.split(": ")[1].startswith("asd.metric_01")
        for a in alerts.alerts
    )
    processor.close()


def test_multivariate_failure_keeps_the_point_scoring(asd: tuple[Path, Bundle], caplog: Any) -> None:
    data, bundle = asd
    config = _config(bundle.path)
    processor = MetricProcessor(config, Metrics(CollectorRegistry()), bundle=bundle)
    assert processor.resource_metrics is not None

    def broken(*args: object) -> None:
        raise RuntimeError("graph broke")

    processor.resource_metrics.score = broken  # type: ignore[method-assign,assignment]
    batch = next(iter(layout_batches(ASD, data, max_items=60)))
    assert isinstance(batch, Batch)
    payload = Payload(Signal.METRICS, batch.data, batch.items, 0)
    assert processor.process([payload])[0] is payload
    assert "multivariate metric model failed" in caplog.text


def test_nab_bundle_scores_per_series_under_its_thresholds(tmp_path: Path) -> None:
    write_nab(tmp_path / "nab", rows=400, series_per_group=2)
    bundle = NabTask().train(tmp_path / "nab", tmp_path / "bundle", progress=False)
    model = bundle.signal("metrics")
    assert model is not None and 0.0 < model.thresholds.anomaly <= model.thresholds.critical <= 1.0
    config = _config(bundle.path)
    processor = MetricProcessor(
        config, Metrics(CollectorRegistry()), bundle=load_configured_bundle(config.scoring.model)
    )
    assert [d.name for d in processor.scorer.detectors] == ["surprise", "novelty"]
    series = read_series(tmp_path / "nab", "realTest/series_0.csv")
    spike = 200
    flagged = []
    for i, batch in enumerate(series_batches(series, max_points=1)):  # point by point, as NAB streams
        out = processor.process([Payload(Signal.METRICS, batch.data, batch.items, 0)])
        if len(out) > 1:
            flagged.append(i)
    assert spike in flagged
    assert len(flagged) <= 5
    processor.close()


def test_one_companion_point_per_identity_with_the_higher_score() -> None:
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from otelai.scoring.metrics import SCORE_METRIC, deduplicate_companions

    request = ExportMetricsServiceRequest()
    for scores in ((0.97, 0.5), (0.99,)):  # the per-point path, then the per-resource path
        resource = request.resource_metrics.add()
        resource.resource.attributes.add(key="host.name").value.string_value = "omi-1"
        gauge = resource.scope_metrics.add().metrics.add(name=SCORE_METRIC).gauge
        for i, score in enumerate(scores):
            point = gauge.data_points.add(time_unix_nano=1_000 + i, as_double=score)
            point.attributes.add(key="otelai.metric.name").value.string_value = "asd.metric_01"
    assert deduplicate_companions(request) == 2
    points = [
        (p.time_unix_nano, p.as_double)
        for r in request.resource_metrics
        for s in r.scope_metrics
        for m in s.metrics
        for p in m.gauge.data_points
    ]
    assert sorted(points) == [(1_000, 0.99), (1_001, 0.5)]
    assert len(request.resource_metrics) == 1  # the emptied entry is gone


@pytest.mark.parametrize(
    ("attribute", "calibrations"), [("host.name", {"omi-1", "omi-2"}), ("service.name", {"*"})]
)
def test_the_configured_resource_attribute_picks_the_calibration(
    asd: tuple[Path, Bundle], attribute: str, calibrations: set[str]
) -> None:
    data, bundle = asd
    config = load_config(
        text=f'scoring: {{model: {{path: "{bundle.path}", resource_attribute: "{attribute}", max_resources: 7}}}}'
    )
    processor = MetricProcessor(
        config, Metrics(CollectorRegistry()), bundle=load_configured_bundle(config.scoring.model)
    )
    model = processor.resource_metrics
    assert model is not None and model.max_resources == 7
    for batch, _ in zip(layout_batches(ASD, data, max_items=60), range(3), strict=False):
        assert isinstance(batch, Batch)
        processor.process([Payload(Signal.METRICS, batch.data, batch.items, 0)])
    # the replay names each server in host.name and the data set ("asd") in service.name: no
    # training server is called "asd", so by service.name every resource takes the pooled one
    assert {served.scorer.autoencoder.resource for served in model._served.values()} == calibrations
    processor.close()
