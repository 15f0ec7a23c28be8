"""The persistent queue with merging: every merged entry is acknowledged only after its send."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from prometheus_client import CollectorRegistry

from otelai.config import SendingQueue as SendingQueueConfig
from otelai.exporter.base import ExportResult
from otelai.exporter.persistent import PersistentQueue
from otelai.pipeline import Payload
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

from .otlp_samples import content, joined, traces_of
from .queue_helpers import FAST_RETRY, RecordingExporter

NAME = "otlp/up"


def _queue(storage: Path, exporter: RecordingExporter, registry: CollectorRegistry) -> PersistentQueue:
    return PersistentQueue(
        exporter,
        config=SendingQueueConfig(storage=str(storage), num_consumers=2, queue_size=10_000, sizer="items"),
        retry=FAST_RETRY,
        metrics=Metrics(registry),
        rng=random.Random(0),
    )


def _payloads(count: int) -> list[Payload]:
    return [Payload(Signal.TRACES, traces_of("checkout", 2, offset=2 * i), 2) for i in range(count)]


def _logs(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


async def _deliver_all(storage: Path) -> RecordingExporter:
    exporter = RecordingExporter(NAME)
    queue = _queue(storage, exporter, CollectorRegistry())
    await queue.start()
    assert await queue.drain(timeout=30)
    await queue.stop()
    return exporter


async def test_merged_entries_are_all_acknowledged_after_delivery(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter(NAME)
    queue = _queue(tmp_path, exporter, registry)
    payloads = _payloads(6)
    for payload in payloads:
        queue.put(payload)
    await queue.start()
    assert await queue.drain(timeout=10)
    [(_, merged)] = exporter.delivered
    assert content(Signal.TRACES, merged) == joined(Signal.TRACES, [p.data for p in payloads])
    assert registry.get_sample_value("otelai_queue_items", {"queue": NAME}) == 0
    assert registry.get_sample_value("otelai_queue_size", {"queue": NAME}) == 0
    await queue.stop()
    assert (await _deliver_all(tmp_path)).delivered == []
    assert _logs(queue.directory) == []


async def test_a_merged_request_stopped_in_retry_is_kept_whole(tmp_path: Path) -> None:
    exporter = RecordingExporter(NAME, result=ExportResult.retryable("down"))
    queue = _queue(tmp_path, exporter, CollectorRegistry())
    payloads = _payloads(5)
    for payload in payloads:
        queue.put(payload)
    await queue.start()
    assert not await queue.drain(timeout=0.05)
    await queue.stop()
    delivered = (await _deliver_all(tmp_path)).delivered
    assert joined(Signal.TRACES, [d for _, d in delivered]) == joined(
        Signal.TRACES, [p.data for p in payloads]
    )


# Sends one merged request successfully, then dies by SIGKILL at the first acknowledgement.
CHILD = textwrap.dedent(
    """
    import asyncio, os, signal, sys
    from prometheus_client import CollectorRegistry
    from otelai.config import RetryOnFailure, SendingQueue
    from otelai.exporter.base import Exporter, ExportResult
    from otelai.exporter.persistent import PersistentQueue
    from otelai.pipeline import Payload
    from otelai.signals import Signal
    from otelai.telemetry.metrics import Metrics
    from tests.unit.exporter.otlp_samples import traces_of

    class Upstream(Exporter):
        async def export(self, signal, data):
            print("sent", data.hex(), flush=True)
            return ExportResult.success()

    class DiesAtAck(PersistentQueue):
        def _discard(self, request):
            os.kill(os.getpid(), signal.SIGKILL)

    async def main(storage, count):
        queue = DiesAtAck(
            Upstream("otlp/up"),
            config=SendingQueue(storage=storage, queue_size=100000, num_consumers=1),
            retry=RetryOnFailure(),
            metrics=Metrics(CollectorRegistry()),
        )
        for i in range(count):
            queue.put(Payload(Signal.TRACES, traces_of("checkout", 2, offset=2 * i), 2))
        await queue.start()
        await asyncio.sleep(60)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def test_a_kill_between_the_send_and_the_acknowledgements_sends_all_again(tmp_path: Path) -> None:
    count = 8
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path), str(count)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).resolve().parents[3],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    [line] = [line for line in result.stdout.splitlines() if line.startswith("sent ")]
    sent = bytes.fromhex(line.split()[1])
    expected = joined(Signal.TRACES, [p.data for p in _payloads(count)])
    assert content(Signal.TRACES, sent) == expected  # all eight went upstream as one
    # None was acknowledged: the restarted queue sends every one of them again (at least once).
    delivered = asyncio.run(_deliver_all(tmp_path)).delivered
    assert len(delivered) == 1
    assert content(Signal.TRACES, delivered[0][1]) == expected
