"""Merging serialised OTLP export requests into one, at the byte level, without re-encoding items.

Implements the request merge of the Collector's exporterhelper queue batching
(``sending_queue.batch``), for the OTLP protobuf encoding (opentelemetry-proto,
``collector/{trace,metrics,logs}/v1``). The three ``Export*ServiceRequest`` messages share
one shape, which is all this module relies on::

    request:    1 resource_{spans,metrics,logs}   (repeated Resource*)
    Resource*:  1 resource, 2 scope_*  (repeated Scope*), 3 schema_url
    Scope*:     1 scope,    2 items    (repeated spans / metrics / log_records), 3 schema_url

Resources with identical ``resource`` and ``schema_url`` bytes are written once, and within
them scopes with identical ``scope`` and ``schema_url`` bytes, so N small requests from one
service carry its resource attributes once instead of N times. Items are copied as the bytes
they arrived in, in their original order within each scope; only the envelopes are written.

Why bytes and not ``ParseFromString`` + ``SerializeToString``: the items need not be decoded
at all, only skipped over by their length prefix (``benchmarks/merge_requests.py`` measures
both). A request whose envelope holds anything else (unknown fields, another wire type,
a truncated length) is refused with :class:`Unmergeable`; the queue then sends it alone, as
received.
"""

from __future__ import annotations

from otelai.decision.tagging import field

_TAG_1 = 0x0A  # field 1, length-delimited
_TAG_2 = 0x12  # field 2, length-delimited
_TAG_3 = 0x1A  # field 3, length-delimited

# The encoded ``resource``/``scope`` field and the encoded ``schema_url`` field (b"" if absent).
_Key = tuple[bytes, bytes]


class Unmergeable(ValueError):
    """A request whose envelope this module does not understand; send it as it is."""


class Merger:
    """Collects requests of one signal and writes them as one, equal envelopes merged."""

    def __init__(self) -> None:
        self._resources: dict[_Key, dict[_Key, list[bytes]]] = {}
        self._first: bytes | None = None
        self.requests = 0

    def add(self, data: bytes) -> None:
        """Add one serialised ``Export*ServiceRequest``.

        Raises
        ------
        Unmergeable
            When its envelope cannot be read; nothing of it was added.
        """
        try:
            groups = _groups(data)
        except IndexError as exc:  # a length prefix past the end: reading ran off the buffer
            raise Unmergeable("truncated envelope") from exc
        for resource, scope, items in groups:
            scopes = self._resources.setdefault(resource, {})
            if scope is None:
                continue
            group = scopes.get(scope)
            if group is None:
                scopes[scope] = items
            else:
                group.extend(items)
        if self._first is None:
            self._first = data
        self.requests += 1

    def build(self) -> bytes:
        """The merged request; a single added request comes back as it was added."""
        if self.requests == 1 and self._first is not None:
            return self._first
        out: list[bytes] = []
        for (head, url), scopes in self._resources.items():
            body = [head]
            for (scope_head, scope_url), items in scopes.items():
                body.append(field(2, b"".join([scope_head, *items, scope_url])))
            body.append(url)
            out.append(field(1, b"".join(body)))
        return b"".join(out)


def merge_requests(requests: list[bytes]) -> bytes:
    """One request holding every item of ``requests``, with equal resources and scopes merged.

    Parameters
    ----------
    requests
        Serialised ``Export*ServiceRequest`` messages, all of the same signal, in send order.

    Raises
    ------
    Unmergeable
        When a request's envelope cannot be read (the message names which one).
    """
    merger = Merger()
    for index, data in enumerate(requests):
        try:
            merger.add(data)
        except Unmergeable as exc:
            raise Unmergeable(f"request {index}: {exc}") from exc
    return merger.build()


def _groups(data: bytes) -> list[tuple[_Key, _Key | None, list[bytes]]]:
    """(resource key, scope key, item runs) for each Scope* of one request, in order.

    A Resource* without any Scope* comes out once with no scope key, so it is kept as well.
    """
    out: list[tuple[_Key, _Key | None, list[bytes]]] = []
    for start, end in _entries(data, 0, len(data), _TAG_1, "request"):
        head, url, scope_entries = _resource(data, start, end)
        if not scope_entries:
            out.append(((head, url), None, []))
        for scope_start, scope_end in scope_entries:
            scope_head, scope_url, runs = _scope(data, scope_start, scope_end)
            out.append(((head, url), (scope_head, scope_url), runs))
    return out


def _resource(data: bytes, start: int, end: int) -> tuple[bytes, bytes, list[tuple[int, int]]]:
    """A Resource*: its encoded field 1, its encoded field 3, the payload (start, end) of each Scope*."""
    head = url = b""
    scopes: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        tag = data[pos]
        length, payload = _varint(data, pos + 1)
        stop = payload + length
        if stop > end:
            raise Unmergeable("resource: a field runs past its message")
        if tag == _TAG_2:
            scopes.append((payload, stop))
        elif tag == _TAG_1 and not head:
            head = data[pos:stop]
        elif tag == _TAG_3 and not url:
            url = data[pos:stop]
        else:
            # A repeated singular field or an unknown one: merging could change its meaning.
            raise Unmergeable(f"resource: unexpected field with tag {tag:#x}")
        pos = stop
    return head, url, scopes


def _scope(data: bytes, start: int, end: int) -> tuple[bytes, bytes, list[bytes]]:
    """A Scope*: its encoded field 1, its encoded field 3, and its items as runs of whole fields.

    Items written back to back are copied as one slice. This loop runs once per item, so the
    one- and two-byte lengths (items under 16 KiB) are decoded inline.
    """
    head = url = b""
    runs: list[bytes] = []
    run = -1  # where the current run of items began
    pos = start
    while pos < end:
        tag = data[pos]
        low = data[pos + 1]
        if low < 0x80:
            stop = pos + 2 + low
        elif (high := data[pos + 2]) < 0x80:
            stop = pos + 3 + ((low & 0x7F) | high << 7)
        else:
            length, payload = _varint(data, pos + 1)
            stop = payload + length
        if tag == _TAG_2:
            if run < 0:
                run = pos
        else:
            if run >= 0:
                runs.append(data[run:pos])
                run = -1
            if tag == _TAG_1 and not head:
                head = data[pos:stop]
            elif tag == _TAG_3 and not url:
                url = data[pos:stop]
            else:
                raise Unmergeable(f"scope: unexpected field with tag {tag:#x}")
        pos = stop
    if pos != end:  # the last field ran past its message (checked once, not per item)
        raise Unmergeable("scope: a field runs past its message")
    if run >= 0:
        runs.append(data[run:end])
    return head, url, runs


def _entries(data: bytes, start: int, end: int, tag: int, what: str) -> list[tuple[int, int]]:
    """The payload (start, end) of each field of a message made only of fields with ``tag``."""
    out: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        if data[pos] != tag:
            raise Unmergeable(f"{what}: unexpected field with tag {data[pos]:#x}")
        length, payload = _varint(data, pos + 1)
        pos = payload + length
        if pos > end:
            raise Unmergeable(f"{what}: a field runs past its message")
        out.append((payload, pos))
    return out


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    """The varint at ``pos`` and the position after it."""
    byte = data[pos]
    if byte < 0x80:
        return byte, pos + 1
    value = byte & 0x7F
    shift = 7
    while True:
        pos += 1
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + 1
        shift += 7
        if shift > 63:
            raise Unmergeable("varint longer than 10 bytes")
