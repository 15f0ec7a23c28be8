"""Spans of one or more OTLP trace requests as columns of numpy arrays.

Reads the serialised ``ExportTraceServiceRequest`` bytes directly (field numbers from
opentelemetry-proto ``trace/v1/trace.proto``): :mod:`otelai.features.trace_layout` finds each
span, :func:`otelai.features.wire.walk` reads all spans' fields in lockstep, and only the
attributes that features need are looked at, by comparing key bytes in place. Attribute names
follow the OpenTelemetry semantic conventions: ``http.response.status_code`` (and the older
``http.status_code``), ``rpc.grpc.status_code``, ``db.system.name`` (and ``db.system``), and
``service.name`` on the resource.

Parent links, depth and child counts are resolved within the batch by sorting hashed
(trace id, span id) keys, then checking the candidate's ids byte for byte.

Two readers produce the same columns: the numpy one here, and a compiled one
(:mod:`otelai.features.span_decode_numba`, in about a fifth of the time) used when numba is
installed; :mod:`otelai.features.span_decoder` picks one. The compiled reader hands anything
malformed or unusual back to the numpy one, so both give the same columns and the same
``failed_requests`` on any input.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, fields
from types import ModuleType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from otelai.features.interner import UNKNOWN, Interner
from otelai.features.span_decoder import Decoder, compiled_reader
from otelai.features.trace_layout import SpanLayout, locate_spans
from otelai.features.wire import (
    FIXED64,
    LEN,
    PAD,
    VARINT,
    Fields,
    as_buffer,
    equals,
    fixed64,
    gather_fixed,
    read_varints,
    same_bytes,
    tag,
    walk,
)

log = logging.getLogger("otelai.features")

I64 = NDArray[np.int64]
IntArray = NDArray[np.int32] | NDArray[np.int64]
U8 = NDArray[np.uint8]
Bool = NDArray[np.bool_]

# Span (trace.proto)
TRACE_ID, SPAN_ID, PARENT_SPAN_ID, NAME = tag(1, LEN), tag(2, LEN), tag(4, LEN), tag(5, LEN)
KIND, START, END = tag(6, VARINT), tag(7, FIXED64), tag(8, FIXED64)
ATTRIBUTES, EVENTS, LINKS, STATUS = tag(9, LEN), tag(11, LEN), tag(13, LEN), tag(15, LEN)
EVENT_NAME, STATUS_CODE = tag(2, LEN), tag(3, VARINT)
# KeyValue / AnyValue (common.proto)
KV_KEY, KV_VALUE = tag(1, LEN), tag(2, LEN)
ANY_STRING, ANY_INT = tag(1, LEN), tag(3, VARINT)

HTTP_STATUS_KEYS = (b"http.response.status_code", b"http.status_code")  # preferred first
GRPC_STATUS_KEY = b"rpc.grpc.status_code"
DB_KEYS = (b"db.system.name", b"db.system")
EXCEPTION_EVENT = b"exception"  # the event name the exception semantic conventions define
_INT64_MAX = np.uint64(2**63 - 1)
MAX_SHORT_NAME = 64  # span names up to this many bytes are grouped by a vectorised hash

_RNG = np.random.default_rng(0x0E1A1)  # fixed salts: the hashes only group rows within a batch
_SALTS = _RNG.integers(1, 2**63, size=MAX_SHORT_NAME // 8 + 3, dtype=np.uint64)


@dataclass(frozen=True, slots=True)
class SpanBatch:
    """``n`` spans as columns; row ``i`` of every array is the same span.

    Ids and times
        ``trace_id`` (n, 16) and ``span_id`` (n, 8) uint8 (zeros when absent or of the wrong
        size), ``has_parent`` (a valid ``parent_span_id``: 8 bytes, not all zero; the
        specification calls any other id invalid), ``start_unix_nano`` and
        ``duration_ns`` int64 (end - start, 0 when negative or absent).
    Span fields
        ``status_code`` int8 (0 unset, 1 ok, 2 error), ``kind`` int8 (``SpanKind``: 0
        unspecified .. 5 consumer), ``n_events``, ``n_links``, ``n_attributes`` int16
        (saturating), ``has_exception_event`` (an event named ``exception``).
    From attributes
        ``http_status_class`` int8 (1..5 for 1xx..5xx, 0 absent or out of range; int or
        numeric string values), ``rpc_grpc_status`` int16 (-1 absent), ``has_db``.
    Within the batch
        ``is_root`` (``not has_parent``), ``parent_index`` int32 (row of the parent, -1 when it is not
        in the batch), ``depth`` int16 (0 for a root, -1 when an ancestor is missing),
        ``child_count`` int32 (children present in the batch: a lower bound).
    Keys
        ``service_id`` and ``operation_id`` int32 from the :class:`Interner`.
    Locators
        ``request`` (index into the requests given), ``resource``, ``scope``, ``index``
        (``resource_spans[resource].scope_spans[scope].spans[index]``) int32, and
        ``span_start``/``span_end`` int64, the span's byte range in its request's payload.
        ``failed_requests`` lists requests that could not be read (their spans are absent).
    """

    trace_id: U8
    span_id: U8
    has_parent: Bool
    start_unix_nano: I64
    duration_ns: I64
    status_code: NDArray[np.int8]
    kind: NDArray[np.int8]
    n_events: NDArray[np.int16]
    n_links: NDArray[np.int16]
    n_attributes: NDArray[np.int16]
    has_exception_event: Bool
    http_status_class: NDArray[np.int8]
    rpc_grpc_status: NDArray[np.int16]
    has_db: Bool
    is_root: Bool
    parent_index: NDArray[np.int32]
    depth: NDArray[np.int16]
    child_count: NDArray[np.int32]
    service_id: NDArray[np.int32]
    operation_id: NDArray[np.int32]
    request: NDArray[np.int32]
    resource: NDArray[np.int32]
    scope: NDArray[np.int32]
    index: NDArray[np.int32]
    span_start: I64
    span_end: I64
    failed_requests: tuple[int, ...] = ()

    def __len__(self) -> int:
        return int(self.duration_ns.size)

    @classmethod
    def from_payloads(
        cls, payloads: Sequence[bytes], interner: Interner, *, decoder: Decoder | None = None
    ) -> SpanBatch:
        """The spans of serialised ``ExportTraceServiceRequest`` payloads.

        A malformed request is left out and listed in ``failed_requests``; nothing raises.
        ``decoder`` overrides ``OTELAI_SPAN_DECODER`` (see
        :func:`~otelai.features.span_decoder.prepare_decoder`).
        """
        payloads = list(payloads)
        failed: tuple[int, ...] = ()
        kernel = compiled_reader(decoder)
        columns = _decode_compiled(kernel, payloads, interner) if kernel is not None else None
        if columns is None:
            try:
                columns = _decode(payloads, interner)
            except (ValueError, IndexError):  # WireError is a ValueError; find the bad request(s)
                columns, failed = _decode_each(payloads, interner)
        parent_span_id = columns.pop("parent_span_id")
        if parent_span_id is not None:
            columns.update(_links(columns["trace_id"], columns["span_id"], parent_span_id))
        return _frozen(cls, columns, failed)

    @classmethod
    def from_requests(
        cls, requests: Sequence[Any], interner: Interner, *, decoder: Decoder | None = None
    ) -> SpanBatch:
        """The spans of parsed ``ExportTraceServiceRequest`` messages.

        Serialises each (upb; about the cost of a parse) and reads the bytes; ``span_start`` and
        ``span_end`` then refer to that serialisation.
        """
        payloads = [request.SerializeToString() for request in requests]
        return cls.from_payloads(payloads, interner, decoder=decoder)


def _decode_compiled(kernel: ModuleType, payloads: list[bytes], interner: Interner) -> dict[str, Any] | None:
    """:func:`_decode`'s columns and the links from the compiled reader, or None to read with numpy instead.

    ``parent_span_id`` is None: the links are already resolved.
    """
    sizes = np.fromiter(map(len, payloads), dtype=np.int64, count=len(payloads))
    if int(sizes.sum()) >= 2**31 - 2 * PAD:  # beyond what the numpy reader accepts: let it decide
        return None
    buf = as_buffer(payloads)
    ends = np.cumsum(sizes)
    starts = ends - sizes
    try:
        found = kernel.decode(buf, starts, ends, _SALTS)
    except Exception:  # never expected; fail open to the numpy reader
        log.exception("compiled span reader failed, reading with numpy")
        return None
    if found is None:
        return None
    resource_ids = np.array(
        [interner.service(_text(buf, int(a), int(b))) for a, b in found.services.tolist()], dtype=np.int64
    )
    stored_keys, stored_ids = interner.hashed_table()
    columns: dict[str, Any] = kernel.finish(found, starts, resource_ids, stored_keys, stored_ids)
    key = columns.pop("operation_key")
    operation = columns["operation_id"]
    missing = np.flatnonzero(operation == UNKNOWN)
    if missing.size:
        names = found.names
        _intern_missing(
            buf, names[:, 0], names[:, 1], columns["service_id"], key, operation, missing, interner
        )
    columns["parent_span_id"] = None  # links are resolved: from_payloads drops it
    return columns


def _text(buf: U8, start: int, end: int) -> str:
    return buf[start:end].tobytes().decode("utf-8", errors="replace") if start >= 0 else ""


def _frozen(cls: type[SpanBatch], columns: dict[str, Any], failed: tuple[int, ...]) -> SpanBatch:
    for value in columns.values():
        value.setflags(write=False)
    return cls(**columns, failed_requests=failed)


_COLUMNS = tuple(f.name for f in fields(SpanBatch) if f.name != "failed_requests")


def _decode_each(payloads: list[bytes], interner: Interner) -> tuple[dict[str, Any], tuple[int, ...]]:
    """Decode request by request, leaving out the malformed ones."""
    parts, failed = [], []
    for number, payload in enumerate(payloads):
        try:
            part = _decode([payload], interner)
        except (ValueError, IndexError) as exc:
            log.warning("unreadable trace request", extra={"error": str(exc)})
            failed.append(number)
            continue
        part["request"] = np.full_like(part["request"], number)
        parts.append(part)
    if not parts:
        return _decode([], interner), tuple(failed)
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}, tuple(failed)


def _decode(payloads: list[bytes], interner: Interner) -> dict[str, Any]:
    """Every column except the within-batch links, plus ``parent_span_id``."""
    buf, layout = locate_spans(payloads)
    n = int(layout.start.size)
    span = walk(buf, layout.start, layout.end)
    start = _fixed64_or_zero(buf, span, START, n)
    end = _fixed64_or_zero(buf, span, END, n)
    parent_span_id = _fixed_bytes(buf, span, PARENT_SPAN_ID, n, 8)
    service_id, operation_id = _operations(buf, span, layout, interner)
    columns: dict[str, Any] = {
        "trace_id": _fixed_bytes(buf, span, TRACE_ID, n, 16),
        "span_id": _fixed_bytes(buf, span, SPAN_ID, n, 8),
        "parent_span_id": parent_span_id,
        "has_parent": parent_span_id.any(axis=1),
        "start_unix_nano": np.minimum(start, _INT64_MAX).astype(np.int64),
        "duration_ns": np.minimum(np.where(end > start, end - start, 0), _INT64_MAX).astype(np.int64),
        "status_code": _status_code(buf, span, n),
        "kind": _small_enum(buf, span, KIND, n, 5),
        "n_events": _saturating16(span.count(EVENTS, n)),
        "n_links": _saturating16(span.count(LINKS, n)),
        "n_attributes": _saturating16(span.count(ATTRIBUTES, n)),
        "has_exception_event": _has_exception(buf, span, n),
        "service_id": service_id,
        "operation_id": operation_id,
        "request": layout.request.astype(np.int32),
        "resource": layout.resource.astype(np.int32),
        "scope": layout.scope.astype(np.int32),
        "index": layout.index.astype(np.int32),
        "span_start": layout.start - layout.request_start.take(layout.request),
        "span_end": layout.end - layout.request_start.take(layout.request),
    }
    columns.update(_attribute_columns(buf, span, n))
    return columns


def _saturating16(counts: I64) -> NDArray[np.int16]:
    return np.minimum(counts, np.iinfo(np.int16).max).astype(np.int16)


def _fixed_bytes(buf: U8, span: Fields, field_tag: int, n: int, width: int) -> U8:
    """A ``width``-byte field as an (n, width) array, zeros when absent or of another size."""
    out = np.zeros((n, width), dtype=np.uint8)
    row = span.last(field_tag, n)
    spans = np.flatnonzero(row >= 0)
    rows = row.take(spans)
    right = (span.end.take(rows) - span.data.take(rows)) == width
    out[spans[right]] = gather_fixed(buf, span.data.take(rows[right]), width)
    return out


def _fixed64_or_zero(buf: U8, span: Fields, field_tag: int, n: int) -> NDArray[np.uint64]:
    out = np.zeros(n, dtype=np.uint64)
    row = span.last(field_tag, n)
    spans = np.flatnonzero(row >= 0)
    out[spans] = fixed64(buf, span.data.take(row.take(spans)))
    return out


def _varint_or(buf: U8, fields_: Fields, field_tag: int, n: int, default: int) -> I64:
    """A varint field's value as int64 (two's complement, as protobuf's int types), or default."""
    out = np.full(n, default, dtype=np.int64)
    row = fields_.last(field_tag, n)
    have = np.flatnonzero(row >= 0)
    if have.size:
        out[have] = read_varints(buf, fields_.data.take(row.take(have)))[0].view(np.int64)
    return out


def _small_enum(buf: U8, span: Fields, field_tag: int, n: int, top: int) -> NDArray[np.int8]:
    value = _varint_or(buf, span, field_tag, n, 0)
    return np.where((value >= 0) & (value <= top), value, 0).astype(np.int8)


def _status_code(buf: U8, span: Fields, n: int) -> NDArray[np.int8]:
    row = span.last(STATUS, n)
    spans = np.flatnonzero(row >= 0)
    out = np.zeros(n, dtype=np.int8)
    if spans.size:
        rows = row.take(spans)
        status = walk(buf, span.data.take(rows), span.end.take(rows))
        out[spans] = _small_enum(buf, status, STATUS_CODE, int(spans.size), 2)
    return out


def _has_exception(buf: U8, span: Fields, n: int) -> Bool:
    rows = span.rows(EVENTS)
    out = np.zeros(n, dtype=np.bool_)
    if rows.size:
        events = walk(buf, span.data.take(rows), span.end.take(rows))
        name = events.last(EVENT_NAME, int(rows.size))
        named = np.flatnonzero(name >= 0)
        hit = equals(buf, events.data.take(name[named]), events.end.take(name[named]), EXCEPTION_EVENT)
        out[span.owner.take(rows.take(named[hit]))] = True
    return out


def _attribute_columns(buf: U8, span: Fields, n: int) -> dict[str, Any]:
    attributes = _Attributes(buf, span, (*HTTP_STATUS_KEYS, GRPC_STATUS_KEY, *DB_KEYS))
    http = np.full(n, -1, dtype=np.int64)
    for key in reversed(HTTP_STATUS_KEYS):  # the preferred key, written last, wins
        code = attributes.integer(key, n)
        http = np.where(code >= 0, code, http)
    grpc = attributes.integer(GRPC_STATUS_KEY, n)
    has_db = np.zeros(n, dtype=np.bool_)
    for key in DB_KEYS:
        has_db[attributes.owner.take(attributes.find(key))] = True
    in_range = (http >= 100) & (http <= 599)
    return {
        "http_status_class": np.where(in_range, http // 100, 0).astype(np.int8),
        "rpc_grpc_status": np.where((grpc >= 0) & (grpc <= 1000), grpc, -1).astype(np.int16),
        "has_db": has_db,
    }


class _Attributes:
    """The span attributes (KeyValue messages) of a batch, looked up by key.

    Every encoder writes a KeyValue as ``key`` then ``value``; a key is found by comparing
    bytes in place among the attributes whose one-byte key length matches, and only matches
    are read further. Anything else (long keys, reordered, repeated or unknown fields) is read
    with :func:`walk`, once, for just those attributes.
    """

    def __init__(self, buf: U8, span: Fields, keys: Sequence[bytes]) -> None:
        rows = span.rows(ATTRIBUTES)
        self.buf = buf
        self.owner = span.owner.take(rows)
        self.data = span.data.take(rows)
        self.end = span.end.take(rows)
        key_len = buf.take(self.data + 1)
        canonical = (buf.take(self.data) == KV_KEY) & (key_len < 0x80)
        # Not canonical: key and value ranges from a general walk (usually none).
        self.other = np.flatnonzero(~canonical)
        self.other_key = self.other_value = (np.zeros(0, np.int64), np.zeros(0, np.int64))
        if self.other.size:
            key_len[self.other] = 0xFF  # not a one-byte length: kept off the fast path
            kv = walk(buf, self.data.take(self.other), self.end.take(self.other))
            self.other_key = _ranges(kv, KV_KEY, int(self.other.size))
            self.other_value = _ranges(kv, KV_VALUE, int(self.other.size))
        # One pass over all attributes keeps those whose key length is one of the wanted ones.
        wanted = np.zeros(256, dtype=np.bool_)
        wanted[[len(key) for key in keys if len(key) < 0x80]] = True
        self.candidates = np.flatnonzero(wanted.take(key_len))
        self.candidate_len = key_len.take(self.candidates)
        self.key_len = key_len

    def find(self, key: bytes) -> I64:
        """Indices of the attributes whose key is ``key`` (one of those given), ascending."""
        found = np.zeros(0, dtype=np.int64)
        if len(key) < 0x80:
            candidates = self.candidates[self.candidate_len == len(key)]
            start = self.data.take(candidates) + 2
            hit = (start + len(key) <= self.end.take(candidates)) & same_bytes(
                gather_fixed(self.buf, start, len(key)), key
            )
            found = candidates[hit]
        if self.other.size:
            start, end = self.other_key
            extra = self.other[equals(self.buf, start, end, key) & (start >= 0)]
            found = np.union1d(found, extra)
        return found

    def values(self, found: I64) -> tuple[I64, I64]:
        """Value (AnyValue) byte ranges of attributes ``found``; -1 where absent."""
        fast = self.key_len.take(found) != 0xFF  # the others come from the general walk
        key_end = self.data.take(found).astype(np.int64) + np.where(fast, 2 + self.key_len.take(found), 0)
        end = self.end.take(found).astype(np.int64)
        value_len = self.buf.take(key_end + 1).astype(np.int64)
        start = key_end + 2
        simple = (self.buf.take(key_end) == KV_VALUE) & (value_len < 0x80) & (start + value_len == end)
        start = np.where(simple, start, -1)
        stop = np.where(simple, end, -1)
        key_only = key_end == end
        hard = np.flatnonzero(~simple & ~key_only & fast)
        if hard.size:
            kv = walk(self.buf, self.data.take(found[hard]), self.end.take(found[hard]))
            start[hard], stop[hard] = _ranges(kv, KV_VALUE, int(hard.size))
        if self.other.size:
            slot = np.searchsorted(self.other, found)
            mine = (slot < self.other.size) & (
                self.other.take(np.minimum(slot, self.other.size - 1)) == found
            )
            start[mine] = self.other_value[0].take(slot[mine])
            stop[mine] = self.other_value[1].take(slot[mine])
        return start, stop

    def integer(self, key: bytes, n: int) -> I64:
        """Per span, the int (or decimal string) value of attribute ``key``; -1 when absent."""
        out = np.full(n, -1, dtype=np.int64)
        found = self.find(key)
        start, stop = self.values(found)
        present = start >= 0
        found, start, stop = found[present], start[present], stop[present]
        if found.size == 0:
            return out
        value = walk(self.buf, start, stop)
        number = _varint_or(self.buf, value, ANY_INT, int(found.size), -1)
        text = value.last(ANY_STRING, int(found.size))
        texts = np.flatnonzero((text >= 0) & (number < 0))
        if texts.size:
            number[texts] = _decimal(self.buf, value.data.take(text[texts]), value.end.take(text[texts]))
        # Keys are unique within a span by the specification; if not, the last one wins
        # (found is ascending, and np.maximum.at orders duplicates explicitly).
        last = np.full(n, -1, dtype=np.int64)
        np.maximum.at(last, self.owner.take(found), np.arange(found.size))
        spans = np.flatnonzero(last >= 0)
        out[spans] = number.take(last[spans])
        return out


def _ranges(fields_: Fields, field_tag: int, messages: int) -> tuple[I64, I64]:
    """Value range of each message's last ``field_tag`` field; -1 where absent."""
    row = fields_.last(field_tag, messages)
    have = row >= 0
    safe = np.maximum(row, 0)
    start = np.where(have, fields_.data.take(safe) if fields_.data.size else 0, -1)
    stop = np.where(have, fields_.end.take(safe) if fields_.end.size else 0, -1)
    return start.astype(np.int64), stop.astype(np.int64)


def _decimal(buf: U8, data: IntArray, end: IntArray, digits: int = 4) -> I64:
    """Non-negative decimal numbers of 1..``digits`` ASCII digits; -1 for anything else."""
    length = end - data
    window = gather_fixed(buf, data, digits).astype(np.int64) - ord("0")
    inside = np.arange(digits) < length[:, None]
    good = (length >= 1) & (length <= digits) & (((window >= 0) & (window <= 9)) | ~inside).all(axis=1)
    powers = 10 ** np.maximum(length[:, None] - 1 - np.arange(digits), 0)
    value = (np.where(inside, window, 0) * powers).sum(axis=1)
    return np.where(good, value, -1)


def _operations(
    buf: U8, span: Fields, layout: SpanLayout, interner: Interner
) -> tuple[NDArray[np.int32], NDArray[np.int32]]:
    """Service and operation ids; names are hashed so Python sees each distinct name once."""
    n = int(layout.start.size)
    resource_ids = np.array([interner.service(name) for name in layout.services], dtype=np.int64)
    service = resource_ids.take(layout.resource_service) if n else np.zeros(0, dtype=np.int64)
    row = span.last(NAME, n)
    name_start = np.where(row >= 0, span.data.take(np.maximum(row, 0)), 0).astype(np.int64)
    name_end = np.where(row >= 0, span.end.take(np.maximum(row, 0)), 0).astype(np.int64)
    name_hash = _name_hash(buf, name_start, name_end - name_start)
    return service.astype(np.int32), _intern_operations(
        buf, name_start, name_end, service, name_hash, interner
    )


def _intern_operations(
    buf: U8, name_start: I64, name_end: I64, service: I64, name_hash: NDArray[np.uint64], interner: Interner
) -> NDArray[np.int32]:
    """Operation ids; Python sees each distinct (service, name) once, in the order of their keys.

    Keys of short names (a 64-bit hash of service id and name bytes) are remembered by the
    interner, so a batch of known operations costs a lookup and no Python per name.
    """
    length = name_end - name_start
    key = _mix(name_hash + service.astype(np.uint64))
    long_names = length > MAX_SHORT_NAME
    operation_ids = interner.hashed_operations(key)
    operation_ids[long_names] = UNKNOWN
    missing = np.flatnonzero(operation_ids == UNKNOWN)
    if missing.size:
        _intern_missing(buf, name_start, name_end, service, key, operation_ids, missing, interner)
    return operation_ids


def _intern_missing(
    buf: U8,
    name_start: I64,
    name_end: I64,
    service: IntArray,
    key: NDArray[np.uint64],
    operation_ids: NDArray[np.int32],
    missing: I64,
    interner: Interner,
) -> None:
    """Fill ``operation_ids[missing]`` (not remembered under their ``key``, or long names) from the interner."""
    long_missing = (name_end.take(missing) - name_start.take(missing)) > MAX_SHORT_NAME
    key = key.take(missing)
    # Long names are rare; they are grouped by their exact bytes rather than a prefix hash.
    key[long_missing] = np.arange(int(long_missing.sum()), dtype=np.uint64) | np.uint64(1 << 63)
    unique, first_missing, inverse = np.unique(key, return_index=True, return_inverse=True)
    first = missing.take(first_missing)
    # Plain ints and a memoryview: numpy scalars and array slices cost microseconds per name.
    data, operation = buf.data, interner.operation
    owners, starts, ends = (
        service.take(first).tolist(),
        name_start.take(first).tolist(),
        name_end.take(first).tolist(),
    )
    names = zip(owners, starts, ends, strict=True)
    ids = np.fromiter(
        (operation(owner, str(data[a:b], "utf-8", "replace")) for owner, a, b in names),
        dtype=np.int32,
        count=int(unique.size),
    )
    short = ~long_missing.take(first_missing)
    interner.remember_hashed(unique[short], ids[short])
    operation_ids[missing] = ids.take(inverse.reshape(-1))


def _name_hash(buf: U8, start: I64, length: I64) -> NDArray[np.uint64]:
    """A 64-bit hash of each name's first :data:`MAX_SHORT_NAME` bytes and length."""
    width = -(-int(min(length.max(initial=0), MAX_SHORT_NAME)) // 8) * 8  # whole words
    window = gather_fixed(buf, start, width)
    window[np.arange(width) >= length[:, None]] = 0
    words = window.view("<u8") + _SALTS[: width // 8]
    return _mix(_mix(words).sum(axis=1, dtype=np.uint64) + length.astype(np.uint64))


def _mix(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """The splitmix64 finaliser (Steele, Lea and Flood 2014): every input bit moves every output bit.

    Summing mixed words makes a collision of two different names a 2^-64 event; summing raw
    words with random weights would not (differences confined to a word's top byte cancel
    with probability 2^-8).
    """
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    mixed: NDArray[np.uint64] = x ^ (x >> np.uint64(31))
    return mixed


def _links(trace_id: U8, span_id: U8, parent_span_id: U8) -> dict[str, Any]:
    """Parent row, root flag, depth and child count of each span within the batch."""
    n = int(trace_id.shape[0])
    is_root: Bool = np.logical_not(parent_span_id.any(axis=1))  # empty, or an invalid id (wrong size, zeros)
    trace_words = np.ascontiguousarray(trace_id).view("<u8")
    own_span = np.ascontiguousarray(span_id).view("<u8").reshape(-1)
    parent_span = np.ascontiguousarray(parent_span_id).view("<u8").reshape(-1)
    trace_key = trace_words[:, 0] ^ (trace_words[:, 1] * _ODD)
    own = trace_key ^ (own_span * _ODD2)
    wanted = trace_key ^ (parent_span * _ODD2)
    order = np.argsort(own, kind="stable")
    ordered = own.take(order)
    parent = np.full(n, -1, dtype=np.int64)
    # Keys only narrow the search; a candidate counts when its ids match byte for byte. Equal
    # keys from different spans (a hash collision, or one span sent twice) are tried in turn.
    pending = np.flatnonzero(~is_root)
    at = np.searchsorted(ordered, wanted.take(pending))
    while pending.size:
        inside = at < n
        pending, at = pending[inside], at[inside]
        same_key = ordered.take(at) == wanted.take(pending)
        pending, at = pending[same_key], at[same_key]
        candidate = order.take(at)
        match = (
            (trace_words[candidate] == trace_words[pending]).all(axis=1)
            & (own_span.take(candidate) == parent_span.take(pending))
            & (candidate != pending)
        )
        parent[pending[match]] = candidate[match]
        pending, at = pending[~match], at[~match] + 1
    found = parent >= 0
    return {
        "is_root": is_root,
        "parent_index": parent.astype(np.int32),
        "depth": _depth(parent, is_root),
        "child_count": np.bincount(parent[found], minlength=n).astype(np.int32),
    }


_ODD = np.uint64(0x9E3779B97F4A7C15)  # odd multipliers (golden ratio, splitmix64) to mix words
_ODD2 = np.uint64(0xBF58476D1CE4E5B9)


def _depth(parent: I64, is_root: Bool) -> NDArray[np.int16]:
    """Hops from each span to the top of its chain in the batch, by pointer jumping.

    Each round doubles how far every pointer reaches, so a chain of depth d takes log2(d)
    rounds of vector work. A chain whose top is not a root (an ancestor is missing from the
    batch), or that loops (only bad data does), gives -1.
    """
    n = int(parent.size)
    top = np.where(parent >= 0, parent, np.arange(n))
    hops = (parent >= 0).astype(np.int64)
    for _ in range(max(n, 1).bit_length() + 1):
        climbing = np.flatnonzero(parent.take(top) >= 0)
        if climbing.size == 0:
            break
        via = top.take(climbing)
        hops[climbing] += hops.take(via)  # both right-hand sides read the previous round
        top[climbing] = top.take(via)
    resolved = parent.take(top) < 0 if n else np.zeros(0, dtype=np.bool_)
    known = resolved & is_root.take(top)
    return np.where(known, np.minimum(hops, np.iinfo(np.int16).max), -1).astype(np.int16)
