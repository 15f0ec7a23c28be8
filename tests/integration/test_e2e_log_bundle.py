"""``otelai serve`` with a trained log bundle (``scoring.model.path``): OpenTelemetry SDK log
records -> otelai -> sink. A line whose template the bundle never saw arrives tagged by the
bundle's next-event model; normal lines are dropped (nothing normal is sampled); a bundle that
cannot be used stops the start with a message."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource

from otelai.models.tasks.bgl import BglTask
from tests.unit.models.tasks.log_fixtures import write_bgl

from .sdk import otlp_exporters
from .service import OtelaiService, otelai_command
from .sink import OtlpSink
from .util import wait_until

pytestmark = pytest.mark.slow

NODE = "R00-M1-N0-C:J12-U11"
NORMAL = (
    "instruction cache parity error corrected",
    "generating core.4321",
    "77 double-hummer alignment exceptions",
)
UNSEEN = "machine check interrupt: L3 major internal error"


def _records() -> list[ReadableLogRecord]:
    exporter = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]
    provider = LoggerProvider(resource=Resource.create({"service.name": "bgl"}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(exporter))
    logger = provider.get_logger("itest.bgl")
    for body in NORMAL:
        logger.emit(body=body, severity_number=SeverityNumber.INFO, attributes={"node": NODE})
    logger.emit(body=UNSEEN, severity_number=SeverityNumber.FATAL, attributes={"node": NODE})
    provider.shutdown()
    return list(exporter.get_finished_logs())


def _forwarded(sink: OtlpSink) -> dict[str, dict[str, Any]]:
    out = {}
    for received in sink.requests("logs"):
        request = ExportLogsServiceRequest.FromString(received.body)
        for resource in request.resource_logs:
            for scope in resource.scope_logs:
                for record in scope.log_records:
                    out[record.body.string_value] = {
                        a.key: getattr(a.value, a.value.WhichOneof("value") or "string_value")
                        for a in record.attributes
                    }
    return out


def test_serve_tags_logs_with_a_trained_bundle(tmp_path: Path, sink: OtlpSink) -> None:
    bundle = BglTask().train(write_bgl(tmp_path / "data"), tmp_path / "bundle", progress=False)
    service = OtelaiService(
        f"""
exporters:
  otlp: {{endpoint: "{sink.grpc_endpoint}", tls: {{insecure: true}}}}
selection: {{normal_sample_rate: 0.0}}
scoring:
  signals: [logs]
  model: {{path: "{bundle.path}"}}
  batching: {{latency_target: 2s}}
""",
        tmp_path / "otelai",
    )
    service.start()
    try:
        _, log_exporter, _ = otlp_exporters("grpc", service.grpc_target)
        try:
            assert log_exporter.export(_records()) is LogRecordExportResult.SUCCESS
        finally:
            log_exporter.shutdown()
        wait_until(lambda: UNSEEN in _forwarded(sink), timeout=30, message=service.log_tail)
        forwarded = _forwarded(sink)
        assert set(forwarded) == {UNSEEN}
        tags = forwarded[UNSEEN]
        assert tags["node"] == NODE
        assert tags["otelai.anomaly.severity"] in ("anomaly", "critical")
        assert tags["otelai.anomaly.reason"] == "next_event: unseen template"
        assert tags["otelai.model.version"] == bundle.manifest.version
        assert service.metric("otelai_model_info", version=bundle.manifest.version) == 1
    finally:
        service.stop()


def test_serve_refuses_a_bundle_it_cannot_use(tmp_path: Path) -> None:
    # The harness writes the configuration with free loopback ports; the start must fail.
    service = OtelaiService(f'scoring: {{model: {{path: "{tmp_path / "nowhere"}"}}}}', tmp_path / "otelai")
    done = subprocess.run(
        otelai_command("serve", "--config", str(service.config_path)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert "no manifest.json" in done.stderr + done.stdout
