"""SIGTERM with data still queued and upstream up (but slow): otelai drains, then exits 0."""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc
import pytest

from .client import grpc_export, next_ids, trace_request
from .service import OtelaiService
from .sink import OtlpSink

pytestmark = pytest.mark.slow

REQUESTS, SPANS = 12, 10


def test_sigterm_drains_the_queue_and_exits_zero(
    sink: OtlpSink, otelai_service: Callable[..., OtelaiService]
) -> None:
    sink.delay = 0.25  # a slow upstream: the queue cannot empty before the signal
    service = otelai_service(
        f"""
scoring: {{enabled: false}}  # a pass-through test: the hop, not scoring
exporters:
  otlp:
    endpoint: "{sink.grpc_endpoint}"
    tls: {{insecure: true}}
    sending_queue: {{queue_size: 100, num_consumers: 1}}
    retry_on_failure: {{initial_interval: 100ms, max_interval: 500ms}}
service:
  shutdown_timeout: 60s
"""
    )
    acked: set[bytes] = set()
    with grpc.insecure_channel(service.grpc_target) as channel:
        for _ in range(REQUESTS):
            ids = next_ids(SPANS)
            assert grpc_export(channel, trace_request(ids)).code is grpc.StatusCode.OK
            acked.update(ids)
    assert len(sink.requests("traces")) < REQUESTS, "upstream should still be behind"

    assert service.terminate(timeout=60) == 0, service.log_tail()

    counts = sink.span_ids()
    assert acked <= set(counts), f"{len(acked - set(counts))} queued spans lost at shutdown"
    assert all(n == 1 for n in counts.values()), "a drained request was sent twice"


def test_logs_are_structured_json(sink: OtlpSink, otelai_service: Callable[..., OtelaiService]) -> None:
    service = otelai_service(
        f"""
exporters:
  otlp: {{endpoint: "{sink.grpc_endpoint}", tls: {{insecure: true}}}}
"""
    )
    with grpc.insecure_channel(service.grpc_target) as channel:
        assert grpc_export(channel, trace_request(next_ids(2))).code is grpc.StatusCode.OK
        assert grpc_export(channel, b"\xff\xff").code is grpc.StatusCode.INVALID_ARGUMENT
    assert service.terminate() == 0
    lines = [
        line for line in service.log.read_text().splitlines() if line and not line.startswith("--- start")
    ]
    assert lines, "no logs"
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON log line: {line!r}\n{service.log_tail()}")
        assert {"level", "msg"} <= set(record), line
