"""Building the scoring stages of the service from its configuration.

One :class:`~otelai.scoring.stage.ScoringStage` per scored signal, the local actions they
share (alerts, the mitigation hook), the summaries of what was dropped (one table for spans
and log records, flushed by one stage so upstream gets one stream) and the model bundle
(``scoring.model``), loaded and checked once: a bundle that cannot be used stops the start.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

from otelai.config import Config, ExplicitBuckets
from otelai.decision.actions import Alerter, MitigationHook
from otelai.decision.summaries import DroppedSummaries
from otelai.models.bundle import Bundle, BundleError
from otelai.models.serving import load_configured_bundle
from otelai.pipeline import Pipeline
from otelai.scoring.stage import Processor, ScoringStage
from otelai.scoring.thread import LoopAlerter, LoopMitigation, scoring_executor
from otelai.scoring.worker import RemoteProcessor, WorkerProcess
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

log = logging.getLogger("otelai.scoring")

_MODEL_INFO_INTERVAL = 5.0  # seconds between checks of which backend the models run on


class Scoring:
    """The scoring stages and their shared parts; started and stopped with the service.

    Raises :class:`~otelai.service.StartupError` if the configured model bundle cannot be used.
    """

    def __init__(
        self,
        config: Config,
        pipeline: Pipeline,
        metrics: Metrics,
        *,
        worker_thread: bool = False,
        worker_process: bool = False,
    ) -> None:
        self.config = config
        self._metrics = metrics
        self.bundle = _bundle(config)
        self.alerter = _alerter(config, metrics)
        self.mitigation = _mitigation(config, metrics)
        self.worker: WorkerProcess | None = None
        self.summaries: DroppedSummaries | None = None
        self._executor = None
        self.stages: dict[Signal, ScoringStage] = {}
        if worker_process:
            # The processors live in the worker (built there when it starts); the alerter and
            # the mitigation hook stay here, on the event loop.
            self.worker = WorkerProcess(config, metrics, self.alerter, self.mitigation)
            processors: dict[Signal, Processor] = {
                signal: RemoteProcessor(signal, self.worker) for signal in _signals(config)
            }
        else:
            self.summaries = summaries_of(config)
            # What the processors call from the scoring thread, run on the event loop.
            self._loop_alerter = LoopAlerter(self.alerter)
            self._loop_mitigation = LoopMitigation(self.mitigation) if self.mitigation is not None else None
            # Off by default: on a loaded 2-core machine the thread lost (benchmarks/hop.py; the
            # GIL hand-offs stretch each batch's wall time, and the batcher then cuts batches).
            self._executor = scoring_executor() if worker_thread else None
            try:
                processors = build_processors(
                    config,
                    metrics,
                    alerter=cast(Alerter, self._loop_alerter),
                    mitigation=cast(MitigationHook | None, self._loop_mitigation),
                    bundle=self.bundle,
                    summaries=self.summaries,
                )
            except BundleError as exc:  # its files load, but its models cannot be built
                if self._executor is not None:
                    self._executor.shutdown(wait=False)
                raise _startup_error(exc) from exc
        interval = config.summaries.interval
        for signal, processor in processors.items():
            stage = ScoringStage(
                processor,
                pipeline,
                config.scoring.batching,
                metrics,
                tick_interval=interval,
                max_admission_wait=config.scoring.batching.max_admission_wait,
                executor=self._executor,
            )
            self.stages[signal] = stage
            pipeline.stages[signal] = stage
        self._model_info: tuple[str, str] | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._refresh_model_info()

    def active_backend(self) -> str:
        """The backend the models run on now ("none" until a model is fitted)."""
        if self.worker is not None:
            return self.worker.backend
        for stage in self.stages.values():
            scorer = getattr(stage.processor, "scorer", None)
            for detector in getattr(scorer, "detectors", ()):
                name = getattr(detector, "backend_name", None)
                if name:
                    return str(name)
        return "none"

    def _refresh_model_info(self) -> None:
        """``otelai_model_info{version, backend}`` names the backend in use, not the configured list."""
        version = (
            self.bundle.manifest.version if self.bundle is not None else self.config.scoring.model_version
        )
        labels = (version, self.active_backend())
        if labels != self._model_info:
            if self._model_info is not None:
                self._metrics.model_info.remove(*self._model_info)
            self._metrics.model_info.labels(*labels).set(1)
            self._model_info = labels

    async def _watch_models(self) -> None:
        while True:  # models are fitted and swapped in the background; follow them
            await asyncio.sleep(_MODEL_INFO_INTERVAL)
            self._refresh_model_info()

    async def start(self) -> None:
        if self.worker is not None:
            try:
                await self.worker.start()
            except RuntimeError as exc:
                from otelai.service import StartupError  # the service imports this module

                raise StartupError(f"cannot start: {exc}") from exc
            self._refresh_model_info()
        else:
            loop = asyncio.get_running_loop()
            self._loop_alerter.bind(loop)
            if self._loop_mitigation is not None:
                self._loop_mitigation.bind(loop)
        self._watcher = asyncio.create_task(self._watch_models(), name="otelai-model-info")
        if self.alerter is not None:
            await self.alerter.start()
        if self.mitigation is not None:
            await self.mitigation.start()
        for stage in self.stages.values():
            await stage.start()

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109
        results = [await stage.drain(timeout) for stage in self.stages.values()]
        return all(results)

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            await asyncio.gather(self._watcher, return_exceptions=True)
            self._watcher = None
        for stage in self.stages.values():
            await stage.stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # idle: each stage waited for its calls
        if self.worker is not None:
            await self.worker.stop()
        self._close_stages()
        if self.alerter is not None:
            await self.alerter.shutdown()
        if self.mitigation is not None:
            await self.mitigation.shutdown()

    def _close_stages(self) -> None:
        for stage in self.stages.values():
            close = getattr(stage.processor, "close", None)
            if close is not None:
                close()


def _signals(config: Config) -> list[Signal]:
    # Traces first: the logs processor follows the critical traces the traces processor finds.
    return [Signal(name) for name in sorted(config.scoring.signals, key=["traces", "logs", "metrics"].index)]


def build_processors(
    config: Config,
    metrics: Metrics,
    *,
    alerter: Alerter,
    mitigation: MitigationHook | None,
    bundle: Bundle | None,
    summaries: DroppedSummaries | None,
) -> dict[Signal, Processor]:
    """The processor of every scored signal (in the service, or in its scoring worker).

    One table of summaries for spans and log records, flushed by the first of them, so that
    upstream gets one stream. Raises :class:`~otelai.models.bundle.BundleError` when the
    bundle's models cannot be built; the processors built so far are closed.
    """

    def on_fallback(source: str, target: str, reason: str) -> None:
        metrics.backend_fallbacks.labels(source, target).inc()

    # The processors call only the alerter's ``submit`` and the hook's ``trigger``.
    common: dict[str, Any] = {"alerter": alerter, "mitigation": mitigation, "on_fallback": on_fallback}
    processors: dict[Signal, Processor] = {}
    flushed = False
    try:
        for signal in _signals(config):
            flush = not flushed
            flushed = flushed or signal in (Signal.TRACES, Signal.LOGS)
            if signal is Signal.TRACES:
                from otelai.scoring.traces import TraceProcessor

                traces = TraceProcessor(
                    config, metrics, summaries=summaries, flush_summaries=flush, bundle=bundle, **common
                )
                traces.defer_learning = True  # the stage settles each batch once it is forwarded
                processors[signal] = traces
            elif signal is Signal.LOGS:
                from otelai.scoring.logs import LogProcessor

                critical = getattr(processors.get(Signal.TRACES), "critical", None)
                processors[signal] = LogProcessor(
                    config,
                    metrics,
                    summaries=summaries,
                    flush_summaries=flush,
                    critical_traces=critical,
                    bundle=bundle,
                    **common,
                )
            else:
                from otelai.scoring.metrics import MetricProcessor

                processors[signal] = MetricProcessor(config, metrics, bundle=bundle, **common)
    except BundleError:
        for processor in processors.values():
            getattr(processor, "close", lambda: None)()
        raise
    return processors


def _startup_error(exc: BundleError) -> Exception:
    from otelai.service import StartupError  # the service imports this module

    return StartupError(f"cannot start: model bundle (scoring.model): {exc}")


def _bundle(config: Config) -> Bundle | None:
    """The configured model bundle, loaded once; StartupError if it cannot be used."""
    try:
        return load_configured_bundle(config.scoring.model)
    except BundleError as exc:
        raise _startup_error(exc) from exc


def summaries_of(config: Config) -> DroppedSummaries | None:
    """The table of summaries of dropped items the configuration asks for (None: off)."""
    settings = config.summaries
    if not settings.enabled:
        return None
    histogram = settings.histogram
    explicit = histogram.explicit or ExplicitBuckets()
    return DroppedSummaries(
        boundaries_ms=[bound * 1000 for bound in explicit.buckets],
        exponential_max_size=histogram.exponential.max_size if histogram.exponential is not None else None,
        max_series=settings.aggregation_cardinality_limit,
        instance_id=settings.instance_id,
    )


def _alerter(config: Config, metrics: Metrics) -> Alerter:
    alerts = config.alerts
    webhook = alerts.webhook
    return Alerter(
        webhook_url=webhook.url if webhook else None,
        headers=webhook.headers if webhook else None,
        timeout=webhook.timeout if webhook else 5.0,
        group_window=alerts.group_window,
        rate=alerts.rate,
        burst=alerts.burst,
        queue_size=alerts.queue_size,
        resolve_after=alerts.resolve_after,
        generator_url=alerts.generator_url,
        on_outcome=lambda severity, outcome: metrics.alerts.labels(severity, outcome).inc(),
    )


def _mitigation(config: Config, metrics: Metrics) -> MitigationHook | None:
    settings = config.mitigation
    if settings is None:
        return None
    return MitigationHook(
        webhook_url=settings.webhook.url if settings.webhook else None,
        headers=settings.webhook.headers if settings.webhook else None,
        command=settings.command,
        max_runs=settings.max_runs,
        interval=settings.interval,
        timeout=settings.timeout,
        dry_run=settings.dry_run,
        on_outcome=lambda severity, outcome: metrics.mitigations.labels(outcome).inc(),
    )
