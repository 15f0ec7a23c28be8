"""The OTLP/gRPC receiver: ``TraceService``, ``MetricsService`` and ``LogsService`` ``Export``.

A generic handler takes each request as raw bytes, so what is forwarded is exactly what was
received; the bytes are only validated and their items counted (trace and log requests by the
compiled validator of :mod:`otelai.receiver.wire_check` when it is sure, else by parsing them
with upb). The
gRPC health service runs on the same server; it says NOT_SERVING until the owner calls
``set_serving(True)``.

Refusals follow the OTLP specification: ``INVALID_ARGUMENT`` for bad data (not retried),
``RESOURCE_EXHAUSTED`` with a ``RetryInfo`` when the exporters' queues are full and
``UNAVAILABLE`` with a ``RetryInfo`` while shutting down (both retried after the delay).
Requests over ``max_recv_msg_size_mib`` are refused by gRPC itself with
``RESOURCE_EXHAUSTED`` before they reach the handler, so they are not counted here.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from pathlib import Path
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from otelai.config import GrpcReceiver as GrpcReceiverConfig
from otelai.pipeline import Admission, Payload, Pipeline
from otelai.receiver import status
from otelai.receiver.decode import Encoding, Refusal, parse, prepare_wire_check
from otelai.signals import Signal, success_response
from otelai.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcReceiver:
    """OTLP/gRPC server handing each valid request to ``pipeline``.

    Parameters
    ----------
    config
        Endpoint, message size limit, TLS and bearer-token settings.
    pipeline
        Where accepted requests go.
    metrics
        Receiver counters are updated here.
    retry_after
        Seconds a refused client is told to wait before retrying.
    """

    def __init__(
        self,
        config: GrpcReceiverConfig,
        pipeline: Pipeline,
        metrics: Metrics,
        *,
        retry_after: float = 1.0,
    ) -> None:
        self._config = config
        self._pipeline = pipeline
        self._metrics = metrics
        self._retry_after = retry_after
        self._health = health.aio.HealthServicer()
        self._serving = False
        self._health_updates: set[asyncio.Task[None]] = set()
        self._server: Any = None
        self._port = 0
        self._expected_auth: bytes | None = None
        self._success = {signal: success_response(signal) for signal in Signal}

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
        limit = int(config.max_recv_msg_size_mib * 1024 * 1024)
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                # Fail to start rather than silently share the port with another process.
                ("grpc.so_reuseport", 0),
            ]
        )
        server.add_generic_rpc_handlers([self._service(signal) for signal in Signal])
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        try:
            if config.tls is None:
                port = server.add_insecure_port(config.endpoint)
            else:
                port = server.add_secure_port(config.endpoint, _server_credentials(config))
        except RuntimeError as exc:  # grpcio raises when it cannot bind
            raise OSError(f"OTLP/gRPC receiver cannot listen on {config.endpoint}: {exc}") from exc
        if not port:
            raise OSError(f"OTLP/gRPC receiver cannot listen on {config.endpoint}")
        await server.start()
        self._server, self._port = server, int(port)
        await self._apply_health()
        log.info("OTLP/gRPC receiver listening", extra={"endpoint": config.endpoint, "port": self._port})

    async def stop(self, grace: float) -> None:
        """Report NOT_SERVING, refuse new RPCs and give running ones ``grace`` seconds."""
        await asyncio.gather(*self._health_updates)
        await self._health.enter_graceful_shutdown()
        if self._server is not None:
            await self._server.stop(grace)
            self._server = None

    def set_serving(self, serving: bool) -> None:
        """Set the health of the server ("") and of the three OTLP services.

        They start NOT_SERVING: the owner says when the whole process is ready. The health
        servicer is asynchronous, so the change lands once the event loop next runs.
        """
        self._serving = serving
        if self._server is None:
            return  # start() applies it
        task = asyncio.get_running_loop().create_task(self._apply_health())
        self._health_updates.add(task)
        task.add_done_callback(self._health_updates.discard)

    async def _apply_health(self) -> None:
        # Reads the wanted state at each step, so overlapping updates end on the latest.
        for name in ("", *(signal.spec.grpc_service for signal in Signal)):
            await self._health.set(name, _SERVING if self._serving else _NOT_SERVING)

    def _service(self, signal: Signal) -> Any:
        async def export(request: bytes, context: Any) -> bytes:
            return await self._export(signal, request, context)

        # No (de)serialisers: the handler gets and returns raw bytes.
        handler = grpc.unary_unary_rpc_method_handler(export)
        return grpc.method_handlers_generic_handler(signal.spec.grpc_service, {"Export": handler})

    async def _export(self, signal: Signal, data: bytes, context: Any) -> bytes:
        received_ns = time.monotonic_ns()
        if self._expected_auth is not None and not self._authorized(context):
            await self._refuse(
                context, signal, "unauthenticated", status.status(grpc.StatusCode.UNAUTHENTICATED, _NO_TOKEN)
            )
        try:
            decoded = parse(signal, data, Encoding.PROTOBUF)
        except Refusal as refusal:
            log.debug("refused OTLP/gRPC request: %s", refusal.message)
            await self._refuse(context, signal, refusal.reason, status.bad_request(refusal.message))
        if not decoded.empty:
            payload = Payload(signal, data, decoded.items, received_ns, decoded.request)
            admission = await self._pipeline.submit(payload)
            if admission is not Admission.ACCEPTED:
                await self._refuse_admission(context, signal, admission)
        self._metrics.receiver_items.labels(signal.value).inc(decoded.items)
        self._metrics.receiver_bytes.labels(signal.value).inc(len(data))
        return self._success[signal]

    def _authorized(self, context: Any) -> bool:
        expected = self._expected_auth
        assert expected is not None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value.encode() if isinstance(value, str) else bytes(value)
                scheme, _, token = given.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(b"Bearer " + token, expected)
        return False

    async def _refuse_admission(self, context: Any, signal: Signal, admission: Admission) -> NoReturn:
        if admission is Admission.OVERLOADED:
            reason, code, message = "overloaded", grpc.StatusCode.RESOURCE_EXHAUSTED, _OVERLOADED
        else:
            reason, code, message = "stopping", grpc.StatusCode.UNAVAILABLE, _STOPPING
        await self._refuse(
            context, signal, reason, status.status(code, message, retry_after=self._retry_after)
        )

    async def _refuse(self, context: Any, signal: Signal, reason: str, rich: Any) -> NoReturn:
        self._metrics.receiver_refused.labels(signal.value, reason).inc()
        code = _CODES[rich.code]
        await context.abort(code, rich.message, trailing_metadata=status.trailing_metadata(rich))
        raise AssertionError("context.abort returned")  # pragma: no cover


_NO_TOKEN = "missing or invalid bearer token"
_OVERLOADED = "otelai is over capacity (scoring or the exporters' queues are full); retry later"
_STOPPING = "otelai is shutting down; retry later"
_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _server_credentials(config: GrpcReceiverConfig) -> Any:
    tls = config.tls
    assert tls is not None
    key, cert = Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes()
    ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )
