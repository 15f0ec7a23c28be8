"""OtlpHttpExporter against a real aiohttp server on loopback."""

from __future__ import annotations

import email.utils
import gzip
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from google.rpc import status_pb2

from otelai.config import ClientTLS, OtlpHttpExporter
from otelai.exporter.base import ExportOutcome
from otelai.exporter.otlp_http import OtlpHttpExporter as Exporter
from otelai.exporter.otlp_http import parse_retry_after
from otelai.otlp_json import message_to_json, request_from_json
from otelai.signals import Signal, success_response

from .exporter_peers import HttpPeer, HttpReply, Pki, free_port, http_peer, make_pki
from .otlp_samples import sample, traces

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


def exporter_for(endpoint: str, **settings: Any) -> Exporter:
    settings.setdefault("compression", "none")
    return Exporter("otlphttp", OtlpHttpExporter(endpoint=endpoint, **settings))


async def post_once(exporter: Exporter, signal: Signal = Signal.TRACES, data: bytes | None = None) -> Any:
    await exporter.start()
    try:
        return await exporter.export(signal, traces() if data is None else data)
    finally:
        await exporter.shutdown()


@pytest.fixture
async def peer() -> AsyncIterator[HttpPeer]:
    async with http_peer() as running:
        yield running


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_context(pki: Pki, *, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki.server_cert, pki.server_key)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki.ca)
    return context


@pytest.mark.parametrize("signal", list(Signal))
async def test_protobuf_bytes_arrive_untouched(peer: HttpPeer, signal: Signal) -> None:
    data = sample(signal)
    result = await post_once(exporter_for(peer.url), signal, data)
    assert result.outcome is ExportOutcome.SUCCESS
    [received] = peer.requests
    assert received.path == f"/v1/{signal.value}"
    assert received.headers["Content-Type"] == "application/x-protobuf"
    assert "Content-Encoding" not in received.headers
    assert received.body == data


async def test_export_without_start_opens_a_session(peer: HttpPeer) -> None:
    exporter = exporter_for(peer.url)
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.SUCCESS


async def test_base_endpoint_path_and_per_signal_override(peer: HttpPeer) -> None:
    exporter = exporter_for(f"{peer.url}/otlp/", traces_endpoint=f"{peer.url}/custom/spans")
    await exporter.start()
    await exporter.export(Signal.TRACES, traces())
    await exporter.export(Signal.LOGS, sample(Signal.LOGS))
    await exporter.shutdown()
    assert [received.path for received in peer.requests] == ["/custom/spans", "/otlp/v1/logs"]


async def test_headers_are_sent(peer: HttpPeer) -> None:
    settings = {"Authorization": "Bearer s3cret", "X-Tenant": "edge-1", "content-type": "text/plain"}
    await post_once(exporter_for(peer.url, headers=settings))
    headers = peer.requests[0].headers
    content_types = [value for key, value in peer.requests[0].header_list if key.lower() == "content-type"]
    assert content_types == ["application/x-protobuf"]
    assert headers["Authorization"] == "Bearer s3cret"
    assert headers["X-Tenant"] == "edge-1"
    assert headers["User-Agent"].startswith("otelai/")


@pytest.mark.parametrize("spans", [3, 2000], ids=["small-inline", "large-in-thread"])
async def test_gzip_body(peer: HttpPeer, spans: int) -> None:
    data = traces(spans=spans)
    result = await post_once(exporter_for(peer.url, compression="gzip"), data=data)
    assert result.outcome is ExportOutcome.SUCCESS
    received = peer.requests[0]
    assert received.headers["Content-Encoding"] == "gzip"
    assert len(received.body) < len(data) or spans < 10
    assert gzip.decompress(received.body) == data


@pytest.mark.parametrize("compression", ["none", "gzip"])
@pytest.mark.parametrize("signal", list(Signal))
async def test_json_encoding(peer: HttpPeer, signal: Signal, compression: str) -> None:
    data = sample(signal)
    result = await post_once(exporter_for(peer.url, encoding="json", compression=compression), signal, data)
    assert result.outcome is ExportOutcome.SUCCESS
    received = peer.requests[0]
    assert received.headers["Content-Type"] == "application/json"
    body = gzip.decompress(received.body) if compression == "gzip" else received.body
    assert request_from_json(signal, body) == signal.spec.request_type.FromString(data)


async def test_json_encoding_of_an_invalid_request_is_permanent(peer: HttpPeer) -> None:
    result = await post_once(exporter_for(peer.url, encoding="json"), data=b"\xff\xff")
    assert result.outcome is ExportOutcome.PERMANENT
    assert result.message.startswith("cannot encode the request")
    assert peer.requests == []


async def test_partial_success_in_protobuf(peer: HttpPeer) -> None:
    body = success_response(Signal.TRACES, rejected=2, message="2 spans too old")
    peer.reply = HttpReply(headers=PROTOBUF, body=body)
    result = await post_once(exporter_for(peer.url))
    assert result.outcome is ExportOutcome.SUCCESS
    assert (result.rejected, result.message) == (2, "2 spans too old")


async def test_partial_success_in_json(peer: HttpPeer) -> None:
    response = Signal.LOGS.spec.response_type.FromString(success_response(Signal.LOGS, 5, "too big"))
    peer.reply = HttpReply(headers={"Content-Type": "application/json; charset=utf-8"})
    peer.reply.body = message_to_json(response).encode()
    result = await post_once(exporter_for(peer.url, encoding="json"), Signal.LOGS, sample(Signal.LOGS))
    assert result.outcome is ExportOutcome.SUCCESS
    assert (result.rejected, result.message) == (5, "too big")


@pytest.mark.parametrize("status", [200, 202, 204])
async def test_empty_2xx_is_success(peer: HttpPeer, status: int) -> None:
    peer.reply = HttpReply(status=status)
    result = await post_once(exporter_for(peer.url))
    assert result.outcome is ExportOutcome.SUCCESS
    assert result.rejected == 0


async def test_unreadable_2xx_body_is_still_success(peer: HttpPeer) -> None:
    peer.reply = HttpReply(headers=JSON, body=b"{not json")
    result = await post_once(exporter_for(peer.url))
    assert result.outcome is ExportOutcome.SUCCESS


async def test_429_with_retry_after_seconds(peer: HttpPeer) -> None:
    peer.reply = HttpReply(status=429, headers={"Retry-After": "7"})
    result = await post_once(exporter_for(peer.url))
    assert result.outcome is ExportOutcome.RETRYABLE
    assert result.retry_after == 7.0
    assert result.message.startswith("HTTP 429")


async def test_503_with_retry_after_date(peer: HttpPeer) -> None:
    peer.reply = HttpReply(status=503, headers={"Retry-After": "Fri, 01 Jan 2100 00:00:00 GMT"})
    result = await post_once(exporter_for(peer.url))
    assert result.outcome is ExportOutcome.RETRYABLE
    assert result.retry_after is not None and result.retry_after > 0


@pytest.mark.parametrize("status", [502, 504])
async def test_other_retryable_statuses(peer: HttpPeer, status: int) -> None:
    peer.reply = HttpReply(status=status, body=b"upstream down")
    result = await post_once(exporter_for(peer.url))
    assert result.outcome is ExportOutcome.RETRYABLE
    assert result.retry_after is None
    assert result.message == f"HTTP {status}: upstream down"


async def test_400_with_a_status_body_is_permanent(peer: HttpPeer) -> None:
    status = status_pb2.Status(code=3, message="span 4 has no trace id")
    peer.reply = HttpReply(status=400, headers=PROTOBUF, body=status.SerializeToString())
    result = await post_once(exporter_for(peer.url))
    assert result.outcome is ExportOutcome.PERMANENT
    assert result.message == "HTTP 400: span 4 has no trace id"


async def test_500_with_a_json_status_body_is_permanent(peer: HttpPeer) -> None:
    peer.reply = HttpReply(status=500, headers=JSON, body=b'{"code": 13, "message": "boom"}')
    result = await post_once(exporter_for(peer.url, encoding="json"))
    assert result.outcome is ExportOutcome.PERMANENT
    assert result.message == "HTTP 500: boom"


async def test_404_without_body_is_permanent(peer: HttpPeer) -> None:
    peer.reply = HttpReply(status=404)
    result = await post_once(exporter_for(peer.url))
    assert result.outcome is ExportOutcome.PERMANENT
    assert result.message == "HTTP 404"


async def test_timeout_is_retryable(peer: HttpPeer) -> None:
    peer.reply = HttpReply(hang=True)
    result = await post_once(exporter_for(peer.url, timeout="50ms"))
    assert result.outcome is ExportOutcome.RETRYABLE
    assert "Timeout" in result.message


async def test_nobody_listening_is_retryable() -> None:
    result = await post_once(exporter_for(f"http://127.0.0.1:{free_port()}"))
    assert result.outcome is ExportOutcome.RETRYABLE
    assert result.message.startswith("POST http://127.0.0.1:")


async def test_tls_with_the_servers_ca(pki: Pki) -> None:
    async with http_peer(server_context(pki)) as peer:
        result = await post_once(exporter_for(peer.url, tls=ClientTLS(ca_file=str(pki.ca))))
    assert result.outcome is ExportOutcome.SUCCESS
    assert peer.requests[0].body == traces()


async def test_tls_with_an_unknown_ca_fails_retryably(pki: Pki) -> None:
    async with http_peer(server_context(pki)) as peer:
        result = await post_once(exporter_for(peer.url, tls=ClientTLS(ca_file=str(pki.other_ca))))
    assert result.outcome is ExportOutcome.RETRYABLE
    assert "certificate" in result.message.lower()
    assert peer.requests == []


async def test_insecure_skip_verify(pki: Pki) -> None:
    async with http_peer(server_context(pki)) as peer:
        result = await post_once(exporter_for(peer.url, tls=ClientTLS(insecure_skip_verify=True)))
    assert result.outcome is ExportOutcome.SUCCESS


async def test_mutual_tls(pki: Pki) -> None:
    async with http_peer(server_context(pki, require_client_cert=True)) as peer:
        tls = ClientTLS(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key))
        accepted = await post_once(exporter_for(peer.url, tls=tls))
        refused = await post_once(exporter_for(peer.url, tls=ClientTLS(ca_file=str(pki.ca))))
    assert accepted.outcome is ExportOutcome.SUCCESS
    assert refused.outcome is ExportOutcome.RETRYABLE
    assert len(peer.requests) == 1


async def test_server_name_override(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, server_names=("DNS:upstream.example",))
    async with http_peer(server_context(pki)) as peer:
        tls = ClientTLS(ca_file=str(pki.ca), server_name_override="upstream.example")
        result = await post_once(exporter_for(peer.url, tls=tls))
        mismatch = await post_once(exporter_for(peer.url, tls=ClientTLS(ca_file=str(pki.ca))))
    assert result.outcome is ExportOutcome.SUCCESS
    assert mismatch.outcome is ExportOutcome.RETRYABLE


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"endpoint": "gateway:4318"}, "endpoint"),
        ({"endpoint": "http://gateway:4318", "logs_endpoint": "ftp://gateway/logs"}, "logs_endpoint"),
    ],
)
def test_invalid_endpoint_names_the_key(settings: dict[str, str], key: str) -> None:
    with pytest.raises(
        ValueError, match=rf"exporter 'otlphttp': {key}: .* must be an http:// or https:// URL"
    ):
        Exporter("otlphttp", OtlpHttpExporter(**settings))


def test_unreadable_ca_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"tls\.ca_file: cannot read"):
        exporter_for("https://gateway:4318", tls=ClientTLS(ca_file=str(tmp_path / "missing.pem")))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("120", 120.0),
        ("Wed, 21 Oct 2015 07:28:30 GMT", 30.0),
        ("Wed, 21 Oct 2015 07:27:00 GMT", 0.0),  # already past
        ("Wed, 21 Oct 2015 07:29:00 -0000", 60.0),
        ("soon", None),
        ("-5", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    now = email.utils.parsedate_to_datetime("Wed, 21 Oct 2015 07:28:00 GMT").timestamp()
    assert parse_retry_after(value, now=now) == expected


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X Tenant": "a"}, "'X Tenant' is not a valid HTTP header name"),
        ({"X-Tenant": "a\r\nX-Evil: 1"}, r"headers\.X-Tenant: a value cannot hold CR, LF or NUL"),
    ],
)
def test_invalid_headers_are_refused_at_construction(headers: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        exporter_for("http://gateway:4318", headers=headers)
