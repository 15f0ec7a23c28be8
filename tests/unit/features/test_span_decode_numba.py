"""The compiled span reader against the numpy one: every column, the interner, failed requests.

The compiled reader may hand a batch back to the numpy one (it is stricter about what it reads
itself), never read differently: equal output on well-formed, unusual and damaged requests,
and no hand-back on what encoders write.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelai.features import span_batch, span_decoder
from otelai.features.interner import Interner
from otelai.features.span_batch import SpanBatch
from otelai.features.span_decoder import prepare_decoder
from otelai.features.wire import as_buffer

from .span_requests import (
    field,
    interleaved_payload,
    kv,
    make_request,
    make_span,
    random_requests,
    unusual_payload,
    varint,
)

numba = pytest.importorskip("numba")
kernel = pytest.importorskip("otelai.features.span_decode_numba")

_COLUMNS = [name for name in SpanBatch.__dataclass_fields__ if name != "failed_requests"]


def _both(payloads: list[bytes]) -> tuple[SpanBatch, SpanBatch]:
    """Each reader on ``payloads``, with an interner of its own; the interners must end equal."""
    numpy_interner, numba_interner = Interner(), Interner()
    expected = SpanBatch.from_payloads(payloads, numpy_interner, decoder="numpy")
    actual = SpanBatch.from_payloads(payloads, numba_interner, decoder="numba")
    _assert_same(expected, actual)
    assert _table(numba_interner) == _table(numpy_interner)
    return expected, actual


def _table(interner: Interner) -> tuple[list[str], list[tuple[str, str]]]:
    """Every id an interner handed out, in order, with its name."""
    services = [interner.service_name(i) for i in range(interner.services)]
    return services, [interner.operation_name(i) for i in range(interner.operations)]


def _read_by_kernel(payloads: list[bytes]) -> bool:
    """Whether the compiled reader reads ``payloads`` itself (no hand-back to numpy)."""
    sizes = np.array([len(p) for p in payloads], dtype=np.int64)
    ends = np.cumsum(sizes)
    return kernel.decode(as_buffer(payloads), ends - sizes, ends, span_batch._SALTS) is not None


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(random_requests(), min_size=1, max_size=3))
def test_random_requests_read_alike(requests: list[ExportTraceServiceRequest]) -> None:
    payloads = [request.SerializeToString() for request in requests]
    _both(payloads)
    assert _read_by_kernel(payloads)


def test_unusual_encodings_read_alike_without_hand_back() -> None:
    payloads = [unusual_payload(), interleaved_payload(), unusual_payload()]
    expected, _ = _both(payloads)
    assert len(expected) == 5
    assert _read_by_kernel(payloads)


def test_long_names_and_many_services_intern_alike() -> None:
    prefix = "SELECT " + "x" * 80
    spans = [make_span(1, i, name=prefix + "ab"[i % 2]) for i in range(1, 6)]
    request = make_request({"db": spans, "a": [make_span(2, 9, name="GET")], None: [make_span(3, 3)]})
    _both([request.SerializeToString(), make_request({"b": spans[:2]}).SerializeToString()])


def test_instrumented_spans_read_alike() -> None:
    """Spans as SDKs write them: ten attributes, events, statuses, traces across requests."""
    rng = np.random.default_rng(7)
    payloads = []
    for number in range(3):
        spans = []
        for i in range(1, 40):
            code = int(rng.choice([200, 404, 500, 503]))
            attributes: dict[str, object] = {f"app.key{k}": int(rng.integers(0, 1000)) for k in range(7)}
            attributes |= {"http.response.status_code": code, "url.path": "/x" * int(rng.integers(1, 90))}
            attributes |= {"db.system.name": "postgresql"} if i % 5 == 0 else {"server.address": "svc.local"}
            events = ("exception", "retry") if code >= 500 else ()
            parent = (i - 1) if i % 8 else None
            name = f"GET /route/{i % 6}" + ("/long" * 20 if i % 11 == 0 else "")
            spans.append(
                make_span(number % 2 + 1, i, parent, name=name, attributes=attributes, events=events)
            )
        payloads.append(make_request({f"svc{number}": spans[:20], "shared": spans[20:]}).SerializeToString())
    _both(payloads)
    assert _read_by_kernel(payloads)


GOOD = make_span(1, 1, attributes={"http.status_code": 200}, events=("exception",)).SerializeToString()


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param(b"\x30" + varint(2**64 - 1), id="kind -1"),
        pytest.param(b"\x30" + varint(2**63 + 3), id="kind huge"),
        pytest.param(field(15, b"\x18" + varint(2**64 - 2)), id="status -2"),
        pytest.param(field(15, b"\x18\x01") + field(15, b""), id="empty last status"),
        pytest.param(
            field(
                9, field(1, b"http.status_code") + field(2, b"\x18" + varint(2**64 - 5) + field(1, b"404"))
            ),
            id="negative int and string",
        ),
        pytest.param(
            field(9, field(1, b"http.status_code") + field(2, b"\x18\xc8\x01" + field(1, b"404"))),
            id="int and string",
        ),
        pytest.param(
            field(9, field(1, b"rpc.grpc.status_code") + field(2, b"") + field(2, b"\x18\x05")),
            id="two values",
        ),
        pytest.param(field(9, field(1, b"rpc.grpc.status_code")), id="no value"),
        pytest.param(field(9, field(2, b"\x18\x05")), id="no key"),
        pytest.param(field(9, b""), id="empty attribute"),
        pytest.param(
            field(11, b"") + field(11, field(2, b"exception") + field(2, b"retry")), id="renamed event"
        ),
        pytest.param(field(13, b"") * 33_000, id="saturated links"),
        pytest.param(b"\x0a\x80\x00" + b"\x12\x83\x80\x00" + b"\x00" * 3, id="overlong lengths"),
        pytest.param(
            varint(2**29 - 1 << 3 | 2) + b"\x00" + b"\xca\x00\x0b" + field(1, b"db.system"),
            id="large field, non-minimal tag",
        ),
    ],
)
def test_edge_values_read_alike_without_hand_back(extra: bytes) -> None:
    payloads = [_span_payload(GOOD + extra)]
    _both(payloads)
    assert _read_by_kernel(payloads)


def _span_payload(raw_span: bytes) -> bytes:
    scope = field(2, raw_span)
    resource = field(1, field(1, kv("service.name", "s").SerializeToString()))
    return field(1, resource + field(2, scope))


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(GOOD + b"\x4a", id="truncated attribute"),
        pytest.param(GOOD + b"\x4b\x00\x4c", id="group"),
        pytest.param(GOOD + b"\x4f", id="wire type 7"),
        pytest.param(GOOD + b"\x02\x00", id="field 0"),
        pytest.param(GOOD + b"\x80\x80\x80\x80\x80\x08\x00", id="six-byte tag"),
        pytest.param(GOOD + b"\x30" + b"\xff" * 10 + b"\x01", id="eleven-byte varint"),
        pytest.param(GOOD + field(9, field(1, b"db.system") + field(1, b"x")), id="two keys"),
        pytest.param(GOOD + field(9, field(1, b"http.status_code") + field(2, b"\x1b")), id="bad value"),
        pytest.param(GOOD + field(11, b"\x12\x05exc"), id="bad event"),
        pytest.param(GOOD + field(15, b"\x18"), id="bad status"),
        pytest.param(GOOD + varint(16 << 3 | 1) + b"\x00" * 3, id="short fixed64"),
    ],
)
def test_malformed_spans_fail_alike(payload: bytes) -> None:
    good = _span_payload(GOOD)
    _both([good, _span_payload(payload), good])


@pytest.mark.parametrize(
    "resource",
    [
        pytest.param(field(1, b""), id="empty attribute"),
        pytest.param(field(1, field(1, b"service.name") + field(1, b"x")), id="two keys"),
        pytest.param(field(1, b"\x0a\x8c\x00service.name" + field(2, b"\x0a\x01x")), id="long length prefix"),
        pytest.param(field(1, field(2, b"\x0a\x01x") + field(1, b"service.name")), id="value first"),
        pytest.param(field(1, field(1, b"service.name") + field(2, b"\x18\x05")), id="int name"),
        pytest.param(field(1, field(1, b"service.name") + field(2, b"\x0a")), id="truncated name"),
    ],
)
def test_odd_resources_read_alike(resource: bytes) -> None:
    spans = field(2, field(2, GOOD))
    payloads = [
        field(1, field(1, resource) + spans),
        field(1, field(1, resource) + field(1, resource) + spans),
    ]
    _both(payloads)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(random_requests(), st.data())
def test_damaged_requests_fail_alike(request: ExportTraceServiceRequest, data: st.DataObject) -> None:
    """Truncated, overwritten, inserted or deleted bytes: both readers agree on every outcome."""
    payload = bytearray(request.SerializeToString() or b"\x0a\x00")
    at = data.draw(st.integers(0, len(payload) - 1))
    how = data.draw(st.sampled_from(["truncate", "set", "insert", "delete"]))
    byte = data.draw(st.integers(0, 255))
    if how == "truncate":
        del payload[at:]
    elif how == "set":
        payload[at] = byte
    elif how == "insert":
        payload.insert(at, byte)
    else:
        del payload[at]
    good = make_request({"a": [make_span(1, 1)]}).SerializeToString()
    _both([good, bytes(payload), good])


def test_decoder_is_chosen_by_argument_and_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    assert prepare_decoder("numba") == "numba"
    assert prepare_decoder("numpy") == "numpy"
    monkeypatch.setenv(span_decoder.DECODER_ENV, "numpy")
    assert prepare_decoder() == "numpy"
    monkeypatch.setenv(span_decoder.DECODER_ENV, "fastest")
    with caplog.at_level(logging.WARNING, logger="otelai.features"):
        assert prepare_decoder() == "numba"  # an unknown value means auto, said once in the log
    assert "unknown span decoder" in caplog.text


def test_without_a_writable_cache_the_kernels_compile_uncached(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """numba raises at decoration when no cache directory is writable; the reader still loads."""
    # A locator that never applies to a file on disk stands for a read-only install and home.
    monkeypatch.setattr(numba.config, "CACHE_LOCATOR_CLASSES", "IPythonCacheLocator")

    def double(x: int) -> int:
        return 2 * x

    with caplog.at_level(logging.WARNING, logger="otelai.features"):
        jitted = kernel._jit(double)
    assert jitted(21) == 42
    assert "numba cache unavailable" in caplog.text


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 300))
def test_links_match_the_numpy_links(seed: int, n: int) -> None:
    """Parents, depths and child counts alike on ids drawn from few values: duplicate spans,
    ids shared across traces, missing parents, zero ids and loops all occur."""
    rng = np.random.default_rng(seed)
    traces = rng.integers(0, 256, size=(3, 16), dtype=np.uint8)
    spans = rng.integers(0, 256, size=(max(2, n // 3), 8), dtype=np.uint8)
    spans[0] = 0  # the invalid (all-zero) id, as a span id and as a parent id
    trace_id = traces[rng.integers(0, 3, n)]
    span_id = spans[rng.integers(0, len(spans), n)]
    parent_span_id = spans[rng.integers(0, len(spans), n)]
    ids = np.ascontiguousarray(np.concatenate([trace_id, span_id, parent_span_id], axis=1))
    expected = span_batch._links(trace_id, span_id, parent_span_id)
    parent, depth, children = kernel.links(ids, parent_span_id.any(axis=1))
    np.testing.assert_array_equal(parent, expected["parent_index"])
    np.testing.assert_array_equal(depth, expected["depth"])
    np.testing.assert_array_equal(children, expected["child_count"])
    assert (parent.dtype, depth.dtype, children.dtype) == (np.int32, np.int16, np.int32)


def _assert_same(expected: SpanBatch, actual: SpanBatch) -> None:
    assert actual.failed_requests == expected.failed_requests
    for name in _COLUMNS:
        want, got = getattr(expected, name), getattr(actual, name)
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        np.testing.assert_array_equal(got, want, err_msg=name)
        assert not got.flags.writeable, name
        assert got.flags.c_contiguous == want.flags.c_contiguous or got.ndim == 1, name


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.lists(random_requests(), min_size=1, max_size=3), min_size=2, max_size=4),
    st.integers(1, 6),
    st.integers(2, 40),
    st.data(),
)
def test_batches_through_one_interner_read_alike(
    batches: list[list[ExportTraceServiceRequest]],
    max_services: int,
    max_operations: int,
    data: st.DataObject,
) -> None:
    """Later batches find their operations remembered by the interner (the compiled lookup); caps
    give overflowed services and operations; some batches are damaged (handed back to numpy)."""
    numpy_interner = Interner(max_services=max_services, max_operations=max_operations)
    numba_interner = Interner(max_services=max_services, max_operations=max_operations)
    prefix = "SELECT " + "x" * 80
    long_names = make_request({"db": [make_span(1, i, name=prefix + "ab"[i % 2]) for i in range(1, 4)]})
    for requests in [*batches, *batches]:  # again: every operation is remembered by now
        payloads = [request.SerializeToString() for request in requests] + [long_names.SerializeToString()]
        if data.draw(st.booleans()):
            cut = data.draw(st.integers(0, len(payloads[0])))
            payloads[0] = payloads[0][:cut]
        expected = SpanBatch.from_payloads(payloads, numpy_interner, decoder="numpy")
        actual = SpanBatch.from_payloads(payloads, numba_interner, decoder="numba")
        _assert_same(expected, actual)
        assert _table(numba_interner) == _table(numpy_interner)
        assert numba_interner.overflowed == numpy_interner.overflowed
