"""Merging queued requests at send time (``sending_queue.batch``)."""

from __future__ import annotations

import asyncio
import random

from prometheus_client import CollectorRegistry

from otelai.config import SendingQueue as SendingQueueConfig
from otelai.exporter.base import ExportResult
from otelai.exporter.queue import DEFAULT_BATCH, MAX_REQUEST_BYTES, BatchSettings, QueueBatch, SendingQueue
from otelai.pipeline import Payload
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

from . import otlp_samples
from .otlp_samples import content as _content
from .otlp_samples import joined as _joined
from .otlp_samples import traces_of as _traces
from .queue_helpers import FAST_RETRY, RecordingExporter

NAME = "otlp/test"


def _queue(
    exporter: RecordingExporter,
    registry: CollectorRegistry,
    *,
    batch: BatchSettings | None = DEFAULT_BATCH,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    **config: object,
) -> SendingQueue:
    settings: dict[str, object] = {"num_consumers": 1, "queue_size": 10_000, "sizer": "items"}
    settings.update(config)
    return SendingQueue(
        exporter,
        config=SendingQueueConfig.model_validate(settings),
        retry=FAST_RETRY,
        metrics=Metrics(registry),
        rng=random.Random(0),
        batch=batch,
        max_request_bytes=max_request_bytes,
    )


def _payloads(count: int, spans: int = 3) -> list[Payload]:
    return [Payload(Signal.TRACES, _traces("checkout", spans, offset=spans * i), spans) for i in range(count)]


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def _run(queue: SendingQueue, payloads: list[Payload]) -> None:
    for payload in payloads:
        queue.put(payload)
    await queue.start()
    assert await queue.drain(timeout=10)
    await queue.stop()


def _assert_empty(queue: SendingQueue, registry: CollectorRegistry) -> None:
    assert queue.size() == 0
    assert queue.pending_requests() == 0
    assert _value(registry, "otelai_queue_items", queue=NAME) == 0
    assert _value(registry, "otelai_queue_size", queue=NAME) == 0


async def test_queued_requests_go_upstream_as_one_with_the_same_content() -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter(NAME)
    queue = _queue(exporter, registry)
    payloads = _payloads(5)
    await _run(queue, payloads)
    [(signal, merged)] = exporter.delivered
    assert signal is Signal.TRACES
    assert _content(signal, merged) == _joined(signal, [p.data for p in payloads])
    assert _value(registry, "otelai_exporter_items_total", signal="traces", outcome="sent") == 15
    assert _value(registry, "otelai_exporter_bytes_total", signal="traces") == len(merged)
    assert len(merged) < sum(len(p.data) for p in payloads)
    _assert_empty(queue, registry)


async def test_max_size_caps_a_merged_request_and_a_larger_one_goes_alone() -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter(NAME)
    queue = _queue(exporter, registry, batch=QueueBatch(max_size=7))
    payloads = [*_payloads(5), Payload(Signal.TRACES, _traces("checkout", 9, offset=100), 9)]
    await _run(queue, payloads)
    sizes = [sum(len(items) for items in _content(s, d).values()) for s, d in exporter.delivered]
    assert sizes == [6, 6, 3, 9]
    assert _joined(Signal.TRACES, [d for _, d in exporter.delivered]) == _joined(
        Signal.TRACES, [p.data for p in payloads]
    )
    _assert_empty(queue, registry)


async def test_requests_sizer_and_the_message_size_limit() -> None:
    payloads = _payloads(6)
    exporter = RecordingExporter(NAME)
    await _run(
        _queue(exporter, CollectorRegistry(), batch=QueueBatch(max_size=4, sizer="requests")), payloads
    )
    assert len(exporter.delivered) == 2
    exporter = RecordingExporter(NAME)
    limit = 2 * max(len(p.data) for p in payloads)
    await _run(_queue(exporter, CollectorRegistry(), max_request_bytes=limit), payloads)
    assert len(exporter.delivered) == 3


async def test_without_batch_each_request_goes_alone() -> None:
    exporter = RecordingExporter(NAME)
    payloads = _payloads(3)
    await _run(_queue(exporter, CollectorRegistry(), batch=None), payloads)
    assert exporter.delivered == [(p.signal, p.data) for p in payloads]


async def test_signals_merge_apart_each_in_its_order() -> None:
    exporter = RecordingExporter(NAME)
    payloads = [Payload(signal, otlp_samples.sample(signal), 1) for _ in range(2) for signal in Signal]
    await _run(_queue(exporter, CollectorRegistry()), payloads)
    assert [signal for signal, _ in exporter.delivered] == list(Signal)
    for signal, data in exporter.delivered:
        assert _content(signal, data) == _joined(signal, [p.data for p in payloads if p.signal is signal])


async def test_a_request_that_cannot_be_merged_is_sent_alone() -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter(NAME)
    payloads = _payloads(4)
    payloads[1] = Payload(Signal.TRACES, b"\xff not otlp", 2)
    queue = _queue(exporter, registry, num_consumers=2)
    await _run(queue, payloads)
    assert len(exporter.delivered) == 2
    assert (Signal.TRACES, payloads[1].data) in exporter.delivered
    [merged] = [d for _, d in exporter.delivered if d != payloads[1].data]
    assert _content(Signal.TRACES, merged) == _joined(Signal.TRACES, [payloads[i].data for i in (0, 2, 3)])
    assert _value(registry, "otelai_exporter_items_total", signal="traces", outcome="sent") == 11
    _assert_empty(queue, registry)


async def test_a_retryable_failure_retries_the_merged_request() -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter(NAME)
    exporter.script = [ExportResult.retryable("unavailable"), ExportResult.retryable("unavailable")]
    queue = _queue(exporter, registry)
    await _run(queue, _payloads(4))
    assert exporter.attempts == 3
    assert len(exporter.delivered) == 1
    assert _value(registry, "otelai_exporter_retries_total", exporter=NAME) == 2
    assert _value(registry, "otelai_exporter_items_total", signal="traces", outcome="sent") == 12
    _assert_empty(queue, registry)


async def test_a_permanent_failure_fails_every_merged_request() -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter(NAME, result=ExportResult.permanent("refused"))
    queue = _queue(exporter, registry)
    await _run(queue, _payloads(4))
    assert exporter.attempts == 1
    assert _value(registry, "otelai_exporter_items_total", signal="traces", outcome="failed") == 12
    assert _value(registry, "otelai_exporter_items_total", signal="traces", outcome="sent") == 0
    _assert_empty(queue, registry)


async def test_a_partial_success_counts_rejected_items_of_the_merged_request() -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter(NAME, result=ExportResult.success(rejected=5))
    await _run(_queue(exporter, registry), _payloads(3))
    assert _value(registry, "otelai_exporter_items_total", signal="traces", outcome="sent") == 4
    assert _value(registry, "otelai_exporter_items_total", signal="traces", outcome="rejected") == 5


async def test_in_flight_merged_requests_count_until_settled_and_stop_drops_them() -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter(NAME)
    exporter.gate.clear()
    queue = _queue(exporter, registry, num_consumers=2)
    await queue.start()
    for payload in _payloads(4):
        queue.put(payload)
    await exporter.attempted.wait()
    assert exporter.in_flight == 1  # one consumer took all four
    assert queue.pending_requests() == 4
    assert queue.size() == 12
    assert _value(registry, "otelai_queue_items", queue=NAME) == 12
    assert not await queue.drain(timeout=0.01)
    await queue.stop()
    assert _value(registry, "otelai_exporter_items_total", signal="traces", outcome="dropped") == 12
    _assert_empty(queue, registry)


async def test_flush_timeout_waits_for_min_size() -> None:
    exporter = RecordingExporter(NAME)
    queue = _queue(exporter, CollectorRegistry(), batch=QueueBatch(flush_timeout=30.0, min_size=9))
    await queue.start()
    payloads = _payloads(3)
    for payload in payloads:
        queue.put(payload)
        for _ in range(5):
            await asyncio.sleep(0)  # the consumer runs in between
    assert await queue.drain(timeout=10)
    [(signal, merged)] = exporter.delivered
    assert _content(signal, merged) == _joined(signal, [p.data for p in payloads])
    await queue.stop()


async def test_flush_timeout_sends_what_it_has_when_it_expires() -> None:
    exporter = RecordingExporter(NAME)
    queue = _queue(exporter, CollectorRegistry(), batch=QueueBatch(flush_timeout=0.01, min_size=100))
    await queue.start()
    queue.put(_payloads(1)[0])
    assert await queue.drain(timeout=10)
    assert len(exporter.delivered) == 1
    await queue.stop()
