"""Which model bundle the service runs: the configured one, or the one shipped in the package.

The bundle is loaded once at start-up and checked against the feature schemas this otelai
computes, so a stale bundle stops the start with a message instead of scoring garbage.
"""

from __future__ import annotations

from pathlib import Path

from otelai.config import ModelBundle
from otelai.features.schema import FeatureSchema
from otelai.models.bundle import MANIFEST, Bundle, SignalName, load_bundle

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default"


def feature_schemas() -> dict[SignalName, FeatureSchema]:
    """The schema of every signal's feature rows, as the scoring processors compute them."""
    from otelai.features.logs import SCHEMA as LOG_SCHEMA
    from otelai.features.spans import SPAN_SCHEMA
    from otelai.scoring.metrics import SCHEMA as METRIC_SCHEMA

    return {"traces": SPAN_SCHEMA, "logs": LOG_SCHEMA, "metrics": METRIC_SCHEMA}


def bundle_path(settings: ModelBundle) -> Path | None:
    """The bundle directory to load, or None (disabled, or no bundle shipped)."""
    if not settings.enabled:
        return None
    if settings.path:
        return Path(settings.path)
    return DEFAULT_BUNDLE if (DEFAULT_BUNDLE / MANIFEST).is_file() else None


def load_configured_bundle(settings: ModelBundle) -> Bundle | None:
    """Load and validate the configured bundle; :class:`BundleError` if it cannot be used."""
    path = bundle_path(settings)
    if path is None:
        return None
    from otelai.features.schema import FeatureSchema

    schemas = {
        name: schema for name, schema in feature_schemas().items() if isinstance(schema, FeatureSchema)
    }
    return load_bundle(path, schemas)
