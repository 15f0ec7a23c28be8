"""The counting sink: a ``grpc.aio`` OTLP trace server that counts spans and times markers.

It runs in its own process (``serve`` is the entry point) and answers the orchestrator's
commands over a pipe. Counting must cost little, or the sink would steal CPU from the hop it
measures: it parses each request with a skeleton message type that declares only the path to
the spans (``resource_spans.scope_spans.spans`` as opaque bytes) and the resource attributes
(where the marker lives), so upb touches a span only to copy it, about 40 ns a span against
about 1 us for a full parse.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from workload import MARKER_KEY, parse_marker

SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def _skeleton_class() -> Any:
    """A message class that reads an ExportTraceServiceRequest's counts and resource attributes."""
    fdp = descriptor_pb2.FileDescriptorProto(name="bench_skeleton.proto", package="bench", syntax="proto3")
    field_type = descriptor_pb2.FieldDescriptorProto
    repeated, optional = field_type.LABEL_REPEATED, field_type.LABEL_OPTIONAL

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        proto = fdp.message_type.add(name=name)
        for fname, number, label, ftype, type_name in fields:
            added = proto.field.add(name=fname, number=number, label=label, type=ftype)
            if type_name:
                added.type_name = f".bench.{type_name}"

    msg, text, raw = field_type.TYPE_MESSAGE, field_type.TYPE_STRING, field_type.TYPE_BYTES
    message("Request", [("resource_spans", 1, repeated, msg, "ResourceSpans")])
    message(
        "ResourceSpans",
        [("resource", 1, optional, msg, "Resource"), ("scope_spans", 2, repeated, msg, "ScopeSpans")],
    )
    message("Resource", [("attributes", 1, repeated, msg, "KeyValue")])
    message("KeyValue", [("key", 1, optional, text, ""), ("value", 2, optional, msg, "AnyValue")])
    # bytes, not string: a hop may forward anything, and the sink must not reject it.
    message("AnyValue", [("string_value", 1, optional, raw, "")])
    message("ScopeSpans", [("spans", 2, repeated, raw, "")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("bench.Request"))


Skeleton = _skeleton_class()


def count_request(payload: bytes) -> tuple[int, list[tuple[int, int]]]:
    """Spans in a serialised trace request, and the ``(seq, send_ns)`` of its timed markers."""
    request = Skeleton.FromString(payload)
    spans, markers = 0, []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            spans += len(scope_spans.spans)
        for attribute in resource_spans.resource.attributes:
            if attribute.key == MARKER_KEY:
                marker = parse_marker(attribute.value.string_value.decode(errors="replace"))
                if marker:
                    markers.append(marker)
    return spans, markers


@dataclass
class SinkState:
    """What arrived since the last reset."""

    spans: int = 0
    requests: int = 0
    bad_requests: int = 0
    arrivals: list[tuple[int, int]] = field(default_factory=list)  # (monotonic ns, spans)
    # seq -> (send ns, latest arrival ns): a hop may split a request, the last part completes it.
    markers: dict[int, tuple[int, int]] = field(default_factory=dict)

    def record(self, payload: bytes) -> None:
        now = time.monotonic_ns()
        try:
            spans, markers = count_request(payload)
        except Exception:
            self.bad_requests += 1
            return
        self.spans += spans
        self.requests += 1
        self.arrivals.append((now, spans))
        for seq, send_ns in markers:
            self.markers[seq] = (send_ns, now)

    def answer(self, command: tuple[Any, ...]) -> Any:
        """The reply to one orchestrator command."""
        kind = command[0]
        if kind == "reset":
            self.__init__()  # type: ignore[misc]
            return "ok"
        if kind == "totals":
            return {"spans": self.spans, "requests": self.requests, "bad_requests": self.bad_requests}
        if kind == "window":
            t0, t1 = command[1], command[2]
            return sum(spans for at, spans in self.arrivals if t0 <= at <= t1)
        if kind == "marker_count":
            return len(self.markers)
        if kind == "markers":
            return [(seq, send, arrival) for seq, (send, arrival) in self.markers.items()]
        raise ValueError(f"unknown sink command {kind!r}")


async def _serve(conn: Connection) -> None:
    state = SinkState()

    async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        state.record(request)
        return b""  # an empty ExportTraceServiceResponse: full success

    handler = grpc.method_handlers_generic_handler(
        SERVICE, {"Export": grpc.unary_unary_rpc_method_handler(export)}
    )
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ]
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    conn.send(("ready", port))
    loop = asyncio.get_running_loop()
    try:
        while True:
            try:
                command = await loop.run_in_executor(None, conn.recv)
            except (EOFError, OSError):
                return  # the orchestrator is gone
            if command[0] == "stop":
                conn.send("ok")
                return
            try:
                conn.send(state.answer(command))
            except Exception as error:
                conn.send(("error", repr(error)))
    finally:
        await server.stop(grace=None)


def serve(conn: Connection) -> None:
    """Process entry point: run the sink until the orchestrator says stop or goes away."""
    asyncio.run(_serve(conn))
