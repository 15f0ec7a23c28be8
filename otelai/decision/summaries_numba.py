"""Compiled counting of dropped spans for :class:`~otelai.decision.summaries.DroppedSummaries` (numba).

Counting a batch's dropped spans with numpy takes a dozen calls over the batch (a boolean
gather per column, a bound check, a ``searchsorted``, four ``bincount``, ``minimum.at`` and
``maximum.at``), each mostly call overhead at a few hundred spans; :func:`add_spans` does it in
one pass with the same results: integer counts are exact in any order, and the duration sums
are added up per series in arrival order from zero, then added to the interval's sums, as
``np.bincount(..., weights=...)`` and ``+=`` do. It runs without the GIL.

Importing this module imports numba (the optional ``fast`` extra);
:mod:`~otelai.decision.summaries` imports it lazily and keeps the numpy path when it is missing.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from otelai.kernels import cached_jit

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
Bool = NDArray[np.bool_]


_jit = cached_jit("the summaries kernel")


@_jit
def add_spans(
    series: I64,
    durations_ns: I64,
    is_error: Bool,
    dropped: Bool,
    boundaries_ms: F64,
    buckets: I64,
    size: int,
    span_counts: I64,
    error_counts: I64,
    bucket_counts: I64,
    duration_sum: F64,
    duration_min: F64,
    duration_max: F64,
) -> int:
    """Count the ``dropped`` spans into the interval's arrays in place; the spans counted.

    ``size`` is the number of series ids handed out: any other id counts as the overflow
    series (0). The histogram bucket of the ``j``-th dropped span is ``buckets[j]`` when
    ``buckets`` is not empty (exponential buckets, computed with numpy by the caller), else
    the first of ``boundaries_ms`` at or above its duration (upper bounds inclusive, as
    ``np.searchsorted(..., side="left")`` on the strictly increasing bounds). When nothing is
    dropped nothing is written.
    """
    n = series.size
    bounds = boundaries_ms.size
    given = buckets.size > 0
    sums = np.zeros(size)  # this batch's duration sum per series, as np.bincount adds them
    counted = 0
    for i in range(n):
        if not dropped[i]:
            continue
        ident = series[i]
        if ident < 0 or ident >= size:
            ident = 0
        # As int64, an unsigned end - start that wrapped below zero is negative: counts as 0.
        millis = max(durations_ns[i], 0) / 1e6
        if given:
            slot = buckets[counted]
        else:  # bounds below the duration, counted without a data-dependent exit
            slot = 0
            for b in range(bounds):
                slot += boundaries_ms[b] < millis
        span_counts[ident] += 1
        if is_error[i]:
            error_counts[ident] += 1
        bucket_counts[ident, slot] += 1
        sums[ident] += millis
        duration_min[ident] = min(duration_min[ident], millis)
        duration_max[ident] = max(duration_max[ident], millis)
        counted += 1
    if counted:
        for ident in range(size):  # every id handed out, as the numpy path's [:size] += ...
            duration_sum[ident] += sums[ident]
    return counted


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel now, not on the first batch."""
    for buckets in (np.zeros(0, dtype=np.int64), np.zeros(1, dtype=np.int64)):
        add_spans(
            np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64), np.zeros(1, dtype=np.bool_),
            np.ones(1, dtype=np.bool_), np.ones(1), buckets, 1, np.zeros(1, dtype=np.int64),
            np.zeros(1, dtype=np.int64), np.zeros((1, 2), dtype=np.int64), np.zeros(1), np.full(1, np.inf),
            np.full(1, -np.inf),
        )  # fmt: skip
