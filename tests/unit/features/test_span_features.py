"""span_features: shape, dtype, and what the service-agnostic columns say about known spans."""

from __future__ import annotations

import numpy as np
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelai.features.interner import Interner
from otelai.features.span_batch import SpanBatch
from otelai.features.spans import SPAN_SCHEMA, SpanBaselines, span_features

from .span_requests import make_request, make_span

ERROR = Status.STATUS_CODE_ERROR


def _column(features: np.ndarray, name: str) -> np.ndarray:
    return features[:, SPAN_SCHEMA.names.index(name)]


def _warm_batch(rng: np.random.Generator, trace: int) -> SpanBatch:
    """Normal traffic: 'GET /fast' (about 1 ms, never fails) and 'GET /flaky' (fails half the time)."""
    spans = []
    for i in range(40):
        duration = int(rng.lognormal(np.log(1e6), 0.1))
        spans.append(make_span(trace, 2 * i + 1, name="GET /fast", duration=duration))
        status = ERROR if i % 2 else Status.STATUS_CODE_UNSET
        spans.append(make_span(trace, 2 * i + 2, name="GET /flaky", duration=duration, status=status))
    return SpanBatch.from_requests([make_request({"shop": spans})], INTERNER)


INTERNER = Interner()


def test_shape_dtype_and_finite() -> None:
    baselines = SpanBaselines.create()
    spans = [
        make_span(1, 1, kind=Span.SPAN_KIND_PRODUCER, attributes={"http.response.status_code": 404}),
        make_span(1, 2, 1, kind=Span.SPAN_KIND_CLIENT, duration=0, attributes={"rpc.grpc.status_code": 2}),
        make_span(1, 3, 9, events=("exception",), links=3, attributes={"db.system.name": "mysql"}),
    ]
    batch = SpanBatch.from_requests([make_request({"a": spans})], Interner())
    features, schema = span_features(batch, baselines, now=0.0)
    assert schema == SPAN_SCHEMA and schema.width == len(set(schema.names))
    assert features.shape == (3, schema.width) and features.dtype == np.float32
    assert np.isfinite(features).all()
    assert _column(features, "kind_messaging").tolist() == [1, 0, 0]
    assert _column(features, "kind_client").tolist() == [0, 1, 0]
    assert _column(features, "http_4xx").tolist() == [1, 0, 0]
    assert _column(features, "grpc_error").tolist() == [0, 1, 0]
    assert _column(features, "has_db").tolist() == [0, 0, 1]
    assert _column(features, "has_exception").tolist() == [0, 0, 1]
    assert _column(features, "log_links")[2] == np.float32(np.log1p(3))
    assert _column(features, "is_root").tolist() == [1, 0, 0]
    assert _column(features, "log_depth")[1] == np.float32(np.log1p(1))
    assert _column(features, "depth_unknown").tolist() == [0, 0, 1]
    assert _column(features, "log_children")[0] == np.float32(np.log1p(1))
    assert _column(features, "new_operation").tolist() == [1, 1, 1]


def test_empty_batch() -> None:
    batch = SpanBatch.from_payloads([], Interner())
    features, schema = span_features(batch, SpanBaselines.create(), now=0.0)
    assert features.shape == (0, schema.width)


def test_latency_and_error_surprise_against_each_operation() -> None:
    rng = np.random.default_rng(7)
    baselines = SpanBaselines.create(half_life=200, min_count=20)
    for trace in range(1, 6):
        features, _ = span_features(_warm_batch(rng, trace), baselines, now=float(trace))
    assert _column(features, "new_operation").max() == 0
    assert abs(float(np.mean(_column(features, "latency_z")))) < 1.0
    slow_error = make_span(99, 1, name="GET /fast", duration=50_000_000, status=ERROR)
    flaky_error = make_span(99, 2, name="GET /flaky", duration=1_000_000, status=ERROR)
    unseen = make_span(99, 3, name="GET /new", duration=1_000_000)
    batch = SpanBatch.from_requests([make_request({"shop": [slow_error, flaky_error, unseen]})], INTERNER)
    features, _ = span_features(batch, baselines, now=10.0)
    latency_z = _column(features, "latency_z")
    surprise = _column(features, "error_surprise")
    assert latency_z[0] > 10 and abs(latency_z[1]) < 3
    assert surprise[0] > 3.0  # an error where there never was one
    assert 0.0 < surprise[1] < 1.5  # an error where half the spans fail
    assert surprise[2] == 0.0
    assert _column(features, "new_operation").tolist() == [0, 0, 1]


def test_update_false_leaves_the_baselines_alone() -> None:
    baselines = SpanBaselines.create()
    batch = _warm_batch(np.random.default_rng(8), 1)
    span_features(batch, baselines, update=False, now=0.0)
    assert len(baselines.latency) == 0
    span_features(batch, baselines, now=0.0)
    assert len(baselines.latency) == 2


def test_baseline_snapshots_round_trip() -> None:
    rng = np.random.default_rng(9)
    baselines = SpanBaselines.create()
    span_features(_warm_batch(rng, 1), baselines, now=0.0)
    copy = SpanBaselines.create()
    copy.restore(baselines.snapshot())
    probe = _warm_batch(rng, 2)
    first, _ = span_features(probe, baselines, update=False, now=1.0)
    second, _ = span_features(probe, copy, update=False, now=1.0)
    np.testing.assert_array_equal(first, second)
