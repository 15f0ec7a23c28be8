"""Base-2 exponential histogram buckets at a fixed scale, downscaled per point to a size limit.

The OpenTelemetry data model's ``ExponentialHistogram`` (``specification/metrics/data-model.md``,
"ExponentialHistogram"): at scale ``s`` the base is ``2 ** 2 ** -s`` and bucket ``i`` holds the
values in ``(base ** i, base ** (i + 1)]``; values equal to 0 go to the zero bucket. Lowering
the scale by one merges buckets ``2j`` and ``2j + 1`` into ``j`` (index ``>> 1``), so counts
kept at a fine scale can be written at any coarser one exactly.

Counts are kept per series in a fixed range of indexes at :data:`MAX_SCALE` (slot 0 the zero
bucket), so series, intervals and counts taken back all share one layout (as the explicit
buckets do); each point is written at the finest scale whose buckets span its values in at
most ``max_size`` buckets, as the SDK's base-2 exponential aggregation does (``max_size``,
default 160, the spanmetrics connector's ``histogram.exponential.max_size``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

MAX_SCALE = 3  # base 2 ** (1/8): bucket bounds 9% apart, finer than any explicit default
# Milliseconds from 2 ** -20 (about 1 ns) to 2 ** 27 (about 37 h); beyond, the edge buckets.
LOW_OCTAVE, HIGH_OCTAVE = -20, 27
LOW_INDEX = LOW_OCTAVE << MAX_SCALE
HIGH_INDEX = (HIGH_OCTAVE << MAX_SCALE) - 1
WIDTH = 1 + HIGH_INDEX - LOW_INDEX + 1  # the zero bucket, then one slot per index
MIN_SCALE = -10  # the data model's smallest scale
DEFAULT_MAX_SIZE = 160
MIN_MAX_SIZE = 2  # values below and above 1 ms never share a bucket


def slots(millis: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """The storage slot of each non-negative value: 0 for zero, else ``1 + index - LOW_INDEX``."""
    positive = millis > 0
    with np.errstate(divide="ignore"):
        index = np.ceil(np.log2(np.where(positive, millis, 1.0)) * (1 << MAX_SCALE)) - 1
    index = np.clip(index, LOW_INDEX, HIGH_INDEX).astype(np.int64)
    return np.where(positive, index - LOW_INDEX + 1, 0)


def point_buckets(counts: npt.NDArray[np.int64], max_size: int) -> tuple[int, int, int, list[int]]:
    """What one point writes from its stored ``counts`` (length :data:`WIDTH`).

    Returns
    -------
    tuple
        ``(scale, zero_count, offset, bucket_counts)``: the finest scale at most
        :data:`MAX_SCALE` at which the non-zero buckets span at most ``max_size`` buckets
        (at least :data:`MIN_MAX_SIZE`),
        and the positive buckets from ``offset`` at that scale.
    """
    zero = int(counts[0])
    filled = np.flatnonzero(counts[1:])
    if not filled.size:
        return MAX_SCALE, zero, 0, []
    index = filled + LOW_INDEX
    first, last = int(index[0]), int(index[-1])
    shift = 0
    # At MIN_SCALE any positive values fit in two buckets (indexes -1 and 0).
    while (last >> shift) - (first >> shift) + 1 > max_size and MAX_SCALE - shift > MIN_SCALE:
        shift += 1
    # >> floors negative indexes too, which is the data model's downscaling rule.
    offset = first >> shift
    merged = np.bincount((index >> shift) - offset, weights=counts[1:][filled], minlength=1)
    return MAX_SCALE - shift, zero, offset, merged.astype(np.int64).tolist()
