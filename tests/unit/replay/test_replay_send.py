"""Replay end to end: store windows -> otelai's real exporters -> a loopback OTLP peer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import grpc.aio
import pytest
from aiohttp import web

from otelai.replay import DATASETS, ReplayStats, dataset_batches, replay
from otelai.replay.otel_demo import iter_windows, window_requests
from otelai.replay.send import Pacer, exporter_config
from otelai.signals import Signal, success_response

from .store_docs import hit, simple_hit, write_window

TRACE_METHOD = Signal.TRACES.spec.grpc_method


@dataclass
class Peer:
    """What a loopback OTLP server received, and how it should answer."""

    endpoint: str = ""
    bodies: list[bytes] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    fail: list[str] = field(default_factory=list)  # per call, first: "" ok, "retry", "permanent"


@pytest.fixture
async def grpc_peer() -> AsyncIterator[Peer]:
    peer = Peer()

    async def export(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        answer = peer.fail.pop(0) if peer.fail else ""
        if answer == "retry":
            await context.abort(grpc.StatusCode.UNAVAILABLE, "come back later")
        if answer == "permanent":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad request")
        peer.bodies.append(request)
        peer.headers.append({k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)})
        return success_response(Signal.TRACES)

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(export)  # no deserialiser: raw bytes
    service, _, method = TRACE_METHOD.strip("/").rpartition("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    peer.endpoint = f"127.0.0.1:{port}"
    try:
        yield peer
    finally:
        await server.stop(None)


@pytest.fixture
async def http_peer() -> AsyncIterator[Peer]:
    peer = Peer()

    async def export(request: web.Request) -> web.Response:
        peer.bodies.append(await request.read())  # aiohttp undoes Content-Encoding itself
        peer.headers.append(dict(request.headers))
        return web.Response(body=success_response(Signal.TRACES), content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post(Signal.TRACES.spec.http_path, export)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    peer.endpoint = f"127.0.0.1:{port}"
    try:
        yield peer
    finally:
        await runner.cleanup()


def _dataset(root: Path) -> list[bytes]:
    """A small otel-demo tree; returns the requests a replay must send, in order."""
    heavy = [simple_hit(n, f"2026-02-06T15:17:{10 + n % 40:02d}.{n:09d}Z") for n in range(7)]
    write_window(root / "train", "train15_baseline", heavy, {"flag": "baseline"})
    write_window(root / "train", "train01_baseline", [hit()], {"flag": "baseline"})
    write_window(root / "eval", "eval02_adFailure_on", None, {"flag": "adFailure"})  # no traces: skipped
    write_window(root / "eval", "eval01_adFailure_on", [hit(), hit(spanId="00000000000000ff")])
    return [data for window in iter_windows(root) for data in window_requests(window, max_spans=3)]


def _count(stats: ReplayStats) -> tuple[int, int, int, int, int]:
    return stats.requests, stats.items, stats.failures, stats.failed_items, stats.skipped


async def test_grpc_replay_delivers_every_request_byte_for_byte(tmp_path: Path, grpc_peer: Peer) -> None:
    expected = _dataset(tmp_path)
    assert len(expected) == 5  # 1 + ceil(7 / 3) + 1
    stats = await replay(
        "otel-demo",
        tmp_path,
        grpc_peer.endpoint,
        headers={"Authorization": "Bearer t0ken"},
        progress=False,
        max_items=3,
    )
    assert grpc_peer.bodies == expected
    assert _count(stats) == (5, 10, 0, 0, 0)
    assert stats.bytes == sum(map(len, expected))
    assert all(h.get("authorization") == "Bearer t0ken" for h in grpc_peer.headers)


async def test_http_replay_delivers_every_request_byte_for_byte(tmp_path: Path, http_peer: Peer) -> None:
    expected = _dataset(tmp_path)
    stats = await replay(
        "otel-demo", tmp_path / "train", http_peer.endpoint, protocol="http", progress=True, max_items=3
    )
    assert http_peer.bodies == expected[:4]  # train only
    assert _count(stats) == (4, 8, 0, 0, 0)
    assert all(h["Content-Type"] == "application/x-protobuf" for h in http_peer.headers)
    assert all(h["Content-Encoding"] == "gzip" for h in http_peer.headers)


async def test_retryable_failure_is_retried_and_permanent_one_counted(
    tmp_path: Path, grpc_peer: Peer
) -> None:
    write_window(tmp_path, "w1", [hit()])
    write_window(tmp_path, "w2", [hit()])
    write_window(tmp_path, "w3", [hit(kind="Sideways")])  # cannot be converted: skipped
    grpc_peer.fail = ["retry", "", "permanent"]
    stats = await replay("otel-demo", tmp_path, grpc_peer.endpoint, progress=False, compression="none")
    assert len(grpc_peer.bodies) == 1
    assert _count(stats) == (1, 1, 1, 1, 1)


async def test_unsupported_dataset_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^dataset kdd is not supported yet; supported: otel-demo, "):
        await replay("kdd", tmp_path, "127.0.0.1:1", progress=False)
    with pytest.raises(FileNotFoundError, match="otel-demo data not found"):
        dataset_batches("otel-demo", tmp_path / "nowhere")
    assert set(DATASETS) >= {"otel-demo", "nab", "hdfs", "bgl"}


def test_exporter_config_per_protocol() -> None:
    grpc_config = exporter_config("grpc", "collector:4317", headers={"a": "b"})
    assert (grpc_config.type, grpc_config.endpoint, grpc_config.tls.insecure) == (
        "otlp",
        "collector:4317",
        True,
    )
    assert grpc_config.headers == {"a": "b"}
    http_config = exporter_config("http", "collector:4318", insecure=False)
    assert (http_config.type, http_config.endpoint) == ("otlphttp", "https://collector:4318")
    assert exporter_config("http", "http://c:4318/").endpoint == "http://c:4318/"
    with pytest.raises(ValueError, match="protocol must be"):
        exporter_config("udp", "c:1")  # type: ignore[arg-type]


async def test_pacer_keeps_scaled_spacing_and_skips_backward_jumps() -> None:
    now = [100.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    pacer = Pacer(2.0, clock=lambda: now[0], sleep=sleep)
    second = 1_000_000_000
    await pacer.wait(50 * second)  # first: at once
    await pacer.wait(54 * second)  # 4 s of data at 2x: 2 s
    now[0] += 0.5  # sending took half a second: wait only the rest
    await pacer.wait(55 * second)  # due exactly now
    await pacer.wait(10 * second)  # back in time (windows not in capture order): at once
    await pacer.wait(16 * second)
    assert slept == [2.0, 3.0]
    with pytest.raises(ValueError, match="speed"):
        Pacer(0, clock=lambda: 0.0)


async def test_replay_with_speed_sends_everything(tmp_path: Path, grpc_peer: Peer) -> None:
    write_window(tmp_path, "w1", [simple_hit(0, "2026-02-06T15:17:28.000Z")])
    write_window(tmp_path, "w2", [simple_hit(1, "2026-02-06T15:17:28.001Z")])
    stats = await replay("otel-demo", tmp_path, grpc_peer.endpoint, progress=False, speed=1000.0)
    assert _count(stats) == (2, 2, 0, 0, 0)
