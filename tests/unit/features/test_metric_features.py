"""Metric point features read from serialised OTLP metrics requests."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2

from otelai.features.metrics import (
    CUMULATIVE,
    DELTA,
    SCHEMA,
    MetricBatch,
    SeriesState,
    metric_features,
)
from otelai.features.wire import WireError

S = 1_000_000_000  # ns per second


def _request(
    metrics: list[metrics_pb2.Metric], service: str = "api", scope: str = "meter"
) -> ExportMetricsServiceRequest:
    request = ExportMetricsServiceRequest()
    resource_metrics = request.resource_metrics.add()
    resource_metrics.resource.attributes.add(key="service.name", value={"string_value": service})
    scope_metrics = resource_metrics.scope_metrics.add()
    scope_metrics.scope.name = scope
    scope_metrics.metrics.extend(metrics)
    return request


def _point(container: Any, value: float, t: float, start: float = 0.0, /, **attrs: str) -> Any:
    point = container.data_points.add()
    point.as_double = value
    point.time_unix_nano = int(t * S)
    point.start_time_unix_nano = int(start * S)
    for key, text in attrs.items():
        point.attributes.add(key=key, value={"string_value": text})
    return point


def _sum(name: str, temporality: int = CUMULATIVE, monotonic: bool = True) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(name=name)
    metric.sum.aggregation_temporality = temporality  # type: ignore[assignment]
    metric.sum.is_monotonic = monotonic
    return metric


def _gauge(name: str) -> metrics_pb2.Metric:
    metric = metrics_pb2.Metric(name=name)
    metric.gauge.SetInParent()
    return metric


def _features(state: SeriesState, *metrics: metrics_pb2.Metric) -> dict[str, np.ndarray]:
    batch = MetricBatch.from_payloads([_request(list(metrics)).SerializeToString()], state.containers)
    matrix, schema = metric_features(batch, state)
    assert schema == SCHEMA and matrix.dtype == np.float32 and np.isfinite(matrix).all()
    return {name: matrix[:, index].astype(np.float64) for index, name in enumerate(SCHEMA.names)}


def _unslog(values: np.ndarray) -> np.ndarray:
    result: np.ndarray = np.sign(values) * np.expm1(np.abs(values))
    return result


def test_locators_point_back_to_each_point() -> None:
    gauge, counter = _gauge("cpu"), _sum("requests")
    for index in range(3):
        _point(gauge.gauge, index, 10, core=str(index))
    _point(counter.sum, 7, 10, 1)
    requests = [_request([gauge, counter]), _request([counter], service="db")]
    batch = MetricBatch.from_payloads([r.SerializeToString() for r in requests])
    assert len(batch) == 5
    for row in range(len(batch)):
        metric = (
            requests[batch.request[row]]
            .resource_metrics[batch.resource[row]]
            .scope_metrics[batch.scope[row]]
            .metrics[batch.metric[row]]
        )
        point = getattr(metric, metric.WhichOneof("data")).data_points[batch.point[row]]
        assert point.as_double == batch.value[row]
        assert point.time_unix_nano == batch.time_ns[row]


def test_series_identity() -> None:
    def key(service: str = "api", name: str = "m", scope: str = "meter", **attrs: str) -> int:
        metric = _gauge(name)
        _point(metric.gauge, 1.0, 1, **attrs)
        payload = _request([metric], service=service, scope=scope).SerializeToString()
        return int(MetricBatch.from_payloads([payload]).series[0])

    base = key(a="1", b="2")
    assert key(b="2", a="1") == base  # attribute order does not matter
    assert key(a="1", b="2") == base  # stable from one decode to the next
    assert len({base, key(a="1", b="3"), key(a="1"), key(service="web", a="1", b="2"),
                key(name="n", a="1", b="2"), key(scope="other", a="1", b="2")}) == 6  # fmt: skip


def test_cumulative_sum_delta_rate_and_resets() -> None:
    state = SeriesState()
    steps = [(100.0, 10, 0), (130.0, 20, 0), (10.0, 30, 0), (50.0, 40, 35)]  # (value, t, start)
    seen = []
    for value, t, start in steps:
        counter = _sum("requests")
        _point(counter.sum, value, t, start or 0.0)
        if start == 0:
            counter.sum.data_points[0].start_time_unix_nano = 5 * S
        seen.append(_features(state, counter))
    deltas = [float(_unslog(f["delta_slog"])[0]) for f in seen]
    rates = [float(_unslog(f["rate_slog"])[0]) for f in seen]
    resets = [float(f["reset"][0]) for f in seen]
    assert deltas == pytest.approx([100.0, 30.0, 10.0, 50.0], rel=1e-5)  # first: all since start
    assert rates == pytest.approx([100 / 5, 30 / 10, 10 / 25, 50 / 5], rel=1e-5)
    assert resets == [0.0, 0.0, 1.0, 1.0]  # went down; then start time changed
    assert [float(f["new_series"][0]) for f in seen] == [1.0, 0.0, 0.0, 0.0]


def test_non_monotonic_sum_may_go_down() -> None:
    state = SeriesState()
    for value, t in [(10.0, 10), (4.0, 20)]:
        gauge_like = _sum("queue.depth", monotonic=False)
        _point(gauge_like.sum, value, t, 5)
        found = _features(state, gauge_like)
    assert found["reset"][0] == 0.0
    assert _unslog(found["delta_slog"])[0] == pytest.approx(-6.0, rel=1e-5)


def test_delta_sum_and_gauge() -> None:
    state = SeriesState()
    delta = _sum("bytes", temporality=DELTA)
    _point(delta.sum, 40.0, 20, 10)
    gauge = _gauge("temperature")
    _point(gauge.gauge, 20.0, 10)
    _features(state, delta, gauge)
    gauge = _gauge("temperature")
    _point(gauge.gauge, 26.0, 13)
    found = _features(state, delta, gauge)
    assert _unslog(found["delta_slog"]) == pytest.approx([40.0, 6.0], rel=1e-5)
    assert _unslog(found["rate_slog"]) == pytest.approx([4.0, 2.0], rel=1e-5)
    assert found["is_sum"].tolist() == [1.0, 0.0] and found["is_gauge"].tolist() == [0.0, 1.0]


def test_histogram_interval_mean_and_count() -> None:
    state = SeriesState()
    for count, total, t in [(10, 50.0, 10), (30, 250.0, 20)]:
        metric = metrics_pb2.Metric(name="latency")
        metric.histogram.aggregation_temporality = CUMULATIVE  # type: ignore[assignment]
        point = metric.histogram.data_points.add(count=count, sum=total)
        point.time_unix_nano, point.start_time_unix_nano = t * S, 1 * S
        found = _features(state, metric)
    assert _unslog(found["value_slog"])[0] == pytest.approx(200.0 / 20, rel=1e-5)
    assert np.expm1(found["count_log1p"][0]) == pytest.approx(20.0, rel=1e-5)
    assert found["is_distribution"][0] == 1.0


def test_summary_and_exponential_histogram_are_read() -> None:
    summary = metrics_pb2.Metric(name="s")
    point = summary.summary.data_points.add(count=4, sum=10.0, time_unix_nano=2 * S, start_time_unix_nano=S)
    exponential = metrics_pb2.Metric(name="e")
    exponential.exponential_histogram.aggregation_temporality = DELTA  # type: ignore[assignment]
    exponential.exponential_histogram.data_points.add(count=5, sum=20.0, time_unix_nano=2 * S)
    exponential.exponential_histogram.data_points[0].attributes.add(key="k", value={"string_value": "v"})
    batch = MetricBatch.from_payloads([_request([summary, exponential]).SerializeToString()])
    assert batch.value.tolist() == [10.0, 20.0] and batch.count.tolist() == [4.0, 5.0]
    assert batch.temporality.tolist() == [CUMULATIVE, DELTA]
    assert point.count == 4


def test_int_values_and_no_recorded_value() -> None:
    state = SeriesState()
    metric = _gauge("g")
    point = metric.gauge.data_points.add(as_int=7, time_unix_nano=10 * S)
    stale = metric.gauge.data_points.add(time_unix_nano=11 * S, flags=1)
    stale.attributes.add(key="x", value={"string_value": "y"})
    batch = MetricBatch.from_payloads([_request([metric]).SerializeToString()])
    assert batch.value.tolist() == [7.0, 0.0] and batch.no_value.tolist() == [False, True]
    matrix, _ = metric_features(batch, state)
    assert state.series == 1  # the stale point made no series
    assert not matrix[1, :7].any()
    assert point.as_int == 7


def test_points_of_one_series_in_a_batch_go_in_time_order() -> None:
    state = SeriesState()
    counter = _sum("c")
    for value, t in [(30.0, 30), (10.0, 10), (20.0, 20)]:  # out of order on the wire
        _point(counter.sum, value, t, 5)
    found = _features(state, counter)
    assert _unslog(found["delta_slog"]) == pytest.approx([10.0, 10.0, 10.0], rel=1e-5)
    assert found["reset"].tolist() == [0.0, 0.0, 0.0]


def test_zscore_flags_a_spike_after_warmup() -> None:
    state = SeriesState(warmup=5)
    rng = np.random.default_rng(7)
    zs = []
    for step in range(40):
        gauge = _gauge("cpu")
        value = 50.0 + rng.normal(0, 1) if step < 39 else 80.0
        _point(gauge.gauge, value, 10 + step)
        zs.append(float(_features(state, gauge)["zscore"][0]))
    assert zs[:5] == [0.0] * 5
    assert max(abs(z) for z in zs[5:39]) < 4.0
    assert zs[39] == 10.0  # clipped


def test_least_recently_seen_series_are_evicted() -> None:
    state = SeriesState(max_series=10)
    for round_ in range(3):
        gauge = _gauge("g")
        for index in range(8):
            _point(gauge.gauge, 1.0, 10 + round_, i=f"{round_}-{index}")
        _features(state, gauge)
    assert state.series <= 10
    gauge = _gauge("g")
    _point(gauge.gauge, 1.0, 20, i="2-0")  # recent: still known
    _point(gauge.gauge, 1.0, 20, i="0-0")  # old: forgotten, new again
    assert _features(state, gauge)["new_series"].tolist() == [0.0, 1.0]


def test_empty_and_malformed() -> None:
    batch = MetricBatch.from_payloads([])
    matrix, _ = metric_features(batch, SeriesState())
    assert matrix.shape == (0, len(SCHEMA))
    empty_metric = metrics_pb2.Metric(name="nothing")
    assert len(MetricBatch.from_payloads([_request([empty_metric]).SerializeToString()])) == 0
    with pytest.raises(WireError):
        MetricBatch.from_payloads([b"\x0a\x05\x12\x03\x12"])
