"""Hostile and broken requests against the running service, over HTTP and gRPC.

Each is refused with the status the OTLP specification asks for, and a valid request right
after it still succeeds: one bad client cannot take the hop down.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import status_pb2

from .client import TRACE_EXPORT, grpc_export, http_post, next_ids, trace_request
from .service import OtelaiService
from .util import http_get

pytestmark = pytest.mark.slow

HTTP_LIMIT = 64 * 1024  # receivers.otlp.protocols.http.max_request_body_size
GRPC_LIMIT_MIB = 1


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OtelaiService]:
    workdir: Path = tmp_path_factory.mktemp("malformed")
    handle = OtelaiService(
        f"""
receivers:
  otlp:
    protocols:
      grpc: {{max_recv_msg_size_mib: {GRPC_LIMIT_MIB}}}
      http: {{max_request_body_size: {HTTP_LIMIT}}}
exporters:
  file: {{path: "{workdir / "forwarded.jsonl"}"}}
""",
        workdir,
    )
    try:
        yield handle.start()
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def channel(service: OtelaiService) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(service.grpc_target) as chan:
        yield chan


def _still_serving(service: OtelaiService, channel: grpc.Channel) -> None:
    assert service.alive(), service.log_tail()
    body = trace_request(next_ids(3))
    answer = http_post(service.http_port, "/v1/traces", body)
    assert answer.status == 200, answer
    assert grpc_export(channel, body).code is grpc.StatusCode.OK
    assert http_get(f"{service.url}/healthz")[0] == 200


def _gzip_bomb(size: int) -> bytes:
    """``size`` zero bytes, gzip-compressed ~1000:1; small enough to pass the size limit on
    the wire, so only a limit on the *decompressed* size can stop it."""
    bomb = gzip.compress(b"\0" * size, compresslevel=9)
    assert len(bomb) < HTTP_LIMIT // 2
    return bomb


PROTO, JSON = "application/x-protobuf", "application/json"
GZIP = {"Content-Encoding": "gzip"}
HTTP_CASES: dict[str, tuple[str, dict[str, str], Callable[[], bytes], int]] = {
    # name: (content type, extra headers, body, expected status)
    "garbage protobuf": (PROTO, {}, lambda: b"\x0a\xff\xff\xff\xff\x0f\x01garbage", 400),
    "truncated protobuf": (PROTO, {}, lambda: trace_request(next_ids(5))[:-7], 400),
    "malformed json": (JSON, {}, lambda: b'{"resourceSpans": [{"scop', 400),
    "json of the wrong shape": (JSON, {}, lambda: b'{"resourceSpans": 5}', 400),
    "wrong content type": ("text/plain", {}, lambda: b"hello", 415),
    "oversize body": (PROTO, {}, lambda: trace_request(next_ids(4), padding=HTTP_LIMIT), 413),
    "gzip bomb": (PROTO, GZIP, lambda: _gzip_bomb(32 * 1024 * 1024), 413),
    "corrupt gzip": (PROTO, GZIP, lambda: b"\x1f\x8b\x08\x00garbage-not-deflate", 400),
}


@pytest.mark.parametrize("case", list(HTTP_CASES))
def test_http_refuses(case: str, service: OtelaiService, channel: grpc.Channel) -> None:
    content_type, headers, make_body, status = HTTP_CASES[case]
    answer = http_post(
        service.http_port, "/v1/traces", make_body(), content_type=content_type, headers=headers
    )
    assert answer.status == status, f"{case}: {answer.status} {answer.body[:300]!r}"
    if status == 400 and content_type == PROTO:
        # OTLP/HTTP: error bodies are a google.rpc.Status in the request's encoding.
        assert status_pb2.Status.FromString(answer.body).message, answer.body
    _still_serving(service, channel)


def test_http_wrong_path_and_method(service: OtelaiService, channel: grpc.Channel) -> None:
    assert http_post(service.http_port, "/v1/nothing", b"").status == 404
    assert http_post(service.http_port, "/v1/traces", b"", method="GET").status == 405
    _still_serving(service, channel)


def test_grpc_garbage_is_invalid_argument(service: OtelaiService, channel: grpc.Channel) -> None:
    answer = grpc_export(channel, b"\x0a\xff\xff\xff\xff\x0f\x01garbage")
    assert answer.code is grpc.StatusCode.INVALID_ARGUMENT, answer
    assert answer.details, "the refusal should say what is wrong"
    _still_serving(service, channel)


def test_grpc_oversize_is_resource_exhausted(service: OtelaiService, channel: grpc.Channel) -> None:
    body = trace_request(next_ids(8), padding=GRPC_LIMIT_MIB * 1024 * 1024 // 4)
    assert len(body) > GRPC_LIMIT_MIB * 1024 * 1024
    answer = grpc_export(channel, body)
    assert answer.code is grpc.StatusCode.RESOURCE_EXHAUSTED, answer
    _still_serving(service, channel)


def test_grpc_gzip_bomb_is_resource_exhausted(service: OtelaiService, channel: grpc.Channel) -> None:
    # 32 MiB of zeros compress to ~32 KiB on the wire; the limit applies after decompression.
    answer = grpc_export(channel, b"\0" * (32 * 1024 * 1024), compression=grpc.Compression.Gzip)
    assert answer.code is grpc.StatusCode.RESOURCE_EXHAUSTED, answer
    _still_serving(service, channel)


def test_grpc_unknown_method(service: OtelaiService, channel: grpc.Channel) -> None:
    answer = grpc_export(channel, b"", method=TRACE_EXPORT.replace("Export", "Nope"))
    assert answer.code is grpc.StatusCode.UNIMPLEMENTED, answer
    _still_serving(service, channel)


def test_refusals_are_counted(service: OtelaiService) -> None:
    # Runs after the cases above in this module (pytest keeps file order).
    assert service.metric("otelai_receiver_refused_requests_total", reason="invalid") >= 5
    assert service.metric("otelai_receiver_refused_requests_total", reason="too_large") >= 2
