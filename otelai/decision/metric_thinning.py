"""What dropping metric points may do without breaking counter semantics.

From the OpenTelemetry metrics data model (``specification/metrics/data-model.md``, "Sums",
"Histogram", "Gauge", "Temporality", "Resets and Gaps"):

- A **cumulative** Sum or Histogram point carries the total since its ``start_time``; every later
  point of the series supersedes it. Dropping one loses resolution only: the next kept point
  still has the right total (rates over the gap average out). Thinning is free.
- A **delta** point carries only the change over ``(start_time, time]``; intervals of a series are
  contiguous and add up to the total. Dropping one loses that change for good. A delta point may
  only be dropped if its value is *folded* into the next forwarded point of the same series,
  whose ``start_time`` then moves back to the dropped point's start, so the forwarded point
  covers both intervals (the data model's re-aggregation of deltas over a longer interval).
- A **Gauge** point is a sample of a current value; later samples do not depend on it.
  Dropping is free. (So is a legacy Summary point, whose count and sum are cumulative.)

:func:`fold_deltas` does the folding for a batch with a per-series carry (:class:`DeltaCarry`)
that holds what was dropped after the last forwarded point, until the series' next forwarded
point, in a later batch. Values may be scalars (a Sum) or fixed-width vectors (the count, sum
and bucket counts of an explicit-bucket Histogram with fixed boundaries): every component adds.
"""

from __future__ import annotations

import enum

import numpy as np
import numpy.typing as npt
from opentelemetry.proto.metrics.v1 import metrics_pb2

DEFAULT_MAX_SERIES = 100_000


class Temporality(enum.IntEnum):
    """OTLP ``AggregationTemporality``."""

    UNSPECIFIED = metrics_pb2.AGGREGATION_TEMPORALITY_UNSPECIFIED
    DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
    CUMULATIVE = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE


class PointKind(enum.IntEnum):
    """The kind of a metric point, by the OTLP ``Metric.data`` field it comes from."""

    GAUGE = 0
    SUM = 1
    HISTOGRAM = 2
    EXPONENTIAL_HISTOGRAM = 3
    SUMMARY = 4


def droppable(kinds: npt.NDArray[np.int8], temporality: npt.NDArray[np.int8]) -> npt.NDArray[np.bool_]:
    """Which points may be dropped outright: gauges, summaries and cumulative points.

    Delta points (and points of unspecified temporality, which cannot be interpreted) may not:
    drop a delta Sum or Histogram point only through :func:`fold_deltas`.
    """
    free_kind = (kinds == PointKind.GAUGE) | (kinds == PointKind.SUMMARY)
    free: npt.NDArray[np.bool_] = free_kind | (temporality == Temporality.CUMULATIVE)
    return free


class DeltaCarry:
    """Per-series sums of dropped delta values not yet folded into a forwarded point.

    Parameters
    ----------
    width
        Components of each value: ``None`` for scalars, ``k`` for vectors of length ``k``.
    dtype
        ``int64`` for integer Sums and counts, ``float64`` for double values.
    max_series
        Series ids must be below this; points of larger ids are never dropped.
    """

    def __init__(
        self,
        *,
        width: int | None = None,
        dtype: npt.DTypeLike = np.float64,
        max_series: int = DEFAULT_MAX_SERIES,
    ) -> None:
        self.width = width
        self.dtype = np.dtype(dtype)
        self.max_series = max_series
        self._shape: tuple[int, ...] = () if width is None else (width,)
        self.values: npt.NDArray[np.generic] = np.zeros((0, *self._shape), dtype=self.dtype)
        self.start_ns: npt.NDArray[np.uint64] = np.zeros(0, dtype=np.uint64)
        self.active: npt.NDArray[np.bool_] = np.zeros(0, dtype=np.bool_)

    def _grow(self, needed: int) -> None:
        if needed <= self.active.size:
            return
        size = min(self.max_series, max(needed, 2 * self.active.size, 64))
        extra = size - self.active.size
        self.values = np.concatenate([self.values, np.zeros((extra, *self._shape), dtype=self.dtype)])
        self.start_ns = np.concatenate([self.start_ns, np.zeros(extra, dtype=np.uint64)])
        self.active = np.concatenate([self.active, np.zeros(extra, dtype=np.bool_)])

    def pending(self) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.generic], npt.NDArray[np.uint64]]:
        """``(series, values, start_ns)`` of the carries not yet folded."""
        series = np.flatnonzero(self.active)
        return series, self.values[series], self.start_ns[series]

    def drain(self) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.generic], npt.NDArray[np.uint64]]:
        """:meth:`pending`, then forget it (for a final flush of the carried values)."""
        series, values, start = self.pending()
        values = values.copy()
        start = start.copy()
        self.values[series] = 0
        self.active[series] = False
        return series, values, start


def fold_deltas(
    carry: DeltaCarry,
    series: npt.NDArray[np.int64],
    values: npt.NDArray[np.generic],
    start_ns: npt.NDArray[np.uint64],
    time_ns: npt.NDArray[np.uint64],
    keep: npt.NDArray[np.bool_],
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.generic], npt.NDArray[np.uint64]]:
    """Fold the dropped delta points of a batch into the next kept point of their series.

    Within a series, points are taken in ``time_ns`` order. Each kept point's value becomes the
    sum of itself, the dropped points of its series since the previous kept point and, for the
    series' first kept point in the batch, the carry from earlier batches; its start time becomes
    the earliest of theirs. Dropped points after a series' last kept point go into the carry.
    The sum of forwarded values plus the carry always equals the sum of all values seen.

    Parameters
    ----------
    carry
        Per-series state, updated in place.
    series
        Dense series id of each point (its metric, resource, scope and attributes).
    values
        Delta value of each point, shape (n,) or (n, carry.width).
    start_ns, time_ns
        ``start_time_unix_nano`` and ``time_unix_nano`` of each point.
    keep
        Which points selection wants to forward.

    Returns
    -------
    keep
        The points to forward: ``keep``, plus points whose series id is beyond the carry's
        ``max_series`` (they cannot be carried, so they are never dropped).
    values, start_ns
        For every point; for forwarded points, the folded value and start time.
    """
    valid = (series >= 0) & (series < carry.max_series)
    keep = keep | ~valid
    result_v = values.astype(carry.dtype, copy=True)
    result_st = start_ns.copy()
    index = np.flatnonzero(valid)
    if index.size == 0:
        return keep, result_v, result_st
    carry._grow(int(series[index].max()) + 1)
    order = index[np.lexsort((time_ns[index], series[index]))]
    s, v, st, k = series[order], result_v[order], start_ns[order], keep[order]
    n = s.size

    # Each point goes to the first kept point at or after it in the same series, if any.
    kept_pos = np.flatnonzero(k)
    nxt = np.searchsorted(kept_pos, np.arange(n), side="left")
    target = kept_pos[np.minimum(nxt, kept_pos.size - 1)] if kept_pos.size else np.zeros(n, dtype=np.intp)
    folded = (nxt < kept_pos.size) & (s[target] == s)

    out_v = np.zeros_like(v)
    np.add.at(out_v, target[folded], v[folded])
    out_st = st.copy()
    np.minimum.at(out_st, target[folded], st[folded])

    # The carry precedes the batch: it goes into each series' first kept point.
    kept_series = s[kept_pos]
    first = kept_pos[np.r_[True, kept_series[1:] != kept_series[:-1]]] if kept_pos.size else kept_pos
    first_series = s[first]
    from_carry = first[carry.active[first_series]]
    carried = s[from_carry]
    out_v[from_carry] += carry.values[carried]
    out_st[from_carry] = np.minimum(out_st[from_carry], carry.start_ns[carried])
    carry.values[first_series] = 0
    carry.active[first_series] = False

    # Dropped points after the last kept point of their series wait in the carry.
    tail = ~folded
    tail_series = s[tail]
    carry.start_ns[tail_series[~carry.active[tail_series]]] = np.iinfo(np.uint64).max
    np.add.at(carry.values, tail_series, v[tail])
    np.minimum.at(carry.start_ns, tail_series, st[tail])
    carry.active[tail_series] = True

    result_v[order[k]] = out_v[k]
    result_st[order[k]] = out_st[k]
    return keep, result_v, result_st
