"""OpenTelemetry SDK -> otelai (scoring traces) -> rotel -> sink: the AI data path end to end.

Three services instrumented with the real SDK (one ``TracerProvider`` each, batch span
processors, the OTLP gRPC exporter) send six-span traces through otelai and a real rotel
collector to the sink. After a warm-up of normal traffic, anomalous traces are injected (a
latency outlier, an error burst on an operation that never fails, a new error type), each
service flushing its part of a trace before the next service ends its spans, so the critical
span arrives after its trace's first spans and before its last. At the sink: the injected
traces arrive tagged (the critical ones whole), normal traffic arrives at the sampled rate,
and the forwarded spans plus the ``otelai.dropped.spans`` summaries add up to what was sent.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context

from otelai.config import Selection
from otelai.decision import sampling

from .components import Rotel
from .service import OtelaiService
from .sink import OtlpSink
from .util import wait_until

pytestmark = pytest.mark.slow

RATE = 0.05  # the default normal_sample_rate
THRESHOLD = sampling.threshold_for(RATE)
ANOMALY = Selection().anomaly_threshold  # the defaults
SERVICES = ("frontend", "cart", "payment")
SLOW, FAILING, NEW_ERROR = "cart/HGET", "payment/PaymentService/Charge", "cart/CartService/GetCart"
WARM_UP = 1500  # traces
ERROR_FEATURES = ("error_surprise", "is_error", "has_exception", "grpc_error", "http_5xx")

# (service, span name, kind, median ms, attributes, parent position)
SHAPE: tuple[tuple[str, str, SpanKind, float, dict[str, Any], int], ...] = (
    ("frontend", "GET /checkout", SpanKind.SERVER, 40.0, {"http.response.status_code": 200}, -1),
    ("frontend", "CartService/GetCart", SpanKind.CLIENT, 8.0, {}, 0),
    ("cart", "CartService/GetCart", SpanKind.SERVER, 6.0, {"rpc.grpc.status_code": 0}, 1),
    ("cart", "HGET", SpanKind.CLIENT, 1.0, {"db.system.name": "redis"}, 2),
    ("frontend", "PaymentService/Charge", SpanKind.CLIENT, 20.0, {}, 0),
    ("payment", "PaymentService/Charge", SpanKind.SERVER, 15.0, {"rpc.grpc.status_code": 0}, 4),
)

# Defaults but for small warm-ups (every score enters the calibration window), summaries every
# second, and a latency target no shared CI machine misses (a batch that waits past it is
# forwarded unscored, by design).
CONFIG = """
exporters:
  otlp:
    endpoint: "{endpoint}"
    tls: {{insecure: true}}
    retry_on_failure: {{initial_interval: 100ms, max_interval: 1s, max_elapsed_time: 60s}}
scoring:
  signals: [traces]
  calibration: {{window: 8192, min_samples: 200, sample_rate: 1.0}}
  pca: {{min_samples: 500}}
  batching: {{latency_target: 2s}}
  worker_process: {worker_process}
summaries:
  interval: 1s
"""


class SeededIds(IdGenerator):
    """Seeded ids; with ``unsampled`` set, trace ids outside the consistent sample."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.unsampled = False

    def generate_span_id(self) -> int:
        return self.rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        while True:
            trace_id = self.rng.getrandbits(128)
            if trace_id and (not self.unsampled or trace_id & (2**56 - 1) < THRESHOLD):
                return trace_id


@dataclass
class Services:
    """One instrumented process per service, exporting to ``endpoint``."""

    endpoint: str
    seed: int = 1
    ids: SeededIds = field(init=False)
    providers: dict[str, TracerProvider] = field(default_factory=dict)
    sent: Counter[tuple[str, str]] = field(default_factory=Counter)
    traces: dict[int, list[tuple[str, str, int]]] = field(default_factory=dict)  # (service, name, span id)

    def __post_init__(self) -> None:
        self.ids = SeededIds(self.seed)
        self.rng = np.random.default_rng(self.seed)
        self.clock = 1_700_000_000_000_000_000
        for service in SERVICES:
            provider = TracerProvider(
                resource=Resource.create({"service.name": service}), id_generator=self.ids
            )
            exporter = OTLPSpanExporter(endpoint=f"http://{self.endpoint}", insecure=True, timeout=10)
            provider.add_span_processor(
                BatchSpanProcessor(
                    exporter, max_queue_size=100_000, schedule_delay_millis=50, max_export_batch_size=256
                )
            )
            self.providers[service] = provider

    def trace(
        self,
        *,
        slow: str | None = None,
        error: str | None = None,
        new_error: str | None = None,
        flush_between: bool = False,
    ) -> int:
        """One trace; an injected one is outside the sample, its other spans at their medians,
        and with ``flush_between`` each service's spans are exported before the next ends its own."""
        injected = bool(slow or error or new_error)
        self.ids.unsampled = injected
        self.clock += 1_000_000
        spans: list[tuple[str, str, Span, int]] = []
        for position, (service, name, kind, median, attributes, parent) in enumerate(SHAPE):
            key = f"{service}/{name}"
            noise = float(np.exp(self.rng.normal(0.0, 0.25)))
            millis = median * (1.0 if injected else noise) * (50.0 if key == slow else 1.0)
            context = Context() if parent < 0 else set_span_in_context(spans[parent][2])
            start = self.clock + position * 1000
            span = (
                self.providers[service]
                .get_tracer("shop")
                .start_span(name, context=context, kind=kind, start_time=start, attributes=attributes)
            )
            if key == error:
                span.set_status(Status(StatusCode.ERROR, "charge failed"))
            if key == new_error:
                span.set_attribute("rpc.grpc.status_code", 4)
                span.add_event("exception", {"exception.type": "DeadlineExceeded"}, timestamp=start)
                span.set_status(Status(StatusCode.ERROR, "deadline exceeded"))
            spans.append((service, name, span, start + int(millis * 1e6)))
        self.ids.unsampled = False
        trace_id = spans[0][2].get_span_context().trace_id
        self.traces[trace_id] = []
        for service in SERVICES:  # the order their spans reach otelai in, when flushed between
            for owner, name, span, end in reversed(spans):
                if owner == service:
                    span.end(end_time=end)
                    self.sent[(service, name)] += 1
                    self.traces[trace_id].append((service, name, span.get_span_context().span_id))
            if flush_between:
                self.providers[service].force_flush()
        return trace_id

    def flush(self) -> None:
        for provider in self.providers.values():
            assert provider.force_flush(timeout_millis=30_000)

    def shutdown(self) -> None:
        for provider in self.providers.values():
            provider.shutdown()


@dataclass
class Arrived:
    service: str
    name: str
    span_id: int
    trace_id: int
    trace_state: str
    tags: dict[str, Any]


def arrived(sink: OtlpSink) -> list[Arrived]:
    out = []
    for request in sink.requests("traces"):
        for rs in request.request.resource_spans:
            service = next(a.value.string_value for a in rs.resource.attributes if a.key == "service.name")
            for ss in rs.scope_spans:
                for span in ss.spans:
                    tags = {
                        kv.key: getattr(kv.value, str(kv.value.WhichOneof("value")))
                        for kv in span.attributes
                        if kv.key.startswith("otelai.")
                    }
                    out.append(
                        Arrived(
                            service,
                            span.name,
                            int.from_bytes(span.span_id, "big"),
                            int.from_bytes(span.trace_id, "big"),
                            span.trace_state,
                            tags,
                        )
                    )
    return out


def dropped(sink: OtlpSink) -> Counter[tuple[str, str]]:
    counts: Counter[tuple[str, str]] = Counter()
    for request in sink.requests("metrics"):
        for rm in request.request.resource_metrics:
            service = next(
                (a.value.string_value for a in rm.resource.attributes if a.key == "service.name"), ""
            )
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    if metric.name == "otelai.dropped.spans":
                        for point in metric.sum.data_points:
                            counts[(service, point.attributes[0].value.string_value)] += point.as_int
    return counts


# In the service's process, and in its scoring worker process (scoring.worker_process).
@pytest.mark.parametrize("worker_process", [False, True], ids=["in_process", "worker_process"])
def test_anomalies_arrive_tagged_and_the_rest_is_sampled_and_summarised(
    worker_process: bool,
    caplog: pytest.LogCaptureFixture,
    sink: OtlpSink,
    rotel_factory: Callable[..., Rotel],
    otelai_service: Callable[..., OtelaiService],
) -> None:
    rotel = rotel_factory(f"http://{sink.grpc_endpoint}")
    service = otelai_service(
        CONFIG.format(endpoint=rotel.grpc_endpoint, worker_process="true" if worker_process else "false")
    )
    shop = Services(service.grpc_target)
    children = Path(f"/proc/{service.pid}/task/{service.pid}/children").read_text().split()
    assert len(children) == (1 if worker_process else 0)  # the scoring worker
    injected: dict[int, str] = {}
    try:
        for _ in range(WARM_UP):  # 9000 spans: the first scores leave the calibration window
            shop.trace()
        shop.flush()
        # Each kind of anomaly, with enough normal traffic between them that none calibrates another.
        for kind, injection in (
            (SLOW, {"slow": SLOW}),
            (NEW_ERROR, {"new_error": NEW_ERROR}),
            (FAILING, {"error": FAILING}),
        ):
            for _ in range(3 if kind == FAILING else 1):  # the error burst: three in a row
                injected[shop.trace(**injection, flush_between=True)] = kind
            for _ in range(400):
                shop.trace()
            shop.flush()
    finally:
        shop.shutdown()
    total = sum(shop.sent.values())
    failed = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not failed, f"the SDK could not export everything: {failed[:3]}\n{service.log_tail(3000)}"

    def complete() -> bool:
        forwarded = Counter((a.service, a.name) for a in arrived(sink))
        return forwarded + dropped(sink) == shop.sent

    # Summaries add up: forwarded + dropped == sent, per (service, span name).
    wait_until(
        complete,
        timeout=30,
        message=lambda: (
            f"sent {total}, forwarded {len(arrived(sink))}, dropped {sum(dropped(sink).values())}; "
            f"over: {Counter((a.service, a.name) for a in arrived(sink)) + dropped(sink) - shop.sent}, "
            f"under: {shop.sent - Counter((a.service, a.name) for a in arrived(sink)) - dropped(sink)}, "
            f"fail_open: {service.metric('otelai_fail_open_items_total', 0.0)}, "
            f"received: {service.metric('otelai_receiver_items_total', 0.0, signal='traces')}, "
            f"refused: {service.metric('otelai_receiver_refused_requests_total', 0.0)}, "
            f"exported: {service.metric('otelai_exporter_items_total', 0.0, signal='traces')}, "
            f"recalled: {service.metric('otelai_selection_items_total', signal='traces', decision='critical_context')}\n"
            f"{service.log_tail(3000)}"
        ),
    )
    spans = arrived(sink)
    assert Counter(a.span_id for a in spans).most_common(1)[0][1] == 1  # nothing twice
    by_trace: dict[int, list[Arrived]] = {}
    for a in spans:
        by_trace.setdefault(a.trace_id, []).append(a)

    # The injected traces arrive tagged; critical ones whole.
    critical_traces = 0
    for trace_id, kind in injected.items():
        mine = {a.span_id: a for a in by_trace.get(trace_id, [])}
        service_name, span_name = kind.split("/", 1)
        target = next(sid for s, n, sid in shop.traces[trace_id] if (s, n) == (service_name, span_name))
        assert target in mine, f"{kind} of trace {trace_id:032x} did not arrive"
        tags = mine[target].tags
        assert tags["otelai.anomaly.severity"] in ("anomaly", "critical"), tags
        assert tags["otelai.anomaly.score"] >= ANOMALY
        features = ("latency_z", "log_duration_us") if kind == SLOW else ERROR_FEATURES
        assert any(f in tags["otelai.anomaly.reason"] for f in features), tags
        assert mine[target].trace_state == "ot=th:0"
        if tags["otelai.anomaly.severity"] == "critical":
            critical_traces += 1
            assert set(mine) == {sid for _, _, sid in shop.traces[trace_id]}
            assert {a.tags["otelai.selection.reason"] for a in mine.values()} <= {
                "anomaly",
                "critical_context",
            }
            assert all(a.trace_state == "ot=th:0" for a in mine.values())
    assert critical_traces >= 2  # the latency outlier and the new error type at least
    assert service.metric("otelai_selection_items_total", signal="traces", decision="critical_context") >= 5

    # Normal traffic: exactly the traces in the consistent sample arrive whole, at the rate.
    normal = [t for t in shop.traces if t not in injected]
    sampled = [t for t in normal if t & (2**56 - 1) >= THRESHOLD]
    spread = 4 * math.sqrt(len(normal) * RATE * (1 - RATE))
    assert abs(len(sampled) - len(normal) * RATE) <= spread
    state = f"ot=th:{sampling.encode_threshold(THRESHOLD)}"
    for trace_id in sampled:
        whole = by_trace.get(trace_id, [])
        assert {a.span_id for a in whole} == {sid for _, _, sid in shop.traces[trace_id]}
        assert all(a.trace_state == state for a in whole if a.tags["otelai.selection.reason"] == "sampled")
    sampled_set = set(sampled)
    for trace_id in normal:
        if trace_id not in sampled_set:
            reasons = {a.tags["otelai.selection.reason"] for a in by_trace.get(trace_id, [])}
            assert reasons <= {"anomaly", "critical_context"}
    # After the warm-up, what leaves is the sample, the rarest spans tagged anomalous and the
    # traces of the critical ones: about 7% of normal traffic here, more while the detectors
    # adapt to a change (as after the injections), far below all of it.
    after = normal[WARM_UP:]
    sent_after = sum(len(shop.traces[t]) for t in after)
    forwarded_after = sum(len(by_trace.get(t, [])) for t in after)
    assert sum(len(shop.traces[t]) for t in sampled if t in set(after)) <= forwarded_after
    assert forwarded_after <= 0.2 * sent_after
    assert service.metric("otelai_receiver_items_total", signal="traces") == total
