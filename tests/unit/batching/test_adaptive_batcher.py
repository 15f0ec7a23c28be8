"""The adaptive batcher on a virtual clock: exact timings, independent of machine speed."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pytest

from otelai.batching.adaptive import AdaptiveBatcher, BatcherStopped
from tests.unit.batching.virtual_time import run_virtual

Request = tuple[int, int]  # (sequence number, items)


@dataclass
class Model:
    """A synthetic model whose batch costs ``a + b * n`` virtual seconds."""

    a: float
    b: float
    batches: list[list[Request]] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    latencies: list[tuple[float, float]] = field(default_factory=list)  # (done, latency)
    enqueued: dict[int, float] = field(default_factory=dict)

    async def process(self, batch: list[Request]) -> None:
        loop = asyncio.get_running_loop()
        self.starts.append(loop.time())
        self.batches.append(batch)
        await asyncio.sleep(self.a + self.b * sum(items for _, items in batch))
        done = loop.time()
        self.latencies.extend((done, done - self.enqueued[seq]) for seq, _ in batch)

    def sizes(self) -> list[int]:
        return [sum(items for _, items in batch) for batch in self.batches]

    def p99_after(self, start: float) -> float:
        return float(np.percentile([lat for done, lat in self.latencies if done >= start], 99))


def _items(request: Request) -> int:
    return request[1]


async def _load(
    batcher: AdaptiveBatcher[Request], model: Model, *, items: int, interval: float, until: float
) -> int:
    """Offer a request of ``items`` every ``interval`` seconds until ``until``; return how many."""
    loop = asyncio.get_running_loop()
    seq = 0
    while loop.time() < until:
        model.enqueued[seq] = loop.time()
        assert batcher.offer((seq, items))
        seq += 1
        await asyncio.sleep(interval)
    return seq


def test_sparse_requests_do_not_wait_for_company_that_is_not_coming() -> None:
    model = Model(a=0.0005, b=2e-6)

    async def main() -> None:
        batcher = AdaptiveBatcher(model.process, size_of=_items, max_wait=0.002)
        await batcher.start()
        await _load(batcher, model, items=8, interval=0.005, until=0.5)
        assert await batcher.drain(1.0)
        await batcher.stop()

    run_virtual(main())
    assert set(model.sizes()) == {8}
    # One request every 5 ms, a 2 ms wait: waiting would add 2 ms to every request for nothing.
    waits = np.array(model.starts) - np.array([model.enqueued[b[0][0]] for b in model.batches])
    # (once the arrival rate is measured: the first few batches still wait)
    settled = np.array(model.starts) > 0.05
    assert waits[settled] == pytest.approx(0.0, abs=1e-9)
    settled_latency = [lat for done, lat in model.latencies if done > 0.1]
    assert max(settled_latency) == pytest.approx(0.0005 + 8 * 2e-6)


def test_moderate_load_closes_batches_by_wait() -> None:
    model = Model(a=0.0005, b=2e-6)

    async def main() -> None:
        batcher = AdaptiveBatcher(model.process, size_of=_items, max_wait=0.002)
        await batcher.start()
        await _load(batcher, model, items=8, interval=0.0005, until=0.5)
        assert await batcher.drain(1.0)
        await batcher.stop()

    run_virtual(main())
    # A request every 0.5 ms: the first request of a batch waits up to 2 ms and finds company.
    late = [size for size, start in zip(model.sizes()[:-1], model.starts, strict=False) if start > 0.1]
    assert min(late) >= 4 * 8
    waits = np.array(model.starts) - np.array([model.enqueued[b[0][0]] for b in model.batches])
    assert waits.max() <= 0.002 + 1e-9


def test_high_load_grows_batches() -> None:
    model = Model(a=0.0005, b=1e-6)

    async def main() -> int:
        batcher = AdaptiveBatcher(model.process, size_of=_items, max_queued_items=1 << 20)
        await batcher.start()
        await _load(batcher, model, items=64, interval=0.0001, until=1.0)
        assert await batcher.drain(1.0)
        target = batcher.controller.target
        await batcher.stop()
        return target

    target = run_virtual(main())
    sizes = model.sizes()[:-1]  # the last batch is what drain flushed
    late = [size for size, start in zip(sizes, model.starts, strict=False) if start > 0.5]
    assert min(late) >= 1000  # 640k items/s: big batches are the only way to keep up
    assert target > 1000
    assert model.p99_after(0.5) < 0.010


def test_cost_rise_shrinks_batches_and_p99_returns_under_target() -> None:
    model = Model(a=0.0005, b=1e-6)
    violations: list[int] = []

    async def main() -> tuple[int, int, float, float]:
        batcher = AdaptiveBatcher(
            model.process,
            size_of=_items,
            max_wait=0.006,
            latency_target_p99=0.010,
            on_violation=violations.append,
        )
        await batcher.start()
        # A request every 4 ms: with a 6 ms wait, a batch waits for the next one.
        await _load(batcher, model, items=32, interval=0.004, until=2.0)
        before = (batcher.controller.target, batcher.controller.wait)
        model.b = 100e-6  # the backend got 100x slower per item (say, a fallback to CPU)
        await _load(batcher, model, items=32, interval=0.004, until=6.0)
        after = (batcher.controller.target, batcher.controller.wait)
        assert await batcher.drain(1.0)
        await batcher.stop()
        return before[0], after[0], before[1], after[1]

    target_before, target_after, wait_before, wait_after = run_virtual(main())
    assert target_after < target_before
    assert wait_after < wait_before
    assert sum(violations) > 0  # the rise was felt ...
    assert model.p99_after(4.0) <= 0.010  # ... and corrected


def test_stall_counts_violations_and_shrinks_target() -> None:
    model = Model(a=0.0005, b=1e-6)
    violations: list[int] = []
    targets: list[tuple[float, int]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        batcher: AdaptiveBatcher[Request] = AdaptiveBatcher(
            model.process,
            size_of=_items,
            on_violation=violations.append,
            on_batch=lambda n, seconds: targets.append((loop.time(), batcher.controller.target)),
            max_queued_items=1 << 20,
        )
        await batcher.start()
        await _load(batcher, model, items=64, interval=0.0002, until=1.0)
        model.a = 0.030  # a 30 ms stall on every batch for a while
        await _load(batcher, model, items=64, interval=0.0002, until=1.05)
        model.a = 0.0005
        await _load(batcher, model, items=64, interval=0.0002, until=2.0)
        assert await batcher.drain(1.0)
        await batcher.stop()

    run_virtual(main())
    before = [target for t, target in targets if t < 1.0]
    during = [target for t, target in targets if 1.0 <= t < 1.2]
    assert sum(violations) > 0
    assert min(during) <= before[-1] // 2
    assert model.p99_after(1.5) < 0.010


def test_batch_closes_at_target_without_waiting() -> None:
    model = Model(a=0.001, b=0.0)

    async def main() -> None:
        batcher = AdaptiveBatcher(model.process, size_of=_items, min_batch_size=64, max_wait=1.0)
        await batcher.start()
        for seq in range(4):
            model.enqueued[seq] = 0.0
            batcher.offer((seq, 16))
        await asyncio.sleep(0.01)
        await batcher.stop()

    run_virtual(main())
    assert model.sizes() == [64]
    assert model.starts == [0.0]  # full at once: no wait for max_wait


def test_order_preserved_and_requests_never_split() -> None:
    model = Model(a=0.0002, b=1e-6)
    sizes = [1 + (seq * 37) % 200 for seq in range(400)]

    async def main() -> None:
        batcher = AdaptiveBatcher(model.process, size_of=_items, min_batch_size=100, max_batch_size=300)
        await batcher.start()
        for seq, size in enumerate(sizes):
            model.enqueued[seq] = asyncio.get_running_loop().time()
            assert batcher.offer((seq, size))
            if seq % 7 == 0:
                await asyncio.sleep(0.0003)
        assert await batcher.drain(1.0)
        await batcher.stop()

    run_virtual(main())
    flat = [request for batch in model.batches for request in batch]
    assert flat == list(enumerate(sizes))
    for batch in model.batches:
        assert len(batch) == 1 or sum(items for _, items in batch) <= 300


def test_big_request_makes_a_batch_of_its_own() -> None:
    model = Model(a=0.0, b=0.0)

    async def main() -> None:
        batcher = AdaptiveBatcher(
            model.process, size_of=_items, max_batch_size=100, min_batch_size=10, max_queued_items=50
        )
        await batcher.start()
        assert batcher.offer((0, 500))  # bigger than the queue, but the queue is empty
        assert not batcher.offer((1, 1))
        assert await batcher.drain(1.0)
        await batcher.stop()

    run_virtual(main())
    assert model.batches == [[(0, 500)]]


def test_back_pressure_when_full_then_room_again() -> None:
    model = Model(a=0.010, b=0.0)

    async def main() -> None:
        batcher = AdaptiveBatcher(model.process, size_of=_items, max_queued_items=100)
        accepted = [batcher.offer((seq, 10)) for seq in range(12)]
        assert accepted == [True] * 10 + [False] * 2
        assert batcher.queued_items == 100
        await batcher.start()
        assert await batcher.drain(1.0)
        assert batcher.queued_items == 0
        assert batcher.offer((12, 10))
        assert await batcher.drain(1.0)
        await batcher.stop()

    run_virtual(main())
    assert [seq for batch in model.batches for seq, _ in batch] == [*range(10), 12]


def test_drain_times_out_when_processing_is_slow() -> None:
    model = Model(a=5.0, b=0.0)

    async def main() -> None:
        batcher = AdaptiveBatcher(model.process, size_of=_items, on_error=lambda items, exc: None)
        await batcher.start()
        batcher.offer((0, 1))
        assert not await batcher.drain(1.0)
        assert await batcher.drain(10.0)
        await batcher.stop()

    run_virtual(main())


def test_stop_hands_in_flight_and_queued_requests_to_on_error() -> None:
    model = Model(a=1.0, b=0.0)
    failed: list[tuple[list[Request], BaseException]] = []

    def on_error(items: Sequence[Request], exc: BaseException) -> None:
        failed.append((list(items), exc))

    async def main() -> None:
        batcher = AdaptiveBatcher(
            model.process, size_of=_items, min_batch_size=1, max_batch_size=1, on_error=on_error
        )
        await batcher.start()
        for seq in range(3):
            batcher.offer((seq, 1))
        await asyncio.sleep(0.5)  # request 0 is being processed
        await batcher.stop()
        assert not batcher.offer((9, 1))

    run_virtual(main())
    assert [items for items, _ in failed] == [[(0, 1)], [(1, 1), (2, 1)]]
    assert all(isinstance(exc, BatcherStopped) for _, exc in failed)


def test_failing_process_reports_requests_and_batcher_carries_on() -> None:
    failed: list[tuple[list[Request], BaseException]] = []
    processed: list[Request] = []

    async def process(batch: list[Request]) -> None:
        await asyncio.sleep(0.001)
        if any(seq == 1 for seq, _ in batch):
            raise ValueError("model exploded")
        processed.extend(batch)

    def on_error(items: Sequence[Request], exc: BaseException) -> None:
        failed.append((list(items), exc))

    batch_sizes: list[int] = []

    async def main() -> None:
        batcher = AdaptiveBatcher(
            process,
            size_of=_items,
            min_batch_size=1,
            max_batch_size=1,
            on_error=on_error,
            on_batch=lambda n, seconds: batch_sizes.append(n),
        )
        await batcher.start()
        for seq in range(3):
            batcher.offer((seq, 1))
        assert await batcher.drain(1.0)
        await batcher.stop()

    run_virtual(main())
    assert processed == [(0, 1), (2, 1)]
    assert len(failed) == 1
    assert failed[0][0] == [(1, 1)]
    assert isinstance(failed[0][1], ValueError)
    assert batch_sizes == [1, 1, 1]


def test_admission_under_overload_starts_every_batch_before_its_requests_are_overdue() -> None:
    # 1 ms + 10 us an item: about 900 items a second fit; 16 callers offer 64 items every ms.
    model = Model(a=0.001, b=10e-6)
    held = 0

    async def caller(batcher: AdaptiveBatcher[Request], first: int, until: float) -> None:
        nonlocal held
        loop = asyncio.get_running_loop()
        seq = first
        while loop.time() < until:
            held += not batcher.has_room(64)
            if await batcher.wait_for_room(64, timeout=0.05):
                model.enqueued[seq] = loop.time()
                assert batcher.offer((seq, 64))
                seq += 1
            await asyncio.sleep(0.001)

    async def main() -> None:
        batcher = AdaptiveBatcher(model.process, size_of=_items, latency_target_p99=0.010)
        await batcher.start()
        await asyncio.gather(*(caller(batcher, i * 1_000_000, 2.0) for i in range(16)))
        assert await batcher.drain(1.0)
        await batcher.stop()

    run_virtual(main())
    assert held > 0  # more was offered than fits: callers were held at admission
    late = [(start, batch) for start, batch in zip(model.starts, model.batches, strict=True) if start > 0.5]
    # Nothing admitted waits in the queue past the target (it would be forwarded unscored) ...
    assert max(start - model.enqueued[seq] for start, batch in late for seq, _ in batch) <= 0.010
    # ... and batches stay big enough to amortise the per-batch cost.
    assert np.mean([len(batch) for _, batch in late]) >= 3
    assert model.p99_after(0.5) <= 0.020


def test_has_room_before_the_model_is_fitted_and_when_idle() -> None:
    model = Model(a=0.001, b=10e-6)

    async def main() -> tuple[bool, bool, bool]:
        batcher = AdaptiveBatcher(model.process, size_of=_items, latency_target_p99=0.010)
        unfitted = batcher.has_room(1_000_000)  # idle, unfitted
        await batcher.start()
        await _load(batcher, model, items=64, interval=0.005, until=0.2)
        assert await batcher.drain(1.0)
        idle = batcher.has_room(1_000_000)  # alone, any request is taken
        model.enqueued[-1] = 0.0
        batcher.offer((-1, 2000))  # 21 ms of work queued
        crowded = batcher.has_room(64)
        await batcher.stop()
        return unfitted, idle, crowded

    assert run_virtual(main()) == (True, True, False)


@dataclass
class Worker:
    """A model in another process: ``process`` hands the batch on and returns a future; the
    worker scores batches one after the other, ``a + b * n`` virtual seconds each."""

    a: float
    b: float
    queue: asyncio.Queue[tuple[list[Request], asyncio.Future[None]]] = field(default_factory=asyncio.Queue)
    out: int = 0  # batches handed on and not back
    most_out: int = 0
    spans: list[tuple[float, float, int]] = field(default_factory=list)  # (start, end, items)
    latencies: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)  # enqueue to the start in the worker
    enqueued: dict[int, float] = field(default_factory=dict)

    async def process(self, batch: list[Request]) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.out += 1
        self.most_out = max(self.most_out, self.out)
        self.queue.put_nowait((batch, done))
        return done

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch, done = await self.queue.get()
            start = loop.time()
            items = sum(n for _, n in batch)
            self.waits.extend(start - self.enqueued[seq] for seq, _ in batch)
            await asyncio.sleep(self.a + self.b * items)
            self.spans.append((start, loop.time(), items))
            self.latencies.extend(loop.time() - self.enqueued[seq] for seq, _ in batch)
            self.out -= 1
            done.set_result(None)


def test_handed_on_batches_keep_the_worker_busy_and_the_model_learns_its_cost() -> None:
    # 1 ms + 10 us an item in the worker; 16 callers offer 64 items every ms (overload).
    worker = Worker(a=0.001, b=10e-6)

    async def caller(batcher: AdaptiveBatcher[Request], first: int, until: float) -> None:
        loop = asyncio.get_running_loop()
        seq = first
        while loop.time() < until:
            if await batcher.wait_for_room(64, timeout=0.05):
                worker.enqueued[seq] = loop.time()
                assert batcher.offer((seq, 64))
                seq += 1
            await asyncio.sleep(0.001)

    async def main() -> AdaptiveBatcher[Request]:
        runner = asyncio.create_task(worker.run())
        batcher = AdaptiveBatcher(worker.process, size_of=_items, latency_target_p99=0.010, depth=2)
        await batcher.start()
        await asyncio.gather(*(caller(batcher, i * 1_000_000, 2.0) for i in range(16)))
        assert await batcher.drain(1.0)
        assert worker.out == 0  # drained: every handed-on batch came back
        await batcher.stop()
        runner.cancel()
        return batcher

    batcher = run_virtual(main())
    assert worker.most_out == 2  # never more than the depth out at once
    late = [span for span in worker.spans if span[0] > 0.5]
    # Under overload the worker never waits for the next batch: each starts as the last ends.
    gaps = [later[0] - earlier[1] for earlier, later in itertools.pairwise(late)]
    assert max(gaps) == pytest.approx(0.0, abs=1e-9)
    # The model prices a batch at its time in the worker, not at the moment it took to hand on.
    model = batcher.controller.model
    assert model is not None
    assert model.cost(1000) == pytest.approx(0.001 + 1000 * 10e-6, rel=0.05)
    # Admission counts what is in the worker: no request waits past the target before the
    # worker starts it (it would be forwarded unscored), and they finish near the target.
    assert max(worker.waits[len(worker.waits) // 4 :]) <= 0.010
    assert float(np.percentile(worker.latencies[len(worker.latencies) // 2 :], 99)) <= 0.020
