"""A small in-process exporter for the queue and retry tests: it records and is switchable."""

from __future__ import annotations

import asyncio

from otelai.config import RetryOnFailure
from otelai.exporter.base import Exporter, ExportOutcome, ExportResult
from otelai.signals import Signal

FAST_RETRY = RetryOnFailure(
    initial_interval="10ms", max_interval="20ms", randomization_factor=0.0, max_elapsed_time="0"
)


class RecordingExporter(Exporter):
    """Returns ``script`` results in order, then ``result``; records what it delivered.

    While ``gate`` is cleared, attempts wait on it (to hold requests in flight).
    """

    def __init__(self, name: str = "otlp/test", result: ExportResult | None = None) -> None:
        super().__init__(name)
        self.result = result if result is not None else ExportResult.success()
        self.script: list[ExportResult] = []
        self.delivered: list[tuple[Signal, bytes]] = []
        self.attempts = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.started = False
        self.shut_down = False
        self.gate = asyncio.Event()
        self.gate.set()
        self.attempted = asyncio.Event()

    async def start(self) -> None:
        self.started = True

    async def export(self, signal: Signal, data: bytes) -> ExportResult:
        self.attempts += 1
        self.attempted.set()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await self.gate.wait()
        finally:
            self.in_flight -= 1
        result = self.script.pop(0) if self.script else self.result
        if result.outcome is ExportOutcome.SUCCESS:
            self.delivered.append((signal, data))
        return result

    async def shutdown(self) -> None:
        self.shut_down = True


def per_signal(delivered: list[tuple[Signal, bytes]]) -> list[tuple[Signal, bytes]]:
    """``delivered`` grouped by signal, each signal's requests in their order.

    The queue keeps order within a signal only: a consumer merges a request with the later
    requests of its signal that wait behind requests of other signals.
    """
    return sorted(delivered, key=lambda pair: pair[0].value)
