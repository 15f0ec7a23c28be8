"""The learning step's compiled paths against their numpy fallbacks, through the trace processor.

:meth:`TraceProcessor._learn` merges each batch into the span baselines
(:mod:`otelai.features.baseline_numba`), counts it into the dropped-span summaries
(:mod:`otelai.decision.summaries_numba`) and tallies its selection codes and severities
(:mod:`otelai.scoring.learning_numba`). The same stream goes through a processor on the
compiled kernels and one on the numpy paths; everything the learning leaves behind must be the
same, bit for bit: both baselines' state arrays, the calibration windows, what the detectors
learned (the rows of severity normal), the trace buffer, the Prometheus samples and the summaries flushed (and what was forwarded on the way). The
reference run also takes the processor's learning methods as they were before (kept below), so
the buffer's contents and the counters are checked against the per-request conversions and
the per-count ``labels()`` lookups they replaced.

The stream stresses the rare paths: a tiny baseline table (evictions every batch, keys coming
back), an operation past the interner's cap (the overflow key, never stored), spans that end
before they start (read as lasting 0), critical traces recalled from the buffer (taken back out
of the summaries, partly from an interval already flushed), single- and multi-request batches,
and a summaries table flushed by another stage (stale series ids). Non-finite values, which a
batch's durations never are, and keys too sparse for the row map are in
``tests/unit/features/test_baseline_numba.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from otelai.config import Config, load_config
from otelai.decision import sampling, summaries
from otelai.decision.severity import Severity
from otelai.decision.summaries import DroppedSummaries
from otelai.decision.trace_buffer import Recalled
from otelai.detectors.pca import PcaDetector
from otelai.features import baseline
from otelai.features.interner import Interner
from otelai.features.spans import SpanBaselines, update_span_baselines
from otelai.pipeline import Payload
from otelai.scoring import traces
from otelai.scoring.traces import TraceProcessor
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

from .trace_workload import Trace, Workload, interleave, per_service, request, span_count

pytest.importorskip("numba")

SLOW, FLAKY = "cart/HGET", "frontend/GET /checkout"
# Each module's kernel loader; patched to return None, the module takes its numpy path.
KERNELS = ((baseline, "_compiled"), (summaries, "_compiled"), (traces, "_learning_kernels"))
_STATE = ("keys", "weight", "mean", "m2", "count", "last_tick", "last_time", "global_stats")


def make_config() -> Config:
    """Small warm-ups (as the processor tests), so anomalies and critical traces come early."""
    return load_config(
        text="""
scoring:
  signals: [traces]
  calibration: {window: 4096, min_samples: 200, sample_rate: 1.0}
  pca: {min_samples: 500}
selection:
  normal_sample_rate: 0.1
"""
    )


class Clock:
    """Monotonic seconds that move only when the test says: both runs see the same times."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def ns(self) -> int:
        return int(self.now * 1e9)


@dataclass
class Run:
    """What one processor forwarded and left behind."""

    forwarded: list[bytes] = field(default_factory=list)
    flushed: list[bytes] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


def unsampled(workload: Workload, threshold: int, **kwargs: Any) -> Trace:
    """A trace outside the consistent sample (so only its score can forward it)."""
    while True:
        trace = workload.trace(**kwargs)
        array = np.frombuffer(trace.trace_id, dtype=np.uint8).reshape(1, 16)
        if not sampling.keep_mask(sampling.randomness(array), threshold)[0]:
            return trace


def skewed(workload: Workload) -> Trace:
    """A trace two of whose spans end before they start (skewed clocks), by 5 ms and by 1 us:
    both count as lasting 0 (the zero bucket of the summaries)."""
    trace = workload.trace()
    for (_, span), before in zip(trace.spans[1:3], (5_000_000, 1_000), strict=True):
        span.end_time_unix_nano = span.start_time_unix_nano - before
    return trace


def batches(workload: Workload, threshold: int) -> Iterator[tuple[list[ExportTraceServiceRequest], str]]:
    """The stream: ``(requests, then)``, ``then`` one of "", "tick" (this stage flushes the
    summaries) or "shared" (another stage flushes the shared table)."""
    rng = np.random.default_rng(3)
    groups = [workload.traces(30) for _ in range(24)]  # warm-up: calibrated, detectors ready
    for requests in interleave(groups, rng):
        yield requests, ""
    for round_ in range(3):
        critical = unsampled(workload, threshold, slow=SLOW, slow_factor=200.0, typical=True)
        front = [(s, span) for s, span in critical.spans if s == "frontend"]
        rest = [(s, span) for s, span in critical.spans if s != "frontend"]
        extra = {
            0: [request(front), *per_service([skewed(workload)])],
            1: [*per_service([workload.trace(error="payment/PaymentService/Charge")])],
            2: [request(rest)],
        }
        groups = [workload.traces(20) for _ in range(4)]
        for i, requests in enumerate(interleave(groups, rng)):
            then = "tick" if i == 1 else "shared" if i == 3 and round_ == 1 else ""
            yield [*requests, *extra.get(i, [])], then
        # One request a batch (the hop's usual shape), a service's spans of several traces.
        for trace_group in (workload.traces(15), [*workload.traces(10), skewed(workload)]):
            yield [request(pair for trace in trace_group for pair in trace.spans)], ""


# -- the learning step as it was before the compiled bookkeeping, kept as the reference ----------


def _reference_learn(
    self: TraceProcessor,
    stamp: float,
    datas: list[bytes],
    batch: Any,
    features: Any,
    scored: Any,
    keys: Any,
    severity: Any,
    code: Any,
    recalled: list[Recalled],
) -> None:
    update_span_baselines(batch, self.baselines, now=stamp)
    self.scorer.calibrate(scored)
    _reference_remember(self, datas, batch, keys, code != traces.DROPPED)
    self.scorer.learn(features[severity == Severity.NORMAL])
    _reference_count(self, batch, severity, code, recalled)


def _reference_remember(self: TraceProcessor, datas: list[bytes], batch: Any, keys: Any, kept: Any) -> None:
    if self.buffer.wait <= 0:
        return
    bounds = np.searchsorted(batch.request, np.arange(len(datas) + 1))
    for r, data in enumerate(datas):
        rows = slice(bounds[r], bounds[r + 1])
        if bounds[r] == bounds[r + 1]:
            continue
        self.buffer.add(
            data,
            keys[rows],
            batch.span_start[rows],
            batch.span_end[rows],
            batch.resource[rows].astype(np.int64),
            batch.scope[rows].astype(np.int64),
            batch.index[rows].astype(np.int64),
            kept[rows],
        )


def _reference_count(
    self: TraceProcessor, batch: Any, severity: Any, code: Any, recalled: list[Recalled]
) -> None:
    metrics = self._metrics
    counts = np.bincount(code, minlength=len(traces.REASONS))
    for i, reason in enumerate(traces.REASONS):
        if counts[i]:
            metrics.selection_items.labels("traces", reason).inc(int(counts[i]))
    extra = sum(len(r.start) for r in recalled)
    if extra:
        metrics.selection_items.labels("traces", "critical_context").inc(extra)
    for level in (Severity.ANOMALY, Severity.CRITICAL):
        count = int(np.count_nonzero(severity == level))
        if count:
            metrics.anomalies.labels("traces", level.tag).inc(count)
    if self._summaries is not None:
        dropped = code == traces.DROPPED
        if dropped.any():
            series = self._series(batch.operation_id)
            self._summaries.add_spans(series, batch.duration_ns, batch.status_code == 2, dropped)
        if recalled:
            self._forget(recalled)


@contextmanager
def paths(compiled: bool) -> Iterator[None]:
    """The compiled kernels (asserted loaded), or every learning step on numpy with the
    processor's learning methods as they were before them."""
    with pytest.MonkeyPatch.context() as patch:
        for module, name in KERNELS:
            if compiled:
                assert getattr(module, name)() is not None, f"{module.__name__} runs on numpy"
            else:
                patch.setattr(module, name, lambda: None)
        if not compiled:
            patch.setattr(TraceProcessor, "_learn", _reference_learn)
        yield


def run(*, compiled: bool, exponential: int | None) -> Run:
    out = Run()
    clock = Clock()
    with paths(compiled), pytest.MonkeyPatch.context() as patch:
        patch.setattr(traces, "time", SimpleNamespace(monotonic=clock, monotonic_ns=clock.ns))
        registry = CollectorRegistry()
        table = DroppedSummaries(start_ns=0, exponential_max_size=exponential)
        processor = TraceProcessor(make_config(), Metrics(registry), summaries=table)
        processor.defer_learning = True  # as in the service: learn once the batch is forwarded
        processor.interner = Interner(max_operations=5)  # one of the six operations overflows
        processor.baselines = SpanBaselines.create(max_keys=4, min_count=5)  # evictions
        processor.buffer._clock = processor.critical._clock = clock
        workload = Workload(5, error_rates={FLAKY: 0.25})
        for requests, then in batches(workload, processor.threshold):
            clock.now += 0.05
            payloads = [Payload(Signal.TRACES, r.SerializeToString(), span_count([r])) for r in requests]
            out.forwarded += [payload.data for payload in processor.process(payloads)]
            for detector in processor.scorer.detectors:  # the PCA fit runs in a thread
                if isinstance(detector, PcaDetector):
                    detector.wait_fitted()
            if then == "tick":
                out.flushed += [payload.data for payload in processor.tick(clock.ns())]
            elif then == "shared":
                out.flushed.append(table.flush(clock.ns()))
        processor.settle()
        out.state = learned(processor, registry, table)
        out.flushed += [payload.data for payload in processor.tick(clock.ns() + 1)]
        processor.close()
    return out


def learned(
    processor: TraceProcessor, registry: CollectorRegistry, table: DroppedSummaries
) -> dict[str, Any]:
    """Everything the learning steps changed, as comparable values (arrays as their bytes)."""
    state: dict[str, Any] = {}
    for name in ("latency", "errors"):
        snapshot = getattr(processor.baselines, name).snapshot()
        state[name] = {f: np.asarray(getattr(snapshot, f)).tobytes() for f in _STATE} | {
            "tick": snapshot.tick
        }
    state["calibration"] = [
        (
            c._ring[: c._filled].tobytes(),
            c._filled,
            c._next,
            None if c._sorted is None else c._sorted.tobytes(),
        )
        for c in processor.scorer._calibrators
    ]
    state["detectors"] = [detector_state(detector) for detector in processor.scorer.detectors]
    buffer = processor.buffer
    entries = list(buffer._entries)
    state["buffer"] = (
        buffer.bytes,
        buffer.recalled_spans,
        buffer.traces,
        [
            (
                e.serial,
                e.data,
                e.at,
                e.size,
                e.pairs_end,
                *(
                    a.dtype.str + a.tobytes().hex()
                    for a in (e.keys, e.start, e.end, e.resource, e.scope, e.index)
                ),
                e.forwarded.tobytes(),
            )
            for e in entries
        ],
        [buffer.span_counts(e.keys.view(np.uint64)).tobytes() for e in entries],
    )
    state["critical"] = list(processor.critical._expiry.items())
    state["overflowed"] = processor.interner.overflowed
    state["samples"] = sorted(
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")  # when a child was made: wall-clock time
    )
    counts = ("span_counts", "error_counts", "bucket_counts", "duration_sum", "duration_min", "duration_max")
    state["summaries"] = (
        {name: getattr(table, name).tobytes() for name in counts},
        table.spans.keys,
        sorted((str(k), o.buckets.tobytes(), o.millis.tobytes(), o.errors) for k, o in table._owed.items()),
    )
    return state


def detector_state(detector: Any) -> dict[str, Any]:
    """A detector's learned state: its arrays, numbers and generators (the PCA's reservoir)."""
    out: dict[str, Any] = {}
    for name, value in sorted(vars(detector).items()):
        if isinstance(value, np.ndarray):
            out[name] = value.tobytes()
        elif isinstance(value, int | float | str):
            out[name] = value
        elif isinstance(value, np.random.Generator):
            out[name] = value.bit_generator.state
    return out


@pytest.mark.parametrize("exponential", [None, 160], ids=["explicit_buckets", "exponential_buckets"])
def test_compiled_learning_leaves_the_numpy_paths_state_bit_for_bit(exponential: int | None) -> None:
    compiled = run(compiled=True, exponential=exponential)
    reference = run(compiled=False, exponential=exponential)
    # The stream reached the rare paths it is there for.
    assert compiled.state["buffer"][1] > 0, "no span recalled for a critical trace"
    assert any(name == "otelai_anomalies_total" for name, _, _ in compiled.state["samples"])
    assert compiled.state["overflowed"] > 0, "no operation past the interner's cap"
    for key, value in reference.state.items():
        assert compiled.state[key] == value, key
    assert compiled.flushed == reference.flushed
    assert compiled.forwarded == reference.forwarded
