"""Compiled validator of serialised OTLP trace and log requests (numba), so the receiver can skip upb.

The receiver must refuse a malformed ``ExportTraceServiceRequest`` (400 / ``INVALID_ARGUMENT``)
and count its spans and resources, but forwards the bytes it received, not a parsed message.
Parsing with upb only to learn those three things costs about 1 us a span, some 15% of the
hop's CPU. :func:`check` walks the protobuf binary encoding
(https://protobuf.dev/programming-guides/encoding/) once, without building anything, and
answers either the counts or "not sure". ``ExportLogsServiceRequest`` is checked the same way
(same kernel, another field table); metrics are left to upb.

Contract (soundness against upb): whenever :func:`check` returns counts, upb
(``request_type.FromString``) accepts the same bytes, and the counts equal
``count_items(signal, request)`` and the number of resources (``len(request.resource_spans)``
for traces). Whenever it is not certain it returns None (NOT_SURE) and the caller parses with
upb, which decides. So this validator may be stricter than upb, never more lenient. NOT_SURE
answers, each accepted or refused by upb as noted (found by experiment with protobuf 6.33,
upb backend; pinned in ``tests/unit/receiver/test_wire_check.py``):

- any truncation or overrun: a length past its message's end, a varint over ten bytes, a tag
  over five bytes or 32 bits, field number 0 (upb refuses);
- invalid UTF-8 in a ``string`` field, strict RFC 3629: overlong forms, surrogates, code points
  past U+10FFFF (upb refuses; it does not look inside ``bytes`` or unknown fields);
- a known field with another wire type than its type's (upb keeps it as an unknown field and
  accepts);
- groups and wire types 3 and 4 anywhere, 6 and 7 (upb accepts well-nested unknown groups);
- lengths over 2**31 - 1 (upb refuses) or encoded in more than five bytes;
- message nesting deeper than :data:`MAX_DEPTH` below the request (upb refuses past 100;
  nested ``array_value`` and ``kvlist_value`` are the only unbounded nesting in OTLP);
- a packed repeated scalar field, a message with required fields or extension ranges (none in
  OTLP; see :func:`field_table`).

Unknown fields of wire types 0, 1, 2 and 5 are skipped when well formed, as upb accepts them.
A varint's tenth byte may carry bits past 64: upb ignores them, and so does this.

The field list comes from the installed ``opentelemetry-proto`` descriptors (:func:`field_table`),
not from a hand-written copy, so fields a newer version adds (entity refs, string-table
indexes) are validated too; the table is an argument of the kernel, never a compiled-in
constant, so numba's on-disk cache cannot keep a stale one.

Importing this module imports numba; :func:`warm_up` compiles the kernel or loads it from
numba's on-disk cache (``__pycache__`` beside this file, else the user cache directory).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, cast

import numba
import numpy as np
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from numpy.typing import NDArray
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelai.features.pointers import data as _data
from otelai.features.pointers import word as _word
from otelai.kernels import cached_jit
from otelai.signals import Signal

F = TypeVar("F", bound=Callable[..., Any])

OK, NOT_SURE = 0, 1  # kernel status
# Message nesting below the request that the validator follows: the deepest fixed path (request,
# ResourceSpans, ScopeSpans, Span, Event, KeyValue, AnyValue) is 6, each nested array or kvlist
# adds 2 (logs: 5 to a LogRecord's body or attribute values). upb refuses past 100; anything past this is rare enough to leave to it.
MAX_DEPTH = 32
MAX_LENGTH = 2**31 - 1  # upb refuses longer length prefixes

# A field's entry in the table: expected wire type (bits 0-2), kind (3-5), counter (6-7), and
# for a message its message index (8 on). An entry of 0 is an unknown field (any wire type).
UNKNOWN, SCALAR, STRING, MESSAGE, REFUSE = 0, 1, 2, 3, 4
COUNT_NONE, COUNT_RESOURCE, COUNT_ITEM = 0, 1, 2
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_WIRE_TYPES = {
    **dict.fromkeys(
        (
            FieldDescriptor.TYPE_INT32,
            FieldDescriptor.TYPE_INT64,
            FieldDescriptor.TYPE_UINT32,
            FieldDescriptor.TYPE_UINT64,
            FieldDescriptor.TYPE_SINT32,
            FieldDescriptor.TYPE_SINT64,
            FieldDescriptor.TYPE_BOOL,
            FieldDescriptor.TYPE_ENUM,
        ),
        _VARINT,
    ),
    **dict.fromkeys(
        (FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_DOUBLE), _I64
    ),
    **dict.fromkeys(
        (FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_SFIXED32, FieldDescriptor.TYPE_FLOAT), _I32
    ),
    FieldDescriptor.TYPE_BYTES: _LEN,
    FieldDescriptor.TYPE_STRING: _LEN,
    FieldDescriptor.TYPE_MESSAGE: _LEN,
}
MAX_FIELD_NUMBER = 4096  # a table column per field number up to the largest known one


class Counts(NamedTuple):
    """What the receiver needs of a request it does not parse: ``count_items`` and resources."""

    items: int
    resources: int


# The counted path of each signal checked here: the resource field of the request, the scope
# field of a resource, the item field of a scope (what signals.count_items counts). Metrics
# count data points inside a oneof of Metric: left to upb.
PATHS = {
    Signal.TRACES: (ExportTraceServiceRequest.DESCRIPTOR, ("resource_spans", "scope_spans", "spans")),
    Signal.LOGS: (ExportLogsServiceRequest.DESCRIPTOR, ("resource_logs", "scope_logs", "log_records")),
}


def _entry(wire_type: int, kind: int, counter: int = COUNT_NONE, child: int = 0) -> int:
    return wire_type | (kind << 3) | (counter << 6) | (child << 8)


def _unsupported(message: Descriptor) -> bool:
    """Messages upb treats in ways this validator does not model: entering one is NOT_SURE."""
    required = any(field.is_required for field in message.fields)
    return required or bool(message.extension_ranges)


def message_types(root: Descriptor) -> list[Descriptor]:
    """``root`` and every message type reachable from it, breadth first: the table's rows."""
    messages, seen = [root], {root.full_name}
    for message in messages:  # grows while iterating
        for field in message.fields:
            child = field.message_type
            if child is not None and child.full_name not in seen:
                seen.add(child.full_name)
                messages.append(child)
    return messages


def field_table(signal: Signal) -> NDArray[np.int32]:
    """The kernel's table for ``signal``, ``table[message, field number]``, from the descriptors.

    Rows follow :func:`message_types` of the request type. Counted: the resource field of the
    request (resources) and the item field of its scopes (items), see :data:`PATHS`. Strings
    are always UTF-8 checked (upb checks every proto3 string; checking a proto2 one too is only
    stricter). Repeated scalars accept only their unpacked wire type, so a packed one is
    NOT_SURE.

    Raises
    ------
    ValueError
        When the request type itself is unsupported, a field number is past
        :data:`MAX_FIELD_NUMBER`, or the counted fields could be reached another way: the
        caller then keeps upb for everything.
    """
    root, path = PATHS[signal]
    if _unsupported(root):
        raise ValueError(f"{root.full_name} has required fields or extensions")
    messages = message_types(root)
    index = {message.full_name: row for row, message in enumerate(messages)}
    width = max((field.number for message in messages for field in message.fields), default=0) + 1
    if width > MAX_FIELD_NUMBER:
        raise ValueError(f"field number {width - 1} past {MAX_FIELD_NUMBER}")
    counters = _counters(root, path, messages)
    table = np.zeros((len(messages), width), dtype=np.int32)
    for row, message in enumerate(messages):
        for field in message.fields:
            table[row, field.number] = _field_entry(field, index, counters.get(field.full_name, COUNT_NONE))
    return table


def _counters(root: Descriptor, path: tuple[str, str, str], messages: list[Descriptor]) -> dict[str, int]:
    """The counted fields by full name: the request's resource field, its scopes' item field.

    Counting every occurrence of a counted field is ``count_items`` only when the request,
    resource and scope types are each reached one way, through the path counted; this checks
    it.
    """
    resource_field = root.fields_by_name[path[0]]
    resource_type = _message_type(resource_field)
    scope_type = _message_type(resource_type.fields_by_name[path[1]])
    item_field = scope_type.fields_by_name[path[2]]
    _message_type(item_field)
    references = {root.full_name: 0, resource_type.full_name: 0, scope_type.full_name: 0}
    for message in messages:
        for field in message.fields:
            if field.message_type is not None and field.message_type.full_name in references:
                references[field.message_type.full_name] += 1
    if list(references.values()) != [0, 1, 1]:
        raise ValueError(f"items or resources reachable in more than one way: {references}")
    return {resource_field.full_name: COUNT_RESOURCE, item_field.full_name: COUNT_ITEM}


def key_value_row(signal: Signal, table: NDArray[np.int32]) -> int:
    """The row of ``common.v1.KeyValue`` in ``table`` when the kernel's attribute shortcut fits it, else -1.

    The shortcut hard-codes the tags of ``KeyValue.key`` (1, string) and ``value`` (2, an
    AnyValue) and of ``AnyValue`` ``string_value`` (1), ``bool_value`` (2), ``int_value``
    (3, varint) and ``double_value`` (4, fixed 64); this checks them against the descriptors.
    """
    rows = {message.full_name: row for row, message in enumerate(message_types(PATHS[signal][0]))}
    key_value = rows.get("opentelemetry.proto.common.v1.KeyValue", -1)
    any_value = rows.get("opentelemetry.proto.common.v1.AnyValue", -1)
    if key_value < 0 or any_value < 0 or table.shape[1] <= 4:
        return -1
    expected = [
        (key_value, 1, _entry(_LEN, STRING)),
        (key_value, 2, _entry(_LEN, MESSAGE, COUNT_NONE, any_value)),
        (any_value, 1, _entry(_LEN, STRING)),
        (any_value, 2, _entry(_VARINT, SCALAR)),
        (any_value, 3, _entry(_VARINT, SCALAR)),
        (any_value, 4, _entry(_I64, SCALAR)),
    ]
    return key_value if all(table[row, number] == entry for row, number, entry in expected) else -1


def _message_type(field: FieldDescriptor) -> Descriptor:
    if field.message_type is None:
        raise ValueError(f"{field.full_name} is not a message field")
    return field.message_type


def _field_entry(field: FieldDescriptor, index: dict[str, int], counter: int) -> int:
    if field.type == FieldDescriptor.TYPE_GROUP:
        return _entry(_LEN, REFUSE)  # and a group's wire type is 3 or 4: never matches
    wire_type = _WIRE_TYPES[field.type]
    if field.type == FieldDescriptor.TYPE_STRING:
        return _entry(wire_type, STRING)
    child = field.message_type
    if child is None:
        return _entry(wire_type, SCALAR)
    if _unsupported(child):
        return _entry(wire_type, REFUSE)
    return _entry(wire_type, MESSAGE, counter, index[child.full_name])


def _inline(func: F) -> F:
    """A helper compiled into its callers (numba IR inlining), for what runs per field.

    Inlined, the checks of a field share the caller's registers and branch history; rare
    paths (long varints, non-ASCII strings) stay calls. Inlining is slow to compile, which
    numba's on-disk cache pays once.
    """
    return cast(F, numba.njit(inline="always")(func))


_jit = cached_jit("the wire check")


_HIGH_BITS = np.uint64(0x8080808080808080)
_U64_7F = np.uint64(0x7F)
_U32_MAX = np.uint64(0xFFFFFFFF)
# For a string of k < 8 bytes, its bytes in the word at its start (low k bytes) and in the
# word ending at its end (high k bytes); k = 8 keeps whole words.
_LOW_MASKS = np.array([(1 << (8 * k)) - 1 for k in range(9)], dtype=np.uint64)
_HIGH_MASKS = np.array([(2**64 - 1) ^ ((1 << (8 * (8 - k))) - 1) for k in range(9)], dtype=np.uint64)


@_jit
def _utf8_strict(data: Any, start: int, stop: int) -> bool:
    """Whether ``data[start:stop]`` is well-formed UTF-8 (Unicode 15, table 3-7), byte by byte.

    The rare path: only strings with a byte over 0x7F come here.
    """
    i = start
    while i < stop:
        lead = data[i]
        if lead < 0x80:
            i += 1
            continue
        if 0xC2 <= lead <= 0xDF:
            size, low, high = 2, 0x80, 0xBF
        elif lead == 0xE0:
            size, low, high = 3, 0xA0, 0xBF  # no overlong forms
        elif 0xE1 <= lead <= 0xEC or 0xEE <= lead <= 0xEF:
            size, low, high = 3, 0x80, 0xBF
        elif lead == 0xED:
            size, low, high = 3, 0x80, 0x9F  # no surrogates
        elif lead == 0xF0:
            size, low, high = 4, 0x90, 0xBF  # no overlong forms
        elif 0xF1 <= lead <= 0xF3:
            size, low, high = 4, 0x80, 0xBF
        elif lead == 0xF4:
            size, low, high = 4, 0x80, 0x8F  # nothing past U+10FFFF
        else:
            return False
        if i + size > stop:
            return False
        second = data[i + 1]
        if second < low or second > high:
            return False
        for k in range(2, size):
            if data[i + k] < 0x80 or data[i + k] > 0xBF:
                return False
        i += size
    return True


@_jit
def _long_varint(data: Any, pos: int, limit: int) -> tuple[Any, int]:
    """The varint at ``pos`` read up to ``limit``: value (uint64), position after it, -1 when malformed.

    Ten bytes at most; bits past 64 in the tenth byte are dropped, as upb does.
    """
    value = np.uint64(0)
    for i in range(10):
        if pos + i >= limit:
            return value, -1
        byte = np.uint64(data[pos + i])
        value |= (byte & _U64_7F) << np.uint64(7 * i)
        if byte < 0x80:
            return value, pos + i + 1
    return value, -1


@_inline
def _skip_varint(data: Any, pos: int, end: int) -> int:
    """The position after the varint at ``pos`` (ten bytes at most, before ``end``); -1 when malformed."""
    if pos < end and data[pos] < 0x80:
        return pos + 1
    return _long_varint(data, pos, end)[1]


@_inline
def _valid_string(data: Any, size: int, start: int, stop: int) -> bool:
    """Whether ``data[start:stop]`` is well-formed UTF-8; eight bytes at a time while ASCII.

    Reads whole words only inside the buffer (``size`` bytes, no padding assumed). Up to 16
    bytes (most keys and values) it is two words, the one at the start and the one ending at
    the end, masked to the string's bytes; past that a loop, whose last word overlaps the one
    before. Non-ASCII strings take the byte-by-byte check.
    """
    length = stop - start
    if length <= 16 and start + 8 <= size and stop >= 8:
        short = min(length, 8)
        bits = (_word(data, start) & _LOW_MASKS[short]) | (_word(data, stop - 8) & _HIGH_MASKS[short])
        return not (bits & _HIGH_BITS) or _utf8_strict(data, start, stop)
    if length < 8:  # within eight bytes of either end of the buffer
        for at in range(start, stop):
            if data[at] >= 0x80:
                return _utf8_strict(data, start, stop)
        return True
    bits = _word(data, stop - 8)
    for at in range(start, stop - 8, 8):
        bits |= _word(data, at)
    return not (bits & _HIGH_BITS) or _utf8_strict(data, start, stop)


@_inline
def _key_value(data: Any, size: int, start: int, stop: int) -> int:
    """A KeyValue of the layout every encoder writes, checked straight through.

    ``key`` (field 1) with a one-byte length, then ``value`` (field 2, an AnyValue) with a
    one-byte length holding nothing or one string (one-byte length), bool, int or double.
    Returns 1 when ``data[start:stop]`` is such a KeyValue and valid, 0 when it is not of this
    layout (the caller walks it field by field), -1 when it is but a string is not UTF-8.
    Straight-line code for the most frequent message: the generic loop costs a few branch
    mispredictions a field.
    """
    if stop - start < 4 or data[start] != 0x0A or data[start + 1] >= 0x80:
        return 0
    key_end = start + 2 + int(data[start + 1])
    if key_end + 2 > stop or data[key_end] != 0x12 or key_end + 2 + int(data[key_end + 1]) != stop:
        return 0
    value = key_end + 2
    if value < stop:
        value_tag = data[value]
        if value_tag == 0x0A:  # string_value
            if value + 2 > stop or value + 2 + int(data[value + 1]) != stop:
                return 0
            if not _valid_string(data, size, value + 2, stop):
                return -1
        elif value_tag == 0x18 or value_tag == 0x10:  # int_value, bool_value
            if _skip_varint(data, value + 1, stop) != stop:
                return 0
        elif value_tag == 0x21:  # double_value
            if value + 9 != stop:
                return 0
        else:
            return 0
    return 1 if _valid_string(data, size, start + 2, key_end) else -1


@_jit
def _check(buf: Any, table: Any, key_value: int) -> tuple[int, int, int]:
    """(status, items, resources) of the request ``buf``; see the module docstring.

    One loop over the fields of every message, an explicit stack for the nesting. The common
    cases (one-byte tags, short lengths and varints, ASCII strings checked eight bytes at a
    time, attributes of one scalar value) stay in this function; long tags, lengths and
    varints and non-ASCII strings are calls. ``key_value`` is the KeyValue message's row in
    ``table`` (-1: no attribute shortcut).
    """
    data, size = _data(buf), buf.size
    cells, width = _data(table), table.shape[1]
    stack_message = np.empty(MAX_DEPTH, dtype=np.int64)
    stack_end = np.empty(MAX_DEPTH, dtype=np.int64)
    depth, message, end, pos = 0, 0, size, 0
    items, resources = 0, 0
    while True:
        if pos >= end:
            if depth == 0:
                return OK, items, resources
            depth -= 1
            message, end = stack_message[depth], stack_end[depth]
            continue
        tag = int(data[pos])
        if tag < 0x80:
            pos += 1
        else:
            raw, pos = _long_varint(data, pos, min(end, pos + 5))
            if pos < 0 or raw > _U32_MAX:
                return NOT_SURE, 0, 0
            tag = int(np.int64(raw))
        field = tag >> 3
        wire_type = tag & 7
        if field == 0:
            return NOT_SURE, 0, 0
        entry = int(cells[message * width + field]) if field < width else 0
        kind = (entry >> 3) & 7
        if kind != UNKNOWN and wire_type != entry & 7:
            return NOT_SURE, 0, 0  # upb keeps it as an unknown field: left to upb
        if wire_type == _LEN and kind != REFUSE:
            if pos < end and data[pos] < 0x80:
                length = int(data[pos])
                pos += 1
            elif pos + 1 < end and data[pos + 1] < 0x80:
                length = (int(data[pos]) & 0x7F) | (int(data[pos + 1]) << 7)
                pos += 2
            else:
                raw, pos = _long_varint(data, pos, min(end, pos + 5))
                if pos < 0 or raw > np.uint64(MAX_LENGTH):
                    return NOT_SURE, 0, 0
                length = int(np.int64(raw))
            stop = pos + length
            if stop > end:
                return NOT_SURE, 0, 0
            if kind == MESSAGE:
                child = entry >> 8
                if child == key_value:
                    shortcut = _key_value(data, size, pos, stop)
                    if shortcut < 0:
                        return NOT_SURE, 0, 0
                    if shortcut > 0:
                        pos = stop
                        # A run of attributes: the same one-byte tag, one-byte lengths. A loop
                        # of its own predicts far better than a trip through the one above.
                        while tag < 0x80 and pos + 1 < end and data[pos] == tag and data[pos + 1] < 0x80:
                            stop = pos + 2 + int(data[pos + 1])
                            if stop > end:
                                break
                            shortcut = _key_value(data, size, pos + 2, stop)
                            if shortcut < 0:
                                return NOT_SURE, 0, 0
                            if shortcut == 0:
                                break
                            pos = stop
                        continue
                if depth == MAX_DEPTH:
                    return NOT_SURE, 0, 0
                counter = (entry >> 6) & 3
                if counter == COUNT_ITEM:
                    items += 1
                elif counter == COUNT_RESOURCE:
                    resources += 1
                stack_message[depth], stack_end[depth] = message, end
                depth += 1
                message, end = child, stop
                continue
            if kind == STRING and not _valid_string(data, size, pos, stop):
                return NOT_SURE, 0, 0
            pos = stop
        elif wire_type == _VARINT:
            pos = _skip_varint(data, pos, end)
            if pos < 0:
                return NOT_SURE, 0, 0
        elif wire_type == _I64:
            pos += 8
            if pos > end:
                return NOT_SURE, 0, 0
        elif wire_type == _I32:
            pos += 4
            if pos > end:
                return NOT_SURE, 0, 0
        else:  # groups, wire types 6 and 7, a refused message
            return NOT_SURE, 0, 0


def check(data: bytes | bytearray | memoryview, signal: Signal = Signal.TRACES) -> Counts | None:
    """The item and resource counts of the serialised ``Export*ServiceRequest`` ``data``.

    ``signal`` is one of :data:`PATHS` (traces, logs). None means NOT_SURE: parse ``data``
    with upb, which accepts or refuses it. Counts mean upb would accept ``data`` and count
    the same (see the module docstring).
    """
    table, key_value = _SCHEMAS[signal]
    buf = np.frombuffer(data, dtype=np.uint8)  # no copy: the kernel never reads past the end
    buf.flags.writeable = False  # one compiled signature, whatever the buffer's owner
    status, items, resources = _check(buf, table, key_value)
    if status != OK:
        return None
    return Counts(int(items), int(resources))


def warm_up() -> None:
    """Compile (or load from the cache) the kernel for the argument types :func:`check` gets."""
    check(b"")


def _schema(signal: Signal) -> tuple[NDArray[np.int32], int]:
    table = field_table(signal)
    table.setflags(write=False)
    return table, key_value_row(signal, table)


_SCHEMAS = {signal: _schema(signal) for signal in PATHS}
