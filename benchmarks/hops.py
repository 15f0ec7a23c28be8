"""The hops under test, each started as a real process that forwards to the sink.

``direct`` is no hop at all (the load generator sends to the sink), the baseline for the
added latency. ``rotel`` is the Rust collector from PyPI with its default batching (8192
spans or 200 ms, what a user who installs it gets); ``rotel-nobatch`` is the same with
``--disable-batching``, which forwards each request as it comes, as otelai's pass-through
does. ``otelai`` is ``otelai serve`` with a generated config that forwards everything.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
HOPS = ("direct", "rotel", "rotel-nobatch", "otelai", "otelai-scoring", "otelai-scoring-worker")


class HopUnavailable(Exception):
    """The hop cannot run here (not installed yet); the benchmark skips it and says why."""


@dataclass
class RunningHop:
    """A started hop: where the load generator sends, and the process to watch."""

    name: str
    target: str
    pid: int | None = None
    command: list[str] = field(default_factory=list)
    settings: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    def failure(self) -> str | None:
        """Why the hop's process is gone (exit code and log tail), or None while it runs."""
        if self.process is None or self.process.poll() is None:
            return None
        tail = _tail(self.log) if self.log else ""
        return f"{self.name} exited with {self.process.returncode}: {tail}"


def free_port() -> int:
    """A loopback port free right now (the hop binds it a moment later)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _die_with_parent() -> None:
    # Linux: the hop gets SIGTERM if the benchmark dies, so no collector outlives a crash.
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _wait_grpc_ready(target: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with grpc.insecure_channel(target) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"exited with {process.returncode}: {_tail(log)}")
            try:
                export(b"", timeout=1)  # an empty request: accepted, forwards nothing
                return
            except grpc.RpcError:
                time.sleep(0.1)
    raise RuntimeError(f"not ready after {READY_TIMEOUT_S}s: {_tail(log)}")


def _wait_http_ready(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}: {_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {READY_TIMEOUT_S}s: {_tail(log)}")


def _tail(log: Path, chars: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no log)"


def stop(process: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@contextlib.contextmanager
def _process(
    command: list[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent, env=env
        )
    try:
        yield process
    finally:
        stop(process)


def rotel_binary() -> Path:
    """The ``rotel-agent`` executable shipped in the ``rotel`` wheel."""
    spec = importlib.util.find_spec("rotel")
    if spec is None or spec.origin is None:
        raise HopUnavailable("the rotel package is not installed")
    binary = Path(spec.origin).parent / "rotel-agent"
    if not binary.exists():
        raise HopUnavailable(f"{binary} is missing")
    return binary


@contextlib.contextmanager
def rotel(name: str, sink_port: int, workdir: Path, extra: list[str]) -> Iterator[RunningHop]:
    """A ``rotel-agent`` forwarding OTLP/gRPC to the sink, uncompressed like the other hops."""
    grpc_port, http_port = free_port(), free_port()
    command = [
        str(rotel_binary()),
        "start",
        "--otlp-grpc-endpoint",
        f"127.0.0.1:{grpc_port}",
        "--otlp-http-endpoint",
        f"127.0.0.1:{http_port}",
        "--exporter",
        "otlp",
        "--otlp-exporter-endpoint",
        f"http://127.0.0.1:{sink_port}",
        "--otlp-exporter-compression",
        "none",
        "--pid-file",
        str(workdir / f"{name}.pid"),
        "--log-file",
        str(workdir / f"{name}.log"),
        *extra,
    ]
    log = workdir / f"{name}.out"
    with _process(command, log) as process:
        target = f"127.0.0.1:{grpc_port}"
        _wait_grpc_ready(target, process, log)
        settings = {
            "batching": "disabled" if "--disable-batching" in extra else "default (8192 spans / 200ms)"
        }
        yield RunningHop(name, target, process.pid, command, settings, log, process)


def otelai_command() -> list[str]:
    """How to start ``otelai serve``; raises HopUnavailable while the CLI does not exist yet."""
    try:
        spec = importlib.util.find_spec("otelai.cli")
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        raise HopUnavailable("otelai.cli is not importable yet (the service is not written)")
    script = Path(sys.executable).parent / "otelai"
    if not script.exists():
        raise HopUnavailable(f"{script} does not exist: reinstall the package (pip install -e .)")
    return [str(script), "serve"]


def otelai_config(
    grpc_port: int, sink_port: int, metrics_port: int, *, scoring: bool = False, worker: bool = False
) -> str:
    """gRPC in, OTLP/gRPC out without compression; pass-through, or scoring at the defaults
    (``worker``: in the scoring worker process, ``scoring.worker_process: true``)."""
    selection = (
        f"scoring: {{enabled: true, worker_process: {'true' if worker else 'false'}}}"
        if scoring
        else "scoring: {enabled: false}\nselection: {normal_sample_rate: 1.0}"
    )
    return f"""\
receivers:
  otlp:
    protocols:
      grpc: {{endpoint: "127.0.0.1:{grpc_port}"}}
      http: null
exporters:
  otlp: {{endpoint: "127.0.0.1:{sink_port}", compression: none, tls: {{insecure: true}}}}
{selection}
telemetry:
  metrics: {{endpoint: "127.0.0.1:{metrics_port}"}}
  logs: {{level: warn}}
"""


@contextlib.contextmanager
def otelai(name: str, sink_port: int, workdir: Path, config_text: str | None) -> Iterator[RunningHop]:
    """``otelai serve`` with the pass-through config (or ``config_text`` with ports filled in)."""
    base = otelai_command()
    grpc_port, metrics_port = free_port(), free_port()
    if config_text is not None:
        template = config_text
    else:
        template = otelai_config(
            grpc_port,
            sink_port,
            metrics_port,
            scoring=name.startswith("otelai-scoring"),
            worker=name == "otelai-scoring-worker",
        )
    config = workdir / f"{name}.yaml"
    config.write_text(
        template.replace("{GRPC_PORT}", str(grpc_port))
        .replace("{SINK_PORT}", str(sink_port))
        .replace("{METRICS_PORT}", str(metrics_port))
    )
    command = [*base, "--config", str(config)]
    log = workdir / f"{name}.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTELAI_")}
    with _process(command, log, env) as process:
        target = f"127.0.0.1:{grpc_port}"
        _wait_http_ready(f"http://127.0.0.1:{metrics_port}/readyz", process, log)
        _wait_grpc_ready(target, process, log)
        settings = {"config": config.read_text(), "metrics": f"http://127.0.0.1:{metrics_port}/metrics"}
        yield RunningHop(name, target, process.pid, command, settings, log, process)


@contextlib.contextmanager
def start(
    name: str, sink_port: int, workdir: Path, *, otelai_config_text: str | None = None
) -> Iterator[RunningHop]:
    """Start the hop called ``name`` (one of HOPS) and stop it on exit, even on error."""
    if name == "direct":
        yield RunningHop(name, f"127.0.0.1:{sink_port}", None, [], {"hop": "none: loadgen -> sink"})
    elif name == "rotel":
        with rotel(name, sink_port, workdir, []) as hop:
            yield hop
    elif name == "rotel-nobatch":
        with rotel(name, sink_port, workdir, ["--disable-batching"]) as hop:
            yield hop
    elif name == "otelai":
        with otelai(name, sink_port, workdir, otelai_config_text) as hop:
            yield hop
    elif name in ("otelai-scoring", "otelai-scoring-worker"):
        with otelai(name, sink_port, workdir, None) as hop:
            yield hop
    else:
        raise ValueError(f"unknown hop {name!r}; known: {', '.join(HOPS)}")
