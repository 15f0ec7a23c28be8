"""Small serialised OTLP requests, one per signal, for the exporter tests."""

from __future__ import annotations

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otelai.signals import Signal


def traces(spans: int = 3, attribute: str = "v") -> bytes:
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add()
    resource_spans.resource.attributes.add(key="service.name").value.string_value = "checkout"
    scope_spans = resource_spans.scope_spans.add()
    for index in range(spans):
        span = scope_spans.spans.add(name=f"GET /item/{index}", kind=2)
        span.trace_id = bytes(range(16))
        span.span_id = index.to_bytes(8, "big")
        span.start_time_unix_nano = 1_700_000_000_000_000_000 + index
        span.end_time_unix_nano = span.start_time_unix_nano + 1_000
        span.attributes.add(key="attr").value.string_value = attribute
    data: bytes = request.SerializeToString()
    return data


def metrics() -> bytes:
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    metric = request.resource_metrics.add().scope_metrics.add().metrics.add(name="requests")
    point = metric.sum.data_points.add(as_int=7, time_unix_nano=1_700_000_000_000_000_000)
    point.attributes.add(key="route").value.string_value = "/item"
    data: bytes = request.SerializeToString()
    return data


def logs() -> bytes:
    request = logs_service_pb2.ExportLogsServiceRequest()
    record = request.resource_logs.add().scope_logs.add().log_records.add(severity_number=9)
    record.body.string_value = "hello"
    record.trace_id = bytes(range(16))
    data: bytes = request.SerializeToString()
    return data


def sample(signal: Signal) -> bytes:
    return {Signal.TRACES: traces, Signal.METRICS: metrics, Signal.LOGS: logs}[signal]()
