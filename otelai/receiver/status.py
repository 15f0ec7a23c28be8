"""``google.rpc.Status`` replies shared by the gRPC and HTTP receivers.

OTLP puts a ``Status`` in the body of every OTLP/HTTP error, and a rich status in the
``grpc-status-details-bin`` trailer of gRPC errors; a ``RetryInfo`` detail tells the
client how long to wait before it retries a throttled request.
"""

from __future__ import annotations

import math

import grpc
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from otelai.otlp_json import message_to_json
from otelai.receiver.decode import Encoding

STATUS_DETAILS_KEY = "grpc-status-details-bin"
# The OpenTelemetry Python SDK's gRPC exporter reads the RetryInfo from this trailer
# rather than from the status details; sending both serves every client.
PYTHON_RETRY_INFO_KEY = "google.rpc.retryinfo-bin"


def status(code: grpc.StatusCode, message: str, *, retry_after: float | None = None) -> status_pb2.Status:
    """A ``google.rpc.Status``; with ``retry_after`` (seconds) it carries a ``RetryInfo``."""
    result = status_pb2.Status(code=code.value[0], message=message)
    if retry_after is not None:
        result.details.add().Pack(retry_info(retry_after))
    return result


def bad_request(message: str) -> status_pb2.Status:
    """``INVALID_ARGUMENT`` with the ``BadRequest`` detail the OTLP spec recommends for 400."""
    result = status(grpc.StatusCode.INVALID_ARGUMENT, message)
    detail = error_details_pb2.BadRequest()
    detail.field_violations.add(field="body", description=message)
    result.details.add().Pack(detail)
    return result


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    delay = Duration()
    delay.FromNanoseconds(max(0, round(seconds * 1e9)))
    return error_details_pb2.RetryInfo(retry_delay=delay)


def retry_after_header(seconds: float) -> str:
    """``Retry-After`` takes whole seconds; round up, and never say 0 (an immediate retry)."""
    return str(max(1, math.ceil(seconds)))


def encode(message: status_pb2.Status, encoding: Encoding) -> bytes:
    """The status as an OTLP/HTTP error body in ``encoding``."""
    if encoding is Encoding.JSON:
        return message_to_json(message).encode()
    data: bytes = message.SerializeToString()
    return data


def trailing_metadata(message: status_pb2.Status) -> tuple[tuple[str, bytes], ...]:
    """gRPC trailers carrying ``message`` as a rich status (as ``grpcio-status`` does)."""
    trailers = [(STATUS_DETAILS_KEY, message.SerializeToString())]
    for detail in message.details:
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            trailers.append((PYTHON_RETRY_INFO_KEY, detail.value))
    return tuple(trailers)
