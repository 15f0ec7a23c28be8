import asyncio
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import CollectorRegistry

from otelai.config import Batching
from otelai.pipeline import Admission, Payload, Pipeline
from otelai.scoring.stage import ScoringStage
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics


class Box:
    durable = False

    def __init__(self, slots: int = 100) -> None:
        self.name = "box"
        self.slots = slots
        self.items: list[Payload] = []

    def has_room(self, payload: Payload) -> bool:
        return len(self.items) < self.slots

    def put(self, payload: Payload) -> None:
        self.items.append(payload)


class Halver:
    """Keeps the payloads with an even item count; records what it saw."""

    signal = Signal.TRACES

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.batches: list[int] = []
        self.failed_open: list[str] = []
        self.ticks = 0
        self.settled: list[int] = []  # batches seen when settle was called

    def process(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self.fail:
            raise RuntimeError("model broke")
        self.batches.append(len(payloads))
        return [p for p in payloads if p.items % 2 == 0]

    def fail_open(self, payloads: Sequence[Payload], reason: str) -> list[Payload]:
        self.failed_open.append(reason)
        return list(payloads)

    def tick(self, now_ns: int) -> list[Payload]:
        self.ticks += 1
        return [Payload(Signal.METRICS, b"summary", 1)]

    def settle(self) -> None:
        self.settled.append(len(self.batches))


def _setup(processor: Halver, box: Box) -> tuple[Pipeline, ScoringStage, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    pipeline = Pipeline([box], metrics)
    batching = Batching(min_batch_size=1, max_batch_size=64, max_wait="1ms", latency_target="5s")
    stage = ScoringStage(processor, pipeline, batching, metrics, tick_interval=3600)
    pipeline.stages[Signal.TRACES] = stage
    return pipeline, stage, registry


async def test_acknowledges_after_scoring_and_forwards_the_selection() -> None:
    box, processor = Box(), Halver()
    pipeline, stage, registry = _setup(processor, box)
    await stage.start()
    try:
        payloads = [Payload(Signal.TRACES, b"x", n) for n in range(1, 9)]
        results = await asyncio.gather(*(pipeline.submit(p) for p in payloads))
        assert all(r is Admission.ACCEPTED for r in results)
        assert sorted(p.items for p in box.items) == [2, 4, 6, 8]
        assert sum(processor.batches) == 8
        assert registry.get_sample_value("otelai_pipeline_latency_seconds_count", {"signal": "traces"}) == 8
        assert registry.get_sample_value("otelai_batch_size_count") == len(processor.batches)
    finally:
        await stage.stop()


async def test_the_processor_settles_each_batch_after_it_was_acknowledged() -> None:
    box, processor = Box(), Halver()
    pipeline, stage, _ = _setup(processor, box)
    await stage.start()
    try:
        assert await pipeline.submit(Payload(Signal.TRACES, b"x", 2)) is Admission.ACCEPTED
        # Acknowledged and forwarded before the processor learned from the batch...
        assert processor.batches == [1] and len(box.items) == 1
        assert processor.settled == []
        # ...which it does soon after, without another batch.
        await asyncio.sleep(0.05)
        assert processor.settled == [1]
    finally:
        await stage.stop()


async def test_scoring_failure_fails_open_and_loses_nothing() -> None:
    box, processor = Box(), Halver(fail=True)
    pipeline, stage, registry = _setup(processor, box)
    await stage.start()
    try:
        payloads = [Payload(Signal.TRACES, b"x", n) for n in (1, 2, 3)]
        results = await asyncio.gather(*(pipeline.submit(p) for p in payloads))
        assert all(r is Admission.ACCEPTED for r in results)
        assert len(box.items) == 3
        assert set(processor.failed_open) == {"error"}
        value = registry.get_sample_value(
            "otelai_fail_open_items_total", {"signal": "traces", "reason": "error"}
        )
        assert value == 6
    finally:
        await stage.stop()


class Stalling(Halver):
    """Blocks its thread for ``seconds`` on the first batch (a model stall)."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def process(self, payloads: Sequence[Payload]) -> list[Payload]:
        if not self.batches:
            time.sleep(self.seconds)
        return super().process(payloads)


async def test_a_batch_queued_past_its_deadline_is_forwarded_unscored() -> None:
    box, processor = Box(), Stalling(0.1)
    metrics = Metrics(CollectorRegistry())
    pipeline = Pipeline([box], metrics)
    # Batches of one request; the second queues behind the first, which stalls on the thread.
    batching = Batching(min_batch_size=2, max_batch_size=2, max_wait="0s", latency_target="20ms")
    with ThreadPoolExecutor(max_workers=1) as executor:
        stage = ScoringStage(processor, pipeline, batching, metrics, tick_interval=3600, executor=executor)
        pipeline.stages[Signal.TRACES] = stage
        await stage.start()
        try:
            first, second = Payload(Signal.TRACES, b"a", 2), Payload(Signal.TRACES, b"b", 2)
            acked_first = asyncio.ensure_future(pipeline.submit(first))
            await asyncio.sleep(0.02)  # the first batch is on the thread, stalled
            assert await pipeline.submit(second) is Admission.ACCEPTED
            assert await acked_first is Admission.ACCEPTED
            assert processor.failed_open == ["too_slow"]
            assert box.items == [first, second]
        finally:
            await stage.stop()


async def test_only_the_overdue_requests_of_a_batch_are_forwarded_unscored() -> None:
    box, processor = Box(), Stalling(0.5)
    metrics = Metrics(CollectorRegistry())
    pipeline = Pipeline([box], metrics)
    batching = Batching(min_batch_size=4, max_batch_size=8, max_wait="0s", latency_target="200ms")
    with ThreadPoolExecutor(max_workers=1) as executor:
        stage = ScoringStage(processor, pipeline, batching, metrics, tick_interval=3600, executor=executor)
        pipeline.stages[Signal.TRACES] = stage
        await stage.start()
        try:
            first = Payload(Signal.TRACES, b"a", 2)
            overdue, fresh = Payload(Signal.TRACES, b"b", 2), Payload(Signal.TRACES, b"c", 2)
            acked_first = asyncio.ensure_future(pipeline.submit(first))
            await asyncio.sleep(0.05)  # the first batch is on the thread, stalled for 0.5 s
            acked_overdue = asyncio.ensure_future(pipeline.submit(overdue))  # will wait ~450 ms
            await asyncio.sleep(0.4)
            acked_fresh = asyncio.ensure_future(pipeline.submit(fresh))  # will wait ~50 ms
            results = await asyncio.gather(acked_first, acked_overdue, acked_fresh)
            assert all(result is Admission.ACCEPTED for result in results)
            assert processor.failed_open == ["too_slow"]  # the overdue request alone
            assert processor.batches == [1, 1]  # the first request, then the fresh one, scored
            assert box.items == [first, overdue, fresh]
        finally:
            await stage.stop()


async def test_a_request_that_waited_for_room_is_not_counted_too_slow() -> None:
    box, processor = Box(), Halver()
    pipeline, stage, _ = _setup(processor, box)
    await stage.start()
    try:
        received_long_ago = Payload(Signal.TRACES, b"x", 2, received_ns=0)
        assert await pipeline.submit(received_long_ago) is Admission.ACCEPTED
        assert processor.failed_open == []
        assert box.items == [received_long_ago]
    finally:
        await stage.stop()


async def test_full_exporters_refuse_before_scoring() -> None:
    box, processor = Box(slots=0), Halver()
    pipeline, stage, _ = _setup(processor, box)
    await stage.start()
    try:
        assert await pipeline.submit(Payload(Signal.TRACES, b"x", 2)) is Admission.OVERLOADED
        assert processor.batches == []
    finally:
        await stage.stop()


async def test_periodic_output_is_delivered_on_drain() -> None:
    box, processor = Box(), Halver()
    _, stage, _ = _setup(processor, box)
    await stage.start()
    try:
        assert await stage.drain(1.0)
        assert processor.ticks == 1
        assert [p.data for p in box.items] == [b"summary"]
    finally:
        await stage.stop()


class ThreadRecorder(Halver):
    """Records the thread each call runs on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[int] = set()

    def process(self, payloads: Sequence[Payload]) -> list[Payload]:
        self.threads.add(threading.get_ident())
        return super().process(payloads)

    def tick(self, now_ns: int) -> list[Payload]:
        self.threads.add(threading.get_ident())
        return super().tick(now_ns)


async def test_with_an_executor_the_processor_runs_on_its_thread_and_results_come_back() -> None:
    box, processor = Box(), ThreadRecorder()
    metrics = Metrics(CollectorRegistry())
    pipeline = Pipeline([box], metrics)
    batching = Batching(min_batch_size=1, max_batch_size=64, max_wait="1ms", latency_target="5s")
    with ThreadPoolExecutor(max_workers=1) as executor:
        stage = ScoringStage(processor, pipeline, batching, metrics, tick_interval=3600, executor=executor)
        pipeline.stages[Signal.TRACES] = stage
        await stage.start()
        try:
            payloads = [Payload(Signal.TRACES, b"x", n) for n in range(1, 9)]
            results = await asyncio.gather(*(pipeline.submit(p) for p in payloads))
            assert all(r is Admission.ACCEPTED for r in results)
            assert await stage.drain(1.0)
        finally:
            await stage.stop()
    assert sorted(p.items for p in box.items if p.signal is Signal.TRACES) == [2, 4, 6, 8]
    assert [p.data for p in box.items if p.signal is Signal.METRICS] == [b"summary"]
    assert processor.threads and threading.get_ident() not in processor.threads


async def test_stop_waits_for_the_batch_on_the_thread_and_loses_nothing() -> None:
    box, processor = Box(), Stalling(0.2)
    metrics = Metrics(CollectorRegistry())
    pipeline = Pipeline([box], metrics)
    batching = Batching(min_batch_size=1, max_batch_size=64, max_wait="0s", latency_target="5s")
    with ThreadPoolExecutor(max_workers=1) as executor:
        stage = ScoringStage(processor, pipeline, batching, metrics, tick_interval=3600, executor=executor)
        pipeline.stages[Signal.TRACES] = stage
        await stage.start()
        submitted = asyncio.ensure_future(pipeline.submit(Payload(Signal.TRACES, b"x", 2)))
        await asyncio.sleep(0.05)  # the batch is on the thread now, stalled
        await stage.stop()
        assert processor.batches == [1]  # stop returned only after the thread finished
    assert await submitted is Admission.ACCEPTED
    assert processor.failed_open == ["error"]  # cancelled mid-batch: forwarded unscored
    assert len(box.items) == 1
