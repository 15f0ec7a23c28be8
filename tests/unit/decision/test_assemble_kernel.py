"""The compiled assembly of forwarded traces against the Python path: the same bytes.

``TraceProcessor._assemble`` runs twice on the same generated batch, once through the kernels
(:mod:`otelai.decision.assemble_numba`) and once with them switched off; the forwarded
requests must be equal byte for byte. The kernels are also checked on their own: where they
report a result, upb (the skeleton, ``SpanState``) reads the same; where they are unsure, the
caller's upb fallback gives the same output.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry

from otelai.config import load_config
from otelai.decision import assemble
from otelai.decision.assemble import RangedRequest, assembly_kernels, skeleton
from otelai.decision.severity import Severity
from otelai.decision.tagging import field
from otelai.decision.trace_buffer import Recalled
from otelai.features.otlp_layout import SpanState
from otelai.features.span_batch import SpanBatch
from otelai.pipeline import Payload
from otelai.scoring import traces
from otelai.scoring.scorer import Scored
from otelai.scoring.traces import ANOMALY, CRITICAL_CONTEXT, DROPPED, SAMPLED, TraceProcessor
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

# Loaded directly, not through assembly_kernels(): the tests run whatever OTELAI_ASSEMBLY_KERNEL says.
KERNELS: Any = pytest.importorskip("otelai.decision.assemble_numba")

U8 = np.uint8
RESOURCE_URL = b"https://opentelemetry.io/schemas/1.26.0"
SCOPE_URL = b"https://opentelemetry.io/schemas/1.24.0"
TRACE_STATES = ("", "vendor=abc", "ot=th:8", "ot=th:0;rv:123456789abcde,congo=t61rcWkgMzE", "ot=bad value")


def kernels() -> Any:
    return KERNELS


def frozen(values: Any, dtype: Any = np.int64) -> Any:
    """A read-only array, as SpanBatch's columns are (the kernels are compiled for those)."""
    array = np.array(values, dtype=dtype)
    array.setflags(write=False)
    return array


def state_ranges(data: bytes, starts: list[int], ends: list[int]) -> list[tuple[int, int]]:
    """The kernel's trace state (start, end) of each span ``data[starts[i]:ends[i]]``: all
    anomalous, so that every span is listed with its trace state."""
    n = len(starts)
    extra_id, odd, states, listed = kernels().trace_states(
        np.frombuffer(data, dtype=U8),
        np.arange(n, dtype=np.int64),
        frozen(starts),
        frozen(ends),
        np.full(n, ANOMALY, dtype=np.int8),
        np.full(n, Severity.ANOMALY, dtype=np.int8),
    )
    assert listed == n and odd[:n].tolist() == list(range(n)) and extra_id.tolist() == [-1] * n
    return [(start, end) for start, end in states[:n].tolist()]


@pytest.fixture(scope="module")
def processor() -> Iterator[TraceProcessor]:
    config = load_config(text="scoring: {signals: [traces]}\nselection: {normal_sample_rate: 0.1}\n")
    made = TraceProcessor(config, Metrics(CollectorRegistry()))
    yield made
    made.close()


# -- generated requests -----------------------------------------------------------------------


def resource_bytes(service: str) -> bytes:
    attribute = KeyValue(key="service.name", value=AnyValue(string_value=service))
    return Resource(attributes=[attribute]).SerializeToString()


# Shared between requests, so identical containers merge; None: the field is absent, b"": present
# and empty (both read as b"", so they merge too).
RESOURCES = (resource_bytes("cart"), resource_bytes("frontend"), b"", None)
SCOPES = (InstrumentationScope(name="io.grpc", version="1.2").SerializeToString(), b"", None)
URLS = (RESOURCE_URL, SCOPE_URL, b"", None)


def span(rng: np.random.Generator, *, big: bool = False) -> bytes:
    """A span's bytes; some with a trace state, some with it twice (the last one counts),
    some long enough for two- and three-byte lengths."""
    trace_state = str(rng.choice(TRACE_STATES))
    message = Span(
        trace_id=rng.bytes(16),
        span_id=rng.bytes(8),
        parent_span_id=rng.bytes(8) if rng.random() < 0.5 else b"",
        name=f"op{int(rng.integers(4))}",
        kind=Span.SPAN_KIND_SERVER,
        start_time_unix_nano=1_700_000_000_000_000_000,
        end_time_unix_nano=1_700_000_000_000_000_000 + int(rng.integers(1, 10**9)),
        trace_state=trace_state,
        attributes=[KeyValue(key="http.route", value=AnyValue(string_value="x" * int(rng.integers(0, 200))))],
    )
    if big:
        message.attributes.append(KeyValue(key="blob", value=AnyValue(string_value="y" * 20_000)))
    data = message.SerializeToString()
    if rng.random() < 0.15:  # field 3 again, after the other fields
        data += field(3, str(rng.choice(TRACE_STATES)).encode())
    return data


def shuffled(rng: np.random.Generator, parts: list[bytes], singular: list[bytes]) -> bytes:
    """Repeated ``parts`` in order, each singular field at a random place among them."""
    out = list(parts)
    for part in singular:
        out.insert(int(rng.integers(0, len(out) + 1)), part)
    return b"".join(out)


def container(rng: np.random.Generator, first: bytes | None, items: list[bytes], url: bytes | None) -> bytes:
    singular = [] if first is None else [field(1, first)]
    if url is not None:
        singular.append(field(3, url))
    return shuffled(rng, [field(2, item) for item in items], singular)


def request(rng: np.random.Generator) -> bytes:
    """An export request: one to three resources of one to three scopes of zero to six spans."""
    resources = []
    for _ in range(int(rng.integers(1, 4))):
        scopes = []
        for _ in range(int(rng.integers(1, 4))):
            spans = [span(rng, big=rng.random() < 0.02) for _ in range(int(rng.integers(0, 7)))]
            pick = SCOPES[int(rng.integers(len(SCOPES)))]
            scopes.append(container(rng, pick, spans, URLS[int(rng.integers(len(URLS)))]))
        pick = RESOURCES[int(rng.integers(len(RESOURCES)))]
        resources.append(container(rng, pick, scopes, URLS[int(rng.integers(len(URLS)))]))
    return b"".join(field(1, resource) for resource in resources)


def decisions(
    rng: np.random.Generator, processor: TraceProcessor, n: int, dropped: float
) -> tuple[Scored, Any, Any]:
    """Scores, severities and selection codes as ``_select`` makes them (anomalous: code ANOMALY)."""
    shares = np.array([dropped, 0.3, 0.15, 0.15])
    shares[1:] *= (1 - dropped) / shares[1:].sum()
    code = rng.choice([DROPPED, SAMPLED, CRITICAL_CONTEXT, ANOMALY], size=n, p=shares)
    severity = np.where(
        code == ANOMALY, rng.choice([Severity.ANOMALY, Severity.CRITICAL], size=n), Severity.NORMAL
    ).astype(np.int8)
    detectors = max(1, len(processor.scorer.detectors))
    features = rng.integers(-1, len(processor.scorer.schema.names), size=(n, 2))
    scored = Scored(rng.random(n), rng.integers(0, detectors, n), features)
    return scored, severity, code.astype(np.int8)


def recalled_spans(rng: np.random.Generator, processor: TraceProcessor, data: bytes) -> Recalled:
    batch = SpanBatch.from_payloads([data], processor.interner)
    rows = np.flatnonzero(rng.random(len(batch)) < 0.5)

    def rows_of(column: Any) -> Any:
        return column.take(rows).astype(np.int64)

    return Recalled(
        data,
        rows_of(batch.span_start),
        rows_of(batch.span_end),
        rows_of(batch.resource),
        rows_of(batch.scope),
        rows_of(batch.index),
    )


def assemble_both(
    processor: TraceProcessor,
    datas: list[bytes],
    rng: np.random.Generator,
    recalled: list[Recalled] | None = None,
    *,
    dropped: float = 0.4,
) -> tuple[list[Payload], list[Payload]]:
    """``_assemble`` of one batch through the kernels and through the Python path; ``dropped``:
    the share of spans dropped."""
    payloads = [Payload(Signal.TRACES, data, 1, received_ns=1000 + i) for i, data in enumerate(datas)]
    batch = SpanBatch.from_payloads(datas, processor.interner)
    assert batch.failed_requests == ()
    scored, severity, code = decisions(rng, processor, len(batch), dropped)
    args = (payloads, datas, batch, scored, severity, code, list(recalled or []))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(traces, "assembly_kernels", kernels)
        patch.setattr(traces, "add_kept", _never)  # the compiled path must not fall back
        compiled = processor._assemble(*args)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(traces, "assembly_kernels", lambda: None)
        python = processor._assemble(*args)
    return compiled, python


def _never(*args: Any) -> None:
    raise AssertionError("the compiled path fell back to the Python one")


def assert_same(compiled: list[Payload], python: list[Payload]) -> None:
    assert len(compiled) == len(python)
    for got, want in zip(compiled, python, strict=True):
        assert got.items == want.items
        assert got.received_ns == want.received_ns
        assert got.data == want.data
        ExportTraceServiceRequest.FromString(got.data)  # a valid request, too


# -- the processor's output -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(25))
def test_compiled_assembly_writes_the_python_paths_bytes(processor: TraceProcessor, seed: int) -> None:
    rng = np.random.default_rng(seed)
    datas = [request(rng) for _ in range(int(rng.integers(1, 6)))]
    if seed % 3 == 0:  # the same request twice in a batch: every container merges
        datas.append(datas[0])
    recalled = [recalled_spans(rng, processor, request(rng)) for _ in range(int(rng.integers(0, 3)))]
    compiled, python = assemble_both(processor, datas, rng, recalled)
    assert_same(compiled, python)
    assert compiled, "nothing kept: the comparison proves nothing"


def test_a_batch_of_mostly_normal_spans(processor: TraceProcessor) -> None:
    """The usual case: many kept spans sharing one suffix, one request, one scope."""
    rng = np.random.default_rng(99)
    spans = [field(2, span(rng, big=i in (10, 200))) for i in range(300)]
    data = field(1, field(1, RESOURCES[0]) + field(2, field(1, SCOPES[0]) + b"".join(spans)))
    compiled, python = assemble_both(processor, [data, data], rng)
    assert_same(compiled, python)
    assert compiled and compiled[0].items > 100


@pytest.mark.parametrize(
    "odd",
    [
        b"\x28\x01",  # an unknown varint field in the ResourceSpans
        field(1, RESOURCES[1]),  # a second Resource (upb: the last one counts)
        field(3, SCOPE_URL),  # a second schema_url
        field(9, b"unknown"),  # an unknown length-delimited field
    ],
)
def test_requests_the_kernel_leaves_to_upb_assemble_the_same(processor: TraceProcessor, odd: bytes) -> None:
    rng = np.random.default_rng(5)
    spans = b"".join(field(2, span(rng)) for _ in range(6))
    plain = field(1, field(1, RESOURCES[0]) + field(2, field(1, SCOPES[0]) + spans) + field(3, RESOURCE_URL))
    strange = field(
        1, field(1, RESOURCES[0]) + field(2, field(1, SCOPES[0]) + spans) + field(3, RESOURCE_URL) + odd
    )
    assert kernels().containers(np.frombuffer(strange, dtype=U8)) is None
    assert SpanBatch.from_payloads([strange], processor.interner).failed_requests == ()
    compiled, python = assemble_both(processor, [plain, strange, plain], rng)
    assert_same(compiled, python)


@pytest.mark.parametrize(
    ("odd", "trace_state"),
    [
        (b"\x18\x01", b"vendor=x"),  # field 3 as a varint: upb keeps it as an unknown field
        (b"\x1d\x01\x02\x03\x04", b"vendor=x"),  # field 3 as a fixed32
        (b"\x9a\x80\x00\x01z", b"z"),  # field 3 behind a tag that is not minimal: upb reads it
    ],
)
def test_spans_the_kernel_leaves_to_upb_get_the_same_trace_state(
    processor: TraceProcessor, odd: bytes, trace_state: bytes
) -> None:
    rng = np.random.default_rng(11)
    message = Span(trace_id=rng.bytes(16), span_id=rng.bytes(8), name="g", trace_state="vendor=x")
    strange = message.SerializeToString() + odd
    assert SpanState.FromString(strange).trace_state == trace_state
    assert state_ranges(strange, [0], [len(strange)]) == [(-1, -1)]
    data = field(1, field(2, field(2, strange) + field(2, span(rng))))
    assert SpanBatch.from_payloads([data], processor.interner).failed_requests == ()
    for seed in range(6):  # kept as sampled, as context and as an anomaly
        compiled, python = assemble_both(processor, [data], np.random.default_rng(seed), dropped=0.0)
        assert_same(compiled, python)


def test_process_forwards_the_same_through_either_path() -> None:
    """Two fresh processors, one with the kernels switched off, see the same batches."""
    config = load_config(text="scoring: {signals: [traces]}\nselection: {normal_sample_rate: 0.3}\n")
    rng = np.random.default_rng(3)
    batches = [[request(rng) for _ in range(3)] for _ in range(3)]
    outputs = []
    for kernels_on in (True, False):
        made = TraceProcessor(config, Metrics(CollectorRegistry()))
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(traces, "assembly_kernels", kernels if kernels_on else lambda: None)
            out = [
                made.process([Payload(Signal.TRACES, data, 1, received_ns=7) for data in datas])
                for datas in batches
            ]
        made.close()
        outputs.append([[payload.data for payload in payloads] for payloads in out])
    assert outputs[0] == outputs[1]
    assert any(outputs[0])


def test_the_environment_variable_keeps_the_python_path(monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        for value in ("python", "numpy", "auto"):
            monkeypatch.setenv(assemble.KERNEL_ENV, value)
            assembly_kernels.cache_clear()
            assert (assembly_kernels() is None) == (value != "auto"), value
    finally:
        monkeypatch.undo()
        assembly_kernels.cache_clear()  # loaded again as the environment says


# -- the kernels on their own -----------------------------------------------------------------


def skeleton_containers(data: bytes) -> list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]]:
    parsed = skeleton(data)
    return [(r.resource, r.schema_url, [(s.scope, s.schema_url) for s in r.scopes]) for r in parsed.resources]


def kernel_containers(data: bytes) -> list[tuple[bytes, bytes, list[tuple[bytes, bytes]]]] | None:
    """The kernel's ranges as :func:`skeleton_containers` lists them, read through RangedRequest."""
    found = kernels().containers(np.frombuffer(data, dtype=U8))
    if found is None:
        return None
    ranged = RangedRequest(data, *found)
    out = []
    for i, row in enumerate(ranged.resources.tolist()):
        resource = (data[row[0] : row[1]], data[row[2] : row[3]])
        scopes = []
        for j in range(row[assemble.RESOURCE_SCOPES]):
            resource_key, scope_key = ranged.containers(i, j)
            assert resource_key == resource
            scopes.append(scope_key)
        with pytest.raises(IndexError):
            ranged.containers(i, len(scopes))
        out.append((*resource, scopes))
    return out


def mutations(rng: np.random.Generator, data: bytes, count: int) -> Iterator[bytes]:
    """``data`` cut short, with a byte changed, inserted or removed."""
    for _ in range(count):
        at = int(rng.integers(0, len(data) + 1))
        kind = int(rng.integers(4))
        if kind == 0:
            yield data[:at]
        elif kind == 1 and at < len(data):
            yield data[:at] + bytes([int(rng.integers(256))]) + data[at + 1 :]
        elif kind == 2:
            yield data[:at] + bytes([int(rng.integers(256))]) + data[at:]
        else:
            yield data[:at] + data[at + 1 :]


def test_containers_read_what_upb_reads_or_defer() -> None:
    rng = np.random.default_rng(1)
    read = deferred = 0
    for _ in range(40):
        data = request(rng)
        assert kernel_containers(data) == skeleton_containers(data)
        for mutated in mutations(rng, data, 40):
            found = kernel_containers(mutated)
            if found is None:
                deferred += 1
                continue
            read += 1
            assert found == skeleton_containers(mutated)  # upb reads it too, the same
    assert read > 100 and deferred > 100


def test_containers_defer_on_what_they_are_not_sure_of() -> None:
    good = field(
        1, field(1, b"r") + field(2, field(1, b"s") + field(2, b"span") + field(3, b"u")) + field(3, b"v")
    )
    assert kernel_containers(good) == [(b"r", b"v", [(b"s", b"u")])]
    assert kernel_containers(b"") == []
    assert kernel_containers(field(1, b"")) == [(b"", b"", [])]
    odd = [
        good[:-1],  # truncated
        good + b"\x08\x01",  # an unknown field at request level
        field(1, field(1, b"r") + field(1, b"r")),  # Resource twice
        field(1, field(3, b"u") + field(3, b"u")),  # schema_url twice
        field(1, field(2, field(1, b"s") + field(1, b"s"))),  # scope twice
        field(1, field(2, field(3, b"u") + field(3, b"u"))),  # scope schema_url twice
        field(1, field(2, b"\x20\x01")),  # an unknown field in a scope
        b"\x0a\x80\x00",  # a length that is not minimal
        b"\x0a\x05\x0a",  # a length past the end
    ]
    for data in odd:
        assert kernel_containers(data) is None, data


def test_many_resources_and_scopes_take_a_second_call() -> None:
    data = b"".join(
        field(
            1, field(1, resource_bytes(f"s{i}")) + b"".join(field(2, field(1, bytes([j]))) for j in range(5))
        )
        for i in range(20)
    )
    found = kernel_containers(data)
    assert found == skeleton_containers(data)
    assert found is not None and len(found) == 20


def test_trace_states_read_what_upb_reads_or_defer() -> None:
    rng = np.random.default_rng(4)
    read = deferred = 0
    for _ in range(60):
        data = span(rng)
        for mutated in [data, *mutations(rng, data, 30)]:
            ((start, end),) = state_ranges(mutated, [0], [len(mutated)])
            if start < 0:
                deferred += 1
                continue
            read += 1
            assert SpanState.FromString(mutated).trace_state == mutated[start:end]
    assert read > 500 and deferred > 100


def test_trace_states_of_spans_within_a_request() -> None:
    first = Span(name="a", trace_state="x=1").SerializeToString()
    second = Span(name="b").SerializeToString() + field(3, b"y=2") + field(3, b"y=3")
    data = b"\x00" * 3 + first + second
    found = state_ranges(data, [3, 3 + len(first)], [3 + len(first), len(data)])
    assert [data[a:b] for a, b in found] == [b"x=1", b"y=3"]
    # Out of range: left to upb (which the caller never asks, the ranges come from SpanBatch).
    assert state_ranges(data, [0], [99]) == [(-1, -1)]


def test_trace_states_give_normal_spans_without_a_trace_state_the_shared_suffix() -> None:
    spans = [
        Span(name="plain").SerializeToString(),
        Span(name="state", trace_state="x=1").SerializeToString(),
        Span(name="empty").SerializeToString() + field(3, b""),
        Span(name="odd").SerializeToString() + b"\x18\x01",
        Span(name="plain").SerializeToString(),
    ]
    data = b"".join(spans)
    ends = np.cumsum([len(item) for item in spans]).tolist()
    starts = [0, *ends[:-1]]
    code = np.array([SAMPLED, CRITICAL_CONTEXT, SAMPLED, SAMPLED, ANOMALY], dtype=np.int8)
    severity = np.array([0, 0, 0, 0, Severity.CRITICAL], dtype=np.int8)
    rows = np.array([4, 0, 1, 2, 3], dtype=np.int64)  # any rows of the batch, in any order
    extra_id, odd, states, listed = kernels().trace_states(
        np.frombuffer(data, dtype=U8), rows, frozen(starts), frozen(ends), code, severity
    )
    assert extra_id.tolist() == [-1, SAMPLED - 1, -1, SAMPLED - 1, -1]
    assert listed == 3 and odd[:listed].tolist() == [0, 2, 4]
    first_state = data.index(b"x=1")
    assert states[:listed].tolist() == [[0, 0], [first_state, first_state + 3], [-1, -1]]


def test_request_runs_split_the_kept_rows_by_request() -> None:
    request = frozen([0, 0, 0, 2, 2, 3, 5, 5], dtype=np.int32)
    in_order, runs = kernels().request_runs(np.array([1, 2, 3, 4, 6, 7], dtype=np.int64), request)
    assert in_order and runs.tolist() == [[0, 0, 2], [2, 2, 4], [5, 4, 6]]
    in_order, runs = kernels().request_runs(np.zeros(0, dtype=np.int64), request)
    assert in_order and runs.tolist() == []
    shuffled = frozen([0, 2, 1], dtype=np.int32)
    in_order, _ = kernels().request_runs(np.array([0, 1, 2], dtype=np.int64), shuffled)
    assert not in_order


def write(
    data: bytes,
    starts: list[int],
    ends: list[int],
    groups: list[tuple[int, int]],
    extras: list[bytes],
    ids: list[int],
) -> tuple[bytes, list[list[int]]]:
    """write_items over spans ``data[starts[i]:ends[i]]`` of (resource, scope) ``groups[i]``."""
    offsets = frozen(np.cumsum([0, *map(len, extras)]))
    out, runs, count = kernels().write_items(
        np.frombuffer(data, dtype=U8),
        np.arange(len(starts), dtype=np.int64),
        frozen(starts),
        frozen(ends),
        frozen([resource for resource, _ in groups], dtype=np.int32),
        frozen([scope for _, scope in groups], dtype=np.int32),
        np.frombuffer(b"".join(extras), dtype=U8),
        offsets,
        np.array(ids, dtype=np.int64),
    )
    return out.tobytes(), runs[:count].tolist()


@pytest.mark.parametrize("size", [0, 1, 120, 125, 126, 127, 128, 16_380, 16_383, 16_384, 70_000])
def test_write_items_writes_each_item_as_field_2(size: int) -> None:
    data = bytes(range(256)) * (size // 256 + 2)
    extras = [b"", b"ab", b"\x4a\x03xyz"]
    starts = [5, 0, 7, 3]
    ends = [5 + size, max(size - 2, 0), 8, 3 + size]
    ids = [0, 1, 2, 1]
    out, runs = write(data, starts, ends, [(0, 0)] * 4, extras, ids)
    want = [field(2, data[a:b] + extras[k]) for a, b, k in zip(starts, ends, ids, strict=True)]
    assert out == b"".join(want)
    assert runs == [[0, 0, 4, 0, len(out)]]


def test_write_items_lists_the_runs_of_each_scope() -> None:
    data = bytes(range(100))
    starts, ends = [0, 10, 20, 30, 40, 50], [5, 15, 25, 35, 45, 55]
    groups = [(0, 0), (0, 0), (0, 1), (1, 0), (1, 0), (0, 0)]  # a group may come back
    out, runs = write(data, starts, ends, groups, [b"xy"], [0] * 6)
    item = 2 + 5 + 2
    assert runs == [
        [0, 0, 2, 0, 2 * item],
        [0, 1, 1, 2 * item, 3 * item],
        [1, 0, 2, 3 * item, 5 * item],
        [0, 0, 1, 5 * item, 6 * item],
    ]
    assert out == b"".join(field(2, data[a:b] + b"xy") for a, b in zip(starts, ends, strict=True))


def test_write_items_refuses_ranges_out_of_bounds() -> None:
    with pytest.raises(ValueError):
        write(b"abc", [0], [4], [(0, 0)], [b"x"], [0])  # past the bytes
    with pytest.raises(ValueError):
        write(b"abc", [0], [1], [(0, 0)], [b"x"], [1])  # past the table
    with pytest.raises(ValueError):
        write(b"abc", [0], [1], [(0, 0)], [b"x"], [-1])  # an entry left unset
