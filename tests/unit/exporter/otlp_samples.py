"""Small serialised OTLP requests, one per signal, for the exporter tests."""

from __future__ import annotations

from typing import Any

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


MESSAGES: dict[Signal, tuple[Any, str, str, str]] = {
    Signal.TRACES: (trace_service_pb2.ExportTraceServiceRequest, "resource_spans", "scope_spans", "spans"),
    Signal.LOGS: (logs_service_pb2.ExportLogsServiceRequest, "resource_logs", "scope_logs", "log_records"),
    Signal.METRICS: (
        metrics_service_pb2.ExportMetricsServiceRequest,
        "resource_metrics",
        "scope_metrics",
        "metrics",
    ),
}

_Key = tuple[bytes, str, bytes, str]


def content(signal: Signal, data: bytes) -> dict[_Key, list[bytes]]:
    """Every item's bytes under its (resource, schema, scope, schema), in order."""
    message, resources, scopes, items = MESSAGES[signal]
    out: dict[_Key, list[bytes]] = {}
    for resource in getattr(message.FromString(data), resources):
        for scope in getattr(resource, scopes):
            key = (
                resource.resource.SerializeToString(),
                resource.schema_url,
                scope.scope.SerializeToString(),
                scope.schema_url,
            )
            out.setdefault(key, []).extend(item.SerializeToString() for item in getattr(scope, items))
    return out


def joined(signal: Signal, requests: list[bytes]) -> dict[_Key, list[bytes]]:
    out: dict[_Key, list[bytes]] = {}
    for data in requests:
        for key, items in content(signal, data).items():
            out.setdefault(key, []).extend(items)
    return out


def traces_of(service: str, spans: int, *, scope: str = "lib", schema: str = "", offset: int = 0) -> bytes:
    """A request of ``spans`` spans named ``op<offset>``... under one resource and scope."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    resource_spans = request.resource_spans.add(schema_url=schema)
    resource_spans.resource.attributes.add(key="service.name").value.string_value = service
    scope_spans = resource_spans.scope_spans.add()
    scope_spans.scope.name = scope
    for index in range(spans):
        scope_spans.spans.add(name=f"op{offset + index}", span_id=(offset + index + 1).to_bytes(8, "big"))
    data: bytes = request.SerializeToString()
    return data
