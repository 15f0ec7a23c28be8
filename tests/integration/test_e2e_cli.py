"""The installed command line: ``otelai --version``, ``otelai validate``, a failed start, and
the health endpoints of a running service (HTTP and the gRPC health service)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import otelai

from .service import OtelaiService, otelai_command
from .util import free_port, http_get

pytestmark = pytest.mark.slow

GOOD = """\
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "127.0.0.1:4317"}
exporters:
  otlp:
    endpoint: "gateway:4317"
    sending_queue: {queue_size: 100}
    retry_on_failure: {max_elapsed_time: 300s}
  file: {path: "./out.jsonl"}
telemetry:
  metrics: {endpoint: "127.0.0.1:9464"}
"""


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(otelai_command(*args), capture_output=True, text=True, timeout=60, check=False)


def test_version() -> None:
    result = _run("--version")
    assert result.returncode == 0, result.stderr
    assert otelai.__version__ in result.stdout
    script = Path(sys.executable).parent / "otelai"  # the console script the package installs
    if script.exists():
        installed = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
        assert installed.returncode == 0 and otelai.__version__ in installed.stdout, installed.stderr


def test_validate_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = _run("validate", "--config", str(path))
    assert result.returncode == 0, result.stderr


def test_validate_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("sending_queue: {queue_size: 100}", "sending_queue: {queue_sise: 100}"))
    result = _run("validate", "--config", str(path))
    assert result.returncode != 0
    message = result.stderr + result.stdout
    assert "queue_sise" in message and str(path) in message, message


def test_validate_bad_duration(tmp_path: Path) -> None:
    path = tmp_path / "bad-duration.yaml"
    path.write_text(GOOD.replace("max_elapsed_time: 300s", "max_elapsed_time: 300"))
    result = _run("validate", "--config", str(path))
    assert result.returncode != 0
    assert "max_elapsed_time" in result.stderr + result.stdout


def test_serve_fails_cleanly_when_the_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        path = tmp_path / "busy.yaml"
        path.write_text(
            f"""
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{free_port()}"}}
      http: {{endpoint: "127.0.0.1:{port}"}}
exporters:
  file: {{path: "{tmp_path / "out.jsonl"}"}}
telemetry:
  metrics: {{endpoint: "127.0.0.1:{free_port()}"}}
"""
        )
        result = _run("serve", "--config", str(path))
    assert result.returncode not in (0, None)
    assert str(port) in result.stderr, result.stderr


def test_health_endpoints(tmp_path: Path, otelai_service: Callable[..., OtelaiService]) -> None:
    service = otelai_service(f'exporters:\n  file: {{path: "{tmp_path / "out.jsonl"}"}}\n')
    assert http_get(f"{service.url}/healthz")[0] == 200
    assert http_get(f"{service.url}/readyz")[0] == 200
    with grpc.insecure_channel(service.grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for name in ("", "opentelemetry.proto.collector.trace.v1.TraceService"):
            answer = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING, name
