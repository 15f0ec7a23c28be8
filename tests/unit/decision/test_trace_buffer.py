"""The trace buffer (earlier spans of critical traces) and the followed critical traces."""

from __future__ import annotations

import numpy as np
import pytest

from otelai.decision.trace_buffer import CriticalTraces, TraceBuffer, trace_keys


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def ids(*keys: int) -> np.ndarray:
    return np.array(keys, dtype=np.uint64)


def add(buffer: TraceBuffer, data: bytes, keys: list[int], forwarded: list[bool] | None = None) -> None:
    n = len(keys)
    rows = np.arange(n, dtype=np.int64)
    buffer.add(
        data,
        ids(*keys),
        rows * 10,
        rows * 10 + 10,
        np.zeros(n, dtype=np.int64),
        np.zeros(n, dtype=np.int64),
        rows,
        np.array(forwarded if forwarded is not None else [False] * n, dtype=np.bool_),
    )


def test_trace_keys_are_per_trace_and_xor_the_halves() -> None:
    trace_ids = np.frombuffer(bytes(range(16)) * 2 + bytes(range(1, 17)), dtype=np.uint8).reshape(3, 16)
    keys = trace_keys(trace_ids)
    assert keys.dtype == np.uint64 and keys.shape == (3,)
    assert keys[0] == keys[1] != keys[2]
    halves = np.frombuffer(bytes(range(16)), dtype=np.uint64)
    assert keys[0] == halves[0] ^ halves[1]
    assert trace_keys(np.zeros((0, 16), dtype=np.uint8)).shape == (0,)


def test_recall_returns_the_dropped_spans_of_critical_traces_within_the_wait() -> None:
    clock = Clock()
    buffer = TraceBuffer(wait=5.0, max_bytes=1 << 20, clock=clock)
    add(buffer, b"first", [1, 2, 1, 3], forwarded=[False, False, True, False])
    clock.now += 2
    add(buffer, b"second", [3, 1, 4])
    recalled = buffer.recall(ids(1, 3))
    assert [(r.data, r.index.tolist()) for r in recalled] == [(b"first", [0, 3]), (b"second", [0, 1])]
    assert recalled[0].start.tolist() == [0, 30]
    assert recalled[0].end.tolist() == [10, 40]
    assert buffer.recalled_spans == 4


def test_a_span_is_recalled_once() -> None:
    buffer = TraceBuffer(wait=5.0, max_bytes=1 << 20, clock=Clock())
    add(buffer, b"req", [7, 7, 8])
    assert [r.index.tolist() for r in buffer.recall(ids(7))] == [[0, 1]]
    assert buffer.recall(ids(7)) == []
    assert [r.index.tolist() for r in buffer.recall(ids(7, 8))] == [[2]]
    assert buffer.recall(ids()) == []


def test_requests_older_than_the_wait_are_evicted() -> None:
    clock = Clock()
    buffer = TraceBuffer(wait=5.0, max_bytes=1 << 20, clock=clock)
    add(buffer, b"old", [1])
    clock.now += 3
    add(buffer, b"new", [1])
    clock.now += 2.5  # "old" is 5.5 s old, "new" 2.5 s
    assert [r.data for r in buffer.recall(ids(1))] == [b"new"]
    assert len(buffer) == 1
    clock.now += 10
    assert buffer.recall(ids(1)) == []
    assert len(buffer) == 0 and buffer.bytes == 0


def test_bytes_bound_evicts_the_oldest_first() -> None:
    clock = Clock()
    probe = TraceBuffer(wait=5.0, max_bytes=1 << 20, clock=clock)
    add(probe, b"x" * 1000, [1, 2])
    entry_size = probe.bytes
    assert entry_size > 1000  # the bytes and the per-span index arrays
    buffer = TraceBuffer(wait=5.0, max_bytes=3 * entry_size, clock=clock)
    for i in range(5):
        add(buffer, bytes([i]) * 1000, [i + 1, 100])
        assert buffer.bytes <= buffer.max_bytes
    assert len(buffer) == 3
    assert buffer.bytes == 3 * entry_size
    assert [r.data[:1] for r in buffer.recall(ids(100))] == [b"\x02", b"\x03", b"\x04"]


def test_one_request_larger_than_the_bound_is_not_kept() -> None:
    buffer = TraceBuffer(wait=5.0, max_bytes=100, clock=Clock())
    add(buffer, b"x" * 1000, [1])
    assert len(buffer) == 0 and buffer.bytes == 0
    assert buffer.recall(ids(1)) == []


@pytest.mark.parametrize(("wait", "max_bytes"), [(0.0, 1 << 20), (5.0, 0)])
def test_a_disabled_buffer_keeps_nothing(wait: float, max_bytes: int) -> None:
    buffer = TraceBuffer(wait=wait, max_bytes=max_bytes, clock=Clock())
    add(buffer, b"req", [1])
    assert len(buffer) == 0 and buffer.recall(ids(1)) == []


def test_the_buffer_keeps_its_own_copy_of_the_forwarded_flags() -> None:
    buffer = TraceBuffer(wait=5.0, max_bytes=1 << 20, clock=Clock())
    forwarded = np.array([False, False])
    buffer.add(
        b"req",
        ids(1, 1),
        np.zeros(2, dtype=np.int64),
        np.ones(2, dtype=np.int64),
        np.zeros(2, dtype=np.int64),
        np.zeros(2, dtype=np.int64),
        np.arange(2, dtype=np.int64),
        forwarded,
    )
    buffer.recall(ids(1))
    assert not forwarded.any()


def test_critical_traces_are_followed_for_the_ttl() -> None:
    clock = Clock()
    critical = CriticalTraces(ttl=60.0, max_traces=100, clock=clock)
    critical.add(ids(1, 2))
    assert critical.contains(ids(1, 2, 3)).tolist() == [True, True, False]
    clock.now += 30
    critical.add(ids(2))  # seen critical again: followed for another ttl
    clock.now += 31
    assert critical.contains(ids(1, 2)).tolist() == [False, True]
    assert len(critical) == 1
    clock.now += 30
    assert critical.contains(ids(1, 2)).tolist() == [False, False]
    assert len(critical) == 0


def test_critical_traces_are_bounded_oldest_first() -> None:
    critical = CriticalTraces(ttl=60.0, max_traces=3, clock=Clock())
    critical.add(ids(1, 2, 3))
    critical.add(ids(1))  # refreshed: now the newest
    critical.add(ids(4))
    assert len(critical) == 3
    assert critical.contains(ids(1, 2, 3, 4)).tolist() == [True, False, True, True]


def test_nothing_followed_contains_nothing() -> None:
    critical = CriticalTraces(ttl=60.0, max_traces=3, clock=Clock())
    critical.add(ids())
    assert critical.contains(ids(1, 2)).tolist() == [False, False]
    assert critical.contains(ids()).shape == (0,)


def test_span_counts_follow_what_the_window_holds() -> None:
    clock = Clock()
    buffer = TraceBuffer(wait=5.0, max_bytes=1 << 20, clock=clock)
    add(buffer, b"a", [1, 1, 2])
    clock.now += 3
    add(buffer, b"b", [1, 3])
    assert buffer.span_counts(ids(1, 2, 3, 4)).tolist() == [3, 1, 1, 0]
    buffer.recall(ids(1))  # recalled spans are still spans of the trace
    assert buffer.span_counts(ids(1)).tolist() == [3]
    clock.now += 2.5  # "a" leaves
    assert buffer.span_counts(ids(1, 2, 3)).tolist() == [1, 0, 1]
    clock.now += 10
    assert buffer.span_counts(ids(1, 3)).tolist() == [0, 0]
