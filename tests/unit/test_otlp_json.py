"""OTLP JSON both ways, with real OTLP protobuf messages."""

from __future__ import annotations

import json
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_ERROR
from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_CUMULATIVE
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelai.otlp_json import message_to_json, request_from_json, request_to_json
from otelai.signals import Signal

TRACE_ID = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN_ID = bytes.fromhex("eee19b7ec3c1b174")
PARENT_ID = bytes.fromhex("eee19b7ec3c1b173")
LINKED_TRACE = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
LINKED_SPAN = bytes.fromhex("b7ad6b7169203331")


def _attr(key: str, **value: Any) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(**value))


def trace_request() -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.append(_attr("service.name", string_value="checkout"))
    ss = rs.scope_spans.add()
    ss.scope.name = "my.library"
    span = ss.spans.add(
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        parent_span_id=PARENT_ID,
        name="GET /cart",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=1544712660000000000,
        end_time_unix_nano=1544712661000000000,
        status=Status(code=Status.STATUS_CODE_ERROR, message="boom"),
    )
    span.attributes.extend(
        [
            _attr("http.status_code", int_value=503),
            _attr("ratio", double_value=0.25),
            _attr("blob", bytes_value=b"\x00\xff"),
            _attr("ok", bool_value=False),
        ]
    )
    span.events.add(name="exception", time_unix_nano=1544712660500000000)
    span.links.add(trace_id=LINKED_TRACE, span_id=LINKED_SPAN, trace_state="ot=th:0")
    ss.spans.add(trace_id=TRACE_ID, span_id=PARENT_ID, name="root")  # no parent: empty id
    return request


def metrics_request() -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    sm = request.resource_metrics.add().scope_metrics.add()
    counter = sm.metrics.add(name="requests", unit="1")
    counter.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_CUMULATIVE
    counter.sum.is_monotonic = True
    point = counter.sum.data_points.add(as_int=42, time_unix_nano=1544712660300000000)
    point.exemplars.add(as_double=1.5, trace_id=TRACE_ID, span_id=SPAN_ID, time_unix_nano=1)
    histogram = sm.metrics.add(name="latency", unit="s").histogram
    histogram.data_points.add(count=3, sum=3.0, bucket_counts=[1, 1, 1], explicit_bounds=[0.1, 1.0])
    summary = sm.metrics.add(name="sizes").summary
    summary.data_points.add(count=1, sum=2.0)
    return request


def logs_request() -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    sl = request.resource_logs.add().scope_logs.add()
    record = sl.log_records.add(
        time_unix_nano=1544712660300000000,
        severity_number=SEVERITY_NUMBER_ERROR,
        severity_text="ERROR",
        trace_id=TRACE_ID,
        span_id=SPAN_ID,
        flags=1,
    )
    record.body.string_value = "payment failed"
    sl.log_records.add(body=AnyValue(string_value="no trace context"))
    return request


REQUESTS = {
    Signal.TRACES: trace_request,
    Signal.METRICS: metrics_request,
    Signal.LOGS: logs_request,
}


@pytest.mark.parametrize("signal", list(Signal))
def test_round_trip(signal: Signal) -> None:
    request = REQUESTS[signal]()
    text = request_to_json(signal, request.SerializeToString())
    assert "\n" not in text
    assert request_from_json(signal, text.encode()) == request


def test_trace_json_has_hex_ids_camel_case_keys_and_integer_enums() -> None:
    document = json.loads(request_to_json(Signal.TRACES, trace_request().SerializeToString()))
    span = document["resourceSpans"][0]["scopeSpans"][0]["spans"][0]
    assert span["traceId"] == TRACE_ID.hex()
    assert span["spanId"] == SPAN_ID.hex()
    assert span["parentSpanId"] == PARENT_ID.hex()
    assert span["links"][0] == {
        "traceId": LINKED_TRACE.hex(),
        "spanId": LINKED_SPAN.hex(),
        "traceState": "ot=th:0",
    }
    assert span["kind"] == 2
    assert span["status"] == {"code": 2, "message": "boom"}
    assert span["startTimeUnixNano"] == "1544712660000000000"  # int64 as a decimal string
    blob = next(a for a in span["attributes"] if a["key"] == "blob")
    assert blob["value"] == {"bytesValue": "AP8="}  # only ids are hex; bytes stay base64


def test_metric_exemplar_and_log_ids_are_hex() -> None:
    metrics = json.loads(request_to_json(Signal.METRICS, metrics_request().SerializeToString()))
    first = metrics["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]
    assert first["sum"]["aggregationTemporality"] == 2
    exemplar = first["sum"]["dataPoints"][0]["exemplars"][0]
    assert (exemplar["traceId"], exemplar["spanId"]) == (TRACE_ID.hex(), SPAN_ID.hex())
    logs = json.loads(request_to_json(Signal.LOGS, logs_request().SerializeToString()))
    record = logs["resourceLogs"][0]["scopeLogs"][0]["logRecords"][0]
    assert (record["traceId"], record["spanId"], record["severityNumber"]) == (
        TRACE_ID.hex(),
        SPAN_ID.hex(),
        17,
    )


# Written the way the Collector's OTLP JSON marshaler writes it (file exporter, otlphttp
# exporter with encoding: json): int64 as strings, lower-case hex ids, integer enums,
# empty objects kept, and a field this version of the proto does not know.
COLLECTOR_TRACES = (
    '{"resourceSpans":[{"resource":{"attributes":[{"key":"service.name","value":{"stringValue":"frontend"}}]},'
    '"scopeSpans":[{"scope":{"name":"otelcol/filelog","version":"0.135.0"},"spans":[{"traceId":'
    '"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","parentSpanId":"","flags":257,'
    '"name":"HTTP GET","kind":3,"startTimeUnixNano":"1544712660000000000","endTimeUnixNano":'
    '"1544712661000000000","attributes":[{"key":"net.peer.port","value":{"intValue":"8080"}}],'
    '"links":[{"traceId":"0AF7651916CD43DD8448EB211C80319C","spanId":"B7AD6B7169203331"}],'
    '"status":{},"aNewerField":{"x":1}}]}],"schemaUrl":"https://opentelemetry.io/schemas/1.26.0"}]}'
)


def test_collector_json_sample_parses() -> None:
    request: Any = request_from_json(Signal.TRACES, COLLECTOR_TRACES.encode())
    span = request.resource_spans[0].scope_spans[0].spans[0]
    assert span.trace_id == TRACE_ID and span.span_id == SPAN_ID and span.parent_span_id == b""
    assert span.kind == Span.SPAN_KIND_CLIENT and span.flags == 257
    assert span.start_time_unix_nano == 1544712660000000000
    assert span.attributes[0].value.int_value == 8080
    assert span.links[0].trace_id == LINKED_TRACE  # upper-case hex is accepted
    assert request.resource_spans[0].schema_url == "https://opentelemetry.io/schemas/1.26.0"


def test_snake_case_keys_and_numeric_int64_are_accepted() -> None:
    body = json.dumps(
        {
            "resource_logs": [
                {
                    "scope_logs": [
                        {
                            "log_records": [
                                {"trace_id": TRACE_ID.hex(), "span_id": SPAN_ID.hex(), "time_unix_nano": 7}
                            ]
                        }
                    ]
                }
            ]
        }
    ).encode()
    request: Any = request_from_json(Signal.LOGS, body)
    record = request.resource_logs[0].scope_logs[0].log_records[0]
    assert (record.trace_id, record.span_id, record.time_unix_nano) == (TRACE_ID, SPAN_ID, 7)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "invalid JSON"),
        (b"\xff\xfe\x00", "invalid JSON"),
        (b"[]", "top level must be an object"),
        (
            b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"abc"}]}]}]}',
            "traceId must be 32 hex digits",
        ),
        (
            b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"spanId":"zzzzzzzzzzzzzzzz"}]}]}]}',
            "spanId must be 16",
        ),
        (
            b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"spanId":"eee1 9b7ec3c1b17"}]}]}]}',
            "spanId must be 16",
        ),
        (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":12}]}]}]}', "traceId must be a hex string"),
        (b'{"resourceSpans":{"oops":1}}', "invalid OTLP JSON"),
        (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"name":{"a":1}}]}]}]}', "invalid OTLP JSON"),
        (b"[" * 100_000, "invalid JSON"),
    ],
)
def test_invalid_json_raises_value_error(body: bytes, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        request_from_json(Signal.TRACES, body)


def test_request_to_json_rejects_bad_protobuf() -> None:
    with pytest.raises(ValueError, match="invalid traces request protobuf"):
        request_to_json(Signal.TRACES, b"\xff\xff\xff")


def test_message_to_json_without_ids() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

    response = ExportTraceServiceResponse()
    assert message_to_json(response) == "{}"
    response.partial_success.rejected_spans = 3
    assert json.loads(message_to_json(response)) == {"partialSuccess": {"rejectedSpans": "3"}}
