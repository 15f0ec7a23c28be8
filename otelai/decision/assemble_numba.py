"""Compiled steps of the forwarded trace request's assembly (numba), for :mod:`otelai.scoring.traces`.

The scoring hop forwards every kept span as its original bytes plus a suffix (tags, then a
``trace_state`` field; :mod:`otelai.decision.tagging`), regrouped under its resource and scope
(:class:`~otelai.decision.assemble.Assembler`). In Python that costs, per kept span, a upb
parse of its field 3, a slice, two concatenations and the item's tag, and per request a upb
parse of its containers that makes one bytes object for every span of the request, kept or
not. These kernels do the same with one call per batch and three per request:

- :func:`request_runs` splits the batch's kept rows by request (they come in request order);
- :func:`containers` walks the container levels of the serialised ``ExportTraceServiceRequest``
  (opentelemetry-proto ``collector/trace/v1/trace_service.proto``, ``trace/v1/trace.proto``)::

      request:        1 ResourceSpans (repeated)
      ResourceSpans:  1 Resource, 2 ScopeSpans (repeated), 3 schema_url
      ScopeSpans:     1 InstrumentationScope, 2 Span (repeated, skipped by length), 3 schema_url

  and gives the byte range of each resource's Resource and schema_url, and of each scope's
  InstrumentationScope and schema_url (rows as :class:`~otelai.decision.assemble.RangedRequest`
  reads them), resources and scopes numbered in order as upb numbers the skeleton's repeated
  fields, which is how :class:`~otelai.features.span_batch.SpanBatch` numbers them too;
- :func:`trace_states` finds each kept span's ``trace_state`` (field 3, wire type 2; the last
  one, as protobuf reads a repeated singular field) and gives each span its suffix: a normal
  span without a trace state (most of what is kept) the shared one of its selection reason,
  the others are listed for the caller to build theirs in Python;
- :func:`write_items` writes each kept span as the scope's repeated field 2: ``0x12``, the
  varint length, the span's bytes and its suffix (an entry of a small table), so the spans of
  one scope are one contiguous region of the output, and lists those regions.

Contract with the Python path (upb's skeleton, :func:`~otelai.decision.assemble.skeleton`,
and ``SpanState.FromString``): whatever these kernels report as read, upb reads the same. They
are stricter than upb, never more lenient: at container level any tag but those above
(fields 1 to 3, wire type 2, one byte each: ``0x0A``, ``0x12``, ``0x1A``), a singular field
given twice, a length varint
over five bytes or not minimal, or anything running past its message makes :func:`containers`
report :data:`UNSURE`, and the caller parses that request with upb; in a span, groups, wire
types 6 and 7, field number 0, a tag over 32 bits or not minimal, a field 3 of another wire
type, a varint over ten bytes (or a tenth byte over 1) or truncation mark the span
:data:`UNREAD`, and the caller reads its trace state with upb.

Helpers take a raw pointer to the bytes (:mod:`otelai.features.pointers`), never an array, and
no array is reassigned in a loop (numba reference-counts arrays passed to helpers or
reassigned in loops at every iteration; see :mod:`otelai.features.span_decode_numba`):
:func:`containers` fills arrays it is given and is called again when they were too small.
Spans are copied a word at a time (:func:`~otelai.features.pointers.word`).

Importing this module imports numba; :func:`warm_up` compiles the kernels or loads them from
numba's on-disk cache (``__pycache__`` beside this file, else the user cache directory; with
neither writable they compile at every start).
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numpy.typing import NDArray

from otelai.decision.assemble import (
    RESOURCE_COLUMNS,
    RESOURCE_END,
    RESOURCE_FIRST_SCOPE,
    RESOURCE_SCOPES,
    RESOURCE_START,
    RESOURCE_URL_END,
    RESOURCE_URL_START,
    SCOPE_COLUMNS,
    SCOPE_END,
    SCOPE_START,
    SCOPE_URL_END,
    SCOPE_URL_START,
)
from otelai.decision.severity import Severity
from otelai.features.pointers import data as _data
from otelai.features.pointers import put_word as _put_word
from otelai.features.pointers import word as _word
from otelai.kernels import cached_jit

I64 = NDArray[np.int64]
I32 = NDArray[np.int32]
I8 = NDArray[np.int8]
U8 = NDArray[np.uint8]

# containers' status: the ranges are valid, the arrays were too small (call again with arrays of
# the counts returned), or parse this request with upb.
READ, SHORT, UNSURE = 0, 1, 2
UNREAD = -1  # a trace state's start and end for a span to read with upb
_NORMAL = int(Severity.NORMAL)
# Columns of write_items' runs of spans of one scope: its resource and scope index, its spans,
# and where they are in the bytes written.
GROUP_RESOURCE, GROUP_SCOPE, GROUP_ITEMS, GROUP_START, GROUP_END = 0, 1, 2, 3, 4
GROUP_COLUMNS = 5
# Container tags (field << 3 | wire type 2): the first field, the repeated one, schema_url.
_FIRST, _ITEMS, _URL = 0x0A, 0x12, 0x1A

_jit = cached_jit("the assembly kernels")


@numba.njit(inline="always")
def _length(p: Any, pos: int, limit: int) -> tuple[int, int]:
    """The varint at ``pos`` (five bytes at most, minimal) and the position after it.

    The position is -1 when the varint is longer, not minimal (a last byte 0 after others) or
    runs past ``limit``: the callers' upb counterpart may read those, so they defer to it.
    """
    value = 0
    for i in range(5):
        if pos + i >= limit:
            return 0, -1
        byte = int(p[pos + i])
        value |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if byte == 0 and i > 0:
                return 0, -1
            return value, pos + i + 1
    return 0, -1


@numba.njit(inline="always")
def _message(p: Any, pos: int, limit: int) -> tuple[int, int]:
    """Start and end of the length-delimited value whose length is at ``pos``; end -1 when unsure."""
    length, start = _length(p, pos, limit)
    if start < 0 or length > limit - start:
        return 0, -1
    return start, start + length


@_jit
def _containers(data: U8, resources: I64, scopes: I64) -> tuple[int, int, int]:
    """Fill ``resources`` and ``scopes`` (up to their capacity) with the container ranges of
    the request ``data``; returns (status, resources, scopes).

    A range of an absent field is (0, 0): the same empty bytes as upb's default. Counting goes
    on past the arrays' capacity, so a caller with arrays too small (:data:`SHORT`) calls again
    with arrays of the counts.
    """
    p = _data(data)
    limit = data.size
    resource_rows, scope_rows = resources.shape[0], scopes.shape[0]
    n, m = 0, 0
    pos = 0
    while pos < limit:
        if p[pos] != _FIRST:
            return UNSURE, 0, 0
        start, stop = _message(p, pos + 1, limit)
        if stop < 0:
            return UNSURE, 0, 0
        pos = stop
        first_scope = m
        resource_start, resource_end, url_start, url_end = 0, 0, 0, 0
        seen_resource, seen_url = False, False
        at = start
        while at < stop:
            tag = p[at]
            inner, inner_stop = _message(p, at + 1, stop)
            if inner_stop < 0:
                return UNSURE, 0, 0
            at = inner_stop
            if tag == _FIRST:
                if seen_resource:
                    return UNSURE, 0, 0
                seen_resource = True
                resource_start, resource_end = inner, inner_stop
            elif tag == _URL:
                if seen_url:
                    return UNSURE, 0, 0
                seen_url = True
                url_start, url_end = inner, inner_stop
            elif tag == _ITEMS:
                scope_start, scope_end, scope_url_start, scope_url_end = 0, 0, 0, 0
                seen_scope, seen_scope_url = False, False
                item = inner
                while item < inner_stop:
                    item_tag = p[item]
                    value, value_stop = _message(p, item + 1, inner_stop)
                    if value_stop < 0:
                        return UNSURE, 0, 0
                    item = value_stop
                    if item_tag == _FIRST:
                        if seen_scope:
                            return UNSURE, 0, 0
                        seen_scope = True
                        scope_start, scope_end = value, value_stop
                    elif item_tag == _URL:
                        if seen_scope_url:
                            return UNSURE, 0, 0
                        seen_scope_url = True
                        scope_url_start, scope_url_end = value, value_stop
                    elif item_tag != _ITEMS:  # a span: skipped by its length
                        return UNSURE, 0, 0
                if m < scope_rows:
                    scopes[m, SCOPE_START], scopes[m, SCOPE_END] = scope_start, scope_end
                    scopes[m, SCOPE_URL_START], scopes[m, SCOPE_URL_END] = scope_url_start, scope_url_end
                m += 1
            else:
                return UNSURE, 0, 0
        if n < resource_rows:
            resources[n, RESOURCE_START], resources[n, RESOURCE_END] = resource_start, resource_end
            resources[n, RESOURCE_URL_START], resources[n, RESOURCE_URL_END] = url_start, url_end
            resources[n, RESOURCE_FIRST_SCOPE], resources[n, RESOURCE_SCOPES] = first_scope, m - first_scope
        n += 1
    if n > resource_rows or m > scope_rows:
        return SHORT, n, m
    return READ, n, m


def containers(data: U8) -> tuple[I64, I64] | None:
    """The resource and scope rows of the request ``data`` (its bytes as a uint8 array; rows
    as :class:`~otelai.decision.assemble.RangedRequest` reads them), or None where upb must
    read the request (see the module docstring)."""
    resources = np.empty((4, RESOURCE_COLUMNS), dtype=np.int64)
    scopes = np.empty((8, SCOPE_COLUMNS), dtype=np.int64)
    status, n, m = _containers(data, resources, scopes)
    if status == SHORT:  # many resources or scopes: again, with room for all of them
        resources = np.empty((n, RESOURCE_COLUMNS), dtype=np.int64)
        scopes = np.empty((m, SCOPE_COLUMNS), dtype=np.int64)
        status, n, m = _containers(data, resources, scopes)
    if status != READ:
        return None
    return resources[:n], scopes[:m]


@numba.njit(inline="always")
def _trace_state(p: Any, pos: int, limit: int) -> tuple[int, int]:
    """The (start, end) of the last trace state (field 3, wire type 2) of the span at
    ``p[pos:limit]``; (0, 0) for none, ``(UNREAD, UNREAD)`` when upb must read the span."""
    state_start, state_end = 0, 0
    while pos < limit:
        tag, at = int(p[pos]), pos + 1
        if tag >= 0x80:  # fields 16 and up: a longer tag
            tag, at = _length(p, pos, limit)
            if at < 0 or tag > 0xFFFFFFFF:
                return UNREAD, UNREAD
        if tag < 8:
            return UNREAD, UNREAD
        wire_type = tag & 7
        if wire_type == 2:
            if at < limit and p[at] < 0x80:  # the usual length of one byte
                start = at + 1
                stop = start + int(p[at])
                if stop > limit:
                    return UNREAD, UNREAD
            else:
                start, stop = _message(p, at, limit)
                if stop < 0:
                    return UNREAD, UNREAD
            if tag >> 3 == 3:
                state_start, state_end = start, stop
            pos = stop
        elif tag >> 3 == 3:  # trace_state of another wire type: upb keeps it as unknown
            return UNREAD, UNREAD
        elif wire_type == 0:
            pos = -1
            for k in range(10):
                if at + k >= limit:
                    break
                byte = p[at + k]
                if k == 9 and byte > 1:
                    break
                if byte < 0x80:
                    pos = at + k + 1
                    break
            if pos < 0:
                return UNREAD, UNREAD
        elif wire_type == 1 or wire_type == 5:
            pos = at + (8 if wire_type == 1 else 4)
            if pos > limit:
                return UNREAD, UNREAD
        else:  # groups, wire types 6 and 7
            return UNREAD, UNREAD
    return state_start, state_end


@numba.njit(inline="always")
def _copy(source: Any, start: int, end: int, target: Any, at: int) -> int:
    """Copy ``source[start:end]`` to ``target[at:]``, eight bytes at a time; returns where it ends."""
    while start + 8 <= end:
        _put_word(target, at, _word(source, start))
        start += 8
        at += 8
    while start < end:
        target[at] = source[start]
        start += 1
        at += 1
    return at


@_jit
def request_runs(kept: I64, request: I32) -> tuple[bool, I64]:
    """The kept rows (``kept``, ascending batch rows) by request: rows (request, first, stop),
    positions ``first:stop`` of ``kept``; False when the requests are not in order."""
    runs = np.empty((kept.size, 3), dtype=np.int64)
    m = 0
    for i in range(kept.size):
        if kept[i] < 0 or kept[i] >= request.size:
            raise ValueError("row out of bounds")
        r = request[kept[i]]
        if m and r == runs[m - 1, 0]:
            runs[m - 1, 2] = i + 1
            continue
        if m and r < runs[m - 1, 0]:
            return False, runs[:0]
        runs[m, 0], runs[m, 1], runs[m, 2] = r, i, i + 1
        m += 1
    return True, runs[:m]


@_jit
def trace_states(
    data: U8, rows: I64, span_start: I64, span_end: I64, code: I8, severity: I8
) -> tuple[I64, I64, I64, int]:
    """The suffix entries of one request's kept spans, and the spans whose suffix is Python's.

    Span ``i`` is ``data[span_start[rows[i]]:span_end[rows[i]]]``. A normal span without a
    trace state gets the shared entry of its selection reason, ``code - 1``; the others
    (anomalous, with a trace state, or left to upb) get -1 and are listed: returns the
    entries, the positions listed (``odd``) and their trace states' (start, end) in ``data``
    (``(UNREAD, UNREAD)``: read it with upb; (0, 0) for none, the same empty bytes as upb's
    default), and how many were listed.
    """
    p = _data(data)
    n = rows.size
    extra_id = np.empty(n, dtype=np.int64)
    odd = np.empty(n, dtype=np.int64)
    states = np.empty((n, 2), dtype=np.int64)
    m = 0
    for i in range(n):
        row = rows[i]
        if row < 0 or row >= span_start.size:
            raise ValueError("row out of bounds")
        pos, limit = span_start[row], span_end[row]
        if pos < 0 or limit > data.size or pos > limit:
            start, end = UNREAD, UNREAD
        else:
            start, end = _trace_state(p, pos, limit)
        if severity[row] != _NORMAL or end > start or start < 0:
            extra_id[i] = -1
            odd[m] = i
            states[m, 0], states[m, 1] = start, end
            m += 1
        else:
            extra_id[i] = code[row] - 1
    return extra_id, odd, states, m


@_jit
def write_items(
    data: U8,
    rows: I64,
    span_start: I64,
    span_end: I64,
    resource: I32,
    scope: I32,
    extra_buf: U8,
    extra_offsets: I64,
    extra_id: I64,
) -> tuple[U8, I64, int]:
    """One request's kept spans with their suffixes, each as the repeated field 2 of its scope.

    Span ``i`` (``data[span_start[rows[i]]:span_end[rows[i]]]``) is written as ``0x12``, the
    varint length, the span's bytes and its suffix ``extra_buf[extra_offsets[k]:extra_offsets[k
    + 1]]`` for ``k = extra_id[i]``. Returns the bytes, the runs of spans of one scope (rows:
    resource, scope, spans, start and end in the bytes) and how many runs there are. Raises
    ValueError for a row, span or entry out of bounds.
    """
    n = rows.size
    entries = extra_offsets.size - 1
    if entries > 0 and (extra_offsets[0] < 0 or extra_offsets[entries] > extra_buf.size):
        raise ValueError("suffix table out of bounds")
    groups = np.empty((n, GROUP_COLUMNS), dtype=np.int64)
    g = 0
    total = 0
    for i in range(n):
        row, k = rows[i], extra_id[i]
        if row < 0 or row >= span_start.size or k < 0 or k >= entries:
            raise ValueError("row or suffix entry out of bounds")
        start, end = span_start[row], span_end[row]
        if start < 0 or end > data.size or start > end:
            raise ValueError("span out of bounds")
        if (
            g == 0
            or resource[row] != groups[g - 1, GROUP_RESOURCE]
            or scope[row] != groups[g - 1, GROUP_SCOPE]
        ):
            groups[g, GROUP_RESOURCE], groups[g, GROUP_SCOPE] = resource[row], scope[row]
            groups[g, GROUP_ITEMS], groups[g, GROUP_START] = 0, total
            g += 1
        size = end - start + extra_offsets[k + 1] - extra_offsets[k]
        head = 2  # the tag and a varint of one byte per 7 bits of the length
        while size >> (7 * (head - 1)) != 0:
            head += 1
        total += head + size
        groups[g - 1, GROUP_ITEMS] += 1
        groups[g - 1, GROUP_END] = total
    out = np.empty(total, dtype=np.uint8)
    p, q, o = _data(data), _data(extra_buf), _data(out)
    at = 0
    for i in range(n):
        row, k = rows[i], extra_id[i]
        start, end = span_start[row], span_end[row]
        size = end - start + extra_offsets[k + 1] - extra_offsets[k]
        out[at] = 0x12
        at += 1
        while size >= 0x80:
            out[at] = (size & 0x7F) | 0x80
            size >>= 7
            at += 1
        out[at] = size
        at += 1
        at = _copy(p, start, end, o, at)
        at = _copy(q, extra_offsets[k], extra_offsets[k + 1], o, at)
    return out, groups, g


def warm_up() -> None:
    """Compile (or load from the cache) the kernels for the argument types the caller passes:
    read-only bytes (``np.frombuffer``) and batch columns (SpanBatch freezes them), writable
    kept rows, selection codes and severities, a read-only suffix table."""
    # One resource (empty Resource and schema_url), one scope (empty) holding one span: 1a 02 "ot".
    request = b"\x0a\x0e\x0a\x00\x12\x08\x0a\x00\x12\x04\x1a\x02ot\x1a\x00"
    data = np.frombuffer(request, dtype=np.uint8)
    found = containers(data)
    assert found is not None
    span_start, span_end = np.array([10], dtype=np.int64), np.array([14], dtype=np.int64)
    request_of, resource, scope = (np.zeros(1, dtype=np.int32) for _ in range(3))
    for column in (span_start, span_end, request_of, resource, scope):
        column.setflags(write=False)
    kept = np.zeros(1, dtype=np.int64)
    request_runs(kept, request_of)
    code, severity = np.ones(1, dtype=np.int8), np.zeros(1, dtype=np.int8)
    extra_id, _, _, _ = trace_states(data, kept, span_start, span_end, code, severity)
    extra_id[0] = 0  # listed (it has a trace state): the caller gives it its entry
    extra = np.frombuffer(b"\x4a\x00", dtype=np.uint8)
    offsets = np.array([0, 2], dtype=np.int64)
    offsets.setflags(write=False)
    write_items(data, kept, span_start, span_end, resource, scope, extra, offsets, extra_id)
