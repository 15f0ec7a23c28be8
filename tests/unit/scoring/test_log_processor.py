"""The logs processor end to end on real OTLP requests: warm-up, a new error template burst,
consistent sampling by trace id, tags, summaries of the dropped, fail open."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from prometheus_client import CollectorRegistry

from otelai.config import Config, load_config
from otelai.decision import sampling
from otelai.decision.actions import Alerter, MitigationHook
from otelai.decision.summaries import DroppedSummaries
from otelai.detectors.pca import PcaDetector
from otelai.pipeline import Payload
from otelai.scoring.logs import LogProcessor, RecordBytes
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

RATE = 0.2
# Lower than the default (0.995): the records of one template share their per-template surprise,
# and a block of them that tops the calibration window scores 1.0 all together, so some 1% of
# the combined window sits at 1.0 and caps the best score near 0.995 (see the report on Scorer).
ANOMALY = 0.95
WARM_BATCHES = 80
# Seconds between batches: the rate features' slow window (300 s) settles within the warm-up.
STEP = 30.0


def _config(rate: float = RATE, anomaly: float = ANOMALY, critical: float = 0.99) -> Config:
    # Small windows so that a short test warms up; PCA fitted once the rate features settled.
    return load_config(
        text=f"""
selection: {{normal_sample_rate: {rate}, anomaly_threshold: {anomaly}, critical_threshold: {critical}}}
scoring:
  calibration: {{window: 1024, min_samples: 64, sample_rate: 0.25}}
  pca: {{min_samples: 4000, reservoir_size: 4096, refit_every: 1000000}}
  model_version: test-7
"""
    )


NORMAL = (
    "user {} logged in from 10.0.{}.{}",
    "GET /api/cart/{} returned 200 in {} ms",
    "cache hit for key product:{} shard {}",
    "scheduled job {} completed in {} ms",
    "connection pool size {} active {}",
    "payment {} authorised amount {}",
    "inventory reserved sku {} qty {}",
    "email queued for order {} attempt {}",
)
BURST = "FATAL payment gateway connection refused after {} retries: upstream unavailable {}"
SERVICES = ("checkout", "cart")
TAGS = {
    "otelai.anomaly.score",
    "otelai.anomaly.severity",
    "otelai.anomaly.reason",
    "otelai.model.version",
    "otelai.selection.reason",
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Traffic:
    """Seeded log traffic: traces span two consecutive batches; a fifth of records has no trace."""

    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))
    seq: int = 0
    batches: int = 0
    carry: list[bytes] = field(default_factory=list)
    sent: dict[str, tuple[bytes, int]] = field(default_factory=dict)  # body -> (trace id, batch)

    def _record(self, template: str, severity: int, trace_id: bytes) -> LogRecord:
        self.seq += 1
        body = template.format(self.seq, int(self.rng.integers(1, 1000)), int(self.rng.integers(0, 9)))
        record = LogRecord(severity_number=severity, time_unix_nano=self.seq)  # type: ignore[arg-type]
        record.body.string_value = body
        record.attributes.add(key="thread", value={"string_value": "main"})
        if trace_id:
            record.trace_id = trace_id
            record.span_id = self.rng.bytes(8)
        self.sent[body] = (trace_id, self.batches)
        return record

    def batch(self, records: int = 200, burst: int = 0) -> list[Payload]:
        """Two requests (one per service, two scopes each) of ``records`` normal records."""
        self.batches += 1
        new = [self.rng.bytes(16) for _ in range(records // 10)]
        traces = [t for t in self.carry + new for _ in range(2)]  # 2 records of a trace a batch
        self.carry = new
        untraced = records - len(traces)
        chosen = [*traces, *[b""] * untraced]
        self.rng.shuffle(chosen)
        built = [self._record(NORMAL[int(self.rng.integers(len(NORMAL)))], 9, t) for t in chosen]
        built += [self._record(BURST, 21, self.rng.bytes(16)) for _ in range(burst)]
        payloads = []
        for number, service in enumerate(SERVICES):
            request = ExportLogsServiceRequest()
            resource_logs = request.resource_logs.add(schema_url="https://opentelemetry.io/schemas/1.26.0")
            resource_logs.resource.attributes.add(key="service.name", value={"string_value": service})
            mine = built[number :: len(SERVICES)]
            for scope_number in range(2):
                scope_logs = resource_logs.scope_logs.add()
                scope_logs.scope.name = f"lib{scope_number}"
                scope_logs.log_records.extend(mine[scope_number::2])
            payloads.append(Payload(Signal.LOGS, request.SerializeToString(), len(mine), request=request))
        return payloads


def _records(payloads: list[Payload]) -> list[tuple[str, str, LogRecord, dict[str, Any]]]:
    """(service, scope name, record, otelai tags) of every record in logs payloads."""
    out = []
    for payload in payloads:
        assert payload.signal is Signal.LOGS
        request = ExportLogsServiceRequest.FromString(payload.data)
        assert payload.items == sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)
        for resource_logs in request.resource_logs:
            service = resource_logs.resource.attributes[0].value.string_value
            assert resource_logs.schema_url == "https://opentelemetry.io/schemas/1.26.0"
            for scope_logs in resource_logs.scope_logs:
                for record in scope_logs.log_records:
                    tags = {
                        a.key: getattr(a.value, a.value.WhichOneof("value") or "string_value")
                        for a in record.attributes
                        if a.key.startswith("otelai.")
                    }
                    kinds = {a.key: a.value.WhichOneof("value") for a in record.attributes}
                    if "otelai.anomaly.score" in tags:
                        assert kinds["otelai.anomaly.score"] == "double_value"
                    assert all(kinds[k] == "string_value" for k in tags if k != "otelai.anomaly.score")
                    out.append((service, scope_logs.scope.name, record, tags))
    return out


def _processor(config: Config, registry: CollectorRegistry, **kwargs: Any) -> LogProcessor:
    return LogProcessor(config, Metrics(registry), **kwargs)


def _warm(processor: LogProcessor, traffic: Traffic, clock: Clock, batches: int) -> None:
    pca = processor.scorer.detectors[1]
    assert isinstance(pca, PcaDetector)
    for _ in range(batches):
        clock.now += STEP
        processor.process(traffic.batch())
        pca.wait_fitted()  # a fit started by this batch is in place for the next: deterministic
    assert pca.ready


def _selected(registry: CollectorRegistry, decision: str) -> float:
    return (
        registry.get_sample_value("otelai_selection_items_total", {"signal": "logs", "decision": decision})
        or 0.0
    )


def test_burst_of_a_new_error_template_is_forwarded_tagged_and_the_rest_sampled(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="otelai.alerts")
    registry, clock, traffic = CollectorRegistry(), Clock(), Traffic()
    summaries = DroppedSummaries(start_ns=0)
    alerter = Alerter(burst=1000, rate=1000.0)
    processor = _processor(
        _config(), registry, summaries=summaries, flush_summaries=True, alerter=alerter, clock=clock
    )
    _warm(processor, traffic, clock, batches=WARM_BATCHES)
    assert processor.scorer.warm
    assert registry.get_sample_value("otelai_calibration_warm", {"signal": "logs"}) == 1.0

    forwarded: list[Payload] = []
    for index in range(20):
        clock.now += STEP
        forwarded += processor.process(traffic.batch(burst=20 if index == 10 else 0))
    kept = _records(forwarded)

    burst = [k for k in kept if k[2].body.string_value.startswith("FATAL")]
    assert len(burst) == 20  # every record of the burst arrives
    for service, _, record, tags in burst:
        assert service in SERVICES and tags.keys() == TAGS
        assert tags["otelai.anomaly.severity"] in ("anomaly", "critical")
        assert tags["otelai.selection.reason"] == "anomaly"
        assert ANOMALY <= tags["otelai.anomaly.score"] <= 1.0
        assert tags["otelai.model.version"] == "test-7"
        assert tags["otelai.anomaly.reason"].split(":")[0] in ("surprise", "pca")
        assert record.severity_number == 21 and record.attributes[0].key == "thread"  # the record itself
    alerts = [r for r in caplog.records if r.name == "otelai.alerts"]
    assert any(str(getattr(r, "operation", "")).startswith("FATAL payment gateway") for r in alerts)
    assert alerter.counts["logged"] >= 1

    # Normal records: kept iff their trace is sampled (all records of a trace together, across
    # batches and requests), or by the record's hash when untraced.
    kept_by_body = {k[2].body.string_value: k[3] for k in kept}
    by_trace: dict[bytes, list[str]] = defaultdict(list)
    untraced: list[str] = []
    for body, (trace_id, batch) in traffic.sent.items():
        if batch > WARM_BATCHES and not body.startswith("FATAL"):
            (by_trace[trace_id] if trace_id else untraced).append(body)
    keep_traces = 0
    for trace_id, bodies in by_trace.items():
        rand = sampling.randomness(np.frombuffer(trace_id, dtype=np.uint8).reshape(1, 16))
        if sampling.keep_mask(rand, processor.threshold)[0]:
            keep_traces += 1
            assert all(b in kept_by_body for b in bodies)  # the whole trace
        else:
            assert all(
                kept_by_body[b]["otelai.selection.reason"] != "sampled" for b in bodies if b in kept_by_body
            )
    _within_binomial(keep_traces, len(by_trace), RATE)
    reasons = [kept_by_body[b]["otelai.selection.reason"] for b in untraced if b in kept_by_body]
    anomalous = len(reasons) - reasons.count("sampled")
    _within_binomial(reasons.count("sampled"), len(untraced) - anomalous, RATE)
    for _, _, _, tags in kept:
        if tags["otelai.selection.reason"] == "sampled":
            assert tags["otelai.anomaly.severity"] == "normal" and "otelai.anomaly.reason" not in tags

    # Every record is accounted for once; the dropped ones in the summaries, per template.
    decisions = {d: _selected(registry, d) for d in ("sampled", "anomaly", "dropped", "critical_context")}
    assert sum(decisions.values()) == len(traffic.sent)
    assert decisions["critical_context"] == 0
    anomalies = sum(
        registry.get_sample_value("otelai_anomalies_total", {"signal": "logs", "severity": s}) or 0.0
        for s in ("anomaly", "critical")
    )
    assert anomalies == decisions["anomaly"]
    ticked = processor.tick(now_ns=10**18)
    assert len(ticked) == 1 and ticked[0].signal is Signal.METRICS
    summary = ExportMetricsServiceRequest.FromString(ticked[0].data)
    counted: dict[tuple[str, str], int] = defaultdict(int)
    for resource_metrics in summary.resource_metrics:
        service = {a.key: a.value.string_value for a in resource_metrics.resource.attributes}["service.name"]
        for metric in resource_metrics.scope_metrics[0].metrics:
            assert metric.name == "otelai.dropped.log_records"
            for point in metric.sum.data_points:
                template = {a.key: a.value.string_value for a in point.attributes}["otelai.log.template"]
                counted[(service, template)] += point.as_int
    assert sum(counted.values()) == decisions["dropped"]
    assert ticked[0].items == sum(
        len(m.sum.data_points) for r in summary.resource_metrics for m in r.scope_metrics[0].metrics
    )
    assert {service for service, _ in counted} == set(SERVICES)
    assert ("checkout", "user <*> logged in from <*>") in counted
    assert processor.tick(now_ns=2 * 10**18) == []
    processor.close()


def _within_binomial(successes: int, trials: int, p: float) -> None:
    assert trials > 100
    sd = math.sqrt(trials * p * (1 - p))
    assert abs(successes - trials * p) <= 5 * sd, (successes, trials)


def test_fail_open_tags_every_record_and_keeps_its_bytes() -> None:
    registry, clock, traffic = CollectorRegistry(), Clock(), Traffic()
    processor = _processor(_config(), registry, clock=clock)
    payloads = traffic.batch(records=40)
    out = processor.fail_open(payloads, "too_slow")
    assert len(out) == 1 and out[0].items == 40
    assert out[0].received_ns == min(p.received_ns for p in payloads)
    kept = _records(out)
    assert len(kept) == 40
    sent = {r.body.string_value: (s, sc, r) for s, sc, r in _records_plain(payloads)}
    for service, scope, record, tags in kept:
        assert tags == {"otelai.selection.reason": "fail_open"}
        original = sent[record.body.string_value]
        assert (service, scope) == original[:2]
        del record.attributes[-1]
        assert record == original[2]
    processor.close()


def _records_plain(payloads: list[Payload]) -> list[tuple[str, str, LogRecord]]:
    return [(s, sc, r) for s, sc, r, _ in _records(payloads)]


def test_unreadable_requests_are_forwarded_as_received_and_counted() -> None:
    registry, clock, traffic = CollectorRegistry(), Clock(), Traffic()
    processor = _processor(_config(), registry, clock=clock)
    good = traffic.batch(records=20)
    garbage = Payload(Signal.LOGS, b"\x0a\x05\xff\xff\xff\xff\xff", 3)
    out = processor.process([good[0], garbage, good[1]])
    assert garbage in out  # untouched: not even the fail-open tags could be written
    assert (
        registry.get_sample_value("otelai_fail_open_items_total", {"signal": "logs", "reason": "unreadable"})
        == 3
    )
    assert _selected(registry, "fail_open") == 3
    assert sum(_selected(registry, d) for d in ("sampled", "anomaly", "dropped")) == 20
    processor.close()


def test_records_follow_critical_traces_and_sampling_is_off_at_rate_zero() -> None:
    from otelai.decision.trace_buffer import CriticalTraces, trace_keys

    registry, clock, traffic = CollectorRegistry(), Clock(), Traffic()
    config = _config(rate=0.0)
    critical = CriticalTraces(ttl=60.0, max_traces=100, clock=clock)
    processor = _processor(config, registry, clock=clock, critical_traces=critical)
    payloads = traffic.batch(records=40)
    followed = next(t for t, _ in traffic.sent.values() if t)
    critical.add(trace_keys(np.frombuffer(followed, dtype=np.uint8).reshape(1, 16)))
    kept = _records(processor.process(payloads))
    assert kept and all(r.trace_id == followed for _, _, r, _ in kept)
    assert {t["otelai.selection.reason"] for _, _, _, t in kept} == {"critical_context"}
    assert _selected(registry, "critical_context") == len(kept)
    assert _selected(registry, "dropped") == 40 - len(kept)
    processor.close()


def test_record_bytes_locate_records_and_trace_ids() -> None:
    traffic = Traffic()
    payloads = traffic.batch(records=30)
    from otelai.features.otlp_layout import ResourceCache

    records = RecordBytes.read([p.data for p in payloads], ResourceCache())
    plain = _records_plain(payloads)
    assert len(records) == len(plain) == 30
    raw = records.buf.tobytes()
    for row, (_, _, record) in enumerate(plain):
        assert raw[records.start[row] : records.end[row]] == record.SerializeToString()
        assert records.trace_id[row].tobytes() == (record.trace_id or bytes(16))
        assert records.has_trace[row] == bool(record.trace_id)
    rand = records.randomness()
    assert (rand < 2**56).all() and np.array_equal(rand, records.randomness())  # deterministic


async def test_critical_records_trigger_the_mitigation_hook(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="otelai.alerts")
    registry, clock, traffic = CollectorRegistry(), Clock(), Traffic()
    config = _config(anomaly=0.9, critical=0.95)
    hook = MitigationHook(command=["true"], dry_run=True, max_runs=5)
    await hook.start()
    try:
        processor = _processor(config, registry, clock=clock, mitigation=hook)
        _warm(processor, traffic, clock, batches=WARM_BATCHES)
        clock.now += STEP
        processor.process(traffic.batch(burst=5))
        processor.close()
    finally:
        await hook.shutdown(grace=5.0)
    assert hook.counts["dry_run"] >= 1
