"""Compiled hash tables over trace keys (numba), for :mod:`otelai.decision.trace_buffer`.

The trace buffer needs, per batch, the spans each of a few traces has in its window, the
requests that hold them, and the requests' bookkeeping as they come and leave; the followed
critical traces need a membership test for every span of a batch. Python dicts cost one
interpreted dict operation per distinct trace of every request (twice: in and out) and a sorted
array costs a binary search per span; these kernels do the same with one call per request or
batch and a few nanoseconds per span.

Both tables are open addressing with linear probing in one int64 array, a row per slot: the
key's 64 bits in column ``KEY`` (trace keys are uint64; the callers pass ``view(np.int64)``
of them, so every value here is int64 and no mixed signed/unsigned arithmetic turns into
floats), then the values, of which ``USED`` (column 1) is positive exactly for a used slot.
A probe that misses the cache so costs one line, not one for the key and one for the values.
Keys are placed by Fibonacci hashing (Knuth, TAOCP vol. 3, 6.4: the top bits of the key
times 2**64 over the golden ratio, which keep the table uniform even for small or patterned
keys) and deleted by backward shift (Knuth's Algorithm R, 6.4), so there are no tombstones to
accumulate under a stream of fresh trace ids: a table holds exactly its live keys. The load
stays at or under one half (the set grows before an insert that could pass it;
:func:`buffer_add` stops short of it and the caller grows the table and goes on), and the
caller shrinks a mostly empty table, both with :func:`rehash`, so memory follows the live
keys both ways.

The trace buffer's table (its values: spans in the window, oldest and newest *pair* of the
key) indexes a store of pairs, one per distinct key of each buffered request, in arrival
order: the pair's key, its spans in that request, the request's serial and the next pair of
the same key (a chain, oldest first, as the Python lists of serials were). Evicting the
oldest request takes its pairs off the heads of their chains.

Importing this module imports numba; :func:`warm_up` compiles the kernels or loads them from
numba's on-disk cache (``__pycache__`` beside this file, else the user cache directory; with
neither writable they compile at every start).
"""

from __future__ import annotations

import numba
import numpy as np
from numpy.typing import NDArray

from otelai.kernels import cached_jit

I64 = NDArray[np.int64]
Bool = NDArray[np.bool_]

# Columns of a table row. The trace buffer's: the key, its spans in the window (0: a free
# slot), its oldest and newest pair. The followed traces': the key, 1 for a member.
KEY, USED = 0, 1
SPANS, HEAD, TAIL = USED, 2, 3
BUFFER_COLUMNS = 4
SET_COLUMNS = 2

# 2**64 / golden ratio (odd), as int64: the product wraps the same as in uint64.
_GOLDEN = np.int64(0x9E3779B97F4A7C15 - 2**64)


_jit = cached_jit("the trace index")


@numba.njit(inline="always")
def _home(key: int, bits: int) -> int:
    """The slot of ``key`` in a table of ``2**bits``: the top ``bits`` bits of ``key * golden``.

    The shift is arithmetic (int64), so the mask drops the sign's copies above them.
    """
    return int(((key * _GOLDEN) >> (64 - bits)) & ((1 << bits) - 1))


@_jit
def _find(table: I64, bits: int, key: int) -> int:
    """The slot holding ``key``, or -1."""
    mask = table.shape[0] - 1
    i = _home(key, bits)
    while table[i, USED] != 0:
        if table[i, KEY] == key:
            return i
        i = (i + 1) & mask
    return -1


@_jit
def _touch(table: I64, bits: int, keys: I64, first: int, stop: int) -> None:
    """Load the home slot of each of ``keys[first:stop]``, ahead of the probes that need them.

    A window's table is megabytes: nearly every probe of a fresh key misses the caches. The
    probes, one per key with a branch on what each finds, wait for their misses one by one;
    these loads depend on nothing, so the processor overlaps a dozen of them, and the probes
    then find their slots cached (about twice as fast for a request of fresh trace ids).
    """
    touched = 0
    for n in range(first, stop):
        touched += table[_home(keys[n], bits), USED]
    if touched < 0:  # never (counts and flags): keeps the loads, which are otherwise unused
        raise ValueError("negative trace index counts")


@_jit
def _remove(table: I64, bits: int, slot: int) -> None:
    """Empty ``slot``, moving later keys of its probe run back so every key stays reachable.

    A key at ``j`` (home ``h``) may fill the hole at ``i`` when ``i`` lies on its probe path,
    that is, when it is at least as far from ``h`` as from ``i``, cyclically.
    """
    mask = table.shape[0] - 1
    i = slot
    j = slot
    while True:
        j = (j + 1) & mask
        if table[j, USED] == 0:
            break
        if ((j - _home(table[j, KEY], bits)) & mask) >= ((j - i) & mask):
            table[i, :] = table[j, :]
            i = j
    table[i, USED] = 0


@_jit
def rehash(table: I64, new_table: I64, new_bits: int) -> None:
    """Insert every used slot of ``table`` into ``new_table`` (empty, ``2**new_bits`` rows)."""
    mask = new_table.shape[0] - 1
    for s in range(table.shape[0]):
        if table[s, USED] == 0:
            continue
        i = _home(table[s, KEY], new_bits)
        while new_table[i, USED] != 0:
            i = (i + 1) & mask
        new_table[i, :] = table[s, :]


@_jit
def buffer_add(
    table: I64,
    bits: int,
    pair_key: I64,
    pair_spans: I64,
    pair_serial: I64,
    pair_next: I64,
    base: int,
    stop: int,
    keys: I64,
    first: int,
    serial: int,
    room: int,
) -> tuple[int, int, int]:
    """Count one request's spans (``keys[first:]``, request ``serial``) in.

    Returns the new ``stop``, the keys added and how far it got: ``keys.size``, or the span
    whose key would have been the ``room + 1``-th new one (the table is full: the caller
    grows it and calls again from there). Pairs are numbered from ``base`` (the store's row
    0); ``stop`` is the next pair's number, and the store has room for a pair per span. A
    key's pair for this request is its chain's newest (``TAIL``) when that has this serial,
    so a request's pairs come in order of first appearance, one per distinct key.
    """
    mask = table.shape[0] - 1
    added = 0
    _touch(table, bits, keys, first, keys.size)
    for n in range(first, keys.size):
        key = keys[n]
        i = _home(key, bits)
        while table[i, USED] != 0 and table[i, KEY] != key:
            i = (i + 1) & mask
        if table[i, USED] == 0:  # a trace new to the window
            if added == room:
                return stop, added, n
            table[i, KEY] = key
            table[i, HEAD] = stop
            added += 1
        else:
            tail = table[i, TAIL] - base
            if pair_serial[tail] == serial:  # seen earlier in this request
                pair_spans[tail] += 1
                table[i, SPANS] += 1
                continue
            pair_next[tail] = stop
        row = stop - base
        pair_key[row] = key
        pair_spans[row] = 1
        pair_serial[row] = serial
        pair_next[row] = -1
        table[i, TAIL] = stop
        table[i, SPANS] += 1
        stop += 1
    return stop, added, keys.size


@_jit
def buffer_evict(
    table: I64, bits: int, pair_key: I64, pair_spans: I64, pair_next: I64, base: int, start: int, end: int
) -> int:
    """Count the pairs ``start`` to ``end`` (the oldest requests') out; the keys that left.

    Each is the head of its key's chain (requests leave oldest first), so the head moves to
    the next pair; a key with no spans left leaves the table.
    """
    removed = 0
    _touch(table, bits, pair_key, start - base, end - base)
    for pair in range(start, end):
        row = pair - base
        i = _find(table, bits, pair_key[row])
        if i < 0:  # cannot happen: every stored pair's key is in the table
            continue
        table[i, SPANS] -= pair_spans[row]
        table[i, HEAD] = pair_next[row]
        if table[i, SPANS] <= 0:
            _remove(table, bits, i)
            removed += 1
    return removed


@_jit
def buffer_spans(table: I64, bits: int, keys: I64) -> I64:
    """Spans in the window of each of ``keys``' traces (0 for a key not there)."""
    out = np.zeros(keys.size, dtype=np.int64)
    for n in range(keys.size):
        i = _find(table, bits, keys[n])
        if i >= 0:
            out[n] = table[i, SPANS]
    return out


@_jit
def buffer_serials(table: I64, bits: int, pair_serial: I64, pair_next: I64, base: int, keys: I64) -> I64:
    """Serials of the requests holding spans of any of ``keys``, ascending, each once."""
    found = np.empty(keys.size, dtype=np.int64)
    total = 0
    for n in range(keys.size):
        found[n] = _find(table, bits, keys[n])
        pair = table[found[n], HEAD] if found[n] >= 0 else -1
        while pair >= 0:
            total += 1
            pair = pair_next[pair - base]
    out = np.empty(total, dtype=np.int64)
    total = 0
    for n in range(keys.size):
        pair = table[found[n], HEAD] if found[n] >= 0 else -1
        while pair >= 0:
            out[total] = pair_serial[pair - base]
            total += 1
            pair = pair_next[pair - base]
    return np.unique(out)


@_jit
def recall_rows(keys: I64, forwarded: Bool, critical: I64) -> I64:
    """Rows of one request's spans of the ``critical`` traces not forwarded yet, now marked forwarded."""
    wanted = np.sort(critical)
    rows = np.empty(keys.size, dtype=np.int64)
    taken = 0
    for i in range(keys.size):
        if forwarded[i]:
            continue
        j = np.searchsorted(wanted, keys[i])
        if j < wanted.size and wanted[j] == keys[i]:
            forwarded[i] = True
            rows[taken] = i
            taken += 1
    return rows[:taken]


@_jit
def set_add(table: I64, bits: int, keys: I64) -> int:
    """Insert ``keys`` (the caller has room for all); the number not there before."""
    mask = table.shape[0] - 1
    added = 0
    for n in range(keys.size):
        key = keys[n]
        i = _home(key, bits)
        while table[i, USED] != 0 and table[i, KEY] != key:
            i = (i + 1) & mask
        if table[i, USED] == 0:
            table[i, KEY] = key
            table[i, USED] = 1
            added += 1
    return added


@_jit
def set_remove(table: I64, bits: int, keys: I64) -> int:
    """Remove ``keys``; the number that were there."""
    removed = 0
    for n in range(keys.size):
        i = _find(table, bits, keys[n])
        if i >= 0:
            _remove(table, bits, i)
            removed += 1
    return removed


@_jit
def set_contains(table: I64, bits: int, keys: I64) -> Bool:
    """Which of ``keys`` are in the table."""
    out = np.zeros(keys.size, dtype=np.bool_)
    for n in range(keys.size):
        out[n] = _find(table, bits, keys[n]) >= 0
    return out


def warm_up() -> None:
    """Compile (or load from the cache) every kernel for the argument types the callers pass."""
    bits = 4
    table = np.zeros((1 << bits, BUFFER_COLUMNS), dtype=np.int64)
    pair_key, pair_spans, pair_serial, pair_next = (np.zeros(4, dtype=np.int64) for _ in range(4))
    keys = np.array([3, -5, 3], dtype=np.int64)
    stop, _, _ = buffer_add(table, bits, pair_key, pair_spans, pair_serial, pair_next, 0, 0, keys, 0, 1, 8)
    buffer_spans(table, bits, keys)
    buffer_serials(table, bits, pair_serial, pair_next, 0, keys)
    buffer_evict(table, bits, pair_key, pair_spans, pair_next, 0, 0, stop)
    recall_rows(keys, np.zeros(keys.size, dtype=np.bool_), keys[:1])
    rehash(table, np.zeros_like(table), bits)
    members = np.zeros((1 << bits, SET_COLUMNS), dtype=np.int64)
    set_add(members, bits, keys)
    set_contains(members, bits, keys)
    set_remove(members, bits, keys)
    rehash(members, np.zeros_like(members), bits)
