"""Telemetry made by the real OpenTelemetry Python SDK, and hand-built OTLP requests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter, SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from otelai.signals import Signal

RESOURCE = Resource.create({"service.name": "receiver-test"})


def finished_spans(traces: int = 5) -> Sequence[Any]:
    """``2 * traces`` spans: each trace a root with one child."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("otelai.tests")
    for i in range(traces):
        with tracer.start_as_current_span(f"GET /item/{i}") as span:
            span.set_attribute("item", i)
            with tracer.start_as_current_span("db.query"):
                pass
    provider.shutdown()
    return memory.get_finished_spans()


def finished_logs(records: int = 4) -> Sequence[Any]:
    memory = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(resource=RESOURCE)
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("otelai.tests")
    for i in range(records):
        logger.emit(body=f"record {i}", severity_number=SeverityNumber.WARN, attributes={"i": i})
    provider.shutdown()
    return memory.get_finished_logs()


def metrics_data() -> Any:
    """Three counter points (three attribute sets) and one histogram point."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(resource=RESOURCE, metric_readers=[reader])
    meter = provider.get_meter("otelai.tests")
    counter = meter.create_counter("requests")
    histogram = meter.create_histogram("latency", unit="s")
    for i in range(3):
        counter.add(i + 1, {"route": f"/r{i}"})
        histogram.record(0.1 * i)
    data = reader.get_metrics_data()
    provider.shutdown()
    return data


def sdk_telemetry(signal: Signal) -> tuple[Any, bytes, int]:
    """What an SDK exporter of ``signal`` is given, the request bytes it sends, the item count."""
    if signal is Signal.TRACES:
        spans = finished_spans()
        return spans, encode_spans(spans).SerializeToString(), len(spans)
    if signal is Signal.LOGS:
        logs = finished_logs()
        return logs, encode_logs(logs).SerializeToString(), len(logs)
    data = metrics_data()
    return data, encode_metrics(data).SerializeToString(), 4


def trace_request(spans: int = 3, attribute_size: int = 8) -> bytes:
    """A serialised trace request with ``spans`` spans under one resource."""
    request = ExportTraceServiceRequest()
    scope_spans = request.resource_spans.add().scope_spans.add()
    for i in range(spans):
        span = scope_spans.spans.add(
            trace_id=bytes([1] * 16), span_id=(i + 1).to_bytes(8, "big"), name=f"span-{i}", kind=2
        )
        attribute = span.attributes.add(key="payload")
        attribute.value.string_value = "x" * attribute_size
    data: bytes = request.SerializeToString()
    return data
