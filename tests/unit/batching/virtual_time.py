"""An asyncio event loop whose clock is virtual, so batching tests are exact.

The loop's ``time()`` only moves when the loop would otherwise sleep: the selector, asked
to block for ``t`` seconds with nothing to do, advances the clock by ``t`` and returns at
once. Timers, ``asyncio.sleep`` and ``wait_for`` all use this clock; CPU time spent in
Python does not count, so results do not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Coroutine
from typing import Any, TypeVar

R = TypeVar("R")


class _VirtualSelector(selectors.SelectSelector):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise RuntimeError("deadlock: the loop would wait forever with nothing scheduled")
        if timeout > 0:
            self.now += timeout
        return super().select(0)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on virtual time, starting at 0."""

    def __init__(self) -> None:
        self._virtual = _VirtualSelector()
        super().__init__(self._virtual)

    def time(self) -> float:
        return self._virtual.now


def run_virtual(coro: Coroutine[Any, Any, R]) -> R:
    """Run ``coro`` to completion on a fresh virtual-time loop, then close the loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
