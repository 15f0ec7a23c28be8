"""The OTLP/HTTP receiver against real HTTP clients: the OpenTelemetry SDK and aiohttp."""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from otelai.config import Auth
from otelai.config import HttpReceiver as HttpReceiverConfig
from otelai.otlp_json import request_to_json
from otelai.receiver.http import HttpReceiver
from otelai.signals import Signal

from .conftest import Hop
from .otlp_data import sdk_telemetry, trace_request

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
EXPORTERS: dict[Signal, Any] = {
    Signal.TRACES: OTLPSpanExporter,
    Signal.METRICS: OTLPMetricExporter,
    Signal.LOGS: OTLPLogExporter,
}
GIB = 1024**3


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def _url(receiver: HttpReceiver, path: str = "/v1/traces") -> str:
    return f"http://127.0.0.1:{receiver.port}{path}"


def _sdk_export(signal: Signal, port: int, telemetry: Any, **kwargs: Any) -> Any:
    endpoint = f"http://127.0.0.1:{port}{signal.spec.http_path}"
    exporter = EXPORTERS[signal](endpoint=endpoint, timeout=10, **kwargs)
    try:
        return exporter.export(telemetry)
    finally:
        exporter.shutdown()


async def _post(
    session: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]
) -> tuple[int, str, bytes, Any]:
    if isinstance(body, bytes) and len(body) > 1 << 20:
        body = io.BytesIO(body)  # aiohttp warns about large bytes bodies
    async with session.post(url, data=body, headers=headers) as response:
        return response.status, response.content_type, await response.read(), response.headers


def _zeros_bomb(total: int, wbits: int) -> Iterator[bytes]:
    """A valid gzip (``wbits`` 31) or zlib (15) stream of ``total`` zero bytes, made without
    compressing them all: after a full flush, every further MiB of zeros compresses to the
    same bytes. Only the trailing checksum is computed over all of them."""
    chunk = bytes(1 << 20)
    count = total // len(chunk)
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    yield compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    repeated = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    for _ in range(count - 1):
        yield repeated
    if wbits > zlib.MAX_WBITS:  # gzip: CRC-32 and size, little-endian
        crc = 0
        for _ in range(count):
            crc = zlib.crc32(chunk, crc)
        trailer = crc.to_bytes(4, "little") + (total % 2**32).to_bytes(4, "little")
    else:  # zlib: Adler-32, big-endian
        adler = 1
        for _ in range(count):
            adler = zlib.adler32(chunk, adler)
        trailer = adler.to_bytes(4, "big")
    yield compressor.flush()[: -len(trailer)] + trailer  # the final empty block, then the trailer


@pytest.mark.parametrize("wbits", [16 + zlib.MAX_WBITS, zlib.MAX_WBITS])
def test_bomb_builder_makes_a_valid_stream_of_zeros(wbits: int) -> None:
    inflater = zlib.decompressobj(wbits)
    assert inflater.decompress(b"".join(_zeros_bomb(4 << 20, wbits))) == bytes(4 << 20)
    assert inflater.eof and not inflater.unused_data


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip, Compression.Deflate])
@pytest.mark.parametrize("signal", list(Signal))
async def test_sdk_exporter_delivers_every_item_and_the_exact_bytes(
    hop: Hop, http_receiver: HttpReceiver, signal: Signal, compression: Compression
) -> None:
    telemetry, sent, items = sdk_telemetry(signal)
    result = await asyncio.to_thread(
        _sdk_export, signal, http_receiver.port, telemetry, compression=compression
    )
    assert result.name == "SUCCESS"
    [payload] = hop.sink.payloads
    assert (payload.signal, payload.items, payload.data) == (signal, items, sent)
    assert hop.sample("otelai_receiver_items_total", signal=signal.value) == items
    assert hop.sample("otelai_receiver_bytes_total", signal=signal.value) == len(sent)


async def test_protobuf_success_response(http_receiver: HttpReceiver, session: aiohttp.ClientSession) -> None:
    status, content_type, body, _ = await _post(session, _url(http_receiver), trace_request(), PROTOBUF)
    assert (status, content_type) == (200, "application/x-protobuf")
    assert not ExportTraceServiceResponse.FromString(body).HasField("partial_success")


@pytest.mark.parametrize("signal", list(Signal))
async def test_json_request_is_forwarded_as_protobuf(
    hop: Hop, http_receiver: HttpReceiver, session: aiohttp.ClientSession, signal: Signal
) -> None:
    _, sent, items = sdk_telemetry(signal)
    text = request_to_json(signal, sent)
    headers = {"Content-Type": "application/json; charset=utf-8"}
    status, content_type, body, _ = await _post(
        session, _url(http_receiver, signal.spec.http_path), text, headers
    )
    assert (status, content_type, json.loads(body)) == (200, "application/json", {})
    [payload] = hop.sink.payloads
    assert (payload.items, payload.data) == (items, sent)
    assert hop.sample("otelai_receiver_bytes_total", signal=signal.value) == len(text.encode())  # as received


async def test_gzip_json_and_multi_member_gzip(
    hop: Hop, http_receiver: HttpReceiver, session: aiohttp.ClientSession
) -> None:
    text = request_to_json(Signal.TRACES, trace_request()).encode()
    headers = {**JSON, "Content-Encoding": "gzip"}
    assert (await _post(session, _url(http_receiver), gzip.compress(text), headers))[0] == 200
    data = trace_request()
    halves = gzip.compress(data[:10]) + gzip.compress(data[10:])
    assert (await _post(session, _url(http_receiver), halves, {**PROTOBUF, "Content-Encoding": "GZIP"}))[
        0
    ] == 200
    assert [p.data for p in hop.sink.payloads] == [data, data]


async def test_empty_requests_succeed_without_forwarding(
    hop: Hop, http_receiver: HttpReceiver, session: aiohttp.ClientSession
) -> None:
    assert (await _post(session, _url(http_receiver), b"", PROTOBUF))[:2] == (200, "application/x-protobuf")
    assert (await _post(session, _url(http_receiver), b"{}", JSON))[:2] == (200, "application/json")
    assert hop.sink.payloads == []


def _status(body: bytes, content_type: str) -> status_pb2.Status:
    if content_type == "application/json":
        from google.protobuf import json_format

        return json_format.Parse(body, status_pb2.Status())
    return status_pb2.Status.FromString(body)


@pytest.mark.parametrize(
    ("body", "headers", "expected", "needle"),
    [
        (b"\x0a\xff\xff\xff\x0f", PROTOBUF, 400, "malformed traces protobuf"),
        (b'{"resourceSpans": [', JSON, 400, "invalid JSON"),
        (b'{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"xyz"}]}]}]}', JSON, 400, "traceId must be"),
        (b"\x1f\x8b\x08\x00garbage", {**PROTOBUF, "Content-Encoding": "gzip"}, 400, "invalid gzip body"),
        (gzip.compress(trace_request())[:-9], {**PROTOBUF, "Content-Encoding": "gzip"}, 400, "truncated"),
        (trace_request(), {**PROTOBUF, "Content-Encoding": "br"}, 400, "unsupported Content-Encoding"),
        (trace_request(), {"Content-Type": "text/plain"}, 415, "unsupported content type"),
        (trace_request(), {}, 415, "unsupported content type"),
        (bytes(2 * 1024 * 1024), PROTOBUF, 413, "exceeds the limit"),
    ],
)
async def test_bad_requests_are_refused_and_serving_continues(
    hop: Hop,
    http_receiver: HttpReceiver,
    session: aiohttp.ClientSession,
    body: bytes,
    headers: dict[str, str],
    expected: int,
    needle: str,
) -> None:
    status, content_type, reply, _ = await _post(session, _url(http_receiver), body, headers)
    assert status == expected
    assert content_type == ("application/json" if headers == JSON else "application/x-protobuf")
    rich = _status(reply, content_type)
    assert needle in rich.message
    if expected == 400:
        detail = error_details_pb2.BadRequest()
        assert rich.details[0].Unpack(detail)
    reason = {400: "invalid", 415: "invalid", 413: "too_large"}[expected]
    assert hop.sample("otelai_receiver_refused_requests_total", signal="traces", reason=reason) == 1
    assert hop.sink.payloads == []
    assert (await _post(session, _url(http_receiver), trace_request(), PROTOBUF))[0] == 200
    assert len(hop.sink.payloads) == 1


async def test_chunked_body_over_the_limit_is_413(
    hop: Hop, http_receiver: HttpReceiver, session: aiohttp.ClientSession
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(24):
            yield bytes(64 * 1024)  # 1.5 MiB in all, no Content-Length

    status, _, _, _ = await _post(session, _url(http_receiver), chunks(), PROTOBUF)
    assert status == 413
    assert (await _post(session, _url(http_receiver), trace_request(), PROTOBUF))[0] == 200


@pytest.mark.parametrize(("encoding", "wbits"), [("gzip", 16 + zlib.MAX_WBITS), ("deflate", zlib.MAX_WBITS)])
async def test_compression_bomb_is_413_and_serving_continues(hop: Hop, encoding: str, wbits: int) -> None:
    config = HttpReceiverConfig(endpoint="127.0.0.1:0", max_request_body_size=4 * 1024 * 1024)
    receiver = HttpReceiver(config, hop.pipeline, hop.metrics)
    await receiver.start()
    try:
        bomb = b"".join(_zeros_bomb(GIB, wbits))  # about 1 MB that inflates to 1 GiB
        assert len(bomb) < config.max_request_body_size
        async with aiohttp.ClientSession() as session:
            headers = {**PROTOBUF, "Content-Encoding": encoding}
            status, _, reply, _ = await _post(session, _url(receiver), bomb, headers)
            assert status == 413
            assert "decompressed request body exceeds" in status_pb2.Status.FromString(reply).message
            assert (await _post(session, _url(receiver), trace_request(), PROTOBUF))[0] == 200
        assert hop.sample("otelai_receiver_refused_requests_total", signal="traces", reason="too_large") == 1
    finally:
        await receiver.stop()


@pytest.mark.parametrize("headers", [PROTOBUF, JSON])
async def test_overloaded_is_429_with_retry_after(
    hop: Hop, http_receiver: HttpReceiver, session: aiohttp.ClientSession, headers: dict[str, str]
) -> None:
    hop.sink.room = False
    body = trace_request() if headers is PROTOBUF else request_to_json(Signal.TRACES, trace_request())
    status, content_type, reply, response_headers = await _post(session, _url(http_receiver), body, headers)
    assert status == 429
    assert response_headers["Retry-After"] == "3"  # 2.5 s, rounded up to whole seconds
    rich = _status(reply, content_type)
    info = error_details_pb2.RetryInfo()
    assert rich.details[0].Unpack(info)
    assert (info.retry_delay.seconds, info.retry_delay.nanos) == (2, 500_000_000)
    assert hop.sink.payloads == []
    assert hop.sample("otelai_receiver_refused_requests_total", signal="traces", reason="overloaded") == 1


async def test_stopping_is_503_with_retry_after(
    hop: Hop, http_receiver: HttpReceiver, session: aiohttp.ClientSession
) -> None:
    hop.pipeline.stop_accepting()
    status, _, _, headers = await _post(session, _url(http_receiver), trace_request(), PROTOBUF)
    assert (status, headers["Retry-After"]) == (503, "3")
    assert hop.sample("otelai_receiver_refused_requests_total", signal="traces", reason="stopping") == 1


async def test_wrong_method_unknown_path_and_health(
    hop: Hop, http_receiver: HttpReceiver, session: aiohttp.ClientSession
) -> None:
    async with session.get(_url(http_receiver)) as response:
        assert (response.status, response.headers["Allow"]) == (405, "POST")
    async with session.post(_url(http_receiver, "/v1/profiles"), data=b"", headers=PROTOBUF) as response:
        assert response.status == 404
        assert "/v1/traces" in status_pb2.Status.FromString(await response.read()).message
    async with session.get(_url(http_receiver, "/healthz")) as response:
        assert response.status == 200
    async with session.get(_url(http_receiver, "/readyz")) as response:
        assert response.status == 200


async def test_readyz_follows_readiness(hop: Hop, session: aiohttp.ClientSession) -> None:
    ready = False
    config = HttpReceiverConfig(endpoint="127.0.0.1:0")
    receiver = HttpReceiver(config, hop.pipeline, hop.metrics, readiness=lambda: ready)
    await receiver.start()
    try:
        async with session.get(_url(receiver, "/readyz")) as response:
            assert response.status == 503
        ready = True
        async with session.get(_url(receiver, "/readyz")) as response:
            assert response.status == 200
        async with session.get(_url(receiver, "/healthz")) as response:
            assert response.status == 200
    finally:
        await receiver.stop()


async def test_bearer_token(hop: Hop, session: aiohttp.ClientSession) -> None:
    config = HttpReceiverConfig(endpoint="127.0.0.1:0", auth=Auth(bearer_token="s3cret"))
    receiver = HttpReceiver(config, hop.pipeline, hop.metrics)
    await receiver.start()
    try:
        for auth in [None, "Bearer wrong", "Basic s3cret", "s3cret"]:
            headers = dict(PROTOBUF) if auth is None else {**PROTOBUF, "Authorization": auth}
            status, _, _, response_headers = await _post(session, _url(receiver), trace_request(), headers)
            assert (status, response_headers["WWW-Authenticate"]) == (401, "Bearer")
        assert hop.sink.payloads == []
        headers = {**PROTOBUF, "Authorization": "Bearer s3cret"}
        assert (await _post(session, _url(receiver), trace_request(), headers))[0] == 200
        telemetry, sent, _ = sdk_telemetry(Signal.LOGS)
        auth_header = {"Authorization": "Bearer s3cret"}
        result = await asyncio.to_thread(
            _sdk_export, Signal.LOGS, receiver.port, telemetry, headers=auth_header
        )
        assert result.name == "SUCCESS"
        assert hop.sink.payloads[-1].data == sent
        assert (
            hop.sample("otelai_receiver_refused_requests_total", signal="traces", reason="unauthenticated")
            == 4
        )
    finally:
        await receiver.stop()


async def test_port_in_use_fails_to_start(hop: Hop, http_receiver: HttpReceiver) -> None:
    config = HttpReceiverConfig(endpoint=f"127.0.0.1:{http_receiver.port}")
    with pytest.raises(OSError):
        await HttpReceiver(config, hop.pipeline, hop.metrics).start()
