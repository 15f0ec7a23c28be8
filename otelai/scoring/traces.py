"""Where a span is scored, tagged, and kept or dropped.

Per batch of trace requests: read the spans into columns straight from the bytes
(:mod:`otelai.features.span_batch`), compute service-agnostic features against per-operation
baselines, score them with the detectors and calibrate (:class:`~otelai.scoring.scorer.Scorer`),
classify severity, then select:

- ``anomaly``: the span's own calibrated score reached ``selection.anomaly_threshold``;
- ``critical_context``: the span belongs to a trace with a critical span, in this batch, seen
  earlier (its later spans follow for ``critical_trace_ttl``), or recalled from the trace
  buffer (its earlier spans, kept for ``decision_wait``);
- ``sampled``: the trace id falls under the consistent-probability threshold for
  ``normal_sample_rate`` (the same decision in every batch and replica);
- everything else is dropped and counted in the summaries forwarded upstream.

Kept spans are forwarded as their original bytes plus appended tags and ``tracestate``
(``ot=th:...`` for sampled traces, ``th:0`` for kept anomalous ones). Anomalous spans carry
every tag (score, severity, reason, model version, selection reason); normal spans kept as a
sample or as context carry the selection reason alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from functools import cache, partial
from typing import Any

import numpy as np
from numpy.typing import NDArray

from otelai.config import Config, Selection
from otelai.decision import sampling
from otelai.decision.actions import Alert, Alerter, MitigationHook
from otelai.decision.assemble import Assembler, assembly_kernels, skeleton
from otelai.decision.kept_spans import (
    ANOMALY,
    CRITICAL_CONTEXT,
    DROPPED,
    REASONS,
    SAMPLED,
    Tags,
    add_compiled,
    add_kept,
    plain_suffix,
    state_field,
)
from otelai.decision.severity import Severity, classify, critical_per_trace
from otelai.decision.summaries import DroppedSummaries
from otelai.decision.tagging import (
    SELECTION_REASON,
    SPAN_ATTRIBUTES,
    field,
    string_attribute,
    tag_every_item,
)
from otelai.decision.trace_buffer import CriticalTraces, Recalled, TraceBuffer, trace_keys
from otelai.features.baseline import warm_up as baseline_warm_up
from otelai.features.interner import Interner
from otelai.features.otlp_layout import SpanState
from otelai.features.span_batch import SpanBatch
from otelai.features.span_decoder import prepare_decoder
from otelai.features.spans import (
    SPAN_SCHEMA,
    SpanBaselines,
    span_feature_kernels,
    span_features,
    update_span_baselines,
)
from otelai.kernels import load_kernels
from otelai.models.bundle import Bundle, SignalModel
from otelai.pipeline import Payload
from otelai.scoring.detection import default_scorer
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

log = logging.getLogger("otelai.scoring")

SURPRISE_COLUMNS = ("latency_z", "error_surprise")
MAX_ALERTS_PER_BATCH = 100
# "numpy" keeps the numpy bookkeeping of the learning step (tests compare the two).
LEARNING_KERNEL_ENV = "OTELAI_TRACE_LEARNING_KERNEL"
_FAIL_OPEN_TAG = field(SPAN_ATTRIBUTES, string_attribute(SELECTION_REASON, "fail_open"))


class TraceProcessor:
    """Scoring and selection of spans (the ``Processor`` of the traces stage).

    Parameters
    ----------
    config
        The service configuration (``selection``, ``scoring``).
    metrics
        Selection and anomaly counters.
    summaries
        Where dropped spans are counted; flushed by :meth:`tick` when ``flush_summaries``
        (the table may be shared with the logs stage, and one stage flushes it).
    alerter, mitigation
        Local actions for anomalies and critical anomalies.
    on_fallback
        Backend fallback callback (``otelai_backend_fallbacks_total``).
    """

    signal = Signal.TRACES

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        *,
        summaries: DroppedSummaries | None = None,
        flush_summaries: bool = True,
        alerter: Alerter | None = None,
        mitigation: MitigationHook | None = None,
        on_fallback: Any = None,
        bundle: Bundle | None = None,
    ) -> None:
        selection, scoring = config.selection, config.scoring
        self._metrics = metrics
        self._children = _Children(metrics)
        self._summaries = summaries
        self._flush_summaries = flush_summaries
        self._alerter = alerter
        self._mitigation = mitigation
        self._anomaly = selection.anomaly_threshold
        self._critical = selection.critical_threshold
        self.threshold = sampling.threshold_for(
            selection.normal_sample_rate, precision=selection.sampling_precision
        )
        self._model_version = scoring.model_version
        self.interner = Interner()
        # Compile (or load from numba's cache) the span reader now, not on the first batch.
        self.span_decoder = prepare_decoder()
        baseline_warm_up()
        assembly_kernels()
        span_feature_kernels()
        _learning_kernels()
        self.baselines = SpanBaselines.create()
        self.scorer = default_scorer(
            SPAN_SCHEMA, SURPRISE_COLUMNS, scoring, on_fallback=on_fallback, bundle=bundle, signal="traces"
        )
        model = bundle.signal("traces") if bundle is not None else None
        if bundle is not None and model is not None:
            self._from_bundle(bundle, model, selection)
        self.buffer = TraceBuffer(wait=selection.decision_wait, max_bytes=selection.trace_buffer_size)
        self.critical = CriticalTraces(
            ttl=selection.critical_trace_ttl, max_traces=selection.max_critical_traces
        )
        metrics.calibration_warm.labels("traces").set(1 if self.scorer.warm else 0)
        # Summary series id by operation id + 1 (-1: not interned yet; slot 0 for OVERFLOW).
        self._summary_series = np.zeros(0, dtype=np.int64)
        self._summary_interval = -1  # the summaries interval the cached series ids belong to
        # Learning left for after the batch was forwarded (see :meth:`settle`).
        self.defer_learning = False
        self._pending: list[Callable[[], None]] = []

    def _from_bundle(self, bundle: Bundle, model: SignalModel, selection: Selection) -> None:
        """Start from what the bundle learned: its version, thresholds and operation baselines.

        Thresholds the configuration sets explicitly win over the bundle's.
        """
        from otelai.models.span_state import BASELINES_FILE, load_span_baselines

        self._model_version = bundle.manifest.version
        self._anomaly, self._critical = model.thresholds_under(selection)
        if BASELINES_FILE in bundle.manifest.files:
            load_span_baselines(bundle.file(BASELINES_FILE), self.baselines, self.interner)

    # -- the batch path -------------------------------------------------------------------

    def process(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Score, tag and select a batch; what the batch teaches (baselines, calibration,
        detectors, trace buffer, counts and summaries) is learned before this returns, or,
        with :attr:`defer_learning`, at the next :meth:`settle` (called by the stage once the
        batch is forwarded; at the latest by the next :meth:`process` or :meth:`tick`).
        """
        self.settle()
        out = self._process(payloads)
        if not self.defer_learning:
            self.settle()
        return out

    def settle(self) -> None:
        """Learn from the batches already forwarded. Decide, forward, then learn: the learning
        is a third of a batch's work and none of it changes that batch's decisions, so it is
        kept off the path between receiving a request and forwarding it."""
        while self._pending:
            self._pending.pop(0)()

    def _process(self, payloads: Sequence[Payload]) -> list[Payload]:
        datas = [payload.data for payload in payloads]
        batch = SpanBatch.from_payloads(datas, self.interner)
        out: list[Payload] = []
        if batch.failed_requests:
            unreadable = [payloads[i] for i in batch.failed_requests]
            items = sum(payload.items for payload in unreadable)
            self._metrics.selection_items.labels("traces", "fail_open").inc(items)
            self._metrics.scoring_fail_open.labels("traces", "unreadable").inc(items)
            out.extend(self.fail_open(unreadable, "unreadable"))
        if len(batch):
            out.extend(self._select(payloads, datas, batch))
        return out

    def _select(self, payloads: Sequence[Payload], datas: list[bytes], batch: SpanBatch) -> list[Payload]:
        stamp = time.monotonic()
        features, _ = span_features(batch, self.baselines, update=False)
        scored = self.scorer.score(features, explain_above=self._anomaly, calibrate=False)
        severity = classify(scored.score, self._anomaly, self._critical, p_floor=self.scorer.p_floor)
        keys = trace_keys(batch.trace_id)
        # Critical forwards the whole trace: rare per trace, not per span.
        earlier = self.buffer.span_counts if self.buffer.wait > 0 else None
        severity = critical_per_trace(severity, scored.score, keys, self._critical, earlier_spans=earlier)
        critical_keys = np.unique(keys[severity == Severity.CRITICAL])
        self.critical.add(critical_keys)
        sampled = sampling.keep_mask(sampling.randomness(batch.trace_id), self.threshold)
        code = np.where(
            severity >= Severity.ANOMALY,
            ANOMALY,
            np.where(self.critical.contains(keys), CRITICAL_CONTEXT, np.where(sampled, SAMPLED, DROPPED)),
        ).astype(np.int8)
        recalled = self.buffer.recall(critical_keys)
        self._pending.append(
            partial(self._learn, stamp, datas, batch, features, scored, keys, severity, code, recalled)
        )
        self._act(batch, scored, severity)
        return self._assemble(payloads, datas, batch, scored, severity, code, recalled)

    def _learn(
        self,
        stamp: float,
        datas: list[bytes],
        batch: SpanBatch,
        features: Any,
        scored: Any,
        keys: Any,
        severity: Any,
        code: Any,
        recalled: list[Recalled],
    ) -> None:
        """Everything a decided batch teaches, in the order the decisions assumed."""
        update_span_baselines(batch, self.baselines, now=stamp)
        self.scorer.calibrate(scored)
        counts, normal = _tally(code, severity)
        self._remember(datas, batch, keys, code != DROPPED)
        self.scorer.learn(features.take(normal, axis=0))  # the rows of severity normal
        self._count(batch, counts, code, recalled)

    def _remember(self, datas: list[bytes], batch: SpanBatch, keys: Any, kept: Any) -> None:
        if self.buffer.wait <= 0:
            return
        # The index columns as int64 once a batch, not once a request: each request keeps a
        # view of its rows, as it does of its keys and byte offsets (same values, same bytes).
        resource, scope, index = (
            column.astype(np.int64) for column in (batch.resource, batch.scope, batch.index)
        )
        if len(datas) == 1:  # every row is the one request's
            bounds = [0, len(batch)]
        else:
            bounds = np.searchsorted(batch.request, np.arange(len(datas) + 1)).tolist()
        for r, data in enumerate(datas):
            if bounds[r] == bounds[r + 1]:
                continue
            rows = slice(bounds[r], bounds[r + 1])
            self.buffer.add(
                data,
                keys[rows],
                batch.span_start[rows],
                batch.span_end[rows],
                resource[rows],
                scope[rows],
                index[rows],
                kept[rows],
            )

    def _count(self, batch: SpanBatch, counts: list[int], code: Any, recalled: list[Recalled]) -> None:
        """Counters and summaries of a batch; ``counts``: :func:`_tally`'s spans of each
        selection code, then of each severity level."""
        children = self._children
        for i in range(len(REASONS)):
            if counts[i]:
                children.selection(i).inc(counts[i])
        # Recalled spans were counted "dropped" when they passed (a counter cannot take that
        # back): over time, the decisions add up to the spans received plus those recalled.
        extra = sum(len(r.start) for r in recalled)
        if extra:
            children.selection(CRITICAL_CONTEXT).inc(extra)
        for level in _ANOMALOUS:
            count = counts[len(REASONS) + level]
            if count:
                children.anomalies(level).inc(count)
        if self._summaries is not None:
            if counts[DROPPED]:
                series = self._series(batch.operation_id)
                self._summaries.add_spans(series, batch.duration_ns, batch.status_code == 2, code == DROPPED)
            if recalled:
                self._forget(recalled)

    def _forget(self, recalled: list[Recalled]) -> None:
        """Take the recalled spans back out of the summaries: counted dropped when they passed,
        they are forwarded now. Rare (critical traces only), so their requests are read again."""
        assert self._summaries is not None
        again = SpanBatch.from_payloads([item.data for item in recalled], self.interner)
        # A span's byte offset in its request identifies it (same bytes, same layout).
        wanted = np.concatenate([(r << 40) + item.start for r, item in enumerate(recalled)])
        rows = np.isin((again.request.astype(np.int64) << 40) + again.span_start, wanted)
        self._summaries.forget_spans(
            self._series(again.operation_id[rows]), again.duration_ns[rows], again.status_code[rows] == 2
        )

    def _series(self, operation_ids: Any) -> Any:
        """Summary series per span, interned once per operation and interval."""
        assert self._summaries is not None
        # The table may be shared and flushed by another stage: ids die with its interval.
        if self._summaries.interval_start_ns != self._summary_interval:
            self._summary_series = np.zeros(0, dtype=np.int64)
            self._summary_interval = self._summaries.interval_start_ns
        table = self._summary_series
        kernels = _learning_kernels()
        if kernels is not None and table.size and operation_ids.dtype == np.int32:
            # Every operation known (all but the first batches of an interval): one pass.
            known = np.empty(operation_ids.size, dtype=np.int64)
            if not kernels.series_of(table, np.ascontiguousarray(operation_ids), known):
                return known
        slots = np.asarray(operation_ids, dtype=np.int64) + 1  # OVERFLOW (-1) takes slot 0
        known = table.take(np.minimum(slots, table.size - 1)) if table.size else np.full(slots.size, -1)
        missing = (known < 0) | (slots >= table.size)
        if missing.any():
            wanted = np.unique(slots[missing])
            if int(wanted[-1]) >= table.size:
                grown = np.full(max(2 * table.size, int(wanted[-1]) + 1, 64), -1, dtype=np.int64)
                grown[: table.size] = table
                table = self._summary_series = grown
            for slot in wanted.tolist():
                service, name = self.interner.operation_name(slot - 1)
                table[slot] = int(self._summaries.intern_spans([service], [name])[0])
            known = table.take(slots)
        return known

    def _act(self, batch: SpanBatch, scored: Any, severity: Any) -> None:
        if self._alerter is None and self._mitigation is None:
            return
        rows = np.flatnonzero(severity >= Severity.ANOMALY)[:MAX_ALERTS_PER_BATCH]
        alerts = []
        for row in rows.tolist():
            service, operation = self.interner.operation_name(int(batch.operation_id[row]))
            alert = Alert(
                severity=Severity(int(severity[row])).tag,
                signal="traces",
                service=service,
                operation=operation,
                score=float(scored.score[row]),
                reason=self._reason(scored, row),
                trace_id=batch.trace_id[row].tobytes().hex(),
            )
            alerts.append(alert)
            if self._mitigation is not None and severity[row] == Severity.CRITICAL:
                self._mitigation.trigger(alert)
        if self._alerter is not None and alerts:
            self._alerter.submit(alerts)

    # -- building what is forwarded ------------------------------------------------------------

    def _assemble(
        self,
        payloads: Sequence[Payload],
        datas: list[bytes],
        batch: SpanBatch,
        scored: Any,
        severity: Any,
        code: Any,
        recalled: list[Recalled],
    ) -> list[Payload]:
        kept = np.flatnonzero(code != DROPPED)
        if not len(kept) and not recalled:
            return []
        # One request for the batch: the recalled spans join the kept ones, so each resource
        # (and scope) is written once per batch, not once per source of spans.
        requests: list[Any] = [None] * len(payloads)
        assembler = Assembler()
        self._add_recalled(assembler, requests, recalled)
        if len(kept):
            tags = Tags(self.threshold, self._model_version, scored, partial(self._reason, scored))
            kernels = assembly_kernels()
            compiled = kernels is not None and add_compiled(
                kernels, tags, assembler, requests, datas, batch, code, severity, kept
            )
            if not compiled:
                add_kept(tags, assembler, requests, datas, batch, code, severity, kept)
        if not assembler.items:
            return []
        oldest = min(payload.received_ns for payload in payloads)
        return [Payload(Signal.TRACES, assembler.build(requests), assembler.items, oldest)]

    def _reason(self, scored: Any, row: int) -> str:
        return self.scorer.reason(int(scored.detector[row]), scored.features[row].tolist())

    def _add_recalled(self, assembler: Assembler, requests: list[Any], recalled: list[Recalled]) -> None:
        """Earlier spans of critical traces, untouched but for the context tags; their requests
        are parsed again and appended to ``requests`` (rare: critical traces only)."""
        if not recalled:
            return
        suffix = plain_suffix(CRITICAL_CONTEXT)
        for item in recalled:
            r = len(requests)
            requests.append(skeleton(item.data))
            for start, end, resource, scope in zip(
                item.start.tolist(),
                item.end.tolist(),
                item.resource.tolist(),
                item.scope.tolist(),
                strict=True,
            ):
                span = item.data[start:end]
                state = state_field(SpanState.FromString(span).trace_state, 0)
                assembler.add((r, resource, scope), span + suffix + state)

    # -- fail open and periodic output ---------------------------------------------------------

    def fail_open(self, payloads: Sequence[Payload], reason: str) -> list[Payload]:
        out = []
        for payload in payloads:
            try:
                # Appended to each span's bytes: nothing is decoded (a fifth of the cost of
                # merging the tag into every span of the parsed request and re-encoding it).
                data = tag_every_item(payload.data, _FAIL_OPEN_TAG)
            except Exception:  # unreadable: forward it as it came, the receiver accepted it
                out.append(payload)
                continue
            out.append(Payload(Signal.TRACES, data, payload.items, payload.received_ns))
        return out

    def tick(self, now_ns: int) -> list[Payload]:
        self.settle()
        self._metrics.calibration_warm.labels("traces").set(1 if self.scorer.warm else 0)
        if self._summaries is None or not self._flush_summaries or self._summaries.empty:
            return []
        data, points = self._summaries.flush_counted(now_ns)
        self._summary_series = np.zeros(0, dtype=np.int64)  # summary ids are valid for one interval
        if not data:
            return []
        return [Payload(Signal.METRICS, data, points, time.monotonic_ns())]

    def close(self) -> None:
        self.settle()
        self.scorer.close()


_NORMAL = int(Severity.NORMAL)
_ANOMALOUS = (int(Severity.ANOMALY), int(Severity.CRITICAL))  # the levels counted in anomalies


@cache
def _learning_kernels() -> Any:
    """The compiled bookkeeping of the learning step (:mod:`otelai.scoring.learning_numba`), or
    None: numba missing, or ``OTELAI_TRACE_LEARNING_KERNEL`` set to ``numpy``. Loaded when the
    processor is made, with the other kernels."""
    return load_kernels(
        "otelai.scoring.learning_numba", LEARNING_KERNEL_ENV, "trace learning counts with numpy"
    )


def _tally(code: NDArray[np.int8], severity: NDArray[np.int8]) -> tuple[list[int], NDArray[np.intp]]:
    """Spans of each selection code, then of each severity level (a list of ints), and the
    rows of severity normal, in order."""
    kernels = _learning_kernels()
    if kernels is not None and code.dtype == np.int8 and severity.dtype == np.int8:
        counts, normal = kernels.tally(np.ascontiguousarray(code), np.ascontiguousarray(severity))
        tallied: list[int] = counts.tolist()
        return tallied, normal
    codes = np.bincount(code, minlength=len(REASONS))
    levels = np.bincount(severity, minlength=len(Severity))
    return [*codes.tolist(), *levels.tolist()], np.flatnonzero(severity == _NORMAL)


class _Children:
    """The processor's counter children by label, each looked up once, when first counted.

    prometheus_client's ``labels()`` returns the same child every time, for a few microseconds
    a call; a child is made only when first counted, as the lookups did, so the registry shows
    the same samples.
    """

    __slots__ = ("_anomalies", "_metrics", "_selection")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._selection: dict[int, Any] = {}
        self._anomalies: dict[int, Any] = {}

    def selection(self, code: int) -> Any:
        """``otelai_selection_items{signal="traces", decision=REASONS[code]}``."""
        child = self._selection.get(code)
        if child is None:
            child = self._selection[code] = self._metrics.selection_items.labels("traces", REASONS[code])
        return child

    def anomalies(self, level: int) -> Any:
        """``otelai_anomalies{signal="traces", severity=...}`` of a severity level."""
        child = self._anomalies.get(level)
        if child is None:
            child = self._anomalies[level] = self._metrics.anomalies.labels("traces", Severity(level).tag)
        return child
