"""Tags appended to spans and log records in wire format parse back with the OTLP classes."""

from __future__ import annotations

import pytest
from google.protobuf.internal.decoder import _DecodeVarint  # type: ignore[attr-defined]
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from otelai.decision.tagging import (
    LOG_RECORD_ATTRIBUTES,
    MODEL_VERSION,
    REASON,
    SCORE,
    SELECTION_REASON,
    SEVERITY,
    SPAN_ATTRIBUTES,
    double_attribute,
    field,
    string_attribute,
    tag_every_item,
    tag_suffix,
    trace_state_field,
    varint,
)
from otelai.features.wire import WireError


def attrs(attributes: list[KeyValue]) -> dict[str, object]:
    out: dict[str, object] = {}
    for kv in attributes:
        kind = kv.value.WhichOneof("value")
        assert kind is not None
        out[kv.key] = getattr(kv.value, kind)
    return out


def a_span() -> Span:
    return Span(
        trace_id=bytes(range(16)),
        span_id=bytes(range(8)),
        name="GET /cart",
        trace_state="vendor=abc",
        attributes=[KeyValue(key="http.route", value=AnyValue(string_value="/cart"))],
    )


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, 2**35, 2**63 - 1, 2**64 - 1])
def test_varint_decodes_with_protobufs_own_decoder(value: int) -> None:
    encoded = varint(value)
    decoded, end = _DecodeVarint(encoded, 0)
    assert (decoded, end) == (value, len(encoded))
    assert len(encoded) == max(1, -(-value.bit_length() // 7))


def test_varint_boundaries_are_one_and_two_bytes() -> None:
    assert varint(127) == b"\x7f"
    assert varint(128) == b"\x80\x01"
    assert varint(2**35) == b"\x80\x80\x80\x80\x80\x01"


@pytest.mark.parametrize("length", [0, 1, 127, 128, 20_000])
def test_a_field_of_any_length_parses_as_a_string_field(length: int) -> None:
    text = "x" * length
    span = Span.FromString(field(5, text.encode()))  # Span.name is field 5
    assert span.name == text


def test_anomalous_span_tags_parse_back_with_their_types() -> None:
    span = a_span()
    suffix = tag_suffix(
        SPAN_ATTRIBUTES,
        score=0.9987,
        severity="critical",
        reason="surprise: latency_z",
        model_version="builtin-0",
        selection_reason="anomaly",
    )
    tagged = Span.FromString(span.SerializeToString() + suffix)
    assert attrs(list(tagged.attributes)) == {
        "http.route": "/cart",
        SCORE: 0.9987,
        SEVERITY: "critical",
        REASON: "surprise: latency_z",
        MODEL_VERSION: "builtin-0",
        SELECTION_REASON: "anomaly",
    }
    score = next(kv for kv in tagged.attributes if kv.key == SCORE)
    assert score.value.WhichOneof("value") == "double_value"
    # Everything else is untouched.
    tagged.ClearField("attributes")
    span.ClearField("attributes")
    assert tagged == span


def test_normal_kept_span_carries_only_the_selection_reason() -> None:
    suffix = tag_suffix(
        SPAN_ATTRIBUTES,
        score=None,
        severity=None,
        reason=None,
        model_version=None,
        selection_reason="sampled",
    )
    tagged = Span.FromString(a_span().SerializeToString() + suffix)
    assert attrs(list(tagged.attributes)) == {"http.route": "/cart", SELECTION_REASON: "sampled"}


def test_log_record_tags_use_field_6() -> None:
    record = LogRecord(
        time_unix_nano=5,
        body=AnyValue(string_value="disk full"),
        attributes=[KeyValue(key="code", value=AnyValue(int_value=28))],
    )
    suffix = tag_suffix(
        LOG_RECORD_ATTRIBUTES,
        score=1.0,
        severity="anomaly",
        reason="surprise: template_rarity",
        model_version="m-7",
        selection_reason="anomaly",
    )
    tagged = LogRecord.FromString(record.SerializeToString() + suffix)
    assert attrs(list(tagged.attributes)) == {
        "code": 28,
        SCORE: 1.0,
        SEVERITY: "anomaly",
        REASON: "surprise: template_rarity",
        MODEL_VERSION: "m-7",
        SELECTION_REASON: "anomaly",
    }
    assert tagged.body.string_value == "disk full"


@pytest.mark.parametrize("score", [0.0, 0.5, 1.0, 0.123456789])
def test_score_bytes_are_the_exact_double(score: float) -> None:
    suffix = tag_suffix(
        SPAN_ATTRIBUTES,
        score=score,
        severity="anomaly",
        reason=None,
        model_version=None,
        selection_reason="x",
    )
    tagged = Span.FromString(suffix)
    assert attrs(list(tagged.attributes))[SCORE] == score
    assert field(SPAN_ATTRIBUTES, double_attribute(SCORE, score)) in suffix


def test_appended_trace_state_replaces_the_old_one() -> None:
    span = a_span()
    tagged = Span.FromString(span.SerializeToString() + trace_state_field("ot=th:e666,vendor=abc"))
    assert tagged.trace_state == "ot=th:e666,vendor=abc"
    assert tagged.name == span.name


def test_long_values_need_multi_byte_lengths() -> None:
    reason = "pca: " + ", ".join(f"feature_{i}" for i in range(40))  # > 127 bytes
    suffix = tag_suffix(
        SPAN_ATTRIBUTES,
        score=None,
        severity="anomaly",
        reason=reason,
        model_version=None,
        selection_reason="x",
    )
    tagged = Span.FromString(a_span().SerializeToString() + suffix)
    assert attrs(list(tagged.attributes))[REASON] == reason
    long_state = "ot=th:0," + ",".join(f"v{i}=" + "y" * 40 for i in range(10))
    assert Span.FromString(trace_state_field(long_state)).trace_state == long_state
    assert KeyValue.FromString(string_attribute("k", "é" * 100)).value.string_value == "é" * 100


def _trace_request() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    for service in ("a", "b"):
        resource_spans = request.resource_spans.add(schema_url=f"https://schema/{service}")
        resource_spans.resource.attributes.add(key="service.name").value.string_value = service
        for scope in ("lib", "other"):
            scope_spans = resource_spans.scope_spans.add(schema_url="https://scope")
            scope_spans.scope.name = scope
            for i in range(3):
                span = scope_spans.spans.add(name=f"op{i}", trace_id=bytes(16), span_id=bytes([i + 1] * 8))
                span.attributes.add(key="k").value.int_value = i
    request.resource_spans.add()  # an empty resource
    return request


def test_every_span_is_tagged_as_merging_the_tag_into_each_would() -> None:
    suffix = field(SPAN_ATTRIBUTES, string_attribute(SELECTION_REASON, "fail_open"))
    request = _trace_request()
    tagged = tag_every_item(request.SerializeToString(), suffix)
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                span.MergeFromString(suffix)
    assert tagged == request.SerializeToString()  # schema URLs and empty containers kept


def test_every_log_record_is_tagged() -> None:
    suffix = field(LOG_RECORD_ATTRIBUTES, string_attribute(SELECTION_REASON, "fail_open"))
    request = ExportLogsServiceRequest()
    records = request.resource_logs.add().scope_logs.add().log_records
    records.add(severity_text="INFO").body.string_value = "x"
    records.add(severity_text="WARN")
    tagged = ExportLogsServiceRequest.FromString(tag_every_item(request.SerializeToString(), suffix))
    got = [attrs(list(r.attributes)) for r in tagged.resource_logs[0].scope_logs[0].log_records]
    assert got == [{SELECTION_REASON: "fail_open"}] * 2


def test_an_unreadable_request_raises() -> None:
    with pytest.raises(WireError):
        tag_every_item(b"\x0a\xff\xff\xff\xff\x0f", b"")
