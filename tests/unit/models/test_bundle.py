"""The model bundle: save/load round trip and every way a bundle is refused."""

from __future__ import annotations

import json
import re
import stat
from pathlib import Path

import pytest

from otelai.features.schema import FeatureSchema
from otelai.models.bundle import (
    MANIFEST,
    Bundle,
    BundleError,
    Calibration,
    DetectorSpec,
    Manifest,
    SchemaSpec,
    SignalModel,
    Thresholds,
    Training,
    load_bundle,
    save_bundle,
)

SCHEMA = FeatureSchema(names=("duration", "status", "fanout"), version="3")


def _manifest(detector_file: str | None = "model.onnx") -> Manifest:
    signal = SignalModel(
        feature_schema=SchemaSpec.of("spans", SCHEMA),
        detectors=[
            DetectorSpec(
                name="ae",
                kind="autoencoder",
                file=detector_file,
                params={"hidden": [8, 4]},
                calibration=Calibration(quantiles=[0.0, 0.5, 1.0], samples=100),
            )
        ],
        calibration=Calibration(quantiles=[0.1, 0.2], samples=50),
        thresholds=Thresholds(anomaly=0.99, critical=0.999),
    )
    return Manifest(
        name="test",
        version="1.0.0",
        signals={"traces": signal},
        training=[Training(dataset="otel-demo", items=10, parts=["w1"], seed=3)],
        metrics={"otel-demo": {"roc_auc": 0.9}},
    )


def _saved(tmp_path: Path) -> Bundle:
    root = tmp_path / "bundle"
    root.mkdir()
    (root / "model.onnx").write_bytes(b"\x08\x0a graph bytes")
    (root / "vocab.json").write_text('{"a": 1}')
    return save_bundle(root, _manifest())


def test_round_trip(tmp_path: Path) -> None:
    bundle = _saved(tmp_path)
    again = load_bundle(bundle.path, {"traces": SCHEMA})
    assert again.manifest == bundle.manifest
    assert set(again.manifest.files) == {"model.onnx", "vocab.json"}
    assert again.file("model.onnx").read_bytes() == b"\x08\x0a graph bytes"
    traces = again.signal("traces")
    assert traces is not None
    assert traces.detectors[0].params == {"hidden": [8, 4]}
    assert traces.thresholds.critical == 0.999
    assert again.signal("logs") is None
    assert again.manifest.training[0].parts == ["w1"]


def test_manifest_is_readable_by_others(tmp_path: Path) -> None:
    bundle = _saved(tmp_path)
    mode = (bundle.path / MANIFEST).stat().st_mode
    assert mode & stat.S_IRGRP and mode & stat.S_IROTH
    assert not [p for p in bundle.path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_unknown_file_is_refused(tmp_path: Path) -> None:
    bundle = _saved(tmp_path)
    with pytest.raises(BundleError, match=re.escape("no file 'other.onnx'")):
        bundle.file("other.onnx")


def test_tampered_file_is_refused(tmp_path: Path) -> None:
    bundle = _saved(tmp_path)
    (bundle.path / "vocab.json").write_text('{"a": 2}')
    with pytest.raises(BundleError, match=re.escape("'vocab.json' does not match its SHA-256")):
        load_bundle(bundle.path)


def test_missing_file_is_refused(tmp_path: Path) -> None:
    bundle = _saved(tmp_path)
    (bundle.path / "model.onnx").unlink()
    with pytest.raises(BundleError, match=re.escape("'model.onnx' named in the manifest is missing")):
        load_bundle(bundle.path)


def _edit(bundle: Bundle, change: dict[str, object]) -> None:
    path = bundle.path / MANIFEST
    raw = json.loads(path.read_text())
    raw.update(change)
    path.write_text(json.dumps(raw))


def test_file_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    bundle = _saved(tmp_path)
    (tmp_path / "outside.onnx").write_bytes(b"x")
    files = dict(bundle.manifest.files, **{"../outside.onnx": "0" * 64})
    _edit(bundle, {"files": files})
    with pytest.raises(BundleError, match=re.escape("missing")):
        load_bundle(bundle.path)


def test_detector_file_without_digest_is_refused(tmp_path: Path) -> None:
    bundle = _saved(tmp_path)
    _edit(bundle, {"files": {"vocab.json": bundle.manifest.files["vocab.json"]}})
    with pytest.raises(BundleError, match=re.escape("detector file 'model.onnx' has no digest")):
        load_bundle(bundle.path)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=re.escape("no manifest.json")):
        load_bundle(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match=re.escape("not readable JSON")):
        load_bundle(tmp_path)
    (tmp_path / MANIFEST).write_text("[]")
    with pytest.raises(BundleError, match=re.escape("manifest.json: top level:")):
        load_bundle(tmp_path)


def test_unknown_format_is_refused(tmp_path: Path) -> None:
    bundle = _saved(tmp_path)
    _edit(bundle, {"format": "otelai-bundle/2"})
    with pytest.raises(BundleError, match=r"format 'otelai-bundle/2', this otelai reads 'otelai-bundle/1'"):
        load_bundle(bundle.path)


def test_invalid_manifest_names_the_key(tmp_path: Path) -> None:
    bundle = _saved(tmp_path)
    _edit(bundle, {"surprise": 1})
    with pytest.raises(BundleError, match=re.escape("manifest.json: surprise:")):
        load_bundle(bundle.path)


def test_schema_mismatch_names_versions_and_columns(tmp_path: Path) -> None:
    bundle = _saved(tmp_path)
    here = FeatureSchema(names=("duration", "status", "depth"), version="4")
    with pytest.raises(BundleError) as info:
        load_bundle(bundle.path, {"traces": here})
    message = str(info.value)
    assert "traces models" in message
    assert "version '3'" in message and "version '4'" in message
    assert "not in the bundle: depth" in message
    assert "unknown here: fanout" in message
    assert "otelai train" in message


def test_schema_mismatch_in_order_or_version_only(tmp_path: Path) -> None:
    bundle = _saved(tmp_path)
    reordered = FeatureSchema(names=("status", "duration", "fanout"), version="3")
    with pytest.raises(BundleError, match=re.escape("the same columns in another order")):
        bundle.check_schema("traces", reordered)
    bumped = FeatureSchema(names=SCHEMA.names, version="4")
    with pytest.raises(BundleError, match=r"version '4' \(the same columns\)"):
        bundle.check_schema("traces", bumped)


def test_signal_without_models_is_not_checked(tmp_path: Path) -> None:
    bundle = _saved(tmp_path)
    bundle.check_schema("logs", FeatureSchema(names=("x",), version="9"))


def test_resave_lists_only_present_files(tmp_path: Path) -> None:
    bundle = _saved(tmp_path)
    (bundle.path / "vocab.json").unlink()
    again = save_bundle(bundle.path, bundle.manifest)
    assert set(again.manifest.files) == {"model.onnx"}
