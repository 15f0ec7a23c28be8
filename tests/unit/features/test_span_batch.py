"""SpanBatch: every column against known spans and against the protobuf API on random requests."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelai.features.interner import OVERFLOW, UNKNOWN_SERVICE, Interner
from otelai.features.span_batch import SpanBatch
from otelai.features.span_decoder import Decoder

from .span_requests import (
    T0,
    interleaved_payload,
    make_request,
    make_span,
    named,
    random_requests,
    reference,
    unusual_payload,
)

ERROR = Status.STATUS_CODE_ERROR
OK = Status.STATUS_CODE_OK
_HAS_NUMBA = importlib.util.find_spec("numba") is not None
# Both span readers against the protobuf API (test_span_decode_numba compares them column by column).
DECODERS = [
    "numpy",
    pytest.param("numba", marks=pytest.mark.skipif(not _HAS_NUMBA, reason="numba not installed")),
]


def _batch(*requests: ExportTraceServiceRequest, interner: Interner | None = None) -> SpanBatch:
    return SpanBatch.from_requests(list(requests), interner or Interner())


def test_ids_times_status_kind_and_counts() -> None:
    spans = [
        make_span(7, 1, name="GET /a", kind=Span.SPAN_KIND_SERVER, start=T0, duration=2_500, status=OK),
        make_span(7, 2, 1, kind=Span.SPAN_KIND_CLIENT, duration=0, status=ERROR, events=("retry",), links=2),
        make_span(9, 3, 8, kind=Span.SPAN_KIND_CONSUMER, attributes={"a": 1, "b": "x", "c": True}),
    ]
    batch = _batch(make_request({"checkout": spans}))
    assert len(batch) == 3
    assert bytes(batch.trace_id[0]) == (7).to_bytes(16, "big")
    assert bytes(batch.span_id[2]) == (3).to_bytes(8, "big")
    assert batch.has_parent.tolist() == [False, True, True]
    assert batch.start_unix_nano[0] == T0
    assert batch.duration_ns.tolist() == [2_500, 0, 1_000_000]
    assert batch.status_code.tolist() == [1, 2, 0]
    assert batch.kind.tolist() == [2, 3, 5]
    assert batch.n_events.tolist() == [0, 1, 0]
    assert batch.n_links.tolist() == [0, 2, 0]
    assert batch.n_attributes.tolist() == [0, 0, 3]
    assert batch.status_code.dtype == np.int8 and batch.n_events.dtype == np.int16


def test_negative_duration_is_zero_and_missing_ids_are_zeros() -> None:
    span = make_span(1, 2, start=T0, duration=0)
    span.end_time_unix_nano = T0 - 5
    span.ClearField("trace_id")
    span.span_id = b"\x01\x02"  # wrong size: treated as absent
    batch = _batch(make_request({"s": [span]}))
    assert batch.duration_ns.tolist() == [0]
    assert not batch.trace_id.any() and not batch.span_id.any()


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"http.response.status_code": 503}, 5),
        ({"http.response.status_code": "404"}, 4),
        ({"http.status_code": 200}, 2),
        ({"http.status_code": "302"}, 3),
        ({"http.response.status_code": 101, "http.status_code": 500}, 1),  # the current name wins
        ({"http.response.status_code": "oops", "http.status_code": 500}, 5),
        ({"http.response.status_code": 999}, 0),
        ({"http.response.status_code": -1}, 0),
        ({"http.response.status_code": 2.5}, 0),
        ({}, 0),
    ],
)
def test_http_status_class(attributes: dict[str, object], expected: int) -> None:
    batch = _batch(make_request({"s": [make_span(1, 1, attributes={"x": "y", **attributes})]}))
    assert batch.http_status_class.tolist() == [expected]


@pytest.mark.parametrize(
    ("attributes", "expected"),
    [
        ({"rpc.grpc.status_code": 0}, 0),
        ({"rpc.grpc.status_code": 14}, 14),
        ({"rpc.grpc.status_code": "5"}, 5),
        ({}, -1),
    ],
)
def test_grpc_status(attributes: dict[str, object], expected: int) -> None:
    batch = _batch(make_request({"s": [make_span(1, 1, attributes=attributes)]}))
    assert batch.rpc_grpc_status.tolist() == [expected]


def test_db_and_exception_flags() -> None:
    spans = [
        make_span(1, 1, attributes={"db.system.name": "postgresql"}),
        make_span(1, 2, attributes={"db.system": "redis"}),
        make_span(1, 3, attributes={"db.query.text": "SELECT 1"}, events=("retry", "exception")),
        make_span(1, 4, events=("exceptions", "retry")),
    ]
    batch = _batch(make_request({"s": spans}))
    assert batch.has_db.tolist() == [True, True, False, False]
    assert batch.has_exception_event.tolist() == [False, False, True, False]


def test_three_level_trace_split_across_two_requests() -> None:
    first = make_request({"frontend": [make_span(5, 1, name="GET /"), make_span(5, 3, 2, name="SELECT")]})
    second = make_request(
        {"cart": [make_span(5, 2, 1, name="cart"), make_span(5, 4, 2, name="redis"), make_span(5, 6, 99)]}
    )
    batch = _batch(first, second)
    by_span = {int.from_bytes(bytes(row), "big"): i for i, row in enumerate(batch.span_id)}
    depth = {span: int(batch.depth[row]) for span, row in by_span.items()}
    children = {span: int(batch.child_count[row]) for span, row in by_span.items()}
    parents = {span: int(batch.parent_index[row]) for span, row in by_span.items()}
    assert depth == {1: 0, 2: 1, 3: 2, 4: 2, 6: -1}
    assert children == {1: 1, 2: 2, 3: 0, 4: 0, 6: 0}
    assert parents[2] == by_span[1] and parents[3] == by_span[2] and parents[6] == -1
    assert batch.is_root.tolist() == [True, False, False, False, False]
    assert batch.request.tolist() == [0, 0, 1, 1, 1]


def test_same_span_id_in_another_trace_is_not_a_parent() -> None:
    batch = _batch(make_request({"s": [make_span(1, 1), make_span(2, 2, 1)]}))
    assert batch.parent_index.tolist() == [-1, -1]
    assert batch.depth.tolist() == [0, -1]


def test_parent_cycle_gives_unknown_depth() -> None:
    batch = _batch(make_request({"s": [make_span(1, 1, 2), make_span(1, 2, 1)]}))
    assert batch.depth.tolist() == [-1, -1]


def test_locators_point_back_to_each_span() -> None:
    request = make_request({"a": [make_span(1, 1), make_span(1, 2, 1)], None: [make_span(2, 3, name="x")]})
    other = make_request({"b": [make_span(3, 4)]})
    payloads = [request.SerializeToString(), other.SerializeToString()]
    batch = SpanBatch.from_payloads(payloads, Interner())
    parsed = [ExportTraceServiceRequest.FromString(payload) for payload in payloads]
    for row in range(len(batch)):
        request_index = int(batch.request[row])
        span = (
            parsed[request_index]
            .resource_spans[batch.resource[row]]
            .scope_spans[batch.scope[row]]
            .spans[batch.index[row]]
        )
        assert bytes(batch.span_id[row]) == span.span_id
        raw = payloads[request_index][batch.span_start[row] : batch.span_end[row]]
        assert Span.FromString(raw) == span


def test_services_and_operations_are_interned() -> None:
    interner = Interner()
    request = make_request(
        {
            "a": [make_span(1, 1, name="GET"), make_span(1, 2, name="PUT")],
            "b": [make_span(2, 3, name="GET")],
            None: [make_span(3, 4, name="GET")],
        }
    )
    first = _batch(request, interner=interner)
    second = _batch(
        make_request({"b": [make_span(4, 5, name="GET")], "a": [make_span(4, 6, name="PUT")]}),
        interner=interner,
    )
    assert len(set(first.operation_id.tolist())) == 4
    assert second.operation_id.tolist() == [first.operation_id[2], first.operation_id[1]]
    assert second.service_id.tolist() == [first.service_id[2], first.service_id[0]]
    assert interner.operation_name(int(first.operation_id[3])) == (UNKNOWN_SERVICE, "GET")
    assert interner.services == 3 and interner.operations == 4


def test_interner_cap_gives_overflow() -> None:
    interner = Interner(max_operations=2)
    batch = _batch(
        make_request({"a": [make_span(1, i, name=f"op{i}") for i in range(1, 5)]}), interner=interner
    )
    assert sorted(batch.operation_id.tolist()) == [OVERFLOW, OVERFLOW, 0, 1]
    assert interner.overflowed == 2


def test_long_names_are_told_apart() -> None:
    prefix = "SELECT " + "x" * 80
    spans = [
        make_span(1, 1, name=prefix + "a"),
        make_span(1, 2, name=prefix + "b"),
        make_span(1, 3, name=prefix + "a"),
    ]
    batch = _batch(make_request({"db": spans}))
    ids = batch.operation_id.tolist()
    assert ids[0] == ids[2] != ids[1]


def test_malformed_request_is_left_out() -> None:
    good = make_request({"a": [make_span(1, 1)]}).SerializeToString()
    truncated = good[:-3]
    batch = SpanBatch.from_payloads([good, truncated, good], Interner())
    assert batch.failed_requests == (1,)
    assert batch.request.tolist() == [0, 2]


def test_empty_inputs() -> None:
    assert len(SpanBatch.from_payloads([], Interner())) == 0
    empty = SpanBatch.from_payloads([ExportTraceServiceRequest().SerializeToString()], Interner())
    assert len(empty) == 0 and empty.trace_id.shape == (0, 16)


def test_columns_are_read_only() -> None:
    batch = _batch(make_request({"a": [make_span(1, 1)]}))
    with pytest.raises(ValueError, match="read-only"):
        batch.duration_ns[0] = 5


@pytest.mark.parametrize("decoder", DECODERS)
def test_unusual_encodings_read_like_the_protobuf_api(decoder: Decoder) -> None:
    """Reordered KeyValue fields, long keys and values, field 16, unknown fields, repeats."""
    payload = unusual_payload()
    parsed = ExportTraceServiceRequest.FromString(payload)
    assert len(parsed.resource_spans[0].scope_spans[0].spans) == 1
    interner = Interner()
    batch = SpanBatch.from_payloads([payload], interner, decoder=decoder)
    _assert_matches_reference(batch, [parsed], interner)
    assert batch.rpc_grpc_status.tolist() == [7]
    assert batch.http_status_class.tolist() == [4]
    assert batch.status_code.tolist() == [1]
    assert batch.has_exception_event.tolist() == [True]
    assert batch.n_attributes.tolist() == [4]


@pytest.mark.parametrize("decoder", DECODERS)
def test_spans_interleaved_with_other_fields_are_still_found(decoder: Decoder) -> None:
    payload = interleaved_payload()
    batch = SpanBatch.from_payloads([payload], Interner(), decoder=decoder)
    assert [int.from_bytes(bytes(row), "big") for row in batch.span_id] == [1, 2, 3]
    assert batch.index.tolist() == [0, 1, 2]


def _assert_matches_reference(
    batch: SpanBatch, requests: list[ExportTraceServiceRequest], interner: Interner
) -> None:
    expected = reference(requests)
    actual = {
        **{name: getattr(batch, name) for name in expected if hasattr(batch, name)},
        **named(batch, interner),
    }
    for name, values in expected.items():
        np.testing.assert_array_equal(actual[name], values.reshape(actual[name].shape), err_msg=name)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@pytest.mark.parametrize("decoder", DECODERS)
@given(st.lists(random_requests(), min_size=1, max_size=3))
def test_random_requests_match_the_protobuf_api(
    decoder: Decoder, requests: list[ExportTraceServiceRequest]
) -> None:
    interner = Interner()
    batch = SpanBatch.from_requests(requests, interner, decoder=decoder)
    assert batch.failed_requests == ()
    if not reference(requests):
        assert len(batch) == 0
        return
    _assert_matches_reference(batch, requests, interner)
    np.testing.assert_array_equal(batch.is_root, ~batch.has_parent)
