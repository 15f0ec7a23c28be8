"""The container levels of serialised OTLP requests, read at C speed with skeleton messages.

Every OTLP export request has the same three outer levels (opentelemetry-proto
``collector/*/v1/*_service.proto``, ``logs.proto``, ``metrics.proto``): field 1 of the request
repeats ``Resource*``; field 1 of that is the ``Resource`` and field 2 repeats ``Scope*``;
field 1 of that is the ``InstrumentationScope`` and field 2 repeats the items. A *skeleton*
message class declares just those fields, with the Resource, the scope and each item as
``bytes``: upb parses the containers in C and hands each item back as bytes, which are joined
into one buffer for :func:`otelai.features.wire.walk` to read in lockstep. The lockstep walk
suits many short messages (items), not few long ones (a scope of 500 records would take 500
steps), which is why the containers are left to upb.

Resources and scopes repeat from request to request (an SDK sends the same Resource every
time), so their service name and identity hash are cached by their bytes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError
from numpy.typing import NDArray
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otelai.features.wire import WireError, as_buffer

I64 = NDArray[np.int64]
U8 = NDArray[np.uint8]
U64 = NDArray[np.uint64]

SERVICE_NAME = "service.name"
METRIC_KINDS = ("gauge", "sum", "histogram", "exponential_histogram", "summary")
_ODD = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio, odd: a bijective multiplier
_CACHE_ENTRIES = 4096


def _skeleton_classes() -> tuple[Any, Any, Any]:
    """Skeleton request classes: items as bytes (logs, spans), and metrics down to their points."""
    fdp = descriptor_pb2.FileDescriptorProto(name="otelai_skeleton.proto", package="otelai_skeleton")
    fdp.syntax = "proto3"
    field = descriptor_pb2.FieldDescriptorProto
    repeated, optional = field.LABEL_REPEATED, field.LABEL_OPTIONAL
    msg, raw = field.TYPE_MESSAGE, field.TYPE_BYTES

    def message(name: str, fields: Sequence[tuple[str, int, Any, Any, str]], oneof: str = "") -> None:
        proto = fdp.message_type.add(name=name)
        if oneof:
            proto.oneof_decl.add(name=oneof)
        for fname, number, label, ftype, type_name in fields:
            added = proto.field.add(name=fname, number=number, label=label, type=ftype)
            if type_name:
                added.type_name = f".otelai_skeleton.{type_name}"
            if oneof and ftype == msg:
                added.oneof_index = 0

    message("Request", [("resources", 1, repeated, msg, "Resources")])
    message(
        "Resources",
        [
            ("resource", 1, optional, raw, ""),
            ("scopes", 2, repeated, msg, "Scopes"),
            ("schema_url", 3, optional, raw, ""),
        ],
    )
    message(
        "Scopes",
        [
            ("scope", 1, optional, raw, ""),
            ("items", 2, repeated, raw, ""),
            ("schema_url", 3, optional, raw, ""),
        ],
    )
    message("SpanState", [("trace_state", 3, optional, raw, "")])
    message("MetricRequest", [("resources", 1, repeated, msg, "MetricResources")])
    message(
        "MetricResources",
        [("resource", 1, optional, raw, ""), ("scopes", 2, repeated, msg, "MetricScopes")],
    )
    message("MetricScopes", [("scope", 1, optional, raw, ""), ("metrics", 2, repeated, msg, "Metric")])
    message(
        "Metric",
        [("name", 1, optional, raw, "")]
        + [
            (kind, number, optional, msg, "Data")
            for kind, number in zip(METRIC_KINDS, (5, 7, 9, 10, 11), strict=True)
        ],
        oneof="data",
    )
    message(
        "Data",
        [
            ("data_points", 1, repeated, raw, ""),
            ("aggregation_temporality", 2, optional, field.TYPE_INT32, ""),
            ("is_monotonic", 3, optional, field.TYPE_BOOL, ""),
        ],
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)

    def get(name: str) -> Any:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"otelai_skeleton.{name}"))

    return get("Request"), get("MetricRequest"), get("SpanState")


# SpanState: a span's ``trace_state`` (field 3) alone, the rest of the span left unparsed.
SkeletonRequest, SkeletonMetricRequest, SpanState = _skeleton_classes()


@dataclass(frozen=True, slots=True)
class ItemLayout:
    """The items of several requests, back to back in one buffer, and what contains them.

    Item ``i`` is ``buf[start[i]:end[i]]`` and sits at ``requests[request[i]].resource_*[
    resource[i]].scope_*[scope[i]].<items>[position[i]]``. ``resource_row``/``scope_row``
    index the per-resource arrays (``resource_key``, ``service``) and per-scope arrays
    (``scope_key``).
    """

    buf: U8
    start: I64
    end: I64
    request: I64
    resource: I64
    scope: I64
    position: I64
    resource_row: I64
    scope_row: I64
    resource_key: U64
    scope_key: U64
    service: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.start.size)


class Containers:
    """Per-resource and per-scope lists filled while reading the skeletons."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.scope_items: list[int] = []
        self.scope_position: list[int] = []
        self.scope_resource: list[int] = []
        self.scope_bytes: list[bytes] = []
        self.resource_request: list[int] = []
        self.resource_position: list[int] = []
        self.resource_bytes: list[bytes] = []

    def add_resource(self, request: int, position: int, data: bytes) -> None:
        self.resource_request.append(request)
        self.resource_position.append(position)
        self.resource_bytes.append(data)

    def add_scope(self, position: int, data: bytes, items: Sequence[bytes]) -> None:
        self.scope_position.append(position)
        self.scope_resource.append(len(self.resource_bytes) - 1)
        self.scope_bytes.append(data)
        self.scope_items.append(len(items))
        self.chunks.extend(items)


class ResourceCache:
    """Service name and identity hash of Resource (or scope) bytes, cached by the bytes."""

    def __init__(self) -> None:
        self._entries: dict[bytes, tuple[str, int]] = {}

    def lookup(self, data: bytes, *, service: bool) -> tuple[str, int]:
        found = self._entries.get(data)
        if found is None:
            if len(self._entries) >= _CACHE_ENTRIES:
                self._entries.clear()
            found = (_service_name(data) if service else "", stable_hash(data))
            self._entries[data] = found
        return found


def _service_name(data: bytes) -> str:
    for attribute in Resource.FromString(data).attributes:
        if attribute.key == SERVICE_NAME:
            return str(attribute.value.string_value)
    return ""


def parse_skeleton(cls: Any, payload: bytes) -> Any:
    """``cls.FromString(payload)``, with protobuf's decode error as a :class:`WireError`."""
    try:
        return cls.FromString(payload)
    except DecodeError as exc:
        raise WireError(f"malformed OTLP request: {exc}") from exc


def stable_hash(data: bytes) -> int:
    """A 64-bit hash of ``data``, the same in every process (BLAKE2b, 8-byte digest)."""
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def locate_items(payloads: Sequence[bytes], cache: ResourceCache | None = None) -> ItemLayout:
    """Read the containers of logs or trace request payloads (items: records or spans)."""
    found = Containers()
    for number, payload in enumerate(payloads):
        request = parse_skeleton(SkeletonRequest, payload)
        for resource_position, resources in enumerate(request.resources):
            found.add_resource(number, resource_position, resources.resource)
            for scope_position, scopes in enumerate(resources.scopes):
                found.add_scope(scope_position, scopes.scope, scopes.items)
    return build_layout(found.chunks, found, cache or ResourceCache())


def build_layout(chunks: list[bytes], found: Containers, cache: ResourceCache) -> ItemLayout:
    """Item ranges, locators and container keys from what a skeleton read collected."""
    lengths = np.fromiter(map(len, chunks), dtype=np.int64, count=len(chunks))
    end = np.cumsum(lengths)
    per_scope = np.asarray(found.scope_items, dtype=np.int64)
    scope_row = np.repeat(np.arange(per_scope.size, dtype=np.int64), per_scope)
    first = np.cumsum(per_scope) - per_scope
    resource_of_scope = np.asarray(found.scope_resource, dtype=np.int64)
    resource_row = resource_of_scope.take(scope_row)
    resources = [cache.lookup(data, service=True) for data in found.resource_bytes]
    scopes = [cache.lookup(data, service=False)[1] for data in found.scope_bytes]
    return ItemLayout(
        buf=as_buffer(chunks),
        start=end - lengths,
        end=end,
        request=np.asarray(found.resource_request, dtype=np.int64).take(resource_row),
        resource=np.asarray(found.resource_position, dtype=np.int64).take(resource_row),
        scope=np.asarray(found.scope_position, dtype=np.int64).take(scope_row),
        position=np.arange(end.size, dtype=np.int64) - first.take(scope_row),
        resource_row=resource_row,
        scope_row=scope_row,
        resource_key=np.array([key for _, key in resources], dtype=np.uint64),
        scope_key=np.array(scopes, dtype=np.uint64),
        service=tuple(name for name, _ in resources),
    )


def range_hash(buf: U8, start: I64, end: I64) -> U64:
    """A 64-bit hash of each byte range ``buf[start:end]`` (empty for ``start < 0``), vectorised.

    Stable across processes (no per-process salt), so keys built from it may be saved. The
    range is read as little-endian 8-byte words (the last one zero-filled) and hashed as a
    polynomial in those words modulo 2^64, with the length, then finished by splitmix64's
    mixer; not for adversarial input. ``buf`` must have 8 readable bytes past every range
    (:func:`~otelai.features.wire.as_buffer` pads more).
    """
    start = np.asarray(start, dtype=np.int64)
    length = np.where(start >= 0, np.asarray(end, dtype=np.int64) - start, 0)
    result = np.zeros(start.size, dtype=np.uint64)
    nonempty = np.flatnonzero(length > 0)
    if nonempty.size:
        seg_len = length.take(nonempty)
        words = (seg_len + 7) // 8
        first = np.cumsum(words) - words
        within = np.arange(int(words.sum()), dtype=np.int64) - np.repeat(first, words)
        position = np.repeat(start.take(nonempty), words) + 8 * within
        # Bytes left in the range from each word on; past 8 the whole word counts.
        bits = np.minimum(np.repeat(seg_len, words) - 8 * within, 8).astype(np.uint64) * np.uint64(8)
        mask = np.where(bits >= 64, _ALL_ONES, (np.uint64(1) << (bits & np.uint64(63))) - np.uint64(1))
        word = _words(buf)[position] & mask
        result[nonempty] = np.add.reduceat(word * _powers(int(words.max())).take(within), first)
    return mix64(result + length.astype(np.uint64) * _ODD)


_ALL_ONES = np.uint64(0xFFFFFFFFFFFFFFFF)


def _words(buf: U8) -> U64:
    """An unaligned view of ``buf``: element ``i`` is the little-endian 8 bytes at ``i``."""
    if buf.size < 8:
        buf = np.concatenate([buf, np.zeros(8, dtype=np.uint8)])
    words: U64 = np.ndarray(shape=(buf.size - 7,), dtype="<u8", buffer=buf, strides=(1,))
    return words


_POWERS = np.ones(1, dtype=np.uint64)


def _powers(n: int) -> U64:
    """``B^i mod 2^64`` for ``i < n`` (B the FNV-64 prime), grown and kept as needed."""
    global _POWERS
    if _POWERS.size < n:
        size = max(n, 2 * _POWERS.size, 256)
        base = np.full(size, 0x100000001B3, dtype=np.uint64)
        base[0] = 1
        _POWERS = np.cumprod(base, dtype=np.uint64)
    return _POWERS


def mix64(values: U64) -> U64:
    """splitmix64's finaliser: spreads every input bit over the output (a bijection)."""
    x = np.array(values, dtype=np.uint64)
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def combine(first: U64, second: U64) -> U64:
    """An order-dependent 64-bit combination of two hash arrays."""
    return mix64(np.asarray(first, dtype=np.uint64) * _ODD + np.asarray(second, dtype=np.uint64))
