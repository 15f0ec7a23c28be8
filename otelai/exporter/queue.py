"""The bounded sending queue in front of each exporter.

The pipeline checks :meth:`SendingQueue.has_room` on every exporter's queue, then calls
:meth:`SendingQueue.put` on each (no await in between, so admission is atomic). Consumer
tasks take requests, send them with :func:`~otelai.exporter.retry.send_with_retry` and
account for the outcome. Capacity counts what is waiting *and* what is in flight, so
``queue_size`` bounds all the data the queue holds.

This queue lives in memory: what it holds at :meth:`stop` is dropped (and counted). Set
``sending_queue.storage`` for :class:`~otelai.exporter.persistent.PersistentQueue`, which
keeps it on disk across restarts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

from otelai.config import ExporterConfig, FileExporter, RetryOnFailure
from otelai.config import SendingQueue as SendingQueueConfig
from otelai.exporter.base import Exporter, ExportOutcome, ExportResult
from otelai.exporter.retry import Backoff, send_with_retry
from otelai.pipeline import Payload
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

log = logging.getLogger("otelai.exporter")


@dataclass(slots=True)
class QueuedRequest:
    """What the queue keeps per request: the bytes themselves, or where to find them.

    ``seq`` orders requests; ``nbytes`` is the size of the serialised request; ``data`` is
    ``None`` when the bytes live on disk, at ``offset`` in segment file ``segment``.
    """

    seq: int
    signal: Signal
    items: int
    nbytes: int
    data: bytes | None = None
    segment: int = 0
    offset: int = 0


class SendingQueue:
    """A bounded in-memory queue with ``num_consumers`` senders; a pipeline ``Sink``.

    Parameters
    ----------
    exporter
        Makes the export attempts; started and shut down with the queue.
    config
        ``queue_size`` in the unit of ``sizer`` (requests, items or bytes), ``num_consumers``.
    retry
        Backoff settings for retryable failures.
    metrics
        Where outcomes, retries and the queue's fill level are reported.
    rng
        Jitter source for the backoff; seed it for reproducible tests.
    """

    durable = False

    def __init__(
        self,
        exporter: Exporter,
        *,
        config: SendingQueueConfig,
        retry: RetryOnFailure,
        metrics: Metrics,
        rng: random.Random | None = None,
    ) -> None:
        self.name = exporter.name
        self._exporter = exporter
        self._config = config
        self._retry = retry
        self._metrics = metrics
        self._queue_items = metrics.queue_items.labels(self.name)
        self._queue_size = metrics.queue_size.labels(self.name)
        self._rng = rng if rng is not None else random.Random()
        self._waiting: asyncio.Queue[QueuedRequest] = asyncio.Queue()
        self._inflight: dict[int, QueuedRequest] = {}
        self._size = 0
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self._consumers: list[asyncio.Task[None]] = []
        self._next_seq = 1
        metrics.queue_capacity.labels(self.name).set(config.queue_size)
        self._queue_items.set(0)

    # -- the pipeline's side (synchronous: called between admission checks) ---------------

    def has_room(self, payload: Payload) -> bool:
        """Whether ``payload`` fits; anything fits an empty queue, so nothing can wedge it."""
        if self._pending == 0:
            return True
        return self._size + self._cost(payload.items, len(payload.data)) <= self._config.queue_size

    def put(self, payload: Payload) -> None:
        """Enqueue ``payload``; never blocks. Call only after :meth:`has_room` said yes."""
        request = self._store(payload)
        self._next_seq = request.seq + 1
        self._admit(request)

    def size(self) -> int:
        """What the queue holds (waiting and in flight), in the unit of its sizer."""
        return self._size

    def pending_requests(self) -> int:
        """Requests waiting or in flight."""
        return self._pending

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the exporter, then the consumers."""
        if self._consumers:
            return
        await self._exporter.start()
        self._consumers = [
            asyncio.create_task(self._consume(), name=f"otelai-queue-{self.name}-{i}")
            for i in range(self._config.num_consumers)
        ]

    # The service drains every queue under one shutdown deadline, so the timeout is the API.
    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until every request is delivered or given up; False if ``timeout`` came first."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout=timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        """Stop the consumers (interrupting retries) and shut the exporter down."""
        self._stopping.set()
        for task in self._consumers:
            task.cancel()
        await asyncio.gather(*self._consumers, return_exceptions=True)
        self._consumers = []
        leftovers = list(self._inflight.values())
        self._inflight.clear()
        while not self._waiting.empty():
            leftovers.append(self._waiting.get_nowait())
        if leftovers:
            self._abandon(leftovers)
        await self._exporter.shutdown()

    # -- storage hooks (the persistent queue overrides these) -----------------------------

    def _store(self, payload: Payload) -> QueuedRequest:
        """Keep ``payload``; raise ``OSError`` if it cannot be kept."""
        return QueuedRequest(self._next_seq, payload.signal, payload.items, len(payload.data), payload.data)

    def _load(self, request: QueuedRequest) -> bytes:
        """The request's bytes; raise ``OSError`` or ``ValueError`` if they are gone or damaged."""
        assert request.data is not None
        return request.data

    def _discard(self, request: QueuedRequest) -> None:
        """Forget a request whose export is finished."""

    def _abandon(self, requests: list[QueuedRequest]) -> None:
        """Deal with requests still held at stop: an in-memory queue loses them."""
        items_by_signal: dict[Signal, int] = {}
        for request in requests:
            items_by_signal[request.signal] = items_by_signal.get(request.signal, 0) + request.items
            self._settle(request)
        for signal, items in items_by_signal.items():
            self._metrics.exporter_items.labels(signal.value, "dropped").inc(items)
        log.warning(
            "exporter %s stopped with %d requests (%d items) not delivered; they are dropped",
            self.name,
            len(requests),
            sum(items_by_signal.values()),
            extra={"exporter": self.name, "requests": len(requests), "items": sum(items_by_signal.values())},
        )

    # -- internals ------------------------------------------------------------------------

    def _cost(self, items: int, nbytes: int) -> int:
        sizer = self._config.sizer
        if sizer == "items":
            return items
        if sizer == "bytes":
            return nbytes
        return 1

    def _admit(self, request: QueuedRequest) -> None:
        self._size += self._cost(request.items, request.nbytes)
        self._queue_size.set(self._size)
        self._pending += 1
        self._idle.clear()
        self._queue_items.inc(request.items)
        self._waiting.put_nowait(request)

    def _settle(self, request: QueuedRequest) -> None:
        self._size -= self._cost(request.items, request.nbytes)
        self._queue_size.set(self._size)
        self._pending -= 1
        self._queue_items.dec(request.items)
        if self._pending == 0:
            self._idle.set()

    async def _consume(self) -> None:
        while not self._stopping.is_set():
            request = await self._waiting.get()
            self._inflight[request.seq] = request
            try:
                finished = await self._deliver(request)
            except Exception:
                # A bug must not kill the consumer or wedge drain(). The request is counted
                # failed but not discarded: a persistent queue still has it on disk and
                # delivers it after the next restart.
                log.exception("exporter %s: unexpected error delivering a request", self.name)
                self._metrics.exporter_items.labels(request.signal.value, "failed").inc(request.items)
                del self._inflight[request.seq]
                self._settle(request)
                continue
            if not finished:
                return  # interrupted by stop(): stays in _inflight for _abandon
            del self._inflight[request.seq]
            self._discard(request)
            self._settle(request)

    async def _deliver(self, request: QueuedRequest) -> bool:
        """Export one request and count the outcome; False if stop() interrupted it."""
        signal = request.signal.value
        try:
            data = self._load(request)
        except (OSError, ValueError) as exc:
            self._metrics.exporter_items.labels(signal, "failed").inc(request.items)
            self._log_failure(request, "unreadable", str(exc))
            return True
        result = await send_with_retry(
            self._exporter,
            request.signal,
            data,
            Backoff(self._retry, rng=self._rng),
            on_retry=self._on_retry,
            stop_event=self._stopping,
        )
        if result.outcome is ExportOutcome.SUCCESS:
            rejected = min(result.rejected, request.items)
            self._metrics.exporter_items.labels(signal, "sent").inc(request.items - rejected)
            self._metrics.exporter_bytes.labels(signal).inc(len(data))
            if rejected:
                self._metrics.exporter_items.labels(signal, "rejected").inc(rejected)
                self._log_failure(
                    request, "partially rejected", result.message, rejected=rejected, level=logging.WARNING
                )
            return True
        if result.outcome is ExportOutcome.RETRYABLE and self._stopping.is_set():
            return False
        self._metrics.exporter_items.labels(signal, "failed").inc(request.items)
        reason = "permanent error" if result.outcome is ExportOutcome.PERMANENT else "retries exhausted"
        self._log_failure(request, reason, result.message)
        return True

    def _on_retry(self, result: ExportResult, delay: float) -> None:
        self._metrics.exporter_retries.labels(self.name).inc()
        log.debug("exporter %s: retrying in %.3fs: %s", self.name, delay, result.message)

    def _log_failure(
        self,
        request: QueuedRequest,
        reason: str,
        message: str,
        *,
        rejected: int = 0,
        level: int = logging.ERROR,
    ) -> None:
        items = rejected or request.items
        log.log(
            level,
            "exporter %s: %s, %d %s items not delivered: %s",
            self.name,
            reason,
            items,
            request.signal.value,
            message,
            extra={
                "exporter": self.name,
                "signal": request.signal.value,
                "items": items,
                "reason": reason,
                "error": message,
            },
        )


def build_queue(
    exporter: Exporter,
    exporter_config: ExporterConfig,
    metrics: Metrics,
) -> SendingQueue:
    """The sending queue ``exporter_config`` asks for: persistent when it names a storage."""
    queue_config = exporter_config.sending_queue
    retry = (
        RetryOnFailure() if isinstance(exporter_config, FileExporter) else exporter_config.retry_on_failure
    )
    if queue_config.storage:
        # Imported here: the persistent queue subclasses this module's class.
        from otelai.exporter.persistent import PersistentQueue

        return PersistentQueue(exporter, config=queue_config, retry=retry, metrics=metrics)
    return SendingQueue(exporter, config=queue_config, retry=retry, metrics=metrics)
