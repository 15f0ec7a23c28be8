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
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

log = logging.getLogger("otelai.scoring")

_MODEL_INFO_INTERVAL = 5.0  # seconds between checks of which backend the models run on


class Scoring:
    """The scoring stages and their shared parts; started and stopped with the service.

    Raises :class:`~otelai.service.StartupError` if the configured model bundle cannot be used.
    """

    def __init__(
        self, config: Config, pipeline: Pipeline, metrics: Metrics, *, worker_thread: bool = False
    ) -> None:
        self.config = config
        self._metrics = metrics
        self.bundle = _bundle(config)
        self.summaries = _summaries(config)
        self.alerter = _alerter(config, metrics)
        self.mitigation = _mitigation(config, metrics)
        # What the processors call from the scoring thread, run on the event loop.
        self._loop_alerter = LoopAlerter(self.alerter)
        self._loop_mitigation = LoopMitigation(self.mitigation) if self.mitigation is not None else None
        # Off by default: on a loaded 2-core machine the thread lost (benchmarks/hop.py; the
        # GIL hand-offs stretch each batch's wall time, and the batcher then cuts batches).
        self._executor = scoring_executor() if worker_thread else None
        self.stages: dict[Signal, ScoringStage] = {}
        interval = config.summaries.interval
        flushed = False
        # Traces first: the logs stage follows the critical traces the traces stage finds.
        order = sorted(config.scoring.signals, key=["traces", "logs", "metrics"].index)
        for name in order:
            signal = Signal(name)
            try:
                processor = self._processor(signal, flush_summaries=not flushed)
            except BundleError as exc:  # its files load, but its models cannot be built
                self._close_stages()
                if self._executor is not None:
                    self._executor.shutdown(wait=False)
                raise _startup_error(exc) from exc
            flushed = flushed or signal in (Signal.TRACES, Signal.LOGS)
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

    def _on_fallback(self, source: str, target: str, reason: str) -> None:
        self._metrics.backend_fallbacks.labels(source, target).inc()

    def _processor(self, signal: Signal, *, flush_summaries: bool) -> Processor:
        # The processors call only ``submit`` and ``trigger``, which the loop proxies provide.
        common: dict[str, Any] = {
            "alerter": cast(Alerter, self._loop_alerter),
            "mitigation": cast(MitigationHook | None, self._loop_mitigation),
            "on_fallback": self._on_fallback,
        }
        if signal is Signal.TRACES:
            from otelai.scoring.traces import TraceProcessor

            processor = TraceProcessor(
                self.config,
                self._metrics,
                summaries=self.summaries,
                flush_summaries=flush_summaries,
                bundle=self.bundle,
                **common,
            )
            processor.defer_learning = True  # the stage settles each batch once it is forwarded
            return processor
        if signal is Signal.LOGS:
            from otelai.scoring.logs import LogProcessor

            traces = self.stages.get(Signal.TRACES)
            critical = getattr(traces.processor, "critical", None) if traces is not None else None
            return LogProcessor(
                self.config,
                self._metrics,
                summaries=self.summaries,
                flush_summaries=flush_summaries,
                critical_traces=critical,
                bundle=self.bundle,
                **common,
            )
        from otelai.scoring.metrics import MetricProcessor

        return MetricProcessor(self.config, self._metrics, bundle=self.bundle, **common)

    def active_backend(self) -> str:
        """The backend the models run on now ("none" until a model is fitted)."""
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


def _startup_error(exc: BundleError) -> Exception:
    from otelai.service import StartupError  # the service imports this module

    return StartupError(f"cannot start: model bundle (scoring.model): {exc}")


def _bundle(config: Config) -> Bundle | None:
    """The configured model bundle, loaded once; StartupError if it cannot be used."""
    try:
        return load_configured_bundle(config.scoring.model)
    except BundleError as exc:
        raise _startup_error(exc) from exc


def _summaries(config: Config) -> DroppedSummaries | None:
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
