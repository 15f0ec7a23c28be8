from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from otelai.decision.tagging import field
from otelai.exporter.merge import Merger, Unmergeable, merge_requests
from otelai.signals import Signal

from . import otlp_samples
from .otlp_samples import content as _content
from .otlp_samples import joined as _joined
from .otlp_samples import traces_of as _traces


def test_equal_resources_and_scopes_are_written_once_items_in_order() -> None:
    requests = [_traces("checkout", 3), _traces("checkout", 2, offset=3), _traces("checkout", 4, offset=5)]
    merged = merge_requests(requests)
    parsed = trace_service_pb2.ExportTraceServiceRequest.FromString(merged)
    assert len(parsed.resource_spans) == 1
    assert len(parsed.resource_spans[0].scope_spans) == 1
    assert [span.name for span in parsed.resource_spans[0].scope_spans[0].spans] == [
        f"op{i}" for i in range(9)
    ]
    assert _content(Signal.TRACES, merged) == _joined(Signal.TRACES, requests)
    assert len(merged) < sum(len(data) for data in requests)


def test_different_resources_scopes_and_schemas_stay_apart() -> None:
    requests = [
        _traces("checkout", 2),
        _traces("cart", 1, offset=2),
        _traces("checkout", 1, scope="other", offset=3),
        _traces("checkout", 1, schema="https://opentelemetry.io/schemas/1.21.0", offset=4),
        _traces("checkout", 2, offset=5),
    ]
    merged = merge_requests(requests)
    parsed = trace_service_pb2.ExportTraceServiceRequest.FromString(merged)
    # checkout (lib, other), cart, checkout with a schema: in order of first appearance.
    assert [len(r.scope_spans) for r in parsed.resource_spans] == [2, 1, 1]
    assert [s.name for s in parsed.resource_spans[0].scope_spans[0].spans] == ["op0", "op1", "op5", "op6"]
    assert _content(Signal.TRACES, merged) == _joined(Signal.TRACES, requests)


@pytest.mark.parametrize("signal", list(Signal))
def test_every_signal_merges_to_the_same_content(signal: Signal) -> None:
    requests = [otlp_samples.sample(signal) for _ in range(3)]
    merged = merge_requests(requests)
    assert _content(signal, merged) == _joined(signal, requests)
    message, resources, _, _ = otlp_samples.MESSAGES[signal]
    assert len(getattr(message.FromString(merged), resources)) == 1


def test_a_single_request_is_returned_as_it_is() -> None:
    data = _traces("checkout", 2)
    assert merge_requests([data]) is data


def test_fields_in_any_order_and_resources_without_scopes_are_kept() -> None:
    # schema_url before the items, as a non-canonical encoder may write it.
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.resource_spans.add().resource.attributes.add(key="k").value.string_value = "v"
    canonical = _traces("checkout", 1)
    resource_spans = trace_service_pb2.ExportTraceServiceRequest.FromString(canonical).resource_spans[0]
    reordered = field(1, b"\x1a\x01u" + resource_spans.SerializeToString())
    requests = [request.SerializeToString(), reordered, canonical]
    merged = merge_requests(requests)
    parsed = trace_service_pb2.ExportTraceServiceRequest.FromString(merged)
    assert [r.schema_url for r in parsed.resource_spans] == ["", "u", ""]
    assert [len(r.scope_spans) for r in parsed.resource_spans] == [0, 1, 1]
    assert _content(Signal.TRACES, merged) == _joined(Signal.TRACES, requests)


@pytest.mark.parametrize(
    "data",
    [
        b"\x01\x02\x03",  # not a request at all
        b"\x0a\x05\x0a\x01",  # cut short
        b"\x0a\x02\x20\x01",  # an unknown varint field in a ResourceSpans
        b"\x0a\x06\x12\x04\x08\x01\x12\x00",  # a varint where a ScopeSpans field should be
        b"\x0a\x04\x0a\x00\x0a\x00",  # resource given twice
    ],
)
def test_an_envelope_it_does_not_understand_is_refused_and_nothing_added(data: bytes) -> None:
    merger = Merger()
    good = _traces("checkout", 2)
    merger.add(good)
    with pytest.raises(Unmergeable):
        merger.add(data)
    assert merger.requests == 1
    merger.add(_traces("checkout", 1, offset=2))
    assert _content(Signal.TRACES, merger.build()) == _joined(
        Signal.TRACES, [good, _traces("checkout", 1, offset=2)]
    )


def test_merge_requests_names_the_request_it_refused() -> None:
    with pytest.raises(Unmergeable, match="request 1"):
        merge_requests([_traces("checkout", 1), b"\xff"])
