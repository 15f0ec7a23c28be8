"""Server metric data sets (ASD, SMD) read from their files and turned into OTLP gauges.

Both data sets keep one gzip-compressed text file per server: rows are time steps,
comma-separated floats, one column per metric, with no header and no timestamps.

- ASD, the Application Server Dataset of Li et al., "Multivariate Time Series Anomaly Detection
  and Interpretation using Hierarchical Inter-Metric and Temporal Embedding" (InterFusion,
  KDD 2021): ``train/omi-N.txt.gz`` (normal), ``test/omi-N.txt.gz``, ``test_label/omi-N.txt.gz``
  (0/1 per row); 19 metrics at 5-minute steps.
- SMD, the Server Machine Dataset of Su et al., "Robust Anomaly Detection for Multivariate Time
  Series through Stochastic Recurrent Neural Network" (OmniAnomaly, KDD 2019):
  ``train/machine-X-Y.txt.gz`` only; 38 metrics at 1-minute steps.

For replay, every column becomes a gauge named ``<dataset>.metric_NN`` (the data sets do not
name their metrics), every server a resource (``host.name`` = the file's stem), and row ``i`` of
a server the timestamp ``EPOCH + i * step``; a server's test rows follow its training rows.
Each request carries a few consecutive steps of every server, so servers advance together as
a Collector batching several hosts would send them.
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otelai.replay.batch import Batch, SourceError
from otelai.signals import Signal

log = logging.getLogger(__name__)

F64 = npt.NDArray[np.float64]

# 2024-01-01T00:00:00Z: a fixed epoch, so replays of the same files are identical.
EPOCH_UNIX_NANO = 1_704_067_200 * 1_000_000_000
_SECOND = 1_000_000_000
_FILE = re.compile(r"^(?P<name>.+)\.txt(?:\.gz)?$")


@dataclass(frozen=True, slots=True)
class Layout:
    """Where a server metric data set keeps its files and how far apart its rows are."""

    dataset: str
    step_seconds: int
    splits: tuple[str, ...]  # replayed in this order, each server's rows continuing in time


ASD = Layout("asd", 300, ("train", "test"))
SMD = Layout("smd", 60, ("train",))


def metric_names(dataset: str, width: int) -> tuple[str, ...]:
    """The gauge (and feature column) name of each column: ``asd.metric_00`` ..."""
    return tuple(f"{dataset}.metric_{i:02d}" for i in range(width))


def _natural_key(name: str) -> list[tuple[int, int | str]]:
    # omi-2 before omi-10
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]


def server_files(folder: Path) -> dict[str, Path]:
    """Server name (the file's stem) -> file, in natural order; empty if ``folder`` is missing."""
    if not folder.is_dir():
        return {}
    found: dict[str, Path] = {}
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        # a server kept both compressed and plain: the compressed one is the original
        if match and entry.is_file() and (match["name"] not in found or entry.name.endswith(".gz")):
            found[match["name"]] = entry
    return {name: found[name] for name in sorted(found, key=_natural_key)}


def read_matrix(path: Path) -> F64:
    """A server file as a ``(steps, metrics)`` float64 matrix (a label file gives one column).

    Raises
    ------
    ValueError
        When the file is empty, ragged or holds something other than numbers; names the file.
    """
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="ascii") as stream:
            rows = [line.split(",") for line in stream if line.strip()]
        if not rows:
            raise ValueError("no rows")
        widths = {len(row) for row in rows}
        if len(widths) != 1:
            raise ValueError(f"rows of different widths {sorted(widths)}")
        return np.asarray(rows, dtype=np.float64)
    except (OSError, EOFError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _fill_request(
    request: ExportMetricsServiceRequest,
    server: str,
    dataset: str,
    rows: F64,
    times: Sequence[int],
    names: Sequence[str],
) -> None:
    resource_metrics = request.resource_metrics.add()
    attributes = resource_metrics.resource.attributes
    attributes.add(key="host.name").value.string_value = server
    attributes.add(key="service.name").value.string_value = dataset
    scope_metrics = resource_metrics.scope_metrics.add()
    scope_metrics.scope.name = "otelai.replay"
    for column, name in enumerate(names):
        metric = scope_metrics.metrics.add(name=name)
        points = metric.gauge.data_points
        for time, value in zip(times, rows[:, column].tolist(), strict=True):
            points.add(time_unix_nano=time, as_double=value)


def _load(layout: Layout, root: Path) -> tuple[dict[str, F64], list[SourceError]]:
    """Every server's rows over the layout's splits, concatenated in time order."""
    servers: dict[str, list[F64]] = {}
    errors: list[SourceError] = []
    for split in layout.splits:
        for name, path in server_files(root / split).items():
            try:
                matrix = read_matrix(path)
            except ValueError as exc:
                log.error("%s: %s; skipping it", layout.dataset, exc)
                errors.append(SourceError(f"{split}/{name}", str(exc)))
                continue
            servers.setdefault(name, []).append(matrix)
    loaded: dict[str, F64] = {}
    for name, parts in servers.items():
        if len({part.shape[1] for part in parts}) != 1:
            errors.append(SourceError(name, "splits have different numbers of metrics"))
            continue
        loaded[name] = np.concatenate(parts)
    return loaded, errors


def layout_batches(layout: Layout, path: Path, *, max_items: int) -> Iterator[Batch | SourceError]:
    """Requests of at most ``max_items`` points (at least one step of every server each).

    Parameters
    ----------
    layout
        :data:`ASD` or :data:`SMD`.
    path
        The data set's root folder (holding ``train/`` ...).
    max_items
        Data points per request at most; a request holds at least one step of every server.
    """
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{layout.dataset} data not found at {path}")
    servers, errors = _load(layout, path)
    yield from errors
    if not servers:
        return
    points_per_step = sum(matrix.shape[1] for matrix in servers.values())
    steps_per_request = max(1, max_items // points_per_step)
    longest = max(len(matrix) for matrix in servers.values())
    step_nanos = layout.step_seconds * _SECOND
    for first in range(0, longest, steps_per_request):
        last = min(first + steps_per_request, longest)
        times = [EPOCH_UNIX_NANO + i * step_nanos for i in range(first, last)]
        request = ExportMetricsServiceRequest()
        items = 0
        for server, matrix in servers.items():
            rows = matrix[first:last]
            if not len(rows):
                continue
            names = metric_names(layout.dataset, matrix.shape[1])
            _fill_request(request, server, layout.dataset, rows, times[: len(rows)], names)
            items += rows.size
        yield Batch(Signal.METRICS, request.SerializeToString(), items, times[0], f"step {first}")


def asd_batches(path: Path, *, max_items: int) -> Iterator[Batch | SourceError]:
    """ASD (``train/`` then ``test/`` of every server) as OTLP gauge requests."""
    return layout_batches(ASD, path, max_items=max_items)


def smd_batches(path: Path, *, max_items: int) -> Iterator[Batch | SourceError]:
    """SMD (``train/`` of every machine) as OTLP gauge requests."""
    return layout_batches(SMD, path, max_items=max_items)
