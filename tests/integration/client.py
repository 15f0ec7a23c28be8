"""Raw OTLP clients: serialised requests with known span ids, sent without any SDK logic
(no retries, no batching), so a test knows exactly which requests were acknowledged."""

from __future__ import annotations

import http.client
import itertools
import struct
import threading
from dataclasses import dataclass, field

import grpc
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS_EXPORT = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
METRICS_EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"

_ids = itertools.count(1)
_ids_lock = threading.Lock()


def next_ids(count: int) -> list[bytes]:
    """Span ids unique within the test process (8 bytes, never zero)."""
    with _ids_lock:
        return [struct.pack(">Q", next(_ids)) for _ in range(count)]


def trace_request(span_ids: list[bytes], *, padding: int = 0) -> bytes:
    """A serialised ``ExportTraceServiceRequest`` with one span per id.

    ``padding`` bytes of attribute text per span make requests of a chosen size.
    """
    request = trace_service_pb2.ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name", value=common_pb2.AnyValue(string_value="itest-raw"))
    ss = rs.scope_spans.add()
    ss.scope.name = "itest.raw"
    filler = "x" * padding
    for span_id in span_ids:
        span = ss.spans.add()
        span.trace_id = span_id * 2
        span.span_id = span_id
        span.name = "raw-span"
        span.kind = trace_pb2.Span.SPAN_KIND_SERVER
        span.start_time_unix_nano = 1_700_000_000_000_000_000
        span.end_time_unix_nano = 1_700_000_000_001_000_000
        if padding:
            span.attributes.add(key="padding", value=common_pb2.AnyValue(string_value=filler))
    return request.SerializeToString()


@dataclass
class GrpcAnswer:
    code: grpc.StatusCode
    details: str = ""
    retry_delay: float | None = None  # from a google.rpc.RetryInfo in the status details
    body: bytes = b""


def grpc_export(
    channel: grpc.Channel,
    body: bytes,
    *,
    method: str = TRACE_EXPORT,
    timeout: float = 10.0,
    compression: grpc.Compression | None = None,
) -> GrpcAnswer:
    """One unary Export call with raw bytes; never raises for an RPC error."""
    call = channel.unary_unary(method)
    try:
        response = call(body, timeout=timeout, compression=compression)
    except grpc.RpcError as exc:
        return GrpcAnswer(exc.code(), exc.details() or "", _retry_delay(exc))
    return GrpcAnswer(grpc.StatusCode.OK, body=response)


def _retry_delay(error: grpc.RpcError) -> float | None:
    for key, value in error.trailing_metadata() or ():
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                return float(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
    return None


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


def http_post(
    port: int,
    path: str,
    body: bytes,
    *,
    content_type: str = "application/x-protobuf",
    headers: dict[str, str] | None = None,
    method: str = "POST",
    timeout: float = 10.0,
) -> HttpAnswer:
    """One HTTP request to the loopback port; the connection is closed afterwards."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        all_headers = {"Content-Type": content_type, **(headers or {})}
        conn.request(method, path, body=body, headers=all_headers)
        response = conn.getresponse()
        data = response.read()
        return HttpAnswer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        conn.close()
