"""TLS and mutual TLS on both receivers, with certificates made for the test."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter

from otelai.config import GrpcReceiver as GrpcReceiverConfig
from otelai.config import HttpReceiver as HttpReceiverConfig
from otelai.config import ServerTLS
from otelai.receiver.grpc import GrpcReceiver
from otelai.receiver.http import HttpReceiver
from otelai.signals import Signal

from .conftest import Certs, Hop
from .otlp_data import sdk_telemetry, trace_request

TRACES = Signal.TRACES.spec.grpc_method
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _tls(certs: Certs, mutual: bool) -> ServerTLS:
    return ServerTLS(
        cert_file=str(certs.server_cert),
        key_file=str(certs.server_key),
        client_ca_file=str(certs.ca) if mutual else None,
    )


@pytest.fixture(params=[False, True], ids=["tls", "mtls"])
def mutual(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


@pytest.fixture
async def grpc_tls(hop: Hop, certs: Certs, mutual: bool) -> AsyncIterator[GrpcReceiver]:
    config = GrpcReceiverConfig(endpoint="127.0.0.1:0", tls=_tls(certs, mutual))
    receiver = GrpcReceiver(config, hop.pipeline, hop.metrics)
    await receiver.start()
    yield receiver
    await receiver.stop(0)


@pytest.fixture
async def http_tls(hop: Hop, certs: Certs, mutual: bool) -> AsyncIterator[HttpReceiver]:
    config = HttpReceiverConfig(endpoint="127.0.0.1:0", tls=_tls(certs, mutual))
    receiver = HttpReceiver(config, hop.pipeline, hop.metrics)
    await receiver.start()
    yield receiver
    await receiver.stop()


def _grpc_credentials(certs: Certs, client: str | None) -> Any:
    ca = certs.ca.read_bytes()
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    cert, key = (
        (certs.client_cert, certs.client_key) if client == "client" else (certs.rogue_cert, certs.rogue_key)
    )
    return grpc.ssl_channel_credentials(ca, key.read_bytes(), cert.read_bytes())


async def _grpc_export(port: int, credentials: Any) -> None:
    async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
        await channel.unary_unary(TRACES)(trace_request(), timeout=5)


async def test_grpc_tls(hop: Hop, certs: Certs, grpc_tls: GrpcReceiver, mutual: bool) -> None:
    await _grpc_export(grpc_tls.port, _grpc_credentials(certs, "client"))
    if mutual:
        for client in (None, "rogue"):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _grpc_export(grpc_tls.port, _grpc_credentials(certs, client))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    else:
        await _grpc_export(grpc_tls.port, _grpc_credentials(certs, None))
    async with grpc.aio.insecure_channel(f"localhost:{grpc_tls.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            await channel.unary_unary(TRACES)(trace_request(), timeout=5)
    assert len(hop.sink.payloads) == (1 if mutual else 2)


async def test_grpc_tls_with_the_sdk_exporter(hop: Hop, certs: Certs, grpc_tls: GrpcReceiver) -> None:
    spans, sent, _ = sdk_telemetry(Signal.TRACES)

    def export() -> Any:
        credentials = _grpc_credentials(certs, "client")
        exporter = GrpcSpanExporter(
            endpoint=f"localhost:{grpc_tls.port}", credentials=credentials, timeout=10
        )
        try:
            return exporter.export(spans)
        finally:
            exporter.shutdown()

    assert (await asyncio.to_thread(export)).name == "SUCCESS"
    assert hop.sink.payloads[0].data == sent


def _client_ssl(certs: Certs, client: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs.ca))
    if client == "client":
        context.load_cert_chain(str(certs.client_cert), str(certs.client_key))
    elif client == "rogue":
        context.load_cert_chain(str(certs.rogue_cert), str(certs.rogue_key))
    return context


async def _https_post(port: int, context: ssl.SSLContext | bool) -> int:
    async with (
        aiohttp.ClientSession() as session,
        session.post(
            f"https://localhost:{port}/v1/traces", data=trace_request(), headers=PROTOBUF, ssl=context
        ) as r,
    ):
        return r.status


async def test_http_tls(hop: Hop, certs: Certs, http_tls: HttpReceiver, mutual: bool) -> None:
    assert await _https_post(http_tls.port, _client_ssl(certs, "client")) == 200
    if mutual:
        for client in (None, "rogue"):
            with pytest.raises(aiohttp.ClientError):
                await _https_post(http_tls.port, _client_ssl(certs, client))
    else:
        assert await _https_post(http_tls.port, _client_ssl(certs, None)) == 200
    with pytest.raises(aiohttp.ClientError):  # plain HTTP to a TLS port
        async with aiohttp.ClientSession() as session:
            await session.post(f"http://localhost:{http_tls.port}/v1/traces", data=b"", headers=PROTOBUF)
    assert len(hop.sink.payloads) == (1 if mutual else 2)


async def test_http_mtls_with_the_sdk_exporter(
    hop: Hop, certs: Certs, monkeypatch: pytest.MonkeyPatch
) -> None:
    # requests lets these variables override the exporter's own CA file (psf/requests#4726).
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    config = HttpReceiverConfig(endpoint="127.0.0.1:0", tls=_tls(certs, mutual=True))
    receiver = HttpReceiver(config, hop.pipeline, hop.metrics)
    await receiver.start()
    spans, sent, _ = sdk_telemetry(Signal.TRACES)

    def export() -> Any:
        exporter: Any = HttpSpanExporter(
            endpoint=f"https://localhost:{receiver.port}/v1/traces",
            certificate_file=str(certs.ca),
            client_certificate_file=str(certs.client_cert),
            client_key_file=str(certs.client_key),
            timeout=10,
        )
        try:
            return exporter.export(spans)
        finally:
            exporter.shutdown()

    try:
        assert (await asyncio.to_thread(export)).name == "SUCCESS"
        assert hop.sink.payloads[0].data == sent
    finally:
        await receiver.stop()
