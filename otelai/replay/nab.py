"""Numenta Anomaly Benchmark series turned into OTLP gauge points (one series, one resource).

Lavin & Ahmad, "Evaluating Real-time Anomaly Detection Algorithms -- the Numenta Anomaly
Benchmark" (IEEE ICMLA 2015). The corpus (numenta/NAB) is ``data/<group>/<series>.csv``
(``timestamp,value``, timestamps ``YYYY-MM-DD HH:MM:SS``, taken as UTC) with the labelled
anomaly windows in ``labels/combined_windows.json``, keyed by ``<group>/<series>.csv``.

Each series becomes one ``ResourceMetrics`` (``service.name`` = its group, ``nab.series`` = its
key) holding one gauge named after the series, one ``NumberDataPoint`` a row at the row's time.
Series are replayed one after the other, each in time order.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otelai.replay.batch import Batch, SourceError
from otelai.signals import Signal

log = logging.getLogger(__name__)

DEFAULT_MAX_POINTS = 512
DATA = "data"
WINDOWS = Path("labels") / "combined_windows.json"
SCOPE = "otelai.replay.nab"
SERIES_ATTRIBUTE = "nab.series"


@dataclass(frozen=True, slots=True)
class Series:
    """One NAB series.

    Attributes
    ----------
    key
        ``<group>/<name>.csv``, its key in the label files.
    time
        Row timestamps (``datetime64[ns]``, UTC), ascending.
    value
        Row values.
    """

    key: str
    time: npt.NDArray[np.datetime64]
    value: npt.NDArray[np.float64]

    @property
    def group(self) -> str:
        return self.key.partition("/")[0]

    @property
    def name(self) -> str:
        return Path(self.key).stem

    @property
    def time_ns(self) -> npt.NDArray[np.int64]:
        return self.time.astype("datetime64[ns]").astype(np.int64)


def data_root(path: Path) -> Path:
    """The folder holding the group folders: ``path/data`` when there is one, else ``path``."""
    path = Path(path)
    return path / DATA if (path / DATA).is_dir() else path


def series_keys(path: Path) -> list[str]:
    """Keys of the series under ``path`` (the NAB root or its ``data`` folder), sorted."""
    root = data_root(path)
    if not root.is_dir():
        raise FileNotFoundError(f"nab data not found at {path}")
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.csv"))


def read_series(path: Path, key: str) -> Series:
    """One series by key; ValueError naming the file when it cannot be read."""
    file = data_root(path) / key
    try:
        with file.open(newline="", encoding="utf-8") as stream:
            rows = list(csv.reader(stream))
        if not rows or [cell.strip() for cell in rows[0][:2]] != ["timestamp", "value"]:
            raise ValueError("expected a 'timestamp,value' header")
        body = rows[1:]
        time = np.array([row[0].strip().replace(" ", "T") for row in body], dtype="datetime64[ns]")
        value = np.array([float(row[1]) for row in body], dtype=np.float64)
    except (OSError, ValueError, IndexError) as exc:
        raise ValueError(f"nab series {key} ({file}): {exc}") from exc
    if time.size > 1 and bool(np.any(np.diff(time.astype(np.int64)) < 0)):
        order = np.argsort(time, kind="stable")
        time, value = time[order], value[order]
    return Series(key, time, value)


def read_windows(path: Path) -> dict[str, list[tuple[str, str]]]:
    """Labelled windows per series key (first and last timestamp); empty if there is no label file."""
    file = Path(path) / WINDOWS
    if not file.is_file():
        return {}
    raw = json.loads(file.read_text(encoding="utf-8"))
    return {key: [(str(first), str(last)) for first, last in windows] for key, windows in raw.items()}


def series_request(series: Series, start: int = 0, stop: int | None = None) -> ExportMetricsServiceRequest:
    """Rows ``start:stop`` of ``series`` as one request: its resource, one gauge, one point a row."""
    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    for key, text in (("service.name", series.group), (SERIES_ATTRIBUTE, series.key)):
        attribute = resource.resource.attributes.add(key=key)
        attribute.value.string_value = text
    scope = resource.scope_metrics.add()
    scope.scope.name = SCOPE
    metric = scope.metrics.add(name=series.name, unit="1")
    points = metric.gauge.data_points
    times = series.time_ns[start:stop].tolist()
    for time_ns, value in zip(times, series.value[start:stop].tolist(), strict=True):
        points.add(time_unix_nano=time_ns, as_double=value)
    return request


def series_batches(series: Series, max_points: int = DEFAULT_MAX_POINTS) -> list[Batch]:
    """A series as requests of at most ``max_points`` points, in time order."""
    if max_points < 1:
        raise ValueError(f"max_points must be at least 1, got {max_points}")
    time_ns = series.time_ns
    out = []
    for start in range(0, len(series.value), max_points):
        request = series_request(series, start, start + max_points)
        count = min(max_points, len(series.value) - start)
        out.append(Batch(Signal.METRICS, request.SerializeToString(), count, int(time_ns[start]), series.key))
    return out


def batches(path: Path, *, max_items: int = DEFAULT_MAX_POINTS) -> Iterator[Batch | SourceError]:
    """Every series under ``path`` as requests; a series that cannot be read is reported, not raised."""
    for key in series_keys(path):
        try:
            series = read_series(path, key)
        except ValueError as exc:
            log.error("%s; skipping it", exc)
            yield SourceError(key, str(exc))
            continue
        yield from series_batches(series, max_items)
