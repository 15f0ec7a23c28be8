"""otelcol-contrib (filelog -> otlphttp, gzip) -> otelai -> sink: the Go Collector's export
is accepted and every line arrives as a log record."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from . import sdk
from .components import Otelcol
from .service import OtelaiService
from .sink import OtlpSink

pytestmark = pytest.mark.slow


def test_go_collector_exports_to_otelai(
    tmp_path: Path,
    sink: OtlpSink,
    otelcol_factory: Callable[..., Otelcol],
    otelai_service: Callable[..., OtelaiService],
) -> None:
    service = otelai_service(
        f"""
scoring: {{enabled: false}}  # a pass-through test: the hop, not scoring
exporters:
  otlp:
    endpoint: "{sink.grpc_endpoint}"
    tls: {{insecure: true}}
    retry_on_failure: {{initial_interval: 100ms, max_interval: 1s}}
"""
    )
    run = uuid.uuid4().hex
    lines = [f'{{"n": {i}, "run": "{run}", "msg": "hello ünïcode {i}"}}' for i in range(300)]
    log_file = tmp_path / "app.log"
    log_file.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")

    otelcol = otelcol_factory(log_file, service.http_url)

    sink.wait_for("logs", len(lines))
    bodies = sorted(sdk.any_value(record.body) for record in sink.log_records())
    assert bodies == sorted(lines)
    assert service.metric("otelai_receiver_items_total", signal="logs") == len(lines)
    assert service.metric("otelai_receiver_refused_requests_total", default=0.0) == 0
    collector_log = otelcol.log.read_text(errors="replace")
    assert "Exporting failed" not in collector_log, collector_log[-3000:]
