"""The scoring stage of one signal: adaptive batches in, scored and selected payloads out.

A request is acknowledged only after its batch was scored and what is kept of it sits in the
exporters' queues, so a persistent queue still holds everything acknowledged.

Where scoring runs: given an ``executor`` (one thread, shared by every stage so that the
processors, their shared summaries and the critical-trace set are only ever touched by one
thread), the processor's calls run there while the event loop goes on receiving, parsing and
exporting. The numba kernels (``nogil``), ONNX Runtime and the larger numpy operations release
the GIL, so on a second core the loop's work overlaps that part of scoring. Without an
executor, scoring runs on the event loop (the batcher bounds how long one batch holds it).
Batches still run one at a time and in order; results are delivered on the event loop.

Fail open: when a batch cannot be scored (an error), its items are forwarded tagged
``otelai.selection.reason=fail_open``; so are the requests of a batch that have already waited
past the latency target since they were queued (too slow), while the rest of it is scored.

Back-pressure: a request is queued only when the batcher predicts it can be scored within the
latency target (:meth:`AdaptiveBatcher.wait_for_room`); otherwise it waits for room, up to
``max_admission_wait``, and is then refused (``OVERLOADED``: the client retries). A saturated
hop thus scores what it takes, rather than taking everything and forwarding most of it unscored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar

from otelai.batching.adaptive import AdaptiveBatcher
from otelai.config import Batching
from otelai.pipeline import Admission, Payload, Pipeline
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

log = logging.getLogger("otelai.scoring")

# (request, its acknowledgement, monotonic ns when it was queued)
_Item = tuple[Payload, "asyncio.Future[Admission]", int]
# Seconds between forwarding a batch and learning from it (on the event loop).
SETTLE_DELAY = 0.001
_R = TypeVar("_R")


class Processor(Protocol):
    """Scores and selects whole batches of one signal."""

    signal: Signal

    def process(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Score, tag and select; return what to forward (possibly nothing)."""
        ...

    def fail_open(self, payloads: Sequence[Payload], reason: str) -> list[Payload]:
        """Everything in ``payloads``, tagged as forwarded unscored; must not raise."""
        ...

    def tick(self, now_ns: int) -> list[Payload]:
        """Periodic output at wall-clock ``now_ns`` (summaries of what was dropped), forwarded like the rest."""
        ...

    def settle(self) -> None:
        """Learn what the batches already forwarded teach, if the processor left that for later."""
        ...


class ScoringStage:
    """Batches one signal's requests, runs the processor, hands results to the pipeline.

    Parameters
    ----------
    processor
        The signal's scoring and selection.
    pipeline
        Delivers what is forwarded to the exporters.
    batching
        Adaptive batching settings.
    metrics
        ``otelai_batch_size``, ``otelai_sla_violations_total``, fail-open counts.
    tick_interval
        Seconds between ``processor.tick`` calls (summaries).
    max_admission_wait
        Longest a request waits for room in the queue before it is refused, seconds. Long:
        a held request costs no CPU, a refused one was received and parsed for nothing and
        comes back.
    executor
        Where the processor's calls run (a single thread, shared by all stages); ``None``:
        on the event loop. The caller owns it and shuts it down after :meth:`stop`.
    """

    def __init__(
        self,
        processor: Processor,
        pipeline: Pipeline,
        batching: Batching,
        metrics: Metrics,
        *,
        tick_interval: float = 10.0,
        max_admission_wait: float = 1.0,
        executor: Executor | None = None,
    ) -> None:
        self.processor = processor
        self._executor = executor
        self._max_admission_wait = max_admission_wait
        # Processor calls on the executor: stop() waits for them, so the processor is never
        # closed while a call is still running on its thread.
        self._running: set[asyncio.Future[Any]] = set()
        self._pipeline = pipeline
        self._metrics = metrics
        self._target_ns = int(batching.latency_target * 1e9)
        self._tick_interval = tick_interval
        self._ticker: asyncio.Task[None] | None = None
        self._pending_ticks: list[Payload] = []
        # A processor in the scoring worker (``submit`` and ``result``): up to its ``depth``
        # batches out at once, finished as their replies come (otelai.scoring.worker).
        depth = getattr(processor, "depth", None)
        self._remote = bool(depth)
        self._replies: set[asyncio.Task[None]] = set()
        self._remote_failing = False
        self._batcher: AdaptiveBatcher[_Item] = AdaptiveBatcher(
            self._process,
            size_of=lambda item: max(1, item[0].items),
            min_batch_size=batching.min_batch_size,
            max_batch_size=batching.max_batch_size,
            max_wait=batching.max_wait,
            latency_target_p99=batching.latency_target,
            max_queued_items=batching.max_queued_items,
            on_batch=self._on_batch,
            on_violation=lambda count: metrics.sla_violations.inc(count),
            on_error=self._on_error,
            depth=depth or 1,
        )

    async def start(self) -> None:
        await self._batcher.start()
        self._ticker = asyncio.create_task(self._tick_loop(), name=f"otelai-tick-{self.processor.signal}")

    async def submit(self, payload: Payload) -> Admission:
        batcher = self._batcher
        if not await batcher.wait_for_room(payload.items, self._max_admission_wait):
            return Admission.OVERLOADED
        future: asyncio.Future[Admission] = asyncio.get_running_loop().create_future()
        if not batcher.offer((payload, future, time.monotonic_ns())):
            return Admission.OVERLOADED
        return await future

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109
        # Batches in the scoring worker count: the batcher is idle only once they came back.
        drained = await self._batcher.drain(timeout)
        await self._flush_ticks(final=True)
        return drained

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        await self._batcher.stop()
        if self._replies:  # each ends with its reply, or fails open when the worker is gone
            await asyncio.gather(*self._replies, return_exceptions=True)
        if self._running:  # cancelled on the loop, still running on their thread
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _call(
        self,
        function: Callable[[Sequence[Payload]], _R],
        payloads: Sequence[Payload],
        on_result: Callable[[_R], object] | None = None,
    ) -> _R:
        """``function(payloads)`` on the executor (or here, without one).

        ``on_result`` gets the result on the event loop even when the awaiting task is
        cancelled meanwhile (the thread cannot be), so nothing computed is dropped.
        """
        if self._executor is None:
            result = function(payloads)
            if on_result is not None:
                on_result(result)
            return result
        future = asyncio.get_running_loop().run_in_executor(self._executor, function, payloads)
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        if on_result is not None:
            future.add_done_callback(lambda done: on_result(done.result()))
        return await asyncio.shield(future)

    def _on_batch(self, items: int, seconds: float) -> None:
        self._metrics.batch_size.observe(items)

    async def _process(self, items: list[_Item]) -> asyncio.Future[None] | None:
        # Since queued, not since received: time spent waiting for room was not in the queue.
        # Only the requests already past the target are forwarded unscored; the rest of the
        # batch (queued later) is scored: one late request must not cost its whole batch.
        late_after = time.monotonic_ns() - self._target_ns
        late = [item for item in items if item[2] < late_after]
        on_time = [item for item in items if item[2] >= late_after] if late else items
        if late:
            self._finish(late, self._fail_open([payload for payload, _, _ in late], "too_slow"))
        if not on_time:
            return None
        if self._remote:
            return await self._submit(on_time)
        self._finish(on_time, await self._call(self._score, [payload for payload, _, _ in on_time]))
        self._settle_soon()
        return None

    async def _submit(self, items: list[_Item]) -> asyncio.Future[None] | None:
        """Hand a batch to the scoring worker and return once it is sent, with the task that
        finishes it when the reply comes (the batcher keeps up to the worker's depth out)."""
        payloads = [payload for payload, _, _ in items]
        try:
            reply = await self.processor.submit(payloads)  # type: ignore[attr-defined]
        except Exception as exc:
            self._finish(items, self._remote_failed(payloads, exc))
            return None
        task = asyncio.create_task(self._receive(items, payloads, reply))
        self._replies.add(task)
        task.add_done_callback(self._replies.discard)
        return task

    async def _receive(self, items: list[_Item], payloads: list[Payload], reply: Any) -> None:
        try:
            forward: list[Payload] = await self.processor.result(reply)  # type: ignore[attr-defined]
            self._remote_failing = False
        except Exception as exc:
            forward = self._remote_failed(payloads, exc)
        self._finish(items, forward)

    def _remote_failed(self, payloads: list[Payload], exc: Exception) -> list[Payload]:
        if not self._remote_failing:  # once per run of failures: a dead worker fails every batch
            log.error("scoring failed; forwarding batches unscored", extra={"error": str(exc)})
        self._remote_failing = True
        return self._fail_open(payloads, "error")

    def _settle_soon(self) -> None:
        """Have the processor learn from the batch just forwarded, once the loop has sent it.

        Scheduled :data:`SETTLE_DELAY` later, so that the work the hand-off woke runs first:
        the acknowledgements and the exporters' sends each take a few turns of the loop (a
        gRPC call starts in a task of its own). A batch that starts first settles anyway (the
        processor does it before scoring). With an executor, it runs there, in order.
        """
        if hasattr(self.processor, "process_async"):
            return  # a remote processor learns in its own process, right after replying
        loop = asyncio.get_running_loop()
        if self._executor is None:
            loop.call_later(SETTLE_DELAY, self._settle)
            return
        future = loop.run_in_executor(self._executor, self._settle)
        self._running.add(future)
        future.add_done_callback(self._running.discard)

    def _settle(self) -> None:
        try:
            self.processor.settle()
        except Exception:
            log.exception("learning from a forwarded batch failed; its lessons are skipped")

    def _score(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Scoring and selection of one batch; on the executor's thread when there is one."""
        try:
            return self.processor.process(payloads)
        except Exception:
            log.exception("scoring failed; forwarding the batch unscored")
            return self._fail_open(payloads, "error")

    def _fail_open(self, payloads: Sequence[Payload], reason: str) -> list[Payload]:
        items = sum(payload.items for payload in payloads)
        self._metrics.selection_items.labels(self.processor.signal.value, "fail_open").inc(items)
        self._metrics.scoring_fail_open.labels(self.processor.signal.value, reason).inc(items)
        try:
            return self.processor.fail_open(payloads, reason)
        except Exception:  # forward the original bytes: untagged beats lost
            log.exception("tagging for fail-open failed; forwarding untouched")
            return list(payloads)

    def _finish(self, items: Sequence[_Item], forward: Sequence[Payload]) -> None:
        admission = Admission.ACCEPTED
        for payload in forward:
            admission = self._pipeline.deliver(payload)
            if admission is not Admission.ACCEPTED:
                break
        if admission is Admission.ACCEPTED:
            self._pipeline.observe_latency([payload for payload, _, _ in items])
        for _, future, _ in items:
            if not future.done():
                future.set_result(admission)

    def _on_error(self, items: Sequence[_Item], exc: BaseException) -> None:
        # The batcher could not run ``_process`` (stopped, or a bug): forward unscored.
        self._finish(items, self._fail_open([payload for payload, _, _ in items], "error"))

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick_interval)
            await self._flush_ticks()

    def _tick(self, _: Sequence[Payload]) -> list[Payload]:
        try:
            return self.processor.tick(time.time_ns())
        except Exception:
            log.exception("periodic output failed")
            return []

    async def _flush_ticks(self, final: bool = False) -> None:
        if self._remote:
            try:
                reply = await self.processor.submit_tick(time.time_ns())  # type: ignore[attr-defined]
                self._pending_ticks.extend(await self.processor.result(reply))  # type: ignore[attr-defined]
            except Exception as exc:
                log.warning("periodic output failed", extra={"error": str(exc)})
        else:  # on the executor too: the summaries are shared with the batch path
            await self._call(self._tick, (), on_result=self._pending_ticks.extend)
        # Summaries the exporters cannot take now wait for the next tick; at the end, try once.
        while self._pending_ticks:
            if self._pipeline.deliver(self._pending_ticks[0]) is not Admission.ACCEPTED:
                if final:
                    log.warning(
                        "summaries not delivered at shutdown", extra={"requests": len(self._pending_ticks)}
                    )
                break
            self._pending_ticks.pop(0)
