"""The trace buffer's and the followed traces' key indexes against brute-force specifications.

Both indexes (the compiled hash tables and the numpy fallback) must give exactly what a
buffer that looks at every request for every question gives, keep no key of a request that
left, and shrink back as the window empties.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from otelai.decision import trace_buffer
from otelai.decision.trace_buffer import CriticalTraces, TraceBuffer, _HashIndex, _Pairs, _Table

U64_MAX = 2**64 - 1


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["numba", "numpy"])
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs on the compiled index and on the numpy one."""
    if request.param == "numba":
        pytest.importorskip("numba")
        assert trace_buffer._compiled() is not None
    else:
        monkeypatch.setattr(trace_buffer, "_compiled", lambda: None)
    yield request.param


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables and pair stores that start at a few rows, so that they resize all the time."""
    monkeypatch.setattr(_HashIndex, "MIN_BITS", 1)
    monkeypatch.setattr(_Pairs, "MIN_ROWS", 2)
    monkeypatch.setattr(trace_buffer._KeySet, "MIN_BITS", 1)


@dataclass
class _Request:
    data: bytes
    at: float
    keys: np.ndarray
    rows: np.ndarray
    forwarded: np.ndarray
    size: int


class ReferenceBuffer:
    """What :class:`TraceBuffer` answers, by brute force: every question scans every request."""

    def __init__(self, *, wait: float, max_bytes: int, clock: Clock) -> None:
        self.wait, self.max_bytes, self.clock = wait, max_bytes, clock
        self.requests: list[_Request] = []
        self.bytes = self.recalled_spans = 0

    def add(self, data: bytes, keys: np.ndarray, forwarded: np.ndarray) -> None:
        if self.wait <= 0 or self.max_bytes <= 0:
            return
        n = len(keys)
        size = len(data) + 8 * n * 6 + n  # keys and five int64 columns, the bool flags
        self.requests.append(_Request(data, self.clock(), keys, np.arange(n), forwarded.copy(), size))
        self.bytes += size
        self.evict()

    def evict(self) -> None:
        horizon = self.clock() - self.wait
        while self.requests and (self.requests[0].at < horizon or self.bytes > self.max_bytes):
            self.bytes -= self.requests.pop(0).size

    def span_counts(self, keys: np.ndarray) -> list[int]:
        self.evict()
        return [sum(int(np.count_nonzero(r.keys == key)) for r in self.requests) for key in keys]

    def traces(self) -> int:
        self.evict()
        return len({int(k) for r in self.requests for k in r.keys})

    def recall(self, critical: np.ndarray) -> list[tuple[bytes, list[int]]]:
        self.evict()
        out = []
        for r in self.requests:
            rows = [i for i, key in enumerate(r.keys) if key in set(critical.tolist()) and not r.forwarded[i]]
            if rows:
                r.forwarded[rows] = True
                self.recalled_spans += len(rows)
                out.append((r.data, rows))
        return out


def _add(buffer: TraceBuffer, data: bytes, keys: np.ndarray, forwarded: np.ndarray) -> None:
    rows = np.arange(len(keys), dtype=np.int64)
    buffer.add(data, keys, rows * 10, rows * 10 + 5, rows % 3, rows % 2, rows, forwarded)


def _pool(rng: np.random.Generator, size: int) -> np.ndarray:
    """Trace keys: small ones, ones with the top bit set, random ones."""
    small = np.arange(1, size // 3 + 1, dtype=np.uint64)
    high = np.uint64(U64_MAX) - np.arange(size // 3, dtype=np.uint64)
    return np.concatenate(
        [small, high, rng.integers(0, 2**64, size - len(small) - len(high), dtype=np.uint64)]
    )


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("sizes", ["default", "tiny"])
def test_the_buffer_answers_as_the_brute_force_reference(
    backend: str, sizes: str, seed: int, request: pytest.FixtureRequest
) -> None:
    if sizes == "tiny":
        request.getfixturevalue("tiny")
    rng = np.random.default_rng(seed)
    clock = Clock()
    max_bytes = int(rng.choice([600, 2_000, 1 << 20]))
    buffer = TraceBuffer(wait=5.0, max_bytes=max_bytes, clock=clock)
    reference = ReferenceBuffer(wait=5.0, max_bytes=max_bytes, clock=clock)
    pool = _pool(rng, int(rng.choice([6, 40, 400])))
    fresh = iter(range(10**6, 2 * 10**6))
    for _ in range(150):
        op = rng.random()
        if op < 0.5:
            n = int(rng.integers(0, 30))
            keys = pool[rng.integers(0, len(pool), n)]
            if rng.random() < 0.3:  # some traces never seen again, as live ids
                keys = keys.copy()
                keys[: n // 2] = [next(fresh) for _ in range(n // 2)]
            forwarded = rng.random(n) < 0.2
            data = bytes(rng.integers(0, 256, int(rng.integers(0, 300)), dtype=np.uint8))
            _add(buffer, data, keys, forwarded)
            reference.add(data, keys, forwarded)
        elif op < 0.7:
            keys = pool[rng.integers(0, len(pool), int(rng.integers(0, 5)))]
            assert buffer.span_counts(keys).tolist() == reference.span_counts(keys)
        elif op < 0.85:
            critical = np.unique(pool[rng.integers(0, len(pool), int(rng.integers(0, 4)))])
            got = [(r.data, r.index.tolist()) for r in buffer.recall(critical)]
            assert got == reference.recall(critical)
        else:
            clock.now += float(rng.choice([0.1, 1.0, 3.0]))
        assert buffer.traces == reference.traces()
        assert (len(buffer), buffer.bytes, buffer.recalled_spans) == (
            len(reference.requests),
            reference.bytes,
            reference.recalled_spans,
        )
        assert buffer.bytes <= max_bytes


def test_recalled_rows_carry_their_columns(backend: str) -> None:
    buffer = TraceBuffer(wait=5.0, max_bytes=1 << 20, clock=Clock())
    keys = np.array([5, 6, 5, 7, 5], dtype=np.uint64)
    _add(buffer, b"req", keys, np.array([False, False, True, False, False]))
    (recalled,) = buffer.recall(np.array([7, 5], dtype=np.uint64))  # unsorted critical keys
    assert recalled.index.tolist() == [0, 3, 4]
    assert recalled.start.tolist() == [0, 30, 40]
    assert recalled.end.tolist() == [5, 35, 45]
    assert recalled.resource.tolist() == [0, 0, 1]
    assert recalled.scope.tolist() == [0, 1, 0]


def test_keys_need_not_be_contiguous_or_writable(backend: str) -> None:
    buffer = TraceBuffer(wait=5.0, max_bytes=1 << 20, clock=Clock())
    raw = np.array([1, 9, 2, 9, 1, 9], dtype=np.uint64)
    _add(buffer, b"a", raw[::2], np.zeros(3, dtype=np.bool_))  # a strided view
    frozen = np.frombuffer(np.array([1, 2], dtype=np.uint64).tobytes(), dtype=np.uint64)  # read-only
    assert buffer.span_counts(frozen).tolist() == [2, 1]
    assert [r.index.tolist() for r in buffer.recall(frozen[:1])] == [[0, 2]]


def test_a_long_stream_of_fresh_traces_keeps_the_index_bounded(backend: str) -> None:
    clock = Clock()
    buffer = TraceBuffer(wait=1.0, max_bytes=1 << 30, clock=clock)
    rng = np.random.default_rng(7)
    empty = buffer.index_bytes
    sizes = []
    for step in range(3000):  # 20 requests a second, the window holds about 20
        ids = rng.integers(0, 2**64, 25, dtype=np.uint64)
        keys = ids[rng.integers(0, 25, 64)]
        _add(buffer, b"r", keys, np.zeros(64, dtype=np.bool_))
        clock.now += 0.05
        assert buffer.traces <= 21 * 25
        if step >= 100:
            sizes.append(buffer.index_bytes)
    half = len(sizes) // 2
    assert max(sizes[half:]) <= max(sizes[:half])  # steady: no growth from keys that left
    assert max(sizes) <= 8 * empty
    clock.now += 2.0
    assert buffer.traces == 0 and len(buffer) == 0
    assert buffer.index_bytes == empty  # every table and store back to its first size


def test_a_burst_grows_the_index_and_it_shrinks_back(backend: str) -> None:
    clock = Clock()
    buffer = TraceBuffer(wait=1.0, max_bytes=1 << 30, clock=clock)
    empty = buffer.index_bytes
    keys = np.arange(1, 50_001, dtype=np.uint64)  # 50k traces at once, then quiet
    _add(buffer, b"burst", keys, np.zeros(len(keys), dtype=np.bool_))
    assert buffer.traces == 50_000
    assert buffer.span_counts(keys[[0, -1]]).tolist() == [1, 1]
    assert buffer.index_bytes > 16 * empty
    clock.now += 1.5
    _add(buffer, b"next", keys[:3], np.zeros(3, dtype=np.bool_))
    assert buffer.traces == 3 and len(buffer) == 1
    assert buffer.index_bytes == empty
    assert [r.data for r in buffer.recall(keys[:1])] == [b"next"]


class ReferenceCritical:
    """What :class:`CriticalTraces` answers: a plain ordered dict, scanned."""

    def __init__(self, ttl: float, max_traces: int, clock: Clock) -> None:
        self.ttl, self.max_traces, self.clock = ttl, max_traces, clock
        self.expiry: OrderedDict[int, float] = OrderedDict()

    def add(self, keys: np.ndarray) -> None:
        for key in keys.tolist():
            self.expiry[key] = self.clock() + self.ttl
            self.expiry.move_to_end(key)
        while len(self.expiry) > self.max_traces:
            self.expiry.popitem(last=False)

    def contains(self, keys: np.ndarray) -> list[bool]:
        while self.expiry and next(iter(self.expiry.values())) < self.clock():
            self.expiry.popitem(last=False)
        return [key in self.expiry for key in keys.tolist()]


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("sizes", ["default", "tiny"])
def test_followed_traces_answer_as_the_reference(
    backend: str, sizes: str, seed: int, request: pytest.FixtureRequest
) -> None:
    if sizes == "tiny":
        request.getfixturevalue("tiny")
    rng = np.random.default_rng(seed)
    clock = Clock()
    max_traces = int(rng.choice([3, 50, 10_000]))
    critical = CriticalTraces(ttl=10.0, max_traces=max_traces, clock=clock)
    reference = ReferenceCritical(10.0, max_traces, clock)
    pool = _pool(rng, int(rng.choice([10, 200, 3000])))
    for _ in range(120):
        op = rng.random()
        if op < 0.4:
            keys = pool[rng.integers(0, len(pool), int(rng.integers(0, 40)))]  # repeats too
            critical.add(keys)
            reference.add(keys)
        elif op < 0.8:
            keys = pool[rng.integers(0, len(pool), int(rng.integers(0, 300)))]
            assert critical.contains(keys).tolist() == reference.contains(keys)
        else:
            clock.now += float(rng.choice([0.5, 3.0, 11.0]))
        assert len(critical) == len(reference.expiry)


@pytest.mark.parametrize("home", [0, 15])
def test_keys_that_share_a_slot_are_found_and_removed_in_any_order(home: int) -> None:
    """Long probe runs (a cluster starting at the last slot wraps to the first) survive deletions."""
    pytest.importorskip("numba")
    kernels = trace_buffer._compiled()
    bits = 4
    rng = np.random.default_rng(home)
    candidates = rng.integers(0, 2**64, 20_000, dtype=np.uint64)
    homes = (candidates * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(64 - bits)
    clash = candidates[homes == home][:6]
    others = candidates[homes == (home + 1) % 16][:2]
    keys = np.concatenate([clash, others]).view(np.int64)
    table = _Table(kernels, kernels.SET_COLUMNS, bits)  # 16 slots, 8 keys: load 1/2
    table.live += kernels.set_add(table.rows, table.bits, keys)
    assert table.live == 8
    assert kernels.set_contains(table.rows, table.bits, keys).all()
    left = set(keys.tolist())
    for key in rng.permutation(keys):
        assert kernels.set_remove(table.rows, table.bits, np.array([key])) == 1
        left.discard(int(key))
        found = kernels.set_contains(table.rows, table.bits, keys)
        assert found.tolist() == [int(k) in left for k in keys]
    assert not table.rows[:, kernels.USED].any()


def test_the_hash_table_grows_and_shrinks_with_its_keys() -> None:
    pytest.importorskip("numba")
    kernels = trace_buffer._compiled()
    table = _Table(kernels, kernels.SET_COLUMNS, 3)
    keys = np.random.default_rng(3).integers(0, 2**64, 5000, dtype=np.uint64).view(np.int64)
    for chunk in np.array_split(keys, 50):
        table.reserve(len(chunk))
        table.live += kernels.set_add(table.rows, table.bits, chunk)
        assert 2 * table.live <= table.size
    assert table.live == len(np.unique(keys))
    assert table.size <= 4 * 2 * table.live  # at most twice the size load 1/4 needs
    assert kernels.set_contains(table.rows, table.bits, keys).all()
    for chunk in np.array_split(keys[:4990], 50):
        table.live -= kernels.set_remove(table.rows, table.bits, chunk)
        table.trim()
    assert table.live == 10 and table.size <= 16 * table.live
    found = kernels.set_contains(table.rows, table.bits, keys)
    assert found.tolist() == [False] * 4990 + [True] * 10


def test_the_numba_index_is_used_when_numba_is_there() -> None:
    pytest.importorskip("numba")
    assert isinstance(TraceBuffer(wait=1.0, max_bytes=1 << 20)._index, _HashIndex)
    assert isinstance(CriticalTraces(ttl=1.0, max_traces=10)._members, trace_buffer._KeySet)
