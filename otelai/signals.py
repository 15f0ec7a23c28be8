"""The three OTLP signals and what the hop needs to know about each.

One table keeps the protobuf classes, gRPC method paths, HTTP paths and the
partial-success field names together so receivers and exporters never disagree.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


class Signal(enum.StrEnum):
    """An OTLP signal; the value is the name used in metric labels and URLs."""

    TRACES = "traces"
    METRICS = "metrics"
    LOGS = "logs"

    @property
    def spec(self) -> SignalSpec:
        return _SPECS[self]


@dataclass(frozen=True)
class SignalSpec:
    """Wire-level facts about one signal."""

    request_type: type[Message]
    response_type: type[Message]
    partial_success_type: type[Message]
    grpc_service: str
    http_path: str
    rejected_field: str

    @property
    def grpc_method(self) -> str:
        return f"/{self.grpc_service}/Export"


_SPECS: dict[Signal, SignalSpec] = {
    Signal.TRACES: SignalSpec(
        request_type=trace_service_pb2.ExportTraceServiceRequest,
        response_type=trace_service_pb2.ExportTraceServiceResponse,
        partial_success_type=trace_service_pb2.ExportTracePartialSuccess,
        grpc_service="opentelemetry.proto.collector.trace.v1.TraceService",
        http_path="/v1/traces",
        rejected_field="rejected_spans",
    ),
    Signal.METRICS: SignalSpec(
        request_type=metrics_service_pb2.ExportMetricsServiceRequest,
        response_type=metrics_service_pb2.ExportMetricsServiceResponse,
        partial_success_type=metrics_service_pb2.ExportMetricsPartialSuccess,
        grpc_service="opentelemetry.proto.collector.metrics.v1.MetricsService",
        http_path="/v1/metrics",
        rejected_field="rejected_data_points",
    ),
    Signal.LOGS: SignalSpec(
        request_type=logs_service_pb2.ExportLogsServiceRequest,
        response_type=logs_service_pb2.ExportLogsServiceResponse,
        partial_success_type=logs_service_pb2.ExportLogsPartialSuccess,
        grpc_service="opentelemetry.proto.collector.logs.v1.LogsService",
        http_path="/v1/logs",
        rejected_field="rejected_log_records",
    ),
}


def count_items(signal: Signal, request: Any) -> int:
    """Count spans, metric data points or log records in a parsed request.

    Walks only the container levels (resource, scope, metric); never the items.
    """
    if signal is Signal.TRACES:
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    if signal is Signal.LOGS:
        return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
    return sum(
        _count_points(m) for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
    )


def _count_points(metric: Any) -> int:
    kind = metric.WhichOneof("data")
    if kind is None:
        return 0
    return len(getattr(metric, kind).data_points)


def success_response(signal: Signal, rejected: int = 0, message: str = "") -> bytes:
    """Serialised Export response, with partial success when items were rejected."""
    spec = signal.spec
    response: Any = spec.response_type()
    if rejected or message:
        partial = response.partial_success
        setattr(partial, spec.rejected_field, rejected)
        partial.error_message = message
    data: bytes = response.SerializeToString()
    return data


def rejected_in_response(signal: Signal, data: bytes) -> tuple[int, str]:
    """Read the partial-success part of a serialised Export response."""
    response: Any = signal.spec.response_type()
    response.ParseFromString(data)
    partial = response.partial_success
    return int(getattr(partial, signal.spec.rejected_field)), str(partial.error_message)
