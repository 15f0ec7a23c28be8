"""The otelai service as a real child process (``python -m otelai serve --config FILE``)."""

from __future__ import annotations

import contextlib
import copy
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from .util import free_port, http_get, stop_process, tail, wait_until

READY_TIMEOUT = 30.0


def otelai_command(*args: str) -> list[str]:
    """How tests run the CLI: the module of the interpreter running the tests."""
    return [sys.executable, "-m", "otelai", *args]


class OtelaiService:
    """A running ``otelai serve``; receivers and telemetry on free loopback ports.

    Parameters
    ----------
    config_text
        YAML; ``receivers`` and ``telemetry.metrics`` may be left out (or partly given):
        their endpoints are filled in with free loopback ports.
    workdir
        Holds the written configuration and the service's stderr log.
    """

    def __init__(self, config_text: str, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.grpc_port = free_port()
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.config = self._complete(yaml.safe_load(config_text) or {})
        self.config_path = workdir / "otelai.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config, sort_keys=False))
        self.log = workdir / "otelai.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def _complete(self, config: dict[str, Any]) -> dict[str, Any]:
        config = copy.deepcopy(config)
        protocols = config.setdefault("receivers", {}).setdefault("otlp", {}).setdefault("protocols", {})
        grpc = protocols.setdefault("grpc", {}) or {}
        http = protocols.setdefault("http", {}) or {}
        protocols["grpc"], protocols["http"] = grpc, http
        grpc.setdefault("endpoint", f"127.0.0.1:{self.grpc_port}")
        http.setdefault("endpoint", f"127.0.0.1:{self.http_port}")
        metrics = config.setdefault("telemetry", {}).setdefault("metrics", {})
        metrics.setdefault("endpoint", f"127.0.0.1:{self.metrics_port}")
        self.grpc_port = int(grpc["endpoint"].rsplit(":", 1)[1])
        self.http_port = int(http["endpoint"].rsplit(":", 1)[1])
        self.metrics_port = int(metrics["endpoint"].rsplit(":", 1)[1])
        return config

    # -- addresses -------------------------------------------------------------------------
    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def url(self) -> str:
        """Base URL of the telemetry server (``/metrics``, ``/healthz``, ``/readyz``)."""
        return f"http://127.0.0.1:{self.metrics_port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    # -- lifecycle -------------------------------------------------------------------------
    def start(self, timeout: float = READY_TIMEOUT) -> OtelaiService:
        """Start the process and wait until ``/readyz`` answers 200."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        with self.log.open("ab") as err:
            err.write(f"--- start {self.starts} ---\n".encode())
            err.flush()
            self.proc = subprocess.Popen(
                otelai_command("serve", "--config", str(self.config_path)),
                stdout=err,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = READY_TIMEOUT) -> None:
        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"otelai exited with {self.proc.returncode} on start:\n{self.log_tail()}")
            return http_get(f"{self.url}/readyz", timeout=1.0)[0] == 200

        wait_until(
            ready, timeout=timeout, interval=0.1, message=lambda: f"otelai not ready:\n{self.log_tail()}"
        )

    def kill9(self) -> None:
        """``kill -9``: no chance to flush or clean up."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit (bounded); returns the exit code."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            return int(self.proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            raise AssertionError(
                f"otelai did not exit within {timeout}s of SIGTERM:\n{self.log_tail()}"
            ) from None

    def restart(self, timeout: float = READY_TIMEOUT) -> OtelaiService:
        """Start again with the same configuration (ports, queue storage) after it stopped."""
        if self.proc is not None and self.proc.poll() is None:
            self.terminate()
        return self.start(timeout)

    def stop(self) -> None:
        """Teardown: whatever state it is in, make sure the process is gone."""
        if self.proc is not None:
            stop_process(self.proc, timeout=15)

    # -- observation -----------------------------------------------------------------------
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, limit: int = 6000) -> str:
        return tail(self.log, limit)

    def metrics_text(self) -> str:
        status, body = http_get(f"{self.url}/metrics")
        assert status == 200, f"/metrics answered {status}"
        return body.decode()

    def metric(self, name: str, default: float | None = None, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels``.

        With no matching sample, ``default`` is returned, or the test fails when it is ``None``
        (a metric that is missing is not the same as a metric that is zero).
        """
        from prometheus_client.parser import text_string_to_metric_families

        found, total = False, 0.0
        for family in text_string_to_metric_families(self.metrics_text()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    found, total = True, total + sample.value
        if not found:
            assert default is not None, f"no sample {name}{labels} in /metrics"
            return default
        return total
