"""Summaries of dropped spans and log records, sent upstream as OTLP delta metrics.

Selection drops most normal traffic; so that upstream totals stay right, otelai forwards, per
interval, what it dropped: per (service, span name) span and error counts and a latency
histogram, and per (service, log template) record counts. Counting follows the spanmetrics
connector of the Collector (calls, errors, duration histogram per service.name and span.name;
explicit bucket boundaries, by default the OpenTelemetry SDK's default boundaries in ms).
Upstream, the total of a series is (forwarded items) + (``otelai.dropped.*``).

Metrics (OpenTelemetry data model, ``specification/metrics/data-model.md``):

- ``otelai.dropped.spans`` ``{span}``: Sum, monotonic, delta.
- ``otelai.dropped.errors`` ``{span}``: Sum, monotonic, delta (spans with status ERROR).
- ``otelai.dropped.duration`` ``ms``: Histogram, delta, with min and max; explicit buckets, or
  base-2 exponential ones (:mod:`otelai.decision.exponential_buckets`) when
  ``exponential_max_size`` is set. Exponential points carry no bounds and only the buckets
  between the smallest and largest value (varints), a tenth of an explicit point's bytes: at a
  few spans per series and interval, summaries would otherwise cost more than the spans.
- ``otelai.dropped.log_records`` ``{log_record}``: Sum, monotonic, delta.

``service.name`` is a resource attribute, ``span.name`` or ``otelai.log.template`` a point
attribute. Every point of one flush covers the same interval ``(start, now]``, the previous
flush to this one.

Why delta temporality: otelai is a stateless hop. Cumulative points need a writer that keeps
every series' running total for its whole life, and a restart would be a reset that upstream
must detect; several replicas writing cumulative points for the same (service, span.name)
would break the data model's single-writer rule. Delta points carry only what was dropped in
their interval, so a restart loses nothing already sent, state is bounded by one interval, and
replicas' points add up. To keep each stream single-writer anyway, set ``instance_id`` (a
resource attribute ``otelai.instance.id``) per replica. Back ends that need cumulative series
convert with the Collector's ``deltatocumulative`` processor.

Cardinality is bounded as the metrics SDK bounds it ("Cardinality limits" in
``specification/metrics/sdk.md``): at most ``max_series`` series per table and interval, the
last one being an overflow series with the attribute ``otel.metric.overflow=true`` (and no
service.name) into which every further (service, name) pair is aggregated, so totals stay exact.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import numpy.typing as npt
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2

from otelai import __version__
from otelai.decision import exponential_buckets
from otelai.kernels import load_kernels
from otelai.signals import Signal, count_items

# opentelemetry-sdk's _DEFAULT_EXPLICIT_BUCKET_HISTOGRAM_AGGREGATION_BOUNDARIES (milliseconds).
DEFAULT_BOUNDARIES_MS: tuple[float, ...] = (
    0.0,
    5.0,
    10.0,
    25.0,
    50.0,
    75.0,
    100.0,
    250.0,
    500.0,
    750.0,
    1000.0,
    2500.0,
    5000.0,
    7500.0,
    10000.0,
)
DEFAULT_MAX_SERIES = 2000  # the metrics SDK's default cardinality limit
OVERFLOW = 0  # series id of the overflow series in every table
OVERFLOW_ATTRIBUTE = "otel.metric.overflow"
SCOPE_NAME = "otelai.decision.summaries"
SPAN_NAME = "span.name"
TEMPLATE = "otelai.log.template"
_DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
# "numpy" keeps the numpy counting even where numba is installed (tests compare the two).
KERNEL_ENV = "OTELAI_SUMMARIES_KERNEL"
_NO_BUCKETS = np.zeros(0, dtype=np.int64)  # the kernel finds explicit buckets itself


class SeriesTable:
    """Dense ids for (service, name) pairs, with id 0 the overflow series.

    Parameters
    ----------
    max_series
        Ids handed out, the overflow series included.
    """

    def __init__(self, *, max_series: int = DEFAULT_MAX_SERIES) -> None:
        if max_series < 2:
            raise ValueError(f"max_series must be at least 2 (one series and the overflow), got {max_series}")
        self.max_series = max_series
        self._ids: dict[tuple[str, str], int] = {}
        self.keys: list[tuple[str, str]] = [("", "")]  # index 0: the overflow series

    def __len__(self) -> int:
        return len(self.keys)

    def intern(self, service: str, name: str) -> int:
        """The id of a pair; the overflow id once ``max_series - 1`` pairs are known."""
        key = (service, name)
        found = self._ids.get(key)
        if found is not None:
            return found
        if len(self.keys) >= self.max_series:
            return OVERFLOW
        ident = self._ids[key] = len(self.keys)
        self.keys.append(key)
        return ident

    def find(self, service: str, name: str) -> int | None:
        """The id of a pair already interned, or ``None``."""
        return self._ids.get((service, name))

    def intern_many(self, services: Sequence[str], names: Sequence[str]) -> npt.NDArray[np.int64]:
        """Ids of many pairs (one dictionary look-up each: about 0.1 us)."""
        if len(services) != len(names):
            raise ValueError(f"{len(services)} services for {len(names)} names")
        # Known pairs resolve in one C-level map; only new pairs take the slow path.
        found = list(map(self._ids.get, zip(services, names, strict=True)))
        if None in found:
            found = [
                self.intern(s, n) if i is None else i for i, s, n in zip(found, services, names, strict=True)
            ]
        return np.array(found, dtype=np.int64)

    def valid(self, ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """``ids`` with any id this table did not hand out mapped to the overflow series."""
        bad = (ids < 0) | (ids >= len(self.keys))
        return np.where(bad, OVERFLOW, ids) if bad.any() else ids


@dataclass(slots=True)
class _Owed:
    """Spans of one series taken back but not yet taken from any interval's counts."""

    buckets: npt.NDArray[np.int64]
    millis: npt.NDArray[np.float64]  # duration sum per bucket
    errors: int = 0


class DroppedSummaries:
    """Accumulates what selection dropped and renders it as an OTLP metrics request.

    Ids from :meth:`intern_spans` and :meth:`intern_logs` are valid until the next
    :meth:`flush`: each interval starts with empty tables (as a delta SDK forgets its series),
    so a pair that falls silent frees its place.

    Parameters
    ----------
    boundaries_ms
        Explicit histogram bucket boundaries in milliseconds, increasing.
    exponential_max_size
        When set, the duration histogram is a base-2 exponential one of at most this many
        buckets per point (the spanmetrics connector's ``histogram.exponential.max_size``)
        instead of the explicit ``boundaries_ms``.
    max_series
        Cardinality limit of each table (spans, logs), the overflow series included.
    instance_id
        Set as the resource attribute ``otelai.instance.id`` so each replica writes its own streams.
    resource_attributes
        Further string attributes set on every resource.
    start_ns
        Start of the first interval (Unix nanoseconds); now by default.
    """

    def __init__(
        self,
        *,
        boundaries_ms: Sequence[float] = DEFAULT_BOUNDARIES_MS,
        exponential_max_size: int | None = None,
        max_series: int = DEFAULT_MAX_SERIES,
        instance_id: str = "",
        resource_attributes: Mapping[str, str] | None = None,
        start_ns: int | None = None,
    ) -> None:
        bounds = np.asarray(boundaries_ms, dtype=np.float64)
        if bounds.ndim != 1 or (bounds.size > 1 and not np.all(np.diff(bounds) > 0)):
            raise ValueError(f"histogram boundaries must be strictly increasing, got {list(boundaries_ms)}")
        self.boundaries_ms = bounds
        if exponential_max_size is not None and exponential_max_size < exponential_buckets.MIN_MAX_SIZE:
            raise ValueError(f"exponential_max_size must be at least 2, got {exponential_max_size}")
        self.exponential_max_size = exponential_max_size
        self.max_series = max_series
        self._resource_attributes = dict(resource_attributes or {})
        if instance_id:
            self._resource_attributes["otelai.instance.id"] = instance_id
        self.interval_start_ns = time.time_ns() if start_ns is None else start_ns
        # Spans taken back (forget_spans) beyond what an interval held, by (service, name);
        # None is the overflow series. Kept across intervals.
        self._owed: dict[tuple[str, str] | None, _Owed] = {}
        self._reset()
        _compiled()  # load the kernel at start-up, not on the first batch

    def _reset(self) -> None:
        self.spans = SeriesTable(max_series=self.max_series)
        self.logs = SeriesTable(max_series=self.max_series)
        buckets = exponential_buckets.WIDTH if self.exponential_max_size else self.boundaries_ms.size + 1
        self.span_counts = np.zeros(self.max_series, dtype=np.int64)
        self.error_counts = np.zeros(self.max_series, dtype=np.int64)
        self.bucket_counts = np.zeros((self.max_series, buckets), dtype=np.int64)
        self.duration_sum = np.zeros(self.max_series, dtype=np.float64)
        self.duration_min = np.full(self.max_series, np.inf)
        self.duration_max = np.full(self.max_series, -np.inf)
        self.log_counts = np.zeros(self.max_series, dtype=np.int64)

    def intern_spans(self, services: Sequence[str], span_names: Sequence[str]) -> npt.NDArray[np.int64]:
        """Series ids of (service.name, span name) pairs."""
        return self.spans.intern_many(services, span_names)

    def intern_logs(self, services: Sequence[str], templates: Sequence[str]) -> npt.NDArray[np.int64]:
        """Series ids of (service.name, template id) pairs."""
        return self.logs.intern_many(services, templates)

    def add_spans(
        self,
        series: npt.NDArray[np.int64],
        durations_ns: npt.NDArray[np.integer],
        is_error: npt.NDArray[np.bool_],
        dropped: npt.NDArray[np.bool_],
    ) -> None:
        """Count the dropped spans of a batch.

        Parameters
        ----------
        series
            Series id of every span of the batch, from :meth:`intern_spans`.
        durations_ns
            ``end - start`` of every span; negative durations (skewed clocks) count as 0.
        is_error
            Whether each span has status ERROR.
        dropped
            Which spans selection dropped; only these are counted.
        """
        kernel = _compiled()
        if kernel is not None:
            self._add_spans_compiled(kernel, series, durations_ns, is_error, dropped)
            return
        ids = self.spans.valid(series[dropped])
        if ids.size == 0:
            return
        # Only the ids handed out so far: bincount over the whole capacity would cost more.
        size = len(self.spans)
        # As int64, an unsigned end - start that wrapped below zero becomes negative again.
        millis = np.maximum(durations_ns[dropped].astype(np.int64), 0) / 1e6
        self.span_counts[:size] += np.bincount(ids, minlength=size)
        self.error_counts[:size] += np.bincount(ids[is_error[dropped]], minlength=size)
        bucket = self._buckets(millis)
        width = self.bucket_counts.shape[1]
        flat = np.bincount(ids * width + bucket, minlength=size * width)
        self.bucket_counts[:size] += flat.reshape(size, width)
        self.duration_sum[:size] += np.bincount(ids, weights=millis, minlength=size)
        np.minimum.at(self.duration_min, ids, millis)
        np.maximum.at(self.duration_max, ids, millis)
        if self._owed:
            self._settle()

    def _add_spans_compiled(
        self,
        kernel: Any,
        series: npt.NDArray[np.int64],
        durations_ns: npt.NDArray[np.integer],
        is_error: npt.NDArray[np.bool_],
        dropped: npt.NDArray[np.bool_],
    ) -> None:
        """:meth:`add_spans` in one pass of the compiled kernel (same counts, same sums)."""
        durations = np.ascontiguousarray(durations_ns).astype(np.int64, copy=False)
        buckets = _NO_BUCKETS
        if self.exponential_max_size:  # numpy's log2, as the numpy path computes the slots
            buckets = self._buckets(np.maximum(durations[dropped], 0) / 1e6)
        counted = kernel.add_spans(
            np.ascontiguousarray(series, dtype=np.int64),
            durations,
            np.ascontiguousarray(is_error, dtype=np.bool_),
            np.ascontiguousarray(dropped, dtype=np.bool_),
            self.boundaries_ms,
            buckets,
            len(self.spans),
            self.span_counts,
            self.error_counts,
            self.bucket_counts,
            self.duration_sum,
            self.duration_min,
            self.duration_max,
        )
        if counted and self._owed:
            self._settle()

    def forget_spans(
        self,
        series: npt.NDArray[np.int64],
        durations_ns: npt.NDArray[np.integer],
        is_error: npt.NDArray[np.bool_],
    ) -> None:
        """Take back spans counted as dropped that were forwarded after all (the earlier spans
        of a trace that turned critical, recalled from the trace buffer).

        What this interval holds of the series (in the same histogram buckets) is taken now;
        the rest was counted in an interval already sent, and is owed: taken from the series'
        next dropped spans, so totals over intervals stay exact and no point goes below zero
        or disagrees with its buckets. Min and max stay as they are.

        Parameters
        ----------
        series, durations_ns, is_error
            As for :meth:`add_spans`, one entry per span to take back.
        """
        ids = self.spans.valid(series)
        millis = np.maximum(durations_ns.astype(np.int64), 0) / 1e6
        bucket = self._buckets(millis)
        # A loop over the recalled spans only: a few per critical trace.
        for ident, slot, ms, error in zip(
            ids.tolist(), bucket.tolist(), millis.tolist(), is_error.tolist(), strict=True
        ):
            key = None if ident == OVERFLOW else self.spans.keys[ident]
            owed = self._owed.get(key)
            if owed is None:
                if len(self._owed) >= self.max_series:  # bounded: forget the oldest debt
                    del self._owed[next(iter(self._owed))]
                width = self.bucket_counts.shape[1]
                owed = self._owed[key] = _Owed(np.zeros(width, dtype=np.int64), np.zeros(width))
            owed.buckets[slot] += 1
            owed.millis[slot] += ms
            owed.errors += int(error)
        self._settle()

    def _settle(self) -> None:
        """Take what is owed from this interval's counts, as far as they go."""
        for key in list(self._owed):
            ident = OVERFLOW if key is None else self.spans.find(*key)
            if ident is None:
                continue
            owed = self._owed[key]
            taken = np.minimum(self.bucket_counts[ident], owed.buckets)
            count = int(taken.sum())
            errors = min(owed.errors, int(self.error_counts[ident]), count)
            # Durations by bucket, so taking a whole bucket takes exactly its durations.
            millis = owed.millis * taken / np.maximum(owed.buckets, 1)
            self.bucket_counts[ident] -= taken
            self.span_counts[ident] -= count
            self.error_counts[ident] = min(self.error_counts[ident] - errors, self.span_counts[ident])
            self.duration_sum[ident] = max(self.duration_sum[ident] - millis.sum(), 0.0)
            owed.buckets -= taken
            owed.errors -= errors
            owed.millis -= millis
            if not owed.buckets.any():
                del self._owed[key]  # an error left owed with no span left is forgiven

    def _buckets(self, millis: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
        """The histogram bucket of each duration."""
        if self.exponential_max_size:
            return exponential_buckets.slots(millis)
        # Bucket i counts (bounds[i-1], bounds[i]]: upper bounds inclusive, as in OTLP.
        found: npt.NDArray[np.int64] = np.searchsorted(self.boundaries_ms, millis, side="left")
        return found

    def add_logs(self, series: npt.NDArray[np.int64], dropped: npt.NDArray[np.bool_]) -> None:
        """Count the dropped log records of a batch (``series`` from :meth:`intern_logs`)."""
        ids = self.logs.valid(series[dropped])
        if ids.size:
            size = len(self.logs)
            self.log_counts[:size] += np.bincount(ids, minlength=size)

    @property
    def empty(self) -> bool:
        """Whether nothing was dropped since the last flush."""
        return not (self.span_counts.any() or self.log_counts.any())

    def flush(self, now_ns: int | None = None) -> bytes:
        """A serialized ``ExportMetricsServiceRequest`` for the interval ending now, then reset.

        Returns ``b""`` when nothing was dropped in the interval (no request to send).
        """
        return self.flush_counted(now_ns)[0]

    def flush_counted(self, now_ns: int | None = None) -> tuple[bytes, int]:
        """As :meth:`flush`, with the number of data points in the request."""
        end = time.time_ns() if now_ns is None else now_ns
        start = self.interval_start_ns
        data, points = b"", 0
        if not self.empty:
            request = self._request(start, end)
            data, points = request.SerializeToString(), count_items(Signal.METRICS, request)
        self.interval_start_ns = end
        self._reset()
        return data, points

    def _request(self, start: int, end: int) -> metrics_service_pb2.ExportMetricsServiceRequest:
        request = metrics_service_pb2.ExportMetricsServiceRequest()
        scopes: dict[str, metrics_pb2.ScopeMetrics] = {}
        metrics: dict[tuple[str, str], metrics_pb2.Metric] = {}
        exponential = bool(self.exponential_max_size)

        def metric(service: str, name: str) -> metrics_pb2.Metric:
            found = metrics.get((service, name))
            if found is not None:
                return found
            scope = scopes.get(service)
            if scope is None:
                scope = scopes[service] = self._scope(request, service)
            created = metrics[(service, name)] = _new_metric(scope, name, exponential=exponential)
            return created

        for ident in np.flatnonzero(self.span_counts).tolist():
            service, span_name = self.spans.keys[ident]
            attrs = _point_attributes(ident, SPAN_NAME, span_name)
            _sum_point(
                metric(service, "otelai.dropped.spans"), attrs, start, end, int(self.span_counts[ident])
            )
            if self.error_counts[ident]:
                errors = int(self.error_counts[ident])
                _sum_point(metric(service, "otelai.dropped.errors"), attrs, start, end, errors)
            duration = metric(service, "otelai.dropped.duration")
            fields = {
                "start_time_unix_nano": start,
                "time_unix_nano": end,
                "count": int(self.span_counts[ident]),
                "sum": float(self.duration_sum[ident]),
                "min": float(self.duration_min[ident]),
                "max": float(self.duration_max[ident]),
            }
            if exponential:
                self._exponential_point(duration, attrs, fields, ident)
                continue
            point = duration.histogram.data_points.add(**fields)
            point.attributes.extend(attrs)
            point.bucket_counts.extend(self.bucket_counts[ident].tolist())
            point.explicit_bounds.extend(self.boundaries_ms.tolist())
        for ident in np.flatnonzero(self.log_counts).tolist():
            service, template = self.logs.keys[ident]
            attrs = _point_attributes(ident, TEMPLATE, template)
            _sum_point(
                metric(service, "otelai.dropped.log_records"), attrs, start, end, int(self.log_counts[ident])
            )
        return request

    def _exponential_point(
        self,
        metric: metrics_pb2.Metric,
        attrs: list[common_pb2.KeyValue],
        fields: dict[str, Any],
        ident: int,
    ) -> None:
        assert self.exponential_max_size is not None
        scale, zero, offset, counts = exponential_buckets.point_buckets(
            self.bucket_counts[ident], self.exponential_max_size
        )
        point = metric.exponential_histogram.data_points.add(scale=scale, zero_count=zero, **fields)
        point.attributes.extend(attrs)
        if counts:
            point.positive.offset = offset
            point.positive.bucket_counts.extend(counts)

    def _scope(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, service: str
    ) -> metrics_pb2.ScopeMetrics:
        attributes = dict(self._resource_attributes)
        if service:
            attributes["service.name"] = service
        resource_metrics = request.resource_metrics.add(
            resource=resource_pb2.Resource(attributes=[_string_kv(k, v) for k, v in attributes.items()])
        )
        return resource_metrics.scope_metrics.add(
            scope=common_pb2.InstrumentationScope(name=SCOPE_NAME, version=__version__)
        )


@cache
def _compiled() -> Any:
    """The compiled counting kernel, or None (numba missing or ``OTELAI_SUMMARIES_KERNEL=numpy``)."""
    return load_kernels("otelai.decision.summaries_numba", KERNEL_ENV, "summaries count with numpy")


_METRICS: dict[str, tuple[str, str, str]] = {
    "otelai.dropped.spans": ("sum", "{span}", "Spans dropped by otelai selection (not forwarded)."),
    "otelai.dropped.errors": ("sum", "{span}", "Spans with status ERROR dropped by otelai selection."),
    "otelai.dropped.duration": ("histogram", "ms", "Duration of the spans dropped by otelai selection."),
    "otelai.dropped.log_records": ("sum", "{log_record}", "Log records dropped by otelai selection."),
}


def _new_metric(scope: metrics_pb2.ScopeMetrics, name: str, *, exponential: bool) -> metrics_pb2.Metric:
    kind, unit, description = _METRICS[name]
    metric = scope.metrics.add(name=name, unit=unit, description=description)
    if kind == "sum":
        metric.sum.aggregation_temporality = _DELTA
        metric.sum.is_monotonic = True
    elif exponential:
        metric.exponential_histogram.aggregation_temporality = _DELTA
    else:
        metric.histogram.aggregation_temporality = _DELTA
    return metric


def _sum_point(
    metric: metrics_pb2.Metric, attrs: list[common_pb2.KeyValue], start: int, end: int, value: int
) -> None:
    point = metric.sum.data_points.add(start_time_unix_nano=start, time_unix_nano=end, as_int=value)
    point.attributes.extend(attrs)


def _point_attributes(ident: int, key: str, value: str) -> list[common_pb2.KeyValue]:
    if ident == OVERFLOW:
        return [common_pb2.KeyValue(key=OVERFLOW_ATTRIBUTE, value=common_pb2.AnyValue(bool_value=True))]
    return [_string_kv(key, value)]


def _string_kv(key: str, value: str) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))
