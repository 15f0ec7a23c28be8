"""Adaptive batching of OTLP requests in front of a model, on one asyncio event loop.

Requests (each carrying some number of spans, log records or points) queue in FIFO order.
One worker task forms batches and awaits ``process`` on them one at a time, in order: a
batch closes when it holds the controller's target number of items, or when its oldest
request has waited the controller's current wait, which it waits only if at least one more
request is expected within it at the measured arrival rate. The control law that moves the target and
the wait from measured latency lives in :mod:`otelai.batching.controller`; Triton's dynamic
batcher (NVIDIA Triton Inference Server, "Dynamic Batcher") is the offline-tuned original.

Requests are never split: a batch holds whole requests, and a request larger than the
target makes a batch of its own.

Handing on: ``process`` may return a future instead of finishing the batch (a scoring worker
process took it, :mod:`otelai.scoring.worker`). The batch is then out until that future is
done; up to ``depth`` batches are out at once, and the next batch is cut only when one more
may go, so that the worker starts its next batch as soon as it answered one, and requests
wait in this queue (where admission sees them) rather than in the worker's. What the batch
cost, for the model, is its time in the worker: from when it was handed on, or when the batch
before it came back if that was later, to when it came back.

Admission: :meth:`has_room` says whether a request would, by the controller's cost model,
finish within the latency target behind what is queued and in flight; :meth:`wait_for_room`
holds a caller until it would (flow control, as a full HTTP/2 window holds a sender). A
saturated hop then keeps its queue short enough to score every request it takes, instead of
letting requests age past the target in the queue (each would be forwarded unscored). The batcher never raises into its caller: a full queue
refuses the request (``offer`` returns ``False``, back-pressure), a failing ``process``
hands its requests to ``on_error`` and the worker carries on, and ``stop`` hands whatever
it did not process to ``on_error`` too, so the pipeline can fail open and lose nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from otelai.batching.controller import BatchController

log = logging.getLogger("otelai.batching")

T = TypeVar("T")

# Scheduling rounds given to ready request handlers before a batch is cut (each a few us).
_GATHER_ROUNDS = 8
_REQUEST_SMOOTHING = 0.1  # weight of the newest request in the mean request size


class BatcherStopped(Exception):
    """Given to ``on_error`` for requests the batcher stopped before processing."""


class AdaptiveBatcher(Generic[T]):
    """Groups requests into batches sized online to a p99 latency target.

    Parameters
    ----------
    process
        Processes one batch, in offer order; awaited one batch at a time.
    size_of
        Items (spans, records, points) in a request.
    min_batch_size, max_batch_size
        Bounds of the batch target, items.
    max_wait
        Longest the oldest request waits for its batch to fill, seconds.
    latency_target_p99
        Target p99 of request latency from ``offer`` to the end of ``process``, seconds.
    max_queued_items
        Items the queue may hold; ``offer`` refuses beyond it (a request alone in an empty
        queue is always taken, or a big one could never enter).
    on_batch
        Called with (items, processing seconds) after each batch (``otelai_batch_size``).
    on_violation
        Called with the number of requests of a batch whose latency exceeded the target
        (``otelai_sla_violations_total``).
    on_error
        Called with the requests of a batch that ``process`` failed on (or that ``stop``
        left unprocessed) and the exception; default: log them.
    controller
        The control law; by default one built from the bounds above.
    depth
        Batches that may be handed on at once (see above); 1 when ``process`` never hands on.
    """

    def __init__(
        self,
        process: Callable[[list[T]], Awaitable[asyncio.Future[Any] | None]],
        *,
        size_of: Callable[[T], int],
        min_batch_size: int = 64,
        max_batch_size: int = 4096,
        max_wait: float = 0.002,
        latency_target_p99: float = 0.010,
        max_queued_items: int = 65536,
        on_batch: Callable[[int, float], None] | None = None,
        on_violation: Callable[[int], None] | None = None,
        on_error: Callable[[Sequence[T], BaseException], None] | None = None,
        controller: BatchController | None = None,
        depth: int = 1,
    ) -> None:
        self._process = process
        self._size_of = size_of
        self._max_queued = max_queued_items
        self._on_batch = on_batch
        self._on_violation = on_violation
        self._on_error = on_error
        self.controller = controller or BatchController(
            min_batch_size=min_batch_size,
            max_batch_size=max_batch_size,
            max_wait=max_wait,
            latency_target_p99=latency_target_p99,
        )
        # (request, items, enqueue time): tuples, not objects, on the per-request path.
        self._queue: deque[tuple[T, int, float]] = deque()
        self._queued_items = 0
        self._offered_since = 0
        self._mean_request = 0.0  # items a request, smoothed
        self._last_batch_end: float | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._flushing = False
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        # The batch in flight: (items, start time); wakes room waiters when it ends.
        self._in_flight: tuple[int, float] | None = None
        self._admission = asyncio.Lock()  # held by the one request waiting for room
        self._room_changed = asyncio.Event()
        self._depth = max(1, depth)
        self._handed: deque[_Handed] = deque()  # batches handed on, in order
        self._last_back = 0.0  # when the last handed-on batch came back

    @property
    def queued_items(self) -> int:
        """Items waiting (not counting the batch being processed)."""
        return self._queued_items

    def has_room(self, size: int) -> bool:
        """Whether a request of ``size`` items would finish within the latency target.

        Predicted by the cost model, within the controller's admission budget (``headroom``
        of the target, scaled down while admitted requests overrun it): what is left of the
        batch in flight (the wait of this request's batch before it starts), and one batch
        of everything queued plus this request (which bounds the next wait). So no request
        admitted waits in the queue past the target before its batch starts (it would be
        forwarded unscored) while batches stay as large as the target allows (larger
        batches cost less per item). Under saturation a request's latency from admission
        stays under twice the target; queueing beyond that happens before admission, where
        it holds no scoring work. Before the model is fitted, room is one batch
        target's worth of queued items. Always ``True`` when nothing is queued or in flight
        (a request alone must never wait for room) and once stopped (``offer`` refuses).
        """
        if self._closed or (not self._queue and self._in_flight is None and not self._handed):
            return True
        model = self.controller.model
        if model is None:
            return self._queued_items + size <= self.controller.target
        now = asyncio.get_running_loop().time()
        left = 0.0
        if self._in_flight is not None:
            items, started = self._in_flight
            left = max(0.0, started + model.cost(items) - now)
        if self._handed:  # in the worker, one after the other
            first = self._handed[0]
            left += max(0.0, max(first.sent, self._last_back) + model.cost(first.items) - now)
            left += sum(model.cost(batch.items) for batch in list(self._handed)[1:])
        budget = self.controller.admission_budget
        return left <= budget and model.cost(self._queued_items + size) <= budget

    async def wait_for_room(self, size: int, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until :meth:`has_room` (``True``), at most ``timeout`` seconds (``False``).

        Callers are admitted in arrival order: one waits for room at a time, the others
        wait behind it, so a change of room wakes one task, not every one held.
        """
        if not self._admission.locked() and self.has_room(size):
            return True
        try:
            async with asyncio.timeout(timeout), self._admission:
                while not self.has_room(size):
                    self._room_changed.clear()
                    self._wake()  # a batch waiting to fill should start: no more is coming
                    await self._room_changed.wait()
        except TimeoutError:
            return False
        return True

    def _wake_room_waiters(self) -> None:
        self._room_changed.set()

    def offer(self, item: T) -> bool:
        """Queue ``item``; ``False`` (and nothing queued) when the queue is full or stopped.

        Must be called on the batcher's event loop; never blocks.
        """
        if self._closed:
            return False
        size = self._size_of(item)
        if self._queue and self._queued_items + size > self._max_queued:
            return False
        self._queue.append((item, size, asyncio.get_running_loop().time()))
        self._mean_request += _REQUEST_SMOOTHING * (size - self._mean_request)
        self._queued_items += size
        self._offered_since += size
        self._idle.clear()
        waiter = self._waiter
        # Wake the worker only when that changes what it waits for: a first request
        # (it needs a deadline) or a full batch.
        if (
            waiter is not None
            and not waiter.done()
            and (len(self._queue) == 1 or self._queued_items >= self.controller.target)
        ):
            waiter.set_result(None)
        return True

    async def start(self) -> None:
        """Start the worker task on the running loop."""
        if self._task is None:
            self._last_batch_end = asyncio.get_running_loop().time()
            self._task = asyncio.create_task(self._run(), name="otelai-batcher")

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Process everything queued without waiting for batches to fill.

        Returns ``True`` when the queue is empty and nothing is in flight within ``timeout``
        seconds. Requests offered meanwhile are drained too.
        """
        self._flushing = True
        self._wake()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        finally:
            self._flushing = False
        return True

    async def stop(self) -> None:
        """Cancel the worker; hand the in-flight and queued requests to ``on_error``."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        left = [entry[0] for entry in self._queue]
        self._queue.clear()
        self._queued_items = 0
        self._idle.set()
        self._wake_room_waiters()
        if left:
            self._report_error(left, BatcherStopped("batcher stopped before processing"))

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _sleep_or_wake(self, delay: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiter = waiter
        handle = None
        if delay is not None:
            handle = loop.call_later(delay, _resolve, waiter)
        try:
            await waiter
        finally:
            self._waiter = None
            if handle is not None:
                handle.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                if not self._handed:
                    self._idle.set()
                await self._sleep_or_wake(None)
            deadline = self._queue[0][2] + self._wait_for_company()
            # Requests held for room mean the queue is as full as it may get: start now.
            while (
                self._queued_items < self.controller.target
                and not self._flushing
                and not self._admission.locked()
            ):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                await self._sleep_or_wake(remaining)
            # Let requests that are already received but not yet offered (their handlers are
            # ready to run on this loop) join the batch: one scheduling round costs microseconds,
            # a batch of one request where several were waiting costs its whole fixed overhead.
            for _ in range(_GATHER_ROUNDS):
                queued = len(self._queue)
                await asyncio.sleep(0)
                if len(self._queue) == queued:
                    break
            while len(self._handed) >= self._depth:  # the worker is full: cut when it can take one
                await self._sleep_or_wake(None)
            await self._run_batch(loop)

    def _wait_for_company(self) -> float:
        """How long the oldest request may wait for its batch to fill: the controller's wait,
        or none when, at the measured arrival rate, not even one more request of the usual
        size is expected within it. Waiting then only adds latency (at half load, requests
        spaced wider than the wait would each wait the whole of it alone)."""
        wait = self.controller.wait
        if self.controller.arrival_rate * wait < self._mean_request:
            return 0.0
        return wait

    def _take(self) -> tuple[list[T], list[int], list[float]]:
        # Work-conserving: the target decides how long to wait for a batch to fill, but what
        # is already queued goes in one batch (up to the maximum). Under overload, taking a
        # target-sized slice each time only adds per-batch cost while the rest waits anyway.
        target = max(self.controller.target, min(self._queued_items, self.controller.max_batch_size))
        items: list[T] = []
        sizes: list[int] = []
        times: list[float] = []
        total = 0
        queue = self._queue
        while queue and (not items or total + queue[0][1] <= target):
            item, size, enqueued = queue.popleft()
            items.append(item)
            sizes.append(size)
            times.append(enqueued)
            total += size
        self._queued_items -= total
        return items, sizes, times

    async def _run_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        items, sizes, times = self._take()
        total = sum(sizes)
        started = loop.time()
        self._in_flight = (total, started)
        self._wake_room_waiters()  # the queue just emptied into this batch
        failed = False
        try:
            handed = await self._process(items)
            if handed is not None and not handed.done():
                batch = _Handed(total, loop.time(), times, sizes, handed)
                self._handed.append(batch)
                handed.add_done_callback(lambda _: self._back(batch))
                return
        except asyncio.CancelledError:
            self._report_error(items, BatcherStopped("batcher stopped while processing"))
            raise
        except Exception as exc:
            failed = True
            log.error("batch processing failed", extra={"requests": len(items), "error": repr(exc)})
            self._report_error(items, exc)
        finally:
            self._in_flight = None
        done = loop.time()
        self._observe(
            total,
            done - started,
            np.asarray(times, dtype=np.float64),
            np.asarray(sizes, dtype=np.float64),
            done,
            failed,
        )
        self._wake_room_waiters()  # after the model has learnt from this batch

    def _back(self, batch: _Handed) -> None:
        """A handed-on batch came back: learn from it as from one processed here."""
        done = asyncio.get_running_loop().time()
        with contextlib.suppress(ValueError):
            self._handed.remove(batch)
        seconds = done - max(batch.sent, self._last_back)  # its time in the worker
        self._last_back = done
        failed = batch.future.cancelled() or batch.future.exception() is not None
        self._observe(
            batch.items,
            seconds,
            np.asarray(batch.times, dtype=np.float64),
            np.asarray(batch.sizes, dtype=np.float64),
            done,
            failed,
        )
        self._wake_room_waiters()
        self._wake()  # room for the next batch; or idle, if nothing else is queued or out

    def _observe(
        self,
        total: int,
        seconds: float,
        enqueued: npt.NDArray[np.float64],
        weights: npt.NDArray[np.float64],
        done: float,
        failed: bool,
    ) -> None:
        latencies = done - enqueued
        controller = self.controller
        if self._last_batch_end is not None:
            controller.observe_arrivals(self._offered_since, done - self._last_batch_end)
        self._offered_since = 0
        self._last_batch_end = done
        # A failed batch's time says nothing about the cost of scoring; keep it out of the model.
        try:
            if not failed:
                controller.observe_batch(total, seconds, latencies, weights)
        except Exception:  # the worker must outlive a bug in the control law
            log.exception("batch controller failed")
        violations = int(np.count_nonzero(latencies > controller.latency_target_p99))
        try:
            if self._on_batch is not None:
                self._on_batch(total, seconds)
            if violations and self._on_violation is not None:
                self._on_violation(violations)
        except Exception:
            log.exception("batch callback failed")

    def _report_error(self, items: Sequence[T], exc: BaseException) -> None:
        if self._on_error is None:
            log.error("requests not processed", extra={"requests": len(items), "error": repr(exc)})
            return
        try:
            self._on_error(items, exc)
        except Exception:
            log.exception("on_error callback failed")


@dataclass(frozen=True, eq=False)
class _Handed:
    """A batch handed on by ``process``: its items, when, its requests' enqueue times and sizes."""

    items: int
    sent: float
    times: list[float]
    sizes: list[int]
    future: asyncio.Future[Any]


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
