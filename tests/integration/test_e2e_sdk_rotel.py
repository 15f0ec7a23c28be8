"""OpenTelemetry SDK -> otelai -> rotel -> sink: everything arrives, intact, exactly once.

Both of the SDK's OTLP exporters (gRPC and HTTP/protobuf, gzip-compressed) send spans, log
records and metric points to otelai; otelai forwards with its ``otlp`` or ``otlphttp``
exporter to a real rotel collector, which forwards to the sink. A ``file`` exporter beside
it checks the fan-out: every exporter gets everything.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from . import sdk
from .components import Rotel
from .service import OtelaiService
from .sink import OtlpSink
from .util import wait_until

pytestmark = pytest.mark.slow

FAST_RETRY = "retry_on_failure: {initial_interval: 100ms, max_interval: 1s, max_elapsed_time: 60s}"


def _exporter_yaml(kind: str, rotel: Rotel) -> str:
    if kind == "otlp":
        return f"""
  otlp:
    endpoint: "{rotel.grpc_endpoint}"
    tls: {{insecure: true}}
    compression: gzip
    {FAST_RETRY}"""
    return f"""
  otlphttp:
    endpoint: "http://127.0.0.1:{rotel.http_port}"
    compression: gzip
    {FAST_RETRY}"""


def _spans_in_file(path: Path) -> int:
    """Spans in the file exporter's output (OTLP JSON, one request a line)."""
    if not path.exists():
        return 0
    total = 0
    for line in path.read_text().splitlines():
        request = json.loads(line)
        for rs in request.get("resourceSpans", []):
            for ss in rs.get("scopeSpans", []):
                total += len(ss.get("spans", []))
    return total


@pytest.mark.parametrize(
    ("client", "exporter"), [("grpc", "otlp"), ("http", "otlphttp"), ("grpc", "otlphttp")]
)
def test_sdk_through_otelai_and_rotel(
    client: str,
    exporter: str,
    tmp_path: Path,
    sink: OtlpSink,
    rotel_factory: Callable[..., Rotel],
    otelai_service: Callable[..., OtelaiService],
) -> None:
    rotel = rotel_factory(f"http://{sink.grpc_endpoint}")
    forwarded = tmp_path / "fanout" / "forwarded.jsonl"
    service = otelai_service(
        f"""
scoring: {{enabled: false}}  # a pass-through test: the hop, not scoring
exporters:{_exporter_yaml(exporter, rotel)}
  file: {{path: "{forwarded}"}}
"""
    )
    run = uuid.uuid4().hex
    spans, logs, metrics = sdk.make_spans(120, run), sdk.make_logs(80, run), sdk.make_metrics(run)
    points = sdk.count_points(metrics)
    endpoint = service.grpc_target if client == "grpc" else service.http_url

    sdk.send_all(client, endpoint, spans, logs, metrics)

    sink.wait_for("traces", len(spans))
    sink.wait_for("logs", len(logs))
    sink.wait_for("metrics", points)
    assert sdk.proto_span_keys(sink.spans()) == sdk.sdk_span_keys(spans)
    assert sdk.proto_log_keys(sink.log_records()) == sdk.sdk_log_keys(logs)
    assert sdk.proto_point_keys(sink.metrics()) == sdk.sdk_point_keys(metrics)
    resources = {
        sdk.proto_attrs(rs.resource.attributes)
        for r in sink.requests("traces")
        for rs in r.request.resource_spans
    }
    assert resources and all(("itest.run", run) in attrs for attrs in resources)
    # Fan-out: the file exporter got every span too.
    wait_until(
        lambda: _spans_in_file(forwarded) >= len(spans),
        timeout=30,
        message=lambda: f"file exporter: {_spans_in_file(forwarded)} of {len(spans)} spans",
    )
    assert _spans_in_file(forwarded) == len(spans)
    # otelai's own account of the same traffic.
    assert service.metric("otelai_receiver_items_total", signal="traces") == len(spans)
    assert service.metric("otelai_receiver_items_total", signal="logs") == len(logs)
    assert service.metric("otelai_receiver_items_total", signal="metrics") == points
    # Per exporter: the otlp/otlphttp one and the file one each sent every span.
    # (counted once the export returned, a moment after the data landed: poll, bounded)
    wait_until(
        lambda: (
            service.metric("otelai_exporter_items_total", signal="traces", outcome="sent") == 2 * len(spans)
        ),
        timeout=10,
        message=lambda: f"exporter sent {service.metric('otelai_exporter_items_total', signal='traces')}",
    )
