"""Writing otelai's tags onto forwarded spans and log records, in protobuf wire format.

Protobuf messages may be extended by appending fields (the encoding guide, "Last One Wins"
and repeated-field concatenation): appending ``KeyValue`` entries to a span's bytes adds
attributes, and appending a ``trace_state`` field replaces the old value. So a kept span is
forwarded as its original bytes plus a short suffix, never decoded and re-encoded.

Tag names are public interface (DESIGN.md): ``otelai.anomaly.score``, ``.severity``,
``.reason``, ``otelai.model.version``, ``otelai.selection.reason``.
"""

from __future__ import annotations

import struct
from functools import lru_cache

from otelai.features.otlp_layout import SkeletonRequest, parse_skeleton

SCORE = "otelai.anomaly.score"
SEVERITY = "otelai.anomaly.severity"
REASON = "otelai.anomaly.reason"
MODEL_VERSION = "otelai.model.version"
SELECTION_REASON = "otelai.selection.reason"

# Field numbers (opentelemetry-proto trace.proto, logs.proto, common.proto).
SPAN_TRACE_STATE = 3
SPAN_ATTRIBUTES = 9
LOG_RECORD_ATTRIBUTES = 6
CONTAINER_FIRST = 1  # resource in Resource*, scope in Scope*
CONTAINER_ITEMS = 2  # scope_* in Resource*, spans / log_records in Scope*
CONTAINER_SCHEMA_URL = 3
REQUEST_ITEMS = 1  # resource_spans / resource_logs / resource_metrics

_LEN = 2
_I64 = 1


def varint(value: int) -> bytes:
    """Base-128 varint of a non-negative integer."""
    if value < 0x80:
        return _SMALL[value]
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


_SMALL = tuple(bytes([i]) for i in range(0x80))


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, bytes."""
    return varint(number << 3 | _LEN) + varint(len(payload)) + payload


@lru_cache(maxsize=4096)
def string_attribute(key: str, value: str) -> bytes:
    """``KeyValue{key, AnyValue{string_value}}`` (cached: tag values repeat)."""
    return field(1, key.encode()) + field(2, field(1, value.encode()))


def double_attribute(key: str, value: float) -> bytes:
    any_value = varint(4 << 3 | _I64) + struct.pack("<d", value)
    return field(1, key.encode()) + field(2, any_value)


def attributes(number: int, entries: list[bytes]) -> bytes:
    """Each ``KeyValue`` as one repeated ``attributes`` field of the enclosing message."""
    return b"".join(field(number, entry) for entry in entries)


@lru_cache(maxsize=1024)
def _constant_tags(
    number: int, severity: str | None, model_version: str | None, selection_reason: str
) -> bytes:
    entries = [] if severity is None else [string_attribute(SEVERITY, severity)]
    if model_version is not None:
        entries.append(string_attribute(MODEL_VERSION, model_version))
    entries.append(string_attribute(SELECTION_REASON, selection_reason))
    return attributes(number, entries)


@lru_cache(maxsize=16)
def _score_prefix(number: int) -> bytes:
    # Everything of the score attribute but its 8 value bytes: the length never changes.
    whole = field(number, double_attribute(SCORE, 0.0))
    return whole[:-8]


def tag_suffix(
    number: int,
    *,
    score: float | None,
    severity: str | None,
    reason: str | None,
    model_version: str | None,
    selection_reason: str,
) -> bytes:
    """The attribute fields to append to a span (``number=9``) or log record (``number=6``)."""
    suffix = _constant_tags(number, severity, model_version, selection_reason)
    if reason:
        suffix = field(number, string_attribute(REASON, reason)) + suffix
    if score is not None:
        suffix = _score_prefix(number) + _DOUBLE.pack(score) + suffix
    return suffix


_DOUBLE = struct.Struct("<d")


@lru_cache(maxsize=4096)
def trace_state_field(trace_state: str) -> bytes:
    """A ``trace_state`` field; appended last, it replaces the span's earlier value."""
    return field(SPAN_TRACE_STATE, trace_state.encode())


def tag_every_item(data: bytes, suffix: bytes) -> bytes:
    """``data`` (an OTLP trace or logs export request) with ``suffix`` appended to every span
    or log record, each item's bytes otherwise untouched.

    The containers are read by upb into skeleton messages that hold each item as bytes
    (:mod:`otelai.features.otlp_layout`), so no item is decoded or re-encoded; container
    fields the skeleton does not declare (``schema_url``) are kept as unknown fields.
    Raises :class:`~otelai.features.wire.WireError` when the request cannot be read.
    """
    request = parse_skeleton(SkeletonRequest, data)
    for resources in request.resources:
        for scopes in resources.scopes:
            items = scopes.items
            tagged = [item + suffix for item in items]
            del items[:]
            items.extend(tagged)
    out: bytes = request.SerializeToString()
    return out
