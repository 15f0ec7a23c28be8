"""The service: start-up, main loop and draining shutdown of the OTLP hop.

Start order is exporters first (so recovered persistent data starts flowing), then the
pipeline, then receivers, then readiness. Shutdown reverses it: not ready, stop
accepting, close receivers, drain queues within ``service.shutdown_timeout``, stop.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time

from prometheus_client import CollectorRegistry

from otelai import __version__
from otelai.config import Config
from otelai.exporter import ExporterNotFoundError, build_exporter
from otelai.exporter.queue import SendingQueue, build_queue
from otelai.pipeline import Pipeline
from otelai.receiver.grpc import GrpcReceiver
from otelai.receiver.http import HttpReceiver
from otelai.scoring.build import Scoring
from otelai.scoring.worker import use_worker
from otelai.telemetry.metrics import Metrics
from otelai.telemetry.server import TelemetryServer

log = logging.getLogger("otelai.service")


class StartupError(Exception):
    """The service could not start (a port in use, a bad certificate, ...)."""


class Service:
    """One otelai process: receivers -> pipeline -> exporter queues, plus self-telemetry."""

    def __init__(self, config: Config, *, registry: CollectorRegistry | None = None) -> None:
        self.config = config
        self.registry = registry if registry is not None else CollectorRegistry()
        self.metrics = Metrics(self.registry)
        self.metrics.build_info.labels(__version__).set(1)
        self.queues: list[SendingQueue] = []
        self.grpc: GrpcReceiver | None = None
        self.http: HttpReceiver | None = None
        self.telemetry: TelemetryServer | None = None
        self.pipeline: Pipeline | None = None
        self.scoring: Scoring | None = None
        self._ready = False
        self._stopped = asyncio.Event()

    def ready(self) -> bool:
        return self._ready

    async def start(self) -> None:
        try:
            await self._start()
        except StartupError:
            await self._close_all()
            raise
        except (OSError, ValueError, ExporterNotFoundError) as exc:
            await self._close_all()
            raise StartupError(f"cannot start: {exc}") from exc

    async def _start(self) -> None:
        cfg = self.config
        if cfg.telemetry.metrics is not None:
            self.telemetry = TelemetryServer(cfg.telemetry.metrics.endpoint, self.registry, self.ready)
            await self.telemetry.start()
        for name, exporter_config in cfg.exporters.items():
            queue = build_queue(build_exporter(name, exporter_config), exporter_config, self.metrics)
            await queue.start()
            self.queues.append(queue)
        self.pipeline = Pipeline(self.queues, self.metrics)
        if cfg.scoring.enabled:
            self.scoring = Scoring(
                cfg,
                self.pipeline,
                self.metrics,
                worker_thread=cfg.scoring.worker_thread,
                worker_process=use_worker(cfg.scoring.worker_process),
            )
            await self.scoring.start()
        protocols = cfg.receivers.otlp.protocols
        retry_after = cfg.service.retry_after
        if protocols.grpc is not None:
            self.grpc = GrpcReceiver(protocols.grpc, self.pipeline, self.metrics, retry_after=retry_after)
            await self.grpc.start()
        if protocols.http is not None:
            self.http = HttpReceiver(
                protocols.http, self.pipeline, self.metrics, retry_after=retry_after, readiness=self.ready
            )
            await self.http.start()
        if self.grpc is not None:
            self.grpc.set_serving(True)
        # Everything loaded so far (modules, models, compiled kernels) lives as long as the
        # process: keep it out of the cyclic GC, whose full passes over it otherwise stall the
        # event loop for tens of ms at a time while the heap grows after start-up.
        gc.collect()
        gc.freeze()
        self._ready = True
        log.info(
            "otelai started",
            extra={
                "version": __version__,
                "grpc_port": self.grpc.port if self.grpc else None,
                "http_port": self.http.port if self.http else None,
                "metrics_port": self.telemetry.port if self.telemetry else None,
                "exporters": list(cfg.exporters),
            },
        )

    async def shutdown(self) -> None:
        """Stop accepting, drain what is queued (bounded by the timeout), release everything."""
        if self._stopped.is_set():
            return
        started = time.monotonic()
        self._ready = False
        if self.grpc is not None:
            self.grpc.set_serving(False)
        if self.pipeline is not None:
            self.pipeline.stop_accepting()
        timeout = self.config.service.shutdown_timeout
        if self.grpc is not None:
            await self.grpc.stop(grace=min(5.0, timeout))
        if self.http is not None:
            await self.http.stop()
        if self.scoring is not None:
            await self.scoring.drain(max(0.0, timeout - (time.monotonic() - started)))
        remaining = max(0.0, timeout - (time.monotonic() - started))
        results = await asyncio.gather(*(queue.drain(remaining) for queue in self.queues))
        left = {
            queue.name: queue.pending_requests()
            for queue, ok in zip(self.queues, results, strict=True)
            if not ok
        }
        await self._close_all()
        log.info(
            "otelai stopped",
            extra={"drained": not left, "undelivered_requests": left, "seconds": time.monotonic() - started},
        )
        self._stopped.set()

    async def _close_all(self) -> None:
        if self.scoring is not None:
            await self.scoring.stop()
        for queue in self.queues:
            await queue.stop()
        if self.telemetry is not None:
            await self.telemetry.stop()

    async def run(self) -> None:
        """Start, serve until SIGTERM or SIGINT, then shut down."""
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("shutdown requested")
        await self.shutdown()
