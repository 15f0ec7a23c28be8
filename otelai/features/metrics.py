"""Features of OTLP metric data points, against a per-series streaming baseline.

Reads serialised ``ExportMetricsServiceRequest`` bytes (opentelemetry-proto
``metrics/v1/metrics.proto``): upb parses the containers down to each data point's bytes
(:mod:`otelai.features.otlp_layout`), and the points' fields are read for all points at once
with the vectorised wire reader. Per metric there is a little Python (its kind and
temporality); per point, none.

**Series identity** is the OpenTelemetry data model's: resource, scope, metric name and the
point's attributes. It is a 64-bit key, built without decoding any attribute: the Resource
and scope bytes are hashed once (and cached), the name bytes and every attribute's
``KeyValue`` bytes are hashed in one vectorised pass, and a point's attribute hashes are
*summed*, so the key does not depend on the order attributes arrive in. Keys are stable
across processes.

**Delta and rate** follow the temporality rules of the data model: a cumulative sum's delta is
the difference from the previous point of its series, or the value itself after a reset
(start time changed, or a monotonic value went down); a delta sum's is its value; a gauge's
is its change. Rate is delta per second over the point's interval. Histograms, exponential
histograms and summaries use their sum and count the same way, and their value is the mean
over the interval. Points flagged ``FLAG_NO_RECORDED_VALUE`` are left out of the baseline.

**Baseline**: per series, an exponentially weighted mean and variance of the value (gauges),
the rate (sums) or the interval mean (distributions); the z-score is taken before the point
updates it. Several points of one series in a batch update it in time order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from opentelemetry.proto.metrics.v1 import metrics_pb2

from otelai.features.otlp_layout import (
    METRIC_KINDS,
    Containers,
    ItemLayout,
    ResourceCache,
    SkeletonMetricRequest,
    build_layout,
    combine,
    parse_skeleton,
    range_hash,
)
from otelai.features.schema import FeatureSchema
from otelai.features.wire import FIXED64, LEN, VARINT, Fields, as_buffer, fixed64, read_varints, tag, walk

I32 = NDArray[np.int32]
I64 = NDArray[np.int64]
U64 = NDArray[np.uint64]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]

GAUGE, SUM, HISTOGRAM, EXPONENTIAL_HISTOGRAM, SUMMARY = range(5)
DELTA, CUMULATIVE = 1, 2  # AggregationTemporality
NO_RECORDED_VALUE = 1  # DataPointFlags.FLAG_NO_RECORDED_VALUE_MASK
Z_CLIP = 10.0
_KIND_CODE = {kind: code for code, kind in enumerate(METRIC_KINDS)}


def _field(message: type, name: str, wire_type: int) -> int:
    return tag(message.DESCRIPTOR.fields_by_name[name].number, wire_type)  # type: ignore[attr-defined]


_POINT_TYPES = (
    metrics_pb2.NumberDataPoint,
    metrics_pb2.NumberDataPoint,
    metrics_pb2.HistogramDataPoint,
    metrics_pb2.ExponentialHistogramDataPoint,
    metrics_pb2.SummaryDataPoint,
)
# Tags per kind, from the generated descriptors so they cannot drift from the proto.
START = _field(metrics_pb2.NumberDataPoint, "start_time_unix_nano", FIXED64)
TIME = _field(metrics_pb2.NumberDataPoint, "time_unix_nano", FIXED64)
AS_DOUBLE = _field(metrics_pb2.NumberDataPoint, "as_double", FIXED64)
AS_INT = _field(metrics_pb2.NumberDataPoint, "as_int", FIXED64)
ATTRIBUTES = tuple(_field(point, "attributes", LEN) for point in _POINT_TYPES)
FLAGS = tuple(_field(point, "flags", VARINT) for point in _POINT_TYPES)
DIST_COUNT = _field(metrics_pb2.HistogramDataPoint, "count", FIXED64)
DIST_SUM = _field(metrics_pb2.HistogramDataPoint, "sum", FIXED64)
assert all(
    _field(point, "start_time_unix_nano", FIXED64) == START
    and _field(point, "time_unix_nano", FIXED64) == TIME
    for point in _POINT_TYPES
)
assert all(
    _field(point, "count", FIXED64) == DIST_COUNT and _field(point, "sum", FIXED64) == DIST_SUM
    for point in _POINT_TYPES[2:]
)

SCHEMA = FeatureSchema(
    names=(
        "value_slog",
        "delta_slog",
        "rate_slog",
        "zscore",
        "count_log1p",
        "reset",
        "new_series",
        "is_gauge",
        "is_sum",
        "is_distribution",
    ),
    version="metrics-1",
)


@dataclass(frozen=True, slots=True)
class MetricBatch:
    """``n`` metric data points as columns; row ``i`` of every array is the same point.

    Locators: the point is ``requests[request].resource_metrics[resource].scope_metrics[scope]
    .metrics[metric].<data>.data_points[point]``. ``series`` is the 64-bit series key (as
    int64 bits). ``value`` is a number point's value or a distribution's sum; ``count`` a
    distribution's count (0 for numbers). Times are nanoseconds since the epoch (0 = unset).
    """

    request: I32
    resource: I32
    scope: I32
    metric: I32
    point: I32
    series: I64
    kind: NDArray[np.int8]
    temporality: NDArray[np.int8]
    monotonic: Bool
    time_ns: I64
    start_ns: I64
    value: F64
    count: F64
    no_value: Bool

    def __len__(self) -> int:
        return int(self.request.size)

    @classmethod
    def from_payloads(cls, payloads: Sequence[bytes], cache: ResourceCache | None = None) -> MetricBatch:
        """Read the points of serialised ``ExportMetricsServiceRequest`` payloads.

        ``cache`` keeps Resource and scope hashes between batches (``SeriesState.containers``).
        Raises :class:`~otelai.features.wire.WireError` on malformed bytes.
        """
        metrics = _read_metrics(payloads, cache or ResourceCache())
        buf = as_buffer(metrics.points)
        lengths = np.fromiter(map(len, metrics.points), dtype=np.int64, count=len(metrics.points))
        end = np.cumsum(lengths)
        start = end - lengths
        per_metric = metrics.point_counts
        metric_row = np.repeat(np.arange(per_metric.size, dtype=np.int64), per_metric)
        kind = metrics.kind.take(metric_row)
        fields = walk(buf, start, end)
        n = int(start.size)
        value, count = _values(buf, fields, kind, n)
        name_key = range_hash(metrics.names_buf, metrics.name_start, metrics.name_end)
        layout = metrics.layout
        container = combine(
            combine(layout.resource_key.take(layout.resource_row), layout.scope_key.take(layout.scope_row)),
            name_key,
        )
        series = combine(container.take(metric_row), _attribute_key(buf, fields, kind, n))
        first = np.cumsum(per_metric) - per_metric
        return cls(
            request=layout.request.take(metric_row).astype(np.int32),
            resource=layout.resource.take(metric_row).astype(np.int32),
            scope=layout.scope.take(metric_row).astype(np.int32),
            metric=layout.position.take(metric_row).astype(np.int32),
            point=(np.arange(n, dtype=np.int64) - first.take(metric_row)).astype(np.int32),
            series=series.view(np.int64),
            kind=kind.astype(np.int8),
            temporality=metrics.temporality.take(metric_row).astype(np.int8),
            monotonic=metrics.monotonic.take(metric_row),
            time_ns=_fixed_or_zero(buf, fields, TIME, n).view(np.int64),
            start_ns=_fixed_or_zero(buf, fields, START, n).view(np.int64),
            value=value,
            count=count,
            no_value=(_flags(buf, fields, kind, n) & NO_RECORDED_VALUE) != 0,
        )


@dataclass(frozen=True, slots=True)
class _Metrics:
    """Per-metric columns and every point's bytes, from the skeleton read."""

    layout: ItemLayout  # metrics as the items (their byte ranges unused)
    points: list[bytes]
    point_counts: I64
    kind: I64
    temporality: I64
    monotonic: Bool
    names_buf: NDArray[np.uint8]
    name_start: I64
    name_end: I64


def _read_metrics(payloads: Sequence[bytes], cache: ResourceCache) -> _Metrics:
    found = Containers()
    points: list[bytes] = []
    names: list[bytes] = []
    counts: list[int] = []
    kinds: list[int] = []
    temporality: list[int] = []
    monotonic: list[bool] = []
    for number, payload in enumerate(payloads):
        request = parse_skeleton(SkeletonMetricRequest, payload)
        for resource_position, resources in enumerate(request.resources):
            found.add_resource(number, resource_position, resources.resource)
            for scope_position, scopes in enumerate(resources.scopes):
                metrics = scopes.metrics
                found.add_scope(scope_position, scopes.scope, [b""] * len(metrics))
                for metric in metrics:  # the per-metric loop: a few attribute reads
                    kind = metric.WhichOneof("data")
                    names.append(metric.name)
                    if kind is None:
                        kinds.append(GAUGE)
                        counts.append(0)
                        temporality.append(0)
                        monotonic.append(False)
                        continue
                    data = getattr(metric, kind)
                    data_points = data.data_points
                    points.extend(data_points)
                    counts.append(len(data_points))
                    kinds.append(_KIND_CODE[kind])
                    temporality.append(data.aggregation_temporality)
                    monotonic.append(data.is_monotonic)
    layout = build_layout(found.chunks, found, cache)
    name_lengths = np.fromiter(map(len, names), dtype=np.int64, count=len(names))
    name_end = np.cumsum(name_lengths)
    kind_array = np.asarray(kinds, dtype=np.int64)
    # Summaries are cumulative by definition; gauges have no temporality.
    temporality_array = np.where(kind_array == SUMMARY, CUMULATIVE, np.asarray(temporality, dtype=np.int64))
    return _Metrics(
        layout=layout,
        points=points,
        point_counts=np.asarray(counts, dtype=np.int64),
        kind=kind_array,
        temporality=np.where(kind_array == GAUGE, 0, temporality_array),
        monotonic=np.asarray(monotonic, dtype=np.bool_),
        names_buf=as_buffer(names),
        name_start=name_end - name_lengths,
        name_end=name_end,
    )


def _rows_of_kind(fields: Fields, field_tag: int, kind: I64, kinds: Sequence[int]) -> I64:
    rows = fields.rows(field_tag)
    keep = np.isin(kind.take(fields.owner.take(rows)), kinds)
    return rows[keep]


def _last_of_kind(fields: Fields, field_tag: int, kind: I64, kinds: Sequence[int], n: int) -> I64:
    rows = _rows_of_kind(fields, field_tag, kind, kinds)
    out = np.full(n, -1, dtype=np.int64)
    np.maximum.at(out, fields.owner.take(rows), rows)
    return out


def _fixed_at(buf: NDArray[np.uint8], fields: Fields, row: I64) -> U64:
    """The fixed64 at each row (0 where ``row`` is -1)."""
    out = np.zeros(row.size, dtype=np.uint64)
    present = np.flatnonzero(row >= 0)
    if present.size:
        out[present] = fixed64(buf, fields.data.take(row.take(present)))
    return out


def _fixed_or_zero(buf: NDArray[np.uint8], fields: Fields, field_tag: int, n: int) -> U64:
    return _fixed_at(buf, fields, fields.last(field_tag, n))


def _values(buf: NDArray[np.uint8], fields: Fields, kind: I64, n: int) -> tuple[F64, F64]:
    numbers, distributions = (GAUGE, SUM), (HISTOGRAM, EXPONENTIAL_HISTOGRAM, SUMMARY)
    as_double = _fixed_at(buf, fields, _last_of_kind(fields, AS_DOUBLE, kind, numbers, n)).view(np.float64)
    as_int = _fixed_at(buf, fields, _last_of_kind(fields, AS_INT, kind, numbers, n)).view(np.int64)
    dist_sum = _fixed_at(buf, fields, _last_of_kind(fields, DIST_SUM, kind, distributions, n)).view(
        np.float64
    )
    dist_count = _fixed_at(buf, fields, _last_of_kind(fields, DIST_COUNT, kind, distributions, n))
    is_number = kind <= SUM
    # One of as_double / as_int is set (oneof); the other reads 0.
    value = np.where(is_number, as_double + as_int.astype(np.float64), dist_sum)
    count = np.where(is_number, 0.0, dist_count.astype(np.float64))
    return value, count


def _flags(buf: NDArray[np.uint8], fields: Fields, kind: I64, n: int) -> I64:
    out = np.zeros(n, dtype=np.int64)
    for code, flags_tag in enumerate(FLAGS):
        row = _last_of_kind(fields, flags_tag, kind, (code,), n)
        present = np.flatnonzero(row >= 0)
        if present.size:
            out[present] = read_varints(buf, fields.data.take(row.take(present)))[0].astype(np.int64)
    return out


def _attribute_key(buf: NDArray[np.uint8], fields: Fields, kind: I64, n: int) -> U64:
    """Per point, the wrapping sum of its attributes' KeyValue hashes (order-independent)."""
    expected = _ATTRIBUTE_TAG.take(kind.take(fields.owner))  # the attributes tag of each row's kind
    rows = np.flatnonzero(fields.tag == expected)
    if rows.size == 0:
        return np.zeros(n, dtype=np.uint64)
    hashes = range_hash(buf, fields.data.take(rows).astype(np.int64), fields.end.take(rows).astype(np.int64))
    owner = fields.owner.take(rows)
    # Sum 32-bit halves with bincount (exact in float64 below 2^21 attributes a point), then
    # recombine modulo 2^64: much faster than np.add.at on uint64.
    low = np.bincount(owner, weights=(hashes & np.uint64(0xFFFFFFFF)).astype(np.float64), minlength=n)
    high = np.bincount(owner, weights=(hashes >> np.uint64(32)).astype(np.float64), minlength=n)
    key: U64 = (high.astype(np.uint64) << np.uint64(32)) + low.astype(np.uint64)
    return key


_ATTRIBUTE_TAG = np.array(ATTRIBUTES, dtype=np.uint8)


class SeriesState:
    """Per-series memory: the previous point and an exponentially weighted baseline.

    Series keys map to dense slots through a sorted key array (``searchsorted``: no Python
    dict per point). Past ``max_series`` the least recently seen series are forgotten.

    Parameters
    ----------
    max_series
        Series remembered.
    alpha
        Weight of a new observation in the baseline mean and variance.
    warmup
        Observations before a series' z-score is reported (0 until then).
    """

    def __init__(self, *, max_series: int = 100_000, alpha: float = 0.05, warmup: int = 5) -> None:
        if max_series < 1 or not 0 < alpha <= 1:
            raise ValueError("need max_series >= 1 and 0 < alpha <= 1")
        self.max_series = max_series
        self.alpha = alpha
        self.warmup = warmup
        self.containers = ResourceCache()  # pass to MetricBatch.from_payloads across batches
        self._keys = np.zeros(0, dtype=np.int64)  # sorted
        self._slots = np.zeros(0, dtype=np.int64)  # slot of each key
        self._free: list[int] = []
        self._size = 0
        self._clock = 0
        self.value = np.zeros(0, dtype=np.float64)
        self.count = np.zeros(0, dtype=np.float64)
        self.time = np.zeros(0, dtype=np.int64)
        self.start = np.zeros(0, dtype=np.int64)
        self.seen = np.zeros(0, dtype=np.int64)
        self.mean = np.zeros(0, dtype=np.float64)
        self.var = np.zeros(0, dtype=np.float64)
        self.observed = np.zeros(0, dtype=np.int64)  # baseline observations
        self.last_used = np.zeros(0, dtype=np.int64)

    @property
    def series(self) -> int:
        """Series remembered."""
        return int(self._keys.size)

    def lookup(self, keys: I64) -> I64:
        """The slot of each key, creating slots (fresh state) for keys not seen before."""
        self._clock += 1
        unique = np.unique(keys)
        new = unique
        if self._keys.size:
            at = np.minimum(np.searchsorted(self._keys, unique), self._keys.size - 1)
            new = unique[self._keys.take(at) != unique]
        if new.size:
            self._add(new)
        slots: I64 = self._slots.take(np.searchsorted(self._keys, keys))
        self.last_used[slots] = self._clock
        return slots

    def _add(self, new: I64) -> None:
        reuse = [self._free.pop() for _ in range(min(len(self._free), new.size))]
        grow = new.size - len(reuse)
        fresh = np.arange(self._size, self._size + grow, dtype=np.int64)
        self._size += grow
        slots = np.concatenate([np.asarray(reuse, dtype=np.int64), fresh])
        self._ensure(self._size)
        for floats in (self.value, self.count, self.mean, self.var):
            floats[slots] = 0.0
        for ints in (self.time, self.start, self.seen, self.observed):
            ints[slots] = 0
        self.last_used[slots] = self._clock
        keys = np.concatenate([self._keys, new])
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._slots = np.concatenate([self._slots, slots])[order]

    def _ensure(self, size: int) -> None:
        if size <= self.value.size:
            return
        new = max(size, 2 * self.value.size, 64)
        for name in ("value", "count", "mean", "var", "time", "start", "seen", "observed", "last_used"):
            old = getattr(self, name)
            grown = np.zeros(new, dtype=old.dtype)
            grown[: old.size] = old
            setattr(self, name, grown)

    def evict(self) -> int:
        """Forget least recently seen series down to 90 % of ``max_series``; how many."""
        excess = self._keys.size - self.max_series
        if excess <= 0:
            return 0
        excess = self._keys.size - self.max_series * 9 // 10
        victims = np.argpartition(self.last_used.take(self._slots), excess - 1)[:excess]
        self._free.extend(self._slots.take(victims).tolist())
        keep = np.ones(self._keys.size, dtype=np.bool_)
        keep[victims] = False
        self._keys, self._slots = self._keys[keep], self._slots[keep]
        return int(excess)


def _slog(values: F64) -> F64:
    """Signed log: ``sign(x) * log1p(|x|)``, so values of any scale fit one model."""
    result: F64 = np.sign(values) * np.log1p(np.abs(values))
    return result


def metric_features(batch: MetricBatch, state: SeriesState) -> tuple[NDArray[np.float32], FeatureSchema]:
    """The feature matrix of ``batch`` (one row a point, columns as in :data:`SCHEMA`).

    Updates ``state`` (previous points, baselines): call once per batch.
    """
    n = len(batch)
    matrix = np.zeros((n, len(SCHEMA)), dtype=np.float32)
    kind = batch.kind.astype(np.int64)
    matrix[:, 7] = kind == GAUGE
    matrix[:, 8] = kind == SUM
    matrix[:, 9] = kind >= HISTOGRAM
    valid = np.flatnonzero(~batch.no_value)
    if valid.size == 0:
        return matrix, SCHEMA
    slots = state.lookup(batch.series.take(valid))
    order = np.lexsort((batch.time_ns.take(valid), slots))
    rows, slot = valid.take(order), slots.take(order)
    columns = _point_columns(batch, state, rows, slot)
    matrix[rows, 0] = _slog(np.nan_to_num(columns.value))
    matrix[rows, 1] = _slog(columns.delta)
    matrix[rows, 2] = _slog(columns.rate)
    matrix[rows, 3] = _baseline(state, slot, columns.observation)
    matrix[rows, 4] = np.log1p(np.maximum(columns.count, 0.0))
    matrix[rows, 5] = columns.reset
    matrix[rows, 6] = ~columns.had_previous
    _remember_last(batch, state, rows, slot)
    state.evict()
    return matrix, SCHEMA


@dataclass(frozen=True, slots=True)
class _Columns:
    value: F64
    delta: F64
    rate: F64
    count: F64
    reset: Bool
    had_previous: Bool
    observation: F64


def _point_columns(batch: MetricBatch, state: SeriesState, rows: I64, slot: I64) -> _Columns:
    """Delta, rate, interval mean and reset of each point, in (series, time) order."""
    same = np.zeros(rows.size, dtype=np.bool_)
    same[1:] = slot[1:] == slot[:-1]
    previous = np.maximum(np.arange(rows.size) - 1, 0)
    value, count = batch.value.take(rows), batch.count.take(rows)
    time, start = batch.time_ns.take(rows), batch.start_ns.take(rows)

    had_previous = same | (state.seen.take(slot) > 0)
    prev_value: F64 = np.where(same, value.take(previous), state.value.take(slot))
    prev_count: F64 = np.where(same, count.take(previous), state.count.take(slot))
    prev_time: I64 = np.where(same, time.take(previous), state.time.take(slot))
    prev_start: I64 = np.where(same, start.take(previous), state.start.take(slot))
    kind = batch.kind.take(rows).astype(np.int64)
    temporality = batch.temporality.take(rows).astype(np.int64)
    distribution = kind >= HISTOGRAM
    cumulative = temporality == CUMULATIVE
    went_down = (value < prev_value) & (batch.monotonic.take(rows) | distribution)
    restarted = (start != prev_start) & (start != 0)
    reset = cumulative & had_previous & (restarted | went_down | (distribution & (count < prev_count)))
    fresh = cumulative & (reset | ~had_previous)
    # What the point adds since the previous one: the data model's temporality rules.
    delta = np.where(
        temporality == DELTA,
        value,
        np.where(fresh, np.where(start > 0, value, 0.0), np.where(had_previous, value - prev_value, 0.0)),
    )
    delta_count = np.where(temporality == DELTA, count, np.where(fresh, count, count - prev_count))
    since = np.where(fresh | (temporality == DELTA), np.where(start > 0, start, prev_time), prev_time)
    since = np.where(had_previous | (start > 0), since, time)
    seconds = (time - since).astype(np.float64) / 1e9
    rate = np.divide(delta, seconds, out=np.zeros(rows.size), where=seconds > 0)
    mean = np.divide(delta, delta_count, out=np.full(rows.size, np.nan), where=delta_count > 0)
    value_column = np.where(distribution, mean, value)
    observation = np.where(kind == GAUGE, value, np.where(kind == SUM, rate, mean))
    # A sum's first point has no rate yet (no interval): keep it out of the baseline.
    observation = np.where((kind == SUM) & ~(seconds > 0), np.nan, observation)
    return _Columns(
        value=value_column,
        delta=delta,
        rate=rate,
        count=np.where(distribution, delta_count, 0.0),
        reset=reset,
        had_previous=had_previous,
        observation=observation,
    )


def _baseline(state: SeriesState, slot: I64, observation: F64) -> F64:
    """z-score of each observation against its series' baseline, then learn it.

    Rows are in (series, time) order; the k-th point of every series in the batch is handled
    in round k, so a series' later point sees the baseline its earlier point updated.
    """
    z = np.zeros(slot.size, dtype=np.float64)
    usable = np.isfinite(observation)
    same = np.zeros(slot.size, dtype=np.bool_)
    same[1:] = slot[1:] == slot[:-1]
    index = np.arange(slot.size)
    rank = index - np.maximum.accumulate(np.where(same, 0, index))
    alpha = state.alpha
    for round_ in range(int(rank.max(initial=-1)) + 1):
        rows = np.flatnonzero((rank == round_) & usable)
        if rows.size == 0:
            continue
        s, x = slot.take(rows), observation.take(rows)
        mean, var, seen = state.mean.take(s), state.var.take(s), state.observed.take(s)
        scale = np.maximum(np.sqrt(var), 1e-3 * np.abs(mean) + 1e-9)
        ready = seen >= state.warmup
        z[rows] = np.where(ready, np.clip((x - mean) / scale, -Z_CLIP, Z_CLIP), 0.0)
        # Weight 1/(k+1) until it falls to alpha: the plain mean and variance of the first
        # 1/alpha points, then exponential forgetting. Starting an EW variance at 0 instead
        # would make early z-scores several times too large.
        weight = np.maximum(alpha, 1.0 / (seen + 1))
        diff = x - mean
        state.mean[s] = mean + weight * diff
        state.var[s] = (1 - weight) * (var + weight * diff * diff)
        state.observed[s] = seen + 1
    return z


def _remember_last(batch: MetricBatch, state: SeriesState, rows: I64, slot: I64) -> None:
    """Store each series' latest point of the batch as its previous point."""
    last = np.ones(slot.size, dtype=np.bool_)
    last[:-1] = slot[:-1] != slot[1:]
    runs = np.diff(np.concatenate([[-1], np.flatnonzero(last)]))
    at, s = rows[last], slot[last]
    state.value[s] = batch.value.take(at)
    state.count[s] = batch.count.take(at)
    state.time[s] = batch.time_ns.take(at)
    state.start[s] = batch.start_ns.take(at)
    state.seen[s] += runs
