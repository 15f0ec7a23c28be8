"""What a replay data set hands the sender: serialised OTLP requests, in send order.

Every data set module (one per ``--dataset`` name) exposes
``batches(path, *, max_items) -> Iterator[Batch | SourceError]``. A source that cannot be read
is reported as a :class:`SourceError` item instead of raised, so one bad window does not end
the replay of the others.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from otelai.signals import Signal


@dataclass(frozen=True, slots=True)
class Batch:
    """One serialised ``Export*ServiceRequest``.

    Attributes
    ----------
    signal
        Which OTLP signal the request carries.
    data
        The request's protobuf bytes.
    items
        Spans, data points or log records in it.
    time_unix_nano
        Timestamp of its earliest item; pacing keeps the spacing of these.
    source
        Where it came from (a window's name), for progress and logs.
    """

    signal: Signal
    data: bytes
    items: int
    time_unix_nano: int
    source: str


@dataclass(frozen=True, slots=True)
class SourceError:
    """A source (a window, a file) that was skipped because it could not be converted."""

    source: str
    reason: str


class Dataset(Protocol):
    """The function each data set module exposes as ``batches``."""

    def __call__(self, path: Path, *, max_items: int) -> Iterator[Batch | SourceError]: ...
