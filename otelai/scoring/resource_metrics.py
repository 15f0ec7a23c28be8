"""Where a resource's metrics are scored together, by the bundle's per-resource multivariate models.

A ``*-server-metrics`` bundle (``otelai train --dataset asd|smd``,
:mod:`otelai.models.tasks.server_metrics`) holds a windowed autoencoder over all of a server's
metrics (after USAD: Audibert et al., KDD 2020) with one calibration per training server
(``params.resource``, matched against the resource attribute named by
``scoring.model.resource_attribute``, ``host.name`` by default) and a pooled one (``*``) for
any other resource. Per batch of metrics requests:

1. each point's resource (its Resource bytes) and column (its metric name among the schema's
   columns, gauges and sums only) are read from the requests' containers (upb; a Python step
   per metric, none per point), and rows per (resource, timestamp) are assembled across
   batches (:mod:`otelai.features.resource_rows`);
2. each resource's ready rows are scored by that resource's scorer
   (:class:`otelai.scoring.combine.ResourceScorer`, the code path ``otelai evaluate`` uses):
   its autoencoder and, where the bundle has one for its calibration, its seasonal residual
   detector (each metric against its median at the same time on past days:
   :mod:`otelai.detectors.seasonal`), combined by the geometric mean of the two
   threshold-normalised scores. One scorer per resource, so the window context and the days
   of history continue from batch to batch (least recently seen forgotten first); the graph
   is loaded once and shared;
3. the raw score is calibrated by the ECDF of its calibration's held-out normal scores (of the
   combination where there is one; inductive conformal prediction: Vovk, Gammerman & Shafer
   2005), interpolated linearly and pinned at the shipped raw threshold, so
   ``calibrated >= thresholds.anomaly`` is exactly the ``raw >= threshold`` that
   ``otelai evaluate`` counts as an alarm; the thresholds are the bundle's unless the
   configuration sets them (``SignalModel.thresholds_under``). Until a resource has a day of
   history its rows are scored by the autoencoder alone, mapped so that they are flagged at
   its own threshold (:mod:`otelai.scoring.combine`);
4. an anomalous row names its top metrics: the largest contributions of the part that drives
   its score (weighted errors, or squared seasonal z-scores), largest first, until they make
   half of it (at most ``top``). Each gets an ``otelai.anomaly.score`` companion point under
   the identity of that metric's last point of the resource (resource, scope, attributes) at
   the row's time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import InstrumentationScope
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from otelai.backends.base import Backend
from otelai.backends.select import load_backend
from otelai.decision.severity import Severity, classify
from otelai.detectors.multivariate import ANY_RESOURCE, KIND, MultivariateAutoencoder
from otelai.detectors.registry import Serving, detector_kinds
from otelai.detectors.seasonal import KIND as SEASONAL_KIND
from otelai.features.metrics import MetricBatch
from otelai.features.otlp_layout import SkeletonMetricRequest, parse_skeleton
from otelai.features.resource_rows import ResourceRows, RowAssembler
from otelai.models.bundle import Bundle, BundleError, DetectorSpec, SignalModel
from otelai.scoring.combine import ResourceScorer, ResourceSpecs, pick_specs, seasonal_part, spec_tables

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]

HOST_NAME = "host.name"
_ROW_KINDS = ("gauge", "sum")  # a row holds values; distributions have no single value


@dataclass(frozen=True, slots=True)
class RowAnomaly:
    """An anomalous row: its resource, time, calibrated score, severity and top columns."""

    resource: bytes
    time_ns: int
    score: float
    severity: Severity
    columns: tuple[int, ...]
    detector: str = KIND  # the part whose metrics are named


@dataclass(slots=True)
class _Served:
    """One resource: its scorer, calibration, and where each column's points come from."""

    scorer: ResourceScorer
    calibration: tuple[F64, F64]  # raw scores -> calibrated, for np.interp
    service: str
    # per column: (scope bytes, bytes of the column's last point), None until seen
    identity: list[tuple[bytes, bytes] | None] = field(default_factory=list)


def pinned_ecdf(quantiles: Sequence[float], threshold: float, level: float) -> tuple[F64, F64]:
    """(raw, calibrated) knots of the ECDF of ``quantiles``, through ``(threshold, level)``.

    The quantiles are raw scores at evenly spaced probabilities; knots on the wrong side of the
    pinned point (interpolation error of the grid) are dropped, so the map stays monotone.
    """
    raw = np.asarray(quantiles, dtype=np.float64)
    probability = np.linspace(0.0, 1.0, raw.size)
    if not np.isfinite(threshold):
        return raw, probability
    below = (raw < threshold) & (probability < level)
    above = (raw > threshold) & (probability > level)
    return (
        np.concatenate([raw[below], [threshold], raw[above]]),
        np.concatenate([probability[below], [level], probability[above]]),
    )


class ResourceMetrics:
    """The bundle's multivariate models, one detector per resource; see the module docstring.

    Parameters
    ----------
    bundle, model
        The bundle and its ``metrics`` section (a server-metrics schema, checked at load).
    serving
        Backends for the graph.
    thresholds
        (anomaly, critical) in calibrated units.
    resource_attribute
        The resource attribute naming a server: the calibration trained for that name is
        used, else the pooled ``*`` one.
    max_resources
        Resources remembered (rows pending, detectors, identities).
    max_history_bytes
        Memory the seasonal models' history may take over all resources remembered: fewer
        resources are remembered if ``max_resources`` of them would need more.
    top
        Metrics named per anomalous row at most.
    """

    def __init__(
        self,
        bundle: Bundle,
        model: SignalModel,
        serving: Serving,
        *,
        thresholds: tuple[float, float],
        resource_attribute: str = HOST_NAME,
        max_resources: int = 10_000,
        max_history_bytes: int = 256 << 20,
        top: int = 3,
    ) -> None:
        self.columns = tuple(model.feature_schema.columns)
        self._index = {name.encode(): i for i, name in enumerate(self.columns)}
        self._specs, self._seasonal = spec_tables(model.detectors)
        if not self._specs or len(self._specs) + len(self._seasonal) != len(model.detectors):
            raise BundleError(f"bundle {bundle.path}: server metrics need {KIND!r} detectors")
        self._kinds = set(detector_kinds())  # once: looking up entry points costs a file scan
        self._bundle = bundle
        self._level = model.thresholds.anomaly
        self._anomaly, self._critical = thresholds
        self._backends: dict[str, Backend] = {}
        self._serving = serving
        self.top = top
        self.resource_attribute = resource_attribute
        self.max_resources = min(max_resources, max(1, max_history_bytes // self._history_bytes()))
        self.rows = RowAssembler(len(self.columns), max_resources=self.max_resources)
        self._served: OrderedDict[bytes, _Served] = OrderedDict()
        for spec in self._specs.values():  # load (and check) the graph now, not on the first batch
            self._backend(spec)
        for spec in self._seasonal.values():  # and the seasonal params
            seasonal_part(bundle, spec, serving, self._kinds)

    def _history_bytes(self) -> int:
        """Bytes of seasonal history one resource may hold (float32 rows), at least 1."""
        rows = 0
        for spec in self._seasonal.values():
            try:
                rows = max(rows, int(spec.params["days"]) * int(spec.params["period"]))
            except (KeyError, TypeError, ValueError):
                continue  # refused with its message when the spec is built
        return max(1, rows * len(self.columns) * 4)

    # -- reading --------------------------------------------------------------------------

    def read(self, payloads: Sequence[bytes], batch: MetricBatch) -> tuple[list[bytes], I64, I64]:
        """Per point of ``batch`` (read from ``payloads``): resource id, column (-1: none).

        Also remembers, per resource and column, the scope and last point (companion identity).
        Returns the resource identities (Resource bytes) the ids index.
        """
        resources: list[bytes] = []
        ids: dict[bytes, int] = {}
        per_metric: list[tuple[int, int, int]] = []  # (resource id, column, points)
        for payload in payloads:
            request = parse_skeleton(SkeletonMetricRequest, payload)
            for container in request.resources:
                key = bytes(container.resource)
                rid = ids.setdefault(key, len(resources))
                if rid == len(resources):
                    resources.append(key)
                served = self._entry(key)
                for scope in container.scopes:
                    for metric in scope.metrics:  # per metric, a dict look-up; per point, nothing
                        kind = metric.WhichOneof("data")
                        points = getattr(metric, kind).data_points if kind is not None else ()
                        at = self._index.get(metric.name, -1) if kind in _ROW_KINDS else -1
                        if at >= 0 and points:
                            served.identity[at] = (bytes(scope.scope), bytes(points[-1]))
                        per_metric.append((rid, at, len(points)))
        table = np.asarray(per_metric, dtype=np.int64).reshape(-1, 3)
        resource = np.repeat(table[:, 0], table[:, 2])
        column = np.repeat(table[:, 1], table[:, 2])
        if resource.size != len(batch):  # both read the same containers; a bug if not
            raise RuntimeError(f"{len(batch)} points in the batch but {resource.size} located")
        return resources, resource, column

    def _entry(self, key: bytes) -> _Served:
        served = self._served.get(key)
        if served is None:
            resource = Resource.FromString(key)
            attributes = {a.key: a.value.string_value for a in resource.attributes}
            specs = pick_specs(self._specs, self._seasonal, attributes.get(self.resource_attribute, ""))
            if specs is None:  # no fallback: serve with the first calibration rather than not at all
                first = next(iter(self._specs))
                specs = ResourceSpecs(first, self._specs[first], self._seasonal.get(first))
            served = self._served[key] = self._serve(specs, attributes.get("service.name", ""))
            while len(self._served) > self.max_resources:
                self._served.popitem(last=False)
        self._served.move_to_end(key)
        return served

    def _backend(self, spec: DetectorSpec) -> Backend:
        if spec.file is None:
            raise BundleError(f"bundle {self._bundle.path}: detector {spec.name!r} names no model file")
        backend = self._backends.get(spec.file)
        if backend is None:
            serving = self._serving
            backend = self._backends[spec.file] = load_backend(
                serving.backend_order,
                self._bundle.file(spec.file),
                options=serving.backend_options,
                on_fallback=serving.on_fallback,
            )
        return backend

    def _serve(self, specs: ResourceSpecs, service: str) -> _Served:
        spec = specs.autoencoder
        params = spec.params
        detector = MultivariateAutoencoder(
            backend=self._backend(spec),
            window=int(params["window"]),
            n_features=len(self.columns),
            weights=[float(w) for w in params["weights"]],
            threshold=float(params.get("threshold", np.inf)),
            resource=str(params.get("resource", ANY_RESOURCE)),
        )
        scorer = ResourceScorer(detector)
        calibrated_by = spec
        if specs.seasonal is not None:
            seasonal, combination = seasonal_part(self._bundle, specs.seasonal, self._serving, self._kinds)
            scorer = ResourceScorer(detector, seasonal, combination)
            calibrated_by = specs.seasonal
        calibration = pinned_ecdf(calibrated_by.calibration.quantiles, scorer.threshold, self._level)
        return _Served(scorer, calibration, service, [None] * len(self.columns))

    # -- scoring --------------------------------------------------------------------------

    def score(self, payloads: Sequence[bytes], batch: MetricBatch) -> list[RowAnomaly]:
        """Assemble the batch's rows, score those that are ready; the anomalous ones."""
        resources, resource, column = self.read(payloads, batch)
        ready = self.rows.add(resources, resource, column, batch.time_ns, batch.value)
        found: list[RowAnomaly] = []
        for rows in ready:  # one inference run per resource with ready rows
            found.extend(self._score_rows(rows))
        return found

    def _score_rows(self, rows: ResourceRows) -> list[RowAnomaly]:
        served = self._entry(rows.resource)
        scored = served.scorer.score_many(rows.values)
        raw, contribution = scored.raw, scored.contribution
        knots, levels = served.calibration
        score = np.interp(raw, knots, levels) if knots.size else np.zeros(raw.size)
        severity = classify(score, self._anomaly, self._critical)
        out = []
        for i in np.flatnonzero(severity >= Severity.ANOMALY).tolist():
            out.append(
                RowAnomaly(
                    resource=rows.resource,
                    time_ns=int(rows.time_ns[i]),
                    score=float(score[i]),
                    severity=Severity(int(severity[i])),
                    columns=self._top(contribution[i]),
                    detector=(
                        SEASONAL_KIND
                        if scored.seasonal_leads is not None and scored.seasonal_leads[i]
                        else KIND
                    ),
                )
            )
        return out

    def _top(self, contribution: F64) -> tuple[int, ...]:
        """Largest contributions first, until they make half of the score (at least one)."""
        order = np.argsort(-contribution, kind="stable")[: max(self.top, 1)]
        total = float(contribution.sum())
        share = np.cumsum(contribution[order]) / total if total > 0 else np.ones(order.size)
        count = int(np.searchsorted(share, 0.5)) + 1
        return tuple(int(c) for c in order[:count])

    def service(self, resource: bytes) -> str:
        served = self._served.get(resource)
        return served.service if served is not None else ""

    # -- output ---------------------------------------------------------------------------

    def companion(self, anomalies: Sequence[RowAnomaly], out: ExportMetricsServiceRequest) -> int:
        """Add an ``otelai.anomaly.score`` point per named metric of each row to ``out``; how many."""
        from otelai.scoring.metrics import METRIC_NAME, SCORE_DESCRIPTION, SCORE_METRIC

        added = 0
        gauges: dict[tuple[bytes, bytes], metrics_pb2.Metric] = {}
        targets: dict[bytes, metrics_pb2.ResourceMetrics] = {}
        for anomaly in anomalies:
            served = self._served.get(anomaly.resource)
            if served is None:  # forgotten since (only under more resources than remembered)
                continue
            for column in anomaly.columns:
                identity = served.identity[column]
                if identity is None:
                    continue
                scope_bytes, point_bytes = identity
                gauge = gauges.get((anomaly.resource, scope_bytes))
                if gauge is None:
                    target = targets.get(anomaly.resource)
                    if target is None:
                        target = targets[anomaly.resource] = out.resource_metrics.add()
                        target.resource.CopyFrom(Resource.FromString(anomaly.resource))
                    scoped = target.scope_metrics.add()
                    scoped.scope.CopyFrom(InstrumentationScope.FromString(scope_bytes))
                    gauge = gauges[(anomaly.resource, scope_bytes)] = scoped.metrics.add(
                        name=SCORE_METRIC, unit="1", description=SCORE_DESCRIPTION
                    )
                    gauge.gauge.SetInParent()
                point = gauge.gauge.data_points.add(time_unix_nano=anomaly.time_ns, as_double=anomaly.score)
                point.attributes.extend(metrics_pb2.NumberDataPoint.FromString(point_bytes).attributes)
                point.attributes.add(key=METRIC_NAME).value.string_value = self.columns[column]
                added += 1
        return added

    def reason(self, anomaly: RowAnomaly) -> str:
        """``"multivariate_ae: asd.metric_03, asd.metric_07"``: the deciding part and its metrics."""
        return f"{anomaly.detector}: {', '.join(self.columns[c] for c in anomaly.columns)}"

    def close(self) -> None:
        for backend in self._backends.values():
            backend.close()
        self._backends.clear()
