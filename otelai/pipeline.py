"""The hand-off from receivers to exporters.

A receiver decodes and validates a request into a :class:`Payload` and calls
:meth:`Pipeline.submit`. Admission is all-or-nothing across the exporters' queues, so a
request the pipeline refuses is in none of them and the client's retry duplicates nothing.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

log = logging.getLogger("otelai.pipeline")


@dataclass(frozen=True, slots=True)
class Payload:
    """One accepted OTLP export request, kept serialised.

    ``data`` is the ``Export*ServiceRequest`` protobuf; ``received_ns`` is
    ``time.monotonic_ns()`` at receipt, for the pipeline latency; ``request`` is the parsed
    message when the receiver has it (scoring reads it instead of parsing again).
    """

    signal: Signal
    data: bytes
    items: int
    received_ns: int = field(default_factory=time.monotonic_ns)
    request: Any = field(default=None, compare=False, repr=False)


class Admission(enum.Enum):
    ACCEPTED = "accepted"
    OVERLOADED = "overloaded"
    STOPPING = "stopping"


class Sink(Protocol):
    """Where the pipeline hands payloads: an exporter's sending queue."""

    name: str
    durable: bool  # a put that can fail (disk); put first

    def has_room(self, payload: Payload) -> bool: ...

    def put(self, payload: Payload) -> None: ...


class Stage(Protocol):
    """Work between admission and the sinks for one signal (the scoring stage)."""

    async def submit(self, payload: Payload) -> Admission: ...


class Pipeline:
    """Admits payloads, runs each signal's stage if it has one, and fans the result out."""

    def __init__(self, sinks: Sequence[Sink], metrics: Metrics) -> None:
        # Sinks that can fail a put (disk) go first, so a failure leaves the others untouched.
        self._sinks = sorted(sinks, key=lambda sink: not sink.durable)
        self._metrics = metrics
        self._stopping = False
        self.stages: dict[Signal, Stage] = {}

    def stop_accepting(self) -> None:
        self._stopping = True

    async def submit(self, payload: Payload) -> Admission:
        """Admit ``payload``; the answer is what the receiver tells the client. Never raises."""
        try:
            return await self._submit(payload)
        except Exception:  # not acknowledged, so the client retries and nothing is lost
            log.exception("pipeline failed to take a %s request", payload.signal.value)
            return Admission.STOPPING

    async def _submit(self, payload: Payload) -> Admission:
        if self._stopping:
            return Admission.STOPPING
        stage = self.stages.get(payload.signal)
        if stage is None:
            admission = self.deliver(payload)
            if admission is Admission.ACCEPTED:
                self._metrics.selection_items.labels(payload.signal.value, "forwarded").inc(payload.items)
                self.observe_latency([payload])
            return admission
        # Refuse before scoring when the exporters could not take the result anyway.
        if not self.has_room(payload):
            return Admission.OVERLOADED
        return await stage.submit(payload)

    def has_room(self, payload: Payload) -> bool:
        return all(sink.has_room(payload) for sink in self._sinks)

    def deliver(self, payload: Payload) -> Admission:
        """Hand ``payload`` to every sink, or to none when any is full."""
        # No await between the check and the puts: on one event loop this is atomic.
        if not self.has_room(payload):
            return Admission.OVERLOADED
        for sink in self._sinks:
            try:
                sink.put(payload)
            except OSError as exc:
                # Refused, so the client retries; a sink that already took it sees it twice.
                log.error("queue storage failed", extra={"queue": sink.name, "error": str(exc)})
                self._metrics.receiver_refused.labels(payload.signal.value, "storage").inc()
                return Admission.OVERLOADED
        return Admission.ACCEPTED

    def observe_latency(self, payloads: Sequence[Payload]) -> None:
        """Receipt-to-hand-off latency of each request, observed at hand-off."""
        now = time.monotonic_ns()
        for payload in payloads:
            self._metrics.pipeline_latency.labels(payload.signal.value).observe(
                (now - payload.received_ns) / 1e9
            )
