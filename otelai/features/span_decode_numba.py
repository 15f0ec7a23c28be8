"""Compiled single-pass reader of OTLP trace requests (numba), for :class:`~otelai.features.span_batch.SpanBatch`.

Reads the protobuf binary encoding (https://protobuf.dev/programming-guides/encoding/) of
``ExportTraceServiceRequest`` (opentelemetry-proto ``collector/trace/v1/trace_service.proto``,
``trace/v1/trace.proto``, ``common/v1/common.proto``) byte by byte in machine code: one pass
over the container levels finds the spans, a second reads every span's fields, its status,
events and attributes. It yields exactly the columns of the numpy reader
(:mod:`otelai.features.span_batch` with :mod:`otelai.features.trace_layout` and
:mod:`otelai.features.wire`) at a small fraction of its cost: on the benchmark's requests
:func:`decode` takes about 0.15 us a span, a whole ``SpanBatch`` read through it 0.6, through
the numpy reader 3 to 5. The numpy reader pays a few numpy calls per field position and per
attribute key, this a few nanoseconds per field. :func:`finish` turns the rows into the
final columns (dtypes, request-relative offsets, remembered operation ids, parent links) in
one call; interning new names stays in :mod:`~otelai.features.span_batch`.

Contract with the numpy reader: whenever :func:`decode` reports :data:`OK`, the numpy reader
would read the same requests without error and produce the same columns. Anything this reader
is unsure of (any malformation, groups, tags over five bytes, a KeyValue with two keys, a
ResourceSpans with two resources, an empty resource attribute) gives :data:`DEFER` instead, and
the caller reads the batch with the numpy reader, which decides (and lists failed requests).
So this reader may be stricter than the numpy one, never more lenient.

Why it is fast (as :mod:`otelai.receiver.wire_check`): the helpers take a raw pointer to the
bytes (:func:`_data`), never an array. numba reference-counts an array passed to a helper
and, once the helper is inlined into a loop, at every iteration of that loop (an external
call each time, even for an array without a meminfo and on branches never taken); it does
the same for an array variable reassigned inside a loop, which is why :func:`_locate` fills
arrays it is given. A pointer costs nothing. And the layout every encoder writes (ids, name,
kind and times first, then a run of attributes with one-byte lengths) is read by
straight-line code, the general field loop kept for the rest and for anything else. Together
these took the kernel from 0.58 to about 0.15 us a span.

Importing this module imports numba; :func:`warm_up` compiles the kernels (5-10 s on two busy
cores) or loads them from numba's on-disk cache (``__pycache__`` beside this file, else the
user cache directory; with neither writable they compile at every start).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

import numba
import numpy as np
from numpy.typing import NDArray

from otelai.features.pointers import data as _data
from otelai.features.pointers import put_word as _put_word
from otelai.features.pointers import word as _word
from otelai.kernels import cached_jit

F = TypeVar("F", bound=Callable[..., Any])

OK, DEFER = 0, 1  # decode status: columns valid / read this batch with the numpy reader
MAX_SHORT_NAME = 64  # must equal span_batch.MAX_SHORT_NAME: names up to this long are hashed


def _inline(func: F) -> F:
    """A helper compiled into its callers (numba IR inlining), for what runs per field.

    A call between compiled functions costs 10 ns or more here (argument passing, the
    caller's registers spilled); inlined, a field costs a few nanoseconds. Helpers take the
    bytes as a raw pointer (:func:`_data`), so inlining adds no reference counting. Inlining
    is slow to compile, so rare paths (long varints, odd layouts) stay calls.
    """
    return cast(F, numba.njit(inline="always")(func))


def _kernel(func: F) -> F:
    """A function called once a batch or on a rare or long path; compiled into :func:`_decode`'s cache."""
    return cast(F, numba.njit(func))


_jit = cached_jit("the span decoder")


_U64_7F = np.uint64(0x7F)
_U32_MAX = np.uint64(0xFFFFFFFF)
_INT64_MAX = np.uint64(2**63 - 1)
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _key(text: bytes) -> tuple[np.uint64, ...]:
    """A key of 8 to 32 bytes for :func:`_is`: size, first byte, words at 0, 8 and 16, last word.

    A tuple of integers compiles to constants; comparing whole words needs no loop.
    """
    assert 8 <= len(text) <= 32
    padded = text + bytes(32)
    words = [int.from_bytes(padded[at : at + 8], "little") for at in (0, 8, 16)]
    last = int.from_bytes(text[-8:], "little")
    return tuple(np.uint64(n) for n in (len(text), text[0], *words, last))


# Attribute keys the features read (semantic conventions; see span_batch), an event name.
_HTTP_RESPONSE = _key(b"http.response.status_code")
_HTTP_OLD = _key(b"http.status_code")
_GRPC = _key(b"rpc.grpc.status_code")
_DB_NAME = _key(b"db.system.name")
_DB = _key(b"db.system")
_EXCEPTION = _key(b"exception")
_SERVICE_NAME = _key(b"service.name")
KEY_NONE, KEY_HTTP_RESPONSE, KEY_HTTP_OLD, KEY_GRPC, KEY_DB = 0, 1, 2, 3, 4


@_kernel
def _varint(data: Any, pos: int, limit: int) -> tuple[Any, int]:
    """The varint at ``pos``: value (uint64) and the position after it, -1 when malformed.

    Ten bytes at most, the tenth 0 or 1 (what any encoder writes for a 64-bit value).
    """
    if pos < limit and data[pos] < 0x80:
        return np.uint64(data[pos]), pos + 1
    value = np.uint64(0)
    for i in range(10):
        if pos + i >= limit:
            return value, -1
        byte = np.uint64(data[pos + i])
        if i == 9 and byte > 1:
            return value, -1
        value |= (byte & _U64_7F) << np.uint64(7 * i)
        if byte < 0x80:
            return value, pos + i + 1
    return value, -1


@_inline
def _value(data: Any, start: int, stop: int) -> Any:
    """The value (uint64) of a varint field already checked by :func:`_field`.

    One and two bytes inline (a status code, an HTTP status); longer ones a call.
    """
    if data[start] < 0x80:
        return np.uint64(data[start])
    if data[start + 1] < 0x80:  # the field is checked: its second byte is inside it
        return (np.uint64(data[start]) & _U64_7F) | (np.uint64(data[start + 1]) << np.uint64(7))
    return _varint(data, start, stop)[0]


@_inline
def _field(data: Any, pos: int, limit: int) -> tuple[Any, Any, Any]:
    """Tag, value start and value end of the field at ``pos`` (``pos < limit``); end -1 when malformed.

    The value end is where the next field starts. Refused: field number 0, tags over five
    bytes or 32 bits, groups and unknown wire types, anything running past ``limit``. Inline:
    one-byte tags with a one-byte or two-byte length, a one-byte varint, and fixed-width
    values (reading a byte past ``limit`` is safe: the buffer has zero padding after the
    data); the rest is a call.
    """
    first = np.int64(data[pos])
    second = np.int64(data[pos + 1])
    if 8 <= first < 0x80:
        wire_type = first & 7
        end: Any = limit + 1
        start: Any = pos + 1
        if wire_type == 2 and second < 0x80:
            end = pos + 2 + second
            start = pos + 2
        elif wire_type == 0 and second < 0x80:
            end = pos + 2
        elif wire_type == 2 and data[pos + 2] < 0x80:  # a two-byte length (128 to 16383 bytes)
            end = pos + 3 + ((second & 0x7F) | (np.int64(data[pos + 2]) << 7))
            start = pos + 3
        elif wire_type == 1:
            end = pos + 9
        elif wire_type == 5:
            end = pos + 5
        if end <= limit:
            return first, start, end
    return _field_slow(data, pos, limit)


@_kernel
def _field_slow(data: Any, pos: int, limit: int) -> tuple[Any, Any, Any]:
    """:func:`_field` for any field."""
    first = data[pos]
    if 8 <= first < 0x80:
        field_tag = np.int64(first)
        at = pos + 1
    else:
        raw, at = _varint(data, pos, min(limit, pos + 5))
        if at < 0 or raw > _U32_MAX or (raw >> np.uint64(3)) == 0:
            return 0, 0, -1
        field_tag = np.int64(raw)
    wire_type = field_tag & 7
    if wire_type == 0:
        return field_tag, at, _varint(data, at, limit)[1]
    if wire_type == 2:
        length, start = _varint(data, at, limit)
        if start < 0 or length > np.uint64(limit - start):
            return field_tag, 0, -1
        return field_tag, start, start + np.int64(length)
    if wire_type == 1:
        end = at + 8
    elif wire_type == 5:
        end = at + 4
    else:
        return field_tag, 0, -1
    if end > limit:
        return field_tag, 0, -1
    return field_tag, at, end


@_inline
def _is(data: Any, start: int, end: int, key: Any) -> bool:
    """Whether ``data[start:end]`` is the key :func:`_key` describes: size, first byte, then words."""
    size = np.int64(key[0])
    if end - start != size or data[start] != key[1]:
        return False
    if _word(data, start) != key[2]:
        return False
    if size > 16 and _word(data, start + 8) != key[3]:
        return False
    if size > 24 and _word(data, start + 16) != key[4]:
        return False
    return bool(_word(data, end - 8) == key[5])


@_inline
def _key_value(data: Any, start: int, end: int) -> tuple[Any, ...]:
    """A KeyValue: (well formed, key fields, key start, key end, last value start, last value end).

    Inline for the layout every encoder writes (a key, then a value, with one-byte lengths),
    else :func:`_key_value_slow`.
    """
    if data[start] == 0x0A and data[start + 1] < 0x80:
        key_end = start + 2 + np.int64(data[start + 1])
        if key_end == end:
            return True, 1, start + 2, key_end, -1, -1
        simple = key_end + 2 <= end and data[key_end] == 0x12 and data[key_end + 1] < 0x80
        if simple and key_end + 2 + np.int64(data[key_end + 1]) == end:
            return True, 1, start + 2, key_end, key_end + 2, end
    return _key_value_slow(data, start, end)


@_kernel
def _key_value_slow(data: Any, start: int, end: int) -> tuple[Any, ...]:
    """Any KeyValue: (well formed, key fields, key start, key end, last value start, last value end).

    Ranges are -1 when absent. The numpy reader takes the first field as the key when it is a
    canonical key, else the last key field; with one key field both agree, so a KeyValue with
    more than one is left to it.
    """
    keys, key_start, key_end, value_start, value_end = 0, -1, -1, -1, -1
    pos = start
    while pos < end:
        field_tag, field_start, stop = _field_slow(data, pos, end)
        if stop < 0:
            return False, 0, -1, -1, -1, -1
        if field_tag == 0x0A:
            keys += 1
            key_start, key_end = field_start, stop
        elif field_tag == 0x12:
            value_start, value_end = field_start, stop
        pos = stop
    return True, keys, key_start, key_end, value_start, value_end


@_inline
def _key_id(data: Any, start: int, end: int) -> int:
    """Which of the wanted attribute keys ``data[start:end]`` is (``KEY_*``).

    The wanted keys differ in size, so the size picks the one key to compare.
    """
    size = end - start
    if size == np.int64(_HTTP_RESPONSE[0]):
        return KEY_HTTP_RESPONSE if _is(data, start, end, _HTTP_RESPONSE) else KEY_NONE
    if size == np.int64(_HTTP_OLD[0]):
        return KEY_HTTP_OLD if _is(data, start, end, _HTTP_OLD) else KEY_NONE
    if size == np.int64(_GRPC[0]):
        return KEY_GRPC if _is(data, start, end, _GRPC) else KEY_NONE
    if size == np.int64(_DB_NAME[0]):
        return KEY_DB if _is(data, start, end, _DB_NAME) else KEY_NONE
    if size == np.int64(_DB[0]):
        return KEY_DB if _is(data, start, end, _DB) else KEY_NONE
    return KEY_NONE


@_kernel
def _any_number(data: Any, start: int, end: int) -> tuple[bool, Any]:
    """An AnyValue's ``int_value``, else its ``string_value`` as 1-4 decimal digits; -1 otherwise.

    As the numpy reader: the last int field, used when present and non-negative; else the
    last string field when it is such a number. A call: a span has one such attribute.
    """
    number: Any = np.int64(-1)
    text_start, text_end = -1, -1
    pos = start
    while pos < end:
        field_tag, field_start, stop = _field(data, pos, end)
        if stop < 0:
            return False, -1
        if field_tag == 0x18:
            number = np.int64(_value(data, field_start, stop))  # two's complement, as int64
        elif field_tag == 0x0A:
            text_start, text_end = field_start, stop
        pos = stop
    if number < 0 and text_start >= 0:
        number = -1
        length = text_end - text_start
        if 1 <= length <= 4:
            number = 0
            for i in range(length):
                digit = np.int64(data[text_start + i]) - 48
                if digit < 0 or digit > 9:
                    number = -1
                    break
                number = number * 10 + digit
    return True, number


@_kernel
def _event_is_exception(data: Any, start: int, end: int) -> tuple[bool, bool]:
    """(well formed, the event's last ``name`` field is ``exception``); a call, as events are few."""
    name_start, name_end = -1, -1
    pos = start
    while pos < end:
        field_tag, field_start, stop = _field(data, pos, end)
        if stop < 0:
            return False, False
        if field_tag == 0x12:
            name_start, name_end = field_start, stop
        pos = stop
    return True, name_start >= 0 and _is(data, name_start, name_end, _EXCEPTION)


@_inline
def _status_code(data: Any, start: int, end: int) -> tuple[bool, Any]:
    """(well formed, the Status's last ``code``, 0 when absent)."""
    code = np.int64(0)
    pos = start
    while pos < end:
        field_tag, field_start, stop = _field(data, pos, end)
        if stop < 0:
            return False, 0
        if field_tag == 0x18:
            code = np.int64(_value(data, field_start, stop))
        pos = stop
    return True, code


@_kernel
def _service_name(data: Any, start: int, end: int) -> tuple[bool, int, int]:
    """(well formed, start, end) of a Resource's ``service.name`` string; (-1, -1) for none.

    Follows trace_layout._service_name: the last matching attribute wins, even when its value
    is not a string (then the name is empty); an attribute whose first field is a key field
    matches only with the one-byte length prefix the prefix test there looks for.
    """
    name_start, name_end = -1, -1
    pos = start
    while pos < end:
        field_tag, field_start, stop = _field_slow(data, pos, end)
        if stop < 0:
            return False, -1, -1
        pos = stop
        if field_tag != 0x0A:
            continue
        if field_start == stop:  # trace_layout reads a byte past an empty attribute: left to it
            return False, -1, -1
        good, keys, key_start, key_end, value_start, value_end = _key_value(data, field_start, stop)
        if not good or keys > 1:
            return False, -1, -1
        if keys == 0 or not _is(data, key_start, key_end, _SERVICE_NAME):
            continue
        if data[field_start] == 0x0A and data[field_start + 1] != _SERVICE_NAME[0]:
            continue
        name_start, name_end = -1, -1
        inner = value_start
        while value_start >= 0 and inner < value_end:
            any_tag, any_start, any_stop = _field_slow(data, inner, value_end)
            if any_stop < 0:
                return False, -1, -1
            if any_tag == 0x0A:
                name_start, name_end = any_start, any_stop
            inner = any_stop
    return True, name_start, name_end


@_kernel
def _resized(rows: Any, size: int) -> Any:
    """The first ``size`` rows of ``rows`` (zeros past the end), in a new array."""
    out = np.zeros((size, rows.shape[1]), dtype=rows.dtype)
    for row in range(min(size, rows.shape[0])):  # loops: slicing costs seconds of compile time
        for column in range(rows.shape[1]):
            out[row, column] = rows[row, column]
    return out


@_kernel
def _locate(
    data: Any, request_start: Any, request_end: Any, spans: Any, services: Any
) -> tuple[int, int, int]:
    """Every span's byte range and position, and every resource's service name range.

    ``data`` points at the requests' bytes (:func:`_data`). Fills ``spans`` and ``services``
    up to their capacity and counts on past it; returns (status, span count, resource count),
    so a caller whose arrays were too small calls again with arrays of the counts. A span
    row is (start, end, request, resource, scope, index, resource number in the batch), a
    service row (start, end). The arrays are never replaced here: numba reference-counts an
    array variable reassigned in a loop at every iteration of that loop.
    """
    n, m = 0, 0
    span_rows, service_rows = spans.shape[0], services.shape[0]
    for request in range(request_start.size):
        pos, limit, resource = request_start[request], request_end[request], 0
        while pos < limit:
            field_tag, field_start, stop = _field_slow(data, pos, limit)
            if stop < 0:
                return DEFER, 0, 0
            pos = stop
            if field_tag != 0x0A:
                continue
            if m < service_rows:
                services[m, 0], services[m, 1] = -1, -1
            resources, scope, inner = 0, 0, field_start
            while inner < stop:
                inner_tag, inner_start, inner_stop = _field_slow(data, inner, stop)
                if inner_stop < 0:
                    return DEFER, 0, 0
                if inner_tag == 0x0A:
                    resources += 1
                    good, name_start, name_end = _service_name(data, inner_start, inner_stop)
                    if not good or resources > 1:
                        return DEFER, 0, 0
                    if m < service_rows:
                        services[m, 0], services[m, 1] = name_start, name_end
                elif inner_tag == 0x12:
                    index, at = 0, inner_start
                    while at < inner_stop:
                        span_tag, span_start, span_stop = _field(data, at, inner_stop)
                        if span_stop < 0:
                            return DEFER, 0, 0
                        if span_tag == 0x12:
                            if n < span_rows:
                                spans[n, 0], spans[n, 1], spans[n, 2] = span_start, span_stop, request
                                spans[n, 3], spans[n, 4], spans[n, 5], spans[n, 6] = resource, scope, index, m
                            n += 1
                            index += 1
                        at = span_stop
                    scope += 1
                inner = inner_stop
            m += 1
            resource += 1
    return OK, n, m


@_kernel
def _read_spans(data: Any, spans: Any, ids: Any, times: Any, small: Any, names: Any) -> int:
    """Every span's columns; returns :data:`OK` or :data:`DEFER`.

    ``ids`` (n, 32): trace id, span id, parent span id bytes; ``times`` (n, 2): start and
    duration; ``small`` (n, 10) int16: status, kind, events, links, attributes, exception,
    http status class, grpc status, has db, has parent; ``names`` (n, 2): name byte range.

    A span's leading fields in the order encoders write them are read straight through, the
    rest by one loop over fields; attributes come in runs, read by a loop of their own while
    they have the common layout (one-byte tag and length; see :func:`_key_value`). Both
    predict better than a trip through the field dispatch each, and both read the same fields
    in the same order as the field loop alone would, so the last of a repeated field still
    wins and a field running past the span's end is still refused (``test_span_decode_model``
    holds them to that loop).
    """
    out = _data(ids)
    for row in range(spans.shape[0]):
        start, end = spans[row, 0], spans[row, 1]
        trace_at = span_at = parent_at = name_start = name_end = -1
        trace_len = span_len = parent_len = 0
        kind, status = np.int64(0), np.int64(0)
        begin, finish = np.uint64(0), np.uint64(0)
        events = links = attributes = 0
        exception = False
        http_response = http_old = grpc = np.int64(-1)
        has_db = False
        pos = start
        # The fields every encoder writes first, in field order, straight through; each step is
        # what the loop below would do with that field. The loop reads the rest.
        if data[pos] == 0x0A and data[pos + 1] == 16 and pos + 18 <= end:
            trace_at, trace_len, pos = pos + 2, 16, pos + 18
        if data[pos] == 0x12 and data[pos + 1] == 8 and pos + 10 <= end:
            span_at, span_len, pos = pos + 2, 8, pos + 10
        if data[pos] == 0x22 and data[pos + 1] == 8 and pos + 10 <= end:
            parent_at, parent_len, pos = pos + 2, 8, pos + 10
        if data[pos] == 0x2A and data[pos + 1] < 0x80 and pos + 2 + np.int64(data[pos + 1]) <= end:
            name_start, name_end = pos + 2, pos + 2 + np.int64(data[pos + 1])
            pos = name_end
        if data[pos] == 0x30 and data[pos + 1] < 0x80 and pos + 2 <= end:
            kind, pos = np.int64(data[pos + 1]), pos + 2
        if data[pos] == 0x39 and pos + 9 <= end:
            begin, pos = _word(data, pos + 1), pos + 9
        if data[pos] == 0x41 and pos + 9 <= end:
            finish, pos = _word(data, pos + 1), pos + 9
        while pos < end:
            field_tag, field_start, stop = _field(data, pos, end)
            if stop < 0:
                return DEFER
            pos = stop
            if field_tag == 0x4A:
                while True:
                    attributes += 1
                    good, keys, key_start, key_end, value_start, value_end = _key_value(
                        data, field_start, stop
                    )
                    if not good or keys > 1:
                        return DEFER
                    which = _key_id(data, key_start, key_end) if keys == 1 else KEY_NONE
                    if which == KEY_DB:
                        has_db = True
                    elif which != KEY_NONE and value_start >= 0:
                        good, number = _any_number(data, value_start, value_end)
                        if not good:
                            return DEFER
                        if which == KEY_HTTP_RESPONSE:
                            http_response = number
                        elif which == KEY_HTTP_OLD:
                            http_old = number
                        else:
                            grpc = number
                    # The next field, when it is another attribute with a one-byte length:
                    # what _field would answer for it, without its dispatch.
                    if data[pos] != 0x4A or data[pos + 1] >= 0x80:
                        break
                    stop = pos + 2 + np.int64(data[pos + 1])
                    if stop > end:
                        break
                    field_start, pos = pos + 2, stop
            elif field_tag == 0x0A:
                trace_at, trace_len = field_start, stop - field_start
            elif field_tag == 0x12:
                span_at, span_len = field_start, stop - field_start
            elif field_tag == 0x22:
                parent_at, parent_len = field_start, stop - field_start
            elif field_tag == 0x2A:
                name_start, name_end = field_start, stop
            elif field_tag == 0x30:
                kind = np.int64(_value(data, field_start, stop))
            elif field_tag == 0x39:
                begin = _word(data, field_start)
            elif field_tag == 0x41:
                finish = _word(data, field_start)
            elif field_tag == 0x5A:
                events += 1
                good, hit = _event_is_exception(data, field_start, stop)
                if not good:
                    return DEFER
                exception = exception or hit
            elif field_tag == 0x6A:
                links += 1
            elif field_tag == 0x7A:
                good, status = _status_code(data, field_start, stop)
                if not good:
                    return DEFER
        # Whole words through a pointer: a row view or slice would cost a reference count.
        if trace_len == 16:
            _put_word(out, 32 * row, _word(data, trace_at))
            _put_word(out, 32 * row + 8, _word(data, trace_at + 8))
        if span_len == 8:
            _put_word(out, 32 * row + 16, _word(data, span_at))
        has_parent = False
        if parent_len == 8:
            parent = _word(data, parent_at)
            _put_word(out, 32 * row + 24, parent)
            has_parent = parent != 0
        times[row, 0] = np.int64(min(begin, _INT64_MAX))
        times[row, 1] = np.int64(min(finish - begin, _INT64_MAX)) if finish > begin else 0
        http = http_response if http_response >= 0 else http_old
        small[row, 0] = status if 0 <= status <= 2 else 0
        small[row, 1] = kind if 0 <= kind <= 5 else 0
        small[row, 2] = min(events, 32767)
        small[row, 3] = min(links, 32767)
        small[row, 4] = min(attributes, 32767)
        small[row, 5] = exception
        small[row, 6] = http // 100 if 100 <= http <= 599 else 0
        small[row, 7] = grpc if 0 <= grpc <= 1000 else -1
        small[row, 8] = has_db
        small[row, 9] = has_parent
        names[row, 0] = name_start if name_start >= 0 else 0
        names[row, 1] = name_end if name_start >= 0 else 0
    return OK


@_inline
def _mix(x: Any) -> Any:
    """splitmix64's finaliser, bit for bit as span_batch._mix."""
    x = x ^ (x >> _S30)
    x = x * _MIX1
    x = x ^ (x >> _S27)
    x = x * _MIX2
    return x ^ (x >> _S31)


@_kernel
def _name_hashes(data: Any, names: Any, salts: Any) -> Any:
    """span_batch._name_hash, bit for bit: the same words, salts and batch-wide width."""
    n = names.shape[0]
    longest = 0
    for row in range(n):
        longest = max(longest, min(names[row, 1] - names[row, 0], MAX_SHORT_NAME))
    words = (longest + 7) // 8
    out = np.empty(n, dtype=np.uint64)
    for row in range(n):
        start, length = names[row, 0], names[row, 1] - names[row, 0]
        total = np.uint64(0)
        for word in range(words):
            remaining = length - 8 * word  # bytes past the name's end count as zeros
            value = np.uint64(0)
            if remaining >= 8:
                value = _word(data, start + 8 * word)
            elif remaining > 0:
                value = _word(data, start + 8 * word) & (
                    (np.uint64(1) << np.uint64(8 * remaining)) - np.uint64(1)
                )
            total += _mix(value + salts[word])
        out[row] = _mix(total + np.uint64(length))
    return out


@_jit
def _decode(buf: Any, request_start: Any, request_end: Any, salts: Any) -> tuple[Any, ...]:
    data = _data(buf)  # no reference count per helper call: see the module docstring
    found = np.empty((max(16, buf.size // 256), 7), dtype=np.int64)  # spans of 256 bytes or more
    named = np.empty((16, 2), dtype=np.int64)
    status, n, m = _locate(data, request_start, request_end, found, named)
    if status == OK and (n > found.shape[0] or m > named.shape[0]):  # more than room for: again
        found = np.empty((n, 7), dtype=np.int64)
        named = np.empty((m, 2), dtype=np.int64)
        status, n, m = _locate(data, request_start, request_end, found, named)
    spans = _resized(found, n)
    ids = np.zeros((n, 32), dtype=np.uint8)
    times = np.zeros((n, 2), dtype=np.int64)
    small = np.zeros((n, 10), dtype=np.int16)
    names = np.zeros((n, 2), dtype=np.int64)
    if status == OK:
        status = _read_spans(data, spans, ids, times, small, names)
    hashes = _name_hashes(data, names, salts) if status == OK else np.zeros(0, dtype=np.uint64)
    return status, spans, _resized(named, m), ids, times, small, names, hashes


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@_inline
def _id_key(ids: Any, row: int, at: int) -> Any:
    """A 64-bit key of a row's trace id and the 8-byte span id at column ``at`` (hashing only).

    ``ids`` points at the (n, 32) id rows (:func:`_data`).
    """
    trace_low, trace_high = _word(ids, 32 * row), _word(ids, 32 * row + 8)
    span = _word(ids, 32 * row + at)
    return _mix(trace_low ^ _mix(trace_high + _GOLDEN) ^ (span * _MIX1))


@_inline
def _is_parent(ids: Any, candidate: int, row: int) -> bool:
    """Whether ``candidate`` is in ``row``'s trace and its span id is ``row``'s parent span id."""
    return bool(
        _word(ids, 32 * candidate) == _word(ids, 32 * row)
        and _word(ids, 32 * candidate + 8) == _word(ids, 32 * row + 8)
        and _word(ids, 32 * candidate + 16) == _word(ids, 32 * row + 24)
    )


@_jit
def _links(id_rows: Any, has_parent: Any) -> tuple[Any, Any, Any]:
    """Parent row, depth and child count of each span within the batch (span_batch._links).

    The parent is the lowest other row with the same trace id whose span id is the parent
    span id (found through an open-addressing table of id keys, confirmed word for word);
    the depth counts hops to a root, -1 when the chain reaches a span without its parent in
    the batch, or loops. The ids are read through a pointer (C-contiguous rows of 32 bytes).
    """
    n = id_rows.shape[0]
    ids = _data(id_rows)
    size = 16
    while size < 2 * n:
        size *= 2
    mask = size - 1
    table = np.full(size, -1, dtype=np.int64)
    keys = np.empty(n, dtype=np.uint64)
    for row in range(n):
        key = _id_key(ids, row, 16)
        keys[row] = key
        slot = np.int64(key & np.uint64(mask))
        while table[slot] >= 0:
            slot = (slot + 1) & mask
        table[slot] = row
    parent = np.full(n, -1, dtype=np.int64)
    children = np.zeros(n, dtype=np.int32)
    for row in range(n):
        if not has_parent[row]:
            continue
        key = _id_key(ids, row, 24)
        slot = np.int64(key & np.uint64(mask))
        best = -1
        while table[slot] >= 0:
            candidate = table[slot]
            if (
                keys[candidate] == key
                and candidate != row
                and (best < 0 or candidate < best)
                and _is_parent(ids, candidate, row)
            ):
                best = candidate
            slot = (slot + 1) & mask
        parent[row] = best
        if best >= 0:
            children[best] += 1
    depth = np.full(n, -2, dtype=np.int64)  # -2: not known yet
    path = np.empty(n, dtype=np.int64)
    for row in range(n):
        length, at = 0, row
        while at >= 0 and depth[at] == -2:
            depth[at] = -3  # on the current path: meeting it again is a loop
            path[length] = at
            length += 1
            at = parent[at]
        if at < 0:  # the top of the chain: a root counts 0, a span missing its parent -1
            top = path[length - 1]
            base = np.int64(0) if not has_parent[top] else np.int64(-1)
            length -= 1
            depth[top] = base
        else:
            base = depth[at] if depth[at] >= -1 else np.int64(-1)  # -3: a loop
        for i in range(length - 1, -1, -1):
            base = base + 1 if base >= 0 else np.int64(-1)
            depth[path[i]] = base
    out = np.empty(n, dtype=np.int16)
    for row in range(n):
        out[row] = min(depth[row], 32767)
    return parent.astype(np.int32), out, children


def links(ids: NDArray[np.uint8], has_parent: NDArray[np.bool_]) -> tuple[Any, Any, Any]:
    """Parent row (int32, -1 none), depth (int16, -1 unknown) and child count (int32) of each span.

    ``ids`` is :class:`Decoded`'s (n, 32) trace, span and parent span ids; ``has_parent``
    whether the parent span id is valid. The columns of span_batch._links, bit for bit.
    """
    return _links(np.ascontiguousarray(ids), has_parent)


class Decoded(NamedTuple):
    """The kernel's output, one row a span (columns as in :func:`_read_spans`)."""

    spans: NDArray[np.int64]  # (n, 7): start, end, request, resource, scope, index, resource number
    services: NDArray[np.int64]  # (resources, 2): service.name byte range, -1 for none
    ids: NDArray[np.uint8]  # (n, 32): trace id, span id, parent span id
    times: NDArray[np.int64]  # (n, 2): start, duration
    small: NDArray[np.int16]  # (n, 10)
    names: NDArray[np.int64]  # (n, 2): span name byte range
    name_hashes: NDArray[np.uint64]  # span_batch._name_hash of each name


def decode(
    buf: NDArray[np.uint8],
    request_start: NDArray[np.int64],
    request_end: NDArray[np.int64],
    salts: NDArray[np.uint64],
) -> Decoded | None:
    """The spans of the requests at ``buf[request_start[i]:request_end[i]]``, or None to defer.

    ``buf`` is :func:`otelai.features.wire.as_buffer` of the requests (zero padding after the
    data), ``salts`` span_batch's name-hash salts. None means: read this batch with the numpy
    reader (something malformed or unusual).
    """
    status, *columns = _decode(buf, request_start, request_end, salts)
    return Decoded(*columns) if status == OK else None


_UNKNOWN = -2  # interner.UNKNOWN: an operation key not remembered yet


@_jit
def _finish(
    spans: Any,
    ids: Any,
    times: Any,
    small: Any,
    names: Any,
    hashes: Any,
    request_start: Any,
    resource_ids: Any,
    stored_keys: Any,
    stored_ids: Any,
) -> tuple[Any, ...]:
    """:func:`_decode`'s rows as SpanBatch's columns, in their final dtypes, one array each.

    Also the operation key of each span (span_batch._intern_operations: the name hash mixed
    with the service id), its remembered id looked up in ``stored_keys`` (sorted; ids
    ``stored_ids``), :data:`_UNKNOWN` when not remembered or the name is long, and the links.
    """
    n = spans.shape[0]
    trace_id = np.empty((n, 16), dtype=np.uint8)
    span_id = np.empty((n, 8), dtype=np.uint8)
    has_parent = np.empty(n, dtype=np.bool_)
    is_root = np.empty(n, dtype=np.bool_)
    start = np.empty(n, dtype=np.int64)
    duration = np.empty(n, dtype=np.int64)
    status = np.empty(n, dtype=np.int8)
    kind = np.empty(n, dtype=np.int8)
    events = np.empty(n, dtype=np.int16)
    links = np.empty(n, dtype=np.int16)
    attributes = np.empty(n, dtype=np.int16)
    exception = np.empty(n, dtype=np.bool_)
    http = np.empty(n, dtype=np.int8)
    grpc = np.empty(n, dtype=np.int16)
    has_db = np.empty(n, dtype=np.bool_)
    service = np.empty(n, dtype=np.int32)
    operation = np.empty(n, dtype=np.int32)
    keys = np.empty(n, dtype=np.uint64)
    request = np.empty(n, dtype=np.int32)
    resource = np.empty(n, dtype=np.int32)
    scope = np.empty(n, dtype=np.int32)
    index = np.empty(n, dtype=np.int32)
    span_start = np.empty(n, dtype=np.int64)
    span_end = np.empty(n, dtype=np.int64)
    source, trace_out, span_out = _data(ids), _data(trace_id), _data(span_id)
    stored = stored_keys.size
    last_key, last_id = np.uint64(0), np.int64(_UNKNOWN)
    have_last = False
    for row in range(n):
        _put_word(trace_out, 16 * row, _word(source, 32 * row))
        _put_word(trace_out, 16 * row + 8, _word(source, 32 * row + 8))
        _put_word(span_out, 8 * row, _word(source, 32 * row + 16))
        parent = small[row, 9] != 0
        has_parent[row] = parent
        is_root[row] = not parent
        start[row] = times[row, 0]
        duration[row] = times[row, 1]
        status[row] = small[row, 0]
        kind[row] = small[row, 1]
        events[row] = small[row, 2]
        links[row] = small[row, 3]
        attributes[row] = small[row, 4]
        exception[row] = small[row, 5] != 0
        http[row] = small[row, 6]
        grpc[row] = small[row, 7]
        has_db[row] = small[row, 8] != 0
        owner = resource_ids[spans[row, 6]]
        service[row] = owner
        key = _mix(hashes[row] + np.uint64(owner))
        keys[row] = key
        found = np.int64(_UNKNOWN)
        if names[row, 1] - names[row, 0] <= MAX_SHORT_NAME:
            if have_last and key == last_key:
                found = last_id
            elif stored:
                low, high = 0, stored  # the first stored key >= key
                while low < high:
                    middle = (low + high) >> 1
                    if stored_keys[middle] < key:
                        low = middle + 1
                    else:
                        high = middle
                if low < stored and stored_keys[low] == key:
                    found = np.int64(stored_ids[low])
            last_key, last_id, have_last = key, found, True
        operation[row] = found
        at = spans[row, 2]
        request[row] = at
        resource[row] = spans[row, 3]
        scope[row] = spans[row, 4]
        index[row] = spans[row, 5]
        span_start[row] = spans[row, 0] - request_start[at]
        span_end[row] = spans[row, 1] - request_start[at]
    parent_index, depth, children = _links(ids, has_parent)
    return (
        trace_id,
        span_id,
        has_parent,
        is_root,
        start,
        duration,
        status,
        kind,
        events,
        links,
        attributes,
        exception,
        http,
        grpc,
        has_db,
        service,
        operation,
        keys,
        request,
        resource,
        scope,
        index,
        span_start,
        span_end,
        parent_index,
        depth,
        children,
    )


_FINISHED = (
    "trace_id",
    "span_id",
    "has_parent",
    "is_root",
    "start_unix_nano",
    "duration_ns",
    "status_code",
    "kind",
    "n_events",
    "n_links",
    "n_attributes",
    "has_exception_event",
    "http_status_class",
    "rpc_grpc_status",
    "has_db",
    "service_id",
    "operation_id",
    "operation_key",
    "request",
    "resource",
    "scope",
    "index",
    "span_start",
    "span_end",
    "parent_index",
    "depth",
    "child_count",
)


def finish(
    found: Decoded,
    request_start: NDArray[np.int64],
    resource_ids: NDArray[np.int64],
    stored_keys: NDArray[np.uint64],
    stored_ids: NDArray[np.int32],
) -> dict[str, Any]:
    """SpanBatch's columns (writable) from :func:`decode`'s rows, by name, plus ``operation_key``.

    ``resource_ids`` is the service id of each resource (``found.services``); ``stored_keys``
    and ``stored_ids`` the interner's remembered operation keys (sorted) and their ids
    (:meth:`~otelai.features.interner.Interner.hashed_table`). ``operation_id`` is
    ``interner.UNKNOWN`` where the key is not remembered or the name is over
    :data:`MAX_SHORT_NAME` bytes: the caller interns those.
    """
    columns = _finish(
        found.spans,
        found.ids,
        found.times,
        found.small,
        found.names,
        found.name_hashes,
        request_start,
        resource_ids,
        stored_keys,
        stored_ids,
    )
    return dict(zip(_FINISHED, columns, strict=True))


def warm_up() -> None:
    """Compile (or load from the cache) the kernels for the argument types :func:`decode` gets."""
    empty = np.zeros(0, dtype=np.int64)
    buf = np.frombuffer(bytes(64), dtype=np.uint8)  # read-only, as as_buffer's
    found = decode(buf, empty, empty, np.ones(MAX_SHORT_NAME // 8 + 3, dtype=np.uint64))
    links(np.zeros((0, 32), dtype=np.uint8), np.zeros(0, dtype=np.bool_))
    if found is not None:
        finish(found, empty, empty, np.zeros(0, dtype=np.uint64), np.zeros(0, dtype=np.int32))
