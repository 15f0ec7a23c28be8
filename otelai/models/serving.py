"""Which model bundle the service runs: the configured one, or the one shipped in the package.

The bundle is loaded once at start-up and checked against the feature schemas this otelai
computes, so a stale bundle stops the start with a message instead of scoring garbage.

The logs section may hold either of two kinds of model: per-record models over the rows of
:data:`otelai.features.logs.SCHEMA` (schema name ``logs``), or session models
(:mod:`otelai.detectors.log_session_model`, schema name ``log-sessions``) whose rows are a
window of the ``h`` earlier templates of the record's session, ``h`` being a parameter of the
bundle's next-event detector. Each is checked against what this otelai computes for it; a
schema name it does not compute is refused.

The metrics section likewise holds per-point models over the rows of
:data:`otelai.scoring.metrics.SCHEMA` (schema name ``metrics``), or per-resource multivariate
models (schema name ``<dataset>-server-metrics``, :mod:`otelai.scoring.resource_metrics`) whose
columns are metric names: any names, as long as they are non-empty and unique and every
detector is a multivariate autoencoder over exactly those columns.
"""

from __future__ import annotations

from pathlib import Path

from otelai.config import ModelBundle
from otelai.features.schema import FeatureSchema
from otelai.models.bundle import MANIFEST, Bundle, BundleError, SignalModel, SignalName, load_bundle

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default"
LOG_RECORDS = "logs"  # schema name of per-record log models
LOG_SESSIONS = "log-sessions"  # schema name of log session models
METRIC_POINTS = "metrics"  # schema name of per-point metric models
SERVER_METRICS = "-server-metrics"  # schema name suffix of per-resource multivariate models


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
    schemas = feature_schemas()
    checked_here = ("logs", "metrics")
    bundle = load_bundle(path, {name: schema for name, schema in schemas.items() if name not in checked_here})
    logs = bundle.signal("logs")
    if logs is not None:
        bundle.check_schema("logs", log_schema(bundle, logs, schemas["logs"]))
    metrics = bundle.signal("metrics")
    if metrics is not None:
        if is_server_metrics(metrics):
            check_server_metrics(bundle, metrics)
        else:
            bundle.check_schema("metrics", metric_schema(bundle, metrics, schemas["metrics"]))
    return bundle


def is_server_metrics(model: SignalModel) -> bool:
    """Whether a metrics section holds per-resource multivariate models (by its schema name)."""
    return model.feature_schema.name.endswith(SERVER_METRICS)


def metric_schema(bundle: Bundle, model: SignalModel, points: FeatureSchema) -> FeatureSchema:
    """The per-point schema, if that is the kind of metrics model the bundle declares.

    Raises
    ------
    BundleError
        The schema name is neither ``metrics`` nor ``*-server-metrics``.
    """
    name = model.feature_schema.name
    if name != METRIC_POINTS:
        raise BundleError(
            f"bundle {bundle.path}: the metrics models read feature schema {name!r}, which this "
            f"otelai does not compute (it computes {METRIC_POINTS!r} and '<dataset>{SERVER_METRICS}'); "
            "retrain it with `otelai train`"
        )
    return points


def check_server_metrics(bundle: Bundle, model: SignalModel) -> None:
    """Refuse a server-metrics section this otelai cannot serve.

    Raises
    ------
    BundleError
        Empty or duplicate column names, no multivariate autoencoder, a detector that is neither
        one nor a seasonal residual detector, or one whose ``params.n_features`` is not the
        number of columns.
    """
    from otelai.detectors.multivariate import KIND
    from otelai.detectors.seasonal import KIND as SEASONAL_KIND

    where = f"bundle {bundle.path}: the metrics schema {model.feature_schema.name!r}"
    columns = model.feature_schema.columns
    if not columns or not all(columns):
        raise BundleError(f"{where} has an empty column list or an empty metric name")
    duplicates = sorted({name for name in columns if columns.count(name) > 1})
    if duplicates:
        raise BundleError(f"{where} names metrics more than once: {', '.join(duplicates)}")
    for spec in model.detectors:
        if spec.kind not in (KIND, SEASONAL_KIND):
            raise BundleError(
                f"{where}: detector {spec.name!r} is of kind {spec.kind!r}; server metrics are "
                f"served by {KIND!r} detectors (with {SEASONAL_KIND!r} ones beside them) only"
            )
        width = spec.params.get("n_features")
        if isinstance(width, bool) or width != len(columns):
            raise BundleError(
                f"{where} has {len(columns)} columns but detector {spec.name!r} reads "
                f"params.n_features={width!r}; retrain it with `otelai train`"
            )
    if not any(spec.kind == KIND for spec in model.detectors):
        raise BundleError(f"{where} has no {KIND!r} detector")


def log_schema(bundle: Bundle, model: SignalModel, records: FeatureSchema) -> FeatureSchema:
    """The schema this otelai computes for the kind of logs model the bundle declares.

    Raises
    ------
    BundleError
        The schema name is not one this otelai computes, or a session model without a valid
        context length ``history``.
    """
    name = model.feature_schema.name
    if name == LOG_RECORDS:
        return records
    if name != LOG_SESSIONS:
        raise BundleError(
            f"bundle {bundle.path}: the logs models read feature schema {name!r}, which this otelai "
            f"does not compute (it computes {LOG_RECORDS!r} and {LOG_SESSIONS!r}); "
            "retrain it with `otelai train`"
        )
    from otelai.detectors.log_session_model import SEQUENCE_KIND, session_schema

    histories = [spec.params.get("history") for spec in model.detectors if spec.kind == SEQUENCE_KIND]
    if not histories:
        raise BundleError(
            f"bundle {bundle.path}: {LOG_SESSIONS!r} logs models without a {SEQUENCE_KIND!r} detector"
        )
    history = histories[0]
    if isinstance(history, bool) or not isinstance(history, int) or history < 1:
        raise BundleError(
            f"bundle {bundle.path}: the {SEQUENCE_KIND!r} detector's params.history is {history!r}, "
            "expected a positive integer"
        )
    return session_schema(history)
