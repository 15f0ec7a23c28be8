"""A real Prometheus server scrapes otelai's /metrics: the public metric names are there, with
the values the traffic we sent implies."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from .client import grpc_export, http_post, next_ids, trace_request
from .components import Prometheus
from .service import OtelaiService

pytestmark = pytest.mark.slow

GRPC_REQUESTS, HTTP_REQUESTS, SPANS = 4, 3, 25


def test_prometheus_scrapes_otelai(
    tmp_path: Path,
    otelai_service: Callable[..., OtelaiService],
    prometheus_factory: Callable[..., Prometheus],
) -> None:
    service = otelai_service(
        f"""
scoring: {{enabled: false}}  # a pass-through test: the hop, not scoring
exporters:
  file: {{path: "{tmp_path / "forwarded.jsonl"}"}}
"""
    )
    prom = prometheus_factory(f"127.0.0.1:{service.metrics_port}")
    with grpc.insecure_channel(service.grpc_target) as channel:
        for _ in range(GRPC_REQUESTS):
            assert grpc_export(channel, trace_request(next_ids(SPANS))).code is grpc.StatusCode.OK
    for _ in range(HTTP_REQUESTS):
        assert http_post(service.http_port, "/v1/traces", trace_request(next_ids(SPANS))).status == 200
    requests = GRPC_REQUESTS + HTTP_REQUESTS

    prom.wait_for_value('otelai_receiver_items_total{signal="traces"}', float(requests * SPANS))
    prom.wait_for_value('otelai_pipeline_latency_seconds_count{signal="traces"}', float(requests))
    prom.wait_for_value(
        'otelai_exporter_items_total{signal="traces",outcome="sent"}', float(requests * SPANS)
    )
    prom.wait_for_value('otelai_queue_items{queue="file"}', 0.0)
    assert prom.wait_for_series('otelai_receiver_bytes_total{signal="traces"} > 0')
    assert prom.wait_for_series("otelai_build_info == 1")
    # The latency histogram is usable as such: a quantile over its buckets is a number.
    quantile = prom.query('histogram_quantile(0.99, otelai_pipeline_latency_seconds_bucket{signal="traces"})')
    assert len(quantile) == 1 and float(quantile[0]["value"][1]) >= 0
    assert prom.target_health() == "up"
