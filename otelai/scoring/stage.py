"""The scoring stage of one signal: adaptive batches in, scored and selected payloads out.

A request is acknowledged only after its batch was scored and what is kept of it sits in the
exporters' queues, so a persistent queue still holds everything acknowledged. Scoring runs on
the event loop (no worker thread: under the GIL a thread adds switching jitter to every
request's latency, and the batcher bounds how long one batch holds the loop).

Fail open: when a batch cannot be scored (an error) or has already waited past the latency
target (too slow), its items are forwarded tagged ``otelai.selection.reason=fail_open``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

from otelai.batching.adaptive import AdaptiveBatcher
from otelai.config import Batching
from otelai.pipeline import Admission, Payload, Pipeline
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

log = logging.getLogger("otelai.scoring")

_Item = tuple[Payload, "asyncio.Future[Admission]"]


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
    """

    def __init__(
        self,
        processor: Processor,
        pipeline: Pipeline,
        batching: Batching,
        metrics: Metrics,
        *,
        tick_interval: float = 10.0,
    ) -> None:
        self.processor = processor
        self._pipeline = pipeline
        self._metrics = metrics
        self._target_ns = int(batching.latency_target * 1e9)
        self._tick_interval = tick_interval
        self._ticker: asyncio.Task[None] | None = None
        self._pending_ticks: list[Payload] = []
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
        )

    async def start(self) -> None:
        await self._batcher.start()
        self._ticker = asyncio.create_task(self._tick_loop(), name=f"otelai-tick-{self.processor.signal}")

    async def submit(self, payload: Payload) -> Admission:
        future: asyncio.Future[Admission] = asyncio.get_running_loop().create_future()
        if not self._batcher.offer((payload, future)):
            return Admission.OVERLOADED
        return await future

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109
        drained = await self._batcher.drain(timeout)
        self._flush_ticks(final=True)
        return drained

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        await self._batcher.stop()

    def _on_batch(self, items: int, seconds: float) -> None:
        self._metrics.batch_size.observe(items)

    async def _process(self, items: list[_Item]) -> None:
        payloads = [payload for payload, _ in items]
        oldest = min(payload.received_ns for payload in payloads)
        if time.monotonic_ns() - oldest > self._target_ns:
            forward = self._fail_open(payloads, "too_slow")
        else:
            try:
                forward = self.processor.process(payloads)
            except Exception:
                log.exception("scoring failed; forwarding the batch unscored")
                forward = self._fail_open(payloads, "error")
        self._finish(items, forward)

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
            self._pipeline.observe_latency([payload for payload, _ in items])
        for _, future in items:
            if not future.done():
                future.set_result(admission)

    def _on_error(self, items: Sequence[_Item], exc: BaseException) -> None:
        # The batcher could not run ``_process`` (stopped, or a bug): forward unscored.
        self._finish(items, self._fail_open([payload for payload, _ in items], "error"))

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick_interval)
            self._flush_ticks()

    def _flush_ticks(self, final: bool = False) -> None:
        try:
            self._pending_ticks.extend(self.processor.tick(time.time_ns()))
        except Exception:
            log.exception("periodic output failed")
        # Summaries the exporters cannot take now wait for the next tick; at the end, try once.
        while self._pending_ticks:
            if self._pipeline.deliver(self._pending_ticks[0]) is not Admission.ACCEPTED:
                if final:
                    log.warning(
                        "summaries not delivered at shutdown", extra={"requests": len(self._pending_ticks)}
                    )
                break
            self._pending_ticks.pop(0)
