"""OTLP trace requests for the feature tests, and a reference reading through the protobuf API.

The reference reads every column with the ordinary (slow) Python protobuf API, field by
field, so the vectorised wire reader can be checked against it on any request.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelai.features.interner import UNKNOWN_SERVICE, Interner

T0 = 1_700_000_000_000_000_000


def kv(key: str, value: str | int | float | bool) -> KeyValue:
    if isinstance(value, bool):
        return KeyValue(key=key, value=AnyValue(bool_value=value))
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    if isinstance(value, float):
        return KeyValue(key=key, value=AnyValue(double_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


def make_span(
    trace: int,
    span: int,
    parent: int | None = None,
    *,
    name: str = "GET /",
    kind: int = Span.SPAN_KIND_SERVER,
    start: int = T0,
    duration: int = 1_000_000,
    status: int = Status.STATUS_CODE_UNSET,
    attributes: dict[str, Any] | None = None,
    events: tuple[str, ...] = (),
    links: int = 0,
) -> Span:
    """A span whose ids are derived from small integers."""
    message = Span(
        trace_id=trace.to_bytes(16, "big"),
        span_id=span.to_bytes(8, "big"),
        parent_span_id=parent.to_bytes(8, "big") if parent is not None else b"",
        name=name,
        kind=kind,  # type: ignore[arg-type]
        start_time_unix_nano=start,
        end_time_unix_nano=start + duration,
        attributes=[kv(key, value) for key, value in (attributes or {}).items()],
        events=[Span.Event(time_unix_nano=start, name=event) for event in events],
        links=[Span.Link(trace_id=trace.to_bytes(16, "big"), span_id=bytes(8)) for _ in range(links)],
        status=Status(code=status),  # type: ignore[arg-type]
    )
    return message


def make_request(resources: dict[str | None, list[Span]]) -> ExportTraceServiceRequest:
    """One resource a key (its service.name; None for none), one scope each."""
    request = ExportTraceServiceRequest()
    for service, spans in resources.items():
        resource_spans = request.resource_spans.add()
        if service is not None:
            resource_spans.resource.attributes.append(kv("service.name", service))
        resource_spans.resource.attributes.append(kv("host.name", "node-1"))
        scope = resource_spans.scope_spans.add()
        scope.scope.name = "test"
        scope.spans.extend(spans)
    return request


def varint(value: int) -> bytes:
    """``value`` as a protobuf varint."""
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def unusual_payload() -> bytes:
    """A request whose one span has reordered KeyValue fields, long keys and values, field 16,
    unknown fields and a repeated status: legal encodings that no common encoder writes."""
    span = make_span(
        3,
        4,
        1,
        attributes={"k" * 200: "long key", "v": "y" * 300, "http.response.status_code": 404},
        events=("exception",),
        status=Status.STATUS_CODE_ERROR,
    )
    span.flags = 0x101  # field 16: a two-byte tag
    span.events[0].attributes.append(kv("stack", "z" * 20_000))  # a three-byte length prefix
    value = kv("x", 7).value.SerializeToString()
    raw = span.SerializeToString()
    raw += field(9, field(2, value) + field(1, b"rpc.grpc.status_code"))  # value before key
    raw += varint(200 << 3) + varint(5)  # an unknown varint field
    raw += field(15, Status(code=Status.STATUS_CODE_OK).SerializeToString())  # a second status
    resource = make_request({"svc": []}).resource_spans[0]
    scope = resource.scope_spans[0].SerializeToString() + field(2, raw)
    return field(1, field(1, resource.resource.SerializeToString()) + field(2, scope))


def interleaved_payload() -> bytes:
    """A request whose scope has a ``schema_url`` between its spans."""
    spans = [make_span(1, i).SerializeToString() for i in (1, 2, 3)]
    scope = field(2, spans[0]) + field(3, b"https://schema") + field(2, spans[1]) + field(2, spans[2])
    return field(1, field(2, scope))


def _integer(value: AnyValue) -> int:
    kind = value.WhichOneof("value")
    if kind == "int_value":
        return value.int_value if value.int_value >= 0 else -1
    if kind == "string_value":
        text = value.string_value
        ok = 1 <= len(text) <= 4 and all("0" <= ch <= "9" for ch in text)
        return int(text) if ok else -1
    return -1


def reference(requests: list[ExportTraceServiceRequest]) -> dict[str, Any]:
    """Every per-span column except the within-batch links, read through the protobuf API.

    Services and operations come as names (``service``, ``operation``), not ids.
    """
    rows: dict[str, list[Any]] = {}

    def put(name: str, value: Any) -> None:
        rows.setdefault(name, []).append(value)

    for number, request in enumerate(requests):
        for r, resource_spans in enumerate(request.resource_spans):
            named_ = [a.value for a in resource_spans.resource.attributes if a.key == "service.name"]
            text = (
                named_[-1].string_value if named_ and named_[-1].WhichOneof("value") == "string_value" else ""
            )
            service = text or UNKNOWN_SERVICE
            for s, scope in enumerate(resource_spans.scope_spans):
                for i, span in enumerate(scope.spans):
                    attributes = {a.key: a.value for a in span.attributes}
                    http = -1
                    for key in ("http.status_code", "http.response.status_code"):
                        code = _integer(attributes[key]) if key in attributes else -1
                        http = code if code >= 0 else http
                    grpc = (
                        _integer(attributes["rpc.grpc.status_code"])
                        if "rpc.grpc.status_code" in attributes
                        else -1
                    )
                    put("trace_id", list(span.trace_id) if len(span.trace_id) == 16 else [0] * 16)
                    put("span_id", list(span.span_id) if len(span.span_id) == 8 else [0] * 8)
                    parent = span.parent_span_id
                    put("has_parent", len(parent) == 8 and any(parent))
                    put("start_unix_nano", min(span.start_time_unix_nano, 2**63 - 1))
                    put(
                        "duration_ns",
                        min(max(span.end_time_unix_nano - span.start_time_unix_nano, 0), 2**63 - 1),
                    )
                    put("status_code", span.status.code if 0 <= span.status.code <= 2 else 0)
                    put("kind", span.kind if 0 <= span.kind <= 5 else 0)
                    put("n_events", len(span.events))
                    put("n_links", len(span.links))
                    put("n_attributes", len(span.attributes))
                    put("has_exception_event", any(e.name == "exception" for e in span.events))
                    put("http_status_class", http // 100 if 100 <= http <= 599 else 0)
                    put("rpc_grpc_status", grpc if 0 <= grpc <= 1000 else -1)
                    put("has_db", "db.system" in attributes or "db.system.name" in attributes)
                    put("service", service)
                    put("operation", f"{service}|{span.name}")
                    put("request", number)
                    put("resource", r)
                    put("scope", s)
                    put("index", i)
    return {name: np.asarray(values) for name, values in rows.items()}


def named(batch: Any, interner: Interner) -> dict[str, Any]:
    """The ``service`` and ``operation`` names of a batch's spans, as :func:`reference` gives them."""
    services = [interner.service_name(int(i)) for i in batch.service_id]
    operations = ["|".join(interner.operation_name(int(i))) for i in batch.operation_id]
    return {"service": np.asarray(services), "operation": np.asarray(operations)}


_KEYS = st.sampled_from(
    [
        "http.response.status_code",
        "http.status_code",
        "rpc.grpc.status_code",
        "db.system",
        "db.system.name",
        "url.path",
        "server.address",
        "k",
        "x" * 130,
    ]
)
_VALUES = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(0, 700),
    st.sampled_from(["200", "404", "5", "0999", "12345", "", "abc", "503"]),
    st.text(max_size=150),
    st.booleans(),
    st.floats(allow_nan=False),
)


@st.composite
def _spans(draw: st.DrawFn) -> Span:
    span = Span(
        trace_id=draw(st.sampled_from([b"", bytes(16), b"\x01" * 16, b"\x02" * 16, b"\x03" * 15])),
        span_id=draw(st.binary(min_size=0, max_size=9)),
        parent_span_id=draw(st.sampled_from([b"", bytes(8), b"\x01" * 8, b"\x02" * 8, b"\x05" * 3])),
        name=draw(st.text(max_size=90)),
        kind=draw(st.integers(0, 7)),  # type: ignore[arg-type]
        start_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
        end_time_unix_nano=draw(st.integers(0, 2**64 - 1)),
        flags=draw(st.integers(0, 2**32 - 1)),
        status=Status(code=draw(st.integers(0, 3)), message=draw(st.text(max_size=5))),  # type: ignore[arg-type]
    )
    keys = draw(st.lists(_KEYS, max_size=6, unique=True))
    span.attributes.extend(kv(key, draw(_VALUES)) for key in keys)
    for name in draw(st.lists(st.sampled_from(["exception", "retry", "exceptio", ""]), max_size=3)):
        span.events.add(name=name, time_unix_nano=draw(st.integers(0, 10)))
    for _ in range(draw(st.integers(0, 2))):
        span.links.add(trace_id=b"\x01" * 16)
    return span


@st.composite
def random_requests(draw: st.DrawFn) -> ExportTraceServiceRequest:
    """Requests of 0-3 resources, 0-2 scopes each, 0-4 spans each, with the attributes, ids,
    names, events and statuses the readers must get right (and wrong-sized ids, odd values)."""
    request = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 3))):
        resource_spans = request.resource_spans.add()
        service = draw(st.sampled_from([None, "", "svc-a", "svc-b", 5]))
        if service is not None:
            resource_spans.resource.attributes.append(kv("service.name", service))
        for _ in range(draw(st.integers(0, 2))):
            scope = resource_spans.scope_spans.add()
            scope.scope.name = draw(st.sampled_from(["", "lib"]))
            scope.spans.extend(draw(st.lists(_spans(), max_size=4)))
            scope.schema_url = draw(st.sampled_from(["", "https://x"]))
    return request
