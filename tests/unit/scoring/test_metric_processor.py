"""The metrics processor on real OTLP requests: requests forwarded byte for byte, a companion
``otelai.anomaly.score`` gauge for the anomalous point under the scored series' identity."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2
from prometheus_client import CollectorRegistry

from otelai.config import Config, load_config
from otelai.decision.actions import Alerter
from otelai.detectors.pca import PcaDetector
from otelai.pipeline import Payload
from otelai.scoring.metrics import METRIC_NAME, SCORE_METRIC, MetricProcessor
from otelai.signals import Signal, count_items
from otelai.telemetry.metrics import Metrics

S = 1_000_000_000
HOSTS = 20
SIGMA = 2.0
WARM_BATCHES = 100


def _config() -> Config:
    return load_config(
        text="""
selection: {anomaly_threshold: 0.99, critical_threshold: 0.999}
scoring:
  calibration: {window: 512, min_samples: 64, sample_rate: 1.0}
  pca: {min_samples: 256, reservoir_size: 1024, refit_every: 1000}
"""
    )


@dataclass
class Traffic:
    """Per batch: an ``api`` request (cpu gauges per host, request counters, a point with no
    recorded value) and a ``db`` request (connection gauges), ten seconds apart."""

    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(3))
    t: int = 1_700_000_000
    totals: np.ndarray = field(default_factory=lambda: np.zeros(5))

    def batch(self, jump: dict[str, float] | None = None) -> list[Payload]:
        self.t += 10
        api = ExportMetricsServiceRequest()
        resource = api.resource_metrics.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
        resource.resource.attributes.add(key="service.name", value={"string_value": "api"})
        resource.resource.attributes.add(key="host.arch", value={"string_value": "amd64"})
        scope = resource.scope_metrics.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
        scope.scope.name, scope.scope.version = "meter", "1.2"
        cpu = scope.metrics.add(name="cpu.utilization", unit="%")
        for host in range(HOSTS):
            value = 50.0 + SIGMA * self.rng.standard_normal() + (jump or {}).get(f"h{host}", 0.0)
            self._point(cpu.gauge, value, host=f"h{host}", core="0")
        silent = cpu.gauge.data_points.add(time_unix_nano=self.t * S, flags=1)  # no recorded value
        silent.attributes.add(key="host", value={"string_value": "h-down"})
        requests = scope.metrics.add(name="http.server.requests", unit="{request}")
        requests.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        requests.sum.is_monotonic = True
        self.totals += 1000 + 30 * self.rng.standard_normal(5)
        for route, total in enumerate(self.totals):
            point = self._point(requests.sum, float(total), route=f"/r{route}")
            point.start_time_unix_nano = 1_600_000_000 * S
        db = ExportMetricsServiceRequest()
        resource = db.resource_metrics.add()
        resource.resource.attributes.add(key="service.name", value={"string_value": "db"})
        connections = resource.scope_metrics.add().metrics.add(name="db.connections")
        for pool in range(5):
            self._point(connections.gauge, 20.0 + self.rng.standard_normal(), pool=f"p{pool}")
        return [
            Payload(Signal.METRICS, r.SerializeToString(), count_items(Signal.METRICS, r), request=r)
            for r in (api, db)
        ]

    def _point(self, container: Any, value: float, **attrs: str) -> Any:
        point = container.data_points.add(time_unix_nano=self.t * S, as_double=value)
        for key, text in attrs.items():
            point.attributes.add(key=key, value={"string_value": text})
        return point


def _warm(processor: MetricProcessor, traffic: Traffic, batches: int) -> None:
    pca = processor.scorer.detectors[1]
    assert isinstance(pca, PcaDetector)
    for _ in range(batches):
        processor.process(traffic.batch())
        pca.wait_fitted()  # a fit started by this batch is in place for the next: deterministic
    assert pca.ready


def _attributes(point: Any) -> dict[str, str]:
    return {a.key: a.value.string_value for a in point.attributes}


def test_requests_forwarded_as_received_and_a_companion_gauge_for_the_jump(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="otelai.alerts")
    registry, traffic = CollectorRegistry(), Traffic()
    alerter = Alerter(burst=1000, rate=1000.0)
    processor = MetricProcessor(_config(), Metrics(registry), alerter=alerter)
    _warm(processor, traffic, batches=WARM_BATCHES)
    assert processor.scorer.warm

    payloads = traffic.batch(jump={"h3": 10 * SIGMA + 5.0})
    out = processor.process(payloads)
    assert out[:2] == payloads and all(a.data is b.data for a, b in zip(out, payloads, strict=False))
    assert len(out) == 3
    companion = out[2]
    assert companion.signal is Signal.METRICS
    assert companion.received_ns == min(p.received_ns for p in payloads)
    request = ExportMetricsServiceRequest.FromString(companion.data)
    assert companion.items == count_items(Signal.METRICS, request)

    source = payloads[0].request.resource_metrics[0]
    points: dict[tuple[str, ...], Any] = {}
    for resource_metrics in request.resource_metrics:
        service = _attributes(resource_metrics.resource)["service.name"]
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                assert (metric.name, metric.unit, metric.WhichOneof("data")) == (SCORE_METRIC, "1", "gauge")
                for point in metric.gauge.data_points:
                    attrs = _attributes(point)
                    points[(service, attrs[METRIC_NAME], attrs.get("host", ""))] = point
                    if service == "api":
                        assert resource_metrics.resource == source.resource
                        assert resource_metrics.schema_url == source.schema_url
                        assert scope_metrics.scope == source.scope_metrics[0].scope
                        assert scope_metrics.schema_url == source.scope_metrics[0].schema_url
    jumped = points[("api", "cpu.utilization", "h3")]
    assert _attributes(jumped) == {"host": "h3", "core": "0", METRIC_NAME: "cpu.utilization"}
    assert jumped.time_unix_nano == traffic.t * S
    assert jumped.WhichOneof("value") == "as_double" and jumped.as_double >= 0.99
    assert jumped.as_double == max(p.as_double for p in points.values())
    assert ("api", "cpu.utilization", "h-down") not in points  # nothing to score

    sent = (WARM_BATCHES + 1) * (HOSTS + 1 + 5 + 5)
    forwarded = registry.get_sample_value(
        "otelai_selection_items_total", {"signal": "metrics", "decision": "forwarded"}
    )
    assert forwarded == sent
    anomalies = sum(
        registry.get_sample_value("otelai_anomalies_total", {"signal": "metrics", "severity": s}) or 0.0
        for s in ("anomaly", "critical")
    )
    assert anomalies >= 1
    alerts = [r for r in caplog.records if r.name == "otelai.alerts"]
    assert any(
        getattr(r, "operation", "") == "cpu.utilization" and getattr(r, "service", "") == "api"
        for r in alerts
    )
    assert processor.tick(now_ns=10**18) == []
    processor.close()


def test_fail_open_forwards_untouched() -> None:
    processor = MetricProcessor(_config(), Metrics(CollectorRegistry()))
    payloads = Traffic().batch()
    out = processor.fail_open(payloads, "too_slow")
    assert out == payloads and all(a is b for a, b in zip(out, payloads, strict=True))
    processor.close()


def test_unreadable_requests_forwarded_and_counted() -> None:
    registry = CollectorRegistry()
    processor = MetricProcessor(_config(), Metrics(registry))
    payloads = Traffic().batch()
    garbage = Payload(Signal.METRICS, b"\x0a\x05\xff\xff\xff\xff\xff", 4)
    out = processor.process([payloads[0], garbage, payloads[1]])
    assert out[:3] == [payloads[0], garbage, payloads[1]]
    assert (
        registry.get_sample_value(
            "otelai_fail_open_items_total", {"signal": "metrics", "reason": "unreadable"}
        )
        == 4
    )
    forwarded = registry.get_sample_value(
        "otelai_selection_items_total", {"signal": "metrics", "decision": "forwarded"}
    )
    assert forwarded == payloads[0].items + payloads[1].items
    processor.close()
