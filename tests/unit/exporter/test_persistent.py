from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from otelai.config import RetryOnFailure
from otelai.config import SendingQueue as SendingQueueConfig
from otelai.exporter.base import ExportResult
from otelai.exporter.persistent import SEGMENT_BYTES, PersistentQueue
from otelai.pipeline import Payload
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

from .queue_helpers import FAST_RETRY, RecordingExporter, per_signal

NAME = "otlp/up"


def _queue(
    storage: Path,
    exporter: RecordingExporter,
    registry: CollectorRegistry | None = None,
    *,
    retry: RetryOnFailure = FAST_RETRY,
    segment_bytes: int = SEGMENT_BYTES,
    **config: object,
) -> PersistentQueue:
    settings: dict[str, object] = {"storage": str(storage), "num_consumers": 1}
    settings.update(config)
    return PersistentQueue(
        exporter,
        config=SendingQueueConfig.model_validate(settings),
        retry=retry,
        metrics=Metrics(registry if registry is not None else CollectorRegistry()),
        rng=random.Random(0),
        segment_bytes=segment_bytes,
    )


def _payloads(count: int) -> list[Payload]:
    signals = list(Signal)
    return [
        Payload(signals[i % 3], random.Random(i).randbytes(100 + 37 * i % 60000), items=i + 1)
        for i in range(count)
    ]


def _files(directory: Path, suffix: str = ".log") -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.suffix == suffix)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


class PickyExporter(RecordingExporter):
    """Upstream refuses (retryably) the requests whose bytes are in ``refuse``."""

    def __init__(self, refuse: set[bytes]) -> None:
        super().__init__(NAME)
        self.refuse = refuse

    async def export(self, signal: Signal, data: bytes) -> ExportResult:
        if data in self.refuse:
            self.attempts += 1
            return ExportResult.retryable("not now")
        return await super().export(signal, data)


async def test_put_is_on_disk_before_it_returns(tmp_path: Path) -> None:
    queue = _queue(tmp_path, RecordingExporter(NAME))
    payload = _payloads(1)[0]
    queue.put(payload)
    assert queue.directory == tmp_path / "otlp_up"
    [name] = _files(queue.directory)
    assert (queue.directory / name).read_bytes().endswith(payload.data)
    await queue.stop()


async def test_requests_survive_a_restart_and_arrive_in_order(tmp_path: Path) -> None:
    payloads = _payloads(6)
    first = _queue(tmp_path, RecordingExporter(NAME, result=ExportResult.retryable("down")))
    await first.start()
    for payload in payloads[:4]:
        first.put(payload)
    assert not await first.drain(timeout=0.05)
    await first.stop()

    registry = CollectorRegistry()
    exporter = RecordingExporter(NAME)
    second = _queue(tmp_path, exporter, registry)
    assert second.pending_requests() == 4
    assert _value(registry, "otelai_queue_items", queue=NAME) == sum(p.items for p in payloads[:4])
    for payload in payloads[4:]:
        second.put(payload)  # new work goes after what was recovered
    await second.start()
    assert await second.drain(timeout=10)
    assert per_signal(exporter.delivered) == per_signal([(p.signal, p.data) for p in payloads])
    await second.stop()
    assert _files(second.directory) == []
    assert _files(second.directory, ".ack") == []


async def test_finished_requests_are_not_sent_again_after_a_restart(tmp_path: Path) -> None:
    payloads = _payloads(4)
    exporter = RecordingExporter(NAME, result=ExportResult.retryable("down"))
    exporter.script = [ExportResult.success(), ExportResult.permanent("refused")]
    first = _queue(tmp_path, exporter)
    await first.start()
    for payload in payloads:
        first.put(payload)
    assert not await first.drain(timeout=0.05)
    await first.stop()
    assert exporter.delivered == [(payloads[0].signal, payloads[0].data)]

    assert (await _deliver_all(tmp_path)).delivered == [(p.signal, p.data) for p in payloads[2:]]


async def test_requests_finishing_out_of_order_across_segments(tmp_path: Path) -> None:
    payloads = _payloads(30)
    stuck = {payloads[3].data, payloads[17].data}
    exporter = PickyExporter(stuck)
    queue = _queue(tmp_path, exporter, segment_bytes=1000, num_consumers=3)
    await queue.start()
    for payload in payloads:
        queue.put(payload)
    assert not await queue.drain(timeout=0.3)
    assert len(exporter.delivered) == 28
    # Only the segments holding the stuck requests, and the one being written, are left.
    assert len(_files(queue.directory)) <= 3
    await queue.stop()

    delivered = (await _deliver_all(tmp_path)).delivered
    assert delivered == [(p.signal, p.data) for p in (payloads[3], payloads[17])]
    assert _files(queue.directory) == []


async def test_capacity_counts_what_is_on_disk(tmp_path: Path) -> None:
    first = _queue(tmp_path, RecordingExporter(NAME), queue_size=300, sizer="bytes")
    for payload in _payloads(2):
        first.put(payload)
    await first.stop()
    second = _queue(tmp_path, RecordingExporter(NAME), queue_size=300, sizer="bytes")
    assert second.size() == 100 + 137
    assert not second.has_room(Payload(Signal.TRACES, b"x" * 64, 1))
    assert second.has_room(Payload(Signal.TRACES, b"x" * 63, 1))
    await second.stop()


async def test_finished_requests_are_deleted_whatever_the_outcome(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    exporter = RecordingExporter(NAME, result=ExportResult.permanent("rejected"))
    queue = _queue(tmp_path, exporter, registry)
    await queue.start()
    queue.put(_payloads(1)[0])
    assert await queue.drain(timeout=10)
    assert _value(registry, "otelai_exporter_items_total", signal="traces", outcome="failed") == 1
    await queue.stop()
    assert _files(queue.directory) == []


async def test_a_disk_error_in_put_raises_and_leaves_nothing_queued(tmp_path: Path) -> None:
    queue = _queue(tmp_path, RecordingExporter(NAME))
    shutil.rmtree(queue.directory)
    with pytest.raises(OSError):
        queue.put(_payloads(1)[0])
    assert queue.pending_requests() == 0
    assert queue.size() == 0
    await queue.stop()


async def test_torn_and_damaged_records_are_not_delivered(tmp_path: Path) -> None:
    payloads = _payloads(4)
    first = _queue(tmp_path, RecordingExporter(NAME))
    for payload in payloads[:3]:
        first.put(payload)
    await first.stop()
    directory = first.directory
    [segment] = _files(directory)
    blob = bytearray((directory / segment).read_bytes())
    blob[-1] ^= 0xFF  # the third request's body, damaged in place: its checksum catches it
    torn = blob[: len(blob) // 3]  # a copy of the segment's start stands for a cut-short write
    (directory / segment).write_bytes(bytes(blob) + bytes(torn[:50]))
    (directory / "00000000000000000099.ack").write_bytes(b"\x01" * 8)  # left from a deleted segment

    registry = CollectorRegistry()
    exporter = RecordingExporter(NAME)
    second = _queue(tmp_path, exporter, registry)
    assert second.pending_requests() == 3
    assert not (directory / "00000000000000000099.ack").exists()
    await second.start()
    assert await second.drain(timeout=10)
    assert exporter.delivered == [(p.signal, p.data) for p in payloads[:2]]
    failed = _value(
        registry, "otelai_exporter_items_total", signal=payloads[2].signal.value, outcome="failed"
    )
    assert failed == payloads[2].items
    second.put(payloads[3])  # appended to a new segment, never after the torn record
    assert await second.drain(timeout=10)
    assert exporter.delivered[-1] == (payloads[3].signal, payloads[3].data)
    await second.stop()
    assert _files(directory) == []


async def test_a_second_live_queue_on_the_same_directory_is_refused(tmp_path: Path) -> None:
    first = _queue(tmp_path, RecordingExporter(NAME))
    with pytest.raises(OSError, match="in use"):
        _queue(tmp_path, RecordingExporter(NAME))
    await first.stop()
    second = _queue(tmp_path, RecordingExporter(NAME))
    await second.stop()


async def test_fsync_mode_stores_and_delivers(tmp_path: Path) -> None:
    exporter = RecordingExporter(NAME)
    queue = PersistentQueue(
        exporter,
        config=SendingQueueConfig(storage=str(tmp_path)),
        retry=FAST_RETRY,
        metrics=Metrics(CollectorRegistry()),
        fsync=True,
    )
    await queue.start()
    queue.put(_payloads(1)[0])
    assert await queue.drain(timeout=10)
    assert len(exporter.delivered) == 1
    await queue.stop()


async def _deliver_all(storage: Path) -> RecordingExporter:
    """What a fresh queue on ``storage`` delivers to an upstream that is back."""
    exporter = RecordingExporter(NAME)
    queue = _queue(storage, exporter)
    await queue.start()
    assert await queue.drain(timeout=30)
    await queue.stop()
    return exporter


CHILD = textwrap.dedent(
    """
    import asyncio, random, sys
    from prometheus_client import CollectorRegistry
    from otelai.config import RetryOnFailure, SendingQueue
    from otelai.exporter.base import Exporter, ExportResult
    from otelai.exporter.persistent import PersistentQueue
    from otelai.pipeline import Payload
    from otelai.signals import Signal
    from otelai.telemetry.metrics import Metrics

    class Upstream(Exporter):
        # "down": refuses everything (retryably); "up": takes 20 requests, then hangs.

        def __init__(self, up):
            super().__init__("otlp/up")
            self.up = up
            self.number = {}
            self.sent = 0

        async def export(self, signal, data):
            if not self.up:
                return ExportResult.retryable("upstream down")
            if self.sent >= 20:
                await asyncio.Event().wait()
            self.sent += 1
            await asyncio.sleep(0)
            print("sent", self.number[data], flush=True)
            return ExportResult.success()

    async def main(storage, count, mode):
        upstream = Upstream(mode == "up")
        queue = PersistentQueue(
            upstream,
            config=SendingQueue(storage=storage, queue_size=100000, num_consumers=2),
            retry=RetryOnFailure(initial_interval="10ms", max_interval="10ms", max_elapsed_time="0"),
            metrics=Metrics(CollectorRegistry()),
            segment_bytes=64 * 1024,  # roll segments often
        )
        await queue.start()
        signals = list(Signal)
        for i in range(count if count > 0 else 10**9):
            payload = Payload(signals[i % 3], random.Random(i).randbytes(100 + 37 * i % 60000), items=i + 1)
            upstream.number[payload.data] = i
            assert queue.has_room(payload)
            queue.put(payload)
            if count <= 0:
                print(i, flush=True)  # acknowledged
            await asyncio.sleep(0)  # let the consumers work meanwhile
        while upstream.up and upstream.sent < 20:
            await asyncio.sleep(0.001)
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
    """
)


def _run_and_kill_when_ready(storage: Path, count: int, mode: str) -> list[str]:
    """Run the child until it has acknowledged ``count`` requests, ``kill -9`` it; its output."""
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(storage), str(count), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        lines: list[str] = []
        while not lines or lines[-1] != "ready":
            line = child.stdout.readline()
            if not line:
                child.kill()
                pytest.fail(f"child did not get ready: {lines[-3:]} {child.stderr.read()}")
            lines.append(line.strip())
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        return lines + child.stdout.read().splitlines()


def test_acknowledged_requests_survive_kill_9(tmp_path: Path) -> None:
    count = 120
    _run_and_kill_when_ready(tmp_path, count, "down")
    exporter = asyncio.run(_deliver_all(tmp_path))
    assert per_signal(exporter.delivered) == per_signal([(p.signal, p.data) for p in _payloads(count)])


def test_a_kill_9_mid_delivery_loses_nothing(tmp_path: Path) -> None:
    count = 120
    output = _run_and_kill_when_ready(tmp_path, count, "up")
    sent_before = {int(line.split()[1]) for line in output if line.startswith("sent ")}
    assert len(sent_before) == 20
    delivered = asyncio.run(_deliver_all(tmp_path)).delivered
    payloads = [(p.signal, p.data) for p in _payloads(count)]
    sent_after = {payloads.index(p) for p in delivered}
    assert sent_before | sent_after == set(range(count))
    # Resent in order (within a signal), once each; only a request whose acknowledgement the
    # kill cut off may have reached upstream twice.
    assert per_signal(delivered) == per_signal(sorted(set(delivered), key=payloads.index))
    assert len(sent_before & sent_after) <= 2


def test_a_kill_9_mid_stream_loses_no_acknowledged_request(tmp_path: Path) -> None:
    acknowledged = 60
    with subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path), "0", "down"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as child:
        assert child.stdout is not None and child.stderr is not None
        lines = [child.stdout.readline() for _ in range(acknowledged)]
        # Killed while it is still accepting and writing requests.
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
        assert lines == [f"{i}\n" for i in range(acknowledged)], child.stderr.read()

    delivered = asyncio.run(_deliver_all(tmp_path)).delivered
    assert len(delivered) >= acknowledged
    assert per_signal(delivered) == per_signal([(p.signal, p.data) for p in _payloads(len(delivered))])
