"""The compiled request validator against upb: whatever it vouches for, upb accepts and counts alike.

upb (``request_type.FromString``) is the oracle throughout, for traces and logs. Three kinds of test:
realistic requests, where the validator must answer with upb's counts (the fast path is
really taken); hand-made edge cases, where both answers are pinned (what upb does was found
by experiment and is asserted here too, so a protobuf upgrade that changes it shows up); and
a seeded fuzz of mutated requests, where any answer of the validator must be sound.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    EntityRef,
    InstrumentationScope,
    KeyValue,
    KeyValueList,
)
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otelai.receiver.wire_check import (
    MAX_DEPTH,
    PATHS,
    Counts,
    check,
    field_table,
    key_value_row,
    message_types,
)
from otelai.signals import Signal, count_items

from .otlp_data import sdk_telemetry, trace_request

CHECKED = [Signal.TRACES, Signal.LOGS]


def upb_counts(data: bytes, signal: Signal = Signal.TRACES) -> Counts | None:
    """upb's verdict: the counts when it accepts ``data``, None when it refuses it."""
    try:
        request = signal.spec.request_type.FromString(data)
    except DecodeError:
        return None
    return Counts(count_items(signal, request), len(getattr(request, PATHS[signal][1][0])))


def assert_sound(data: bytes, signal: Signal = Signal.TRACES) -> Counts | None:
    """The validator's answer, after checking that an OK answer is upb's."""
    answer = check(data, signal)
    if answer is not None:
        assert answer == upb_counts(data, signal), f"validator said {answer} for {signal} {data.hex()}"
    return answer


# --- realistic requests ------------------------------------------------------------------

_TEXTS = [
    "",
    "GET /api/cart",
    "ünïcödé ✓",
    "日本語のスパン",
    "emoji 😀 ok",
    "x" * 17,
    "y" * 200,
    "z" * 20_000,
]


def _text(rng: random.Random) -> str:
    return rng.choice(_TEXTS) + str(rng.randrange(10 ** rng.randrange(1, 12)))


def _any_value(rng: random.Random, depth: int) -> AnyValue:
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return AnyValue(string_value=_text(rng))
    if kind == 1:
        return AnyValue(bool_value=rng.random() < 0.5)
    if kind == 2:
        return AnyValue(
            int_value=rng.choice([0, 1, -1, 200, 2**63 - 1, -(2**63), rng.randrange(-(10**12), 10**12)])
        )
    if kind == 3:
        return AnyValue(double_value=rng.choice([0.0, -1.5, 1e300, float("inf"), rng.random()]))
    if kind == 4:
        return AnyValue(bytes_value=rng.randbytes(rng.randrange(40)))
    if kind == 5:
        return AnyValue(string_value_strindex=rng.randrange(-5, 1000))
    if kind == 6:
        return AnyValue(
            array_value=ArrayValue(values=[_any_value(rng, depth + 1) for _ in range(rng.randrange(4))])
        )
    if kind == 7:
        return AnyValue(kvlist_value=KeyValueList(values=_attributes(rng, depth + 1, 3)))
    return AnyValue()  # no value set


def _attributes(rng: random.Random, depth: int = 0, most: int = 6) -> list[KeyValue]:
    attributes = []
    for _ in range(rng.randrange(most)):
        if rng.random() < 0.05:
            attributes.append(KeyValue(key_strindex=rng.randrange(100), value=_any_value(rng, depth)))
        elif rng.random() < 0.05:
            attributes.append(KeyValue(key=_text(rng)))  # no value
        else:
            attributes.append(KeyValue(key=_text(rng), value=_any_value(rng, depth)))
    return attributes


def _span(rng: random.Random) -> Span:
    span = Span(
        trace_id=rng.randbytes(16),
        span_id=rng.randbytes(8),
        parent_span_id=rng.choice([b"", rng.randbytes(8)]),
        trace_state=rng.choice(["", "vendor=abc,other=ünï"]),
        flags=rng.choice([0, 1, 0x300, 2**32 - 1]),
        name=_text(rng),
        kind=cast(Any, rng.randrange(6)),
        start_time_unix_nano=rng.randrange(2**64),
        end_time_unix_nano=rng.randrange(2**64),
        attributes=_attributes(rng, most=12),
        dropped_attributes_count=rng.choice([0, 3, 2**32 - 1]),
        dropped_events_count=rng.randrange(3),
        dropped_links_count=rng.randrange(3),
    )
    for _ in range(rng.randrange(3)):
        span.events.add(
            time_unix_nano=rng.randrange(2**64),
            name=_text(rng),
            attributes=_attributes(rng),
            dropped_attributes_count=rng.randrange(2),
        )
    for _ in range(rng.randrange(3)):
        span.links.add(
            trace_id=rng.randbytes(16),
            span_id=rng.randbytes(8),
            trace_state=_text(rng),
            attributes=_attributes(rng),
            dropped_attributes_count=rng.randrange(2),
            flags=rng.randrange(2**32),
        )
    if rng.random() < 0.7:
        span.status.CopyFrom(Status(message=rng.choice(["", _text(rng)]), code=cast(Any, rng.randrange(3))))
    return span


def rich_request(seed: int, resources: int = 3, scopes: int = 3, spans: int = 6) -> ExportTraceServiceRequest:
    """Every field of every message type, every AnyValue kind, nested values, non-ASCII text."""
    rng = random.Random(seed)
    request = ExportTraceServiceRequest()
    for _ in range(rng.randrange(1, resources + 1)):
        resource = Resource(attributes=_attributes(rng), dropped_attributes_count=rng.randrange(2))
        for _ in range(rng.randrange(3)):
            resource.entity_refs.append(
                EntityRef(
                    schema_url=_text(rng),
                    type=_text(rng),
                    id_keys=[_text(rng) for _ in range(rng.randrange(3))],
                    description_keys=[_text(rng) for _ in range(rng.randrange(3))],
                )
            )
        resource_spans = ResourceSpans(
            resource=resource, schema_url=rng.choice(["", "https://opentelemetry.io/s/1"])
        )
        for _ in range(rng.randrange(scopes + 1)):
            scope = ScopeSpans(
                scope=InstrumentationScope(
                    name=_text(rng), version="1.0", attributes=_attributes(rng), dropped_attributes_count=1
                ),
                spans=[_span(rng) for _ in range(rng.randrange(spans + 1))],
                schema_url=_text(rng),
            )
            resource_spans.scope_spans.append(scope)
        request.resource_spans.append(resource_spans)
    return request


def rich_logs_request(
    seed: int, resources: int = 3, scopes: int = 3, records: int = 6
) -> ExportLogsServiceRequest:
    """Every field of a log record, bodies of every AnyValue kind."""
    rng = random.Random(seed)
    request = ExportLogsServiceRequest()
    for _ in range(rng.randrange(1, resources + 1)):
        resource_logs = ResourceLogs(resource=Resource(attributes=_attributes(rng)), schema_url=_text(rng))
        for _ in range(rng.randrange(scopes + 1)):
            scope = ScopeLogs(scope=InstrumentationScope(name=_text(rng)), schema_url=_text(rng))
            for _ in range(rng.randrange(records + 1)):
                record = LogRecord(
                    time_unix_nano=rng.randrange(2**64),
                    observed_time_unix_nano=rng.randrange(2**64),
                    severity_number=cast(Any, rng.randrange(25)),
                    severity_text=rng.choice(["", "WARN", "ошибка"]),
                    attributes=_attributes(rng),
                    dropped_attributes_count=rng.randrange(2),
                    flags=rng.randrange(2**32),
                    trace_id=rng.choice([b"", rng.randbytes(16)]),
                    span_id=rng.choice([b"", rng.randbytes(8)]),
                    event_name=rng.choice(["", _text(rng)]),
                )
                if rng.random() < 0.9:
                    record.body.CopyFrom(_any_value(rng, 0))
                scope.log_records.append(record)
            resource_logs.scope_logs.append(scope)
        request.resource_logs.append(resource_logs)
    return request


def _rich(signal: Signal, seed: int, size: int = 3) -> bytes:
    if signal is Signal.LOGS:
        return rich_logs_request(seed, resources=size, scopes=size, records=2 * size).SerializeToString()
    return rich_request(seed, resources=size, scopes=size, spans=2 * size).SerializeToString()


@pytest.mark.parametrize("signal", CHECKED)
def test_every_message_type_of_the_installed_protos_is_in_the_table(signal: Signal) -> None:
    names = {message.full_name for message in message_types(PATHS[signal][0])}
    expected = ["KeyValueList", "ArrayValue", "InstrumentationScope", "EntityRef"]
    expected += ["Span.Event", "Span.Link", "Status"] if signal is Signal.TRACES else ["LogRecord"]
    for name in expected:
        assert any(full_name.endswith(name) for full_name in names), name
    table = field_table(signal)
    assert table.shape[0] == len(names)
    assert key_value_row(signal, table) >= 0  # the attribute shortcut is on


def test_metrics_are_not_checked() -> None:
    with pytest.raises(KeyError):
        check(b"", Signal.METRICS)


@pytest.mark.parametrize("signal", CHECKED)
@pytest.mark.parametrize("seed", range(25))
def test_rich_requests_are_ok_with_upb_counts(signal: Signal, seed: int) -> None:
    data = _rich(signal, seed)
    answer = check(data, signal)
    assert answer is not None, "the validator must vouch for a valid ordinary request"
    assert answer == upb_counts(data, signal)


def test_large_request_is_ok() -> None:
    request = ExportTraceServiceRequest()
    for seed in range(4):
        request.MergeFrom(rich_request(seed, resources=4, scopes=2, spans=40))
    data = request.SerializeToString()
    assert len(data) > 100_000
    assert check(data) == upb_counts(data)
    assert check(data) is not None


@pytest.mark.parametrize("signal", CHECKED)
def test_sdk_encoded_request_is_ok(signal: Signal) -> None:
    _, data, items = sdk_telemetry(signal)  # the OpenTelemetry Python SDK's encoders
    assert check(data, signal) == upb_counts(data, signal) == Counts(items, 1)


@pytest.mark.parametrize("spans", [0, 1, 10, 300])
def test_hand_built_requests_are_ok(spans: int) -> None:
    data = trace_request(spans=spans, attribute_size=spans)
    assert check(data) == upb_counts(data) == Counts(spans, 1)


def test_empty_request_is_ok_and_empty() -> None:
    assert check(b"") == check(b"", Signal.LOGS) == Counts(0, 0)
    traces = ExportTraceServiceRequest(resource_spans=[ResourceSpans()]).SerializeToString()
    logs = ExportLogsServiceRequest(resource_logs=[ResourceLogs()]).SerializeToString()
    assert check(traces) == check(logs, Signal.LOGS) == Counts(0, 1)


def test_memoryview_and_bytearray_are_read_in_place() -> None:
    data = rich_request(1).SerializeToString()
    assert check(bytearray(data)) == check(memoryview(data)) == upb_counts(data)


# --- edge cases, with upb's behaviour pinned -----------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _len(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


def _in_span(payload: bytes) -> bytes:
    """``payload`` as the fields of the one span of a request."""
    return _len(1, _len(2, _len(2, payload)))


def _in_resource_spans(payload: bytes) -> bytes:
    return _len(1, payload)


def _nested_arrays(levels: int) -> bytes:
    """A request whose one resource attribute is ``levels`` arrays deep around a string."""
    value = _len(1, b"x")
    for _ in range(levels):
        value = _len(5, _len(1, value))  # AnyValue{array_value{values: value}}
    return _len(1, _len(1, _len(1, _len(1, b"k") + _len(2, value))))


# (bytes, the validator's answer, upb's answer)
_OK1 = Counts(0, 1)
_SPAN = Counts(1, 1)
EDGE_CASES: dict[str, tuple[bytes, Counts | None, Counts | None]] = {
    "ascii name": (_in_span(_len(5, b"GET /")), _SPAN, _SPAN),
    "two-byte utf-8": (_in_span(_len(5, "ünï".encode())), _SPAN, _SPAN),
    "four-byte utf-8": (_in_span(_len(5, "😀".encode() * 9)), _SPAN, _SPAN),
    "nul in a string": (_in_span(_len(5, b"a\x00b")), _SPAN, _SPAN),
    "U+10FFFF": (_in_span(_len(5, b"\xf4\x8f\xbf\xbf")), _SPAN, _SPAN),
    "invalid byte ff": (_in_span(_len(5, b"abc\xff")), None, None),
    "invalid in a long string": (_in_span(_len(5, b"a" * 40 + b"\xfe" + b"b" * 40)), None, None),
    "lone continuation": (_in_span(_len(5, b"\x80")), None, None),
    "overlong c0 80": (_in_span(_len(5, b"\xc0\x80")), None, None),
    "overlong c1 bf": (_in_span(_len(5, b"\xc1\xbf")), None, None),
    "overlong e0 80 80": (_in_span(_len(5, b"\xe0\x80\x80")), None, None),
    "overlong f0 80 80 80": (_in_span(_len(5, b"\xf0\x80\x80\x80")), None, None),
    "surrogate ed a0 80": (_in_span(_len(5, b"\xed\xa0\x80")), None, None),
    "past U+10FFFF": (_in_span(_len(5, b"\xf4\x90\x80\x80")), None, None),
    "lead f5": (_in_span(_len(5, b"\xf5\x80\x80\x80")), None, None),
    "truncated sequence": (_in_span(_len(5, b"abcdefgh\xe2\x82")), None, None),
    "invalid utf-8 in an attribute key": (
        _in_span(_len(9, _len(1, b"k\xff") + _len(2, _len(1, b"v")))),
        None,
        None,
    ),
    "invalid utf-8 in an attribute value": (
        _in_span(_len(9, _len(1, b"key") + _len(2, _len(1, b"v\xc3")))),
        None,
        None,
    ),
    "invalid utf-8 deep in an array": (
        _len(1, _len(1, _len(1, _len(2, _len(5, _len(1, _len(1, b"\xff"))))))),
        None,
        None,
    ),
    "invalid utf-8 in an entity ref id key": (
        _in_resource_spans(_len(1, _len(3, _len(3, b"\xff")))),
        None,
        None,
    ),
    "not utf-8 in bytes fields": (_in_span(_len(1, b"\xff" * 16) + _len(2, b"\xc0" * 8)), _SPAN, _SPAN),
    "not utf-8 in bytes_value": (_in_span(_len(9, _len(1, b"k") + _len(2, _len(7, b"\xff")))), _SPAN, _SPAN),
    "not utf-8 in an unknown field": (_in_resource_spans(_len(20, b"\xff")), _OK1, _OK1),
    # A known field number with another wire type: upb keeps it as an unknown field.
    "scope_spans as a varint": (_in_resource_spans(_tag(2, 0) + _varint(5)), None, _OK1),
    "schema_url as fixed32": (_in_resource_spans(_tag(3, 5) + b"abcd"), None, _OK1),
    "resource_spans as a varint": (_tag(1, 0) + _varint(1), None, Counts(0, 0)),
    "span kind as bytes": (_in_span(_len(6, b"\x01")), None, _SPAN),
    "start time as a varint": (_in_span(_tag(7, 0) + _varint(5)), None, _SPAN),
    "unknown fields of every wire type": (
        _in_span(_tag(100, 0) + _varint(2**64 - 1) + _tag(101, 1) + bytes(8) + _tag(102, 5) + bytes(4))
        + _len(103, b"\xff\xfe")
        + _tag(2**29 - 1, 0)
        + b"\x01",
        _SPAN,
        _SPAN,
    ),
    "unknown group": (_tag(100, 3) + _tag(101, 0) + b"\x01" + _tag(100, 4), None, Counts(0, 0)),
    "unterminated group": (_tag(100, 3) + _tag(101, 0) + b"\x01", None, None),
    "end group alone": (_tag(100, 4), None, None),
    "wire type 6": (_tag(100, 6), None, None),
    "wire type 7": (_tag(100, 7), None, None),
    "field number 0": (_tag(0, 0) + b"\x01", None, None),
    "tag of five bytes": (b"\xa0\x86\x80\x80\x00\x01", Counts(0, 0), Counts(0, 0)),
    "tag of six bytes": (b"\xa0\x86\x80\x80\x80\x00\x01", None, None),
    "tag past 32 bits": (b"\xa0\x86\x80\x80\x7f\x01", None, None),
    "varint of ten bytes": (_tag(100, 0) + b"\xff" * 9 + b"\x01", Counts(0, 0), Counts(0, 0)),
    "varint of ten bytes past 64 bits": (_tag(100, 0) + b"\xff" * 9 + b"\x7f", Counts(0, 0), Counts(0, 0)),
    "varint of eleven bytes": (_tag(100, 0) + b"\xff" * 10 + b"\x01", None, None),
    "enum of ten bytes": (_in_span(_tag(6, 0) + b"\xff" * 9 + b"\x01"), _SPAN, _SPAN),
    "bool of ten bytes": (
        _in_span(_len(9, _len(1, b"k") + _len(2, _tag(2, 0) + b"\xff" * 9 + b"\x01"))),
        _SPAN,
        _SPAN,
    ),
    "truncated varint": (_tag(100, 0) + b"\xff", None, None),
    "truncated fixed64": (_in_span(_tag(7, 1) + bytes(7)), None, None),
    "truncated fixed32": (_tag(100, 5) + bytes(3), None, None),
    "truncated length": (_tag(100, 2) + b"\x80", None, None),
    "length past the end": (_tag(100, 2) + _varint(5) + b"ab", None, None),
    "length past the parent": (_in_resource_spans(_tag(3, 2) + _varint(5) + b"ab") + b"cde", None, None),
    "length of 2**31": (_tag(1, 2) + _varint(2**31), None, None),
    "length in ten bytes": (_tag(1, 2) + b"\xff" * 9 + b"\x01", None, None),
    "length with a padded varint": (_tag(1, 2) + b"\x80\x00", _OK1, _OK1),
    "string value then int value (oneof)": (
        _in_span(_len(9, _len(1, b"k") + _len(2, _len(1, b"v") + _tag(3, 0) + b"\x05"))),
        _SPAN,
        _SPAN,
    ),
    "two resources in one ResourceSpans": (_in_resource_spans(_len(1, b"") + _len(1, b"")), _OK1, _OK1),
    "two keys in one attribute": (_in_span(_len(9, _len(1, b"a") + _len(1, b"b\xff"))), None, None),
    "value before key": (_in_span(_len(9, _len(2, _len(1, b"v")) + _len(1, b"k"))), _SPAN, _SPAN),
    "arrays at the validator's depth": (_nested_arrays((MAX_DEPTH - 4) // 2), _OK1, _OK1),
    "arrays past the validator's depth": (_nested_arrays((MAX_DEPTH - 4) // 2 + 1), None, _OK1),
    "arrays at upb's depth": (_nested_arrays(48), None, _OK1),
    "arrays past upb's depth": (_nested_arrays(49), None, None),
}


@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_cases(name: str) -> None:
    data, expected, upb = EDGE_CASES[name]
    assert upb_counts(data) == upb, "upb's behaviour changed: revisit the validator"
    assert check(data) == expected


def _in_log_record(payload: bytes) -> bytes:
    return _len(1, _len(2, _len(2, payload)))


_RECORD = Counts(1, 1)
LOG_EDGE_CASES: dict[str, tuple[bytes, Counts | None, Counts | None]] = {
    "string body": (_in_log_record(_len(5, _len(1, "ünï".encode()))), _RECORD, _RECORD),
    "invalid utf-8 in the body": (_in_log_record(_len(5, _len(1, b"a\xff"))), None, None),
    "invalid utf-8 in severity_text": (_in_log_record(_len(3, b"\xc0\x80")), None, None),
    "invalid utf-8 in event_name": (_in_log_record(_len(12, b"\xed\xa0\x80")), None, None),
    "not utf-8 in trace_id": (_in_log_record(_len(9, b"\xff" * 16)), _RECORD, _RECORD),
    "severity as bytes": (_in_log_record(_len(2, b"\x01")), None, _RECORD),
    "flags as a varint": (_in_log_record(_tag(8, 0) + b"\x01"), None, _RECORD),
    "malformed body": (_in_log_record(_len(5, b"\xff")), None, None),
    "truncated record": (_in_log_record(_tag(1, 1) + bytes(4)), None, None),
}


@pytest.mark.parametrize("name", LOG_EDGE_CASES)
def test_log_edge_cases(name: str) -> None:
    data, expected, upb = LOG_EDGE_CASES[name]
    assert upb_counts(data, Signal.LOGS) == upb, "upb's behaviour changed: revisit the validator"
    assert check(data, Signal.LOGS) == expected


def test_strings_at_both_ends_of_the_buffer() -> None:
    """Short strings within eight bytes of the end are read byte by byte, not past the end."""
    for text in (b"", b"a", b"abcdefg", b"abcdefgh", b"\xc3\xa9", b"abc\xff"):
        data = _in_resource_spans(_len(3, text))
        assert assert_sound(data) == upb_counts(data)


# --- seeded fuzz ------------------------------------------------------------------------


@dataclass
class Node:
    """One field as found on the wire; a known sub-message keeps its fields, not its bytes."""

    number: int
    wire_type: int
    value: int | bytes | list[Node]
    descriptor: FieldDescriptor | None = None
    raw_tag: bytes = b""  # as received (a padded tag stays padded); empty: encode afresh


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos, shift = pos + 1, shift + 7
        if byte < 0x80:
            return value, pos


def decode_tree(data: bytes, message: Descriptor) -> list[Node]:
    """The fields of a valid message, known sub-messages decoded as the descriptors say, to mutate."""
    nodes, pos = [], 0
    while pos < len(data):
        start = pos
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        known = message.fields_by_number.get(number)
        value: int | bytes | list[Node]
        if wire_type == 0:
            value, pos = _read_varint(data, pos)
        elif wire_type == 1:
            value, pos = data[pos : pos + 8], pos + 8
        elif wire_type == 5:
            value, pos = data[pos : pos + 4], pos + 4
        else:
            length, pos = _read_varint(data, pos)
            value, pos = data[pos : pos + length], pos + length
            if known is not None and known.message_type is not None:
                value = decode_tree(value, known.message_type)
        nodes.append(Node(number, wire_type, value, known, data[start : start + len(_varint(tag))]))
    return nodes


def encode_tree(nodes: list[Node]) -> bytes:
    out = bytearray()
    for node in nodes:
        out += node.raw_tag or _tag(node.number, node.wire_type)
        if isinstance(node.value, int):
            out += _varint(node.value)
        elif isinstance(node.value, bytes) and node.wire_type in (1, 5):
            out += node.value
        else:
            payload = node.value if isinstance(node.value, bytes) else encode_tree(node.value)
            out += _varint(len(payload)) + payload
    return bytes(out)


def _all_nodes(nodes: list[Node]) -> list[Node]:
    found = []
    for node in nodes:
        found.append(node)
        if isinstance(node.value, list):
            found += _all_nodes(node.value)
    return found


def _messages(nodes: list[Node]) -> list[list[Node]]:
    """Every field list (the request's and every known sub-message's)."""
    lists = [nodes]
    for node in nodes:
        if isinstance(node.value, list):
            lists += _messages(node.value)
    return lists


def _strings(nodes: list[Node]) -> list[Node]:
    return [
        node
        for node in _all_nodes(nodes)
        if node.descriptor is not None
        and node.descriptor.type == FieldDescriptor.TYPE_STRING
        and node.wire_type == 2
    ]


_BAD_UTF8 = [
    b"\xff",
    b"\x80",
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xe0\x9f\xbf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
]
_GOOD_UTF8 = ["é", "€", "😀", "\u07ff", "\ud7ff", "\ue000", "\U0010ffff"]


def _with_bad_utf8(rng: random.Random, nodes: list[Node]) -> bool:
    strings = _strings(nodes)
    if not strings:
        return False
    node = rng.choice(strings)
    text = node.value
    assert isinstance(text, bytes)
    at = rng.randrange(len(text) + 1)
    node.value = text[:at] + rng.choice(_BAD_UTF8) + text[at:]
    return True


def _with_good_utf8(rng: random.Random, nodes: list[Node]) -> bool:
    strings = _strings(nodes)
    if not strings:
        return False
    node = rng.choice(strings)
    text = node.value
    assert isinstance(text, bytes)
    node.value = text + rng.choice(_GOOD_UTF8).encode() * rng.randrange(1, 12)
    return True


def _with_wrong_wire_type(rng: random.Random, nodes: list[Node]) -> bool:
    known = [node for node in _all_nodes(nodes) if node.descriptor is not None]
    node = rng.choice(known)
    node.raw_tag = b""
    node.wire_type = rng.choice([w for w in (0, 1, 2, 5) if w != node.wire_type])
    values: dict[int, int | bytes] = {
        0: rng.randrange(2**64),
        1: rng.randbytes(8),
        2: rng.randbytes(rng.randrange(9)),
        5: rng.randbytes(4),
    }
    node.value = values[node.wire_type]
    return True


def _with_unknown_field(rng: random.Random, nodes: list[Node]) -> bool:
    target = rng.choice(_messages(nodes))
    number = rng.choice([17, 18, 99, 1000, 2**29 - 1])
    wire_type = rng.choice([0, 1, 2, 5])
    values: dict[int, int | bytes] = {
        0: rng.randrange(2**64),
        1: rng.randbytes(8),
        2: rng.choice([rng.randbytes(rng.randrange(30)), b"\xff\xfe", b""]),
        5: rng.randbytes(4),
    }
    value = values[wire_type]
    target.insert(rng.randrange(len(target) + 1), Node(number, wire_type, value))
    return True


def _with_duplicate(rng: random.Random, nodes: list[Node]) -> bool:
    target = rng.choice([message for message in _messages(nodes) if message])
    node = rng.choice(target)
    target.insert(
        rng.randrange(len(target) + 1), Node(node.number, node.wire_type, node.value, node.descriptor)
    )
    return True


def _with_nesting(rng: random.Random, nodes: list[Node]) -> bool:
    any_values = [
        node
        for node in _all_nodes(nodes)
        if node.descriptor is not None
        and node.descriptor.message_type is not None
        and node.descriptor.message_type.name == "AnyValue"
    ]
    if not any_values:
        return False
    node = rng.choice(any_values)
    for _ in range(rng.randrange(1, 30)):
        inner = list(node.value) if isinstance(node.value, list) else []
        wrapper = Node(1, 2, inner)  # ArrayValue.values
        node.value = [Node(5, 2, [wrapper])]  # AnyValue.array_value
    return True


_TREE_MUTATIONS: list[Callable[[random.Random, list[Node]], bool]] = [
    _with_bad_utf8,
    _with_good_utf8,
    _with_wrong_wire_type,
    _with_unknown_field,
    _with_duplicate,
    _with_nesting,
]


def _byte_mutation(rng: random.Random, data: bytes, lengths: list[int]) -> bytes:
    """A blind mutation of the bytes; ``lengths`` are offsets of length prefixes."""
    kind = rng.randrange(7)
    at = rng.randrange(max(1, len(data)))
    if kind == 0:  # a byte overwritten
        return data[:at] + bytes([rng.randrange(256)]) + data[at + 1 :]
    if kind == 1:  # a bit flipped
        return data[:at] + bytes([data[at] ^ (1 << rng.randrange(8))]) + data[at + 1 :] if data else data
    if kind == 2:  # truncated
        return data[:at]
    if kind == 3:  # bytes inserted
        return data[:at] + rng.randbytes(rng.randrange(1, 5)) + data[at:]
    if kind == 4:  # bytes deleted
        return data[:at] + data[at + rng.randrange(1, 5) :]
    lengths = [offset for offset in lengths if offset < len(data)]  # data may be mutated already
    if kind == 5 and lengths:  # a length prefix off by a little, or anything
        at = rng.choice(lengths)
        byte = rng.choice([data[at] + rng.choice([-2, -1, 1, 2]), rng.randrange(256)]) % 256
        return data[:at] + bytes([byte]) + data[at + 1 :]
    # a stretch copied over another place
    start, size = rng.randrange(max(1, len(data))), rng.randrange(1, 24)
    return data[:at] + data[start : start + size] + data[at + size :]


def _length_offsets(data: bytes, nodes: list[Node], base: int = 0) -> list[int]:
    """Offsets of the length prefixes of LEN fields (following encode_tree's layout)."""
    offsets, pos = [], base
    for node in nodes:
        pos += len(node.raw_tag or _tag(node.number, node.wire_type))
        if isinstance(node.value, int):
            pos += len(_varint(node.value))
        elif isinstance(node.value, bytes) and node.wire_type in (1, 5):
            pos += len(node.value)
        else:
            payload = node.value if isinstance(node.value, bytes) else encode_tree(node.value)
            offsets.append(pos)
            pos += len(_varint(len(payload)))
            if isinstance(node.value, list):
                offsets += _length_offsets(data, node.value, pos)
            pos += len(payload)
    return offsets


Seeds = dict[Signal, list[tuple[bytes, list[int]]]]


@pytest.fixture(scope="module")
def seeds() -> Seeds:
    out: Seeds = {}
    for signal in CHECKED:
        bases = [_rich(signal, seed, size=2) for seed in range(100, 112)]
        bases.append(trace_request(spans=4) if signal is Signal.TRACES else sdk_telemetry(signal)[1])
        out[signal] = []
        for data in bases:
            tree = decode_tree(data, PATHS[signal][0])
            assert encode_tree(tree) == data  # the test's own encoder is faithful
            out[signal].append((data, _length_offsets(data, tree)))
    return out


@pytest.mark.parametrize(("signal", "cases"), [(Signal.TRACES, 4000), (Signal.LOGS, 1500)])
def test_fuzz_is_sound(seeds: Seeds, signal: Signal, cases: int) -> None:
    rng = random.Random(20240611)
    root = PATHS[signal][0]
    outcomes = {"ok": 0, "unsure, upb accepts": 0, "unsure, upb refuses": 0}
    for case in range(cases):
        data, lengths = rng.choice(seeds[signal])
        if case % 2:
            mutated = data
            for _ in range(rng.randrange(1, 3)):
                mutated = _byte_mutation(rng, mutated, lengths)
        else:
            tree = decode_tree(data, root)
            changed = any([rng.choice(_TREE_MUTATIONS)(rng, tree) for _ in range(rng.randrange(1, 3))])
            mutated = encode_tree(tree) if changed else data
        answer = assert_sound(mutated, signal)
        if answer is not None:
            outcomes["ok"] += 1
        elif upb_counts(mutated, signal) is not None:
            outcomes["unsure, upb accepts"] += 1
        else:
            outcomes["unsure, upb refuses"] += 1
    # Every kind of answer happened often: the fuzz exercised both paths, not only refusals.
    assert min(outcomes.values()) > cases // 20, outcomes


@pytest.mark.parametrize("signal", CHECKED)
def test_valid_non_ascii_and_unknown_fields_keep_the_fast_path(seeds: Seeds, signal: Signal) -> None:
    """Mutations that leave a request valid and ordinary must not lose the fast path."""
    rng = random.Random(7)
    mutations: list[Callable[[random.Random, list[Node]], Any]] = [
        _with_good_utf8,
        _with_unknown_field,
        _with_duplicate,
    ]
    for _ in range(200):
        tree = decode_tree(rng.choice(seeds[signal])[0], PATHS[signal][0])
        rng.choice(mutations)(rng, tree)
        data = encode_tree(tree)
        assert check(data, signal) == upb_counts(data, signal)
        assert check(data, signal) is not None
