"""Fixtures for the receiver tests: a real Pipeline, a recording sink, certificates."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from otelai.config import GrpcReceiver as GrpcReceiverConfig
from otelai.config import HttpReceiver as HttpReceiverConfig
from otelai.pipeline import Payload, Pipeline
from otelai.receiver.grpc import GrpcReceiver
from otelai.receiver.http import HttpReceiver
from otelai.telemetry.metrics import Metrics


class RecordingSink:
    """Stands in for an exporter's sending queue: records payloads, room on demand."""

    durable = False

    def __init__(self, name: str = "recording") -> None:
        self.name = name
        self.room = True
        self.payloads: list[Payload] = []

    def has_room(self, payload: Payload) -> bool:
        return self.room

    def put(self, payload: Payload) -> None:
        self.payloads.append(payload)


@dataclass
class Hop:
    """A pipeline with one recording sink, and its metrics registry."""

    sink: RecordingSink
    pipeline: Pipeline
    metrics: Metrics
    registry: CollectorRegistry

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
def hop() -> Hop:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    sink = RecordingSink()
    return Hop(sink, Pipeline([sink], metrics), metrics, registry)


@pytest.fixture
async def grpc_receiver(hop: Hop) -> AsyncIterator[GrpcReceiver]:
    receiver = GrpcReceiver(
        GrpcReceiverConfig(endpoint="127.0.0.1:0", max_recv_msg_size_mib=1), hop.pipeline, hop.metrics
    )
    await receiver.start()
    yield receiver
    await receiver.stop(0)


@pytest.fixture
async def http_receiver(hop: Hop) -> AsyncIterator[HttpReceiver]:
    config = HttpReceiverConfig(endpoint="127.0.0.1:0", max_request_body_size=1024 * 1024)
    receiver = HttpReceiver(config, hop.pipeline, hop.metrics, retry_after=2.5)
    await receiver.start()
    yield receiver
    await receiver.stop()


@dataclass(frozen=True)
class Certs:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # signed by another CA
    rogue_key: Path


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _leaf(directory: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, csr = directory / f"{name}.crt", directory / f"{name}.key", directory / f"{name}.csr"
    ext = directory / f"{name}.ext"
    ext.write_text(extensions)
    _openssl(
        "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
        "-out", str(cert), "-days", "2", "-extfile", str(ext),
    )  # fmt: skip
    return cert, key


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA, a server certificate for localhost/127.0.0.1, a client certificate, and a
    client certificate from an unrelated CA (made with the openssl CLI; ``cryptography``
    is not installed)."""
    directory = tmp_path_factory.mktemp("certs")
    ca = _ca(directory, "otelai-test-ca")
    server = _leaf(
        directory,
        "server",
        ca,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature\n",
    )
    client = _leaf(
        directory, "client", ca, "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n"
    )
    rogue = _leaf(
        directory,
        "rogue",
        _ca(directory, "rogue-ca"),
        "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature\n",
    )
    return Certs(ca[0], server[0], server[1], client[0], client[1], rogue[0], rogue[1])
