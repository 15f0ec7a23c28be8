"""Every Prometheus metric otelai reports, defined in one place.

The names are public interface (see DESIGN.md): dashboards and alerts depend on them.
Labels stay low-cardinality. A registry is passed in so tests get a fresh one each.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Receive-to-hand-off latency: sub-millisecond resolution where the SLA lives (< 10 ms).
LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)
BATCH_BUCKETS = (1, 8, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class Metrics:
    """The service's self-telemetry, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.receiver_items = Counter(
            "otelai_receiver_items",
            "Items (spans, metric points, log records) accepted by the receivers.",
            ["signal"],
            registry=registry,
        )
        self.receiver_bytes = Counter(
            "otelai_receiver_bytes",
            "Bytes of accepted requests, as received (after decompression).",
            ["signal"],
            registry=registry,
        )
        self.receiver_refused = Counter(
            "otelai_receiver_refused_requests",
            "Requests refused, by reason (invalid, unauthenticated, too_large, overloaded, stopping, storage).",
            ["signal", "reason"],
            registry=registry,
        )
        self.exporter_items = Counter(
            "otelai_exporter_items",
            "Items handed to exporters, by final outcome (sent, rejected, failed, dropped).",
            ["signal", "outcome"],
            registry=registry,
        )
        self.exporter_bytes = Counter(
            "otelai_exporter_bytes",
            "Bytes sent upstream successfully, before compression.",
            ["signal"],
            registry=registry,
        )
        self.exporter_retries = Counter(
            "otelai_exporter_retries",
            "Export attempts that failed with a retryable error and were retried.",
            ["exporter"],
            registry=registry,
        )
        self.selection_items = Counter(
            "otelai_selection_items",
            "Items by selection decision (forwarded, dropped, ...).",
            ["signal", "decision"],
            registry=registry,
        )
        self.anomalies = Counter(
            "otelai_anomalies",
            "Items tagged anomalous, by severity.",
            ["signal", "severity"],
            registry=registry,
        )
        self.inference_duration = Histogram(
            "otelai_inference_duration_seconds",
            "Model inference time per batch.",
            ["backend"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.pipeline_latency = Histogram(
            "otelai_pipeline_latency_seconds",
            "Time from receipt of a request to its hand-off to the exporters.",
            ["signal"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.sla_violations = Counter(
            "otelai_sla_violations",
            "Requests whose pipeline latency exceeded the latency target.",
            registry=registry,
        )
        self.batch_size = Histogram(
            "otelai_batch_size",
            "Items per scored batch.",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.queue_items = Gauge(
            "otelai_queue_items",
            "Items waiting in a queue (one per exporter sending queue).",
            ["queue"],
            registry=registry,
        )
        self.queue_size = Gauge(
            "otelai_queue_size",
            "What a queue holds, in the unit of its sizer (compare with otelai_queue_capacity).",
            ["queue"],
            registry=registry,
        )
        self.queue_capacity = Gauge(
            "otelai_queue_capacity",
            "Capacity of a queue, in the unit of its sizer.",
            ["queue"],
            registry=registry,
        )
        self.backend_fallbacks = Counter(
            "otelai_backend_fallbacks",
            "Inference backend fallbacks from one backend to the next.",
            ["from", "to"],
            registry=registry,
        )
        self.model_info = Gauge(
            "otelai_model_info",
            "The model version and backend in use (value 1).",
            ["version", "backend"],
            registry=registry,
        )
        self.scoring_fail_open = Counter(
            "otelai_fail_open_items",
            "Items forwarded unscored (fail open), by reason (error, too_slow, unreadable).",
            ["signal", "reason"],
            registry=registry,
        )
        self.alerts = Counter(
            "otelai_alerts",
            "Anomaly alerts by outcome (logged, deduplicated, rate_limited, queue_full, sent, failed).",
            ["severity", "outcome"],
            registry=registry,
        )
        self.mitigations = Counter(
            "otelai_mitigations",
            "Mitigation hook runs by outcome (ran, failed, timeout, rate_limited, cooldown, queue_full, dry_run).",
            ["outcome"],
            registry=registry,
        )
        self.calibration_warm = Gauge(
            "otelai_calibration_warm",
            "1 once a signal's score calibration holds its minimum samples.",
            ["signal"],
            registry=registry,
        )
        self.build_info = Gauge(
            "otelai_build_info",
            "otelai version (value 1).",
            ["version"],
            registry=registry,
        )
