"""Where a metric point is scored. Points are forwarded untouched; anomalies get a companion gauge.

Per batch of metrics requests: read the points into columns (:mod:`otelai.features.metrics`:
value, delta and rate by the data model's temporality rules, z-score against the series'
streaming baseline), score them with the surprise detector over ``|z|`` and the PCA detector
and calibrate (:class:`~otelai.scoring.scorer.Scorer`), and classify severity.

Nothing is relabelled or dropped: a new attribute would split the user's series, and dropping a
delta point would lose its increment for good (OpenTelemetry metrics data model,
``specification/metrics/data-model.md``, "Temporality"; see
:mod:`otelai.decision.metric_thinning` for what thinning may do, later). The requests are
forwarded as received, byte for byte. For each anomalous point, one point of a companion gauge
``otelai.anomaly.score`` (DESIGN.md) carries the calibrated score under the scored series'
identity: the same resource and scope, the point's attributes plus ``otelai.metric.name`` (the
scored metric's name), the point's time. They travel in one extra request per batch.

With a model bundle whose metrics section holds per-point models (``otelai train --dataset nab``:
the per-series novelty detector), they score beside the surprise detector (instead of PCA),
each row keyed by its series (:meth:`~otelai.scoring.scorer.Scorer.score`), under the bundle's
thresholds. With per-resource multivariate models (``otelai train --dataset asd|smd``), the
per-point scoring stays as it is and :mod:`otelai.scoring.resource_metrics` also scores each
resource's metrics together; its anomalous rows add companion points on their top metrics.
That part fails open on its own: if it breaks, the per-point scoring goes on.

The surprise column is ``|z|``: for a series a drop is as telling as a surge (a throughput that
falls to zero), unlike a span's latency, so the sign is taken off before the detector, which
reads positive parts only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2

from otelai.backends.select import FallbackCallback
from otelai.config import Config
from otelai.decision.actions import Alert, Alerter, MitigationHook
from otelai.decision.severity import Severity, classify
from otelai.features.metrics import SCHEMA as POINT_SCHEMA
from otelai.features.metrics import MetricBatch, SeriesState, metric_features
from otelai.features.otlp_layout import SERVICE_NAME, ResourceCache
from otelai.features.schema import FeatureSchema
from otelai.models.bundle import Bundle
from otelai.pipeline import Payload
from otelai.scoring.detection import default_scorer
from otelai.scoring.resource_metrics import ResourceMetrics, RowAnomaly
from otelai.scoring.scorer import Scored
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

log = logging.getLogger("otelai.scoring")

F32 = NDArray[np.float32]
I64 = NDArray[np.int64]

SCORE_METRIC = "otelai.anomaly.score"
METRIC_NAME = "otelai.metric.name"
SCORE_DESCRIPTION = (
    "Calibrated anomaly score (0..1, higher = more anomalous) of the point of the metric named by "
    "otelai.metric.name with the same resource, scope and attributes."
)
SCHEMA = FeatureSchema(names=(*POINT_SCHEMA.names, "zscore_abs"), version=f"{POINT_SCHEMA.version}+abs")
SURPRISE_COLUMNS = ("zscore_abs",)
MAX_ALERTS_PER_BATCH = 100
_ZSCORE = POINT_SCHEMA.index("zscore")


def with_abs_zscore(features: F32) -> F32:
    """The point features with ``|zscore|`` appended (the columns of :data:`SCHEMA`)."""
    out = np.empty((len(features), SCHEMA.width), dtype=np.float32)
    out[:, :-1] = features
    np.abs(features[:, _ZSCORE], out=out[:, -1])
    return out


class MetricProcessor:
    """Scoring of metric points (the ``Processor`` of the metrics stage); forwards everything.

    Parameters
    ----------
    config
        The service configuration (``selection`` thresholds, ``scoring``).
    metrics
        Selection, anomaly and calibration metrics.
    alerter, mitigation
        Local actions for anomalies (at most ``max_alerts_per_batch`` a batch, highest scores
        first) and critical anomalies.
    on_fallback
        Backend fallback callback (``otelai_backend_fallbacks_total``).
    state
        Per-series baselines (fresh by default).
    bundle
        The service's model bundle; its ``metrics`` models, if any, are served (see the module
        docstring). Raises :class:`~otelai.models.bundle.BundleError` if they cannot be built.
    max_alerts_per_batch
        Alerts submitted per batch at most.
    clock_ns
        Unix nanoseconds, the time of a companion point whose scored point has none.
    """

    signal = Signal.METRICS

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        *,
        alerter: Alerter | None = None,
        mitigation: MitigationHook | None = None,
        on_fallback: FallbackCallback | None = None,
        state: SeriesState | None = None,
        bundle: Bundle | None = None,
        max_alerts_per_batch: int = MAX_ALERTS_PER_BATCH,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        from otelai.models.serving import is_server_metrics

        selection = config.selection
        self._metrics = metrics
        self._alerter = alerter
        self._mitigation = mitigation
        self._max_alerts = max_alerts_per_batch
        self._clock_ns = clock_ns
        self._anomaly = selection.anomaly_threshold
        self._critical = selection.critical_threshold
        self.state = state or SeriesState()
        model = bundle.signal("metrics") if bundle is not None else None
        rows = bundle is not None and model is not None and is_server_metrics(model)
        self.scorer = default_scorer(
            SCHEMA,
            SURPRISE_COLUMNS,
            config.scoring,
            on_fallback=on_fallback,
            bundle=None if rows else bundle,
            signal="metrics",
        )
        self.resource_metrics: ResourceMetrics | None = None
        self._rows_failed = False
        if bundle is not None and model is not None:
            # Thresholds the configuration sets explicitly win over the bundle's.
            thresholds = model.thresholds_under(selection)
            if rows:
                from otelai.detectors.registry import Serving

                serving = Serving(config.scoring.backend, config.scoring.backend_options, on_fallback)
                settings = config.scoring.model
                self.resource_metrics = ResourceMetrics(
                    bundle,
                    model,
                    serving,
                    thresholds=thresholds,
                    resource_attribute=settings.resource_attribute,
                    max_resources=settings.max_resources,
                    max_history_bytes=settings.max_history_size,
                )
            else:
                self._anomaly, self._critical = thresholds

    # -- the batch path -------------------------------------------------------------------

    def process(self, payloads: Sequence[Payload]) -> list[Payload]:
        readable, unreadable = list(payloads), []
        try:
            batch = MetricBatch.from_payloads([p.data for p in readable], self.state.containers)
        except (ValueError, IndexError):  # WireError is a ValueError; find the bad request(s)
            ok = [_readable(payload.data) for payload in payloads]
            readable = [payload for payload, good in zip(payloads, ok, strict=True) if good]
            unreadable = [payload for payload, good in zip(payloads, ok, strict=True) if not good]
            batch = MetricBatch.from_payloads([p.data for p in readable], self.state.containers)
        signal = self.signal.value
        if unreadable:
            items = sum(payload.items for payload in unreadable)
            log.warning("unreadable metrics requests; forwarding them unscored", extra={"items": items})
            self._metrics.selection_items.labels(signal, "fail_open").inc(items)
            self._metrics.scoring_fail_open.labels(signal, "unreadable").inc(items)
        forwarded = sum(payload.items for payload in readable)
        if forwarded:
            self._metrics.selection_items.labels(signal, "forwarded").inc(forwarded)
        out = list(payloads)  # every request, as received
        if len(batch):
            companion = self._score(readable, batch)
            if companion is not None:
                out.append(companion)
        return out

    def _score(self, payloads: Sequence[Payload], batch: MetricBatch) -> Payload | None:
        features = with_abs_zscore(metric_features(batch, self.state)[0])
        # A point flagged "no recorded value" has nothing to score (its features are empty).
        valid = np.flatnonzero(~batch.no_value)
        n = len(batch)
        score = np.zeros(n, dtype=np.float64)
        detector = np.zeros(n, dtype=np.int64)
        explained = np.full((n, self.scorer.top), -1, dtype=np.int64)
        severity = np.zeros(n, dtype=np.int8)
        if valid.size:
            rows = features[valid]
            scored = self.scorer.score(rows, keys=batch.series.take(valid))
            score[valid], detector[valid], explained[valid] = scored.score, scored.detector, scored.features
            severity[valid] = classify(scored.score, self._anomaly, self._critical)
            self.scorer.learn(rows[severity[valid] == Severity.NORMAL])
        self._count(severity)
        found = self._score_rows(payloads, batch)
        anomalous = np.flatnonzero(severity >= Severity.ANOMALY)
        if not anomalous.size and not found:
            return None
        request = ExportMetricsServiceRequest()
        if anomalous.size:
            full = Scored(score=score, detector=detector, features=explained)
            requests: list[Any] = [None] * len(payloads)
            for r in np.unique(batch.request.take(anomalous)).tolist():
                requests[r] = _parsed(payloads[r])
            self._act(requests, batch, full, severity, anomalous)
            request = companion_request(requests, batch, anomalous, score, default_time_ns=self._clock_ns())
        items = int(anomalous.size)
        if found and self.resource_metrics is not None:
            self._act_rows(found)
            items += self.resource_metrics.companion(found, request)
            if anomalous.size:  # both paths may score one point: one companion, the higher score
                items = deduplicate_companions(request)
        if not items:
            return None
        oldest = min(payload.received_ns for payload in payloads)
        return Payload(Signal.METRICS, request.SerializeToString(), items, oldest)

    def _score_rows(self, payloads: Sequence[Payload], batch: MetricBatch) -> list[RowAnomaly]:
        """Anomalous rows of the bundle's multivariate models; none (logged once) if they fail.

        The per-point scores are already computed: a broken bundle model must not cost them.
        """
        if self.resource_metrics is None:
            return []
        try:
            rows = self.resource_metrics.score([payload.data for payload in payloads], batch)
        except Exception:
            if not self._rows_failed:  # once per run of failures: the hot path must not spam
                log.exception("multivariate metric model failed; scoring metric points alone")
            self._rows_failed = True
            return []
        self._rows_failed = False
        for level in (Severity.ANOMALY, Severity.CRITICAL):
            count = sum(1 for row in rows if row.severity == level)
            if count:
                self._metrics.anomalies.labels(self.signal.value, level.tag).inc(count)
        return rows

    def _act_rows(self, rows: list[RowAnomaly]) -> None:
        model = self.resource_metrics
        if model is None or (self._alerter is None and self._mitigation is None):
            return
        alerts = []
        for row in sorted(rows, key=lambda r: -r.score)[: self._max_alerts]:
            alert = Alert(
                severity=row.severity.tag,
                signal=self.signal.value,
                service=model.service(row.resource),
                operation=model.columns[row.columns[0]],
                score=row.score,
                reason=model.reason(row),
            )
            alerts.append(alert)
            if self._mitigation is not None and row.severity == Severity.CRITICAL:
                self._mitigation.trigger(alert)
        if self._alerter is not None and alerts:
            self._alerter.submit(alerts)

    def _count(self, severity: NDArray[np.int8]) -> None:
        metrics, signal = self._metrics, self.signal.value
        for level in (Severity.ANOMALY, Severity.CRITICAL):
            count = int(np.count_nonzero(severity == level))
            if count:
                metrics.anomalies.labels(signal, level.tag).inc(count)
        metrics.calibration_warm.labels(signal).set(1 if self.scorer.warm else 0)

    def _act(
        self,
        requests: list[Any],
        batch: MetricBatch,
        scored: Scored,
        severity: NDArray[np.int8],
        anomalous: I64,
    ) -> None:
        if self._alerter is None and self._mitigation is None:
            return
        rows = anomalous
        if rows.size > self._max_alerts:  # the highest scores first
            rows = rows[np.argsort(-scored.score[rows], kind="stable")[: self._max_alerts]]
        alerts = []
        for row in rows.tolist():
            resource = requests[int(batch.request[row])].resource_metrics[int(batch.resource[row])]
            metric = resource.scope_metrics[int(batch.scope[row])].metrics[int(batch.metric[row])]
            alert = Alert(
                severity=Severity(int(severity[row])).tag,
                signal=self.signal.value,
                service=_service_name(resource.resource),
                operation=metric.name,
                score=float(scored.score[row]),
                reason=self.scorer.reason(int(scored.detector[row]), scored.features[row].tolist()),
            )
            alerts.append(alert)
            if self._mitigation is not None and severity[row] == Severity.CRITICAL:
                self._mitigation.trigger(alert)
        if self._alerter is not None and alerts:
            self._alerter.submit(alerts)

    # -- fail open and periodic output ---------------------------------------------------------

    def fail_open(self, payloads: Sequence[Payload], reason: str) -> list[Payload]:
        """The requests as received: points are never tagged (the scoring stage counts them)."""
        return list(payloads)

    def settle(self) -> None:
        """Nothing is left for after forwarding: a batch is learned before it is returned."""

    def tick(self, now_ns: int) -> list[Payload]:
        """Nothing periodic: metric points are never dropped, so there is nothing to summarise."""
        return []

    def close(self) -> None:
        self.scorer.close()
        if self.resource_metrics is not None:
            self.resource_metrics.close()


def companion_request(
    requests: Sequence[Any],
    batch: MetricBatch,
    rows: I64,
    scores: NDArray[np.float64],
    *,
    default_time_ns: int,
) -> ExportMetricsServiceRequest:
    """One ``otelai.anomaly.score`` gauge point per row, under the scored point's identity.

    Parameters
    ----------
    requests
        The parsed input requests (``requests[batch.request[row]]`` for every row).
    batch
        Locators of the scored points.
    rows
        Rows of ``batch`` to emit a score for.
    scores
        Calibrated score of every row of ``batch``.
    default_time_ns
        Time of a companion point whose scored point carries none.
    """
    out = ExportMetricsServiceRequest()
    resources: dict[tuple[int, int], metrics_pb2.ResourceMetrics] = {}
    gauges: dict[tuple[int, int, int], metrics_pb2.Metric] = {}
    # One Python step per anomalous point: few by construction (the top quantiles of traffic).
    for row in rows.tolist():
        r, resource, scope = int(batch.request[row]), int(batch.resource[row]), int(batch.scope[row])
        source = requests[r].resource_metrics[resource]
        scoped = source.scope_metrics[scope]
        metric = scoped.metrics[int(batch.metric[row])]
        kind = metric.WhichOneof("data")
        point = getattr(metric, kind).data_points[int(batch.point[row])]
        gauge = gauges.get((r, resource, scope))
        if gauge is None:
            target = resources.get((r, resource))
            if target is None:
                target = resources[(r, resource)] = out.resource_metrics.add(schema_url=source.schema_url)
                target.resource.CopyFrom(source.resource)
            scope_out = target.scope_metrics.add(schema_url=scoped.schema_url)
            scope_out.scope.CopyFrom(scoped.scope)
            gauge = gauges[(r, resource, scope)] = scope_out.metrics.add(
                name=SCORE_METRIC, unit="1", description=SCORE_DESCRIPTION
            )
            gauge.gauge.SetInParent()
        companion = gauge.gauge.data_points.add(
            time_unix_nano=point.time_unix_nano or default_time_ns, as_double=float(scores[row])
        )
        companion.attributes.extend(point.attributes)
        name = companion.attributes.add(key=METRIC_NAME)
        name.value.string_value = metric.name
    return out


def deduplicate_companions(request: ExportMetricsServiceRequest) -> int:
    """Keep one companion point per identity (resource, scope, attributes, time): the highest score.

    Two points of one gauge series at one time conflict in every back end; the per-point and
    the per-resource models may both flag a point. Returns the points left. Few points by
    construction (anomalies only), so this walks them in Python.
    """

    def keys() -> Iterator[tuple[metrics_pb2.NumberDataPoint, tuple[bytes, bytes, bytes, int]]]:
        for resource in request.resource_metrics:
            resource_key = resource.resource.SerializeToString(deterministic=True)
            for scoped in resource.scope_metrics:
                scope_key = scoped.scope.SerializeToString(deterministic=True)
                for metric in scoped.metrics:
                    for point in metric.gauge.data_points:
                        attributes = sorted(a.SerializeToString(deterministic=True) for a in point.attributes)
                        yield point, (resource_key, scope_key, b"\0".join(attributes), point.time_unix_nano)

    best: dict[tuple[bytes, bytes, bytes, int], float] = {}
    for point, key in keys():
        best[key] = max(best.get(key, -np.inf), point.as_double)
    if sum(1 for _ in keys()) == len(best):
        return len(best)
    emitted: set[tuple[bytes, bytes, bytes, int]] = set()
    for resource in request.resource_metrics:
        resource_key = resource.resource.SerializeToString(deterministic=True)
        for scoped in resource.scope_metrics:
            scope_key = scoped.scope.SerializeToString(deterministic=True)
            for metric in scoped.metrics:
                kept = []
                for point in metric.gauge.data_points:
                    attributes = sorted(a.SerializeToString(deterministic=True) for a in point.attributes)
                    key = (resource_key, scope_key, b"\0".join(attributes), point.time_unix_nano)
                    if key not in emitted:
                        emitted.add(key)
                        copy = metrics_pb2.NumberDataPoint()
                        copy.CopyFrom(point)
                        copy.as_double = best[key]
                        kept.append(copy)
                del metric.gauge.data_points[:]
                metric.gauge.data_points.extend(kept)
            _drop_empty(scoped.metrics, lambda m: len(m.gauge.data_points) == 0)
        _drop_empty(resource.scope_metrics, lambda s: len(s.metrics) == 0)
    _drop_empty(request.resource_metrics, lambda r: len(r.scope_metrics) == 0)
    return len(emitted)


def _drop_empty(repeated: Any, empty: Callable[[Any], bool]) -> None:
    for index in reversed(range(len(repeated))):
        if empty(repeated[index]):
            del repeated[index]


def _parsed(payload: Payload) -> Any:
    """The parsed request of ``payload`` (the receiver's, else parsed here)."""
    if payload.request is not None:
        return payload.request
    return ExportMetricsServiceRequest.FromString(payload.data)


def _readable(data: bytes) -> bool:
    try:
        MetricBatch.from_payloads([data], ResourceCache())
    except (ValueError, IndexError):
        return False
    return True


def _service_name(resource: Any) -> str:
    for attribute in resource.attributes:
        if attribute.key == SERVICE_NAME:
            return str(attribute.value.string_value)
    return ""
