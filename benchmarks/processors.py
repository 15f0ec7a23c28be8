"""Per-item cost of the logs and metrics processors' ``process`` (otelai/scoring/logs.py, metrics.py).

Usage::

    .venv/bin/python benchmarks/processors.py --out benchmarks/results/processors.json

Seeded traffic at the default configuration (``normal_sample_rate`` 0.05, ECDF window 8192 at
sample rate 0.05, PCA on ONNX Runtime CPU): logs of 8 templates, 80% of records with a trace id,
two attributes each, every line unique (``logs_unique_lines``: the template miner and the keyword
counter miss their caches) or drawn from 20 x 20 x 8 lines (``logs_repeating_lines``: most lines
seen before); metrics as gauges per host and cumulative counters per route. Each
processor is warmed until calibrated and PCA is fitted, then ``process`` runs on ``--rounds``
batches of ``--requests`` requests; the JSON has microseconds per record or point (median and
best round), what the logs processor spends on locating the records' bytes and trace ids
(``RecordBytes.read``, a second read of the containers that ``LogBatch`` could hand over), the
fail-open path, and forwarded bytes over received bytes, right after warm-up and, for logs, in a
steady state reached on a simulated clock (``logs_steady_state``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from measure import machine_info
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.metrics.v1 import metrics_pb2
from prometheus_client import CollectorRegistry

from otelai.config import load_config
from otelai.decision.summaries import DroppedSummaries
from otelai.detectors.pca import PcaDetector
from otelai.features.otlp_layout import ResourceCache
from otelai.pipeline import Payload
from otelai.scoring.logs import LogProcessor, RecordBytes
from otelai.scoring.metrics import MetricProcessor
from otelai.signals import Signal, count_items
from otelai.telemetry.metrics import Metrics

TEMPLATES = (
    "user {} logged in from 10.0.{}.{}",
    "GET /api/cart/{} returned 200 in {} ms",
    "cache hit for key product:{} shard {}",
    "scheduled job {} completed in {} ms",
    "connection pool size {} active {}",
    "payment {} authorised amount {}",
    "inventory reserved sku {} qty {}",
    "email queued for order {} attempt {}",
)


class LogTraffic:
    def __init__(self, seed: int, records: int, vocabulary: int = 0) -> None:
        self.rng = np.random.default_rng(seed)
        self.records = records
        self.vocabulary = vocabulary
        self.seq = 0

    def request(self, service: str) -> Payload:
        request = ExportLogsServiceRequest()
        resource_logs = request.resource_logs.add()
        resource_logs.resource.attributes.add(key="service.name", value={"string_value": service})
        scope_logs = resource_logs.scope_logs.add()
        scope_logs.scope.name = "app"
        traces = [self.rng.bytes(16) for _ in range(self.records // 8)]
        for _ in range(self.records):
            self.seq += 1
            record = scope_logs.log_records.add(severity_number=9, time_unix_nano=self.seq)
            template = TEMPLATES[int(self.rng.integers(len(TEMPLATES)))]
            first = int(self.rng.integers(self.vocabulary)) if self.vocabulary else self.seq
            second = int(self.rng.integers(self.vocabulary or 1000))
            record.body.string_value = template.format(first, second, 7)
            record.attributes.add(key="thread", value={"string_value": "main"})
            record.attributes.add(key="logger", value={"string_value": "app.handlers"})
            if self.rng.random() < 0.8:
                record.trace_id = traces[int(self.rng.integers(len(traces)))]
                record.span_id = self.rng.bytes(8)
        return Payload(Signal.LOGS, request.SerializeToString(), self.records, request=request)


class MetricTraffic:
    def __init__(self, seed: int, hosts: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.hosts = hosts
        self.t = 1_700_000_000
        self.totals = np.zeros(hosts)

    def request(self, service: str) -> Payload:
        self.t += 10
        request = ExportMetricsServiceRequest()
        resource_metrics = request.resource_metrics.add()
        resource_metrics.resource.attributes.add(key="service.name", value={"string_value": service})
        scope = resource_metrics.scope_metrics.add()
        scope.scope.name = "meter"
        cpu = scope.metrics.add(name="cpu.utilization")
        counter = scope.metrics.add(name="http.server.requests")
        counter.sum.aggregation_temporality = metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE
        counter.sum.is_monotonic = True
        self.totals += 1000 + 30 * self.rng.standard_normal(self.hosts)
        for host in range(self.hosts):
            attrs = {"host": f"h{host}", "region": "eu"}
            point = cpu.gauge.data_points.add(
                time_unix_nano=self.t * 10**9, as_double=50 + self.rng.standard_normal()
            )
            total = counter.sum.data_points.add(
                time_unix_nano=self.t * 10**9, start_time_unix_nano=10**18, as_double=float(self.totals[host])
            )
            for key, value in attrs.items():
                point.attributes.add(key=key, value={"string_value": value})
                total.attributes.add(key=key, value={"string_value": value})
        return Payload(
            Signal.METRICS, request.SerializeToString(), count_items(Signal.METRICS, request), request=request
        )


def _rounds(run: Callable[[], Any], rounds: int, items: int) -> dict[str, float]:
    timings = []
    for _ in range(rounds):
        begin = time.perf_counter_ns()
        run()
        timings.append((time.perf_counter_ns() - begin) / 1e3 / items)
    return {
        "us_per_item_median": round(statistics.median(timings), 4),
        "us_per_item_best": round(min(timings), 4),
    }


def _wait_pca(scorer: Any) -> None:
    for detector in scorer.detectors:
        if isinstance(detector, PcaDetector):
            detector.wait_fitted()


def bench_logs(args: argparse.Namespace, vocabulary: int) -> dict[str, Any]:
    config = load_config(text="")
    traffic = LogTraffic(args.seed, args.records, vocabulary)
    processor = LogProcessor(config, Metrics(CollectorRegistry()), summaries=DroppedSummaries())
    services = [f"svc-{i}" for i in range(args.requests)]
    batches = [[traffic.request(s) for s in services] for _ in range(args.rounds)]
    items = args.requests * args.records
    warm = 0
    while not (processor.scorer.warm and all(d.ready for d in processor.scorer.detectors)) and warm < 400:
        processor.process([traffic.request(s) for s in services])
        _wait_pca(processor.scorer)
        warm += 1
    pending = iter(batches)
    sent = received = 0

    def run() -> None:
        nonlocal sent, received
        batch = next(pending)
        out = processor.process(batch)
        received += sum(len(p.data) for p in batch)
        sent += sum(len(p.data) for p in out)

    result = {
        "process": _rounds(run, args.rounds, items),
        "record_bytes_read": _rounds(
            lambda: RecordBytes.read([p.data for p in batches[0]], ResourceCache()), args.rounds, items
        ),
        "fail_open": _rounds(lambda: processor.fail_open(batches[0], "too_slow"), args.rounds, items),
        "warm_up_batches": warm,
        "forwarded_bytes_ratio": round(sent / received, 4),
    }
    processor.close()
    return result


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def steady_state_logs(args: argparse.Namespace) -> dict[str, Any]:
    """Forwarded bytes and decisions after ``--settle`` batches at ``--log-rate`` records/s.

    The rate features (slow window 300 s) and the calibration windows need minutes of traffic
    to settle; a simulated clock and a pool of pre-built batches (repeating lines) get there fast.
    """
    registry, clock = CollectorRegistry(), _Clock()
    traffic = LogTraffic(args.seed, args.records, vocabulary=20)
    processor = LogProcessor(
        load_config(text=""), Metrics(registry), summaries=DroppedSummaries(), clock=clock
    )
    services = [f"svc-{i}" for i in range(args.requests)]
    pool = [[traffic.request(s) for s in services] for _ in range(16)]
    step = args.requests * args.records / args.log_rate
    for index in range(args.settle):
        clock.now += step
        processor.process(pool[index % len(pool)])
        _wait_pca(processor.scorer)

    def decisions() -> dict[str, float]:
        labels = ("sampled", "anomaly", "critical", "dropped")
        return {
            d: registry.get_sample_value("otelai_selection_items_total", {"signal": "logs", "decision": d})
            or 0.0
            for d in labels
        }

    before, sent, received = decisions(), 0, 0
    for index in range(args.rounds):
        clock.now += step
        batch = pool[index % len(pool)]
        received += sum(len(p.data) for p in batch)
        sent += sum(len(p.data) for p in processor.process(batch))
    after = decisions()
    total = sum(after.values()) - sum(before.values())
    processor.close()
    return {
        "settle_batches": args.settle,
        "forwarded_bytes_ratio": round(sent / received, 4),
        "decision_share": {d: round((after[d] - before[d]) / total, 4) for d in after},
    }


def bench_metrics(args: argparse.Namespace) -> dict[str, Any]:
    config = load_config(text="")
    traffic = MetricTraffic(args.seed, args.hosts)
    processor = MetricProcessor(config, Metrics(CollectorRegistry()))
    services = [f"svc-{i}" for i in range(args.requests)]
    batches = [[traffic.request(s) for s in services] for _ in range(args.rounds)]
    warm = 0
    while not (processor.scorer.warm and all(d.ready for d in processor.scorer.detectors)) and warm < 400:
        processor.process([traffic.request(s) for s in services])
        _wait_pca(processor.scorer)
        warm += 1
    # The measured batches continue the series in time after the warm-up.
    batches = [[traffic.request(s) for s in services] for _ in range(args.rounds)]
    pending = iter(batches)
    items = sum(p.items for p in batches[0])
    result = {
        "process": _rounds(lambda: processor.process(next(pending)), args.rounds, items),
        "warm_up_batches": warm,
        "points_per_batch": items,
    }
    processor.close()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/processors.json"))
    parser.add_argument("--requests", type=int, default=8, help="requests per batch")
    parser.add_argument("--records", type=int, default=128, help="log records per request")
    parser.add_argument("--hosts", type=int, default=64, help="hosts per metrics request (2 points each)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--settle", type=int, default=300, help="batches before the steady-state logs phase")
    parser.add_argument("--log-rate", type=float, default=20_000.0, help="simulated log records per second")
    args = parser.parse_args(argv)
    results = {
        "logs_unique_lines": bench_logs(args, vocabulary=0),
        "logs_repeating_lines": bench_logs(args, vocabulary=20),
        "logs_steady_state": steady_state_logs(args),
        "metrics": bench_metrics(args),
    }
    report = {
        "benchmark": "processors",
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": vars(args) | {"out": str(args.out)},
        "results": results,
        "notes": [
            "process includes reading, features, both detectors, calibration, selection, tagging and assembly.",
            "record_bytes_read is the part of logs.process a LogBatch exposing its record ranges and trace ids would save.",
            "forwarded_bytes_ratio of the logs_* phases is measured right after calibration warms up (a start-up "
            "transient: rate features still drift); logs_steady_state is after --settle batches.",
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
