"""``otelai serve`` with a trained server-metrics bundle (``scoring.model.path``): a tiny ASD data
set replayed as OTLP gauges (``otelai replay --dataset asd``) -> otelai -> sink. Every original
point is forwarded, and the injected anomaly (metric 01 of both servers, test steps 150-169)
arrives as ``otelai.anomaly.score`` companion points named ``asd.metric_01``."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from otelai.replay.server_metrics import ASD, EPOCH_UNIX_NANO
from otelai.scoring.metrics import METRIC_NAME, SCORE_METRIC

from .service import OtelaiService, otelai_command
from .sink import OtlpSink
from .util import wait_until

pytest.importorskip("torch")

from otelai.models.tasks.server_metrics import AsdTask
from tests.unit.models.tasks.test_server_metrics_task import SETTINGS, _asd

pytestmark = pytest.mark.slow

POINTS = 2 * 1000 * 5  # servers x (train + test steps) x metrics
TRAIN_STEPS, ANOMALY = 700, range(150, 170)


def _received(sink: OtlpSink) -> tuple[int, list[tuple[str, str, int]]]:
    """Original points forwarded, and (host.name, otelai.metric.name, test step) of each companion."""
    originals, companions = 0, []
    step = ASD.step_seconds * 1_000_000_000
    for received in sink.requests("metrics"):
        request = ExportMetricsServiceRequest.FromString(received.body)
        for resource in request.resource_metrics:
            host = next(a.value.string_value for a in resource.resource.attributes if a.key == "host.name")
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name != SCORE_METRIC:
                        originals += len(metric.gauge.data_points)
                        continue
                    for point in metric.gauge.data_points:
                        name = next(a.value.string_value for a in point.attributes if a.key == METRIC_NAME)
                        index = (point.time_unix_nano - EPOCH_UNIX_NANO) // step - TRAIN_STEPS
                        companions.append((host, name, index))
    return originals, companions


def test_serve_scores_server_metrics_with_a_trained_bundle(tmp_path: Path, sink: OtlpSink) -> None:
    _asd(tmp_path / "asd")
    bundle = AsdTask(settings=SETTINGS).train(tmp_path / "asd", tmp_path / "bundle", seed=1, progress=False)
    service = OtelaiService(
        f"""
exporters:
  otlp: {{endpoint: "{sink.grpc_endpoint}", tls: {{insecure: true}}}}
scoring:
  signals: [metrics]
  model: {{path: "{bundle.path}"}}
""",
        tmp_path / "otelai",
    )
    service.start()
    try:
        done = subprocess.run(
            otelai_command(
                "replay", "--dataset", "asd", "--path", str(tmp_path / "asd"),
                "--endpoint", service.grpc_target, "--no-progress",
            ),
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        wait_until(lambda: _received(sink)[0] >= POINTS, timeout=60, message=service.log_tail)
        originals, companions = _received(sink)
        assert originals == POINTS
        found = {(host, index) for host, name, index in companions if name == "asd.metric_01"}
        for host in ("omi-1", "omi-2"):
            assert any((host, index) in found for index in ANOMALY), companions
        assert service.metric("otelai_model_info", version=bundle.manifest.version) == 1
    finally:
        service.stop()
