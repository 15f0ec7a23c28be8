"""A real OTLP sink: the upstream end of every integration test.

A ``grpc.aio`` server with a generic handler that takes raw bytes (no generated stubs) and an
aiohttp OTLP/HTTP server, both on loopback, running on their own event loop in a background
thread so that blocking clients (the OpenTelemetry SDK) can be used from plain test functions.
Every request is recorded as received and parsed with the OTLP protobuf classes to count spans,
metric data points and log records.

The sink can answer ``UNAVAILABLE`` / 503 (an upstream outage), delay every answer (a slow
upstream), and be stopped and started again on the same ports (upstream down, then back).
"""

from __future__ import annotations

import asyncio
import collections
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import grpc
from aiohttp import web
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from .util import free_port, wait_until

_REQUEST_TYPES: dict[str, type[Message]] = {
    "traces": trace_service_pb2.ExportTraceServiceRequest,
    "metrics": metrics_service_pb2.ExportMetricsServiceRequest,
    "logs": logs_service_pb2.ExportLogsServiceRequest,
}
_RESPONSE_TYPES: dict[str, type[Message]] = {
    "traces": trace_service_pb2.ExportTraceServiceResponse,
    "metrics": metrics_service_pb2.ExportMetricsServiceResponse,
    "logs": logs_service_pb2.ExportLogsServiceResponse,
}
_GRPC_SERVICES = {
    "opentelemetry.proto.collector.trace.v1.TraceService": "traces",
    "opentelemetry.proto.collector.metrics.v1.MetricsService": "metrics",
    "opentelemetry.proto.collector.logs.v1.LogsService": "logs",
}


def count_items(signal: str, request: Any) -> int:
    """Spans, metric data points or log records in a parsed export request."""
    if signal == "traces":
        return sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
    if signal == "logs":
        return sum(len(sl.log_records) for rl in request.resource_logs for sl in rl.scope_logs)
    total = 0
    for rm in request.resource_metrics:
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


@dataclass
class Received:
    """One export request as the sink saw it."""

    signal: str
    protocol: str  # "grpc" or "http"
    body: bytes  # serialised protobuf, decompressed
    request: Any
    items: int


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    received: list[Received] = field(default_factory=list)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)


class OtlpSink:
    """OTLP gRPC + HTTP receiver that records everything it accepts.

    Parameters
    ----------
    grpc_port, http_port
        Fixed ports; a free port is picked when omitted. They stay the same across
        ``stop()`` / ``start()``, so a client can be pointed at a sink that is not up yet.
    """

    def __init__(self, *, grpc_port: int | None = None, http_port: int | None = None) -> None:
        self.grpc_port = grpc_port or free_port()
        self.http_port = http_port or free_port()
        self.unavailable = False  # answer UNAVAILABLE / 503 instead of accepting
        self.delay = 0.0  # seconds to wait before answering each request
        self._state = _State()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._grpc: grpc.aio.Server | None = None
        self._http: web.AppRunner | None = None

    # -- addresses -------------------------------------------------------------------------
    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def running(self) -> bool:
        return self._grpc is not None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> OtlpSink:
        """Start both servers (on the fixed ports); returns once they listen."""
        if self._loop is None:
            self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(target=self._loop.run_forever, name="otlp-sink", daemon=True)
            self._thread.start()
        self._call(self._start_servers(), timeout=15)
        return self

    def stop(self) -> None:
        """Stop both servers; the recorded requests are kept."""
        if self._loop is not None and self.running:
            self._call(self._stop_servers(), timeout=15)

    def close(self) -> None:
        """Stop the servers and the background loop."""
        self.stop()
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
            self._loop = None

    def __enter__(self) -> OtlpSink:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Any, timeout: float) -> Any:
        assert self._loop is not None
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=timeout)

    async def _start_servers(self) -> None:
        server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
        server.add_generic_rpc_handlers([_GenericHandler(self)])
        if server.add_insecure_port(self.grpc_endpoint) != self.grpc_port:
            raise RuntimeError(f"sink: cannot bind gRPC port {self.grpc_port}")
        await server.start()
        self._grpc = server
        app = web.Application(client_max_size=64 * 1024 * 1024)
        for path, signal in (("/v1/traces", "traces"), ("/v1/metrics", "metrics"), ("/v1/logs", "logs")):
            app.router.add_post(path, self._http_handler(signal))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.http_port).start()
        self._http = runner

    async def _stop_servers(self) -> None:
        if self._grpc is not None:
            await self._grpc.stop(grace=None)
            self._grpc = None
        if self._http is not None:
            await self._http.cleanup()
            self._http = None

    # -- recording -------------------------------------------------------------------------
    def _record(self, signal: str, protocol: str, body: bytes) -> Received:
        request = _REQUEST_TYPES[signal]()
        request.ParseFromString(body)
        entry = Received(signal, protocol, body, request, count_items(signal, request))
        with self._state.lock:
            self._state.received.append(entry)
        return entry

    def _refuse(self, signal: str) -> None:
        with self._state.lock:
            self._state.refused[signal] += 1

    async def _handle(self, signal: str, protocol: str, body: bytes) -> bytes | None:
        """Shared by both protocols: ``None`` means answer 'unavailable'."""
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.unavailable:
            self._refuse(signal)
            return None
        self._record(signal, protocol, body)
        return _RESPONSE_TYPES[signal]().SerializeToString()

    def _http_handler(self, signal: str) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = await request.read()  # aiohttp undoes Content-Encoding (gzip, deflate) itself
            if request.content_type == "application/json":
                return web.Response(status=415, text="sink accepts protobuf only")
            answer = await self._handle(signal, "http", body)
            if answer is None:
                return web.Response(status=503, headers={"Retry-After": "1"}, text="sink unavailable")
            return web.Response(body=answer, content_type="application/x-protobuf")

        return handle

    # -- what arrived ----------------------------------------------------------------------
    def requests(self, signal: str | None = None) -> list[Received]:
        with self._state.lock:
            return [r for r in self._state.received if signal is None or r.signal == signal]

    def refused(self, signal: str) -> int:
        with self._state.lock:
            return self._state.refused[signal]

    def count(self, signal: str) -> int:
        """Items of ``signal`` received so far."""
        return sum(r.items for r in self.requests(signal))

    def clear(self) -> None:
        with self._state.lock:
            self._state.received.clear()
            self._state.refused.clear()

    def spans(self) -> Iterator[Any]:
        for r in self.requests("traces"):
            for rs in r.request.resource_spans:
                for ss in rs.scope_spans:
                    yield from ss.spans

    def span_ids(self) -> collections.Counter[bytes]:
        """How many times each span id arrived (more than once means a duplicate)."""
        return collections.Counter(span.span_id for span in self.spans())

    def log_records(self) -> Iterator[Any]:
        for r in self.requests("logs"):
            for rl in r.request.resource_logs:
                for sl in rl.scope_logs:
                    yield from sl.log_records

    def metrics(self) -> Iterator[Any]:
        for r in self.requests("metrics"):
            for rm in r.request.resource_metrics:
                for sm in rm.scope_metrics:
                    yield from sm.metrics

    def wait_for(self, signal: str, items: int, timeout: float = 30.0) -> int:
        """Wait until at least ``items`` of ``signal`` arrived; returns the count."""
        wait_until(
            lambda: self.count(signal) >= items,
            timeout=timeout,
            message=lambda: f"sink: {self.count(signal)} of {items} {signal} items arrived",
        )
        return self.count(signal)


class _GenericHandler(grpc.GenericRpcHandler):  # type: ignore[misc]  # grpc ships no stubs
    """Routes ``/<OTLP service>/Export`` to the sink with raw bytes in and out."""

    def __init__(self, sink: OtlpSink) -> None:
        self._sink = sink

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service, _, method = handler_call_details.method.strip("/").partition("/")
        signal = _GRPC_SERVICES.get(service)
        if signal is None or method != "Export":
            return None
        sink = self._sink

        async def export(body: bytes, context: grpc.aio.ServicerContext) -> bytes:
            answer = await sink._handle(signal, "grpc", body)
            if answer is None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "sink unavailable")
            assert answer is not None
            return answer

        return grpc.unary_unary_rpc_method_handler(export)
