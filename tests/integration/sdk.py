"""Telemetry made and sent by the real OpenTelemetry Python SDK, and how to compare it.

Spans, log records and metric points are produced by the SDK's own providers (into in-memory
exporters / readers), then sent with the SDK's real OTLP exporters (gRPC or HTTP/protobuf),
whose result is returned so a test knows what was acknowledged. ``*_keys`` turn both the SDK
objects and the protobuf that reached a sink into comparable sets.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Sequence
from typing import Any

from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

Attrs = frozenset[tuple[str, Any]]


def _resource(run_id: str) -> Resource:
    return Resource.create({"service.name": "otelai-itest", "itest.run": run_id})


def make_spans(count: int, run_id: str) -> list[ReadableSpan]:
    """``count`` finished spans with attributes of every scalar type, events and status."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=_resource(run_id))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("itest.tracer", "1.0")
    for i in range(count):
        with tracer.start_as_current_span(f"op-{i % 7}", kind=SpanKind.SERVER) as parent:
            parent.set_attributes({"i": i, "ratio": i / 4, "ok": i % 2 == 0, "run": run_id})
            parent.add_event("checkpoint", {"step": i})
            if i % 3 == 0:
                with tracer.start_as_current_span(f"child-{i}") as child:
                    child.set_attribute("tags", ["a", "b", str(i)])
    provider.shutdown()
    return list(exporter.get_finished_spans())


def make_logs(count: int, run_id: str) -> list[ReadableLogRecord]:
    """``count`` log records with bodies, severities and attributes."""
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(resource=_resource(run_id))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("itest.logger")
    from opentelemetry._logs import SeverityNumber

    for i in range(count):
        logger.emit(
            body=f"log line {i} of run {run_id}",
            severity_number=SeverityNumber.WARN if i % 5 == 0 else SeverityNumber.INFO,
            severity_text="WARN" if i % 5 == 0 else "INFO",
            attributes={"i": i, "run": run_id},
        )
    provider.shutdown()
    return list(exporter.get_finished_logs())


def make_metrics(run_id: str, series: int = 5) -> MetricsData:
    """One collection of a counter, an up-down counter, a histogram and a gauge."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=_resource(run_id), metric_readers=[reader])
    meter = provider.get_meter("itest.meter", "1.0")
    counter = meter.create_counter("itest.requests", unit="1")
    updown = meter.create_up_down_counter("itest.inflight")
    histogram = meter.create_histogram("itest.latency", unit="ms")
    gauge = meter.create_gauge("itest.temperature")
    for k in range(series):
        attrs = {"route": f"/r{k}", "run": run_id}
        counter.add(10 + k, attrs)
        updown.add(k - 2, attrs)
        for v in range(k + 1):
            histogram.record(3.5 * v + k, attrs)
        gauge.set(20.25 + k, attrs)
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return data


# -- sending with the SDK's OTLP exporters ----------------------------------------------------
def otlp_exporters(protocol: str, endpoint: str, *, gzip: bool = True) -> tuple[Any, Any, Any]:
    """Span, log and metric OTLP exporters of the SDK for ``grpc`` (``host:port``) or ``http``
    (``http://host:port``), compressing with gzip unless told not to."""
    if protocol == "grpc":
        from grpc import Compression as GrpcCompression
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        target = f"http://{endpoint}"
        grpc_options: dict[str, Any] = {
            "insecure": True,
            "timeout": 10,
            "compression": GrpcCompression.Gzip if gzip else GrpcCompression.NoCompression,
        }
        return (
            OTLPSpanExporter(endpoint=target, **grpc_options),
            OTLPLogExporter(endpoint=target, **grpc_options),
            OTLPMetricExporter(endpoint=target, **grpc_options),
        )
    from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter as HttpLog
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetric
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpan

    http_options: dict[str, Any] = {
        "timeout": 10,
        "compression": HttpCompression.Gzip if gzip else HttpCompression.NoCompression,
    }
    return (
        HttpSpan(endpoint=f"{endpoint}/v1/traces", **http_options),
        HttpLog(endpoint=f"{endpoint}/v1/logs", **http_options),
        HttpMetric(endpoint=f"{endpoint}/v1/metrics", **http_options),
    )


def send_all(
    protocol: str,
    endpoint: str,
    spans: Sequence[ReadableSpan],
    logs: Sequence[ReadableLogRecord],
    metrics: MetricsData,
    batch: int = 25,
    gzip: bool = True,
) -> None:
    """Export everything in several requests; fail unless every export succeeded."""
    span_exporter, log_exporter, metric_exporter = otlp_exporters(protocol, endpoint, gzip=gzip)
    try:
        for start in range(0, len(spans), batch):
            result = span_exporter.export(spans[start : start + batch])
            assert result is SpanExportResult.SUCCESS, f"{protocol} span export: {result}"
        for start in range(0, len(logs), batch):
            result = log_exporter.export(logs[start : start + batch])
            assert result is LogRecordExportResult.SUCCESS, f"{protocol} log export: {result}"
        result = metric_exporter.export(metrics)
        assert result is MetricExportResult.SUCCESS, f"{protocol} metric export: {result}"
    finally:
        span_exporter.shutdown()
        log_exporter.shutdown()
        metric_exporter.shutdown(timeout_millis=1000)


# -- comparable keys ------------------------------------------------------------------------
def any_value(value: Any) -> Any:
    """Python value of an OTLP ``AnyValue``; arrays become tuples."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return frozenset((kv.key, any_value(kv.value)) for kv in value.kvlist_value.values)
    return getattr(value, kind)


def proto_attrs(attributes: Iterable[Any]) -> Attrs:
    return frozenset((kv.key, any_value(kv.value)) for kv in attributes)


def sdk_attrs(attributes: Any) -> Attrs:
    return frozenset(
        (k, tuple(v) if isinstance(v, list | tuple) else v) for k, v in (attributes or {}).items()
    )


SpanKey = tuple[bytes, bytes, bytes, str, Attrs, tuple[tuple[str, Attrs], ...]]


def sdk_span_keys(spans: Iterable[ReadableSpan]) -> collections.Counter[SpanKey]:
    keys: collections.Counter[SpanKey] = collections.Counter()
    for span in spans:
        ctx = span.get_span_context()
        assert ctx is not None
        parent = span.parent.span_id.to_bytes(8, "big") if span.parent else b""
        events = tuple((e.name, sdk_attrs(e.attributes)) for e in span.events)
        keys[
            (
                ctx.trace_id.to_bytes(16, "big"),
                ctx.span_id.to_bytes(8, "big"),
                parent,
                span.name,
                sdk_attrs(span.attributes),
                events,
            )
        ] += 1
    return keys


def proto_span_keys(spans: Iterable[Any]) -> collections.Counter[SpanKey]:
    keys: collections.Counter[SpanKey] = collections.Counter()
    for span in spans:
        events = tuple((e.name, proto_attrs(e.attributes)) for e in span.events)
        keys[
            (
                span.trace_id,
                span.span_id,
                span.parent_span_id,
                span.name,
                proto_attrs(span.attributes),
                events,
            )
        ] += 1
    return keys


LogKey = tuple[Any, int, str, Attrs]


def sdk_log_keys(logs: Iterable[ReadableLogRecord]) -> collections.Counter[LogKey]:
    keys: collections.Counter[LogKey] = collections.Counter()
    for entry in logs:
        record = entry.log_record
        severity = record.severity_number.value if record.severity_number else 0
        keys[(record.body, severity, record.severity_text or "", sdk_attrs(record.attributes))] += 1
    return keys


def proto_log_keys(records: Iterable[Any]) -> collections.Counter[LogKey]:
    keys: collections.Counter[LogKey] = collections.Counter()
    for record in records:
        keys[
            (
                any_value(record.body),
                record.severity_number,
                record.severity_text,
                proto_attrs(record.attributes),
            )
        ] += 1
    return keys


PointKey = tuple[str, Attrs, Any]


def sdk_point_keys(data: MetricsData) -> collections.Counter[PointKey]:
    keys: collections.Counter[PointKey] = collections.Counter()
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                for point in metric.data.data_points:
                    if isinstance(point, NumberDataPoint):
                        value: Any = float(point.value)
                    else:
                        assert isinstance(point, HistogramDataPoint)
                        value = (point.count, float(point.sum), tuple(point.bucket_counts))
                    keys[(metric.name, sdk_attrs(point.attributes), value)] += 1
    return keys


def proto_point_keys(metrics: Iterable[Any]) -> collections.Counter[PointKey]:
    keys: collections.Counter[PointKey] = collections.Counter()
    for metric in metrics:
        kind = metric.WhichOneof("data")
        for point in getattr(metric, kind).data_points:
            if kind == "histogram":
                value: Any = (point.count, float(point.sum), tuple(point.bucket_counts))
            else:
                value = float(getattr(point, point.WhichOneof("value")))
            keys[(metric.name, proto_attrs(point.attributes), value)] += 1
    return keys


def count_points(data: MetricsData) -> int:
    return sum(
        len(metric.data.data_points)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
    )
