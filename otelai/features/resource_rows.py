"""Rows of a resource's metrics, one per timestamp, assembled from metric points across batches.

A multivariate metric model (Audibert et al., "USAD", KDD 2020; :mod:`otelai.detectors.multivariate`)
reads one row per (resource, time step): the value of each of its columns (metric names) at
that step. OTLP carries the same step as separate points, maybe in separate requests and
batches, so the rows are assembled here:

- a point whose metric is a column fills the cell (its resource, its time, its column); the
  last point written to a cell wins;
- a resource's row for a timestamp is *ready* once every column has a value, or once a later
  timestamp of that resource has arrived (the rest of it is not coming: collectors send a
  step's points together or in order). So after each batch at most one row per resource, the
  newest and incomplete, is pending;
- a ready row's missing columns are carried from that resource's previous row (last
  observation carried forward); a row with a column the resource has never reported is not
  scoreable (the model cannot judge an unknown metric) and is counted instead;
- a point for a timestamp at or before the resource's last ready row is late and ignored;
- at most ``max_resources`` resources are remembered; the least recently seen are forgotten
  with their pending row.

The work per batch is numpy over the points, and a Python step per (resource, timestamp) group.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]


@dataclass(frozen=True, slots=True)
class ResourceRows:
    """Ready rows of one resource, in time order.

    ``values`` is ``(n, width)``; ``observed`` says which cells came from points of that
    timestamp (the others were carried from the previous row).
    """

    resource: bytes
    time_ns: I64
    values: F64
    observed: Bool

    def __len__(self) -> int:
        return int(self.time_ns.size)


@dataclass(slots=True)
class _Resource:
    last: F64  # the previous ready row (NaN: never reported)
    last_time: int = -1  # timestamp of the previous ready row
    pending: dict[int, tuple[F64, Bool]] = field(default_factory=dict)  # time -> (values, seen)


class RowAssembler:
    """Per resource, the pending row and the previous one; see the module docstring.

    Parameters
    ----------
    width
        Columns per row.
    max_resources
        Resources remembered at most (least recently seen forgotten first).
    """

    def __init__(self, width: int, *, max_resources: int = 10_000) -> None:
        if width < 1 or max_resources < 1:
            raise ValueError("need width >= 1 and max_resources >= 1")
        self.width = width
        self.max_resources = max_resources
        self._resources: OrderedDict[bytes, _Resource] = OrderedDict()
        self.late = 0  # points ignored: their timestamp was already assembled
        self.unscoreable = 0  # ready rows with a column the resource never reported
        self.evicted = 0  # resources forgotten

    def __len__(self) -> int:
        return len(self._resources)

    def add(
        self, resources: Sequence[bytes], resource: I64, column: I64, time_ns: I64, value: F64
    ) -> list[ResourceRows]:
        """Add points; return the rows that became ready, per resource.

        Parameters
        ----------
        resources
            Identity (the Resource's bytes) of each resource id used in ``resource``.
        resource, column, time_ns, value
            Per point: resource id, column (-1 or past ``width``: none), time (0: unset), value.
        """
        keep = np.flatnonzero((column >= 0) & (column < self.width) & (time_ns > 0) & np.isfinite(value))
        if not keep.size:
            return []
        res, col, t, v = resource[keep], column[keep], time_ns[keep], value[keep]
        order = np.lexsort((t, res))
        res, col, t, v = res[order], col[order], t[order], v[order]
        starts = np.flatnonzero(np.concatenate([[True], (res[1:] != res[:-1]) | (t[1:] != t[:-1])]))
        ends = np.append(starts[1:], res.size)
        touched: dict[bytes, _Resource] = {}
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            key = resources[int(res[start])]
            state = touched.get(key) or self._touch(key)
            touched[key] = state
            when = int(t[start])
            if when <= state.last_time:
                self.late += end - start
                continue
            cell = state.pending.get(when)
            if cell is None:
                cell = state.pending[when] = (np.full(self.width, np.nan), np.zeros(self.width, np.bool_))
            cell[0][col[start:end]] = v[start:end]
            cell[1][col[start:end]] = True
        out = [rows for key, state in touched.items() if (rows := self._ready(key, state)) is not None]
        self._evict()
        return out

    def _touch(self, key: bytes) -> _Resource:
        state = self._resources.get(key)
        if state is None:
            state = self._resources[key] = _Resource(last=np.full(self.width, np.nan))
        self._resources.move_to_end(key)
        return state

    def _ready(self, key: bytes, state: _Resource) -> ResourceRows | None:
        if not state.pending:
            return None
        times = sorted(state.pending)
        newest = times[-1]
        if not state.pending[newest][1].all():
            times = times[:-1]  # the newest row may still be completed by a later batch
        if not times:
            return None
        values = np.empty((len(times), self.width), dtype=np.float64)
        observed = np.empty((len(times), self.width), dtype=np.bool_)
        for i, when in enumerate(times):
            row, seen = state.pending.pop(when)
            state.last = np.where(seen, row, state.last)
            values[i], observed[i] = state.last, seen
        state.last_time = times[-1]
        scoreable = ~np.isnan(values).any(axis=1)
        self.unscoreable += int(np.count_nonzero(~scoreable))
        if not scoreable.any():
            return None
        time_ns = np.asarray(times, dtype=np.int64)
        return ResourceRows(key, time_ns[scoreable], values[scoreable], observed[scoreable])

    def _evict(self) -> None:
        while len(self._resources) > self.max_resources:
            self._resources.popitem(last=False)
            self.evicted += 1
