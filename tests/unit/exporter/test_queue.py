from __future__ import annotations

import logging
import random
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from otelai.config import FileExporter, OtlpExporter, RetryOnFailure
from otelai.config import SendingQueue as SendingQueueConfig
from otelai.exporter.base import ExportResult
from otelai.exporter.persistent import PersistentQueue
from otelai.exporter.queue import SendingQueue, build_queue
from otelai.pipeline import Admission, Payload, Pipeline
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

from .queue_helpers import FAST_RETRY, RecordingExporter


def _queue(
    exporter: RecordingExporter,
    registry: CollectorRegistry | None = None,
    *,
    retry: RetryOnFailure = FAST_RETRY,
    **config: object,
) -> SendingQueue:
    return SendingQueue(
        exporter,
        config=SendingQueueConfig.model_validate(config),
        retry=retry,
        metrics=Metrics(registry if registry is not None else CollectorRegistry()),
        rng=random.Random(0),
    )


def _payload(items: int = 1, size: int = 10, signal: Signal = Signal.TRACES) -> Payload:
    return Payload(signal, bytes([items % 256]) * size, items)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_capacity_in_requests() -> None:
    queue = _queue(RecordingExporter(), queue_size=2, sizer="requests")
    for _ in range(2):
        assert queue.has_room(_payload(items=100, size=1000))
        queue.put(_payload(items=100, size=1000))
    assert not queue.has_room(_payload())
    assert queue.size() == 2
    assert queue.pending_requests() == 2


def test_capacity_in_items() -> None:
    queue = _queue(RecordingExporter(), queue_size=10, sizer="items")
    queue.put(_payload(items=6))
    assert not queue.has_room(_payload(items=5))
    assert queue.has_room(_payload(items=4))
    queue.put(_payload(items=4))
    assert queue.size() == 10
    assert not queue.has_room(_payload(items=1))


def test_capacity_in_bytes() -> None:
    queue = _queue(RecordingExporter(), queue_size=100, sizer="bytes")
    queue.put(_payload(size=60))
    assert not queue.has_room(_payload(size=41))
    assert queue.has_room(_payload(size=40))
    assert queue.size() == 60


def test_an_oversized_request_fits_an_empty_queue_only() -> None:
    queue = _queue(RecordingExporter(), queue_size=5, sizer="items")
    big = _payload(items=50)
    assert queue.has_room(big)
    queue.put(big)
    assert not queue.has_room(_payload(items=1))


async def test_delivers_everything_then_drain_reports_empty() -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter()
    queue = _queue(exporter, registry, queue_size=100, num_consumers=1)
    payloads = [_payload(items=i + 1, size=20 + i) for i in range(5)]
    for payload in payloads:
        queue.put(payload)
    await queue.start()
    assert exporter.started
    assert await queue.drain(timeout=10)
    assert exporter.delivered == [(p.signal, p.data) for p in payloads]
    assert queue.size() == 0
    assert queue.pending_requests() == 0
    assert queue.has_room(_payload())
    assert _value(registry, "otelai_exporter_items_total", signal="traces", outcome="sent") == 15
    assert _value(registry, "otelai_exporter_bytes_total", signal="traces") == sum(
        len(p.data) for p in payloads
    )
    assert _value(registry, "otelai_queue_items", queue="otlp/test") == 0
    assert _value(registry, "otelai_queue_capacity", queue="otlp/test") == 100
    await queue.stop()
    assert exporter.shut_down


async def test_drain_waits_for_requests_in_flight() -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter()
    exporter.gate.clear()
    queue = _queue(exporter, registry, num_consumers=3)
    await queue.start()
    assert await queue.drain(timeout=1)  # nothing queued
    for _ in range(5):
        queue.put(_payload(items=2))
    await exporter.attempted.wait()
    assert not await queue.drain(timeout=0.05)
    assert exporter.max_in_flight == 3
    assert queue.pending_requests() == 5  # in flight still counts against capacity
    assert _value(registry, "otelai_queue_items", queue="otlp/test") == 10
    exporter.gate.set()
    assert await queue.drain(timeout=10)
    assert len(exporter.delivered) == 5
    await queue.stop()


async def test_retries_are_counted_and_the_request_delivered() -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter()
    exporter.script = [ExportResult.retryable("unavailable"), ExportResult.retryable("unavailable", 0.001)]
    queue = _queue(exporter, registry)
    await queue.start()
    queue.put(_payload(items=4))
    assert await queue.drain(timeout=10)
    assert _value(registry, "otelai_exporter_retries_total", exporter="otlp/test") == 2
    assert _value(registry, "otelai_exporter_items_total", signal="traces", outcome="sent") == 4
    await queue.stop()


async def test_partial_success_counts_rejected_items(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter(result=ExportResult.success(rejected=3, message="3 spans invalid"))
    queue = _queue(exporter, registry)
    await queue.start()
    queue.put(_payload(items=10, signal=Signal.LOGS))
    assert await queue.drain(timeout=10)
    assert _value(registry, "otelai_exporter_items_total", signal="logs", outcome="sent") == 7
    assert _value(registry, "otelai_exporter_items_total", signal="logs", outcome="rejected") == 3
    assert "3 spans invalid" in caplog.text
    await queue.stop()


async def test_permanent_failure_is_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter(result=ExportResult.permanent("HTTP 400: bad payload"))
    queue = _queue(exporter, registry)
    await queue.start()
    with caplog.at_level(logging.INFO, logger="otelai.exporter"):
        queue.put(_payload(items=5, signal=Signal.METRICS))
        assert await queue.drain(timeout=10)
    assert exporter.attempts == 1
    assert _value(registry, "otelai_exporter_items_total", signal="metrics", outcome="failed") == 5
    assert _value(registry, "otelai_exporter_items_total", signal="metrics", outcome="sent") is None
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.__dict__["exporter"] == "otlp/test"
    assert record.__dict__["signal"] == "metrics"
    assert record.__dict__["items"] == 5
    assert record.__dict__["error"] == "HTTP 400: bad payload"
    await queue.stop()


async def test_gives_up_after_the_retry_budget(caplog: pytest.LogCaptureFixture) -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter(result=ExportResult.retryable("connection refused"))
    budget = RetryOnFailure(initial_interval="5ms", max_interval="5ms", max_elapsed_time="40ms")
    queue = _queue(exporter, registry, retry=budget)
    await queue.start()
    with caplog.at_level(logging.INFO, logger="otelai.exporter"):
        queue.put(_payload(items=2))
        assert await queue.drain(timeout=10)
    assert _value(registry, "otelai_exporter_items_total", signal="traces", outcome="failed") == 2
    retries = _value(registry, "otelai_exporter_retries_total", exporter="otlp/test")
    assert retries is not None
    assert retries >= 1
    # One line for the give-up, none for the retries at info level.
    assert [r.__dict__["reason"] for r in caplog.records] == ["retries exhausted"]
    await queue.stop()


async def test_stop_interrupts_retries_and_counts_what_is_dropped() -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter(result=ExportResult.retryable("down"))
    slow = RetryOnFailure(initial_interval="1h", max_elapsed_time="0")
    queue = _queue(exporter, registry, retry=slow, num_consumers=1)
    await queue.start()
    queue.put(_payload(items=3))
    queue.put(_payload(items=4))
    await exporter.attempted.wait()
    assert not await queue.drain(timeout=0.05)
    await queue.stop()
    assert exporter.shut_down
    assert _value(registry, "otelai_exporter_items_total", signal="traces", outcome="dropped") == 7
    assert queue.pending_requests() == 0
    assert _value(registry, "otelai_queue_items", queue="otlp/test") == 0


async def test_stop_without_start_is_clean() -> None:
    exporter = RecordingExporter()
    queue = _queue(exporter)
    queue.put(_payload())
    await queue.stop()
    assert exporter.shut_down


async def test_build_queue_picks_the_kind_of_queue(tmp_path: Path) -> None:
    metrics = Metrics(CollectorRegistry())
    plain = OtlpExporter.model_validate({"endpoint": "localhost:4317"})
    assert type(build_queue(RecordingExporter("otlp"), plain, metrics)) is SendingQueue
    file_config = FileExporter()
    assert type(build_queue(RecordingExporter("file"), file_config, metrics)) is SendingQueue
    stored = OtlpExporter.model_validate(
        {"endpoint": "localhost:4317", "sending_queue": {"storage": str(tmp_path)}}
    )
    queue = build_queue(RecordingExporter("otlp/up"), stored, metrics)
    assert isinstance(queue, PersistentQueue)
    assert queue.directory == tmp_path / "otlp_up"
    assert queue.name == "otlp/up"
    await queue.stop()


async def test_the_pipeline_admits_into_the_queue_until_it_is_full() -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter()
    queue = _queue(exporter, registry, queue_size=2)
    pipeline = Pipeline([queue], Metrics(CollectorRegistry()))
    assert await pipeline.submit(_payload()) is Admission.ACCEPTED
    assert await pipeline.submit(_payload()) is Admission.ACCEPTED
    assert await pipeline.submit(_payload()) is Admission.OVERLOADED
    await queue.start()
    assert await queue.drain(timeout=10)
    assert await pipeline.submit(_payload()) is Admission.ACCEPTED
    assert await queue.drain(timeout=10)
    assert len(exporter.delivered) == 3
    await queue.stop()
