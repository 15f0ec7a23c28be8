"""Log sessions: records grouped by a key (an attribute such as HDFS ``BlockId``, or the trace id).

Session-based log anomaly detection (W. Xu, L. Huang, A. Fox, D. Patterson, M. Jordan,
"Detecting Large-Scale System Problems by Mining Console Logs", SOSP 2009; DeepLog, CCS 2017)
scores a record against the records before it in the same session, and a session by its
template counts when it ends. :class:`Sessions` keeps, per live session, the last ``h`` tokens
and the template count vector, and turns a batch of records into context windows with whole-
batch numpy (one dict lookup per record maps its key to a dense slot). Sessions end when asked
(:meth:`Sessions.close`) or after an idle time, and the oldest are closed past a bound on their
number, so memory stays bounded whatever the key's cardinality.

:func:`record_attribute` reads the key from serialised OTLP log records (``attributes`` field
6 of ``LogRecord``, a ``KeyValue`` whose ``AnyValue`` holds a string) without parsing them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from otelai.features.wire import LEN, equals, tag, walk

I64 = npt.NDArray[np.int64]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
U8 = npt.NDArray[np.uint8]

ATTRIBUTES = tag(6, LEN)  # LogRecord.attributes
TRACE_ID = tag(9, LEN)  # LogRecord.trace_id
KEY, VALUE = tag(1, LEN), tag(2, LEN)  # KeyValue
STRING = tag(1, LEN)  # AnyValue.string_value
PAD = 0  # the token before a session's first record (log_sequence.PAD)


def record_attribute(buf: U8, start: I64, end: I64, name: str) -> list[bytes]:
    """The string value of attribute ``name`` of each record ``buf[start:end]`` (b"" if absent).

    ``name == "trace_id"`` reads the record's trace id instead (16 raw bytes).
    """
    n = int(start.size)
    out = [b""] * n
    if n == 0:
        return out
    fields = walk(buf, start, end)
    raw = buf.tobytes()
    if name == "trace_id":
        rows = fields.last(TRACE_ID, n)
        for record, row in enumerate(rows.tolist()):
            if row >= 0:
                out[record] = raw[int(fields.data[row]) : int(fields.end[row])]
        return out
    rows = fields.rows(ATTRIBUTES)
    if not rows.size:
        return out
    pairs = walk(buf, fields.data.take(rows), fields.end.take(rows))
    key_row = pairs.last(KEY, rows.size)
    has_key = np.flatnonzero(key_row >= 0)
    wanted = equals(buf, pairs.data.take(key_row[has_key]), pairs.end.take(key_row[has_key]), name.encode())
    matched = has_key[wanted]
    value_row = pairs.last(VALUE, rows.size).take(matched)
    present = value_row >= 0
    matched, value_row = matched[present], value_row[present]
    if not matched.size:
        return out
    values = walk(buf, pairs.data.take(value_row), pairs.end.take(value_row))
    string_row = values.last(STRING, matched.size)
    owners = fields.owner.take(rows.take(matched))
    for owner, row in zip(owners.tolist(), string_row.tolist(), strict=True):
        if row >= 0:  # a later attribute of the same name wins, as in a map
            out[owner] = raw[int(values.data[row]) : int(values.end[row])]
    return out


@dataclass(frozen=True, slots=True)
class Closed:
    """Sessions that ended: their keys, last ``h`` tokens and template count vectors."""

    keys: list[bytes]
    windows: I64
    counts: F32


class Sessions:
    """Live sessions: per key the last ``history`` tokens and the counts of each token.

    Parameters
    ----------
    history
        Tokens of context kept per session.
    width
        Length of the count vectors; tokens at or above it count in the last column.
    max_sessions
        Live sessions at most; past it :meth:`expire` closes the least recently seen.
    idle_timeout
        Seconds without a record after which :meth:`expire` closes a session.
    """

    def __init__(
        self, *, history: int, width: int, max_sessions: int = 100_000, idle_timeout: float = 300.0
    ) -> None:
        if history < 1 or width < 1 or max_sessions < 1:
            raise ValueError("history, width and max_sessions must be positive")
        self.history = history
        self.width = width
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self._slot: dict[bytes, int] = {}
        self._key: list[bytes] = []
        self._free: list[int] = []
        self._windows = np.full((64, history), PAD, dtype=np.int64)
        self._counts = np.zeros((64, width), dtype=np.float32)
        self._seen = np.zeros(64, dtype=np.float64)

    def __len__(self) -> int:
        return len(self._slot)

    def _slots(self, keys: Sequence[bytes]) -> I64:
        slot_of = self._slot
        for key in dict.fromkeys(keys):  # new keys, in order of first appearance
            if key and key not in slot_of:
                slot_of[key] = self._allocate(key)
        return np.fromiter((slot_of.get(key, -1) if key else -1 for key in keys), np.int64, len(keys))

    def _allocate(self, key: bytes) -> int:
        if self._free:
            slot = self._free.pop()
            self._key[slot] = key
        else:
            slot = len(self._key)
            self._key.append(key)
            if slot >= self._seen.size:
                self._grow(2 * self._seen.size)
        self._windows[slot] = PAD
        self._counts[slot] = 0.0
        return slot

    def _grow(self, size: int) -> None:
        extra = size - self._seen.size
        self._windows = np.concatenate([self._windows, np.full((extra, self.history), PAD, np.int64)])
        self._counts = np.concatenate([self._counts, np.zeros((extra, self.width), np.float32)])
        self._seen = np.concatenate([self._seen, np.zeros(extra)])

    def step(self, keys: Sequence[bytes], tokens: I64, now: float = 0.0) -> I64:
        """Context windows ``(n, history)`` of a batch of records, then append them.

        A record's window holds the tokens before it in its session, earlier records of the
        same batch included (records are taken in batch order). Records without a key (b"")
        are sessions of their own: their window is all :data:`PAD`.
        """
        h, n = self.history, len(keys)
        windows = np.full((n, h), PAD, dtype=np.int64)
        slots = self._slots(keys)
        rows = np.flatnonzero(slots >= 0)
        if not rows.size:
            return windows
        rows = rows[np.argsort(slots[rows], kind="stable")]
        ordered = slots[rows]
        unique, first, sizes = np.unique(ordered, return_index=True, return_counts=True)
        # One segment per session: its stored window, then its records of this batch.
        seg_start = np.cumsum(h + sizes) - (h + sizes)
        ext = np.empty(int((h + sizes).sum()), dtype=np.int64)
        offsets = np.arange(h)
        ext[(seg_start[:, None] + offsets).ravel()] = self._windows[unique].ravel()
        group = np.repeat(np.arange(unique.size), sizes)
        rank = np.arange(rows.size) - first[group]
        position = seg_start[group] + h + rank
        ext[position] = tokens[rows]
        windows[rows] = ext[position[:, None] - h + offsets]
        self._windows[unique] = ext[(seg_start + sizes)[:, None] + offsets]
        np.add.at(self._counts, (ordered, np.minimum(tokens[rows], self.width - 1)), 1.0)
        self._seen[unique] = now
        return windows

    def close(self, keys: Sequence[bytes]) -> Closed:
        """End the sessions ``keys`` (unknown keys are skipped)."""
        slots = [self._slot[key] for key in dict.fromkeys(keys) if key in self._slot]
        return self._close(np.array(slots, dtype=np.int64))

    def close_all(self) -> Closed:
        return self._close(np.array(sorted(self._slot.values()), dtype=np.int64))

    def expire(self, now: float) -> Closed:
        """Close sessions idle for ``idle_timeout`` and, past ``max_sessions``, the oldest."""
        live = np.array(list(self._slot.values()), dtype=np.int64)
        if not live.size:
            return self._close(live)
        idle = live[self._seen[live] <= now - self.idle_timeout]
        excess = live.size - idle.size - self.max_sessions
        if excess > 0:
            rest = np.setdiff1d(live, idle)
            idle = np.concatenate([idle, rest[np.argsort(self._seen[rest], kind="stable")[:excess]]])
        return self._close(np.sort(idle))

    def _close(self, slots: I64) -> Closed:
        keys = [self._key[slot] for slot in slots.tolist()]
        closed = Closed(keys, self._windows[slots].copy(), self._counts[slots].copy())
        for key, slot in zip(keys, slots.tolist(), strict=True):
            del self._slot[key]
            self._free.append(slot)
        return closed
