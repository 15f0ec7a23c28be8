"""CPU cost per span of the trace buffer's per-batch calls (otelai/decision/trace_buffer.py).

Usage::

    .venv/bin/python benchmarks/trace_buffer.py --out benchmarks/results/trace_buffer.json
    .venv/bin/python benchmarks/trace_buffer.py --rates 100000 --requests 1 --critical 1 --rounds 3

The stream: requests of ``--spans`` (512) spans over ``--traces`` (25) traces each, every
request with trace ids never seen before (as the hop benchmark's load generator sends them),
``--request-bytes`` (240 KB, the hop workload's size) of request bytes each, arriving at
``--rates`` spans per second on a simulated clock, into a buffer with ``wait`` 2 s and
``max_bytes`` 64 MiB: at 50k spans/s the wait bounds the window, at 200k the bytes do.

Each batch of ``--requests`` requests makes the calls ``otelai.scoring.traces`` makes, in its
order: ``span_counts`` of the batch's critical traces, ``CriticalTraces.add`` of them,
``contains`` of every span's key (the followed set starts with ``--followed`` (5000) traces;
the default ``max_critical_traces`` is 10000), ``recall`` of the critical traces, then
``add`` of each request with 5% of its spans forwarded. ``--critical`` (``0,1``) gives the
runs: 0, batches without critical traces (most batches of a live hop: the buffer's cost is
then ``add``), and n, batches with n critical traces of their own plus n still in the window
from ``--back`` (50) requests earlier (every batch: more than a live hop sees).

Three implementations run side by side on the same stream, rounds interleaved: ``old`` (the
per-trace dict bookkeeping, copied below for this comparison only), ``new`` (the compiled
hash tables) and ``numpy`` (the same code without numba, ``OTELAI_TRACE_INDEX=numpy``). The
window is filled before timing. Each round times ``--batches`` batches with
``time.process_time`` (CPU of this process, so other load on the machine barely moves it);
the JSON has microseconds of CPU a span (median and best round) and the share of each call.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from measure import machine_info

from otelai.decision import trace_buffer
from otelai.decision.trace_buffer import CriticalTraces, TraceBuffer

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]

WAIT_S = 2.0
MAX_BYTES = 64 * 1024 * 1024
TTL_S = 60.0
MAX_TRACES = 10_000
OPERATIONS = ("span_counts", "critical_add", "contains", "recall", "add")


# --- The implementation before the compiled index, verbatim but for names: the baseline. ---


@dataclass(slots=True)
class _OldEntry:
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


class OldTraceBuffer:
    """``TraceBuffer`` with per-trace Python dicts (the implementation this replaced)."""

    def __init__(self, *, wait: float, max_bytes: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.wait = wait
        self.max_bytes = max_bytes
        self._clock = clock
        self._entries: deque[_OldEntry] = deque()
        self._index: dict[int, list[int]] = {}
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
        if self.wait <= 0 or self.max_bytes <= 0:
            return
        self._serial += 1
        entry = _OldEntry(
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
        self._evict()
        spans = self._spans
        return np.fromiter((spans.get(key, 0) for key in keys.tolist()), dtype=np.int64, count=len(keys))

    def recall(self, critical: U64) -> list[Any]:
        self._evict()
        out: list[Any] = []
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
                trace_buffer.Recalled(
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


class OldCriticalTraces:
    """``CriticalTraces`` with a sorted array rebuilt after every change (the one this replaced)."""

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
        now = self._clock()
        while self._expiry:
            key, until = next(iter(self._expiry.items()))
            if until >= now:
                break
            del self._expiry[key]
            self._dirty = True
        if self._dirty:
            self._active = np.sort(np.fromiter(self._expiry, dtype=np.uint64, count=len(self._expiry)))
            self._dirty = False
        active = self._active
        if not len(active):
            return np.zeros(len(keys), dtype=np.bool_)
        slot = np.minimum(np.searchsorted(active, keys), len(active) - 1)
        found: Bool = active.take(slot) == keys
        return found


# --- The benchmark. ---


class Buffer(Protocol):
    def __len__(self) -> int: ...
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
    ) -> None: ...
    def span_counts(self, keys: U64) -> I64: ...
    def recall(self, critical: U64) -> list[Any]: ...


class Followed(Protocol):
    def add(self, keys: U64) -> None: ...
    def contains(self, keys: U64) -> Bool: ...


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Request:
    keys: U64
    start: I64
    end: I64
    resource: I64
    scope: I64
    index: I64
    forwarded: Bool


class Stream:
    """Requests with fresh trace ids, and each batch's critical traces (deterministic from ``seed``)."""

    def __init__(self, seed: int, spans: int, traces: int, critical: int, back: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.spans, self.traces, self.critical, self.back = spans, traces, critical, back
        self.history: deque[U64] = deque(maxlen=back + 1)

    def request(self) -> Request:
        rng, n = self.rng, self.spans
        ids = rng.integers(0, 2**64, size=self.traces, dtype=np.uint64, endpoint=False)
        keys = ids[np.sort(rng.integers(0, self.traces, size=n))]  # a trace's spans together
        rows = np.arange(n, dtype=np.int64)
        self.history.append(ids)
        return Request(keys, rows * 100, rows * 100 + 90, rows // 64, rows // 128, rows, rng.random(n) < 0.05)

    def criticals(self, batch: list[Request]) -> U64:
        """``critical`` traces of this batch and as many from ``back`` requests earlier."""
        now = np.concatenate([r.keys for r in batch])
        earlier = self.history[0]
        picked = np.concatenate(
            [self.rng.choice(now, self.critical), self.rng.choice(earlier, self.critical)]
        )
        return np.unique(picked)


def run_batches(
    buffer: Buffer,
    followed: Followed,
    clock: Clock,
    batches: list[tuple[list[Request], U64]],
    data: bytes,
    step_s: float,
    spent: dict[str, float],
) -> None:
    """The calls ``TraceProcessor`` makes per batch, each timed into ``spent``."""
    timer = time.process_time
    for batch, critical in batches:
        keys = np.concatenate([r.keys for r in batch])
        t0 = timer()
        buffer.span_counts(critical)
        t1 = timer()
        followed.add(critical)
        t2 = timer()
        followed.contains(keys)
        t3 = timer()
        buffer.recall(critical)
        t4 = timer()
        for r in batch:
            clock.now += step_s
            buffer.add(data, r.keys, r.start, r.end, r.resource, r.scope, r.index, r.forwarded)
        t5 = timer()
        for name, seconds in zip(OPERATIONS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            spent[name] += seconds


def make(kind: str, clock: Clock) -> tuple[Buffer, Followed]:
    if kind == "old":
        return (
            OldTraceBuffer(wait=WAIT_S, max_bytes=MAX_BYTES, clock=clock),
            OldCriticalTraces(ttl=TTL_S, max_traces=MAX_TRACES, clock=clock),
        )
    os.environ[trace_buffer.INDEX_ENV] = "numpy" if kind == "numpy" else "auto"
    trace_buffer._compiled.cache_clear()
    try:
        return (
            TraceBuffer(wait=WAIT_S, max_bytes=MAX_BYTES, clock=clock),
            CriticalTraces(ttl=TTL_S, max_traces=MAX_TRACES, clock=clock),
        )
    finally:
        del os.environ[trace_buffer.INDEX_ENV]
        trace_buffer._compiled.cache_clear()


def measure(args: argparse.Namespace, rate: float, requests: int, critical: int) -> dict[str, Any]:
    kinds = args.kinds.split(",")
    data = bytes(args.request_bytes)
    step_s = args.spans / rate
    stream = Stream(args.seed, args.spans, args.traces, critical, args.back)
    entry = args.request_bytes + args.spans * (6 * 8 + 1)
    window = min(int(WAIT_S / step_s), MAX_BYTES // entry) + 1
    warm = [stream.request() for _ in range(window + args.back + 1)]
    rounds = []
    for _ in range(args.rounds):
        batches = []
        for _ in range(args.batches):
            batch = [stream.request() for _ in range(requests)]
            batches.append((batch, stream.criticals(batch)))
        rounds.append(batches)
    followed_keys = np.random.default_rng(args.seed + 1).integers(0, 2**64, args.followed, dtype=np.uint64)
    states = {}
    for kind in kinds:
        clock = Clock()
        buffer, followed = make(kind, clock)
        followed.add(followed_keys)
        for r in warm:
            clock.now += step_s
            buffer.add(data, r.keys, r.start, r.end, r.resource, r.scope, r.index, r.forwarded)
        states[kind] = (clock, buffer, followed)
    per_span: dict[str, list[float]] = {kind: [] for kind in kinds}
    spent = {kind: dict.fromkeys(OPERATIONS, 0.0) for kind in kinds}
    spans = args.batches * requests * args.spans
    for batches in rounds:
        for kind in kinds:  # interleaved, so drift in the machine's speed hits all alike
            clock, buffer, followed = states[kind]
            begin = time.process_time()
            run_batches(buffer, followed, clock, batches, data, step_s, spent[kind])
            per_span[kind].append((time.process_time() - begin) / spans * 1e6)
    result: dict[str, Any] = {
        "spans_per_s": rate,
        "requests_per_batch": requests,
        "spans_per_batch": requests * args.spans,
        "critical_per_batch": critical,
        "window_requests": len(states[kinds[0]][1]),
    }
    for kind in kinds:
        total = sum(spent[kind].values()) or 1.0
        result[kind] = {
            "us_per_span_median": round(statistics.median(per_span[kind]), 4),
            "us_per_span_best": round(min(per_span[kind]), 4),
            "rounds": [round(x, 4) for x in per_span[kind]],
            "share": {name: round(spent[kind][name] / total, 3) for name in OPERATIONS},
        }
    if "old" in kinds:
        for kind in kinds:
            if kind != "old":
                result[f"speedup_{kind}"] = round(
                    result["old"]["us_per_span_median"] / result[kind]["us_per_span_median"], 2
                )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rates", default="50000,200000", help="spans per second, comma-separated")
    parser.add_argument("--requests", default="1,4", help="requests per batch, comma-separated")
    parser.add_argument("--kinds", default="old,new,numpy", help="implementations, comma-separated")
    parser.add_argument("--batches", type=int, default=200, help="batches a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--spans", type=int, default=512)
    parser.add_argument("--traces", type=int, default=25, help="traces a request")
    parser.add_argument("--request-bytes", type=int, default=240_000)
    parser.add_argument(
        "--critical", default="0,1", help="critical traces a batch (and as many earlier), comma-separated"
    )
    parser.add_argument("--back", type=int, default=50, help="requests back the earlier critical traces are")
    parser.add_argument("--followed", type=int, default=5000, help="critical traces followed at the start")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    results = []
    for critical in (int(x) for x in args.critical.split(",")):
        for rate in (float(x) for x in args.rates.split(",")):
            for requests in (int(x) for x in args.requests.split(",")):
                result = measure(args, rate, requests, critical)
                results.append(result)
                line = "  ".join(
                    f"{kind} {result[kind]['us_per_span_median']:.4f}" for kind in args.kinds.split(",")
                )
                print(
                    f"critical {critical}, {rate:>9,.0f} spans/s, {requests} req/batch,"
                    f" window {result['window_requests']} requests: us/span CPU  {line}"
                )
    if args.out:
        document = {
            "benchmark": "trace_buffer",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "parameters": vars(args) | {"out": str(args.out)},
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
