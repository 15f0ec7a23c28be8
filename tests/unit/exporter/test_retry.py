from __future__ import annotations

import asyncio
import random

import pytest

from otelai.config import RetryOnFailure
from otelai.exporter.base import ExportOutcome, ExportResult
from otelai.exporter.retry import Backoff, send_with_retry
from otelai.signals import Signal

from .queue_helpers import FAST_RETRY, RecordingExporter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _config(**overrides: object) -> RetryOnFailure:
    settings: dict[str, object] = {
        "initial_interval": "1s",
        "randomization_factor": 0.5,
        "multiplier": 1.5,
        "max_interval": "10s",
        "max_elapsed_time": "0",
    }
    settings.update(overrides)
    return RetryOnFailure.model_validate(settings)


def test_backoff_grows_within_jitter_bounds() -> None:
    backoff = Backoff(_config(), rng=random.Random(7), clock=FakeClock())
    interval = 1.0
    for _ in range(20):
        delay = backoff.next_delay()
        assert delay is not None
        assert interval * 0.5 <= delay <= interval * 1.5
        interval = min(interval * 1.5, 10.0)


def test_backoff_is_reproducible_with_a_seed_and_actually_jitters() -> None:
    first = Backoff(_config(), rng=random.Random(3), clock=FakeClock())
    second = Backoff(_config(), rng=random.Random(3), clock=FakeClock())
    a = [first.next_delay() for _ in range(10)]
    assert a == [second.next_delay() for _ in range(10)]
    unjittered = [min(1.5**n, 10.0) for n in range(10)]
    assert a != unjittered


def test_backoff_without_jitter_is_the_exponential_schedule() -> None:
    backoff = Backoff(_config(randomization_factor=0, multiplier=2, max_interval="5s"), clock=FakeClock())
    assert [backoff.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]


def test_server_delay_replaces_the_backoff() -> None:
    backoff = Backoff(_config(), rng=random.Random(1), clock=FakeClock())
    assert backoff.next_delay(7.0) == 7.0
    assert backoff.next_delay(0.0) == 0.0


def test_delays_are_capped_by_the_remaining_budget_then_give_up() -> None:
    clock = FakeClock()
    backoff = Backoff(_config(max_elapsed_time="10s"), rng=random.Random(1), clock=clock)
    clock.now += 8.0
    assert backoff.next_delay(7.0) == pytest.approx(2.0)
    clock.now += 1.5
    delay = backoff.next_delay()
    assert delay is not None
    assert delay <= 0.5 + 1e-9
    clock.now += 0.5
    assert backoff.next_delay() is None
    assert backoff.next_delay(0.1) is None


def test_zero_max_elapsed_time_never_gives_up() -> None:
    clock = FakeClock()
    backoff = Backoff(_config(), rng=random.Random(1), clock=clock)
    clock.now += 1e9
    assert backoff.next_delay() is not None


def test_disabled_retry_never_retries() -> None:
    assert Backoff(_config(enabled=False), clock=FakeClock()).next_delay() is None


async def test_retries_only_retryable_results_until_success() -> None:
    exporter = RecordingExporter()
    exporter.script = [ExportResult.retryable("busy"), ExportResult.retryable("busy")]
    retries: list[float] = []
    result = await send_with_retry(
        exporter, Signal.TRACES, b"abc", Backoff(FAST_RETRY), on_retry=lambda _r, d: retries.append(d)
    )
    assert result.outcome is ExportOutcome.SUCCESS
    assert exporter.attempts == 3
    assert retries == [0.01, 0.01 * 1.5]
    assert exporter.delivered == [(Signal.TRACES, b"abc")]


async def test_permanent_failure_is_not_retried() -> None:
    exporter = RecordingExporter(result=ExportResult.permanent("bad request"))
    result = await send_with_retry(exporter, Signal.LOGS, b"x", Backoff(FAST_RETRY))
    assert result.outcome is ExportOutcome.PERMANENT
    assert exporter.attempts == 1


async def test_server_retry_delay_is_used() -> None:
    exporter = RecordingExporter()
    exporter.script = [ExportResult.retryable("throttled", retry_after=0.005)]
    slow = RetryOnFailure(initial_interval="60s", max_elapsed_time="0")
    delays: list[float] = []
    result = await send_with_retry(
        exporter, Signal.METRICS, b"m", Backoff(slow), on_retry=lambda _r, d: delays.append(d)
    )
    assert result.outcome is ExportOutcome.SUCCESS
    assert delays == [0.005]


async def test_gives_up_after_max_elapsed_time() -> None:
    exporter = RecordingExporter(result=ExportResult.retryable("down"))
    config = RetryOnFailure(initial_interval="5ms", max_interval="5ms", max_elapsed_time="50ms")
    result = await send_with_retry(exporter, Signal.TRACES, b"t", Backoff(config))
    assert result.outcome is ExportOutcome.RETRYABLE
    assert exporter.attempts >= 2
    assert exporter.delivered == []


async def test_stop_event_interrupts_a_sleeping_retry() -> None:
    exporter = RecordingExporter(result=ExportResult.retryable("down"))
    stop = asyncio.Event()
    slow = RetryOnFailure(initial_interval="1h", randomization_factor=0, max_elapsed_time="0")
    task = asyncio.create_task(send_with_retry(exporter, Signal.TRACES, b"t", Backoff(slow), stop_event=stop))
    await exporter.attempted.wait()
    await asyncio.sleep(0)
    stop.set()
    result = await asyncio.wait_for(task, timeout=10)
    assert result.outcome is ExportOutcome.RETRYABLE
    assert exporter.attempts == 1


class RaisingExporter(RecordingExporter):
    async def export(self, signal: Signal, data: bytes) -> ExportResult:
        if self.attempts == 0:
            self.attempts += 1
            raise RuntimeError("bug")
        return await super().export(signal, data)


async def test_an_exporter_that_raises_is_retried_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    exporter = RaisingExporter()
    result = await send_with_retry(exporter, Signal.TRACES, b"t", Backoff(FAST_RETRY))
    assert result.outcome is ExportOutcome.SUCCESS
    assert exporter.delivered == [(Signal.TRACES, b"t")]
    assert "raised instead of returning" in caplog.text
