"""Trace context for critical anomalies: recent spans kept for a decision wait, and the
traces whose later spans must follow.

Tail-based sampling (the Collector's ``tail_sampling`` processor, Refinery) holds whole traces
until a decision; otelai decides per span as it passes, so it keeps a bounded window of recent
requests instead: when a span turns out critical, the spans of its trace that came earlier
(and were dropped) are taken back out of the window and forwarded, and the trace id is
remembered for ``ttl`` so its later spans are forwarded too.

Memory is bounded by bytes (the requests' own bytes, shared with the receiver, plus small
per-span index arrays) and by age (``wait``); nothing per span is a Python object.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]


def trace_keys(trace_ids: npt.NDArray[np.uint8]) -> U64:
    """A 64-bit key per 16-byte trace id (the halves XORed; ids are random, collisions rare)."""
    halves = np.ascontiguousarray(trace_ids).view(np.uint64).reshape(-1, 2)
    return halves[:, 0] ^ halves[:, 1]


@dataclass(slots=True)
class _Entry:
    serial: int
    data: bytes
    at: float
    keys: U64
    start: I64
    end: I64
    resource: I64
    scope: I64
    index: I64
    forwarded: Bool

    @property
    def size(self) -> int:
        arrays = (self.keys, self.start, self.end, self.resource, self.scope, self.index, self.forwarded)
        return len(self.data) + sum(a.nbytes for a in arrays)


@dataclass(frozen=True, slots=True)
class Recalled:
    """Spans of one buffered request to forward now: their rows in ``start`` ... order."""

    data: bytes
    start: I64
    end: I64
    resource: I64
    scope: I64
    index: I64


class TraceBuffer:
    """A window of recent trace requests, bounded by age and bytes.

    Parameters
    ----------
    wait
        Seconds a request stays recallable.
    max_bytes
        Bytes the window may hold; the oldest requests leave first.
    clock
        Monotonic seconds (injectable for tests).
    """

    def __init__(self, *, wait: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.wait = wait
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: deque[_Entry] = deque()
        # trace key -> serials of the entries holding its spans: a recall looks at those only.
        self._index: dict[int, list[int]] = {}
        # trace key -> its spans in the window: the size of the trace so far, for critical.
        self._spans: dict[int, int] = {}
        self._serial = 0
        self.bytes = 0
        self.recalled_spans = 0

    def __len__(self) -> int:
        return len(self._entries)

    def add(
        self,
        data: bytes,
        keys: U64,
        start: I64,
        end: I64,
        resource: I64,
        scope: I64,
        index: I64,
        forwarded: Bool,
    ) -> None:
        """Keep one request's spans (all rows of ``keys`` ... belong to ``data``)."""
        if self.wait <= 0 or self.max_bytes <= 0:
            return
        self._serial += 1
        entry = _Entry(
            self._serial, data, self._clock(), keys, start, end, resource, scope, index, forwarded.copy()
        )
        self._entries.append(entry)
        self.bytes += entry.size
        serials, spans = self._index, self._spans
        unique, counts = np.unique(keys, return_counts=True)
        for key, count in zip(unique.tolist(), counts.tolist(), strict=True):
            serials.setdefault(key, []).append(entry.serial)
            spans[key] = spans.get(key, 0) + count
        self._evict()

    def span_counts(self, keys: U64) -> I64:
        """Spans of each of ``keys``' traces in the window (0 for a trace not seen)."""
        self._evict()
        spans = self._spans
        return np.fromiter((spans.get(key, 0) for key in keys.tolist()), dtype=np.int64, count=len(keys))

    def recall(self, critical: U64) -> list[Recalled]:
        """Spans of the ``critical`` traces still in the window and not forwarded yet."""
        self._evict()
        out: list[Recalled] = []
        if not len(critical) or not self._entries:
            return out
        first = self._entries[0].serial
        serials = sorted({s for key in critical.tolist() for s in self._index.get(key, ())})
        for serial in serials:
            entry = self._entries[serial - first]
            rows = np.flatnonzero(np.isin(entry.keys, critical) & ~entry.forwarded)
            if not len(rows):
                continue
            entry.forwarded[rows] = True
            self.recalled_spans += len(rows)
            out.append(
                Recalled(
                    entry.data,
                    entry.start[rows],
                    entry.end[rows],
                    entry.resource[rows],
                    entry.scope[rows],
                    entry.index[rows],
                )
            )
        return out

    def _evict(self) -> None:
        horizon = self._clock() - self.wait
        entries = self._entries
        index, spans = self._index, self._spans
        while entries and (entries[0].at < horizon or self.bytes > self.max_bytes):
            entry = entries.popleft()
            self.bytes -= entry.size
            unique, counts = np.unique(entry.keys, return_counts=True)
            for key, count in zip(unique.tolist(), counts.tolist(), strict=True):
                left = spans.get(key, 0) - count
                if left > 0:
                    spans[key] = left
                else:
                    spans.pop(key, None)
                serials = index.get(key)
                if serials is None:
                    continue
                if serials[0] == entry.serial:
                    serials.pop(0)
                if not serials:
                    del index[key]


class CriticalTraces:
    """Trace keys seen critical recently, so their later spans are forwarded too.

    Parameters
    ----------
    ttl
        Seconds a trace stays followed after its last critical span.
    max_traces
        Traces followed at once; the oldest are forgotten first.
    clock
        Monotonic seconds (injectable for tests).
    """

    def __init__(self, *, ttl: float, max_traces: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_traces = max_traces
        self._clock = clock
        self._expiry: OrderedDict[int, float] = OrderedDict()
        self._active: U64 = np.zeros(0, dtype=np.uint64)
        self._dirty = False

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, keys: U64) -> None:
        if not len(keys):
            return
        until = self._clock() + self.ttl
        for key in keys.tolist():
            self._expiry[key] = until
            self._expiry.move_to_end(key)
        while len(self._expiry) > self.max_traces:
            self._expiry.popitem(last=False)
        self._dirty = True

    def contains(self, keys: U64) -> Bool:
        """Which of ``keys`` belong to a followed trace (vectorised)."""
        now = self._clock()
        while self._expiry:
            key, until = next(iter(self._expiry.items()))
            if until >= now:
                break
            del self._expiry[key]
            self._dirty = True
        if self._dirty:
            # Sorted once per change, then each batch is one binary search per key: np.isin
            # would sort the followed keys again on every batch.
            self._active = np.sort(np.fromiter(self._expiry, dtype=np.uint64, count=len(self._expiry)))
            self._dirty = False
        active = self._active
        if not len(active):
            return np.zeros(len(keys), dtype=np.bool_)
        slot = np.minimum(np.searchsorted(active, keys), len(active) - 1)
        found: Bool = active.take(slot) == keys
        return found
