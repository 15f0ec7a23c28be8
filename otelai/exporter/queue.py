"""The bounded sending queue in front of each exporter.

The pipeline checks :meth:`SendingQueue.has_room` on every exporter's queue, then calls
:meth:`SendingQueue.put` on each (no await in between, so admission is atomic). Consumer
tasks take requests, send them with :func:`~otelai.exporter.retry.send_with_retry` and
account for the outcome. Capacity counts what is waiting *and* what is in flight, so
``queue_size`` bounds all the data the queue holds.

A consumer takes the oldest request and, with it, whatever else of the same signal is
already waiting (up to ``batch.max_size`` and :data:`MAX_REQUEST_BYTES`), merges them with
:mod:`otelai.exporter.merge` so that each resource and scope goes upstream once, sends one
request and settles every merged entry by its outcome: the Collector's exporterhelper
``sending_queue.batch``. With ``flush_timeout`` 0 (the default) nothing waits for more data:
requests merge only when they queue up behind busy consumers or arrive together.

This queue lives in memory: what it holds at :meth:`stop` is dropped (and counted). Set
``sending_queue.storage`` for :class:`~otelai.exporter.persistent.PersistentQueue`, which
keeps it on disk across restarts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from dataclasses import dataclass
from typing import Literal, Protocol

from otelai.config import ExporterConfig, FileExporter, RetryOnFailure
from otelai.config import SendingQueue as SendingQueueConfig
from otelai.exporter.base import Exporter, ExportOutcome, ExportResult
from otelai.exporter.merge import Merger, Unmergeable
from otelai.exporter.retry import Backoff, send_with_retry
from otelai.pipeline import Payload
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

log = logging.getLogger("otelai.exporter")

# A merged request stays under gRPC's default maximum message size (4 MiB, which the
# Collector's OTLP receiver keeps); merging never makes a request larger than its parts.
MAX_REQUEST_BYTES = 4 * 1024 * 1024

Sizer = Literal["requests", "items", "bytes"]


class BatchSettings(Protocol):
    """``sending_queue.batch``: how queued requests are merged at send time."""

    @property
    def flush_timeout(self) -> float: ...
    @property
    def min_size(self) -> int: ...
    @property
    def max_size(self) -> int: ...
    @property
    def sizer(self) -> Sizer: ...


@dataclass(frozen=True, slots=True)
class QueueBatch:
    """The defaults of ``sending_queue.batch`` (Collector key names; see :class:`SendingQueue`)."""

    flush_timeout: float = 0.0
    min_size: int = 0
    max_size: int = 8192
    sizer: Sizer = "items"


DEFAULT_BATCH = QueueBatch()


@dataclass(slots=True)
class QueuedRequest:
    """What the queue keeps per request: the bytes themselves, or where to find them.

    ``seq`` orders requests; ``nbytes`` is the size of the serialised request; ``data`` is
    ``None`` when the bytes live on disk, at ``offset`` in segment file ``segment``.
    ``alone`` marks a request found unmergeable: it is sent by itself.
    """

    seq: int
    signal: Signal
    items: int
    nbytes: int
    data: bytes | None = None
    segment: int = 0
    offset: int = 0
    alone: bool = False


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
    batch
        Merging at send time; ``None`` sends each request alone. ``max_size`` (in the unit
        of ``sizer``; 0: no limit) caps what one consumer takes; a request larger than that
        goes alone, unsplit. When less than ``min_size`` is waiting, the consumer waits up
        to ``flush_timeout`` seconds for more; with 0 it never waits.
    max_request_bytes
        Serialised size a merged request stays under (the upstream's message size limit).
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
        batch: BatchSettings | None = DEFAULT_BATCH,
        max_request_bytes: int = MAX_REQUEST_BYTES,
    ) -> None:
        self.name = exporter.name
        self._exporter = exporter
        self._config = config
        self._retry = retry
        self._metrics = metrics
        self._queue_items = metrics.queue_items.labels(self.name)
        self._queue_size = metrics.queue_size.labels(self.name)
        self._rng = rng if rng is not None else random.Random()
        self._batch = batch
        self._max_request_bytes = max_request_bytes
        # One FIFO per signal: a consumer merges the head of one with what follows it.
        self._waiting: dict[Signal, deque[QueuedRequest]] = {signal: deque() for signal in Signal}
        self._ready = asyncio.Event()  # set when something may be waiting
        self._taking = asyncio.Lock()  # one consumer gathers at a time, the others send
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
        for waiting in self._waiting.values():
            leftovers.extend(waiting)
            waiting.clear()
        leftovers.sort(key=lambda request: request.seq)
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
        self._waiting[request.signal].append(request)
        self._ready.set()

    def _settle(self, request: QueuedRequest) -> None:
        self._size -= self._cost(request.items, request.nbytes)
        self._queue_size.set(self._size)
        self._pending -= 1
        self._queue_items.dec(request.items)
        if self._pending == 0:
            self._idle.set()

    async def _consume(self) -> None:
        while not self._stopping.is_set():
            async with self._taking:
                batch = await self._take()
            try:
                finished = await self._deliver(batch)
            except Exception:
                # A bug must not kill the consumer or wedge drain(). The requests are counted
                # failed but not discarded: a persistent queue still has them on disk and
                # delivers them after the next restart.
                log.exception("exporter %s: unexpected error delivering a request", self.name)
                for request in batch:
                    if self._inflight.pop(request.seq, None) is not None:
                        self._metrics.exporter_items.labels(request.signal.value, "failed").inc(request.items)
                        self._settle(request)
                continue
            if not finished:
                return  # interrupted by stop(): the rest stays in _inflight for _abandon

    async def _take(self) -> list[QueuedRequest]:
        """The oldest waiting request and what merges with it; each is in flight once taken."""
        while True:
            waiting = self._oldest()
            if waiting is not None:
                break
            self._ready.clear()
            await self._ready.wait()
        first = waiting.popleft()
        self._inflight[first.seq] = first
        batch = [first]
        settings = self._batch
        if settings is None or first.alone:
            return batch
        size = self._batch_cost(settings, first)
        nbytes = first.nbytes
        deadline: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            size, nbytes = self._gather(settings, waiting, batch, size, nbytes)
            full = bool(waiting) or 0 < settings.max_size <= size  # waiting: the next did not fit
            if full or size >= settings.min_size or settings.flush_timeout <= 0:
                return batch
            if deadline is None:
                deadline = loop.time() + settings.flush_timeout
            remaining = deadline - loop.time()
            if remaining <= 0:
                return batch
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), timeout=remaining)
            except TimeoutError:
                return batch

    def _oldest(self) -> deque[QueuedRequest] | None:
        """The signal queue whose head was admitted first, or None if nothing waits."""
        oldest: deque[QueuedRequest] | None = None
        for waiting in self._waiting.values():
            if waiting and (oldest is None or waiting[0].seq < oldest[0].seq):
                oldest = waiting
        return oldest

    def _gather(
        self,
        settings: BatchSettings,
        waiting: deque[QueuedRequest],
        batch: list[QueuedRequest],
        size: int,
        nbytes: int,
    ) -> tuple[int, int]:
        """Move requests from the head of ``waiting`` into ``batch`` while they fit."""
        while waiting:
            request = waiting[0]
            cost = self._batch_cost(settings, request)
            too_big = 0 < settings.max_size < size + cost or nbytes + request.nbytes > self._max_request_bytes
            if too_big or request.alone:
                break
            waiting.popleft()
            self._inflight[request.seq] = request
            batch.append(request)
            size += cost
            nbytes += request.nbytes
        return size, nbytes

    @staticmethod
    def _batch_cost(settings: BatchSettings, request: QueuedRequest) -> int:
        if settings.sizer == "items":
            return request.items
        if settings.sizer == "bytes":
            return request.nbytes
        return 1

    async def _deliver(self, batch: list[QueuedRequest]) -> bool:
        """Export ``batch`` (merged where it can be) and finish each request; False if stopped.

        A request that was not finished when stop() interrupted stays in ``_inflight``.
        """
        loaded: list[tuple[QueuedRequest, bytes]] = []
        for request in batch:
            try:
                loaded.append((request, self._load(request)))
            except (OSError, ValueError) as exc:
                self._metrics.exporter_items.labels(request.signal.value, "failed").inc(request.items)
                self._log_failure(request.signal, request.items, "unreadable", str(exc))
                self._finish([request])
        send = self._merged(loaded)
        if send is None:
            return True
        members, data = send
        if not await self._send(members, data):
            return False
        self._finish(members)
        return True

    def _merged(self, loaded: list[tuple[QueuedRequest, bytes]]) -> tuple[list[QueuedRequest], bytes] | None:
        """One request for what merges; what does not goes back to be sent alone by any consumer.

        Each consumer makes one send at a time, so requests that cannot be merged are still
        sent in parallel by ``num_consumers`` consumers, as without merging.
        """
        if len(loaded) <= 1:
            return ([loaded[0][0]], loaded[0][1]) if loaded else None
        merger = Merger()
        members: list[QueuedRequest] = []
        alone: list[tuple[QueuedRequest, bytes]] = []
        for request, data in loaded:
            try:
                merger.add(data)
            except Unmergeable as exc:
                log.debug("exporter %s: request %d is sent unmerged: %s", self.name, request.seq, exc)
                alone.append((request, data))
                continue
            members.append(request)
        if not members:
            request, data = alone.pop(0)
            send = ([request], data)
        else:
            send = (members, merger.build())
        self._put_back([request for request, _ in alone])
        return send

    def _put_back(self, requests: list[QueuedRequest]) -> None:
        """Return taken requests to the head of their queue (they are older than what waits)."""
        for request in reversed(requests):
            request.alone = True
            del self._inflight[request.seq]
            self._waiting[request.signal].appendleft(request)
        if requests:
            self._ready.set()

    def _finish(self, requests: list[QueuedRequest]) -> None:
        for request in requests:
            del self._inflight[request.seq]
            self._discard(request)
            self._settle(request)

    async def _send(self, members: list[QueuedRequest], data: bytes) -> bool:
        """One (merged) request with retry, its outcome counted; False if stop() interrupted it."""
        signal = members[0].signal
        items = sum(request.items for request in members)
        result = await send_with_retry(
            self._exporter,
            signal,
            data,
            Backoff(self._retry, rng=self._rng),
            on_retry=self._on_retry,
            stop_event=self._stopping,
        )
        counter = self._metrics.exporter_items
        if result.outcome is ExportOutcome.SUCCESS:
            rejected = min(result.rejected, items)
            counter.labels(signal.value, "sent").inc(items - rejected)
            self._metrics.exporter_bytes.labels(signal.value).inc(len(data))
            if rejected:
                counter.labels(signal.value, "rejected").inc(rejected)
                self._log_failure(
                    signal, rejected, "partially rejected", result.message, level=logging.WARNING
                )
            return True
        if result.outcome is ExportOutcome.RETRYABLE and self._stopping.is_set():
            return False
        counter.labels(signal.value, "failed").inc(items)
        reason = "permanent error" if result.outcome is ExportOutcome.PERMANENT else "retries exhausted"
        self._log_failure(signal, items, reason, result.message)
        return True

    def _on_retry(self, result: ExportResult, delay: float) -> None:
        self._metrics.exporter_retries.labels(self.name).inc()
        log.debug("exporter %s: retrying in %.3fs: %s", self.name, delay, result.message)

    def _log_failure(
        self,
        signal: Signal,
        items: int,
        reason: str,
        message: str,
        *,
        level: int = logging.ERROR,
    ) -> None:
        log.log(
            level,
            "exporter %s: %s, %d %s items not delivered: %s",
            self.name,
            reason,
            items,
            signal.value,
            message,
            extra={
                "exporter": self.name,
                "signal": signal.value,
                "items": items,
                "reason": reason,
                "error": message,
            },
        )


def build_queue(exporter: Exporter, exporter_config: ExporterConfig, metrics: Metrics) -> SendingQueue:
    """The sending queue ``exporter_config`` asks for: persistent when it names a storage."""
    queue_config = exporter_config.sending_queue
    batch = queue_config.batch
    retry = (
        RetryOnFailure() if isinstance(exporter_config, FileExporter) else exporter_config.retry_on_failure
    )
    if queue_config.storage:
        # Imported here: the persistent queue subclasses this module's class.
        from otelai.exporter.persistent import PersistentQueue

        return PersistentQueue(exporter, config=queue_config, retry=retry, metrics=metrics, batch=batch)
    return SendingQueue(exporter, config=queue_config, retry=retry, metrics=metrics, batch=batch)
