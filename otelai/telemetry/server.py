"""The self-telemetry HTTP server: Prometheus ``/metrics``, ``/healthz`` and ``/readyz``."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def health_routes(readiness: Callable[[], bool]) -> list[web.RouteDef]:
    """``/healthz`` answers while the process runs; ``/readyz`` only when ``readiness()``."""

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(_: web.Request) -> web.Response:
        if readiness():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="not ready\n")

    return [web.get("/healthz", healthz), web.get("/readyz", readyz)]


class TelemetryServer:
    """Serves the registry and the health endpoints on one ``host:port``."""

    def __init__(self, endpoint: str, registry: CollectorRegistry, readiness: Callable[[], bool]) -> None:
        host, _, port = endpoint.rpartition(":")
        self._host, self._port = host or "0.0.0.0", int(port)
        self._registry = registry
        app = web.Application()
        app.add_routes([web.get("/metrics", self._metrics), *health_routes(readiness)])
        self._runner = web.AppRunner(app, access_log=None)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(self._registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._port)
        await site.start()
        server = site._server
        if server is not None and self._port == 0:
            sockets = getattr(server, "sockets", None) or []
            if sockets:
                self._port = int(sockets[0].getsockname()[1])

    @property
    def port(self) -> int:
        return self._port

    async def stop(self) -> None:
        await self._runner.cleanup()
