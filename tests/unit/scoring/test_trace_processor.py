"""The trace scoring path end to end on a seeded workload: tags, selection, trace context, summaries.

A :class:`TraceProcessor` with small warm-ups learns a workload of six-span traces over four
services, then sees injected anomalies. What it forwards is parsed back with the OTLP classes.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from prometheus_client import CollectorRegistry

from otelai.config import Config, Selection, load_config
from otelai.decision import sampling
from otelai.decision.summaries import DroppedSummaries
from otelai.detectors.pca import PcaDetector
from otelai.pipeline import Payload
from otelai.scoring.traces import TraceProcessor
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

from .trace_workload import Trace, Workload, interleave, per_service, request, span_count

RATE = 0.1
ANOMALY, CRITICAL = Selection().anomaly_threshold, Selection().critical_threshold  # the defaults
SLOW, FAILING, NEW_ERROR = "cart/HGET", "payment/PaymentService/Charge", "cart/CartService/GetCart"
FLAKY = "frontend/GET /checkout"  # fails a quarter of the time in normal traffic
SERVICES = ("frontend", "cart", "payment")


def make_config(extra: str = "") -> Config:
    """Defaults but for small warm-ups (every score enters the calibration window, which holds
    enough scores for two detectors to attest "critical" at 0.9995: 2 / 4097 <= 5e-4)."""
    return load_config(
        text=f"""
scoring:
  signals: [traces]
  calibration: {{window: 4096, min_samples: 200, sample_rate: 1.0}}
  pca: {{min_samples: 500}}
selection:
  normal_sample_rate: {RATE}
{extra}
"""
    )


@dataclass
class Forwarded:
    """A span as it left otelai."""

    service: str
    span: Span
    tags: dict[str, Any]

    @property
    def reason(self) -> str:
        return str(self.tags.get("otelai.selection.reason"))

    @property
    def severity(self) -> str:
        return str(self.tags.get("otelai.anomaly.severity", "normal"))


@dataclass
class Harness:
    processor: TraceProcessor
    registry: CollectorRegistry
    summaries: DroppedSummaries
    forwarded: list[Forwarded] = field(default_factory=list)
    received: list[tuple[str, Span]] = field(default_factory=list)
    metric_requests: list[ExportMetricsServiceRequest] = field(default_factory=list)
    baseline: dict[tuple[str, tuple[tuple[str, str], ...]], float] = field(default_factory=dict)

    def batch(self, requests: Iterable[ExportTraceServiceRequest]) -> list[Forwarded]:
        """One batch of requests through the processor; returns what it forwarded."""
        payloads = []
        for req in requests:
            for rs in req.resource_spans:
                service = rs.resource.attributes[0].value.string_value
                self.received.extend((service, span) for ss in rs.scope_spans for span in ss.spans)
            payloads.append(Payload(Signal.TRACES, req.SerializeToString(), span_count([req])))
        out: list[Forwarded] = []
        for payload in self.processor.process(payloads):
            assert payload.signal is Signal.TRACES
            out.extend(parse_forwarded(payload))
        self.forwarded.extend(out)
        self._settle()
        return out

    def stream(
        self,
        workload: Workload,
        batches: int,
        per_batch: int,
        *,
        extra: dict[int, list[ExportTraceServiceRequest]] | None = None,
        seed: int = 0,
    ) -> list[Trace]:
        """``batches`` groups of normal traces, each trace split over two batches half the time
        (one batch more in all); ``extra[i]`` are requests added to batch ``i``."""
        groups = [workload.traces(per_batch) for _ in range(batches)]
        for i, requests in enumerate(interleave(groups, np.random.default_rng(seed))):
            self.batch([*requests, *(extra or {}).get(i, [])])
        return [trace for group in groups for trace in group]

    def _settle(self) -> None:
        # The PCA fit runs in a thread; waiting for it keeps every run the same.
        for detector in self.processor.scorer.detectors:
            if isinstance(detector, PcaDetector):
                detector.wait_fitted()

    def tick(self) -> None:
        for payload in self.processor.tick(sampling_now()):
            assert payload.signal is Signal.METRICS
            self.metric_requests.append(ExportMetricsServiceRequest.FromString(payload.data))

    def reset(self) -> None:
        """Forget what was seen so far; counters count from here."""
        self.forwarded.clear()
        self.received.clear()
        self.metric_requests.clear()
        self.baseline = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in self.registry.collect()
            for sample in family.samples
        }

    def counter(self, name: str, **labels: str) -> float:
        """What counter sample ``name{labels}`` counted since the last :meth:`reset`."""
        value = self.registry.get_sample_value(name, labels) or 0.0
        return value - self.baseline.get((name, tuple(sorted(labels.items()))), 0.0)

    def selection(self, decision: str) -> float:
        return self.counter("otelai_selection_items_total", signal="traces", decision=decision)


def sampling_now() -> int:
    return 1_800_000_000_000_000_000


def parse_forwarded(payload: Payload) -> Iterator[Forwarded]:
    request = ExportTraceServiceRequest.FromString(payload.data)
    assert span_count([request]) == payload.items
    for rs in request.resource_spans:
        service = rs.resource.attributes[0].value.string_value
        for ss in rs.scope_spans:
            for span in ss.spans:
                tags = {}
                for kv in span.attributes:
                    if kv.key.startswith("otelai."):
                        kind = kv.value.WhichOneof("value")
                        assert kind is not None
                        assert kv.key not in tags, f"tag {kv.key} written twice"
                        tags[kv.key] = getattr(kv.value, kind)
                yield Forwarded(service, span, tags)


@contextmanager
def harness(
    config: Config | None = None, *, warm_batches: int = 30, seed: int = 7, defer: bool = False
) -> Iterator[Harness]:
    """A processor warmed up on ``warm_batches`` batches of 30 normal traces, then reset;
    ``defer``: it learns from each batch only when the next one arrives (or at a tick)."""
    registry = CollectorRegistry()
    summaries = DroppedSummaries(start_ns=0)
    processor = TraceProcessor(config or make_config(), Metrics(registry), summaries=summaries)
    processor.defer_learning = defer
    h = Harness(processor, registry, summaries)
    try:
        if warm_batches:
            h.stream(Workload(seed, error_rates={FLAKY: 0.25}), warm_batches, 30, seed=seed)
            assert processor.scorer.warm
            assert all(d.ready for d in processor.scorer.detectors)
        h.tick()
        h.reset()
        yield h
    finally:
        processor.close()


def unsampled(workload: Workload, threshold: int, **kwargs: Any) -> Trace:
    """A trace whose id falls outside the sample (so only scoring can forward it)."""
    while True:
        trace = workload.trace(**kwargs)
        if not keep([trace.trace_id], threshold)[0]:
            return trace


def keep(trace_ids: Sequence[bytes], threshold: int) -> list[bool]:
    array = np.frombuffer(b"".join(trace_ids), dtype=np.uint8).reshape(-1, 16)
    return [bool(k) for k in sampling.keep_mask(sampling.randomness(array), threshold)]


def by_trace(forwarded: Iterable[Forwarded]) -> dict[bytes, list[Forwarded]]:
    out: dict[bytes, list[Forwarded]] = {}
    for item in forwarded:
        out.setdefault(item.span.trace_id, []).append(item)
    return out


def span_of(trace: Trace, key: str) -> Span:
    return next(span for service, span in trace.spans if f"{service}/{span.name}" == key)


def binomial_bounds(n: int, p: float, sigmas: float = 4.0) -> tuple[float, float]:
    spread = sigmas * math.sqrt(n * p * (1 - p))
    return n * p - spread, n * p + spread


# -- anomalies are tagged ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("injection", "target", "feature"),
    [
        ({"slow": SLOW}, SLOW, "latency_z"),
        ({"error": FAILING}, FAILING, "error_surprise"),
        ({"new_error": NEW_ERROR}, NEW_ERROR, "error_surprise"),
    ],
    ids=["latency_outlier", "error_on_a_healthy_operation", "new_error_type"],
)
def test_injected_anomalies_are_tagged(injection: dict[str, str], target: str, feature: str) -> None:
    with harness() as h:
        workload = Workload(11)
        injected = [unsampled(workload, h.processor.threshold, **injection) for _ in range(3)]
        h.stream(workload, 2, 30, extra={1: list(per_service(injected))})
        forwarded = {item.span.span_id: item for item in h.forwarded}
        for trace in injected:
            span = span_of(trace, target)
            assert span.span_id in forwarded, f"{target} of {trace.trace_id.hex()} not forwarded"
            item = forwarded[span.span_id]
            assert item.severity in ("anomaly", "critical")
            assert item.tags["otelai.anomaly.score"] >= ANOMALY
            assert feature in item.tags["otelai.anomaly.reason"]
            assert item.tags["otelai.model.version"] == "builtin-0"
            assert item.reason == "anomaly"
            assert item.span.trace_state == "ot=th:0"
        tagged = sum(1 for item in h.forwarded if "otelai.anomaly.severity" in item.tags)
        anomalies = sum(
            h.counter("otelai_anomalies_total", signal="traces", severity=s) for s in ("anomaly", "critical")
        )
        assert tagged == anomalies >= len(injected)


def test_an_error_burst_is_tagged_throughout() -> None:
    with harness() as h:
        workload = Workload(12)
        burst = [unsampled(workload, h.processor.threshold, error=FAILING) for _ in range(10)]
        h.stream(workload, 2, 30, extra={1: list(per_service(burst))})
        forwarded = {item.span.span_id: item for item in h.forwarded}
        for trace in burst:
            item = forwarded[span_of(trace, FAILING).span_id]
            assert item.severity in ("anomaly", "critical")
            assert "error_surprise" in item.tags["otelai.anomaly.reason"]


# -- critical traces are forwarded whole --------------------------------------------------


def test_a_critical_trace_is_forwarded_whole_across_batches() -> None:
    with harness() as h:
        recalled = h.processor.buffer.recalled_spans
        workload = Workload(13)
        critical = unsampled(workload, h.processor.threshold, slow=SLOW, slow_factor=200.0, typical=True)
        parts = {service: [(s, span) for s, span in critical.spans if s == service] for service in SERVICES}
        # Earlier batch: the frontend's spans (dropped then, held in the trace buffer).
        h.stream(workload, 1, 30, extra={1: [request(parts["frontend"])]})
        assert not any(item.span.trace_id == critical.trace_id for item in h.forwarded)
        # Then the cart's spans, with the critical HGET; later, the payment service's spans.
        h.stream(workload, 2, 30, extra={0: [request(parts["cart"])], 2: [request(parts["payment"])]})
        mine = by_trace(h.forwarded)[critical.trace_id]
        assert Counter(item.span.span_id for item in mine) == Counter(critical.span_ids)  # once each
        slow = next(item for item in mine if item.span.span_id == span_of(critical, SLOW).span_id)
        assert slow.severity == "critical" and slow.reason == "anomaly"
        assert slow.tags["otelai.anomaly.score"] >= CRITICAL
        assert all(item.span.trace_state == "ot=th:0" for item in mine)
        context = [item for item in mine if item is not slow]
        assert {item.reason for item in context} == {"critical_context"}
        assert all("otelai.anomaly.severity" not in item.tags for item in context)
        # Recalled spans are the original spans plus the context tag.
        originals = {span.span_id: span for _, span in critical.spans}
        for item in context:
            restored = Span()
            restored.CopyFrom(item.span)
            del restored.attributes[len(originals[item.span.span_id].attributes) :]
            restored.trace_state = ""
            assert restored == originals[item.span.span_id]
        assert h.processor.buffer.recalled_spans - recalled == len(parts["frontend"])


def test_learning_after_forwarding_decides_exactly_as_learning_at_once() -> None:
    """Deferred learning (the service's mode: the stage settles each batch after forwarding
    it) must not change a single decision, tag or summary, across batches and a critical
    trace whose earlier spans are recalled from the buffer."""
    runs = []
    for defer in (False, True):
        with harness(defer=defer) as h:
            workload = Workload(21, error_rates={FLAKY: 0.25})
            critical = unsampled(workload, h.processor.threshold, slow=SLOW, slow_factor=200.0, typical=True)
            front = [(s, span) for s, span in critical.spans if s == "frontend"]
            rest = [(s, span) for s, span in critical.spans if s != "frontend"]
            h.stream(workload, 3, 60, extra={1: [request(front)], 2: [request(rest)]})
            pending = len(h.processor._pending)
            h.tick()
            assert not h.processor._pending
            assert pending == (1 if defer else 0)
            assert {item.span.span_id for item in by_trace(h.forwarded)[critical.trace_id]} == set(
                critical.span_ids
            )
            assert_summaries_add_up(h)
            decisions = {d: h.selection(d) for d in ("dropped", "sampled", "critical_context", "anomaly")}
            seen = [
                (item.span.span_id, item.reason, item.severity, item.tags.get("otelai.anomaly.score"))
                for item in h.forwarded
            ]
            runs.append((seen, decisions, [r.SerializeToString() for r in h.metric_requests]))
    assert runs[0] == runs[1]


def test_spans_older_than_the_decision_wait_are_not_recalled() -> None:
    with harness(make_config("  decision_wait: 0s")) as h:
        workload = Workload(14)
        critical = unsampled(workload, h.processor.threshold, slow=SLOW, slow_factor=200.0, typical=True)
        front = [(s, span) for s, span in critical.spans if s == "frontend"]
        rest = [(s, span) for s, span in critical.spans if s != "frontend"]
        h.stream(workload, 1, 30, extra={0: [request(front)], 1: [request(rest)]})
        forwarded = {item.span.span_id for item in by_trace(h.forwarded)[critical.trace_id]}
        assert forwarded == {span.span_id for _, span in rest}
        assert h.processor.buffer.recalled_spans == 0


# -- normal traffic: a consistent sample ---------------------------------------------------


def test_normal_traffic_is_a_consistent_sample_at_the_rate() -> None:
    with harness() as h:
        workload = Workload(15)
        traces = h.stream(workload, 12, 200)
        threshold = h.processor.threshold
        assert threshold == sampling.threshold_for(RATE)
        expected_state = f"ot=th:{sampling.encode_threshold(threshold)}"
        sampled = dict(
            zip((t.trace_id for t in traces), keep([t.trace_id for t in traces], threshold), strict=True)
        )
        low, high = binomial_bounds(len(traces), RATE)
        assert low <= sum(sampled.values()) <= high
        forwarded = by_trace(h.forwarded)
        for trace in traces:
            mine = forwarded.get(trace.trace_id, [])
            if sampled[trace.trace_id]:
                # A sampled trace arrives whole; its normal spans carry the sampling threshold.
                assert {item.span.span_id for item in mine} == trace.span_ids
                for item in mine:
                    if item.severity == "normal":
                        assert item.reason in ("sampled", "critical_context")
                        if item.reason == "sampled":
                            assert item.span.trace_state == expected_state
                            assert item.tags == {"otelai.selection.reason": "sampled"}
            # Outside the sample, only anomalies and the context of critical ones leave.
            for item in mine:
                if item.severity != "normal":
                    assert item.reason == "anomaly" and item.span.trace_state == "ot=th:0"
                elif not sampled[trace.trace_id]:
                    assert item.reason == "critical_context" and item.span.trace_state == "ot=th:0"
        # Anomalies in normal traffic are about the rarest 1 - ANOMALY of it.
        anomalous = sum(1 for item in h.forwarded if item.severity != "normal")
        assert anomalous <= 3 * (1 - ANOMALY) * len(h.received)
        # What leaves is about the sample rate of what came in.
        assert len(h.forwarded) / len(h.received) < RATE + 4 * (1 - ANOMALY) * 6


def test_a_trace_split_over_many_requests_and_batches_is_kept_or_dropped_whole() -> None:
    with harness() as h, harness(warm_batches=0) as replica:
        workload = Workload(16)
        traces = workload.traces(400)
        spans = [(service, span) for trace in traces for service, span in trace.spans]
        order = np.random.default_rng(3).permutation(len(spans))
        shuffled = [spans[i] for i in order]
        # Every span its own request; batches of 37 requests; every other batch to a second
        # replica (cold: it only samples), as behind a load balancer.
        for number, start in enumerate(range(0, len(shuffled), 37)):
            target = h if number % 2 == 0 else replica
            target.batch([request([item]) for item in shuffled[start : start + 37]])
        forwarded = by_trace(h.forwarded + replica.forwarded)
        normal = [t for t in traces if all(i.severity == "normal" for i in forwarded.get(t.trace_id, []))]
        assert len(normal) > 300
        kept = 0
        for trace in normal:
            ids = {item.span.span_id for item in forwarded.get(trace.trace_id, [])}
            assert ids in (set(), trace.span_ids), f"trace {trace.trace_id.hex()}: {len(ids)} of 6 spans"
            kept += bool(ids)
        low, high = binomial_bounds(len(normal), RATE)
        assert low <= kept <= high


# -- summaries of what was dropped -----------------------------------------------------------


def dropped_points(requests: Iterable[ExportMetricsServiceRequest], name: str) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for req in requests:
        for rm in req.resource_metrics:
            service = next(a.value.string_value for a in rm.resource.attributes if a.key == "service.name")
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name != name:
                        continue
                    if metric.HasField("sum"):
                        for point in metric.sum.data_points:
                            counts[(service, point.attributes[0].value.string_value)] += point.as_int
                    for hist in metric.histogram.data_points:
                        counts[(service, hist.attributes[0].value.string_value)] += hist.count
    return counts


def assert_summaries_add_up(h: Harness) -> None:
    received = Counter((service, span.name) for service, span in h.received)
    forwarded = Counter((item.service, item.span.name) for item in h.forwarded)
    dropped = dropped_points(h.metric_requests, "otelai.dropped.spans")
    assert dropped == received - forwarded
    assert dropped_points(h.metric_requests, "otelai.dropped.duration") == dropped
    received_errors = Counter((s, span.name) for s, span in h.received if span.status.code == 2)
    forwarded_errors = Counter((i.service, i.span.name) for i in h.forwarded if i.span.status.code == 2)
    assert dropped_points(h.metric_requests, "otelai.dropped.errors") == received_errors - forwarded_errors
    assert sum(received_errors.values()) > sum(forwarded_errors.values()) > 0


def test_summaries_count_exactly_the_dropped_spans() -> None:
    with harness() as h:
        workload = Workload(17, error_rates={FLAKY: 0.25})
        for _ in range(6):
            h.stream(workload, 1, 100, extra={0: list(per_service([workload.trace(error=FAILING)]))})
            h.tick()
        assert len(h.metric_requests) == 6
        assert_summaries_add_up(h)


def test_summaries_count_earlier_spans_of_critical_traces_once() -> None:
    with harness() as h:
        recalled = h.processor.buffer.recalled_spans
        workload = Workload(18, error_rates={FLAKY: 0.25})
        for round_ in range(3):
            # Rounds apart by more than the calibration window (4,800 spans): each outlier is
            # the only one, beyond the window, so critical for its whole trace (p * 6 <= 5e-4).
            critical = unsampled(workload, h.processor.threshold, slow=SLOW, slow_factor=200.0, typical=True)
            front = [(s, span) for s, span in critical.spans if s == "frontend"]
            rest = [(s, span) for s, span in critical.spans if s != "frontend"]
            h.stream(workload, 4, 100, extra={3: [request(front)]})
            if round_ % 2:
                h.tick()  # the earlier spans were counted in an interval already sent
            h.stream(workload, 4, 100, extra={0: [request(rest)]})
            h.tick()
        assert h.processor.buffer.recalled_spans - recalled >= 3 * len(front)
        assert_summaries_add_up(h)


def test_summaries_follow_a_shared_table_flushed_by_another_stage() -> None:
    with harness() as h:
        workload = Workload(19)
        h.stream(workload, 2, 50)
        h.summaries.flush()  # the logs stage flushed the shared table
        h.reset()
        h.stream(workload, 2, 50)
        h.tick()
        received = Counter((service, span.name) for service, span in h.received)
        forwarded = Counter((item.service, item.span.name) for item in h.forwarded)
        assert dropped_points(h.metric_requests, "otelai.dropped.spans") == received - forwarded


# -- accounting and failing open -------------------------------------------------------------


def test_selection_metrics_add_up_to_the_spans_received() -> None:
    with harness() as h:
        recalled = h.processor.buffer.recalled_spans
        workload = Workload(20)
        critical = unsampled(workload, h.processor.threshold, slow=SLOW, slow_factor=200.0, typical=True)
        front = [(s, span) for s, span in critical.spans if s == "frontend"]
        rest = [(s, span) for s, span in critical.spans if s != "frontend"]
        h.stream(workload, 4, 100, extra={2: [request(front)], 3: [request(rest)]})
        decisions = {d: h.selection(d) for d in ("dropped", "sampled", "critical_context", "anomaly")}
        # Spans recalled for a critical trace count as dropped, then as critical context.
        recalled = h.processor.buffer.recalled_spans - recalled
        assert recalled >= len(front)
        assert sum(decisions.values()) == len(h.received) + recalled
        reasons = Counter(item.reason for item in h.forwarded)
        assert {d: v for d, v in decisions.items() if d != "dropped"} == {
            d: reasons[d] for d in ("sampled", "critical_context", "anomaly")
        }


def test_fail_open_tags_every_span_and_loses_nothing() -> None:
    with harness(warm_batches=0) as h:
        traces = Workload(21).traces(30)
        requests = list(per_service(traces))
        payloads = [Payload(Signal.TRACES, r.SerializeToString(), span_count([r])) for r in requests]
        out = h.processor.fail_open(payloads, "too_slow")
        assert [p.items for p in out] == [p.items for p in payloads]
        items = [item for payload in out for item in parse_forwarded(payload)]
        assert {item.span.span_id for item in items} == {i for t in traces for i in t.span_ids}
        assert all(item.tags == {"otelai.selection.reason": "fail_open"} for item in items)
        originals = {span.span_id: span for t in traces for _, span in t.spans}
        for item in items:
            assert len(item.span.attributes) == len(originals[item.span.span_id].attributes) + 1


def test_an_unreadable_request_is_forwarded_as_it_came() -> None:
    with harness(warm_batches=0) as h:
        good = list(per_service(Workload(22).traces(5)))
        junk = Payload(Signal.TRACES, b"\x0a\xff\xff\xff\xff\x0f", 3)
        payloads = [Payload(Signal.TRACES, good[0].SerializeToString(), span_count(good[:1])), junk]
        out = h.processor.process(payloads)
        assert junk in out
        assert h.selection("fail_open") == 3
        assert sum(p.items for p in out if p is not junk) <= span_count(good[:1])
