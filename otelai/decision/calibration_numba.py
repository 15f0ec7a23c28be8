"""Compiled kernels of :class:`~otelai.decision.calibration.EcdfCalibrator` (numba), the same results.

At the calibrator's batch sizes (hundreds of scores against a window of thousands) the numpy
path is mostly per-call overhead: a transform is an argsort, two ``searchsorted``, a division
and a scatter; keeping the sorted window in step is a sort, two ``searchsorted``, an
``np.delete`` and an ``np.insert``, per detector and batch. Here each is one pass:

- :func:`transform` does both binary searches of each score in place (branch-free lower
  bounds, so arrival order costs no mispredictions) and writes ``(left + right) / (2 n)``,
  the same IEEE division as numpy's ``ranks / (2.0 * n)``;
- :func:`absorb` writes the thinned batch into the ring and rebuilds the sorted window in
  one merge walk (the batch itself is sorted by numpy, see there) that drops what the batch overwrites and inserts the batch where
  ``np.insert`` at ``np.searchsorted(..., side="left")`` would.

Comparisons follow numpy's sort order (NaN after everything, NaN equal to NaN), so even a
window primed with NaN gives the numpy path's ranks. Thinning stays in the caller: it draws
from the calibrator's generator exactly as the numpy path does.

Importing this module imports numba (the optional ``fast`` extra);
:mod:`~otelai.decision.calibration` imports it lazily and keeps the numpy path when it is
missing.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from otelai.kernels import cached_jit

F64 = NDArray[np.float64]


_jit = cached_jit("the calibration kernels")


@_jit
def _less(a: float, b: float) -> bool:
    """numpy's sort order: ``a < b``, NaN after every number."""
    return a < b or (b != b and a == a)


@_jit
def _left(window: F64, value: float) -> int:
    """``np.searchsorted(window, value, side="left")``: the entries ordered before ``value``."""
    low, high = 0, window.size
    while low < high:
        middle = (low + high) >> 1
        if _less(window[middle], value):
            low = middle + 1
        else:
            high = middle
    return low


@_jit
def _numbers(window: F64) -> int:
    """Entries of the sorted ``window`` that are not NaN (numpy sorts NaN last)."""
    low, high = 0, window.size
    while low < high:
        middle = (low + high) >> 1
        if window[middle] == window[middle]:
            low = middle + 1
        else:
            high = middle
    return low


@_jit
def _right(window: F64, size: int, value: float, start: int) -> int:
    """Entries of ``window[:size]`` not above ``value`` (a number), knowing they are ``start`` or more."""
    if start == size or value < window[start]:  # the usual case: no entry equals ``value``
        return start
    base = start + 1  # the answer is in [base, base + n]
    n = size - base
    if n == 0:
        return base
    while n > 1:
        half = n >> 1
        if not value < window[base + half]:
            base += half
        n -= half
    return base if value < window[base] else base + 1


@_jit
def transform(window: F64, values: F64, out: F64, denominator: float) -> None:
    """Mid-rank ECDF of each of ``values`` against the sorted ``window``, into ``out``.

    ``out[i]`` is ``(left + right) / denominator`` (pass ``2.0 * n``), NaN for a NaN value;
    ``left`` and ``right`` are ``np.searchsorted``'s ranks. A NaN in the window (numpy sorts
    them last) ranks above every number, so a number's ranks are those in the window's
    numbers, where plain ``<`` is numpy's order. The lower bounds of a block of values walk
    the window in lockstep, branch-free: their memory loads overlap instead of waiting on
    each other, which is what a binary search spends its time on.
    """
    size = _numbers(window)
    block = 16
    base = np.zeros(block, dtype=np.int64)
    for start in range(0, values.size, block):
        count = min(block, values.size - start)
        base[:] = 0
        n = size  # each lower bound is in [base, base + n]
        while n > 1:
            half = n >> 1
            for g in range(count):  # arithmetic, not a branch: it would mispredict half the time
                base[g] += half * (window[base[g] + half] < values[start + g])  # NaN: no matter
            n -= half
        for g in range(count):
            value = values[start + g]
            if value != value:
                out[start + g] = np.nan
                continue
            left = base[g]
            if size:
                left += window[left] < value
            out[start + g] = (left + _right(window, size, value, left)) / denominator


@_jit
def finite(values: F64) -> int:
    """How many of ``values`` are finite (the draws the thinning takes)."""
    count = 0
    for i in range(values.size):
        if np.isfinite(values[i]):
            count += 1
    return count


@_jit
def thin(values: F64, draws: F64, rate: float, limit: int) -> F64:
    """The finite ``values`` whose draw is below ``rate`` (all when ``draws`` is empty), in order.

    ``draws`` has one number per finite value. Of what is kept, only the last ``limit``.
    """
    kept = np.empty(values.size)
    count = 0
    j = 0
    for i in range(values.size):
        value = values[i]
        if not np.isfinite(value):
            continue
        if draws.size == 0 or draws[j] < rate:
            kept[count] = value
            count += 1
        j += 1
    start = max(count - limit, 0)
    return kept[start:count].copy()


@_jit
def absorb(ring: F64, window: F64, keep: bool, position: int, filled: int, values: F64, added: F64) -> F64:
    """Write ``values`` into the ring from ``position``; the sorted window after it (if ``keep``).

    ``window`` is the sorted copy of ``ring[:filled]``; ``values`` are at most ``ring.size``;
    ``added`` is ``np.sort(values)``, sorted by numpy so that equal values that differ in
    bits (0.0 and -0.0) enter in the numpy path's order.
    The entries ``values`` overwrite leave the window (each one equal entry, the first of its
    run, as ``np.delete`` at ``searchsorted(..., "left")`` plus rank removes) and ``values``
    enter it before the entries equal to them, as ``np.insert`` at ``searchsorted(...,
    "left")`` puts them. Without ``keep``, an empty array.
    """
    size = ring.size
    m = values.size
    if not keep:
        for k in range(m):
            ring[(position + k) % size] = values[k]
        return np.empty(0)
    evicted = np.empty(m)
    e = 0
    for k in range(m):
        slot = (position + k) % size
        if slot < filled:
            evicted[e] = ring[slot]
            e += 1
        ring[slot] = values[k]
    evicted = np.sort(evicted[:e])
    # Where each evicted entry sits (equal ones: consecutive, from the first of their run)
    # and where each added value goes (before the first entry not below it); then the
    # window is copied in blocks between those positions.
    gone = np.empty(e, dtype=np.int64)
    for k in range(e):
        value = evicted[k]
        if k and (value == evicted[k - 1] or (value != value and evicted[k - 1] != evicted[k - 1])):
            gone[k] = gone[k - 1] + 1
        else:
            gone[k] = _left(window, value)
    merged = np.empty(window.size - e + m)
    out = 0
    i = 0
    j = 0
    k = 0
    while j < m or k < e:
        at = _left(window, added[j]) if j < m else window.size
        if k < e and gone[k] < at:
            block = gone[k] - i
            merged[out : out + block] = window[i : gone[k]]
            out += block
            i = gone[k] + 1
            k += 1
        else:
            block = at - i
            merged[out : out + block] = window[i:at]
            out += block
            i = at
            merged[out] = added[j]
            out += 1
            j += 1
    merged[out:] = window[i:]
    return merged


def warm_up() -> None:
    """Compile (or load from numba's cache) every kernel now, not on the first batch."""
    ring = np.zeros(8)
    window = np.zeros(4)
    values = np.array([1.0, np.nan, -np.inf])
    transform(window, values, np.empty(3), 8.0)
    kept = thin(values, np.zeros(finite(values)), 0.5, 8)
    absorb(ring, window, True, 0, 4, kept, np.sort(kept))
    absorb(ring, window, False, 0, 4, kept, kept)
