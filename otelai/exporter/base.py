"""The exporter interface: one export attempt of one serialised OTLP request.

Exporters do one attempt and report the outcome as data; retry, backoff and queueing
live in :mod:`otelai.exporter.queue` and :mod:`otelai.exporter.retry` so every
exporter gets the same semantics. ``export`` never raises.
"""

from __future__ import annotations

import abc
import enum
from dataclasses import dataclass

from otelai.signals import Signal


class ExportOutcome(enum.Enum):
    SUCCESS = "success"
    RETRYABLE = "retryable"
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What one attempt achieved.

    ``retry_after`` is the server's requested delay in seconds (gRPC ``RetryInfo``,
    HTTP ``Retry-After``), if it gave one. ``rejected`` counts items the server refused in a
    partial success (not retried, as the OTLP specification says).
    """

    outcome: ExportOutcome
    message: str = ""
    retry_after: float | None = None
    rejected: int = 0

    @classmethod
    def success(cls, rejected: int = 0, message: str = "") -> ExportResult:
        return cls(ExportOutcome.SUCCESS, message=message, rejected=rejected)

    @classmethod
    def retryable(cls, message: str, retry_after: float | None = None) -> ExportResult:
        return cls(ExportOutcome.RETRYABLE, message=message, retry_after=retry_after)

    @classmethod
    def permanent(cls, message: str) -> ExportResult:
        return cls(ExportOutcome.PERMANENT, message=message)


class Exporter(abc.ABC):
    """Sends serialised OTLP requests (``Export*ServiceRequest`` protobuf bytes) somewhere."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self) -> None:
        """Open connections; called once before the first export."""

    @abc.abstractmethod
    async def export(self, signal: Signal, data: bytes) -> ExportResult:
        """Make one attempt to deliver ``data``; never raises."""

    async def shutdown(self) -> None:
        """Release connections; no export follows."""
