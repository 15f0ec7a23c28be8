from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from otelai.features.spans import SPAN_SCHEMA
from otelai.models.bundle import load_bundle

from ..replay.store_docs import RESOURCE, SCOPE, write_window

pytest.importorskip("torch")
pytest.importorskip("sklearn")
pytest.importorskip("skl2onnx")

from otelai.models.tasks.otel_demo import OtelDemoTask, load_windows, split_windows
from otelai.models.training.autoencoder import AutoencoderSettings
from otelai.models.training.isolation_forest import ForestSettings

BASE_NS = 1_770_391_048_000_000_000
OPERATIONS = (  # service, span name, kind, median duration (ms)
    ("load-generator", "GET", "Client", 40.0),
    ("frontend", "GET /api/products", "Server", 30.0),
    ("product-catalog", "oteldemo.ProductCatalogService/GetProduct", "Server", 2.0),
)


def _time(ns: int) -> str:
    seconds, nanos = divmod(ns, 1_000_000_000)
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def _trace(rng: np.random.Generator, start: int, *, fault: bool) -> list[dict[str, Any]]:
    trace_id = rng.bytes(16).hex()
    parent = ""
    hits = []
    for depth, (service, name, kind, median) in enumerate(OPERATIONS):
        span_id = rng.bytes(8).hex()
        slow = fault and depth == 2
        millis = median * float(np.exp(0.2 * rng.standard_normal())) * (80.0 if slow else 1.0)
        end = start + int(millis * 1e6)
        source = {
            "traceId": trace_id,
            "spanId": span_id,
            "parentSpanId": parent,
            "name": name,
            "kind": kind,
            "startTime": _time(start),
            "endTime": _time(end),
            "status": {"code": "Error" if slow else "Unset", "message": ""},
            "attributes": {"rpc.grpc.status_code": 13 if slow else 0},
            "resource": {**RESOURCE, "service.name": service},
            "instrumentationScope": SCOPE,
            "events": [{"name": "exception", "@timestamp": _time(start)}] if slow else [],
            "links": [],
        }
        hits.append({"_source": source})
        parent = span_id
        start += 100_000
    return hits


def _window(rng: np.random.Generator, start: int, traces: int, *, faulty: int = 0) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = []
    for i in range(traces):
        hits += _trace(rng, start + i * 50_000_000, fault=i < faulty)
    return hits


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("otel-demo")
    rng = np.random.default_rng(0)
    first: list[dict[str, Any]] = []
    for i in range(1, 7):
        hits = _window(rng, BASE_NS + i * 10**11, 30)
        first = first or hits
        write_window(root / "train", f"train0{i}_baseline", hits, {"flag": "baseline", "variant": "off"})
    # a byte-for-byte copy of a training window, as in the real data: never a test window
    write_window(root / "eval", "eval01_baseline", first, {"flag": "baseline", "variant": "off"})
    for i in range(2, 14):
        hits = _window(rng, BASE_NS + i * 10**12, 30, faulty=10)
        write_window(
            root / "eval",
            f"eval{i:02d}_productCatalogFailure_on",
            hits,
            {"flag": "productCatalogFailure", "variant": "on"},
        )
    write_window(root / "eval", "eval14_adFailure_on", None, {"flag": "adFailure"})  # no traces: skipped
    return root


def _task() -> OtelDemoTask:
    return OtelDemoTask(
        autoencoder=AutoencoderSettings(hidden=8, bottleneck=3, epochs=8),
        forest=ForestSettings(n_estimators=10),
        threshold_grid=(0.99, 0.999),
    )


def test_windows_are_deduplicated_and_split_without_overlap(dataset: Path) -> None:
    windows = load_windows(dataset)
    names = [w.name for w in windows]
    assert "eval01_baseline" not in names  # the copy of train01
    assert "eval14_adFailure_on" not in names
    assert len(windows) == 6 + 12
    split = split_windows(windows, seed=0)
    normal = split.fit + split.calibrate + split.test_normal
    assert sorted(normal) == sorted(w.name for w in windows if w.label == 0)
    assert len(set(normal)) == len(normal) and split.test_normal and split.calibrate
    assert not set(split.tune_fault) & set(split.test_fault)
    assert split == split_windows(windows, seed=0)


def test_train_bundle_evaluate_through_the_service_path(dataset: Path, tmp_path: Path) -> None:
    task = _task()
    bundle = task.train(dataset, tmp_path / "bundle", seed=0, progress=False)
    loaded = load_bundle(tmp_path / "bundle", {"traces": SPAN_SCHEMA})
    model = loaded.manifest.signals["traces"]
    assert [d.kind for d in model.detectors] == ["autoencoder", "isolation_forest"]
    assert all(len(d.calibration.quantiles) > 100 for d in model.detectors)
    assert model.thresholds.anomaly in (0.99, 0.999)
    assert sum(p.stat().st_size for p in (tmp_path / "bundle").iterdir()) < 2_000_000
    summary = loaded.manifest.training[0].summary
    evaluation = task.evaluate(loaded, dataset, progress=False)
    assert evaluation.unit == "window"
    tested = {row["window"] for row in evaluation.rows}
    assert not tested & set(loaded.manifest.training[0].parts)
    assert not tested & set(summary["tune_fault_windows"])
    assert {row["window"] for row in evaluation.rows if row["label"] == 0} == set(
        summary["test_normal_windows"]
    )
    # a third of each fault window's traces is slow and failing in the catalog: all tagged
    faults = [row["score"] for row in evaluation.rows if row["label"] == 1]
    normals = [row["score"] for row in evaluation.rows if row["label"] == 0]
    assert min(faults) > max(normals)
    assert evaluation.metrics["roc_auc"] == 1.0
    assert evaluation.references["rule_error_span_roc_auc"] == 1.0
    assert set(evaluation.references) >= {"rule_root_slower_than_p99_roc_auc", "rrcf_roc_auc"}
    assert bundle.manifest.version == loaded.manifest.version
