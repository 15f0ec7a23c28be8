"""Trace context for critical anomalies: recent spans kept for a decision wait, and the
traces whose later spans must follow.

Tail-based sampling (the Collector's ``tail_sampling`` processor, Refinery) holds whole traces
until a decision; otelai decides per span as it passes, so it keeps a bounded window of recent
requests instead: when a span turns out critical, the spans of its trace that came earlier
(and were dropped) are taken back out of the window and forwarded, and the trace id is
remembered for ``ttl`` so its later spans are forwarded too.

Memory is bounded by bytes (the requests' own bytes, shared with the receiver, plus small
per-span index arrays) and by age (``wait``); nothing per span is a Python object.

Both run once per batch on the hop's hot path, so their bookkeeping is per request or per
batch, never per trace in Python: with numba (the ``fast`` extra) the trace keys live in
compiled hash tables (:mod:`otelai.decision.trace_index_numba`); without it, or with
``OTELAI_TRACE_INDEX=numpy``, the buffer scans its window's distinct keys with numpy and the
followed traces are binary-searched, with the same results.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt

from otelai.kernels import load_kernels

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]


# "numpy" keeps the numpy index even where numba is installed (tests compare the two).
INDEX_ENV = "OTELAI_TRACE_INDEX"


def trace_keys(trace_ids: npt.NDArray[np.uint8]) -> U64:
    """A 64-bit key per 16-byte trace id (the halves XORed; ids are random, collisions rare)."""
    halves = np.ascontiguousarray(trace_ids).view(np.uint64).reshape(-1, 2)
    return halves[:, 0] ^ halves[:, 1]


@cache
def _compiled() -> Any:
    """The compiled index module, or None (numba missing or ``OTELAI_TRACE_INDEX=numpy``)."""
    return load_kernels("otelai.decision.trace_index_numba", INDEX_ENV, "trace keys are indexed with numpy")


def _bits(keys: U64) -> I64:
    """Trace keys as the index holds them: their bits as int64, in a contiguous writable array.

    The one array type the kernels are compiled for (int64 only, so no mixed signed and
    unsigned arithmetic in them); equality, all the index asks of keys, is the same.
    """
    out = np.ascontiguousarray(keys, dtype=np.uint64)
    return (out if out.flags.writeable else out.copy()).view(np.int64)


def _bits_for(keys: int, minimum: int) -> int:
    """Bits of the smallest table (at least ``2**minimum`` slots) that holds ``keys`` at load 1/4."""
    return max(minimum, (4 * keys - 1).bit_length())


class _Table:
    """An open-addressing hash table of trace keys, a row of int64 per slot (the kernels' layout).

    Its load stays at or under one half: it grows before it would pass that, and shrinks to
    load 1/4 once under 1/16 (the gap keeps a table that hovers around a size from resizing
    every batch), so its memory follows the live keys both ways.
    """

    def __init__(self, kernels: Any, columns: int, min_bits: int) -> None:
        self.kernels = kernels
        self.min_bits = min_bits
        self.bits = min_bits
        self.rows: I64 = np.zeros((1 << min_bits, columns), dtype=np.int64)
        self.live = 0

    @property
    def size(self) -> int:
        """Slots."""
        return len(self.rows)

    @property
    def limit(self) -> int:
        """Keys the table may hold before it must grow."""
        return self.size // 2

    @property
    def nbytes(self) -> int:
        return self.rows.nbytes

    def reserve(self, keys: int) -> None:
        """Room for ``keys`` more keys."""
        if self.live + keys > self.limit:
            self.resize(_bits_for(self.live + keys, self.min_bits))

    def trim(self) -> None:
        """Shrink a mostly empty table (after keys left)."""
        if self.bits > self.min_bits and 16 * self.live < self.size:
            self.resize(_bits_for(self.live, self.min_bits))

    def resize(self, bits: int) -> None:
        rows = np.zeros((1 << bits, self.rows.shape[1]), dtype=np.int64)
        self.kernels.rehash(self.rows, rows, bits)
        self.rows, self.bits = rows, bits


class _Pairs:
    """The distinct trace keys of each buffered request, with their spans, in arrival order.

    Pairs are numbered from 0 for ever (the compiled index's chains hold these numbers, so
    they survive a move); row ``pair - base`` of the arrays holds a live pair (``start <= pair
    < stop``). New pairs are appended; the oldest requests' leave from the front. When the
    arrays are full the live rows move to the front, into arrays of twice the rows they must
    hold; once under an eighth full they move into arrays of four times their live rows. So
    memory follows the window both ways, and a row is copied a bounded number of times on
    average.
    """

    MIN_ROWS = 1024

    def __init__(self, *, chained: bool) -> None:
        self.chained = chained
        self.base = self.start = self.stop = 0
        self._allocate(self.MIN_ROWS)

    def _allocate(self, rows: int) -> None:
        self.key: I64 = np.zeros(rows, dtype=np.int64)  # the trace key's bits
        self.spans: I64 = np.zeros(rows, dtype=np.int64)
        self.serial: I64 = np.zeros(rows, dtype=np.int64)
        # Next pair of the same key (-1: none), for the compiled index's chains.
        self.next: I64 = np.zeros(rows if self.chained else 0, dtype=np.int64)

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def nbytes(self) -> int:
        return self.key.nbytes + self.spans.nbytes + self.serial.nbytes + self.next.nbytes

    def live(self) -> slice:
        """Rows of the live pairs."""
        return slice(self.start - self.base, self.stop - self.base)

    def reserve(self, pairs: int) -> None:
        """Room for ``pairs`` more pairs after ``stop``."""
        if self.stop - self.base + pairs > len(self.key):
            self._move(max(self.MIN_ROWS, 1 << (2 * (len(self) + pairs) - 1).bit_length()))

    def release(self, end: int) -> None:
        """Pairs before ``end`` have left."""
        self.start = end
        if len(self.key) > self.MIN_ROWS and 8 * len(self) < len(self.key):
            self._move(max(self.MIN_ROWS, 1 << (4 * len(self) - 1).bit_length()))

    def _move(self, rows: int) -> None:
        live = self.live()
        arrays = (self.key, self.spans, self.serial, self.next)
        if rows != len(self.key):
            self._allocate(rows)
        for old, new in zip(arrays, (self.key, self.spans, self.serial, self.next), strict=True):
            if len(new):
                new[: len(self)] = old[live]  # overlapping when in place: numpy copies safely
        self.base = self.start


class _HashIndex:
    """Trace key -> spans in the window and the requests holding them (compiled hash table).

    Per request, one kernel call counts its spans in and another, when it leaves, counts them
    out; a query is one call. See :mod:`otelai.decision.trace_index_numba`.
    """

    MIN_BITS = 10

    def __init__(self, kernels: Any) -> None:
        self._k = kernels
        self._table = _Table(kernels, kernels.BUFFER_COLUMNS, self.MIN_BITS)
        self._pairs = _Pairs(chained=True)

    @property
    def traces(self) -> int:
        """Distinct trace keys in the window."""
        return self._table.live

    @property
    def nbytes(self) -> int:
        return self._table.nbytes + self._pairs.nbytes

    def add(self, keys: I64, serial: int) -> int:
        """Count one request's spans in; the number after its last pair."""
        table, pairs = self._table, self._pairs
        pairs.reserve(len(keys))  # at most a pair per span
        done = 0
        while True:
            pairs.stop, added, done = self._k.buffer_add(
                table.rows,
                table.bits,
                pairs.key,
                pairs.spans,
                pairs.serial,
                pairs.next,
                pairs.base,
                pairs.stop,
                keys,
                done,
                serial,
                table.limit - table.live,
            )
            table.live += added
            if done == len(keys):
                return pairs.stop
            table.resize(table.bits + 1)  # full: stopped before a new key

    def evict(self, end: int) -> None:
        """The requests whose pairs end at ``end`` (the oldest) have left."""
        table, pairs = self._table, self._pairs
        if end <= pairs.start:
            return
        table.live -= self._k.buffer_evict(
            table.rows,
            table.bits,
            pairs.key,
            pairs.spans,
            pairs.next,
            pairs.base,
            pairs.start,
            end,
        )
        pairs.release(end)
        table.trim()

    def spans(self, keys: I64) -> I64:
        """Spans in the window of each of ``keys``' traces."""
        table = self._table
        out: I64 = self._k.buffer_spans(table.rows, table.bits, keys)
        return out

    def serials(self, keys: I64) -> I64:
        """Serials of the requests holding spans of ``keys``, ascending (walks their chains)."""
        table, pairs = self._table, self._pairs
        out: I64 = self._k.buffer_serials(table.rows, table.bits, pairs.serial, pairs.next, pairs.base, keys)
        return out

    def take(self, keys: I64, forwarded: Bool, critical: I64) -> I64:
        """Rows of ``keys`` in ``critical`` and not ``forwarded``, marked forwarded now."""
        rows: I64 = self._k.recall_rows(keys, forwarded, critical)
        return rows


class _ScanIndex:
    """The same answers without numba: each query scans the window's pairs with numpy.

    Adding costs a sort of the request's keys and evicting nothing per trace; a query costs a
    comparison pass over the window's pairs per key asked (:func:`_member`), fine for the
    few critical traces of a batch, but growing with the window (the compiled index does not).
    """

    def __init__(self) -> None:
        self._pairs = _Pairs(chained=False)

    @property
    def traces(self) -> int:
        """Distinct trace keys in the window."""
        return len(np.unique(self._pairs.key[self._pairs.live()]))

    @property
    def nbytes(self) -> int:
        return self._pairs.nbytes

    def add(self, keys: I64, serial: int) -> int:
        """Count one request's spans in; the number after its last pair."""
        pairs = self._pairs
        unique, counts = np.unique(keys, return_counts=True)
        pairs.reserve(len(unique))
        rows = slice(pairs.stop - pairs.base, pairs.stop - pairs.base + len(unique))
        pairs.key[rows] = unique
        pairs.spans[rows] = counts
        pairs.serial[rows] = serial
        pairs.stop += len(unique)
        return pairs.stop

    def evict(self, end: int) -> None:
        """The requests whose pairs end at ``end`` (the oldest) have left."""
        if end > self._pairs.start:
            self._pairs.release(end)

    def _hits(self, keys: I64) -> I64:
        """Live rows whose key is one of ``keys``."""
        live = self._pairs.live()
        rows: I64 = live.start + np.flatnonzero(_member(self._pairs.key[live], keys))
        return rows

    def spans(self, keys: I64) -> I64:
        """Spans in the window of each of ``keys``' traces."""
        out = np.zeros(len(keys), dtype=np.int64)
        rows = self._hits(keys)
        if not len(rows):
            return out
        found, where = np.unique(self._pairs.key[rows], return_inverse=True)
        totals = np.zeros(len(found), dtype=np.int64)
        np.add.at(totals, where, self._pairs.spans[rows])
        slot = np.minimum(np.searchsorted(found, keys), len(found) - 1)
        hit = found[slot] == keys
        out[hit] = totals[slot[hit]]
        return out

    def serials(self, keys: I64) -> I64:
        """Serials of the requests holding spans of ``keys``, ascending."""
        return np.unique(self._pairs.serial[self._hits(keys)])

    def take(self, keys: I64, forwarded: Bool, critical: I64) -> I64:
        """Rows of ``keys`` in ``critical`` and not ``forwarded``, marked forwarded now."""
        rows = np.flatnonzero(_member(keys, critical) & ~forwarded)
        forwarded[rows] = True
        return rows


_FEW = 8  # keys asked for, up to which one comparison pass per key beats sorting them


def _member(haystack: I64, keys: I64) -> Bool:
    """Which of ``haystack`` are among ``keys`` (``np.isin``, without its overhead for a few keys)."""
    if len(keys) > _FEW:
        return np.isin(haystack, keys)
    out = np.zeros(len(haystack), dtype=np.bool_)
    for key in keys:
        out |= haystack == key
    return out


@dataclass(slots=True)
class _Entry:
    serial: int
    data: bytes
    at: float
    keys: I64  # the trace keys' bits (:func:`_bits`)
    start: I64
    end: I64
    resource: I64
    scope: I64
    index: I64
    forwarded: Bool
    size: int = 0  # the request's bytes and its arrays'
    pairs_end: int = 0  # the index's pair number after this request's pairs


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

    Notes
    -----
    An index over the window's trace keys answers "spans of this trace so far" and "requests
    holding this trace" without looking at the other requests; it holds one row per distinct
    key of each buffered request and shrinks as requests leave (see :class:`_HashIndex`).
    Its few bytes a trace are not counted in ``bytes``, which are the requests' own.

    Not thread-safe, like the processors: only the one scoring thread calls it
    (:mod:`otelai.scoring.stage`), and the compiled kernels run without the GIL.
    """

    def __init__(self, *, wait: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.wait = wait
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: deque[_Entry] = deque()
        kernels = _compiled() if wait > 0 and max_bytes > 0 else None
        self._index: _HashIndex | _ScanIndex = _HashIndex(kernels) if kernels is not None else _ScanIndex()
        self._serial = 0
        self.bytes = 0
        self.recalled_spans = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def traces(self) -> int:
        """Distinct traces with spans in the window."""
        self._evict()
        return self._index.traces

    @property
    def index_bytes(self) -> int:
        """Bytes of the index over the window's trace keys (not counted in ``bytes``)."""
        return self._index.nbytes

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
        bits = _bits(keys)
        forwarded = forwarded.copy()
        size = len(data) + keys.nbytes + start.nbytes + end.nbytes + resource.nbytes
        size += scope.nbytes + index.nbytes + forwarded.nbytes
        entry = _Entry(
            self._serial, data, self._clock(), bits, start, end, resource, scope, index, forwarded, size
        )
        entry.pairs_end = self._index.add(bits, entry.serial)
        self._entries.append(entry)
        self.bytes += entry.size
        self._evict()

    def span_counts(self, keys: U64) -> I64:
        """Spans of each of ``keys``' traces in the window (0 for a trace not seen)."""
        self._evict()
        if not len(keys):
            return np.zeros(0, dtype=np.int64)
        return self._index.spans(_bits(keys))

    def recall(self, critical: U64) -> list[Recalled]:
        """Spans of the ``critical`` traces still in the window and not forwarded yet."""
        self._evict()
        out: list[Recalled] = []
        if not len(critical) or not self._entries:
            return out
        first = self._entries[0].serial
        wanted = _bits(critical)
        for serial in self._index.serials(wanted).tolist():
            entry = self._entries[serial - first]
            rows = self._index.take(entry.keys, entry.forwarded, wanted)
            if not len(rows):
                continue
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
        end = None
        while entries and (entries[0].at < horizon or self.bytes > self.max_bytes):
            entry = entries.popleft()
            self.bytes -= entry.size
            end = entry.pairs_end
        if end is not None:  # one index call for every request that left
            self._index.evict(end)


class _KeySet:
    """A set of trace keys in a compiled hash table: a membership test per span in machine code."""

    MIN_BITS = 8

    def __init__(self, kernels: Any) -> None:
        self._k = kernels
        self._table = _Table(kernels, kernels.SET_COLUMNS, self.MIN_BITS)

    def __len__(self) -> int:
        return self._table.live

    @property
    def nbytes(self) -> int:
        return self._table.nbytes

    def add(self, keys: I64) -> None:
        table = self._table
        table.reserve(len(keys))
        table.live += self._k.set_add(table.rows, table.bits, keys)

    def remove(self, keys: I64) -> None:
        table = self._table
        table.live -= self._k.set_remove(table.rows, table.bits, keys)
        table.trim()

    def contains(self, keys: I64) -> Bool:
        found: Bool = self._k.set_contains(self._table.rows, self._table.bits, keys)
        return found


class _SortedKeys:
    """The same set without numba: a sorted array, binary-searched per span.

    Keys come and go a few at a time (critical traces), so the array is kept sorted by
    inserting and deleting them (a copy of the array), not sorted again.
    """

    def __init__(self) -> None:
        self._keys: I64 = np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self._keys)

    @property
    def nbytes(self) -> int:
        return self._keys.nbytes

    def _find(self, keys: I64) -> tuple[I64, Bool]:
        """Where each of ``keys`` is or would go, and whether it is there."""
        slot = np.searchsorted(self._keys, keys)
        if not len(self._keys):
            return slot, np.zeros(len(keys), dtype=np.bool_)
        found: Bool = self._keys.take(np.minimum(slot, len(self._keys) - 1)) == keys
        return slot, found

    def add(self, keys: I64) -> None:
        new = np.unique(keys)
        slot, found = self._find(new)
        self._keys = np.insert(self._keys, slot[~found], new[~found])

    def remove(self, keys: I64) -> None:
        slot, found = self._find(np.unique(keys))
        self._keys = np.delete(self._keys, slot[found])

    def contains(self, keys: I64) -> Bool:
        return self._find(keys)[1]


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

    Notes
    -----
    The order of expiry is an ordered dict (Python work per critical trace, which is rare);
    the membership test, for every span of every batch, is a set updated with the keys that
    come and go: a compiled hash table (:class:`_KeySet`), or without numba a sorted array
    (:class:`_SortedKeys`). Shared by the trace and log stages, which the one scoring thread
    runs (:mod:`otelai.scoring.stage`): not thread-safe.
    """

    def __init__(self, *, ttl: float, max_traces: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_traces = max_traces
        self._clock = clock
        self._expiry: OrderedDict[int, float] = OrderedDict()
        kernels = _compiled()
        self._members: _KeySet | _SortedKeys = _KeySet(kernels) if kernels is not None else _SortedKeys()

    def __len__(self) -> int:
        return len(self._expiry)

    def add(self, keys: U64) -> None:
        if not len(keys):
            return
        until = self._clock() + self.ttl
        for key in keys.tolist():
            self._expiry[key] = until
            self._expiry.move_to_end(key)
        dropped = []
        while len(self._expiry) > self.max_traces:
            dropped.append(self._expiry.popitem(last=False)[0])
        self._members.add(_bits(keys))
        if dropped:  # after the adds: a key added and dropped in one call ends up out
            self._members.remove(_bits(np.array(dropped, dtype=np.uint64)))

    def contains(self, keys: U64) -> Bool:
        """Which of ``keys`` belong to a followed trace (vectorised)."""
        now = self._clock()
        expired = []
        while self._expiry:
            key, until = next(iter(self._expiry.items()))
            if until >= now:
                break
            del self._expiry[key]
            expired.append(key)
        if expired:
            self._members.remove(_bits(np.array(expired, dtype=np.uint64)))
        if not len(self._members):
            return np.zeros(len(keys), dtype=np.bool_)
        return self._members.contains(_bits(keys))
