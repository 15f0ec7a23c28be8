"""otel-demo store documents -> OTLP trace requests, field by field."""

from __future__ import annotations

import calendar
import gzip
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelai.replay import otel_demo
from otelai.replay.batch import Batch, SourceError
from otelai.replay.otel_demo import Window, iter_windows, parse_rfc3339_nanos, window_requests

from .store_docs import (
    LINK_SPAN_ID,
    LINK_TRACE_ID,
    PARENT_ID,
    RESOURCE,
    SCOPE,
    SPAN_ID,
    TRACE_ID,
    hit,
    simple_hit,
    span_id,
    write_window,
)


def _epoch_ns(y: int, mo: int, d: int, h: int, mi: int, s: int, ns: int = 0) -> int:
    return calendar.timegm((y, mo, d, h, mi, s, 0, 0, 0)) * 1_000_000_000 + ns


def _requests(
    tmp_path: Path, hits: list[dict[str, Any]], max_spans: int = 512
) -> list[ExportTraceServiceRequest]:
    path = write_window(tmp_path, "eval01_cartFailure_on", hits)
    out = []
    for data in window_requests(Window("eval01_cartFailure_on", path), max_spans=max_spans):
        request = ExportTraceServiceRequest()
        request.ParseFromString(data)
        out.append(request)
    return out


def _only_span(tmp_path: Path, doc: dict[str, Any]) -> Span:
    (request,) = _requests(tmp_path, [doc])
    (resource_spans,) = request.resource_spans
    (scope_spans,) = resource_spans.scope_spans
    (span,) = scope_spans.spans
    return span


def _plain(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return ("array", [_plain(v) for v in value.array_value.values])
    if kind == "kvlist_value":
        return ("kvlist", {kv.key: _plain(kv.value) for kv in value.kvlist_value.values})
    return (kind, None if kind is None else getattr(value, kind))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-02-06T15:17:28.771542124Z", _epoch_ns(2026, 2, 6, 15, 17, 28, 771542124)),
        ("2026-02-07T05:02:24.18385595Z", _epoch_ns(2026, 2, 7, 5, 2, 24, 183855950)),  # trailing 0 trimmed
        ("2026-02-07T05:02:08.271Z", _epoch_ns(2026, 2, 7, 5, 2, 8, 271000000)),
        ("2026-02-07T05:02:08Z", _epoch_ns(2026, 2, 7, 5, 2, 8)),
        ("2026-02-07T16:02:08.5+11:00", _epoch_ns(2026, 2, 7, 5, 2, 8, 500000000)),
        ("2026-02-06T23:32:08.000000001-05:30", _epoch_ns(2026, 2, 7, 5, 2, 8, 1)),
        ("1970-01-01T00:00:00.000000001Z", 1),
        ("2262-04-11T23:47:16.854775807Z", 2**63 - 1),  # beyond a double's exact range
        ("2026-02-07T05:02:08.1234567891Z", _epoch_ns(2026, 2, 7, 5, 2, 8, 123456789)),
        ("2024-02-29T00:00:00z", _epoch_ns(2024, 2, 29, 0, 0, 0)),
    ],
)
def test_parse_rfc3339_nanos_exact(text: str, expected: int) -> None:
    assert parse_rfc3339_nanos(text) == expected


@pytest.mark.parametrize(
    "text", ["2026-02-30T00:00:00Z", "2026-02-07T24:00:00Z", "2026-02-07T05:02:08", "2026-02-07", "", "x"]
)
def test_parse_rfc3339_nanos_refuses_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_rfc3339_nanos(text)


def test_every_span_field_converts_exactly(tmp_path: Path) -> None:
    (request,) = _requests(tmp_path, [hit()])
    (resource_spans,) = request.resource_spans
    assert {kv.key: _plain(kv.value) for kv in resource_spans.resource.attributes} == {
        key: ("string_value", value) for key, value in RESOURCE.items()
    }
    assert [kv.key for kv in resource_spans.resource.attributes] == list(RESOURCE)
    assert resource_spans.schema_url == ""
    (scope_spans,) = resource_spans.scope_spans
    assert scope_spans.scope.name == SCOPE["name"]
    assert scope_spans.scope.version == "0.63.0"
    assert scope_spans.schema_url == "https://opentelemetry.io/schemas/1.11.0"
    assert list(scope_spans.scope.attributes) == []
    (span,) = scope_spans.spans

    assert span.trace_id == bytes.fromhex(TRACE_ID)
    assert span.span_id == bytes.fromhex(SPAN_ID)
    assert span.parent_span_id == bytes.fromhex(PARENT_ID)
    assert span.trace_state == "ot=th:0"
    assert span.name == "oteldemo.ProductCatalogService/GetProduct"
    assert span.kind == Span.SPAN_KIND_SERVER
    assert span.start_time_unix_nano == _epoch_ns(2026, 2, 6, 15, 17, 28, 771542124)
    assert span.end_time_unix_nano == _epoch_ns(2026, 2, 6, 15, 17, 28, 771664353)
    assert span.status.code == Status.STATUS_CODE_ERROR
    assert span.status.message == "product not found"
    assert (span.dropped_attributes_count, span.dropped_events_count, span.dropped_links_count) == (2, 3, 4)
    assert span.flags == 0

    assert {kv.key: _plain(kv.value) for kv in span.attributes} == {
        "app.product.id": ("string_value", "9SIQT8TOJO"),
        "rpc.grpc.status_code": ("int_value", 0),
        "rpc.method": ("string_value", "GetProduct"),
        "server.port": ("int_value", 59158),
        "app.cart.empty": ("bool_value", False),
        "app.quote.cost.total": ("double_value", 43.5),
        "app.filtered_products.list": (
            "array",
            [("string_value", "1YMWWN1N4O"), ("string_value", "6E92ZMYYFZ")],
        ),
    }

    first, second = span.events
    assert first.name == "Product Found"
    assert first.time_unix_nano == _epoch_ns(2026, 2, 6, 15, 17, 28, 771588690)
    assert first.dropped_attributes_count == 1
    assert {kv.key: _plain(kv.value) for kv in first.attributes} == {
        "app.product.quantity": ("int_value", 7),
        "exception.escaped": ("bool_value", True),
    }
    assert second.name == "exception"
    assert second.time_unix_nano == _epoch_ns(2026, 2, 6, 15, 17, 28, 771601000)
    assert list(second.attributes) == []

    (link,) = span.links
    assert link.trace_id == bytes.fromhex(LINK_TRACE_ID)
    assert link.span_id == bytes.fromhex(LINK_SPAN_ID)
    assert link.trace_state == ""
    assert list(link.attributes) == []


def test_optional_fields_and_other_spellings(tmp_path: Path) -> None:
    doc = hit(
        parentSpanId="",
        traceState="",
        kind="SPAN_KIND_CONSUMER",
        status={"code": "Ok"},
        flags=0x301,
        events=[{"name": "e", "time": "2026-02-06T15:17:28.1Z", "attributes": {"k": "v"}}],
        links=[
            {
                "traceId": LINK_TRACE_ID,
                "spanId": LINK_SPAN_ID,
                "traceState": "vendor=1",
                "attributes": {"link.kind": "follows"},
                "droppedAttributesCount": 5,
                "flags": 1,
            }
        ],
    )
    span = _only_span(tmp_path, doc)
    assert span.parent_span_id == b""
    assert span.trace_state == ""
    assert span.kind == Span.SPAN_KIND_CONSUMER
    assert span.status.code == Status.STATUS_CODE_OK
    assert span.status.message == ""
    assert span.flags == 0x301
    (event,) = span.events
    assert event.time_unix_nano == _epoch_ns(2026, 2, 6, 15, 17, 28, 100000000)
    (link,) = span.links
    assert link.trace_state == "vendor=1"
    assert link.dropped_attributes_count == 5
    assert link.flags == 1
    assert {kv.key: _plain(kv.value) for kv in link.attributes} == {"link.kind": ("string_value", "follows")}


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("Server", Span.SPAN_KIND_SERVER),
        ("Client", Span.SPAN_KIND_CLIENT),
        ("Internal", Span.SPAN_KIND_INTERNAL),
        ("Producer", Span.SPAN_KIND_PRODUCER),
        ("Consumer", Span.SPAN_KIND_CONSUMER),
        ("Unspecified", Span.SPAN_KIND_UNSPECIFIED),
    ],
)
def test_kinds(tmp_path: Path, kind: str, expected: int) -> None:
    assert _only_span(tmp_path, hit(kind=kind)).kind == expected


@pytest.mark.parametrize(
    ("code", "expected"),
    [("Unset", Status.STATUS_CODE_UNSET), ("Ok", Status.STATUS_CODE_OK), ("Error", Status.STATUS_CODE_ERROR)],
)
def test_status_codes(tmp_path: Path, code: str, expected: int) -> None:
    assert _only_span(tmp_path, hit(status={"code": code, "message": ""})).status.code == expected


def test_attribute_value_types(tmp_path: Path) -> None:
    attributes = {
        "data_stream": {"type": "span"},
        "data_stream.dataset": "default",
        "s": "text",
        "i": -(2**63),
        "big": 2**64 - 1,
        "b": True,
        "f": 1.0,
        "empty": [],
        "mixed": [1, "a", False, 2.5, None],
        "nested": {"a": {"b": 1}, "c": [True]},
        "none": None,
    }
    span = _only_span(tmp_path, hit(attributes=attributes))
    assert [kv.key for kv in span.attributes] == list(attributes)[2:]  # the store's keys dropped
    assert {kv.key: _plain(kv.value) for kv in span.attributes} == {
        "s": ("string_value", "text"),
        "i": ("int_value", -(2**63)),
        "big": ("string_value", str(2**64 - 1)),  # kept exact rather than rounded
        "b": ("bool_value", True),
        "f": ("double_value", 1.0),
        "empty": ("array", []),
        "mixed": (
            "array",
            [
                ("int_value", 1),
                ("string_value", "a"),
                ("bool_value", False),
                ("double_value", 2.5),
                (None, None),
            ],
        ),
        "nested": (
            "kvlist",
            {"a": ("kvlist", {"b": ("int_value", 1)}), "c": ("array", [("bool_value", True)])},
        ),
        "none": (None, None),
    }


def test_spans_grouped_by_resource_then_scope(tmp_path: Path) -> None:
    other_resource = {**RESOURCE, "service.name": "cart"}
    reordered = dict(reversed(list(RESOURCE.items())))  # same set, other order: same resource
    other_scope = {**SCOPE, "name": "manual", "schemaUrl": ""}
    typed_resource = {**RESOURCE, "process.pid": 1}  # an int is not the string "1"
    hits = [
        simple_hit(0, "2026-02-06T15:17:28.000000001Z"),
        simple_hit(1, "2026-02-06T15:17:28.000000002Z", resource=other_resource),
        simple_hit(2, "2026-02-06T15:17:28.000000003Z", resource=reordered, instrumentationScope=other_scope),
        simple_hit(3, "2026-02-06T15:17:28.000000004Z", resource=reordered),
        simple_hit(4, "2026-02-06T15:17:28.000000005Z", resource=typed_resource),
    ]
    (request,) = _requests(tmp_path, hits)
    layout = [
        (
            {kv.key: _plain(kv.value)[1] for kv in rs.resource.attributes}["service.name"],
            [(ss.scope.name, ss.schema_url, [s.span_id for s in ss.spans]) for ss in rs.scope_spans],
        )
        for rs in request.resource_spans
    ]
    ids = [bytes.fromhex(span_id(n + 1)) for n in range(5)]
    assert layout == [
        (
            "product-catalog",
            [(SCOPE["name"], SCOPE["schemaUrl"], [ids[0], ids[3]]), ("manual", "", [ids[2]])],
        ),
        ("cart", [(SCOPE["name"], SCOPE["schemaUrl"], [ids[1]])]),
        ("product-catalog", [(SCOPE["name"], SCOPE["schemaUrl"], [ids[4]])]),
    ]
    pid = {kv.key: _plain(kv.value) for kv in request.resource_spans[2].resource.attributes}["process.pid"]
    assert pid == ("int_value", 1)


def test_max_spans_split_keeps_start_time_order(tmp_path: Path) -> None:
    starts = [
        "2026-02-06T15:17:29.5Z",
        "2026-02-06T15:17:28.000000002Z",
        "2026-02-06T15:17:30Z",
        "2026-02-06T15:17:28.000000001Z",
        "2026-02-06T15:17:28.000000002Z",  # ties keep the store's order
    ]
    hits = [
        simple_hit(n, start, resource={**RESOURCE, "service.name": f"s{n % 2}"})
        for n, start in enumerate(starts)
    ]
    requests = _requests(tmp_path, hits, max_spans=2)
    order = [
        [s.span_id for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
        for request in requests
    ]
    ids = [bytes.fromhex(span_id(n + 1)) for n in range(5)]
    assert order == [[ids[3], ids[1]], [ids[4], ids[0]], [ids[2]]]
    batches = otel_demo.window_batches(Window("w", tmp_path / "traces_eval01_cartFailure_on.json.gz"), 2)
    assert [b.items for b in batches] == [2, 2, 1]
    assert [b.time_unix_nano for b in batches] == [
        parse_rfc3339_nanos(starts[3]),
        parse_rfc3339_nanos(starts[4]),
        parse_rfc3339_nanos(starts[2]),
    ]
    assert all(b.source == "w" for b in batches)


def test_empty_window_has_no_requests(tmp_path: Path) -> None:
    assert _requests(tmp_path, []) == []


def test_raw_search_response_is_read(tmp_path: Path) -> None:
    path = tmp_path / "traces_x.json.gz"
    with gzip.open(path, "wt") as stream:
        json.dump({"hits": {"total": 1, "hits": [hit()]}}, stream)
    (data,) = window_requests(Window("x", path))
    assert ExportTraceServiceRequest.FromString(data).resource_spans[0].scope_spans[0].spans[0].span_id == (
        bytes.fromhex(SPAN_ID)
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "Sideways"}, "unknown span kind 'Sideways'"),
        ({"status": {"code": "Maybe"}}, "unknown status code 'Maybe'"),
        ({"spanId": "abc"}, "spanId 'abc' is not hex"),
        ({"traceId": "00" * 8}, "traceId .* must be 16 bytes"),
        ({"startTime": "yesterday"}, "invalid RFC 3339 timestamp 'yesterday'"),
        ({"endTime": None}, "missing field 'endTime'"),
        ({"startTime": "1969-12-31T23:59:59Z"}, "before 1970"),
        ({"attributes": {"k": {1, 2}}}, "unsupported attribute value"),
    ],
)
def test_malformed_span_names_window_and_problem(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    path = write_window(tmp_path, "eval07_bad", [hit(), hit(**change)] if "attributes" not in change else [])
    if "attributes" in change:  # a set is not JSON: feed the documents directly
        with pytest.raises(ValueError, match=message):
            otel_demo.span_batches([hit(**change)["_source"]], "w", 512)
        return
    with pytest.raises(ValueError, match=rf"otel-demo window eval07_bad .*{message}"):
        window_requests(Window("eval07_bad", path))


def test_unknown_span_field_is_reported_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    otel_demo._reported_unknown.discard("vendorField")  # reported once per process
    with caplog.at_level(logging.WARNING, logger="otelai.replay.otel_demo"):
        _requests(tmp_path, [hit(vendorField=1), hit(vendorField=2)])
    assert [r.getMessage() for r in caplog.records].count(
        "otel-demo: span field 'vendorField' is not converted"
    ) == 1


def _layout(root: Path) -> None:
    meta = {"flag": "baseline", "variant": "off", "ground_truth_root_cause": "none"}
    write_window(root / "train", "train10_baseline", [simple_hit(10, "2026-02-06T15:17:30Z")], meta)
    write_window(root / "train", "train2_baseline", [simple_hit(2, "2026-02-06T15:17:30Z")], meta)
    write_window(root / "train", "train3_baseline", None, meta)  # the source lost its traces
    write_window(
        root / "eval",
        "eval1_cartFailure_on",
        [simple_hit(1, "2026-02-06T15:17:30Z")],
        {"flag": "cartFailure", "variant": "on", "ground_truth_root_cause": "cart"},
    )
    (root / "eval" / "metrics_eval1_cartFailure_on.json").write_text("{}")
    (root / "eval" / "logs_eval1_cartFailure_on.txt.gz").write_bytes(b"")


def test_iter_windows_of_the_root_train_first_in_number_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _layout(tmp_path)
    with caplog.at_level(logging.INFO, logger="otelai.replay.otel_demo"):
        windows = list(iter_windows(tmp_path))
    assert [w.name for w in windows] == ["train2_baseline", "train10_baseline", "eval1_cartFailure_on"]
    assert windows[2].metadata == {"flag": "cartFailure", "variant": "on", "ground_truth_root_cause": "cart"}
    assert windows[2].path == tmp_path / "eval" / "traces_eval1_cartFailure_on.json.gz"
    assert any("skipping window train3_baseline" in r.getMessage() for r in caplog.records)


def test_iter_windows_of_a_split_and_of_a_file(tmp_path: Path) -> None:
    _layout(tmp_path)
    assert [w.name for w in iter_windows(tmp_path / "eval")] == ["eval1_cartFailure_on"]
    (window,) = iter_windows(tmp_path / "train" / "traces_train10_baseline.json.gz")
    assert window.name == "train10_baseline"
    assert window.metadata["flag"] == "baseline"


def test_iter_windows_without_metadata_and_bad_paths(tmp_path: Path) -> None:
    path = write_window(tmp_path, "w1", [hit()])
    assert list(iter_windows(tmp_path)) == [Window("w1", path, {})]
    with pytest.raises(FileNotFoundError, match="otel-demo data not found"):
        list(iter_windows(tmp_path / "missing"))
    other = tmp_path / "metrics_w1.json"
    other.write_text("{}")
    with pytest.raises(ValueError, match="not an otel-demo traces file"):
        list(iter_windows(other))


def test_batches_skip_a_broken_window_and_go_on(tmp_path: Path) -> None:
    write_window(tmp_path, "w1", [hit(kind="Sideways")])
    (tmp_path / "traces_w2.json.gz").write_bytes(b"not gzip")
    write_window(tmp_path, "w3", [hit()])
    items = list(otel_demo.batches(tmp_path))
    assert [type(item) for item in items] == [SourceError, SourceError, Batch]
    assert [item.source for item in items] == ["w1", "w2", "w3"]
