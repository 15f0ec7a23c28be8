"""Taking recalled spans back out of the dropped-span summaries."""

from __future__ import annotations

import numpy as np
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2

from otelai.decision.summaries import DroppedSummaries

MS = 1_000_000
ALL3 = np.ones(3, dtype=np.bool_)


def flushed(summaries: DroppedSummaries) -> dict[tuple[str, str], tuple[float, ...]]:
    """The flushed points by (service, metric name); histograms as (count, sum, *buckets)."""
    request = metrics_service_pb2.ExportMetricsServiceRequest.FromString(summaries.flush(10))
    out: dict[tuple[str, str], tuple[float, ...]] = {}
    for rm in request.resource_metrics:
        service = rm.resource.attributes[0].value.string_value
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.HasField("histogram"):
                    point = metric.histogram.data_points[0]
                    assert sum(point.bucket_counts) == point.count
                    out[(service, metric.name)] = (point.count, point.sum, *point.bucket_counts)
                else:
                    out[(service, metric.name)] = (metric.sum.data_points[0].as_int,)
    return out


def test_forgotten_spans_leave_the_counts_as_if_never_dropped() -> None:
    summaries, reference = DroppedSummaries(start_ns=0), DroppedSummaries(start_ns=0)
    durations = np.array([3, 7, 30, 300, 3], dtype=np.int64) * MS
    errors = np.array([False, True, False, True, False])
    series = summaries.intern_spans(["cart"] * 5, ["GET"] * 5)
    summaries.add_spans(series, durations, errors, np.ones(5, dtype=np.bool_))
    summaries.forget_spans(series[[1, 3]], durations[[1, 3]], errors[[1, 3]])
    kept = np.array([True, False, True, False, True])
    reference.add_spans(reference.intern_spans(["cart"] * 5, ["GET"] * 5), durations, errors, kept)
    got = flushed(summaries)
    assert got == flushed(reference)
    assert set(got) == {("cart", "otelai.dropped.spans"), ("cart", "otelai.dropped.duration")}


def test_what_an_interval_cannot_give_back_is_taken_from_the_next() -> None:
    summaries = DroppedSummaries(start_ns=0)
    series = summaries.intern_spans(["cart"] * 2, ["GET"] * 2)
    summaries.add_spans(series, np.array([3, 3]) * MS, np.array([True, True]), np.ones(2, dtype=np.bool_))
    # Three spans taken back; the one of 300 ms was counted in an interval already sent.
    summaries.forget_spans(
        np.repeat(series[:1], 3), np.array([3, 300, 3]) * MS, np.array([True, False, False])
    )
    assert summaries.empty  # both spans of this interval were taken back: nothing to send
    assert flushed(summaries) == {}
    series = summaries.intern_spans(["ad", "cart", "cart"], ["GET"] * 3)
    summaries.add_spans(series, np.array([300, 300, 3]) * MS, np.zeros(3, dtype=np.bool_), ALL3)
    got = flushed(summaries)
    assert got[("ad", "otelai.dropped.spans")] == (1,)  # another series owes nothing
    assert got[("cart", "otelai.dropped.spans")] == (1,)  # the 300 ms span paid the debt
    assert got[("cart", "otelai.dropped.duration")][:2] == (1, 3.0)
    # Nothing is owed any more: the next interval counts in full.
    summaries.add_spans(summaries.intern_spans(["cart"] * 3, ["GET"] * 3), np.full(3, 300 * MS), ~ALL3, ALL3)
    assert flushed(summaries)[("cart", "otelai.dropped.spans")] == (3,)


def test_points_never_go_negative_or_disagree_with_their_buckets() -> None:
    summaries = DroppedSummaries(start_ns=0)
    series = summaries.intern_spans(["cart"] * 3, ["GET"] * 3)
    summaries.add_spans(series, np.array([3, 3, 300]) * MS, np.array([True, False, False]), ALL3)
    summaries.forget_spans(series[:2], np.array([3, 30]) * MS, np.array([True, True]))
    got = flushed(summaries)  # checks that the bucket counts add up to the count
    count, total, *buckets = got[("cart", "otelai.dropped.duration")]
    assert got[("cart", "otelai.dropped.spans")] == (count,) == (2,)
    assert min(buckets) >= 0
    assert total == 303.0
    assert ("cart", "otelai.dropped.errors") not in got
