import gzip
from pathlib import Path

import numpy as np
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otelai.replay import asd, smd
from otelai.replay.batch import Batch, SourceError
from otelai.replay.server_metrics import EPOCH_UNIX_NANO, read_matrix, server_files
from otelai.signals import Signal


def _write(path: Path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as stream:
        stream.write("\n".join(",".join(f"{v:g}" for v in row) for row in rows) + "\n")


def _points(batches: list[Batch]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(host, metric) -> [(time, value)] over all requests."""
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for batch in batches:
        request = ExportMetricsServiceRequest.FromString(batch.data)
        for resource in request.resource_metrics:
            attributes = {kv.key: kv.value.string_value for kv in resource.resource.attributes}
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    key = (attributes["host.name"], metric.name)
                    out.setdefault(key, []).extend(
                        (p.time_unix_nano, p.as_double) for p in metric.gauge.data_points
                    )
    return out


def test_asd_rows_become_gauges_one_resource_per_server(tmp_path: Path) -> None:
    train = np.arange(12, dtype=np.float64).reshape(4, 3) / 100
    test = np.arange(6, dtype=np.float64).reshape(2, 3) / 10
    for name in ["omi-1", "omi-10", "omi-2"]:
        _write(tmp_path / "train" / f"{name}.txt.gz", train)
        _write(tmp_path / "test" / f"{name}.txt.gz", test)
    _write(tmp_path / "test_label" / "omi-1.txt.gz", np.zeros((2, 1)))
    items = list(asd.batches(tmp_path, max_items=10))
    batches = [b for b in items if isinstance(b, Batch)]
    assert len(batches) == len(items) == 6  # 9 points a step, so one step a request
    assert all(b.signal is Signal.METRICS and b.items == 9 for b in batches)
    assert [b.time_unix_nano for b in batches] == [EPOCH_UNIX_NANO + i * 300 * 10**9 for i in range(6)]
    points = _points(batches)
    assert sorted({host for host, _ in points}) == ["omi-1", "omi-10", "omi-2"]
    assert sorted({name for _, name in points}) == ["asd.metric_00", "asd.metric_01", "asd.metric_02"]
    series = points[("omi-2", "asd.metric_01")]
    assert [v for _, v in series] == [0.01, 0.04, 0.07, 0.10, 0.1, 0.4]  # test follows train
    assert series[-1][0] - series[0][0] == 5 * 300 * 10**9
    request = ExportMetricsServiceRequest.FromString(batches[0].data)
    assert [kv.value.string_value for kv in request.resource_metrics[0].resource.attributes] == [
        "omi-1",
        "asd",
    ]


def test_smd_steps_are_a_minute_and_requests_hold_several_steps(tmp_path: Path) -> None:
    _write(tmp_path / "train" / "machine-1-1.txt.gz", np.ones((5, 2)))
    batches = [b for b in smd.batches(tmp_path, max_items=4) if isinstance(b, Batch)]
    assert [b.items for b in batches] == [4, 4, 2]
    assert batches[1].time_unix_nano - batches[0].time_unix_nano == 2 * 60 * 10**9
    assert set(_points(batches)) == {("machine-1-1", "smd.metric_00"), ("machine-1-1", "smd.metric_01")}


def test_unreadable_file_is_reported_and_the_rest_replayed(tmp_path: Path) -> None:
    _write(tmp_path / "train" / "machine-1-1.txt.gz", np.ones((2, 2)))
    (tmp_path / "train" / "machine-1-2.txt.gz").write_bytes(b"not gzip")
    items = list(smd.batches(tmp_path, max_items=100))
    errors = [i for i in items if isinstance(i, SourceError)]
    assert [e.source for e in errors] == ["train/machine-1-2"]
    assert sum(i.items for i in items if isinstance(i, Batch)) == 4


def test_read_matrix_and_natural_order(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "omi-2.txt.gz", np.ones((2, 2)))
    _write(tmp_path / "a" / "omi-10.txt.gz", np.ones((3, 2)))
    files = server_files(tmp_path / "a")
    assert list(files) == ["omi-2", "omi-10"]
    assert read_matrix(files["omi-10"]).shape == (3, 2)
    assert server_files(tmp_path / "missing") == {}
