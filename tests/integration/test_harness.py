"""The test harness on its own: sink, SDK helpers, rotel, otelcol-contrib and Prometheus.

If one of these fails, the end-to-end tests of otelai cannot be trusted either way.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.metrics.export import MetricsData
from opentelemetry.sdk.trace import ReadableSpan
from prometheus_client import CollectorRegistry, Counter, start_http_server

from . import sdk
from .components import Otelcol, Prometheus, Rotel
from .sink import OtlpSink
from .util import free_port

pytestmark = pytest.mark.slow

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _assert_all_arrived(
    sink: OtlpSink, spans: list[ReadableSpan], logs: list[ReadableLogRecord], metrics: MetricsData
) -> None:
    sink.wait_for("traces", len(spans))
    sink.wait_for("logs", len(logs))
    sink.wait_for("metrics", sdk.count_points(metrics))
    assert sdk.proto_span_keys(sink.spans()) == sdk.sdk_span_keys(spans)
    assert sdk.proto_log_keys(sink.log_records()) == sdk.sdk_log_keys(logs)
    assert sdk.proto_point_keys(sink.metrics()) == sdk.sdk_point_keys(metrics)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_sdk_to_sink(sink: OtlpSink, protocol: str) -> None:
    run = uuid.uuid4().hex
    spans, logs, metrics = sdk.make_spans(40, run), sdk.make_logs(30, run), sdk.make_metrics(run)
    endpoint = sink.grpc_endpoint if protocol == "grpc" else sink.http_url
    sdk.send_all(protocol, endpoint, spans, logs, metrics)
    _assert_all_arrived(sink, spans, logs, metrics)
    assert {r.protocol for r in sink.requests()} == {protocol}


def test_sink_outage_switch_and_fixed_port(sink_factory: Callable[..., OtlpSink]) -> None:
    sink = sink_factory(start=False)
    body = trace_service_pb2.ExportTraceServiceRequest().SerializeToString()
    with grpc.insecure_channel(sink.grpc_endpoint) as channel:
        export = channel.unary_unary(TRACE_EXPORT)
        with pytest.raises(grpc.RpcError) as down:
            export(body, timeout=2)
        assert down.value.code() is grpc.StatusCode.UNAVAILABLE
        sink.start()
        sink.unavailable = True
        with pytest.raises(grpc.RpcError) as refusing:
            export(body, timeout=5, wait_for_ready=True)
        assert refusing.value.code() is grpc.StatusCode.UNAVAILABLE
        assert sink.refused("traces") == 1
        sink.unavailable = False
        export(body, timeout=5)
        assert len(sink.requests("traces")) == 1
        sink.stop()
        sink.start()  # same port again
        export(body, timeout=5, wait_for_ready=True)
        assert len(sink.requests("traces")) == 2


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_rotel_forwards_to_sink(sink: OtlpSink, rotel_factory: Callable[..., Rotel], protocol: str) -> None:
    rotel = rotel_factory(f"http://{sink.grpc_endpoint}")
    run = uuid.uuid4().hex
    spans, logs, metrics = sdk.make_spans(30, run), sdk.make_logs(20, run), sdk.make_metrics(run)
    endpoint = rotel.grpc_endpoint if protocol == "grpc" else f"http://127.0.0.1:{rotel.http_port}"
    sdk.send_all(protocol, endpoint, spans, logs, metrics)
    _assert_all_arrived(sink, spans, logs, metrics)


def test_otelcol_filelog_to_http_sink(
    sink: OtlpSink, otelcol_factory: Callable[..., Otelcol], tmp_path: Path
) -> None:
    lines = [f"line {i} {uuid.uuid4().hex}" for i in range(50)]
    log_file = tmp_path / "app.log"
    log_file.write_text("".join(f"{line}\n" for line in lines))
    otelcol_factory(log_file, sink.http_url)
    sink.wait_for("logs", len(lines))
    assert sorted(sdk.any_value(r.body) for r in sink.log_records()) == sorted(lines)
    assert {r.protocol for r in sink.requests()} == {"http"}


def test_prometheus_scrapes_a_target(prometheus_factory: Callable[..., Prometheus]) -> None:
    registry = CollectorRegistry()
    counter = Counter("itest_things", "Things.", ["kind"], registry=registry)
    counter.labels(kind="a").inc(7)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        prom = prometheus_factory(f"127.0.0.1:{port}")
        prom.wait_for_value('itest_things_total{kind="a"}', 7.0)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
