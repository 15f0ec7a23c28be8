"""The benchmark workload: pre-serialised OTLP trace requests, generated once from a seed.

Each request carries ``spans_per_batch`` spans spread over a few services, with the resource,
HTTP/RPC and database attributes a real instrumented service writes (about ten a span), a few
events (exceptions, retries) and error statuses. Every resource also carries a fixed-width
marker attribute, ``bench.marker``: the load generator patches a sequence number and its send
time (``CLOCK_MONOTONIC`` nanoseconds, shared by all processes on Linux) into the serialised
bytes, so the sink can time every request end to end without parsing the spans. A hop that
re-encodes or merges requests keeps the string value, so the sink still finds it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

MARKER_KEY = "bench.marker"
MARKER_PREFIX = b"@BMK"
SEQ_DIGITS = 10
TS_DIGITS = 19
# "@BMK" + seq + ":" + send time; the sequence 0 means "not timed" (throughput mode).
MARKER_LEN = len(MARKER_PREFIX) + SEQ_DIGITS + 1 + TS_DIGITS
PLACEHOLDER = MARKER_PREFIX + b"0" * SEQ_DIGITS + b":" + b"0" * TS_DIGITS

_SERVICES = ("frontend", "checkout", "payment", "cart", "currency", "shipping", "email", "ad")
_ROUTES = ("/api/cart", "/api/checkout", "/api/products/{id}", "/api/recommendations", "/api/ads")
_METHODS = ("GET", "GET", "GET", "POST", "PUT")
_DB_STATEMENTS = (
    "SELECT * FROM products WHERE id = ?",
    "UPDATE carts SET items = ? WHERE user_id = ?",
    "INSERT INTO orders (id, user_id, total) VALUES (?, ?, ?)",
)


def _kv(key: str, value: str | int | float | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def _resource(rng: random.Random, service: str) -> Resource:
    pod = f"{service}-{rng.randrange(16**8):08x}-{rng.randrange(16**5):05x}"
    return Resource(
        attributes=[
            _kv("service.name", service),
            _kv("service.version", f"1.{rng.randrange(20)}.{rng.randrange(10)}"),
            _kv("service.namespace", "shop"),
            _kv("deployment.environment.name", "production"),
            _kv("host.name", f"node-{rng.randrange(64):02d}"),
            _kv("k8s.namespace.name", "shop"),
            _kv("k8s.pod.name", pod),
            _kv("telemetry.sdk.name", "opentelemetry"),
            _kv("telemetry.sdk.language", "python"),
            _kv("telemetry.sdk.version", "1.45.0"),
            KeyValue(key=MARKER_KEY, value=AnyValue(string_value=PLACEHOLDER.decode())),
        ]
    )


def _span(rng: random.Random, trace_id: bytes, parent: bytes, now_ns: int, service: str) -> Span:
    start = now_ns - rng.randrange(10**9, 60 * 10**9)
    duration = int(rng.lognormvariate(15.5, 1.0))  # about 5 ms median, long tail
    route = rng.choice(_ROUTES)
    code = rng.choices((200, 201, 404, 500, 503), weights=(80, 5, 5, 7, 3))[0]
    is_client = bool(parent) and rng.random() < 0.3
    attributes = [
        _kv("http.request.method", rng.choice(_METHODS)),
        _kv("http.route", route),
        _kv("http.response.status_code", code),
        _kv("url.path", route.replace("{id}", str(rng.randrange(10**6)))),
        _kv("url.scheme", "http"),
        _kv("server.address", f"{service}.shop.svc.cluster.local"),
        _kv("server.port", 8080),
        _kv("network.protocol.version", "1.1"),
        _kv("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36"),
        _kv("app.request.size", rng.randrange(100, 20000)),
    ]
    if is_client:
        attributes[-1] = _kv("db.query.text", rng.choice(_DB_STATEMENTS))
    events = []
    if code >= 500:
        events.append(
            Span.Event(
                time_unix_nano=start + duration // 2,
                name="exception",
                attributes=[
                    _kv("exception.type", "TimeoutError"),
                    _kv("exception.message", f"upstream timed out after {rng.randrange(1, 30)}s"),
                ],
            )
        )
    if rng.random() < 0.25:
        events.append(
            Span.Event(
                time_unix_nano=start + duration // 3,
                name="retry",
                attributes=[_kv("retry.attempt", rng.randrange(1, 4))],
            )
        )
    return Span(
        trace_id=trace_id,
        span_id=rng.randbytes(8),
        parent_span_id=parent,
        name="SELECT shop" if is_client else f"{rng.choice(_METHODS)} {route}",
        kind=Span.SPAN_KIND_CLIENT if is_client else Span.SPAN_KIND_SERVER,
        start_time_unix_nano=start,
        end_time_unix_nano=start + duration,
        attributes=attributes,
        events=events,
        status=Status(code=Status.STATUS_CODE_ERROR if code >= 500 else Status.STATUS_CODE_UNSET),
    )


def build_request(rng: random.Random, spans: int, services: int = 4) -> ExportTraceServiceRequest:
    """One export request of ``spans`` spans over ``services`` resources, traces of about 8 spans."""
    now_ns = 1_700_000_000 * 10**9
    request = ExportTraceServiceRequest()
    names = rng.sample(_SERVICES, services)
    for index, service in enumerate(names):
        count = spans // services + (1 if index < spans % services else 0)
        resource_spans = ResourceSpans(resource=_resource(rng, service))
        scope = ScopeSpans(
            scope=InstrumentationScope(name="opentelemetry.instrumentation.asgi", version="0.50b0")
        )
        trace_id, parent = rng.randbytes(16), b""
        for position in range(count):
            if position % 8 == 0:
                trace_id, parent = rng.randbytes(16), b""
            span = _span(rng, trace_id, parent, now_ns, service)
            parent = parent or span.span_id
            scope.spans.append(span)
        resource_spans.scope_spans.append(scope)
        request.resource_spans.append(resource_spans)
    return request


def build_batches(seed: int, batches: int, spans_per_batch: int) -> list[bytes]:
    """``batches`` distinct serialised requests, identical for identical arguments."""
    rng = random.Random(seed)
    return [build_request(rng, spans_per_batch).SerializeToString() for _ in range(batches)]


def marker_offsets(payload: bytes) -> list[int]:
    """Offsets of every placeholder marker in a serialised request."""
    offsets, start = [], payload.find(PLACEHOLDER)
    while start >= 0:
        offsets.append(start)
        start = payload.find(PLACEHOLDER, start + MARKER_LEN)
    return offsets


def trace_id_offsets(payload: bytes) -> np.ndarray:
    """Byte offsets of every trace id (span and link ``trace_id`` fields) in ``payload``."""
    request = ExportTraceServiceRequest.FromString(payload)
    ids = {span.trace_id for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans}
    offsets: list[int] = []
    for trace_id in ids:
        needle = b"\x0a\x10" + trace_id  # field 1, length 16
        start = payload.find(needle)
        while start >= 0:
            offsets.append(start + 2)
            start = payload.find(needle, start + 1)
    return np.array(sorted(offsets), dtype=np.int64)


def fresh_trace_ids(payload: bytes, offsets: np.ndarray, key: int) -> bytes:
    """``payload`` with the low 8 bytes of every trace id XORed with ``key``.

    Spans of one trace keep one id, so traces stay whole, while each request sent gets trace
    ids never seen before, as live traffic does (a replayed id would look like a trace that
    goes on for ever to a tail sampler or a trace buffer).
    """
    buffer = np.frombuffer(bytearray(payload), dtype=np.uint8)
    index = (offsets[:, None] + 8 + np.arange(8)).ravel()
    mask = np.frombuffer(key.to_bytes(8, "little"), dtype=np.uint8)
    buffer[index] ^= np.tile(mask, len(offsets))
    return buffer.tobytes()


def stamp(payload: bytes, offsets: Sequence[int], seq: int, send_ns: int) -> bytes:
    """A copy of ``payload`` with every marker set to ``seq`` and ``send_ns``.

    The value keeps its width, so no length prefix changes and the bytes stay valid protobuf.
    """
    marker = MARKER_PREFIX + b"%0*d:%0*d" % (SEQ_DIGITS, seq, TS_DIGITS, send_ns)
    buffer = bytearray(payload)
    for offset in offsets:
        buffer[offset : offset + MARKER_LEN] = marker
    return bytes(buffer)


def parse_marker(value: str) -> tuple[int, int] | None:
    """``(seq, send_ns)`` from a marker value, or None when it is untimed or not a marker."""
    raw = value.encode()
    if len(raw) != MARKER_LEN or not raw.startswith(MARKER_PREFIX):
        return None
    seq_at = len(MARKER_PREFIX)
    try:
        seq = int(raw[seq_at : seq_at + SEQ_DIGITS])
        send_ns = int(raw[seq_at + SEQ_DIGITS + 1 :])
    except ValueError:
        return None
    return (seq, send_ns) if seq else None
