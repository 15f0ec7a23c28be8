"""Overload: a sender much faster than a down upstream gets back-pressure (RESOURCE_EXHAUSTED /
429 with a retry delay), otelai's memory stays bounded while it is pushed far more data than
it may hold, and what it did accept is delivered once upstream is back.

The memory bound. With ``queue_size: 4`` requests of 256 KiB the queue may hold 1 MiB; each
of the ``SENDERS`` concurrent streams has at most one request (<= the 4 MiB gRPC limit) being
received and decoded; so the data otelai may legitimately retain is under ~20 MiB. malloc
keeps freed blocks in per-thread arenas (gRPC's threads and the event loop each touch these
256 KiB buffers): on this machine the peak settles about 45 MiB over the baseline. The bound
is baseline + 96 MiB, while the test pushes ``TOTAL_BYTES`` = 320 MiB through: a hop that
buffered what it received (an unbounded queue) would overshoot the bound about threefold.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

import grpc
import pytest

from .client import grpc_export, http_post, next_ids, trace_request
from .service import OtelaiService
from .sink import OtlpSink
from .util import rss_kib, wait_until

pytestmark = pytest.mark.slow

SENDERS = 4
SPANS_PER_REQUEST = 64
PADDING = 4000  # bytes of attribute per span: ~256 KiB requests
TOTAL_BYTES = 320 * 1024 * 1024
RSS_HEADROOM_KIB = 96 * 1024
REFUSALS = {grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE}


class FloodResult:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.codes: collections.Counter[grpc.StatusCode] = collections.Counter()
        self.acked: set[bytes] = set()
        self.delays: list[float | None] = []
        self.sent_bytes = 0


def _flood(target: str, result: FloodResult, budget: int) -> None:
    with grpc.insecure_channel(target) as channel:
        sent = 0
        while sent < budget:
            ids = next_ids(SPANS_PER_REQUEST)
            body = trace_request(ids, padding=PADDING)
            answer = grpc_export(channel, body, timeout=30)
            sent += len(body)
            with result.lock:
                result.codes[answer.code] += 1
                result.sent_bytes += len(body)
                if answer.code is grpc.StatusCode.OK:
                    result.acked.update(ids)
                elif answer.code in REFUSALS:
                    result.delays.append(answer.retry_delay)


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(name="rss-sampler", daemon=True)
        self.pid = pid
        self.peak_kib = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid))
            except (OSError, RuntimeError):
                return


def test_backpressure_bounded_memory_and_no_loss(
    sink: OtlpSink,
    otelai_service: Callable[..., OtelaiService],
    record_property: Callable[[str, object], None],
) -> None:
    sink.unavailable = True  # upstream refuses everything: the queue can only fill up
    service = otelai_service(
        f"""
scoring: {{enabled: false}}  # a pass-through test: the hop, not scoring
exporters:
  otlp:
    endpoint: "{sink.grpc_endpoint}"
    tls: {{insecure: true}}
    compression: none
    sending_queue: {{queue_size: 4, num_consumers: 1}}
    retry_on_failure: {{initial_interval: 200ms, max_interval: 1s, max_elapsed_time: 600s}}
service:
  retry_after: 2s
"""
    )
    # Warm the paths the flood will use (imports, first allocations) before the baseline.
    with grpc.insecure_channel(service.grpc_target) as channel:
        warm = next_ids(SPANS_PER_REQUEST)
        assert grpc_export(channel, trace_request(warm, padding=PADDING)).code is grpc.StatusCode.OK
    baseline_kib = rss_kib(service.pid)

    sampler = RssSampler(service.pid)
    sampler.start()
    result = FloodResult()
    result.acked.update(warm)
    senders = [
        threading.Thread(
            target=_flood, args=(service.grpc_target, result, TOTAL_BYTES // SENDERS), daemon=True
        )
        for _ in range(SENDERS)
    ]
    try:
        for thread in senders:
            thread.start()
        for thread in senders:
            thread.join(timeout=240)
        assert not any(t.is_alive() for t in senders), "senders did not finish"
        # While still full, OTLP/HTTP clients are told 429 with Retry-After too.
        http = http_post(service.http_port, "/v1/traces", trace_request(next_ids(4), padding=PADDING))
    finally:
        sampler.done.set()
        sampler.join(timeout=5)

    record_property("rss_baseline_kib", baseline_kib)
    record_property("rss_peak_kib", sampler.peak_kib)
    record_property("codes", {c.name: n for c, n in result.codes.items()})
    print(
        f"overload: sent {result.sent_bytes / 2**20:.0f} MiB, answers "
        f"{ {c.name: n for c, n in result.codes.items()} }, RSS {baseline_kib // 1024} MiB -> peak "
        f"{sampler.peak_kib // 1024} MiB"
    )
    assert set(result.codes) <= {grpc.StatusCode.OK} | REFUSALS, result.codes
    refused = sum(result.codes[c] for c in REFUSALS)
    assert refused > result.codes[grpc.StatusCode.OK], "no back-pressure"
    assert all(delay is not None and delay > 0 for delay in result.delays), "refusals without RetryInfo"
    assert http.status in (429, 503), http
    assert float(http.headers["retry-after"]) >= 1
    assert sampler.peak_kib - baseline_kib < RSS_HEADROOM_KIB, (
        f"RSS grew {(sampler.peak_kib - baseline_kib) / 1024:.0f} MiB while refusing load"
    )
    assert service.metric("otelai_receiver_refused_requests_total", reason="overloaded") >= refused

    sink.unavailable = False  # upstream back: everything acknowledged must arrive
    wait_until(
        lambda: result.acked <= set(sink.span_ids()),
        timeout=60,
        interval=0.2,
        message=lambda: f"{len(result.acked - set(sink.span_ids()))} acknowledged spans not delivered",
    )
