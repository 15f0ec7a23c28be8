"""Send a data set to an OTLP endpoint with otelai's own exporters.

``otelai replay`` is also how users feed captured telemetry into a dry run, so it goes through
the same exporter classes and retry policy as the service (an exporter makes one attempt;
:func:`otelai.exporter.retry.send_with_retry` retries what is retryable). Requests are sent one
at a time, in the data set's order; a request that still fails is counted and the replay goes on.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from tqdm import tqdm

from otelai.config import ClientTLS, OtlpExporter, OtlpHttpExporter, RetryOnFailure
from otelai.exporter.base import Exporter, ExportOutcome
from otelai.exporter.retry import Backoff, send_with_retry
from otelai.replay.batch import Batch, Dataset, SourceError

log = logging.getLogger(__name__)

# Data set name -> module exposing ``batches(path, *, max_items)``; imported only when used.
DATASETS: dict[str, str] = {
    "otel-demo": "otelai.replay.otel_demo",
    "nab": "otelai.replay.nab",
    "hdfs": "otelai.replay.hdfs",
    "bgl": "otelai.replay.bgl",
    "asd": "otelai.replay.asd",
    "smd": "otelai.replay.smd",
}

DEFAULT_MAX_ITEMS = 512

# A replay is interactive: give up on a request after a minute rather than the service's five.
REPLAY_RETRY = RetryOnFailure(initial_interval="200ms", max_interval="5s", max_elapsed_time="60s")


@dataclass(slots=True)
class ReplayStats:
    """What a replay sent.

    Attributes
    ----------
    requests, items, bytes
        Requests delivered, the items (spans, points, records) in them, and their size.
    failures, failed_items
        Requests not delivered (a permanent error, or retries given up) and their items.
    rejected
        Items the endpoint refused in partial-success responses.
    skipped
        Sources (windows, files) that could not be read or converted.
    """

    requests: int = 0
    items: int = 0
    bytes: int = 0
    failures: int = 0
    failed_items: int = 0
    rejected: int = 0
    skipped: int = 0


def dataset_batches(
    dataset: str, path: Path, *, max_items: int = DEFAULT_MAX_ITEMS
) -> Iterator[Batch | SourceError]:
    """The requests of ``dataset`` found at ``path``, in send order."""
    module_name = DATASETS.get(dataset)
    if module_name is None:
        raise ValueError(f"dataset {dataset} is not supported yet; supported: {', '.join(DATASETS)}")
    path = Path(path)
    if not path.exists():  # data sets read lazily: fail here, before connecting
        raise FileNotFoundError(f"{dataset} data not found at {path}")
    batches = cast(Dataset, importlib.import_module(module_name).batches)
    return batches(path, max_items=max_items)


def exporter_config(
    protocol: Literal["grpc", "http"],
    endpoint: str,
    *,
    headers: dict[str, str] | None = None,
    insecure: bool = True,
    compression: Literal["gzip", "none"] = "gzip",
) -> OtlpExporter | OtlpHttpExporter:
    """Exporter settings for ``endpoint`` (``host:port``, or a URL with its scheme)."""
    common = {
        "headers": headers or {},
        "compression": compression,
        "tls": ClientTLS(insecure=insecure),
        "retry_on_failure": REPLAY_RETRY,
    }
    if protocol == "grpc":
        return OtlpExporter(endpoint=endpoint, **common)
    if protocol == "http":
        if "://" not in endpoint:
            endpoint = f"{'http' if insecure else 'https'}://{endpoint}"
        return OtlpHttpExporter(endpoint=endpoint, **common)
    raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")


def make_exporter(config: OtlpExporter | OtlpHttpExporter) -> Exporter:
    """The real exporter class for ``config``."""
    if isinstance(config, OtlpExporter):
        from otelai.exporter.otlp_grpc import OtlpGrpcExporter

        return OtlpGrpcExporter("replay", config)
    from otelai.exporter.otlp_http import OtlpHttpExporter as HttpExporter

    return HttpExporter("replay", config)


class Pacer:
    """Keeps the spacing of the data's own timestamps between sends, divided by ``speed``.

    A timestamp earlier than the previous one (windows not in capture order) sends at once;
    the spacing after it is kept again. When sending falls behind, later sends catch up.

    Parameters
    ----------
    speed
        1.0 is real time, 10.0 ten times faster.
    clock, sleep
        Monotonic seconds and an async sleep; injectable for tests.
    """

    def __init__(
        self,
        speed: float,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if not speed > 0:
            raise ValueError(f"speed must be greater than 0, got {speed}")
        self._speed = speed
        self._clock = clock
        self._sleep = sleep
        self._last_ns: int | None = None
        self._due = 0.0

    async def wait(self, time_unix_nano: int) -> None:
        """Wait until the item stamped ``time_unix_nano`` is due."""
        if self._last_ns is None:
            self._due = self._clock()
        else:
            gap_ns = max(0, time_unix_nano - self._last_ns)
            self._due += gap_ns / 1e9 / self._speed
        self._last_ns = time_unix_nano
        delay = self._due - self._clock()
        if delay > 0:
            await self._sleep(delay)


async def _in_thread(items: Iterator[Batch | SourceError]) -> AsyncIterator[Batch | SourceError]:
    # Converting a window takes a while; a worker thread keeps the event loop (and gRPC) serving.
    done = object()
    while (item := await asyncio.to_thread(next, items, done)) is not done:
        yield cast(Batch | SourceError, item)


async def _send(exporter: Exporter, batch: Batch, stats: ReplayStats) -> None:
    result = await send_with_retry(exporter, batch.signal, batch.data, Backoff(REPLAY_RETRY))
    if result.outcome is ExportOutcome.SUCCESS:
        stats.requests += 1
        stats.items += batch.items
        stats.bytes += len(batch.data)
        stats.rejected += result.rejected
        if result.rejected:
            log.warning(
                "replay: %s: endpoint rejected %d items: %s", batch.source, result.rejected, result.message
            )
        return
    stats.failures += 1
    stats.failed_items += batch.items
    log.error("replay: %s: request of %d items not delivered: %s", batch.source, batch.items, result.message)


async def replay(
    dataset: str,
    path: Path,
    endpoint: str,
    *,
    protocol: Literal["grpc", "http"] = "grpc",
    headers: dict[str, str] | None = None,
    insecure: bool = True,
    compression: Literal["gzip", "none"] = "gzip",
    speed: float | None = None,
    progress: bool = True,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> ReplayStats:
    """Send the data set ``dataset`` at ``path`` to the OTLP ``endpoint``.

    Parameters
    ----------
    dataset
        A name in :data:`DATASETS` (``otel-demo``).
    path
        Where the data set is (see the data set's module for what it accepts).
    endpoint
        ``host:port``; for ``http`` also a base URL such as ``http://collector:4318``.
    protocol
        OTLP/gRPC or OTLP/HTTP (protobuf).
    headers
        Sent with every request (``Authorization`` ...).
    insecure
        Plaintext instead of TLS (when ``endpoint`` has no scheme).
    compression
        Request compression.
    speed
        ``None`` sends as fast as the endpoint takes it; otherwise the data's original time
        spacing is kept, divided by ``speed``.
    progress
        Show a progress bar on stderr.
    max_items
        Items per request at most.

    Returns
    -------
    ReplayStats
        Counts of what was delivered, failed and skipped.
    """
    items = dataset_batches(dataset, path, max_items=max_items)  # unknown names fail before connecting
    exporter = make_exporter(
        exporter_config(protocol, endpoint, headers=headers, insecure=insecure, compression=compression)
    )
    loop = asyncio.get_running_loop()
    pacer = Pacer(speed, clock=loop.time) if speed is not None else None
    stats = ReplayStats()
    bar = tqdm(
        desc=f"replay {dataset}", unit=" items", unit_scale=True, file=sys.stderr, disable=not progress
    )
    await exporter.start()
    try:
        async for item in _in_thread(items):
            if isinstance(item, SourceError):
                stats.skipped += 1
                continue
            if pacer is not None:
                await pacer.wait(item.time_unix_nano)
            await _send(exporter, item, stats)
            bar.set_postfix_str(item.source, refresh=False)
            bar.update(item.items)
    finally:
        bar.close()
        await exporter.shutdown()
    return stats
