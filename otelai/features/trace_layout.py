"""Where the spans sit in serialised OTLP trace requests.

Walks the container levels of ``ExportTraceServiceRequest`` (opentelemetry-proto
``collector/trace/v1/trace_service.proto`` and ``trace/v1/trace.proto``) in the raw bytes:
request -> ResourceSpans -> ScopeSpans -> Span, reading each resource's ``service.name`` on the
way, and returns every span's byte range. The spans themselves are left to the vectorised
reader (:mod:`otelai.features.wire`). Byte ranges double as locators: a later stage can copy
a kept span's bytes as they are, or append a tag attribute to them, without re-encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from numpy.typing import NDArray

from otelai.features.wire import (
    FIXED32,
    FIXED64,
    LEN,
    VARINT,
    WireError,
    as_buffer,
    read_varint,
    read_varints,
    tag,
)

I64 = NDArray[np.int64]
U8 = NDArray[np.uint8]
Buffer = bytes | memoryview

# Field tags of the container messages (trace.proto, resource.proto, common.proto).
REQUEST_RESOURCE_SPANS = tag(1, LEN)
RESOURCE_SPANS_RESOURCE = tag(1, LEN)
RESOURCE_SPANS_SCOPE_SPANS = tag(2, LEN)
RESOURCE_ATTRIBUTES = tag(1, LEN)
KEY_VALUE_KEY = tag(1, LEN)
KEY_VALUE_VALUE = tag(2, LEN)
ANY_VALUE_STRING = tag(1, LEN)
SCOPE_SPANS_SPANS = tag(2, LEN)
SERVICE_NAME = b"service.name"
SERVICE_NAME_PREFIX = bytes([KEY_VALUE_KEY, len(SERVICE_NAME)]) + SERVICE_NAME


@dataclass(frozen=True, slots=True)
class SpanLayout:
    """Byte ranges and structural positions of the spans of several requests.

    ``start``/``end`` are offsets in the concatenation of the requests (``offset_in_request``
    subtracts the request's own start); ``resource``, ``scope`` and ``index`` are the span's
    position ``request.resource_spans[resource].scope_spans[scope].spans[index]``.
    ``resource_service`` holds, per span, the index of its resource in ``services``.
    """

    start: I64
    end: I64
    request: I64
    resource: I64
    scope: I64
    index: I64
    request_start: I64  # offset of each request in the concatenation
    services: tuple[str, ...]  # service.name of every resource walked, "" when absent
    resource_service: I64


class _Collector:
    """Per-scope results of the walk, combined once for the whole batch."""

    def __init__(self) -> None:
        self.lengths: list[I64] = []  # span lengths of each scope, from the skeleton parse
        self.first: list[int] = []  # where each scope's first span field starts (batch offset)
        self.bounds: list[tuple[int, int]] = []  # each scope's byte range, for a re-walk
        self.scope_request: list[int] = []
        self.scope_resource: list[int] = []
        self.scope_position: list[int] = []
        self.scope_service: list[int] = []
        self.services: list[str] = []


def _skeleton_class() -> Any:
    """A message type that reads an ExportTraceServiceRequest down to its spans, as bytes.

    Wire-compatible with the real one: other fields stay unknown fields. upb parses it in C,
    and the lengths of the span byte strings give every span's place in the request without
    a Python loop over the spans (that loop cost about 0.8 us a span here).
    """
    file = descriptor_pb2.FileDescriptorProto(
        name="otelai_span_skeleton.proto", package="otelai.skeleton", syntax="proto3"
    )
    field = descriptor_pb2.FieldDescriptorProto
    for name, field_name, number, type_name in (
        ("Request", "resource_spans", 1, "ResourceSpans"),
        ("ResourceSpans", "scope_spans", 2, "ScopeSpans"),
        ("ScopeSpans", "spans", 2, ""),
    ):
        message = file.message_type.add(name=name)
        added = message.field.add(name=field_name, number=number, label=field.LABEL_REPEATED)
        if type_name:
            added.type, added.type_name = field.TYPE_MESSAGE, f".otelai.skeleton.{type_name}"
        else:
            added.type = field.TYPE_BYTES
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("otelai.skeleton.Request"))


_Skeleton = _skeleton_class()


def locate_spans(payloads: list[bytes]) -> tuple[U8, SpanLayout]:
    """The concatenated payloads (see :func:`~otelai.features.wire.as_buffer`) and their spans.

    Raises :class:`~otelai.features.wire.WireError` when a request is malformed.
    """
    collector = _Collector()
    offsets = np.zeros(len(payloads), dtype=np.int64)
    base = 0
    for number, payload in enumerate(payloads):
        offsets[number] = base
        try:
            _walk_request(payload, _Skeleton.FromString(payload), base, number, collector)
        except (IndexError, DecodeError) as exc:
            raise WireError(f"malformed request: {exc}") from exc
        base += len(payload)
    buf = as_buffer(payloads)
    sizes = np.asarray([part.size for part in collector.lengths], dtype=np.int64)
    start, end = _tile_spans(buf, collector, sizes)
    first = np.cumsum(sizes) - sizes
    index = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(first, sizes)

    def per_span(values: list[int]) -> I64:
        return np.repeat(np.asarray(values, dtype=np.int64), sizes)

    return buf, SpanLayout(
        start=start,
        end=end,
        request=per_span(collector.scope_request),
        resource=per_span(collector.scope_resource),
        scope=per_span(collector.scope_position),
        index=index,
        request_start=offsets,
        services=tuple(collector.services),
        resource_service=per_span(collector.scope_service),
    )


def _walk_request(data: bytes, skeleton: Any, base: int, number: int, out: _Collector) -> None:
    resources = [
        (start, stop) for key, start, stop in _fields(data, 0, len(data)) if key == REQUEST_RESOURCE_SPANS
    ]
    if len(resources) != len(skeleton.resource_spans):
        raise WireError("resource count differs from the skeleton parse")
    for resource, ((start, stop), parsed) in enumerate(zip(resources, skeleton.resource_spans, strict=True)):
        service = ""
        scopes = []
        for key, value_start, value_stop in _fields(data, start, stop):
            if key == RESOURCE_SPANS_RESOURCE:
                service = _service_name(data, value_start, value_stop) or service
            elif key == RESOURCE_SPANS_SCOPE_SPANS:
                scopes.append((value_start, value_stop))
        out.services.append(service)
        if len(scopes) != len(parsed.scope_spans):
            raise WireError("scope count differs from the skeleton parse")
        for position, ((scope_start, scope_stop), scope) in enumerate(
            zip(scopes, parsed.scope_spans, strict=True)
        ):
            spans = scope.spans
            out.lengths.append(np.fromiter(map(len, spans), dtype=np.int64, count=len(spans)))
            first = scope_start
            while first < scope_stop and data[first] != SCOPE_SPANS_SPANS:
                key, first = read_varint(data, first)
                first = _skip(data, first, key & 7)
            out.first.append(base + first)
            out.bounds.append((base + scope_start, base + scope_stop))
            out.scope_request.append(number)
            out.scope_resource.append(resource)
            out.scope_position.append(position)
            out.scope_service.append(len(out.services) - 1)


def _tile_spans(buf: U8, found: _Collector, sizes: I64) -> tuple[I64, I64]:
    """Byte ranges of all spans, given each scope's span lengths in order.

    Encoders write a ScopeSpans as ``scope``, every span, then ``schema_url``; so a scope's
    spans tile one stretch of it, from its first span field. Every computed header is checked
    against the bytes (tag and length prefix), which makes this an exact parse of that stretch;
    a scope laid out otherwise is walked field by field.
    """
    lengths = np.concatenate(found.lengths) if found.lengths else np.zeros(0, dtype=np.int64)
    prefix = np.searchsorted(_VARINT_LIMITS, lengths, side="right") + 1
    record = np.cumsum(prefix + 1 + lengths)
    before = np.repeat(np.concatenate(([0], record))[np.cumsum(sizes) - sizes], sizes)
    ends = np.repeat(np.asarray(found.first, dtype=np.int64), sizes) + record - before
    starts = ends - lengths
    headers = starts - prefix - 1
    scope_of = np.repeat(np.arange(sizes.size), sizes)
    encoded, after = read_varints(buf, headers + 1)
    bad = (
        (buf.take(headers) != SCOPE_SPANS_SPANS) | (encoded != lengths.astype(np.uint64)) | (after != starts)
    )
    broken = set(np.unique(scope_of[bad]).tolist())
    last = np.cumsum(sizes) - 1
    data = buf.data.cast("B")
    for scope, (_, stop) in enumerate(found.bounds):
        if scope not in broken and sizes[scope]:
            tail = int(ends[last[scope]])
            if tail > stop or any(key == SCOPE_SPANS_SPANS for key, _, _ in _fields(data, tail, stop)):
                broken.add(scope)
    for scope in sorted(broken):
        start, stop = found.bounds[scope]
        spans = [(a, b) for key, a, b in _fields(data, start, stop) if key == SCOPE_SPANS_SPANS]
        if [b - a for a, b in spans] != found.lengths[scope].tolist():
            raise WireError("spans differ from the skeleton parse")
        rows = slice(int(last[scope] - sizes[scope] + 1), int(last[scope] + 1))
        starts[rows] = [a for a, _ in spans]
        ends[rows] = [b for _, b in spans]
    return starts, ends


_VARINT_LIMITS = np.array([1 << bits for bits in range(7, 63, 7)], dtype=np.int64)  # lengths < 2**63


def _service_name(data: bytes, pos: int, end: int) -> str:
    """The string ``service.name`` attribute of a Resource, or ``""``.

    Encoders write a KeyValue's key first, so a prefix test finds the attribute; only a match,
    or a KeyValue laid out otherwise, is parsed.
    """
    name = ""
    while pos < end:
        key = data[pos]
        length = data[pos + 1]
        start = pos + 2
        if key >= 0x80 or length >= 0x80 or key & 7 != LEN:
            key, start = read_varint(data, pos)
            if key & 7 != LEN:
                pos = _skip(data, start, key & 7)
                continue
            length, start = read_varint(data, start)
        pos = start + length
        if pos > end:
            raise WireError("an attribute runs past the end of its resource")
        maybe = data.startswith(SERVICE_NAME_PREFIX, start) or data[start] != KEY_VALUE_KEY
        if key == RESOURCE_ATTRIBUTES and maybe and _key(data, start, pos) == SERVICE_NAME:
            name = _string_value(data, start, pos)
    return name


def _skip(data: Buffer, pos: int, wire_type: int) -> int:
    if wire_type == VARINT:
        return read_varint(data, pos)[1]
    if wire_type == FIXED64:
        return pos + 8
    if wire_type == FIXED32:
        return pos + 4
    if wire_type == LEN:
        length, pos = read_varint(data, pos)
        return pos + length
    raise WireError(f"unsupported wire type {wire_type}")


def _fields(data: Buffer, pos: int, end: int) -> list[tuple[int, int, int]]:
    """``(tag, value start, value end)`` of each field in ``data[pos:end]`` (few fields)."""
    found = []
    while pos < end:
        key, pos = read_varint(data, pos)
        if key & 7 == LEN:
            length, pos = read_varint(data, pos)
            stop = pos + length
        else:
            stop = _skip(data, pos, key & 7)
        if stop > end or key >> 3 == 0:
            raise WireError("malformed container message")
        found.append((key, pos, stop))
        pos = stop
    return found


def _key(data: Buffer, pos: int, end: int) -> bytes | None:
    keys = [bytes(data[a:b]) for k, a, b in _fields(data, pos, end) if k == KEY_VALUE_KEY]
    return keys[-1] if keys else None


def _string_value(data: bytes, pos: int, end: int) -> str:
    """The ``string_value`` of a KeyValue's value, or ``""`` for any other type."""
    text = ""
    for key, start, stop in _fields(data, pos, end):
        if key == KEY_VALUE_VALUE:
            strings = [data[a:b] for k, a, b in _fields(data, start, stop) if k == ANY_VALUE_STRING]
            text = strings[-1].decode("utf-8", errors="replace") if strings else ""
    return text
