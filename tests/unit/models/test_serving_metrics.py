"""The bundle loader's metrics section: per-point models against SCHEMA, or per-resource
multivariate models (``*-server-metrics``) checked for usable columns and detectors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from otelai.config import ModelBundle
from otelai.models.bundle import BundleError, DetectorSpec, Manifest, SchemaSpec, SignalModel, save_bundle
from otelai.models.serving import is_server_metrics, load_configured_bundle

COLUMNS = ["asd.metric_00", "asd.metric_01", "asd.metric_02"]


def _bundle(
    tmp_path: Path, *, name: str = "asd-server-metrics", columns: list[str] | None = None, **params: Any
) -> Path:
    (tmp_path / "multivariate_ae.onnx").write_bytes(b"not read by the loader")
    columns = COLUMNS if columns is None else columns
    spec = DetectorSpec(
        name="*",
        kind=params.pop("kind", "multivariate_ae"),
        file="multivariate_ae.onnx",
        params={
            "resource": "*",
            "window": 4,
            "n_features": len(columns),
            "weights": [1.0] * len(columns),
            **params,
        },
    )
    model = SignalModel(
        feature_schema=SchemaSpec(name=name, version="asd/3/1", columns=columns), detectors=[spec]
    )
    save_bundle(tmp_path, Manifest(name="t", version="1", signals={"metrics": model}))
    return tmp_path


def _load(path: Path) -> Any:
    return load_configured_bundle(ModelBundle(path=str(path)))


def test_a_server_metrics_bundle_loads(tmp_path: Path) -> None:
    bundle = _load(_bundle(tmp_path))
    assert is_server_metrics(bundle.signal("metrics"))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"columns": ["a", "b", "a"]}, "names metrics more than once: a"),
        ({"columns": []}, "empty column list"),
        ({"n_features": 5}, "has 3 columns but detector '*' reads params.n_features=5"),
        ({"kind": "novelty"}, "is of kind 'novelty'; server metrics are served by 'multivariate_ae'"),
        ({"name": "asd-metrics"}, "feature schema 'asd-metrics', which this otelai does not compute"),
    ],
)
def test_a_bad_metrics_section_is_refused(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(BundleError, match="the metrics") as caught:
        _load(_bundle(tmp_path, **kwargs))
    assert message in str(caught.value)
