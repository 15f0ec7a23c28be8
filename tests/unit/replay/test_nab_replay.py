"""NAB series as OTLP gauge points: one resource and one gauge per series, one point a row."""

from __future__ import annotations

from datetime import UTC
from pathlib import Path

import numpy as np
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otelai.features.metrics import MetricBatch
from otelai.replay import dataset_batches
from otelai.replay.batch import Batch, SourceError
from otelai.replay.nab import SERIES_ATTRIBUTE, batches, read_series, read_windows, series_keys
from otelai.signals import Signal

from .nab_layout import START, write_nab


def test_series_become_gauge_points_with_their_times(tmp_path: Path) -> None:
    write_nab(tmp_path, rows=300)
    out = list(batches(tmp_path, max_items=128))
    assert all(isinstance(b, Batch) and b.signal is Signal.METRICS for b in out)
    assert [b.items for b in out if isinstance(b, Batch)] == [128, 128, 44] * 4
    first = out[0]
    assert isinstance(first, Batch)
    request = ExportMetricsServiceRequest.FromString(first.data)
    (resource,) = request.resource_metrics
    attributes = {a.key: a.value.string_value for a in resource.resource.attributes}
    assert attributes == {"service.name": "artificialTest", SERIES_ATTRIBUTE: "artificialTest/series_0.csv"}
    (metric,) = resource.scope_metrics[0].metrics
    assert metric.name == "series_0" and metric.WhichOneof("data") == "gauge"
    series = read_series(tmp_path, "artificialTest/series_0.csv")
    points = metric.gauge.data_points
    assert [p.as_double for p in points] == pytest.approx(series.value[:128].tolist())
    assert points[0].time_unix_nano == int(START.replace(tzinfo=UTC).timestamp()) * 10**9  # rows are UTC
    assert first.time_unix_nano == points[0].time_unix_nano == int(series.time_ns[0])
    assert points[1].time_unix_nano - points[0].time_unix_nano == 300 * 10**9


def test_each_series_is_one_metric_series_for_the_features(tmp_path: Path) -> None:
    write_nab(tmp_path, rows=50)
    data = [b.data for b in batches(tmp_path, max_items=512) if isinstance(b, Batch)]
    points = MetricBatch.from_payloads(data)
    assert len(points) == 200 and np.unique(points.series).size == 4


def test_keys_windows_and_registry(tmp_path: Path) -> None:
    windows = write_nab(tmp_path)
    assert series_keys(tmp_path) == sorted(windows)
    assert series_keys(tmp_path / "data") == sorted(windows)
    assert read_windows(tmp_path)["realTest/series_0.csv"] == [
        tuple(w) for w in windows["realTest/series_0.csv"]
    ]
    assert sum(b.items for b in dataset_batches("nab", tmp_path) if isinstance(b, Batch)) == 4 * 400


def test_an_unreadable_series_is_reported_and_skipped(tmp_path: Path) -> None:
    write_nab(tmp_path, rows=20)
    (tmp_path / "data" / "realTest" / "broken.csv").write_text("timestamp,value\n2015-01-01 00:00:00,abc\n")
    out = list(batches(tmp_path))
    errors = [item for item in out if isinstance(item, SourceError)]
    assert [e.source for e in errors] == ["realTest/broken.csv"]
    assert sum(b.items for b in out if isinstance(b, Batch)) == 80


def test_missing_data_fails_before_sending(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        list(batches(tmp_path / "absent"))
