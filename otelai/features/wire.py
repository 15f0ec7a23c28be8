"""Vectorised reading of the protobuf wire format with numpy.

Implements the binary encoding of https://protobuf.dev/programming-guides/encoding/ (tags,
varints, the I64/LEN/I32 wire types; groups are refused, as OTLP has none). Reading a message's
fields through the Python protobuf API costs about 0.1 us a field access and 2-6 us a span, which
would halve the hop's throughput; walking the serialised bytes of many messages side by side
costs a few numpy operations per *field position* for all messages at once.

:func:`walk` reads the fields of many messages in lockstep: step ``k`` decodes the ``k``-th
field of every message that still has one. The common case (a one-byte tag and a length or
varint under 128) takes about a dozen numpy operations a step; longer varints, tags of field 16
and up, and anything unusual take a general path on just those messages.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

I32 = NDArray[np.int32]
I64 = NDArray[np.int64]
IntArray = NDArray[np.int32] | NDArray[np.int64]
U8 = NDArray[np.uint8]
U64 = NDArray[np.uint64]

VARINT, FIXED64, LEN, FIXED32 = 0, 1, 2, 5
MAX_VARINT_BYTES = 10
# Zero bytes after the data: the fast path may read a byte or two past a message's end (then
# rejects what it read), a truncated varint stops on a zero instead of an IndexError, and a
# fixed-width window of up to PAD bytes fits from any position of the data.
PAD = 64


class WireError(ValueError):
    """The bytes are not a well-formed protobuf message."""


def tag(field: int, wire_type: int) -> int:
    """The tag of ``field`` with ``wire_type``, as it is encoded before the field's value."""
    return (field << 3) | wire_type


def as_buffer(chunks: list[bytes]) -> U8:
    """The concatenation of ``chunks`` as a read-only uint8 array, followed by :data:`PAD` zeros."""
    return np.frombuffer(b"".join([*chunks, bytes(PAD)]), dtype=np.uint8)


def read_varint(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """One varint at ``pos`` of ``data``: its value and the position after it (scalar path)."""
    if pos < len(data) and data[pos] < 0x80:  # most varints are one byte
        return data[pos], pos + 1
    result = shift = 0
    for index in range(pos, min(pos + MAX_VARINT_BYTES, len(data))):
        byte = data[index]
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, index + 1
        shift += 7
    raise WireError(f"truncated or overlong varint at {pos}")


def read_varints(buf: U8, pos: IntArray) -> tuple[U64, I64]:
    """The varints starting at ``pos`` in ``buf``: their values and the positions after them."""
    pos = pos.astype(np.int64, copy=False)
    first = buf.take(pos)
    values = first.astype(np.uint64)
    longer = np.flatnonzero(first >= 0x80)
    if longer.size == 0:
        return values, pos + 1
    size = np.ones(pos.size, dtype=np.int64)
    values[longer] &= np.uint64(0x7F)
    for index in range(1, MAX_VARINT_BYTES):
        byte = buf.take(pos[longer] + index)
        values[longer] |= (byte & 0x7F).astype(np.uint64) << np.uint64(7 * index)
        size[longer] = index + 1
        longer = longer[byte >= 0x80]
        if longer.size == 0:
            return values, pos + size
    raise WireError("varint longer than 10 bytes")


@dataclass(frozen=True, slots=True)
class Fields:
    """Every field of a set of messages, one row a field.

    ``owner`` is the index of the message (in the ``starts`` given to :func:`walk`), ``tag``
    the field's tag (0 for tags of 256 and up, fields 32+, which no caller asks for), ``data``
    where the value starts (after the length prefix for LEN fields) and ``end`` where it ends.
    Rows are in step order: a message's fields appear in their order in the message, so its
    last occurrence of a singular field (the one protobuf keeps) is its last row.

    Positions are int32 (a batch is far below 2 GiB): the arrays are a few hundred kilobytes,
    and at int64 the concatenation alone cost more than the whole walk on this machine.
    """

    owner: I32
    tag: U8
    data: I32
    end: I32

    def rows(self, field_tag: int) -> I64:
        """Row indices of the fields with ``field_tag``, in step order."""
        return np.flatnonzero(self.tag == field_tag)

    def count(self, field_tag: int, messages: int) -> I64:
        """How many times each of ``messages`` messages has a field with ``field_tag``."""
        return np.bincount(self.owner.take(self.rows(field_tag)), minlength=messages)

    def last(self, field_tag: int, messages: int) -> I64:
        """For each message, the row of its last field with ``field_tag``, or -1."""
        rows = self.rows(field_tag)
        out = np.full(messages, -1, dtype=np.int64)
        # Ascending rows: a message's later field overwrites its earlier one. np.maximum.at
        # makes "last wins" explicit, as plain fancy assignment leaves duplicates unordered.
        np.maximum.at(out, self.owner.take(rows), rows)
        return out


def walk(buf: U8, starts: IntArray, ends: IntArray) -> Fields:
    """All fields of the messages occupying ``buf[starts[i]:ends[i]]``.

    Raises :class:`WireError` when a message is malformed: a field runs past the message's
    end, a varint is longer than ten bytes, a field number is 0 or a wire type is a group or
    unknown.
    """
    if buf.size >= 2**31 - PAD:
        raise WireError("buffer too large for int32 positions")
    owner = np.arange(starts.size, dtype=np.int32)
    pos, limit = starts.astype(np.int32), ends.astype(np.int32)
    live = pos < limit
    if not live.all():
        owner, pos, limit = owner[live], pos[live], limit[live]
    steps: list[tuple[I32, U8, I32, I32]] = []
    while pos.size:
        field_tag, data, end = _step(buf, pos)
        if (end > limit).any():
            raise WireError("a field runs past the end of its message")
        code = np.where(field_tag < 256, field_tag, 0).astype(np.uint8)
        steps.append((owner, code, data, end))
        more = end < limit
        if more.all():
            pos = end
        else:
            owner, pos, limit = owner[more], end[more], limit[more]
    if not steps:
        return Fields(_EMPTY_I32, np.zeros(0, dtype=np.uint8), _EMPTY_I32, _EMPTY_I32)
    owners, tags, datas, ends_ = zip(*steps, strict=True)
    return Fields(np.concatenate(owners), np.concatenate(tags), np.concatenate(datas), np.concatenate(ends_))


def _tables() -> tuple[I32, I32, NDArray[np.bool_]]:
    """Lookup tables over a field's first byte, for one-byte tags (fields 1..15)."""
    base = np.zeros(256, dtype=np.int32)  # end - pos when the length or varint is one byte
    is_len = np.zeros(256, dtype=np.int32)
    slow = np.ones(256, dtype=np.bool_)  # tag needs the general path
    for byte in range(8, 128):  # field 0 is invalid
        wire_type = byte & 7
        if wire_type == LEN:
            base[byte], is_len[byte], slow[byte] = 2, 1, False
        elif wire_type == VARINT:
            base[byte], slow[byte] = 2, False
        elif wire_type == FIXED64:
            base[byte], slow[byte] = 9, False
        elif wire_type == FIXED32:
            base[byte], slow[byte] = 5, False
    return base, is_len, slow


_BASE, _IS_LEN, _SLOW_TAG = _tables()
_NEEDS_SECOND_BYTE = _IS_LEN.astype(np.bool_) | (np.arange(256) & 7 == VARINT)
_EMPTY_I32 = np.zeros(0, dtype=np.int32)


def _step(buf: U8, pos: I32) -> tuple[I64, I32, I32]:
    """Tag, value start and value end of the field at each of ``pos``."""
    first = buf.take(pos)
    second = buf.take(pos + 1)
    is_len = _IS_LEN.take(first)
    data = pos + 1 + is_len
    end = pos + _BASE.take(first) + is_len * second
    slow = _SLOW_TAG.take(first) | ((second >= 0x80) & _NEEDS_SECOND_BYTE.take(first))
    field_tag = first.astype(np.int64)
    if slow.any():
        rows = np.flatnonzero(slow)
        field_tag[rows], data[rows], end[rows] = _general(buf, pos.take(rows))
    return field_tag, data, end


def _general(buf: U8, pos: I32) -> tuple[I64, I64, I64]:
    """:func:`_step` for any field: multi-byte tags and varints, checked wire types."""
    raw_tag, after = read_varints(buf, pos.astype(np.int64))
    if (raw_tag >> np.uint64(3) == 0).any() or (raw_tag > np.uint64(0xFFFFFFFF)).any():
        raise WireError("field number out of range")
    field_tag = raw_tag.astype(np.int64)
    wire_type = field_tag & 7
    data, end = after.copy(), np.empty_like(after)
    for kind in np.unique(wire_type).tolist():
        rows = np.flatnonzero(wire_type == kind)
        at = after.take(rows)
        if kind == VARINT:
            end[rows] = read_varints(buf, at)[1]
        elif kind == FIXED64:
            end[rows] = at + 8
        elif kind == FIXED32:
            end[rows] = at + 4
        elif kind == LEN:
            length, start = read_varints(buf, at)
            if (length > np.uint64(buf.size)).any():
                raise WireError("length prefix larger than the data")
            data[rows] = start
            end[rows] = start + length.astype(np.int64)
        else:
            raise WireError(f"unsupported wire type {kind}")
    if (end > buf.size).any():
        raise WireError("a field runs past the end of the data")
    return field_tag, data, end


def fixed64(buf: U8, data: IntArray) -> U64:
    """The little-endian 64-bit values starting at ``data``."""
    return gather_fixed(buf, data, 8).view("<u8").reshape(-1).astype(np.uint64)


def gather_fixed(buf: U8, data: IntArray, width: int) -> U8:
    """``width`` bytes from each of ``data``, as a C-contiguous ``(n, width)`` array.

    Indexes rows of a sliding-window view of ``buf``, which copies each row in one go; ``take``
    with an (n, width) index array was four times slower. ``width`` may not exceed :data:`PAD` past
    the last byte of real data.
    """
    # The view built directly: sliding_window_view's checks cost 40 us a call, more than the copy.
    windows = np.ndarray(shape=(buf.size - width + 1, width), dtype=np.uint8, buffer=buf, strides=(1, 1))
    rows: U8 = windows[data]
    return rows


def equals(buf: U8, data: IntArray, end: IntArray, value: bytes) -> NDArray[np.bool_]:
    """Whether each byte range ``[data, end)`` equals ``value``."""
    result: NDArray[np.bool_] = (end - data) == len(value)
    rows = np.flatnonzero(result)
    if rows.size and value:
        result[rows] = same_bytes(gather_fixed(buf, data.take(rows), len(value)), value)
    return result


def same_bytes(rows: U8, value: bytes) -> NDArray[np.bool_]:
    """Whether each row of an ``(n, len(value))`` uint8 array equals ``value``."""
    if value.endswith(b"\0"):  # fixed-width bytes comparison ignores trailing NULs
        same: NDArray[np.bool_] = (rows == np.frombuffer(value, dtype=np.uint8)).all(axis=1)
        return same
    as_strings = np.ascontiguousarray(rows).view(f"S{len(value)}").reshape(-1)
    equal: NDArray[np.bool_] = as_strings == value
    return equal
