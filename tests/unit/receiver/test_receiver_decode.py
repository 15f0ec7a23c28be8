"""The HTTP body decoder: examples, then properties fuzzed with hypothesis."""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from otelai.otlp_json import request_to_json
from otelai.receiver.decode import (
    Decoded,
    Encoding,
    Refusal,
    decode_http_body,
    decompress,
    encoding_of,
    parse,
    parse_protobuf,
)
from otelai.signals import Signal, count_items

from .otlp_data import sdk_telemetry, trace_request

LIMIT = 64 * 1024


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/x-protobuf", Encoding.PROTOBUF),
        ("Application/X-Protobuf; charset=binary", Encoding.PROTOBUF),
        ("application/json", Encoding.JSON),
        (" application/json ; charset=utf-8", Encoding.JSON),
    ],
)
def test_content_types(content_type: str, expected: Encoding) -> None:
    assert encoding_of(content_type) is expected


@pytest.mark.parametrize("content_type", [None, "", "text/plain", "application/protobuf", "application/grpc"])
def test_other_content_types_are_415(content_type: str | None) -> None:
    with pytest.raises(Refusal) as caught:
        encoding_of(content_type)
    assert caught.value.http_status == 415
    assert "application/x-protobuf or application/json" in caught.value.message


@pytest.mark.parametrize("coding", [None, "", "identity", "none", "IDENTITY"])
def test_identity_is_untouched(coding: str | None) -> None:
    body = trace_request()
    assert decompress(body, coding, LIMIT) is body


@pytest.mark.parametrize(
    ("coding", "compress"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),  # zlib-wrapped, as HTTP defines it
        ("deflate", _raw_deflate),  # raw, as some clients send it
        ("gzip, identity", gzip.compress),
        ("deflate, gzip", lambda data: gzip.compress(zlib.compress(data))),
    ],
)
def test_codings(coding: str, compress: Any) -> None:
    body = trace_request()
    assert decompress(compress(body), coding, LIMIT) == body


@pytest.mark.parametrize(
    ("body", "coding", "status", "needle"),
    [
        (b"abc", "br", 400, "unsupported Content-Encoding 'br'"),
        (b"abc", "zstd", 400, "unsupported Content-Encoding"),
        (b"abc", "gzip, gzip, gzip", 400, "too many content codings"),
        (b"not gzip", "gzip", 400, "invalid gzip body"),
        (b"", "gzip", 400, "truncated"),
        (gzip.compress(b"x" * 100)[:-4], "gzip", 400, "truncated"),
        (gzip.compress(b"x") + b"junk", "gzip", 400, "invalid gzip body"),
        (zlib.compress(b"x") + b"junk", "deflate", 400, "trailing data"),
        (gzip.compress(bytes(LIMIT + 1)), "gzip", 413, "decompressed request body exceeds"),
        (gzip.compress(bytes(LIMIT // 2)) * 3, "gzip", 413, "decompressed request body exceeds"),
        (zlib.compress(bytes(LIMIT + 1)), "deflate", 413, "decompressed request body exceeds"),
    ],
)
def test_decompression_refusals(body: bytes, coding: str, status: int, needle: str) -> None:
    with pytest.raises(Refusal) as caught:
        decompress(body, coding, LIMIT)
    assert caught.value.http_status == status
    assert needle in caught.value.message


def test_decompressed_size_may_reach_the_limit_exactly() -> None:
    assert len(decompress(gzip.compress(bytes(LIMIT)), "gzip", LIMIT)) == LIMIT


def test_raw_body_over_the_limit_is_413() -> None:
    with pytest.raises(Refusal) as caught:
        decode_http_body(
            Signal.TRACES,
            bytes(LIMIT + 1),
            content_type="application/x-protobuf",
            content_encoding=None,
            limit=LIMIT,
        )
    assert (caught.value.http_status, caught.value.reason) == (413, "too_large")


def test_protobuf_bytes_are_forwarded_untouched() -> None:
    data = trace_request(spans=4)
    decoded = parse(Signal.TRACES, data, Encoding.PROTOBUF)
    assert decoded.data is data
    assert (decoded.items, decoded.resources, decoded.empty) == (4, 1, False)


def test_json_is_serialised_once() -> None:
    data = trace_request(spans=2)
    decoded = parse(Signal.TRACES, request_to_json(Signal.TRACES, data).encode(), Encoding.JSON)
    assert decoded.data == data and decoded.items == 2


def test_empty_request_is_empty() -> None:
    assert parse(Signal.LOGS, b"", Encoding.PROTOBUF).empty
    assert parse(Signal.METRICS, b"{}", Encoding.JSON).empty


def test_malformed_protobuf_is_invalid_argument() -> None:
    with pytest.raises(Refusal) as caught:
        parse_protobuf(Signal.METRICS, b"\x0a\x05\x0a")
    refusal = caught.value
    assert (refusal.http_status, refusal.grpc_code, refusal.reason) == (
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid",
    )
    assert "malformed metrics protobuf" in refusal.message


def test_valid_trace_protobuf_is_counted_without_parsing() -> None:
    data = trace_request(spans=4)
    decoded = parse(Signal.TRACES, data, Encoding.PROTOBUF)
    assert decoded.request is None  # the compiled validator vouched for it: upb was skipped
    assert (decoded.items, decoded.resources, decoded.data) == (4, 1, data)


@pytest.mark.parametrize("signal", list(Signal))
def test_sdk_protobuf_is_counted_without_parsing_but_metrics(signal: Signal) -> None:
    _, data, items = sdk_telemetry(signal)
    decoded = parse(signal, data, Encoding.PROTOBUF)
    assert (decoded.request is None) == (signal is not Signal.METRICS)
    assert (decoded.items, decoded.resources, decoded.data) == (items, 1, data)


def test_trace_protobuf_the_validator_is_unsure_of_is_parsed() -> None:
    # ResourceSpans.scope_spans (field 2) as a varint: upb keeps it as an unknown field.
    data = b"\x0a\x02\x10\x05"
    decoded = parse(Signal.TRACES, data, Encoding.PROTOBUF)
    assert decoded.request is not None
    assert (decoded.items, decoded.resources) == (0, 1)


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05\x0a",  # truncated
        b"\x0a\x03\x1a\x01\xff",  # ResourceSpans.schema_url not UTF-8
        b"\x0a\x04\x12\x02\x12\x00" + b"\x0a\x02\x12\x80",  # a span, then a bad length
    ],
)
def test_malformed_trace_protobuf_is_refused_with_upb_message(data: bytes) -> None:
    with pytest.raises(Refusal) as caught:
        parse(Signal.TRACES, data, Encoding.PROTOBUF)
    assert (caught.value.http_status, caught.value.grpc_code) == (400, grpc.StatusCode.INVALID_ARGUMENT)
    assert caught.value.message.startswith("malformed traces protobuf: Error parsing message")


def _parsed(signal: Signal, decoded: Decoded) -> Any:
    """The parsed request, parsing ``data`` when the receiver did not (checked traces, logs)."""
    if decoded.request is not None:
        return decoded.request
    assert signal is not Signal.METRICS and decoded.encoding is Encoding.PROTOBUF
    return signal.spec.request_type.FromString(decoded.data)


# --- properties -------------------------------------------------------------------------

_OTLP_KEYS = [
    "resourceSpans", "resourceLogs", "resourceMetrics", "scopeSpans", "scopeLogs", "scopeMetrics",
    "spans", "logRecords", "metrics", "resource", "scope", "attributes", "key", "value",
    "stringValue", "intValue", "doubleValue", "boolValue", "bytesValue", "arrayValue", "kvlistValue",
    "values", "traceId", "spanId", "parentSpanId", "name", "kind", "links", "events", "status",
    "startTimeUnixNano", "sum", "gauge", "histogram", "dataPoints", "asInt", "asDouble", "exemplars",
    "body", "severityNumber", "flags",
]  # fmt: skip
_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(_OTLP_KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=30,
)
_bodies = st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=300).map(gzip.compress),
    st.binary(max_size=300).map(zlib.compress),
    _json_values.map(lambda value: json.dumps(value).encode()),
    st.builds(  # a valid request with a few bytes overwritten
        lambda data, at, junk: data[:at] + junk + data[at + len(junk) :],
        st.just(trace_request(spans=3)),
        st.integers(0, 200),
        st.binary(min_size=1, max_size=4),
    ),
)
_content_types = st.sampled_from(
    ["application/x-protobuf", "application/json", "application/json; charset=utf-8", "text/plain", ""]
) | st.text(max_size=30)
_codings = st.sampled_from(["", "gzip", "deflate", "identity", "gzip, deflate", "br", "x-gzip"]) | st.text(
    max_size=20
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    signal=st.sampled_from(list(Signal)),
    body=_bodies,
    content_type=_content_types,
    coding=_codings,
    limit=st.integers(0, 4096),
)
def test_decoder_only_ever_refuses(
    signal: Signal, body: bytes, content_type: str, coding: str, limit: int
) -> None:
    try:
        decoded = decode_http_body(
            signal, body, content_type=content_type, content_encoding=coding, limit=limit
        )
    except Refusal as refusal:
        assert refusal.http_status in (400, 413, 415)
        assert refusal.message
        return
    assert decoded.items == count_items(signal, _parsed(signal, decoded))
    assert len(decoded.data) <= limit or decoded.encoding is Encoding.JSON


_ids16 = st.one_of(st.just(b""), st.binary(min_size=16, max_size=16))
_ids8 = st.one_of(st.just(b""), st.binary(min_size=8, max_size=8))
_uint64 = st.integers(0, 2**64 - 1)
_any_values = st.one_of(
    st.builds(AnyValue, string_value=st.text(max_size=20)),
    st.builds(AnyValue, int_value=st.integers(-(2**63), 2**63 - 1)),
    st.builds(AnyValue, double_value=st.floats(allow_nan=False)),
    st.builds(AnyValue, bool_value=st.booleans()),
    st.builds(AnyValue, bytes_value=st.binary(max_size=16)),
)
_attributes = st.lists(st.builds(KeyValue, key=st.text(max_size=12), value=_any_values), max_size=3)


@st.composite
def _requests(draw: Any, signal: Signal) -> Any:
    if signal is Signal.TRACES:
        request: Any = ExportTraceServiceRequest()
        for _ in range(draw(st.integers(0, 2))):
            resource = request.resource_spans.add()
            resource.resource.attributes.extend(draw(_attributes))
            scope = resource.scope_spans.add()
            scope.scope.name = draw(st.text(max_size=10))
            for _ in range(draw(st.integers(0, 3))):
                span = scope.spans.add(
                    trace_id=draw(_ids16),
                    span_id=draw(_ids8),
                    parent_span_id=draw(_ids8),
                    name=draw(st.text(max_size=20)),
                    kind=draw(st.integers(0, 5)),
                    start_time_unix_nano=draw(_uint64),
                )
                span.attributes.extend(draw(_attributes))
                span.links.add(trace_id=draw(_ids16), span_id=draw(_ids8))
    elif signal is Signal.LOGS:
        request = ExportLogsServiceRequest()
        for _ in range(draw(st.integers(0, 2))):
            scope = request.resource_logs.add().scope_logs.add()
            for _ in range(draw(st.integers(0, 3))):
                record = scope.log_records.add(
                    trace_id=draw(_ids16),
                    span_id=draw(_ids8),
                    severity_number=draw(st.integers(0, 24)),
                    time_unix_nano=draw(_uint64),
                )
                record.body.CopyFrom(draw(_any_values))
                record.attributes.extend(draw(_attributes))
    else:
        request = ExportMetricsServiceRequest()
        for _ in range(draw(st.integers(0, 2))):
            scope = request.resource_metrics.add().scope_metrics.add()
            for i in range(draw(st.integers(0, 3))):
                metric = scope.metrics.add(name=f"m{i}")
                points = metric.sum.data_points if i % 2 else metric.gauge.data_points
                for _ in range(draw(st.integers(0, 3))):
                    point = points.add(
                        as_double=draw(st.floats(allow_nan=False)), time_unix_nano=draw(_uint64)
                    )
                    point.attributes.extend(draw(_attributes))
                    point.exemplars.add(
                        trace_id=draw(_ids16), span_id=draw(_ids8), as_int=draw(st.integers(0, 9))
                    )
    return request


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(), encoding=st.sampled_from(list(Encoding)), coding=st.sampled_from(["", "gzip", "deflate"])
)
def test_valid_requests_round_trip(data: st.DataObject, encoding: Encoding, coding: str) -> None:
    signal = data.draw(st.sampled_from(list(Signal)))
    request = data.draw(_requests(signal))
    serialised = request.SerializeToString()
    body = serialised if encoding is Encoding.PROTOBUF else request_to_json(signal, serialised).encode()
    if coding == "gzip":
        body = gzip.compress(body)
    elif coding == "deflate":
        body = zlib.compress(body)
    decoded = decode_http_body(
        signal, body, content_type=encoding.content_type, content_encoding=coding, limit=1 << 20
    )
    assert _parsed(signal, decoded) == request
    assert signal.spec.request_type.FromString(decoded.data) == request
    if encoding is Encoding.PROTOBUF:
        assert decoded.data == serialised
    assert decoded.items == count_items(signal, request)
