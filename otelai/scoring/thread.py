"""The scoring thread, and the way back from it to the event loop.

The scoring stages run their processors on one worker thread (see
:mod:`otelai.scoring.stage`). What a processor triggers that belongs to the event loop, the
local actions (:class:`~otelai.decision.actions.Alerter` and
:class:`~otelai.decision.actions.MitigationHook` queue work for asyncio tasks), is handed back
to the loop here: ``asyncio`` objects are not thread-safe, ``loop.call_soon_threadsafe`` is
the documented way in (Python docs, "Concurrency and Multithreading" in asyncio).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from otelai.decision.actions import Alert, Alerter, MitigationHook

_A = TypeVar("_A")


def scoring_executor() -> ThreadPoolExecutor:
    """One thread for every stage: processors share state (summaries, critical traces),
    and under the GIL a second scoring thread would add switching, not throughput."""
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="otelai-scoring")


class _OnLoop:
    """Runs calls on the event loop it is bound to; directly when already there (or unbound)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        """Calls from other threads go to ``loop`` from now on; call on that loop's thread."""
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def run(self, function: Callable[[_A], object], argument: _A) -> bool:
        """``function(argument)`` here, or scheduled on the loop; ``False`` if the loop is closed."""
        loop = self._loop
        if loop is None or threading.get_ident() == self._loop_thread:
            function(argument)
            return True
        try:
            loop.call_soon_threadsafe(function, argument)
        except RuntimeError:  # the loop is closed: the service is gone, and so are its actions
            return False
        return True


class LoopAlerter(_OnLoop):
    """An :class:`Alerter` callable from the scoring thread (only ``submit`` is used there)."""

    def __init__(self, alerter: Alerter) -> None:
        super().__init__()
        self.alerter = alerter

    def submit(self, alerts: Iterable[Alert]) -> int:
        """Hand the alerts to the alerter on the loop; returns how many were handed over
        (how many it emits is decided there, after dedup and rate limiting)."""
        batch = list(alerts)
        return len(batch) if self.run(self.alerter.submit, batch) else 0


class LoopMitigation(_OnLoop):
    """A :class:`MitigationHook` callable from the scoring thread (only ``trigger``)."""

    def __init__(self, hook: MitigationHook) -> None:
        super().__init__()
        self.hook = hook

    def trigger(self, alert: Alert) -> bool:
        """Hand the alert to the hook on the loop; ``True`` when handed over."""
        return self.run(self.hook.trigger, alert)
