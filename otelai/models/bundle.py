"""The model bundle: a directory with ONNX models and a manifest the service validates.

Layout::

    BUNDLE/
      manifest.json      # Manifest below
      *.onnx             # models served through an inference backend (otelai.backends)
      *.npz / *.json     # state that is not a graph (vocabularies, baselines, ECDF quantiles)

Every file the manifest names carries its SHA-256, checked at load time, so a truncated or
swapped file is refused instead of scoring garbage (signing builds on these digests). Each
scored signal has its own section: the feature schema the models were trained on (name,
version, column names), the detectors and their files, the calibration of the combined score
on held-out normal data, the thresholds, and what the bundle was trained on and how well it
scored. A bundle whose feature schema differs from the one this otelai computes is refused
with a message that names the signal, both versions and the columns that differ.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from otelai import __version__
from otelai.features.schema import FeatureSchema

FORMAT = "otelai-bundle/1"
MANIFEST = "manifest.json"
SignalName = Literal["traces", "logs", "metrics"]


class BundleError(Exception):
    """A bundle that cannot be used: missing, malformed, tampered with or built for other features."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SchemaSpec(_Model):
    """The feature columns a signal's models read, in order."""

    name: str
    version: str
    columns: list[str]

    @classmethod
    def of(cls, name: str, schema: FeatureSchema) -> SchemaSpec:
        return cls(name=name, version=schema.version, columns=list(schema.names))


class Calibration(_Model):
    """Raw scores on held-out normal data, as quantiles: the ECDF the service starts from
    (so a fresh install is calibrated from its first batch instead of after a warm-up)."""

    quantiles: list[float] = []  # ascending, scores at evenly spaced probabilities 0..1
    samples: int = 0


class DetectorSpec(_Model):
    """One detector of a signal: its kind (an ``otelai.detectors`` plugin), file, settings."""

    name: str
    kind: str
    file: str | None = None  # a file of the bundle (an ONNX graph, an .npz of state)
    params: dict[str, Any] = {}
    calibration: Calibration = Calibration()  # of this detector's raw score


class Thresholds(_Model):
    anomaly: float = Field(default=0.995, ge=0.0, le=1.0)
    critical: float = Field(default=0.9995, ge=0.0, le=1.0)


class SignalModel(_Model):
    """Everything one signal's scoring needs from the bundle."""

    feature_schema: SchemaSpec
    detectors: list[DetectorSpec]
    calibration: Calibration = Calibration()  # of the combined score
    thresholds: Thresholds = Thresholds()

    def thresholds_under(self, selection: Any) -> tuple[float, float]:
        """(anomaly, critical): the bundle's, except those ``selection`` (the configuration's
        ``selection`` section) sets explicitly; critical is never below anomaly."""
        chosen = selection.model_fields_set
        anomaly = selection.anomaly_threshold if "anomaly_threshold" in chosen else self.thresholds.anomaly
        critical = (
            selection.critical_threshold if "critical_threshold" in chosen else self.thresholds.critical
        )
        return anomaly, max(anomaly, critical)


class Training(_Model):
    """What the bundle was trained on: enough to reproduce it and to judge where it applies."""

    dataset: str
    path: str = ""
    items: int = 0
    parts: list[str] = []  # windows, series, machines or blocks trained on
    seed: int = 0
    command: str = ""
    summary: dict[str, Any] = {}


class Manifest(_Model):
    format: Literal["otelai-bundle/1"] = "otelai-bundle/1"
    name: str
    version: str
    created: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))
    otelai_version: str = __version__
    signals: dict[SignalName, SignalModel]
    training: list[Training] = []
    # dataset -> metric -> value; a metric without a finite value (no anomalies to find) is null
    metrics: dict[str, dict[str, float | None]] = {}
    files: dict[str, str] = {}  # file name -> sha256 hex


@dataclass(frozen=True, slots=True)
class Bundle:
    """A loaded, validated bundle: its directory and manifest."""

    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path:
        """Path of a file of the bundle (checked at load time)."""
        if name not in self.manifest.files:
            raise BundleError(f"bundle {self.path}: no file {name!r} in its manifest")
        return self.path / name

    def signal(self, name: SignalName) -> SignalModel | None:
        return self.manifest.signals.get(name)

    def check_schema(
        self, name: SignalName, expected: FeatureSchema, *, schema_name: str | None = None
    ) -> None:
        """Refuse the bundle if ``name``'s models read other features than ``expected``."""
        model = self.signal(name)
        if model is None:
            return
        spec = model.feature_schema
        if spec.version == expected.version and tuple(spec.columns) == expected.names:
            return
        missing = [c for c in expected.names if c not in spec.columns]
        extra = [c for c in spec.columns if c not in expected.names]
        detail = []
        if missing:
            detail.append(f"not in the bundle: {', '.join(missing)}")
        if extra:
            detail.append(f"unknown here: {', '.join(extra)}")
        if not detail:
            same_order = tuple(spec.columns) == expected.names
            detail.append("the same columns" if same_order else "the same columns in another order")
        raise BundleError(
            f"bundle {self.path}: the {name} models were trained on feature schema "
            f"{spec.name!r} version {spec.version!r}, this otelai computes version "
            f"{expected.version!r} ({'; '.join(detail)}); retrain it with `otelai train`"
        )


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_bundle(
    path: str | os.PathLike[str], schemas: Mapping[SignalName, FeatureSchema] | None = None
) -> Bundle:
    """Read and validate the bundle at ``path``; check each signal's schema against ``schemas``.

    Raises
    ------
    BundleError
        With a message naming the bundle and what is wrong with it.
    """
    root = Path(path)
    manifest_path = root / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"bundle {root}: no {MANIFEST} (is it a model bundle directory?)")
    try:
        raw = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"bundle {root}: {MANIFEST} is not readable JSON: {exc}") from exc
    if isinstance(raw, dict) and raw.get("format") not in (None, FORMAT):
        raise BundleError(f"bundle {root}: format {raw.get('format')!r}, this otelai reads {FORMAT!r}")
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "top level"
        raise BundleError(f"bundle {root}: {MANIFEST}: {where}: {first['msg']}") from exc
    named = {d.file for model in manifest.signals.values() for d in model.detectors if d.file}
    for name in sorted(named - manifest.files.keys()):
        raise BundleError(f"bundle {root}: detector file {name!r} has no digest in the manifest")
    for name, digest in manifest.files.items():
        file = root / name
        if Path(name).name != name or not file.is_file():
            raise BundleError(f"bundle {root}: file {name!r} named in the manifest is missing")
        if sha256(file) != digest:
            raise BundleError(f"bundle {root}: file {name!r} does not match its SHA-256 in the manifest")
    bundle = Bundle(root, manifest)
    for signal, schema in (schemas or {}).items():
        bundle.check_schema(signal, schema)
    return bundle


def save_bundle(directory: str | os.PathLike[str], manifest: Manifest) -> Bundle:
    """Write ``manifest`` into ``directory`` (which already holds its files), with their digests.

    Every regular file in the directory other than the manifest is listed with its SHA-256.
    The manifest is written to a temporary file and renamed, so a reader never sees half of it.
    """
    root = Path(directory)
    files = {p.name: sha256(p) for p in sorted(root.iterdir()) if p.is_file() and p.name != MANIFEST}
    final = manifest.model_copy(update={"files": files})
    metrics = {
        dataset: {
            key: (value if value is not None and math.isfinite(value) else None)
            for key, value in values.items()
        }
        for dataset, values in final.metrics.items()
    }
    final = final.model_copy(update={"metrics": metrics})
    text = json.dumps(final.model_dump(mode="json"), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".manifest-", suffix=".json")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            # mkstemp creates the file private (0600); the service often runs as another user
            os.fchmod(handle.fileno(), 0o644)
            handle.write(text)
        os.replace(tmp, root / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return load_bundle(root)
