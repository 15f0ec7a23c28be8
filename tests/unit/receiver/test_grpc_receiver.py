"""The OTLP/gRPC receiver against real gRPC clients: the OpenTelemetry SDK and grpc.aio."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from otelai.config import Auth
from otelai.config import GrpcReceiver as GrpcReceiverConfig
from otelai.receiver.grpc import GrpcReceiver
from otelai.signals import Signal

from .conftest import Hop
from .otlp_data import sdk_telemetry, trace_request

EXPORTERS: dict[Signal, Any] = {
    Signal.TRACES: OTLPSpanExporter,
    Signal.METRICS: OTLPMetricExporter,
    Signal.LOGS: OTLPLogExporter,
}
TRACES = Signal.TRACES.spec.grpc_method


@pytest.fixture
async def channel(grpc_receiver: GrpcReceiver) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{grpc_receiver.port}") as channel:
        yield channel


async def _export(channel: grpc.aio.Channel, data: bytes, method: str = TRACES, **kwargs: Any) -> bytes:
    call = channel.unary_unary(method)  # raw bytes in and out
    response: bytes = await call(data, timeout=10, **kwargs)
    return response


def _sdk_export(signal: Signal, port: int, telemetry: Any, **kwargs: Any) -> Any:
    exporter = EXPORTERS[signal](endpoint=f"127.0.0.1:{port}", insecure=True, timeout=10, **kwargs)
    try:
        return exporter.export(telemetry)
    finally:
        exporter.shutdown()


def _rich_status(error: grpc.aio.AioRpcError) -> tuple[status_pb2.Status, dict[str, Any]]:
    trailers = dict(error.trailing_metadata() or ())
    return status_pb2.Status.FromString(trailers["grpc-status-details-bin"]), trailers


@pytest.mark.parametrize("compression", [grpc.Compression.NoCompression, grpc.Compression.Gzip])
@pytest.mark.parametrize("signal", list(Signal))
async def test_sdk_exporter_delivers_every_item_and_the_exact_bytes(
    hop: Hop, grpc_receiver: GrpcReceiver, signal: Signal, compression: grpc.Compression
) -> None:
    telemetry, sent, items = sdk_telemetry(signal)
    result = await asyncio.to_thread(
        _sdk_export, signal, grpc_receiver.port, telemetry, compression=compression
    )
    assert result.name == "SUCCESS"
    [payload] = hop.sink.payloads
    assert (payload.signal, payload.items, payload.data) == (signal, items, sent)
    assert hop.sample("otelai_receiver_items_total", signal=signal.value) == items
    assert hop.sample("otelai_receiver_bytes_total", signal=signal.value) == len(sent)


async def test_success_response_has_no_partial_success(channel: grpc.aio.Channel) -> None:
    response = ExportTraceServiceResponse.FromString(await _export(channel, trace_request()))
    assert not response.HasField("partial_success")


async def test_empty_request_succeeds_without_forwarding(hop: Hop, channel: grpc.aio.Channel) -> None:
    assert await _export(channel, b"") == b""
    assert hop.sink.payloads == []


async def test_malformed_protobuf_is_invalid_argument_and_serving_continues(
    hop: Hop, channel: grpc.aio.Channel
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _export(channel, b"\x0a\xff\xff\xff\x0f garbage")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "malformed traces protobuf" in (caught.value.details() or "")
    rich, _ = _rich_status(caught.value)
    assert rich.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert hop.sample("otelai_receiver_refused_requests_total", signal="traces", reason="invalid") == 1
    await _export(channel, trace_request())
    assert len(hop.sink.payloads) == 1


async def test_invalid_utf8_in_a_string_is_refused(channel: grpc.aio.Channel) -> None:
    good = trace_request(spans=1)
    bad = good.replace(b"span-0", b"span\xff\xfe")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _export(channel, bad)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("compression", [grpc.Compression.NoCompression, grpc.Compression.Gzip])
async def test_oversize_message_is_resource_exhausted_by_grpc(
    hop: Hop, channel: grpc.aio.Channel, compression: grpc.Compression
) -> None:
    big = trace_request(spans=2, attribute_size=600 * 1024)  # > 1 MiB; compresses to a few KiB
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _export(channel, big, compression=compression)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert hop.sink.payloads == []
    await _export(channel, trace_request())
    assert len(hop.sink.payloads) == 1


async def test_overloaded_is_resource_exhausted_with_retry_info(hop: Hop, channel: grpc.aio.Channel) -> None:
    hop.sink.room = False
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _export(channel, trace_request())
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    rich, trailers = _rich_status(caught.value)
    [detail] = rich.details
    info = error_details_pb2.RetryInfo()
    assert detail.Unpack(info)
    assert (info.retry_delay.seconds, info.retry_delay.nanos) == (1, 0)
    # The OpenTelemetry Python SDK reads the delay from this trailer instead.
    assert error_details_pb2.RetryInfo.FromString(trailers["google.rpc.retryinfo-bin"]) == info
    assert hop.sink.payloads == []
    assert hop.sample("otelai_receiver_refused_requests_total", signal="traces", reason="overloaded") == 1
    hop.sink.room = True
    await _export(channel, trace_request())
    assert len(hop.sink.payloads) == 1


async def test_stopping_is_unavailable_with_retry_info(hop: Hop, channel: grpc.aio.Channel) -> None:
    hop.pipeline.stop_accepting()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _export(channel, trace_request())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    rich, _ = _rich_status(caught.value)
    assert rich.details[0].Is(error_details_pb2.RetryInfo.DESCRIPTOR)
    assert hop.sample("otelai_receiver_refused_requests_total", signal="traces", reason="stopping") == 1


async def test_unknown_method_is_unimplemented(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _export(
            channel,
            b"",
            method="/opentelemetry.proto.collector.profiles.v1development.ProfilesService/Export",
        )
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def _health(stub: Any, name: str) -> Any:
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
    return reply.status


async def _wait_health(stub: Any, names: list[str], wanted: Any) -> None:
    for _ in range(500):  # the change lands once the event loop runs the update
        if all([await _health(stub, name) == wanted for name in names]):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"health never became {wanted}")


async def test_health_service(grpc_receiver: GrpcReceiver, channel: grpc.aio.Channel) -> None:
    stub = health_pb2_grpc.HealthStub(channel)
    names = ["", *(signal.spec.grpc_service for signal in Signal)]
    for name in names:  # not serving until the owner says the process is ready
        assert await _health(stub, name) == health_pb2.HealthCheckResponse.NOT_SERVING
    grpc_receiver.set_serving(True)
    await _wait_health(stub, names, health_pb2.HealthCheckResponse.SERVING)
    grpc_receiver.set_serving(False)
    grpc_receiver.set_serving(True)
    grpc_receiver.set_serving(False)
    await _wait_health(stub, names, health_pb2.HealthCheckResponse.NOT_SERVING)


async def test_bearer_token(hop: Hop) -> None:
    config = GrpcReceiverConfig(endpoint="127.0.0.1:0", auth=Auth(bearer_token="s3cret"))
    receiver = GrpcReceiver(config, hop.pipeline, hop.metrics)
    await receiver.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{receiver.port}") as channel:
            for metadata in [(), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)]:
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await _export(channel, trace_request(), metadata=metadata)
                assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert hop.sink.payloads == []
            await _export(channel, trace_request(), metadata=(("authorization", "bearer s3cret"),))
        telemetry, sent, _ = sdk_telemetry(Signal.TRACES)
        headers = {"authorization": "Bearer s3cret"}
        result = await asyncio.to_thread(
            _sdk_export, Signal.TRACES, receiver.port, telemetry, headers=headers
        )
        assert result.name == "SUCCESS"
        assert hop.sink.payloads[-1].data == sent
        labels = {"signal": "traces", "reason": "unauthenticated"}
        assert hop.registry.get_sample_value("otelai_receiver_refused_requests_total", labels) == 3
    finally:
        await receiver.stop(0)


async def test_port_in_use_fails_to_start(hop: Hop, grpc_receiver: GrpcReceiver) -> None:
    config = GrpcReceiverConfig(endpoint=f"127.0.0.1:{grpc_receiver.port}")
    with pytest.raises(OSError, match="cannot listen"):
        await GrpcReceiver(config, hop.pipeline, hop.metrics).start()
