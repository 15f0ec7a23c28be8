"""A seeded synthetic trace workload for the scoring tests, built with the OTLP proto classes.

Traces of six spans over four services (a frontend, two backends, a database), parent links
and span kinds as instrumented services produce them, durations drawn from a lognormal
distribution per operation. Every service exports its own spans (one resource per request),
so one trace is spread over several requests, as it is in a real deployment. Anomalies are
injected by trace: a latency outlier, an error burst on an operation that never errors, a new
error type (an exception event with a gRPC status never seen before).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope, KeyValue
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

T0 = 1_700_000_000_000_000_000
SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"
SERVER, CLIENT = Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT


@dataclass(frozen=True)
class Operation:
    service: str
    name: str
    kind: int
    median_ms: float
    attributes: tuple[tuple[str, str | int], ...] = ()


# (operation, parent position in the trace); position 0 is the root.
TRACE_SHAPE: tuple[tuple[Operation, int], ...] = (
    (Operation("frontend", "GET /checkout", SERVER, 40.0, (("http.response.status_code", 200),)), -1),
    (Operation("frontend", "CartService/GetCart", CLIENT, 8.0), 0),
    (Operation("cart", "CartService/GetCart", SERVER, 6.0, (("rpc.grpc.status_code", 0),)), 1),
    (Operation("cart", "HGET", CLIENT, 1.0, (("db.system.name", "redis"),)), 2),
    (Operation("frontend", "PaymentService/Charge", CLIENT, 20.0), 0),
    (Operation("payment", "PaymentService/Charge", SERVER, 15.0, (("rpc.grpc.status_code", 0),)), 4),
)
SIGMA = 0.25  # lognormal shape of every operation's duration


def kv(key: str, value: str | int) -> KeyValue:
    if isinstance(value, int):
        return KeyValue(key=key, value=AnyValue(int_value=value))
    return KeyValue(key=key, value=AnyValue(string_value=value))


@dataclass
class Trace:
    trace_id: bytes
    spans: list[tuple[str, Span]] = field(default_factory=list)  # (service, span)

    @property
    def span_ids(self) -> set[bytes]:
        return {span.span_id for _, span in self.spans}


class Workload:
    """Seeded traces and the requests that carry them.

    Parameters
    ----------
    seed
        Seeds ids and durations.
    error_rates
        Share of spans of an operation (``service/name``) that fail with status ERROR, as
        normal traffic; every other operation never errors.
    """

    def __init__(self, seed: int = 0, *, error_rates: dict[str, float] | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.clock = T0
        self.error_rates = dict(error_rates or {})

    def trace(
        self,
        *,
        slow: str | None = None,
        slow_factor: float = 50.0,
        error: str | None = None,
        new_error: str | None = None,
        typical: bool = False,
    ) -> Trace:
        """One trace; ``slow``, ``error`` and ``new_error`` name the span (``service/name``) to
        make ``slow_factor`` times slower, fail with status ERROR, or fail with an exception
        event and a gRPC status never seen before. A ``typical`` trace has every other span
        at its operation's median duration (so none is anomalous by chance)."""
        trace = Trace(self.rng.bytes(16))
        ids = [self.rng.bytes(8) for _ in TRACE_SHAPE]
        self.clock += 1_000_000
        for position, (operation, parent) in enumerate(TRACE_SHAPE):
            key = f"{operation.service}/{operation.name}"
            noise = float(np.exp(self.rng.normal(0.0, SIGMA)))
            duration_ms = operation.median_ms * (1.0 if typical else noise)
            if key == slow:
                duration_ms *= slow_factor
            span = Span(
                trace_id=trace.trace_id,
                span_id=ids[position],
                parent_span_id=ids[parent] if parent >= 0 else b"",
                name=operation.name,
                kind=operation.kind,  # type: ignore[arg-type]
                start_time_unix_nano=self.clock + position * 1000,
                end_time_unix_nano=self.clock + position * 1000 + int(duration_ms * 1e6),
                attributes=[kv(k, v) for k, v in operation.attributes],
            )
            if key == error or self.rng.random() < self.error_rates.get(key, 0.0):
                span.status.code = Status.STATUS_CODE_ERROR
            if key == new_error:
                span.status.code = Status.STATUS_CODE_ERROR
                span.status.message = "deadline exceeded"
                del span.attributes[:]
                span.attributes.append(kv("rpc.grpc.status_code", 4))
                event = span.events.add(time_unix_nano=self.clock, name="exception")
                event.attributes.append(kv("exception.type", "DeadlineExceeded"))
            trace.spans.append((operation.service, span))
        return trace

    def traces(self, count: int) -> list[Trace]:
        return [self.trace() for _ in range(count)]


def request(spans: Iterable[tuple[str, Span]]) -> ExportTraceServiceRequest:
    """One request; a resource per service (with a schema URL), one scope each, in first-seen order."""
    out = ExportTraceServiceRequest()
    groups: dict[str, ScopeSpans] = {}
    for service, span in spans:
        scope = groups.get(service)
        if scope is None:
            resource = ResourceSpans(
                resource=Resource(attributes=[kv("service.name", service), kv("host.name", "node-1")]),
                schema_url=SCHEMA_URL,
            )
            resource.scope_spans.append(
                ScopeSpans(scope=InstrumentationScope(name=f"{service}.tracer", version="1.0"))
            )
            out.resource_spans.append(resource)
            scope = groups[service] = out.resource_spans[-1].scope_spans[0]
        scope.spans.append(span)
    return out


def per_service(traces: Iterable[Trace]) -> Iterator[ExportTraceServiceRequest]:
    """What each service's SDK exports: one request per service holding its spans of ``traces``."""
    yield from per_service_spans(pair for trace in traces for pair in trace.spans)


def span_count(requests: Iterable[ExportTraceServiceRequest]) -> int:
    return sum(len(ss.spans) for r in requests for rs in r.resource_spans for ss in rs.scope_spans)


def interleave(
    groups: Iterable[list[Trace]], rng: np.random.Generator, *, spill: float = 0.5
) -> Iterator[list[ExportTraceServiceRequest]]:
    """Batches of per-service requests, as a hop sees them: each group of traces is one batch,
    but every non-root service's spans of a trace arrive one batch later with probability
    ``spill`` (services export on their own schedules), so parents and children are split
    over batches about as often as not. Yields one batch more than there are groups."""
    carry: list[tuple[str, Span]] = []
    for group in groups:
        now, carry = carry, []
        for trace in group:
            root = trace.spans[0][0]
            late = {s for s, _ in trace.spans if s != root and rng.random() < spill}
            for service, span in trace.spans:
                (carry if service in late else now).append((service, span))
        yield list(per_service_spans(now))
    yield list(per_service_spans(carry))


def per_service_spans(spans: Iterable[tuple[str, Span]]) -> Iterator[ExportTraceServiceRequest]:
    """One request per service of ``spans``, in first-seen order."""
    by_service: dict[str, list[tuple[str, Span]]] = {}
    for service, span in spans:
        by_service.setdefault(service, []).append((service, span))
    for part in by_service.values():
        yield request(part)
