"""Kept items are regrouped under their own resource and scope, without re-encoding them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otelai.decision.assemble import Assembler, skeleton


def skeletons(requests: Sequence[Message]) -> list[Any]:
    """The requests as the assembler reads them: serialised, then their containers parsed."""
    return [skeleton(request.SerializeToString()) for request in requests]


RESOURCE_URL = "https://opentelemetry.io/schemas/1.26.0"
SCOPE_URL = "https://opentelemetry.io/schemas/1.24.0"


def resource(service: str) -> Resource:
    return Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value=service))])


def spans_request(
    service: str, scopes: dict[str, list[str]], *, urls: bool = True
) -> ExportTraceServiceRequest:
    """One resource of ``service``; per scope name, spans with the given names."""
    out = ExportTraceServiceRequest()
    rs = ResourceSpans(resource=resource(service), schema_url=RESOURCE_URL if urls else "")
    for scope, names in scopes.items():
        rs.scope_spans.append(
            ScopeSpans(
                scope=InstrumentationScope(name=scope, version="1.0"),
                schema_url=SCOPE_URL if urls else "",
                spans=[Span(name=name, span_id=name.encode().ljust(8, b"_")[:8]) for name in names],
            )
        )
    out.resource_spans.append(rs)
    return out


def layout(request: ExportTraceServiceRequest) -> list[tuple[str, str, str, str, list[str]]]:
    return [
        (
            rs.resource.attributes[0].value.string_value,
            rs.schema_url,
            ss.scope.name,
            ss.schema_url,
            [span.name for span in ss.spans],
        )
        for rs in request.resource_spans
        for ss in rs.scope_spans
    ]


def add_span(
    assembler: Assembler, requests: list[ExportTraceServiceRequest], key: tuple[int, int, int], i: int
) -> None:
    r, res, scope = key
    span = requests[r].resource_spans[res].scope_spans[scope].spans[i]
    assembler.add(key, span.SerializeToString())


def test_items_go_back_under_their_resource_and_scope_with_schema_urls() -> None:
    requests = [spans_request("cart", {"a": ["a0", "a1", "a2"], "b": ["b0", "b1"]})]
    assembler = Assembler()
    add_span(assembler, requests, (0, 0, 0), 0)
    add_span(assembler, requests, (0, 0, 0), 2)
    add_span(assembler, requests, (0, 0, 1), 1)
    out = ExportTraceServiceRequest.FromString(assembler.build(skeletons(requests)))
    assert layout(out) == [
        ("cart", RESOURCE_URL, "a", SCOPE_URL, ["a0", "a2"]),
        ("cart", RESOURCE_URL, "b", SCOPE_URL, ["b1"]),
    ]
    assert out.resource_spans[0].resource == requests[0].resource_spans[0].resource
    assert out.resource_spans[0].scope_spans[0].scope == requests[0].resource_spans[0].scope_spans[0].scope
    assert assembler.items == 3


def test_identical_resources_of_different_requests_are_merged() -> None:
    requests = [
        spans_request("cart", {"a": ["x0", "x1"]}),
        spans_request("ad", {"a": ["y0"]}),
        spans_request("cart", {"a": ["z0"], "c": ["z1"]}),
    ]
    assembler = Assembler()
    add_span(assembler, requests, (0, 0, 0), 1)
    add_span(assembler, requests, (1, 0, 0), 0)
    add_span(assembler, requests, (2, 0, 0), 0)
    add_span(assembler, requests, (2, 0, 1), 0)
    out = ExportTraceServiceRequest.FromString(assembler.build(skeletons(requests)))
    assert layout(out) == [
        ("cart", RESOURCE_URL, "a", SCOPE_URL, ["x1", "z0"]),
        ("cart", RESOURCE_URL, "c", SCOPE_URL, ["z1"]),
        ("ad", RESOURCE_URL, "a", SCOPE_URL, ["y0"]),
    ]
    assert assembler.items == 4


def test_same_resource_with_another_schema_url_is_not_merged() -> None:
    requests = [spans_request("cart", {"a": ["x0"]}), spans_request("cart", {"a": ["y0"]}, urls=False)]
    assembler = Assembler()
    add_span(assembler, requests, (0, 0, 0), 0)
    add_span(assembler, requests, (1, 0, 0), 0)
    out = ExportTraceServiceRequest.FromString(assembler.build(skeletons(requests)))
    assert layout(out) == [
        ("cart", RESOURCE_URL, "a", SCOPE_URL, ["x0"]),
        ("cart", "", "a", "", ["y0"]),
    ]


def test_nothing_added_builds_an_empty_request() -> None:
    assembler = Assembler()
    assert assembler.build([]) == b""
    assert assembler.items == 0


def test_log_records_assemble_the_same_way() -> None:
    request = ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=resource("api"),
                schema_url=RESOURCE_URL,
                scope_logs=[
                    ScopeLogs(
                        scope=InstrumentationScope(name="logger"),
                        schema_url=SCOPE_URL,
                        log_records=[LogRecord(body=AnyValue(string_value=f"line {i}")) for i in range(4)],
                    )
                ],
            )
        ]
    )
    assembler = Assembler()
    records = request.resource_logs[0].scope_logs[0].log_records
    for i in (1, 3):
        assembler.add((0, 0, 0), records[i].SerializeToString())
    out = ExportLogsServiceRequest.FromString(assembler.build(skeletons([request])))
    assert len(out.resource_logs) == 1
    rl = out.resource_logs[0]
    assert rl.resource == request.resource_logs[0].resource
    assert rl.schema_url == RESOURCE_URL
    assert rl.scope_logs[0].schema_url == SCOPE_URL
    assert [r.body.string_value for r in rl.scope_logs[0].log_records] == ["line 1", "line 3"]
