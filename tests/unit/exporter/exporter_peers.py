"""Real peers for the exporter tests: a gRPC and an HTTP server on loopback that record raw
requests and answer as told, and a throwaway PKI made with the ``openssl`` command
(``cryptography`` is not installed): a CA, a server certificate and a client certificate."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
from aiohttp import web
from google.rpc import error_details_pb2, status_pb2

from otelai.signals import Signal

_EC = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed none of the above


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _make_ca(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    _openssl(
        "req", "-x509", *_EC, "-keyout", key, "-out", cert, "-days", "2", "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip
    return cert, key


def _make_leaf(folder: Path, name: str, ca: tuple[Path, Path], extensions: str) -> tuple[Path, Path]:
    cert, key, csr, ext = (folder / f"{name}.{suffix}" for suffix in ("crt", "key", "csr", "ext"))
    ext.write_text(extensions)
    _openssl("req", *_EC, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
    _openssl(
        "x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1], "-CAcreateserial",
        "-out", cert, "-days", "2", "-extfile", ext,
    )  # fmt: skip
    return cert, key


def make_pki(folder: Path, server_names: tuple[str, ...] = ("DNS:localhost", "IP:127.0.0.1")) -> Pki:
    """Write a CA, a server pair valid for ``server_names`` and a client pair under ``folder``."""
    ca = _make_ca(folder, "ca")
    other_ca, _ = _make_ca(folder, "other-ca")
    server = _make_leaf(
        folder, "server", ca, f"subjectAltName={','.join(server_names)}\nextendedKeyUsage=serverAuth\n"
    )
    client = _make_leaf(folder, "client", ca, "extendedKeyUsage=clientAuth\n")
    return Pki(ca[0], server[0], server[1], client[0], client[1], other_ca)


@dataclass(frozen=True)
class Received:
    """One request as the peer saw it: path (gRPC method or URL path), headers, raw body."""

    path: str
    headers: dict[str, str]
    body: bytes
    header_list: list[tuple[str, str]] = field(default_factory=list)  # HTTP, with repeats


@dataclass
class GrpcReply:
    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""
    retry_delay: float | None = None  # attach google.rpc.RetryInfo when set
    response: bytes = b""
    hang: bool = False  # wait until the peer closes (for client timeouts)


class GrpcPeer:
    """A real ``grpc.aio`` server that records raw requests and answers as told."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.reply = GrpcReply()
        self.port = 0
        self.release = asyncio.Event()

    def handler(self, method: str) -> grpc.RpcMethodHandler:
        async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            metadata = {key: value for key, value in context.invocation_metadata()}
            self.requests.append(Received(method, metadata, request))
            reply = self.reply
            if reply.hang:
                await self.release.wait()
            if reply.code is not grpc.StatusCode.OK:
                await context.abort(reply.code, reply.details, trailing_metadata=_status_trailer(reply))
            return reply.response

        return grpc.unary_unary_rpc_method_handler(unary)


def _status_trailer(reply: GrpcReply) -> tuple[tuple[str, bytes], ...]:
    if reply.retry_delay is None:
        return ()
    status = status_pb2.Status(code=reply.code.value[0], message=reply.details)
    info = error_details_pb2.RetryInfo()
    info.retry_delay.FromTimedelta(datetime.timedelta(seconds=reply.retry_delay))
    status.details.add().Pack(info)
    return (("grpc-status-details-bin", status.SerializeToString()),)


@contextlib.asynccontextmanager
async def grpc_peer(
    credentials: grpc.ServerCredentials | None = None, options: list[tuple[str, Any]] | None = None
) -> AsyncIterator[GrpcPeer]:
    peer = GrpcPeer()
    server = grpc.aio.server(options=options or [])
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                signal.spec.grpc_service, {"Export": peer.handler(signal.spec.grpc_method)}
            )
            for signal in Signal
        ]
    )
    if credentials is None:
        peer.port = server.add_insecure_port("127.0.0.1:0")
    else:
        peer.port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    try:
        yield peer
    finally:
        peer.release.set()
        await server.stop(None)


@dataclass
class HttpReply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hang: bool = False


class HttpPeer:
    """A real ``aiohttp`` server that records raw (still compressed) requests and answers as told."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.reply = HttpReply()
        self.url = ""
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        headers = list(request.headers.items())
        self.requests.append(Received(request.path, dict(headers), await request.read(), headers))
        reply = self.reply
        if reply.hang:
            await self.release.wait()
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)


@contextlib.asynccontextmanager
async def http_peer(ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[HttpPeer]:
    peer = HttpPeer()
    app = web.Application()
    app.router.add_route("POST", "/{tail:.*}", peer.handle)
    runner = web.AppRunner(app, auto_decompress=False, shutdown_timeout=1.0, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = runner.addresses[0][1]
    peer.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    try:
        yield peer
    finally:
        peer.release.set()
        await runner.cleanup()


def free_port() -> int:
    """A loopback port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port
