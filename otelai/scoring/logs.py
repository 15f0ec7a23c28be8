"""Where a log record is scored, tagged, and kept or dropped.

Per batch of logs requests: read the records into columns (:mod:`otelai.features.logs`: Drain
templates, severity, error keywords, per-template and per-service rates), score them with the
streaming-baseline surprise detector and the PCA detector and calibrate
(:class:`~otelai.scoring.scorer.Scorer`), classify severity, then select:

- ``critical`` / ``anomaly``: the record's calibrated score reached
  ``selection.critical_threshold`` / ``selection.anomaly_threshold``;
- ``critical_context``: the record belongs to a trace the traces stage follows as critical
  (only when given that stage's :class:`~otelai.decision.trace_buffer.CriticalTraces`);
- ``sampled``: consistent probability sampling at ``normal_sample_rate``. A record with a trace
  id is decided by the trace id's randomness with the same threshold the traces stage uses
  (OpenTelemetry "TraceState: Probability Sampling"), so the logs of a sampled trace are kept
  with its spans in every batch and replica. A record without one is decided by a stable hash
  of its bytes: deterministic, and independent between records;
- everything else is dropped and counted per (service, template) in the summaries.

Kept records are forwarded as their original bytes plus appended attribute fields (the
``otelai.*`` tags of DESIGN.md), regrouped under their resource and scope.

The surprise detector reads the columns that are surprises by construction: the template's
rarity (``-ln`` of its decayed frequency) and the template's and service's rate surges (log of
fast over slow rate). The error columns (severity, keyword counts) and novelty flag are left to
PCA: an error count is not a surprise (a service that always logs errors would score high
forever), and a new template already shows as a high rarity.

With a model bundle whose logs section holds session models (``log-sessions``: the DeepLog-
style next-event model of :mod:`otelai.detectors.log_session_model`, trained by
``otelai train --dataset hdfs|bgl``), the bundle's template miner is the processor's (template
ids mean what they meant in training) and every record is also scored against the earlier
records of its session (the session key is a log attribute named by the bundle). The two
calibrated scores are two p-values, ``1 - score``, combined by the Bonferroni rule the
:class:`~otelai.scoring.scorer.Scorer` applies to its own detectors: ``1 - min(1, k * min p)``,
``k = 2`` once the online scorer is calibrated (1 before: the bundle's calibration is fixed and
valid from the first record). The combination stays here rather than as one more detector of
the Scorer because the bundle's detector reads other rows (session windows, not the feature
row) and must not be recalibrated on live traffic: its calibration and thresholds come from
held-out normal data. Each part is held to its own thresholds (the online scorer to
``selection``'s, the bundle's model to the bundle's, which ``selection`` overrides when it sets
them explicitly) and the higher severity wins, so the bundle keeps the precision and recall it
was tuned to. When a session ends (idle, on the processor's tick) its end and template counts
are scored; its records are long forwarded, so an anomalous session raises a local alert and
counts in ``otelai_anomalies_total{signal="logs"}``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from otelai.backends.select import FallbackCallback
from otelai.config import Config
from otelai.config import Scoring as ScoringConfig
from otelai.decision import sampling
from otelai.decision.actions import Alert, Alerter, MitigationHook
from otelai.decision.assemble import Assembler, skeleton
from otelai.decision.severity import Severity, classify
from otelai.decision.summaries import DroppedSummaries
from otelai.decision.tagging import LOG_RECORD_ATTRIBUTES, tag_suffix
from otelai.decision.trace_buffer import CriticalTraces, trace_keys
from otelai.detectors.log_sequence import UNKNOWN
from otelai.detectors.log_session_model import (
    COUNTS_KIND,
    SEQUENCE_KIND,
    LogSessionModel,
    RecordScores,
    SessionScores,
)
from otelai.detectors.log_sessions import record_attribute
from otelai.detectors.registry import Serving
from otelai.features.logs import SCHEMA, LogBatch, LogState, log_features
from otelai.features.otlp_layout import ItemLayout, ResourceCache, locate_items, range_hash
from otelai.features.wire import LEN, gather_fixed, tag, walk
from otelai.models.bundle import Bundle, BundleError, SignalModel
from otelai.pipeline import Payload
from otelai.scoring.detection import default_scorer
from otelai.scoring.scorer import Scored
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

log = logging.getLogger("otelai.scoring")

I64 = NDArray[np.int64]
U8 = NDArray[np.uint8]
U64 = NDArray[np.uint64]
Bool = NDArray[np.bool_]

# Selection codes; the tag values are public (DESIGN.md) and the selection_items decisions.
DROPPED, SAMPLED, CRITICAL_CONTEXT, ANOMALY, CRITICAL = 0, 1, 2, 3, 4
# A critical record is kept as an anomaly (its severity tag says critical), as spans are.
REASONS = ("dropped", "sampled", "critical_context", "anomaly", "anomaly")
SURPRISE_COLUMNS = ("template_rarity", "template_surge", "service_surge")
MAX_ALERTS_PER_BATCH = 100
MAX_OPERATION_CHARS = 200  # an alert's operation is the template: keep labels short
MAX_KEY_CHARS = 100  # a session key quoted in an alert's reason
TRACE_ID = tag(9, LEN)  # LogRecord.trace_id (logs.proto)
TRACE_ID_BYTES = 16
_FAIL_OPEN = tag_suffix(
    LOG_RECORD_ATTRIBUTES,
    score=None,
    severity=None,
    reason=None,
    model_version=None,
    selection_reason="fail_open",
)


@dataclass(frozen=True, slots=True)
class RecordBytes:
    """Each record's bytes (``buf[start:end]``) and trace id, in :class:`LogBatch` row order.

    ``trace_id`` is (n, 16) uint8, zeros where the record has none (``has_trace`` False).
    """

    buf: U8
    start: I64
    end: I64
    trace_id: U8
    has_trace: Bool

    def __len__(self) -> int:
        return int(self.start.size)

    @classmethod
    def read(cls, payloads: Sequence[bytes], cache: ResourceCache) -> RecordBytes:
        """Locate the records of serialised ``ExportLogsServiceRequest`` payloads.

        Raises :class:`~otelai.features.wire.WireError` on malformed bytes.
        """
        layout = locate_items(payloads, cache)
        n = len(layout)
        fields = walk(layout.buf, layout.start, layout.end)
        row = fields.last(TRACE_ID, n)
        present = np.flatnonzero(row >= 0)
        rows = row.take(present)
        sized = (fields.end.take(rows) - fields.data.take(rows)) == TRACE_ID_BYTES
        present, rows = present[sized], rows[sized]
        trace_id = np.zeros((n, TRACE_ID_BYTES), dtype=np.uint8)
        if present.size:
            trace_id[present] = gather_fixed(layout.buf, fields.data.take(rows), TRACE_ID_BYTES)
        has_trace: Bool = np.any(trace_id != 0, axis=1)
        return cls(layout.buf, layout.start, layout.end, trace_id, has_trace)

    def randomness(self) -> U64:
        """56-bit sampling randomness: the trace id's, else a stable hash of the record's bytes."""
        rand = sampling.randomness(self.trace_id)
        untraced = np.flatnonzero(~self.has_trace)
        if untraced.size:
            hashed = range_hash(self.buf, self.start.take(untraced), self.end.take(untraced))
            rand[untraced] = hashed & sampling.RANDOMNESS_MASK
        return rand


class LogProcessor:
    """Scoring and selection of log records (the ``Processor`` of the logs stage).

    Parameters
    ----------
    config
        The service configuration (``selection``, ``scoring``).
    metrics
        Selection, anomaly and calibration metrics.
    summaries
        Where dropped records are counted, per (service, template text). The table is shared
        with the traces stage; it is flushed by :meth:`tick` only when ``flush_summaries`` is
        set, so that one stage flushes it (the traces stage when it runs).
    flush_summaries
        Whether :meth:`tick` flushes ``summaries``.
    alerter, mitigation
        Local actions for anomalies (at most ``max_alerts_per_batch`` a batch, highest scores
        first) and critical anomalies.
    on_fallback
        Backend fallback callback (``otelai_backend_fallbacks_total``).
    critical_traces
        The traces stage's followed critical traces: records of those traces are forwarded as
        ``critical_context``. None: logs do not follow traces.
    state
        Template miner, rates and service interner (fresh by default; with a ``bundle`` of
        session models, the bundle's miner is used).
    bundle
        The service's model bundle; its ``logs`` session models, if any, score records too
        (see the module docstring). Raises :class:`~otelai.models.bundle.BundleError` if they
        cannot be built.
    max_alerts_per_batch
        Alerts submitted per batch at most.
    clock
        Monotonic seconds, the arrival time of a batch for the rate features.
    """

    signal = Signal.LOGS

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        *,
        summaries: DroppedSummaries | None = None,
        flush_summaries: bool = False,
        alerter: Alerter | None = None,
        mitigation: MitigationHook | None = None,
        on_fallback: FallbackCallback | None = None,
        critical_traces: CriticalTraces | None = None,
        state: LogState | None = None,
        bundle: Bundle | None = None,
        max_alerts_per_batch: int = MAX_ALERTS_PER_BATCH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        selection, scoring = config.selection, config.scoring
        self._metrics = metrics
        self._summaries = summaries
        self._flush_summaries = flush_summaries
        self._alerter = alerter
        self._mitigation = mitigation
        self._critical_traces = critical_traces
        self._max_alerts = max_alerts_per_batch
        self._clock = clock
        self._anomaly = selection.anomaly_threshold
        self._critical = selection.critical_threshold
        self.threshold = sampling.threshold_for(
            selection.normal_sample_rate, precision=selection.sampling_precision
        )
        self._model_version = scoring.model_version
        self.state = state or LogState()
        self.scorer = default_scorer(SCHEMA, SURPRISE_COLUMNS, scoring, on_fallback=on_fallback)
        # Detector codes past the scorer's name the session model in reasons (order, unseen).
        self._session_code = len(self.scorer.detectors)
        self.sessions = _session_model(bundle, scoring, on_fallback)
        self._session_anomaly, self._session_critical = self._anomaly, self._critical
        self._session_reasons = ("", "")
        self._session_names = (SEQUENCE_KIND, COUNTS_KIND)
        self._session_service: dict[bytes, int] = {}
        self._session_failed = False
        if self.sessions is not None:
            assert bundle is not None
            self.state = self.sessions.state
            self._model_version = bundle.manifest.version
            self._session_anomaly, self._session_critical = _logs_model(bundle).thresholds_under(selection)
            self._session_names = _detector_names(bundle)
            name = self._session_names[0]
            self._session_reasons = (f"{name}: unexpected template", f"{name}: unseen template")
        self._containers = ResourceCache()
        # Summary series ids are valid for one summaries interval (until any stage flushes).
        self._series_cache: dict[int, int] = {}
        self._series_interval = -1

    # -- the batch path -------------------------------------------------------------------

    def process(self, payloads: Sequence[Payload]) -> list[Payload]:
        readable, unreadable = list(payloads), []
        try:
            batch, records = self._read(readable)
        except (ValueError, IndexError):  # WireError is a ValueError; find the bad request(s)
            ok = [_readable(payload.data) for payload in payloads]
            readable = [payload for payload, good in zip(payloads, ok, strict=True) if good]
            unreadable = [payload for payload, good in zip(payloads, ok, strict=True) if not good]
            batch, records = self._read(readable)
        out: list[Payload] = []
        if unreadable:
            items = sum(payload.items for payload in unreadable)
            log.warning("unreadable logs requests; forwarding them unscored", extra={"items": items})
            self._metrics.selection_items.labels(self.signal.value, "fail_open").inc(items)
            self._metrics.scoring_fail_open.labels(self.signal.value, "unreadable").inc(items)
            out.extend(self.fail_open(unreadable, "unreadable"))
        if len(batch):
            out.extend(self._select(readable, batch, records))
        return out

    def _read(self, payloads: Sequence[Payload]) -> tuple[LogBatch, RecordBytes]:
        datas = [payload.data for payload in payloads]
        # Locate first: it changes no state, so a malformed request leaves the miner untouched.
        records = RecordBytes.read(datas, self._containers)
        batch = LogBatch.from_payloads(datas, self.state)
        if len(records) != len(batch):  # both read the same containers; a bug if not
            raise RuntimeError(f"{len(batch)} records in the batch but {len(records)} located")
        return batch, records

    def _select(self, payloads: Sequence[Payload], batch: LogBatch, records: RecordBytes) -> list[Payload]:
        now = self._clock()
        features, _ = log_features(batch, self.state, now=now)
        scored = self.scorer.score(features)
        severity = classify(scored.score, self._anomaly, self._critical)
        if self.sessions is not None:
            scored, severity = self._with_sessions(batch, records, scored, severity, now)
        sampled = sampling.keep_mask(records.randomness(), self.threshold)
        follow = np.zeros(len(batch), dtype=np.bool_)
        if self._critical_traces is not None and records.has_trace.any():
            follow = self._critical_traces.contains(trace_keys(records.trace_id)) & records.has_trace
        code = np.select(
            [severity == Severity.CRITICAL, severity == Severity.ANOMALY, follow, sampled],
            [CRITICAL, ANOMALY, CRITICAL_CONTEXT, SAMPLED],
            DROPPED,
        ).astype(np.int8)
        self.scorer.learn(features[severity == Severity.NORMAL])
        self._count(batch, severity, code)
        self._act(batch, records, scored, severity)
        return self._assemble(payloads, batch, records, scored, severity, code)

    def _with_sessions(
        self, batch: LogBatch, records: RecordBytes, scored: Scored, severity: NDArray[np.int8], now: float
    ) -> tuple[Scored, NDArray[np.int8]]:
        """Scores and severities with the bundle's session model's verdicts combined in.

        Fails open to the online scorer's verdicts alone: a bundle model that breaks must not
        stop the records from being scored and forwarded.
        """
        model = self.sessions
        assert model is not None
        try:
            keys = record_attribute(records.buf, records.start, records.end, model.session_key)
            result = model.score_records(keys, batch.template_id, batch.severity.astype(np.int64), now)
            # Which service each live session logs from, for its alert when it ends.
            self._session_service.update(zip(keys, batch.service.tolist(), strict=True))
        except Exception:
            if not self._session_failed:  # once per run of failures: the hot path must not spam
                log.exception("log session model failed; scoring with the online detectors alone")
            self._session_failed = True
            return scored, severity
        self._session_failed = False
        return self._combine(scored, severity, result, model)

    def _combine(
        self, scored: Scored, severity: NDArray[np.int8], result: RecordScores, model: LogSessionModel
    ) -> tuple[Scored, NDArray[np.int8]]:
        online = self.scorer.warm
        session_severity = classify(result.score, self._session_anomaly, self._session_critical)
        p_session = 1.0 - result.score
        p_online = 1.0 - scored.score if online else np.ones_like(p_session)
        k = 2 if online else 1
        score = 1.0 - np.minimum(1.0, k * np.minimum(p_session, p_online))
        decides = (session_severity > severity) | ((session_severity == severity) & (p_session <= p_online))
        unseen = model.vocabulary.tokens(result.template_ids) == UNKNOWN
        code = self._session_code + unseen.astype(np.int64)
        combined = Scored(
            score=score,
            detector=np.where(decides, code, scored.detector),
            features=np.where(decides[:, None], -1, scored.features),
        )
        return combined, np.maximum(severity, session_severity)

    def _count(self, batch: LogBatch, severity: NDArray[np.int8], code: NDArray[np.int8]) -> None:
        metrics, signal = self._metrics, self.signal.value
        counts = np.bincount(code, minlength=len(REASONS))
        for i, reason in enumerate(REASONS):  # "anomaly" twice: anomaly and critical records
            if counts[i]:
                metrics.selection_items.labels(signal, reason).inc(int(counts[i]))
        for level in (Severity.ANOMALY, Severity.CRITICAL):
            count = int(np.count_nonzero(severity == level))
            if count:
                metrics.anomalies.labels(signal, level.tag).inc(count)
        metrics.calibration_warm.labels(signal).set(1 if self.scorer.warm else 0)
        dropped = code == DROPPED
        if self._summaries is not None and dropped.any():
            self._summaries.add_logs(self._series(batch, dropped), dropped)

    def _series(self, batch: LogBatch, dropped: Bool) -> I64:
        """Summary series of the dropped records, interned once per (service, template) and interval."""
        summaries = self._summaries
        assert summaries is not None
        cache = self._series_cache
        if summaries.interval_start_ns != self._series_interval or len(cache) > 4 * summaries.max_series:
            cache.clear()  # a flush (by any stage) reset the tables: the ids are stale
            self._series_interval = summaries.interval_start_ns
        rows = np.flatnonzero(dropped)
        width = self.state.interner.max_services + 2  # service ids are -1 (overflow) .. max - 1
        keys = batch.template_id.take(rows) * width + (batch.service.take(rows).astype(np.int64) + 1)
        unique, inverse = np.unique(keys, return_inverse=True)
        ids = np.empty(unique.size, dtype=np.int64)
        for i, key in enumerate(unique.tolist()):
            series = cache.get(key)
            if series is None:
                template_id, service = divmod(key, width)
                service_name = self.state.interner.service_name(service - 1)
                template = self.state.miner.template(template_id) or ""
                series = cache[key] = int(summaries.intern_logs([service_name], [template])[0])
            ids[i] = series
        out = np.zeros(len(batch), dtype=np.int64)
        out[rows] = ids[inverse.reshape(-1)]
        return out

    def _act(self, batch: LogBatch, records: RecordBytes, scored: Scored, severity: NDArray[np.int8]) -> None:
        if self._alerter is None and self._mitigation is None:
            return
        rows = np.flatnonzero(severity >= Severity.ANOMALY)
        if rows.size > self._max_alerts:  # the highest scores first
            rows = rows[np.argsort(-scored.score[rows], kind="stable")[: self._max_alerts]]
        alerts = []
        for row in rows.tolist():
            template = self.state.miner.template(int(batch.template_id[row])) or ""
            alert = Alert(
                severity=Severity(int(severity[row])).tag,
                signal=self.signal.value,
                service=self.state.interner.service_name(int(batch.service[row])),
                operation=template[:MAX_OPERATION_CHARS],
                score=float(scored.score[row]),
                reason=self._reason(scored, row),
                trace_id=records.trace_id[row].tobytes().hex() if records.has_trace[row] else "",
            )
            alerts.append(alert)
            if self._mitigation is not None and severity[row] == Severity.CRITICAL:
                self._mitigation.trigger(alert)
        if self._alerter is not None and alerts:
            self._alerter.submit(alerts)

    def _reason(self, scored: Scored, row: int) -> str:
        detector = int(scored.detector[row])
        if detector >= self._session_code:
            return self._session_reasons[detector - self._session_code]
        return self.scorer.reason(detector, scored.features[row].tolist())

    # -- sessions that ended ---------------------------------------------------------------------

    def end_sessions(self, now: float | None = None) -> SessionScores | None:
        """End the bundle model's idle sessions, count and alert the anomalous ones.

        Their records were forwarded (or dropped) when they arrived: a session's verdict can
        only be told, as an alert and in ``otelai_anomalies_total``. None without session models
        or when ending them failed (logged; the live sessions stay bounded by the next call).
        """
        model = self.sessions
        if model is None:
            return None
        try:
            ended = model.expire(self._clock() if now is None else now)
            services = [self._session_service.pop(key, -1) for key in ended.keys]
            if ended.keys:
                self._session_verdicts(model, ended, services)
        except Exception:
            log.exception("ending log sessions failed")
            return None
        return ended

    def _session_verdicts(self, model: LogSessionModel, ended: SessionScores, services: list[int]) -> None:
        severity = classify(ended.score, self._session_anomaly, self._session_critical)
        for level in (Severity.ANOMALY, Severity.CRITICAL):
            count = int(np.count_nonzero(severity == level))
            if count:
                self._metrics.anomalies.labels(self.signal.value, level.tag).inc(count)
        if self._alerter is None and self._mitigation is None:
            return
        rows = np.flatnonzero(severity >= Severity.ANOMALY)
        if not rows.size:
            return
        rows = rows[np.argsort(-ended.score[rows], kind="stable")[: self._max_alerts]]
        end, counts = model.session_parts(ended)
        by_trace = model.session_key == "trace_id"
        alerts = []
        for row in rows.tolist():
            key = ended.keys[row]
            shown = key.hex() if by_trace else key.decode("utf-8", "replace")[:MAX_KEY_CHARS]
            part = self._session_names[0] + ": session end"
            if counts[row] > end[row]:
                part = self._session_names[1] + ": template counts"
            alert = Alert(
                severity=Severity(int(severity[row])).tag,
                signal=self.signal.value,
                service=self.state.interner.service_name(services[row]),
                # The alert's identity is low-cardinality: the key goes in the reason.
                operation=f"{model.session_key} session"[:MAX_OPERATION_CHARS],
                score=float(ended.score[row]),
                reason=f"{part}; {model.session_key}={shown}",
                trace_id=key.hex() if by_trace else "",
            )
            alerts.append(alert)
            if self._mitigation is not None and severity[row] == Severity.CRITICAL:
                self._mitigation.trigger(alert)
        if self._alerter is not None:
            self._alerter.submit(alerts)

    # -- building what is forwarded ------------------------------------------------------------

    def _assemble(
        self,
        payloads: Sequence[Payload],
        batch: LogBatch,
        records: RecordBytes,
        scored: Scored,
        severity: NDArray[np.int8],
        code: NDArray[np.int8],
    ) -> list[Payload]:
        kept = np.flatnonzero(code != DROPPED)
        if not kept.size:
            return []
        raw = records.buf.tobytes()
        assembler = Assembler()
        # One Python step per kept record (a few percent of the batch): the tags differ per record.
        for row, r, resource, scope, start, end, score, level, selection in zip(
            kept.tolist(),
            batch.request.take(kept).tolist(),
            batch.resource.take(kept).tolist(),
            batch.scope.take(kept).tolist(),
            records.start.take(kept).tolist(),
            records.end.take(kept).tolist(),
            scored.score.take(kept).tolist(),
            severity.take(kept).tolist(),
            code.take(kept).tolist(),
            strict=True,
        ):
            suffix = tag_suffix(
                LOG_RECORD_ATTRIBUTES,
                score=round(score, 4),
                severity=Severity(level).tag,
                reason=self._reason(scored, row) if level else None,
                model_version=self._model_version,
                selection_reason=REASONS[selection],
            )
            assembler.add((r, resource, scope), raw[start:end] + suffix)
        requests: list[Any] = [None] * len(payloads)
        for r in np.unique(batch.request.take(kept)).tolist():
            requests[r] = _parsed(payloads[r])
        oldest = min(payload.received_ns for payload in payloads)
        return [Payload(Signal.LOGS, assembler.build(requests), assembler.items, oldest)]

    # -- fail open and periodic output ---------------------------------------------------------

    def fail_open(self, payloads: Sequence[Payload], reason: str) -> list[Payload]:
        """Every record of ``payloads`` tagged ``otelai.selection.reason=fail_open``.

        A request that cannot be read even so is forwarded as it came. Counting is the caller's
        (the scoring stage counts its own fail-open; :meth:`process` counts unreadable requests).
        """
        out: list[Payload] = []
        assembler = Assembler()
        requests: list[Any] = []
        for payload, layout in zip(payloads, self._locate_each(payloads), strict=True):
            try:
                request = _parsed(payload)
            except Exception:  # unreadable: forward it as it came, the receiver accepted it
                layout = None
            if layout is None:
                out.append(payload)
                continue
            number = len(requests)
            requests.append(request)
            raw = layout.buf.tobytes()
            for resource, scope, start, end in zip(
                layout.resource.tolist(),
                layout.scope.tolist(),
                layout.start.tolist(),
                layout.end.tolist(),
                strict=True,
            ):
                assembler.add((number, resource, scope), raw[start:end] + _FAIL_OPEN)
        if assembler.items:
            oldest = min(payload.received_ns for payload in payloads)
            out.append(Payload(Signal.LOGS, assembler.build(requests), assembler.items, oldest))
        return out

    def _locate_each(self, payloads: Sequence[Payload]) -> list[ItemLayout | None]:
        """Each payload's record layout, or None where the request cannot be read."""
        out: list[ItemLayout | None] = []
        for payload in payloads:
            try:
                out.append(locate_items([payload.data], self._containers))
            except (ValueError, IndexError):
                out.append(None)
        return out

    def settle(self) -> None:
        """Nothing is left for after forwarding: a batch is learned before it is returned."""

    def tick(self, now_ns: int) -> list[Payload]:
        """End idle sessions (:meth:`end_sessions`); the summaries of dropped spans and
        records, when this stage flushes them."""
        self.end_sessions()
        if self._summaries is None or not self._flush_summaries or self._summaries.empty:
            return []
        data, points = self._summaries.flush_counted(now_ns)
        if not data:
            return []
        return [Payload(Signal.METRICS, data, points, time.monotonic_ns())]

    def close(self) -> None:
        # Live sessions are not scored: shutdown cut them short, and an early end is no evidence.
        self.scorer.close()
        if self.sessions is not None:
            self.sessions.close_models()


def _session_model(
    bundle: Bundle | None, scoring: ScoringConfig, on_fallback: FallbackCallback | None
) -> LogSessionModel | None:
    """The bundle's log session models, or None (no bundle, or no session models for logs)."""
    model = bundle.signal("logs") if bundle is not None else None
    if bundle is None or model is None or not any(spec.kind == SEQUENCE_KIND for spec in model.detectors):
        return None
    serving = Serving(
        backend_order=tuple(scoring.backend),
        backend_options=scoring.backend_options,
        on_fallback=on_fallback,
    )
    try:
        return LogSessionModel.from_bundle(bundle, serving)
    except (OSError, ValueError, KeyError) as exc:  # unreadable state files
        raise BundleError(f"bundle {bundle.path}: the logs session models cannot be loaded: {exc}") from exc


def _logs_model(bundle: Bundle) -> SignalModel:
    model = bundle.signal("logs")
    assert model is not None  # only called for bundles with session models
    return model


def _detector_names(bundle: Bundle) -> tuple[str, str]:
    """Names of the bundle's next-event and count detectors, for reasons."""
    model = bundle.signal("logs")
    names = {spec.kind: spec.name for spec in model.detectors} if model is not None else {}
    return names.get(SEQUENCE_KIND, SEQUENCE_KIND), names.get(COUNTS_KIND, COUNTS_KIND)


def _parsed(payload: Payload) -> Any:
    """The containers of ``payload``'s request, as the :class:`Assembler` reads them."""
    return skeleton(payload.data)


def _readable(data: bytes) -> bool:
    """Whether the feature readers can read a request (checked on throwaway state)."""
    try:
        RecordBytes.read([data], ResourceCache())
        LogBatch.from_payloads([data], LogState())
    except (ValueError, IndexError):
        return False
    return True
