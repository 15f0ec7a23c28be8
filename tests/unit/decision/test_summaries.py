"""Summaries of dropped spans and log records as OTLP delta metrics."""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2

from otelai.decision import summaries as summaries_module
from otelai.decision.summaries import DEFAULT_BOUNDARIES_MS, OVERFLOW, DroppedSummaries, SeriesTable

DELTA = metrics_pb2.AGGREGATION_TEMPORALITY_DELTA
START = 1_700_000_000_000_000_000
END = START + 10_000_000_000


def parse(data: bytes) -> metrics_service_pb2.ExportMetricsServiceRequest:
    request = metrics_service_pb2.ExportMetricsServiceRequest()
    request.ParseFromString(data)
    return request


def points(request: metrics_service_pb2.ExportMetricsServiceRequest, name: str) -> dict[tuple[str, str], Any]:
    """Points of one metric by (service.name, point attribute value or 'overflow')."""
    found: dict[tuple[str, str], Any] = {}
    for rm in request.resource_metrics:
        service = next((a.value.string_value for a in rm.resource.attributes if a.key == "service.name"), "")
        for sm in rm.scope_metrics:
            assert sm.scope.name == "otelai.decision.summaries"
            for metric in sm.metrics:
                if metric.name != name:
                    continue
                data = (
                    metric.histogram.data_points if metric.HasField("histogram") else metric.sum.data_points
                )
                for point in data:
                    attr = point.attributes[0]
                    label = "overflow" if attr.key == "otel.metric.overflow" else attr.value.string_value
                    found[(service, label)] = point
    return found


def batch(
    rng: np.random.Generator, n: int, pairs: list[tuple[str, str]]
) -> tuple[list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
    which = rng.integers(0, len(pairs), size=n)
    services = [pairs[i][0] for i in which]
    names = [pairs[i][1] for i in which]
    durations = rng.integers(-1_000_000, 20_000_000_000, size=n)  # a few negative (skewed clocks)
    errors = rng.random(n) < 0.1
    dropped = rng.random(n) < 0.9
    return services, names, durations, errors, dropped


def test_totals_match_what_was_dropped_exactly() -> None:
    rng = np.random.default_rng(5)
    pairs = [("cart", "GET /cart"), ("cart", "POST /cart"), ("checkout", "PlaceOrder"), ("ad", "GetAds")]
    summaries = DroppedSummaries(start_ns=START)
    expected_counts: Counter[tuple[str, str]] = Counter()
    expected_errors: Counter[tuple[str, str]] = Counter()
    expected_sum: dict[tuple[str, str], float] = {}
    all_millis: dict[tuple[str, str], list[float]] = {}
    for size in (1, 100, 2500):
        services, names, durations, errors, dropped = batch(rng, size, pairs)
        summaries.add_spans(summaries.intern_spans(services, names), durations, errors, dropped)
        for s, n, d, e, x in zip(
            services, names, durations.tolist(), errors.tolist(), dropped.tolist(), strict=True
        ):
            if x:
                expected_counts[(s, n)] += 1
                expected_errors[(s, n)] += e
                millis = max(d, 0) / 1e6
                expected_sum[(s, n)] = expected_sum.get((s, n), 0.0) + millis
                all_millis.setdefault((s, n), []).append(millis)

    request = parse(summaries.flush(END))
    spans = points(request, "otelai.dropped.spans")
    errors_points = points(request, "otelai.dropped.errors")
    histograms = points(request, "otelai.dropped.duration")
    assert {k: p.as_int for k, p in spans.items()} == dict(expected_counts)
    assert {k: p.as_int for k, p in errors_points.items()} == {k: v for k, v in expected_errors.items() if v}
    for key, point in histograms.items():
        assert point.count == expected_counts[key]
        assert sum(point.bucket_counts) == point.count
        assert point.sum == pytest.approx(expected_sum[key])
        assert point.min == min(all_millis[key])
        assert point.max == max(all_millis[key])
        assert list(point.explicit_bounds) == list(DEFAULT_BOUNDARIES_MS)
        want = np.bincount(np.searchsorted(DEFAULT_BOUNDARIES_MS, all_millis[key], side="left"), minlength=16)
        assert list(point.bucket_counts) == want.tolist()


def test_bucket_upper_bounds_are_inclusive() -> None:
    summaries = DroppedSummaries(boundaries_ms=(1.0, 10.0), start_ns=START)
    ids = summaries.intern_spans(["s"] * 5, ["op"] * 5)
    durations = np.array([0, 1_000_000, 1_000_001, 10_000_000, 50_000_000])
    summaries.add_spans(ids, durations, np.zeros(5, bool), np.ones(5, bool))
    point = points(parse(summaries.flush(END)), "otelai.dropped.duration")[("s", "op")]
    assert list(point.bucket_counts) == [2, 2, 1]


def test_temporality_and_time_ranges() -> None:
    summaries = DroppedSummaries(start_ns=START, instance_id="edge-1")
    ids = summaries.intern_spans(["svc"], ["op"])
    summaries.add_spans(ids, np.array([5_000_000]), np.array([True]), np.array([True]))
    summaries.add_logs(summaries.intern_logs(["svc"], ["42"]), np.array([True]))
    request = parse(summaries.flush(END))
    resource = request.resource_metrics[0].resource
    attrs = {a.key: a.value.string_value for a in resource.attributes}
    assert attrs == {"service.name": "svc", "otelai.instance.id": "edge-1"}
    metrics = {m.name: m for m in request.resource_metrics[0].scope_metrics[0].metrics}
    assert set(metrics) == {
        "otelai.dropped.spans",
        "otelai.dropped.errors",
        "otelai.dropped.duration",
        "otelai.dropped.log_records",
    }
    for name in ("otelai.dropped.spans", "otelai.dropped.errors", "otelai.dropped.log_records"):
        assert metrics[name].sum.aggregation_temporality == DELTA
        assert metrics[name].sum.is_monotonic
    assert metrics["otelai.dropped.duration"].histogram.aggregation_temporality == DELTA
    assert metrics["otelai.dropped.duration"].unit == "ms"
    assert metrics["otelai.dropped.log_records"].sum.data_points[0].attributes[0].key == "otelai.log.template"
    for metric in metrics.values():
        data_points: list[Any] = [*metric.sum.data_points, *metric.histogram.data_points]
        for point in data_points:
            assert (point.start_time_unix_nano, point.time_unix_nano) == (START, END)

    # The next interval starts where this one ended; an empty interval sends nothing.
    assert summaries.flush(END + 5) == b""
    later = END + 10
    summaries.add_logs(summaries.intern_logs(["svc"], ["42"]), np.array([True]))
    point = points(parse(summaries.flush(later)), "otelai.dropped.log_records")[("svc", "42")]
    assert (point.start_time_unix_nano, point.time_unix_nano, point.as_int) == (END + 5, later, 1)


def test_wrapped_unsigned_durations_count_as_zero() -> None:
    summaries = DroppedSummaries(start_ns=START)
    ids = summaries.intern_spans(["s", "s"], ["op", "op"])
    start = np.array([10, 10], dtype=np.uint64)
    end = np.array([5, 2_000_010], dtype=np.uint64)  # the first span ends before it starts
    summaries.add_spans(ids, end - start, np.zeros(2, bool), np.ones(2, bool))
    point = points(parse(summaries.flush(END)), "otelai.dropped.duration")[("s", "op")]
    assert (point.min, point.max, point.sum) == (0.0, 2.0, 2.0)


def test_kept_items_are_not_counted() -> None:
    summaries = DroppedSummaries(start_ns=START)
    ids = summaries.intern_spans(["a", "a"], ["x", "y"])
    summaries.add_spans(ids, np.array([1, 2]), np.array([True, True]), np.array([False, False]))
    summaries.add_logs(summaries.intern_logs(["a"], ["t"]), np.array([False]))
    assert summaries.empty
    assert summaries.flush(END) == b""


def test_overflow_keeps_totals_exact() -> None:
    summaries = DroppedSummaries(start_ns=START, max_series=4)  # 3 real series + overflow
    services = [f"svc{i % 6}" for i in range(60)]
    names = ["op"] * 60
    ids = summaries.intern_spans(services, names)
    assert set(ids.tolist()) == {OVERFLOW, 1, 2, 3}
    summaries.add_spans(ids, np.full(60, 1_000_000), np.zeros(60, bool), np.ones(60, bool))
    request = parse(summaries.flush(END))
    spans = points(request, "otelai.dropped.spans")
    assert sum(p.as_int for p in spans.values()) == 60
    assert spans[("", "overflow")].as_int == 30
    assert {k: p.as_int for k, p in spans.items() if k[1] != "overflow"} == {
        ("svc0", "op"): 10,
        ("svc1", "op"): 10,
        ("svc2", "op"): 10,
    }
    overflow_point = spans[("", "overflow")]
    assert overflow_point.attributes[0].value.bool_value is True
    # A new interval has room again.
    assert summaries.intern_spans(["svc5"], ["op"]).tolist() == [1]


def test_series_table_and_stale_ids() -> None:
    table = SeriesTable(max_series=3)
    assert table.intern("a", "x") == 1
    assert table.intern("a", "x") == 1
    assert table.intern("b", "x") == 2
    assert table.intern("c", "x") == OVERFLOW
    assert table.valid(np.array([1, 2, 7, -1])).tolist() == [1, 2, OVERFLOW, OVERFLOW]
    with pytest.raises(ValueError):
        table.intern_many(["a"], [])
    with pytest.raises(ValueError):
        SeriesTable(max_series=1)
    with pytest.raises(ValueError):
        DroppedSummaries(boundaries_ms=(5.0, 1.0))


def test_exponential_histograms_count_exactly_without_bounds() -> None:
    rng = np.random.default_rng(8)
    pairs = [("cart", "GET /cart"), ("ad", "GetAds")]
    summaries = DroppedSummaries(exponential_max_size=20, start_ns=START)
    explicit = DroppedSummaries(start_ns=START)
    services, names, durations, errors, dropped = batch(rng, 2000, pairs)
    for table in (summaries, explicit):
        table.add_spans(table.intern_spans(services, names), durations, errors, dropped)
    data, reference = summaries.flush(END), explicit.flush(END)
    request = parse(data)
    for rm in request.resource_metrics:
        for metric in rm.scope_metrics[0].metrics:
            if metric.name == "otelai.dropped.duration":
                assert metric.WhichOneof("data") == "exponential_histogram"
                assert metric.exponential_histogram.aggregation_temporality == DELTA
    want = points(parse(reference), "otelai.dropped.duration")
    found: dict[tuple[str, str], Any] = {}
    for rm in request.resource_metrics:
        service = rm.resource.attributes[0].value.string_value
        for metric in rm.scope_metrics[0].metrics:
            for point in metric.exponential_histogram.data_points:
                found[(service, point.attributes[0].value.string_value)] = point
    assert found.keys() == want.keys()
    for key, point in found.items():
        assert point.count == want[key].count == point.zero_count + sum(point.positive.bucket_counts)
        assert (point.sum, point.min, point.max) == (want[key].sum, want[key].min, want[key].max)
        assert len(point.positive.bucket_counts) <= 20
    assert points(request, "otelai.dropped.spans").keys() == want.keys()
    assert len(data) < len(reference)  # no bounds, varint counts


def test_exponential_max_size_must_be_positive() -> None:
    with pytest.raises(ValueError):
        DroppedSummaries(exponential_max_size=1)


@pytest.mark.parametrize("exponential", [None, 20], ids=["explicit", "exponential"])
def test_compiled_counting_matches_numpy_bit_for_bit(exponential: int | None) -> None:
    """The compiled :meth:`DroppedSummaries.add_spans` leaves the numpy path's counts, sums,
    minima and maxima, through invalid and stale ids, wrapped unsigned durations, durations on
    the bounds, spans taken back, flushes and the overflow series."""
    pytest.importorskip("numba")
    assert summaries_module._compiled() is not None

    def stream() -> tuple[list[bytes], list[bytes]]:
        rng = np.random.default_rng(11)
        table = DroppedSummaries(start_ns=START, max_series=6, exponential_max_size=exponential)
        pairs = [(f"svc{i % 3}", f"op{i}") for i in range(8)]  # more than fit: overflow
        flushed, arrays = [], []
        for step in range(30):
            services, names, durations, errors, dropped = batch(rng, int(rng.integers(0, 300)), pairs)
            ids = table.intern_spans(services, names)
            if step % 4 == 1:  # ids of no series (stale, or never handed out)
                ids[rng.random(ids.size) < 0.1] = rng.choice([-1, len(table.spans), 1000])
            if step % 5 == 2:  # exactly on a bound, and unsigned ends before their starts
                durations[: durations.size // 4] = 5_000_000
                durations = durations.astype(np.uint64)
            table.add_spans(ids, durations, errors, dropped)
            if step % 6 == 3:
                taken = rng.random(ids.size) < 0.05
                table.forget_spans(ids[taken], durations[taken], errors[taken])
            counts = (table.span_counts, table.error_counts, table.bucket_counts)
            sums = (table.duration_sum, table.duration_min, table.duration_max)
            arrays += [a.tobytes() for a in (*counts, *sums)]
            if step % 7 == 6:
                flushed.append(table.flush(END + step))
        return flushed, arrays

    compiled = stream()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(summaries_module, "_compiled", lambda: None)
        reference = stream()
    assert compiled == reference
