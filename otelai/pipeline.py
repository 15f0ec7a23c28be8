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


class Pipeline:
    """Fans each admitted payload out to every sink."""

    def __init__(self, sinks: Sequence[Sink], metrics: Metrics) -> None:
        # Sinks that can fail a put (disk) go first, so a failure leaves the others untouched.
        self._sinks = sorted(sinks, key=lambda sink: not sink.durable)
        self._metrics = metrics
        self._stopping = False

    def stop_accepting(self) -> None:
        self._stopping = True

    async def submit(self, payload: Payload) -> Admission:
        """Admit ``payload``; the answer is what the receiver tells the client."""
        if self._stopping:
            return Admission.STOPPING
        return self.hand_off(payload)

    def hand_off(self, payload: Payload) -> Admission:
        """Hand ``payload`` to every sink, or to none when any is full."""
        # No await between the check and the puts: on one event loop this is atomic.
        if not all(sink.has_room(payload) for sink in self._sinks):
            return Admission.OVERLOADED
        signal = payload.signal.value
        for sink in self._sinks:
            try:
                sink.put(payload)
            except OSError as exc:
                # Refused, so the client retries; a sink that already took it sees it twice.
                log.error("queue storage failed", extra={"queue": sink.name, "error": str(exc)})
                self._metrics.receiver_refused.labels(signal, "storage").inc()
                return Admission.OVERLOADED
        self._metrics.selection_items.labels(signal, "forwarded").inc(payload.items)
        elapsed = (time.monotonic_ns() - payload.received_ns) / 1e9
        self._metrics.pipeline_latency.labels(signal).observe(elapsed)
        return Admission.ACCEPTED
