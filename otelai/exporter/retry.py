"""Retry with jittered exponential backoff, as the Collector's ``configretry``.

The policy (:class:`Backoff`) is pure: time and randomness are injected, so a seeded
test can check every delay. :func:`send_with_retry` drives an exporter with it, retrying
only results the exporter marked retryable and honouring the server's requested delay
(gRPC ``RetryInfo``, HTTP ``Retry-After``), as the OTLP specification asks.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from otelai.config import RetryOnFailure
from otelai.exporter.base import Exporter, ExportOutcome, ExportResult
from otelai.signals import Signal

log = logging.getLogger("otelai.exporter")


class Backoff:
    """Delays between the attempts of one request.

    The n-th backoff interval is ``initial_interval * multiplier**n`` capped at
    ``max_interval``, randomised uniformly within ``± randomization_factor`` of itself (so a
    randomised delay may exceed ``max_interval`` by that factor, as in the Collector). The
    elapsed-time budget starts when the object is made; ``max_elapsed_time`` 0 means no limit.

    Parameters
    ----------
    config
        The exporter's ``retry_on_failure`` settings; ``enabled: false`` never retries.
    rng
        Source of the jitter; pass a seeded one for reproducible delays.
    clock
        Monotonic seconds; injectable for tests.

    Examples
    --------
    >>> cfg = RetryOnFailure(initial_interval="1s", randomization_factor=0, max_interval="3s",
    ...                      multiplier=2, max_elapsed_time="0")
    >>> b = Backoff(cfg)
    >>> [b.next_delay() for _ in range(4)]
    [1.0, 2.0, 3.0, 3.0]
    """

    def __init__(
        self,
        config: RetryOnFailure,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._config = config
        self._rng = rng if rng is not None else random.Random()
        self._clock = clock
        self._start = clock()
        self._interval = config.initial_interval

    def next_delay(self, server_delay: float | None = None) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` to give up.

        Parameters
        ----------
        server_delay
            The delay the server asked for, if any; it replaces the backoff interval. Either
            delay is capped by what is left of ``max_elapsed_time``, so the last attempt
            happens at the end of the budget rather than never.
        """
        config = self._config
        if not config.enabled:
            return None
        interval = self._interval
        # The schedule advances even when the server picks the delay, as in the Collector.
        self._interval = min(interval * config.multiplier, config.max_interval)
        if server_delay is not None and server_delay >= 0:
            delay = server_delay
        else:
            spread = config.randomization_factor * (2.0 * self._rng.random() - 1.0)
            delay = interval * (1.0 + spread)
        if config.max_elapsed_time > 0:
            remaining = config.max_elapsed_time - (self._clock() - self._start)
            if remaining <= 0:
                return None
            delay = min(delay, remaining)
        return delay


RetryHook = Callable[[ExportResult, float], None]


async def send_with_retry(
    exporter: Exporter,
    signal: Signal,
    data: bytes,
    backoff: Backoff,
    *,
    on_retry: RetryHook | None = None,
    stop_event: asyncio.Event | None = None,
) -> ExportResult:
    """Export ``data``, retrying retryable failures until success, a permanent error or give-up.

    Parameters
    ----------
    exporter
        Makes one attempt per call.
    signal, data
        The serialised request, sent unchanged on every attempt.
    backoff
        A fresh policy for this request (its elapsed-time budget is running).
    on_retry
        Called with the failed result and the chosen delay before each wait.
    stop_event
        When set, a pending wait ends at once and the last (retryable) result is returned,
        so shutdown is not held up by a sleeping retry. The caller tells this apart from a
        give-up by checking the event.

    Returns
    -------
    ExportResult
        The last attempt's result: SUCCESS, PERMANENT, or RETRYABLE when the budget ran out
        or ``stop_event`` was set.
    """
    while True:
        result = await _attempt(exporter, signal, data)
        if result.outcome is not ExportOutcome.RETRYABLE:
            return result
        if stop_event is not None and stop_event.is_set():
            return result
        delay = backoff.next_delay(result.retry_after)
        if delay is None:
            return result
        if on_retry is not None:
            on_retry(result, delay)
        if await _sleep_unless(stop_event, delay):
            return result


async def _attempt(exporter: Exporter, signal: Signal, data: bytes) -> ExportResult:
    try:
        return await exporter.export(signal, data)
    except Exception as exc:
        # export() must not raise; if a bug makes it, keep the data and try again later.
        log.exception("exporter %s raised instead of returning a result", exporter.name)
        return ExportResult.retryable(f"exporter raised {exc!r}")


async def _sleep_unless(stop_event: asyncio.Event | None, delay: float) -> bool:
    """Sleep ``delay`` seconds; True when ``stop_event`` cut the sleep short."""
    if stop_event is None:
        await asyncio.sleep(delay)
        return False
    try:
        await asyncio.wait_for(stop_event.wait(), timeout=delay)
    except TimeoutError:
        return False
    return True
