"""Upstream down, otelai killed with ``kill -9`` mid-stream and restarted: every span it
acknowledged reaches upstream once upstream is back."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from .client import grpc_export, next_ids, trace_request
from .service import OtelaiService
from .sink import OtlpSink
from .util import wait_until

pytestmark = pytest.mark.slow

SPANS_PER_REQUEST = 20
MAX_REQUESTS = 400
KILL_AFTER_ACKED = 60  # requests acknowledged before the kill


class Sender(threading.Thread):
    """Sends requests back to back until stopped; records the span ids acknowledged OK."""

    def __init__(self, target: str) -> None:
        super().__init__(name="itest-sender", daemon=True)
        self.target = target
        self.acked: set[bytes] = set()
        self.acked_requests = 0
        self.failed_requests = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        with grpc.insecure_channel(self.target) as channel:
            for _ in range(MAX_REQUESTS):
                if self.stop.is_set():
                    return
                ids = next_ids(SPANS_PER_REQUEST)
                answer = grpc_export(channel, trace_request(ids, padding=64), timeout=5)
                with self.lock:
                    if answer.code is grpc.StatusCode.OK:
                        self.acked.update(ids)
                        self.acked_requests += 1
                    else:
                        self.failed_requests += 1


def test_acknowledged_spans_survive_outage_and_kill9(
    tmp_path: Path,
    sink_factory: Callable[..., OtlpSink],
    otelai_service: Callable[..., OtelaiService],
    record_property: Callable[[str, object], None],
) -> None:
    upstream = sink_factory(start=False)  # ports reserved, nothing listening: upstream down
    storage = tmp_path / "queue"
    service = otelai_service(
        f"""
scoring: {{enabled: false}}  # a pass-through test: the hop, not scoring
exporters:
  otlp:
    endpoint: "{upstream.grpc_endpoint}"
    tls: {{insecure: true}}
    timeout: 2s
    sending_queue: {{storage: "{storage}", queue_size: 5000, num_consumers: 2}}
    retry_on_failure: {{initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 600s}}
"""
    )
    sender = Sender(service.grpc_target)
    sender.start()
    try:
        wait_until(
            lambda: sender.acked_requests >= KILL_AFTER_ACKED or not sender.is_alive(),
            timeout=60,
            message=lambda: f"only {sender.acked_requests} requests acknowledged:\n{service.log_tail()}",
        )
        service.kill9()  # mid-stream: the sender is still sending
        # Proof that it was mid-stream: the sender's next request fails.
        wait_until(lambda: sender.failed_requests > 0, timeout=15, message="no request failed after kill -9")
    finally:
        sender.stop.set()
        sender.join(timeout=30)
    assert not sender.is_alive()
    acked = set(sender.acked)
    assert len(acked) >= KILL_AFTER_ACKED * SPANS_PER_REQUEST
    assert upstream.count("traces") == 0

    service.restart()
    upstream.start()

    def delivered() -> bool:
        return acked <= set(upstream.span_ids())

    wait_until(
        delivered,
        timeout=90,
        interval=0.2,
        message=lambda: (
            f"{len(acked - set(upstream.span_ids()))} of {len(acked)} acknowledged spans missing upstream:\n"
            f"{service.log_tail()}"
        ),
    )
    counts = upstream.span_ids()
    duplicates = sum(n - 1 for span_id, n in counts.items() if span_id in acked and n > 1)
    unacked_delivered = len(set(counts) - acked)  # in flight at the kill: allowed, never required
    record_property("acked_spans", len(acked))
    record_property("duplicate_spans", duplicates)
    record_property("unacked_spans_delivered", unacked_delivered)
    print(
        f"persistent queue: {len(acked)} acknowledged spans all delivered; "
        f"{duplicates} duplicates; {unacked_delivered} unacknowledged spans also delivered; "
        f"{sender.failed_requests} requests failed at/after the kill"
    )
    # Once delivered, the queue empties: nothing is left behind to resend forever.
    wait_until(
        lambda: service.metric("otelai_queue_items", queue="otlp") == 0,
        timeout=30,
        message=lambda: f"queue not empty: {service.metric('otelai_queue_items', queue='otlp')}",
    )
