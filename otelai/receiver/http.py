"""The OTLP/HTTP receiver: ``POST /v1/traces``, ``/v1/metrics`` and ``/v1/logs``.

Bodies are binary protobuf or OTLP JSON, optionally gzip or deflate encoded (aiohttp's own
decompression is off: :mod:`otelai.receiver.decode` decompresses under a hard limit).
Replies follow the OTLP specification: the ``Export*ServiceResponse`` on success and a
``google.rpc.Status`` on errors, both in the request's content type; 400 for bad data, 401
for a missing or wrong bearer token, 413 past ``max_request_body_size`` (as received or
decompressed), 415 for other content types, 429 when the exporters' queues are full and 503
while shutting down, both with ``Retry-After``. ``GET /healthz`` and ``/readyz`` are served
on the same port for orchestrators.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import ssl
import time
from collections.abc import Awaitable, Callable

import grpc
from aiohttp import web
from google.rpc import status_pb2

from otelai.config import HttpReceiver as HttpReceiverConfig
from otelai.otlp_json import message_to_json
from otelai.pipeline import Admission, Payload, Pipeline
from otelai.receiver import status
from otelai.receiver.decode import (
    Decoded,
    Encoding,
    Refusal,
    decompress,
    encoding_of,
    parse,
    prepare_wire_check,
    too_large,
)
from otelai.signals import Signal, success_response
from otelai.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

_OVERLOADED = "otelai is over capacity (scoring or the exporters' queues are full); retry later"
_STOPPING = "otelai is shutting down; retry later"
_NO_TOKEN = "missing or invalid bearer token"
# Time aiohttp gives running handlers to finish when the receiver stops; the service stops
# accepting before it stops the receivers, so handlers are short by then.
_SHUTDOWN_TIMEOUT = 5.0


class HttpReceiver:
    """OTLP/HTTP server handing each valid request to ``pipeline``.

    Parameters
    ----------
    config
        Endpoint, body size limit, TLS and bearer-token settings.
    pipeline
        Where accepted requests go.
    metrics
        Receiver counters are updated here.
    retry_after
        Seconds a refused client is told to wait (``Retry-After`` rounds up to whole seconds).
    readiness
        Answers ``GET /readyz``: ready or not.
    """

    def __init__(
        self,
        config: HttpReceiverConfig,
        pipeline: Pipeline,
        metrics: Metrics,
        *,
        retry_after: float = 1.0,
        readiness: Callable[[], bool] = lambda: True,
    ) -> None:
        self._config = config
        self._pipeline = pipeline
        self._metrics = metrics
        self._retry_after = retry_after
        self._readiness = readiness
        self._limit = config.max_request_body_size
        self._expected_auth: bytes | None = None
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._success = {
            (signal, encoding): _success_body(signal, encoding) for signal in Signal for encoding in Encoding
        }

    @property
    def port(self) -> int:
        """The bound port (useful when the endpoint asks for port 0)."""
        return self._port

    async def start(self) -> None:
        """Bind the endpoint and start serving; raises ``OSError`` when it cannot bind."""
        # The request validator compiles (or loads from numba's cache) off the event loop,
        # before the first request rather than during it.
        await asyncio.to_thread(prepare_wire_check)
        config = self._config
        token = config.auth.token() if config.auth is not None else None
        self._expected_auth = f"Bearer {token}".encode() if token else None
        host, _, port = config.endpoint.rpartition(":")
        runner = web.AppRunner(
            self._app(),
            auto_decompress=False,  # decode.decompress bounds the output; aiohttp would not
            access_log=None,
            shutdown_timeout=_SHUTDOWN_TIMEOUT,
        )
        await runner.setup()
        site = web.TCPSite(runner, host.strip("[]") or None, int(port), ssl_context=_ssl_context(config))
        try:
            await site.start()
        except OSError:
            await runner.cleanup()
            raise
        self._runner, self._port = runner, site.port
        log.info("OTLP/HTTP receiver listening", extra={"endpoint": config.endpoint, "port": self._port})

    async def stop(self) -> None:
        """Stop listening and let running requests finish (bounded)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _app(self) -> web.Application:
        # client_max_size is moot (bodies are read by _read_body) but keep aiohttp's own
        # readers, should anything use them, under the same limit.
        app = web.Application(client_max_size=self._limit)
        for signal in Signal:
            app.router.add_route("*", signal.spec.http_path, self._handler(signal))
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        return app

    def _handler(self, signal: Signal) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            return await self._export(signal, request)

        return handle

    async def _export(self, signal: Signal, request: web.Request) -> web.Response:
        received_ns = time.monotonic_ns()
        if request.method != "POST":
            message = status.status(grpc.StatusCode.INVALID_ARGUMENT, "method not allowed; use POST")
            response = _error(405, message, _reply_encoding(request.headers.get("Content-Type")))
            response.headers["Allow"] = "POST"
            return response
        try:
            decoded, size = await self._decode(signal, request)
        except Refusal as refusal:
            return self._refusal_response(signal, refusal, request)
        if not decoded.empty:
            payload = Payload(signal, decoded.data, decoded.items, received_ns, decoded.request)
            admission = await self._pipeline.submit(payload)
            if admission is not Admission.ACCEPTED:
                return self._refuse_admission(signal, admission, decoded.encoding)
        self._metrics.receiver_items.labels(signal.value).inc(decoded.items)
        self._metrics.receiver_bytes.labels(signal.value).inc(size)
        body = self._success[signal, decoded.encoding]
        return web.Response(body=body, content_type=decoded.encoding.content_type)

    async def _decode(self, signal: Signal, request: web.Request) -> tuple[Decoded, int]:
        """The request, and its size as received (decompressed); raises :class:`Refusal`."""
        if self._expected_auth is not None and not self._authorized(request):
            raise Refusal(401, grpc.StatusCode.UNAUTHENTICATED, "unauthenticated", _NO_TOKEN)
        encoding = encoding_of(request.headers.get("Content-Type"))
        body = decompress(
            await self._read_body(request), request.headers.get("Content-Encoding"), self._limit
        )
        return parse(signal, body, encoding), len(body)

    def _refusal_response(self, signal: Signal, refusal: Refusal, request: web.Request) -> web.Response:
        log.debug("refused OTLP/HTTP request: %s", refusal.message)
        self._refused(signal, refusal.reason)
        if refusal.http_status == 400:
            rich = status.bad_request(refusal.message)
        else:
            rich = status.status(refusal.grpc_code, refusal.message)
        response = _error(refusal.http_status, rich, _reply_encoding(request.headers.get("Content-Type")))
        if refusal.http_status == 401:
            response.headers["WWW-Authenticate"] = "Bearer"
        elif refusal.http_status == 413:
            response.force_close()  # the rest of the body is not worth reading
        return response

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self._limit
        declared = request.content_length
        if declared is not None and declared > limit:
            raise too_large(f"request body of {declared} bytes exceeds the limit of {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                raise too_large(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _refuse_admission(self, signal: Signal, admission: Admission, encoding: Encoding) -> web.Response:
        if admission is Admission.OVERLOADED:
            reason, http_status, message = "overloaded", 429, _OVERLOADED
        else:
            reason, http_status, message = "stopping", 503, _STOPPING
        self._refused(signal, reason)
        code = grpc.StatusCode.RESOURCE_EXHAUSTED if http_status == 429 else grpc.StatusCode.UNAVAILABLE
        response = _error(http_status, status.status(code, message, retry_after=self._retry_after), encoding)
        response.headers["Retry-After"] = status.retry_after_header(self._retry_after)
        return response

    def _refused(self, signal: Signal, reason: str) -> None:
        self._metrics.receiver_refused.labels(signal.value, reason).inc()

    def _authorized(self, request: web.Request) -> bool:
        expected = self._expected_auth
        assert expected is not None
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        scheme, _, token = given.partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(b"Bearer " + token.strip(), expected)

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def _readyz(self, request: web.Request) -> web.Response:
        if self._readiness():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    async def _not_found(self, request: web.Request) -> web.Response:
        paths = ", ".join(signal.spec.http_path for signal in Signal)
        message = f"no such path {request.path[:200]!r}; OTLP/HTTP paths are {paths}"
        grpc_status = status.status(grpc.StatusCode.UNIMPLEMENTED, message)
        return _error(404, grpc_status, _reply_encoding(request.headers.get("Content-Type")))


def _success_body(signal: Signal, encoding: Encoding) -> bytes:
    data = success_response(signal)
    if encoding is Encoding.PROTOBUF:
        return data
    return message_to_json(signal.spec.response_type.FromString(data)).encode()


def _reply_encoding(content_type: str | None) -> Encoding:
    """The encoding of error bodies: the request's, or protobuf when it has none we know."""
    try:
        return encoding_of(content_type)
    except Refusal:
        return Encoding.PROTOBUF


def _error(http_status: int, message: status_pb2.Status, encoding: Encoding) -> web.Response:
    body = status.encode(message, encoding)
    return web.Response(status=http_status, body=body, content_type=encoding.content_type)


def _ssl_context(config: HttpReceiverConfig) -> ssl.SSLContext | None:
    tls = config.tls
    if tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file:
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
