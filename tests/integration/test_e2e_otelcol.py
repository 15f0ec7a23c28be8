"""otelcol-contrib (filelog -> otlphttp, gzip) -> otelai -> sink: the Go Collector's export
is accepted and every line arrives as a log record."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

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


def test_go_collector_logs_scored_sampled_and_summarised(
    tmp_path: Path,
    sink: OtlpSink,
    otelcol_factory: Callable[..., Otelcol],
    otelai_service: Callable[..., OtelaiService],
) -> None:
    """With log scoring on: what is not forwarded is counted in the dropped-records summary,
    so forwarded records plus ``otelai.dropped.log_records`` add up to the lines written."""
    service = otelai_service(
        f"""
scoring:
  signals: [logs]
  calibration: {{window: 2048, min_samples: 64, sample_rate: 1.0}}
  pca: {{min_samples: 256}}
summaries: {{interval: 500ms}}
exporters:
  otlp:
    endpoint: "{sink.grpc_endpoint}"
    tls: {{insecure: true}}
    retry_on_failure: {{initial_interval: 100ms, max_interval: 1s}}
"""
    )
    lines = [f"GET /api/item/{i % 17} 200 served in {i % 13} ms" for i in range(600)]
    log_file = tmp_path / "app.log"
    log_file.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    otelcol_factory(log_file, service.http_url)

    def dropped() -> int:
        total = 0
        for metric in sink.metrics():
            if metric.name == "otelai.dropped.log_records":
                total += sum(int(point.as_int) for point in metric.sum.data_points)
        return total

    def forwarded() -> list[Any]:
        return list(sink.log_records())

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(forwarded()) + dropped() < len(lines):
        time.sleep(0.2)
    kept = forwarded()
    assert service.metric("otelai_receiver_items_total", signal="logs") == len(lines)
    assert len(kept) + dropped() == len(lines)
    assert 0 < len(kept) < len(lines)  # sampled, not everything
    for record in kept:
        keys = {attribute.key for attribute in record.attributes}
        assert "otelai.selection.reason" in keys
