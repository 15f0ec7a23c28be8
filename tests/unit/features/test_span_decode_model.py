"""The compiled span reader against a field-by-field model of it, on generated and damaged requests.

The compiled reader reads the layouts encoders write through shortcuts (straight-line span
fields, runs of attributes, word loads and stores, a capacity-checked span table); each must
give exactly what reading field by field gives. The model here is that field-by-field reading,
in plain Python: the reader as it was before the shortcuts, with only its general paths. The
comparison covers what the comparison with the numpy reader cannot see: whether the kernel
hands a batch back (None) on the same inputs, and its raw columns (byte ranges, name hashes).
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelai.features import span_batch
from otelai.features.wire import as_buffer

from .span_requests import (
    field,
    interleaved_payload,
    make_request,
    make_span,
    random_requests,
    unusual_payload,
)

pytest.importorskip("numba")
kernel = pytest.importorskip("otelai.features.span_decode_numba")

MASK = 2**64 - 1
INT64_MAX = 2**63 - 1
Columns = dict[str, NDArray[np.generic]]


def _varint(buf: bytes, pos: int, limit: int) -> tuple[int, int]:
    """The kernel's ``_varint``: ten bytes at most, the tenth 0 or 1; position -1 when malformed."""
    value = 0
    for i in range(10):
        if pos + i >= limit:
            return value, -1
        byte = buf[pos + i]
        if i == 9 and byte > 1:
            return value, -1
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            return value, pos + i + 1
    return value, -1


def _field(buf: bytes, pos: int, limit: int) -> tuple[int, int, int]:
    """The kernel's ``_field_slow``: tag, value start, value end (-1 when malformed)."""
    first = buf[pos]
    if 8 <= first < 0x80:
        tag, at = first, pos + 1
    else:
        raw, at = _varint(buf, pos, min(limit, pos + 5))
        if at < 0 or raw > 0xFFFFFFFF or raw >> 3 == 0:
            return 0, 0, -1
        tag = raw
    wire_type = tag & 7
    if wire_type == 0:
        return tag, at, _varint(buf, at, limit)[1]
    if wire_type == 2:
        length, start = _varint(buf, at, limit)
        if start < 0 or length > limit - start:
            return tag, 0, -1
        return tag, start, start + length
    end = {1: at + 8, 5: at + 4}.get(wire_type, -1)
    if end < 0 or end > limit:
        return tag, 0, -1
    return tag, at, end


def _fields(buf: bytes, start: int, end: int) -> list[tuple[int, int, int]] | None:
    """Every field of ``buf[start:end]``, or None when one is malformed."""
    out, pos = [], start
    while pos < end:
        tag, data, stop = _field(buf, pos, end)
        if stop < 0:
            return None
        out.append((tag, data, stop))
        pos = stop
    return out


def _signed(value: int) -> int:
    """A uint64 as the kernel's int64 (two's complement)."""
    value &= MASK
    return value - 2**64 if value > INT64_MAX else value


def _key_value(buf: bytes, start: int, end: int) -> tuple[int, int, int, int, int] | None:
    """(key fields, key start, key end, last value start, last value end); None when malformed."""
    found = _fields(buf, start, end)
    if found is None:
        return None
    keys, key, value = 0, (-1, -1), (-1, -1)
    for tag, data, stop in found:
        if tag == 0x0A:
            keys, key = keys + 1, (data, stop)
        elif tag == 0x12:
            value = (data, stop)
    return keys, *key, *value


def _any_number(buf: bytes, start: int, end: int) -> int | None:
    """The last int value, else the last string value as 1-4 decimal digits; -1 otherwise."""
    found = _fields(buf, start, end)
    if found is None:
        return None
    number, text = -1, b""
    has_text = False
    for tag, data, stop in found:
        if tag == 0x18:
            number = _signed(_varint(buf, data, stop)[0])
        elif tag == 0x0A:
            text, has_text = buf[data:stop], True
    if number < 0 and has_text:
        number = int(text) if 1 <= len(text) <= 4 and all(48 <= c <= 57 for c in text) else -1
    return number


def _service_name(buf: bytes, start: int, end: int) -> tuple[int, int] | None:
    """The kernel's ``_service_name`` (trace_layout's rules); None when it defers."""
    found = _fields(buf, start, end)
    if found is None:
        return None
    name = (-1, -1)
    for tag, data, stop in found:
        if tag != 0x0A:
            continue
        if data == stop:
            return None
        read = _key_value(buf, data, stop)
        if read is None or read[0] > 1:
            return None
        keys, key_start, key_end, value_start, value_end = read
        if keys == 0 or buf[key_start:key_end] != b"service.name":
            continue
        if buf[data] == 0x0A and buf[data + 1] != 12:
            continue
        name = (-1, -1)
        if value_start >= 0:
            values = _fields(buf, value_start, value_end)
            if values is None:
                return None
            for any_tag, any_start, any_stop in values:
                if any_tag == 0x0A:
                    name = (any_start, any_stop)
    return name


def _locate(
    buf: bytes, starts: list[int], ends: list[int]
) -> tuple[list[list[int]], list[tuple[int, int]]] | None:
    """Span rows (start, end, request, resource, scope, index, resource number) and service ranges."""
    spans: list[list[int]] = []
    services: list[tuple[int, int]] = []
    for request, (start, end) in enumerate(zip(starts, ends, strict=True)):
        top = _fields(buf, start, end)
        if top is None:
            return None
        resource = 0
        for tag, data, stop in top:
            if tag != 0x0A:
                continue
            inner = _fields(buf, data, stop)
            if inner is None:
                return None
            services.append((-1, -1))
            resources = scope = 0
            for inner_tag, inner_start, inner_stop in inner:
                if inner_tag == 0x0A:
                    resources += 1
                    name = _service_name(buf, inner_start, inner_stop)
                    if name is None or resources > 1:
                        return None
                    services[-1] = name
                elif inner_tag == 0x12:
                    scoped = _fields(buf, inner_start, inner_stop)
                    if scoped is None:
                        return None
                    index = 0
                    for span_tag, span_start, span_stop in scoped:
                        if span_tag == 0x12:
                            spans.append(
                                [span_start, span_stop, request, resource, scope, index, len(services) - 1]
                            )
                            index += 1
                    scope += 1
            resource += 1
    return spans, services


def _read_span(buf: bytes, start: int, end: int) -> tuple[list[int], list[int], list[int], list[int]] | None:
    """One span's ids (32 bytes), times, small columns and name range; None when it defers."""
    found = _fields(buf, start, end)
    if found is None:
        return None
    ranges: dict[int, tuple[int, int]] = {}
    kind = status = 0
    begin = finish = 0
    events = links = attributes = 0
    exception = has_db = False
    http_response = http_old = grpc = -1
    for tag, data, stop in found:
        if tag == 0x4A:
            attributes += 1
            read = _key_value(buf, data, stop)
            if read is None or read[0] > 1:
                return None
            keys, key_start, key_end, value_start, value_end = read
            key = buf[key_start:key_end] if keys == 1 else b""
            if key in (b"db.system.name", b"db.system"):
                has_db = True
            elif key in (b"http.response.status_code", b"http.status_code", b"rpc.grpc.status_code"):
                if value_start < 0:
                    continue
                number = _any_number(buf, value_start, value_end)
                if number is None:
                    return None
                if key == b"http.response.status_code":
                    http_response = number
                elif key == b"http.status_code":
                    http_old = number
                else:
                    grpc = number
        elif tag in (0x0A, 0x12, 0x22, 0x2A):
            ranges[tag] = (data, stop)
        elif tag == 0x30:
            kind = _signed(_varint(buf, data, stop)[0])
        elif tag in (0x39, 0x41):
            word = int.from_bytes(buf[data : data + 8], "little")
            begin, finish = (word, finish) if tag == 0x39 else (begin, word)
        elif tag == 0x5A:
            events += 1
            event = _fields(buf, data, stop)
            if event is None:
                return None
            names = [buf[a:b] for event_tag, a, b in event if event_tag == 0x12]
            exception = exception or (bool(names) and names[-1] == b"exception")
        elif tag == 0x6A:
            links += 1
        elif tag == 0x7A:
            inner = _fields(buf, data, stop)
            if inner is None:
                return None
            status = 0
            for status_tag, a, b in inner:
                if status_tag == 0x18:
                    status = _signed(_varint(buf, a, b)[0])
    ids = [0] * 32
    for tag, size, at in ((0x0A, 16, 0), (0x12, 8, 16), (0x22, 8, 24)):
        a, b = ranges.get(tag, (0, 0))
        if b - a == size:
            ids[at : at + size] = buf[a:b]
    has_parent = any(ids[24:32]) if 0x22 in ranges and ranges[0x22][1] - ranges[0x22][0] == 8 else False
    times = [min(begin, INT64_MAX), min(finish - begin, INT64_MAX) if finish > begin else 0]
    http = http_response if http_response >= 0 else http_old
    small = [
        status if 0 <= status <= 2 else 0,
        kind if 0 <= kind <= 5 else 0,
        min(events, 32767),
        min(links, 32767),
        min(attributes, 32767),
        int(exception),
        http // 100 if 100 <= http <= 599 else 0,
        grpc if 0 <= grpc <= 1000 else -1,
        int(has_db),
        int(has_parent),
    ]
    return ids, times, small, list(ranges.get(0x2A, (0, 0)))


def _mix(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & MASK
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def _name_hashes(buf: bytes, names: list[list[int]], salts: NDArray[np.uint64]) -> list[int]:
    """span_batch._name_hash: the batch-wide number of words, bytes past a name's end as zeros."""
    longest = max((min(b - a, kernel.MAX_SHORT_NAME) for a, b in names), default=0)
    out = []
    for a, b in names:
        total = 0
        for word in range((longest + 7) // 8):
            chunk = buf[a + 8 * word : min(b, a + 8 * word + 8)] if b - a > 8 * word else b""
            value = int.from_bytes(chunk.ljust(8, b"\0"), "little")
            total = (total + _mix((value + int(salts[word])) & MASK)) & MASK
        out.append(_mix((total + b - a) & MASK))
    return out


def model(payloads: list[bytes], salts: NDArray[np.uint64]) -> Columns | None:
    """What :func:`span_decode_numba.decode` gives for ``payloads``, read field by field."""
    buf = as_buffer(payloads).tobytes()
    sizes = np.cumsum([0, *map(len, payloads)]).tolist()
    located = _locate(buf, sizes[:-1], sizes[1:])
    if located is None:
        return None
    spans, services = located
    rows = []
    for span in spans:
        read = _read_span(buf, span[0], span[1])
        if read is None:
            return None
        rows.append(read)
    names = [row[3] for row in rows]
    return {
        "spans": np.array(spans, dtype=np.int64).reshape(-1, 7),
        "services": np.array(services, dtype=np.int64).reshape(-1, 2),
        "ids": np.array([row[0] for row in rows], dtype=np.uint8).reshape(-1, 32),
        "times": np.array([row[1] for row in rows], dtype=np.int64).reshape(-1, 2),
        "small": np.array([row[2] for row in rows], dtype=np.int16).reshape(-1, 10),
        "names": np.array(names, dtype=np.int64).reshape(-1, 2),
        "name_hashes": np.array(_name_hashes(buf, names, salts), dtype=np.uint64),
    }


def assert_kernel_matches_model(payloads: list[bytes]) -> bool:
    """Kernel and model agree on ``payloads``: both defer, or every column is equal; whether read."""
    salts = span_batch._SALTS
    sizes = np.array([len(p) for p in payloads], dtype=np.int64)
    ends = np.cumsum(sizes)
    found = kernel.decode(as_buffer(payloads), ends - sizes, ends, salts)
    expected = model(payloads, salts)
    assert (found is None) == (expected is None), payloads
    if found is None or expected is None:
        return False
    for name, want in expected.items():
        got = getattr(found, name)
        assert (got.dtype, got.shape) == (want.dtype, want.shape), name
        np.testing.assert_array_equal(got, want, err_msg=name)
    return True


def _damage(payload: bytes, edits: list[tuple[str, int, int]]) -> bytes:
    """``payload`` with each (how, where, byte) edit applied in turn; where is taken modulo the size."""
    out = bytearray(payload)
    for how, where, byte in edits:
        if not out:
            out = bytearray(b"\x0a\x00")
        at = where % len(out)
        if how == "truncate":
            del out[at:]
        elif how == "set":
            out[at] = byte
        elif how == "insert":
            out.insert(at, byte)
        else:
            del out[at]
    return bytes(out)


def _instrumented(seed: int, spans: int) -> bytes:
    """A request with the span layout SDKs write: ids, name, kind, times, a run of attributes."""
    rng = random.Random(seed)
    made = []
    for i in range(1, spans + 1):
        attributes: dict[str, object] = {
            "http.request.method": "GET",
            "http.route": "/api/cart",
            "http.response.status_code": rng.choice([200, 404, 503]),
            "url.path": "/api/cart/" + str(rng.randrange(10**6)),
            "server.port": 8080,
            "app.request.size": rng.randrange(100, 20_000),
        }
        if i % 3 == 0:
            attributes |= {"db.system.name": "postgresql", "rpc.grpc.status_code": "14"}
        events = ("exception", "retry") if i % 4 == 0 else ()
        made.append(make_span(i % 3 + 1, i, i - 1 if i % 5 else None, attributes=attributes, events=events))
    return make_request({"svc": made[: spans // 2], "other": made[spans // 2 :]}).SerializeToString()


_EDITS = st.lists(
    st.tuples(
        st.sampled_from(["truncate", "set", "insert", "delete", "set"]),
        st.integers(0, 2**16),
        st.one_of(st.integers(0, 255), st.sampled_from([0x0A, 0x12, 0x4A, 0x5A, 0x7A, 0x80, 0x7F, 0x00])),
    ),
    max_size=3,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(random_requests(), _EDITS), min_size=1, max_size=3))
def test_generated_and_damaged_requests_match_the_model(
    drawn: list[tuple[ExportTraceServiceRequest, list[tuple[str, int, int]]]],
) -> None:
    assert_kernel_matches_model([_damage(request.SerializeToString(), edits) for request, edits in drawn])


@pytest.mark.parametrize("how", ["set 0x80", "set 0x4A", "increment", "delete", "truncate"])
def test_every_byte_of_an_instrumented_request_damaged_matches_the_model(how: str) -> None:
    """Each byte of a request of the common layout changed in turn: every shortcut's bounds and
    tag tests meet a damaged field, at the start, middle and end of spans and attribute runs."""
    payload = _instrumented(3, 6)
    read = 0
    for at in range(len(payload)):
        damaged = bytearray(payload)
        if how == "delete":
            del damaged[at]
        elif how == "truncate":
            del damaged[at:]
        elif how == "increment":
            damaged[at] = (damaged[at] + 1) % 256
        else:
            damaged[at] = int(how.split()[1], 16)
        read += assert_kernel_matches_model([bytes(damaged)])
    if how != "delete":  # a deleted byte always breaks some length; other damage may not
        assert read > 0


def test_every_prefix_of_a_span_framed_whole_matches_the_model() -> None:
    """A span cut at each byte, with correct lengths around it and an intact span after it: its
    last field runs past the span's end, where the buffer still has bytes (the next span's).
    The shortcuts must see the span's end, not the buffer's."""
    raw = make_span(
        1,
        2,
        1,
        attributes={"http.response.status_code": 503, "db.system": "x", "k": 1},
        events=("exception",),
    ).SerializeToString()
    for cut in range(len(raw) + 1):
        scope = field(2, raw[:cut]) + field(2, raw)
        assert_kernel_matches_model([field(1, field(2, scope))])


def test_instrumented_and_unusual_requests_are_read_and_match_the_model() -> None:
    payloads = [_instrumented(seed, 40) for seed in range(3)] + [unusual_payload(), interleaved_payload()]
    assert assert_kernel_matches_model(payloads)


def test_spans_past_the_first_guess_of_their_number_match_the_model() -> None:
    """Tiny spans: more than the span table first made room for, so the kernel counts and reads again."""
    spans = b"".join(field(2, field(1, bytes(16))) for _ in range(400))  # 20-byte spans
    payloads = [field(1, field(2, spans)) * 3, make_request({"a": [make_span(1, 1)]}).SerializeToString()]
    assert assert_kernel_matches_model(payloads)
    resources = b"".join(field(1, field(2, field(2, b""))) for _ in range(40))  # 40 resources a request
    assert assert_kernel_matches_model([resources, resources])
