"""Local actions on anomalies: alerts (a log line, optionally Alertmanager) and mitigation hooks.

:class:`Alerter` writes one structured log line per alert on the ``otelai.alerts`` logger and,
when a webhook URL is set, posts the alerts to an Alertmanager-compatible endpoint: Alertmanager
API v2 ``POST /api/v2/alerts`` (``api/v2/openapi.yaml``, ``postableAlerts``), a JSON list of
``{labels, annotations, startsAt, endsAt, generatorURL}``. ``endsAt`` is set ``resolve_after``
ahead so that an alert no longer re-sent resolves by itself, as Prometheus does.

:class:`MitigationHook` runs an operator-defined action for critical anomalies: a webhook
(``POST`` of the alert as JSON) or a command (an argv list, run without a shell; the alert's
fields are passed only as ``OTELAI_ALERT_*`` environment variables, never interpolated into the
command line, so a span name cannot inject arguments). It is rate-limited globally (at most
``max_runs`` per ``interval``) and per (service, operation) (once per ``interval``), and has a
dry-run mode that logs what it would do.

Neither blocks the caller: :meth:`Alerter.submit` and :meth:`MitigationHook.trigger` are plain
calls that enqueue into bounded queues (a full queue drops and counts); the network and the
subprocess run in a background task started by ``start()``. Dedup, rate limiting and the log
line happen in the call, so alerts are logged even if the webhook is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import os
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

alert_logger = logging.getLogger("otelai.alerts")
logger = logging.getLogger(__name__)

ALERT_NAME = "OtelaiAnomaly"
_STDERR_TAIL = 512

Clock = Callable[[], float]
OutcomeHook = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class Alert:
    """One anomaly worth telling someone about.

    Parameters
    ----------
    severity
        ``anomaly`` or ``critical``.
    signal
        ``traces``, ``logs`` or ``metrics``.
    service
        ``service.name`` of the item.
    operation
        Span name, log template or metric name.
    score
        Calibrated score in [0, 1].
    reason
        The features that drove the score.
    trace_id
        Hex trace id, when the item has one.
    starts_at
        Unix seconds when the anomaly was seen.
    """

    severity: str
    signal: str
    service: str
    operation: str
    score: float
    reason: str = ""
    trace_id: str = ""
    starts_at: float = field(default_factory=time.time)

    @property
    def group(self) -> tuple[str, str, str]:
        """The key alerts are deduplicated by."""
        return (self.service, self.operation, self.severity)

    def labels(self) -> dict[str, str]:
        """Alertmanager labels: the alert's identity (low cardinality; no score, no trace id)."""
        return {
            "alertname": ALERT_NAME,
            "severity": self.severity,
            "service": self.service,
            "operation": self.operation,
            "signal": self.signal,
        }

    def to_alertmanager(self, *, resolve_after: float, generator_url: str = "") -> dict[str, Any]:
        """This alert as an Alertmanager API v2 ``postableAlert``."""
        body: dict[str, Any] = {
            "labels": self.labels(),
            "annotations": {"score": f"{self.score:.4f}", "reason": self.reason, "trace_id": self.trace_id},
            "startsAt": _rfc3339(self.starts_at),
            "endsAt": _rfc3339(self.starts_at + resolve_after),
        }
        if generator_url:
            body["generatorURL"] = generator_url
        return body

    def fields(self) -> dict[str, Any]:
        """The alert as flat fields, for the log line and the mitigation webhook."""
        return {
            "alertname": ALERT_NAME,
            "severity": self.severity,
            "signal": self.signal,
            "service": self.service,
            "operation": self.operation,
            "score": self.score,
            "reason": self.reason,
            "trace_id": self.trace_id,
            "starts_at": _rfc3339(self.starts_at),
        }

    def environment(self) -> dict[str, str]:
        """The alert as ``OTELAI_ALERT_*`` environment variables for a mitigation command."""
        return {f"OTELAI_ALERT_{key.upper()}": str(value) for key, value in self.fields().items()}


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up.

    Parameters
    ----------
    rate
        Tokens added per second.
    burst
        Bucket size; the bucket starts full.
    clock
        Monotonic seconds.
    """

    def __init__(self, *, rate: float, burst: int, clock: Clock = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be positive and burst at least 1, got {rate}, {burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> bool:
        """Take a token if there is one."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


class _Deduper:
    """Remembers when each group last fired, forgetting groups older than ``window``."""

    def __init__(self, window: float) -> None:
        self.window = window
        self._last: OrderedDict[Any, float] = OrderedDict()

    def fresh(self, key: Any, now: float) -> bool:
        """Whether ``key`` did not fire within the window (and, if so, record that it fires now)."""
        while self._last and now - next(iter(self._last.values())) >= self.window:
            self._last.popitem(last=False)
        if key in self._last:
            return False
        self._last[key] = now
        return True


class _Worker:
    """A bounded queue drained by one background task; ``put`` never blocks."""

    def __init__(self, queue_size: int, timeout: float, session: aiohttp.ClientSession | None) -> None:
        self.queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=queue_size)
        self.timeout = timeout
        self.session = session
        self._owns_session = session is None
        self._task: asyncio.Task[None] | None = None

    def put(self, item: Any) -> bool:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            return False
        return True

    async def start(self, handle: Callable[[Any], Any]) -> None:
        if self._task is not None:
            return
        if self.session is None:
            self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        self._task = asyncio.create_task(self._run(handle))

    async def _run(self, handle: Callable[[Any], Any]) -> None:
        while True:
            item = await self.queue.get()
            try:
                await handle(item)
            except Exception:  # a bug in a handler must not stop the actions
                logger.exception("local action failed")
            finally:
                self.queue.task_done()

    async def shutdown(self, grace: float) -> None:
        """Finish what is queued (up to ``grace`` seconds), then stop."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), grace)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.session is not None and self._owns_session:
            await self.session.close()
            self.session = None


class Alerter:
    """Logs alerts and, optionally, posts them to Alertmanager; deduplicated and rate-limited.

    Parameters
    ----------
    webhook_url
        Alertmanager ``/api/v2/alerts`` URL (or any endpoint taking that body); none: log only.
    headers
        Extra HTTP headers for the webhook (for example an authorization header).
    group_window
        Seconds during which a second alert of the same (service, operation, severity) is
        suppressed.
    rate, burst
        Token bucket over the alerts that pass dedup (alerts a second, bucket size).
    queue_size
        Alerts waiting for the webhook; beyond it they are dropped and counted.
    max_batch
        Alerts per webhook request.
    timeout
        Seconds per webhook request.
    resolve_after
        ``endsAt - startsAt`` of each posted alert, in seconds.
    generator_url
        ``generatorURL`` of each alert (a link to a dashboard, for example).
    on_outcome
        Called with (severity, outcome) for every alert: ``logged``, ``deduplicated``,
        ``rate_limited``, ``queue_full``, ``sent``, ``failed``.
    session
        aiohttp session to use (else one is created in :meth:`start`).
    clock
        Monotonic seconds, for dedup and rate limiting.
    """

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        headers: Mapping[str, str] | None = None,
        group_window: float = 300.0,
        rate: float = 1.0,
        burst: int = 20,
        queue_size: int = 1000,
        max_batch: int = 64,
        timeout: float = 5.0,
        resolve_after: float = 300.0,
        generator_url: str = "",
        on_outcome: OutcomeHook | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.webhook_url = webhook_url
        self.headers = dict(headers or {})
        self.max_batch = max_batch
        self.resolve_after = resolve_after
        self.generator_url = generator_url
        self.counts: Counter[str] = Counter()
        self._on_outcome = on_outcome
        self._clock = clock
        self._dedup = _Deduper(group_window)
        self._bucket = TokenBucket(rate=rate, burst=burst, clock=clock)
        self._worker = _Worker(queue_size, timeout, session)

    def _count(self, alert: Alert, outcome: str) -> None:
        self.counts[outcome] += 1
        if self._on_outcome is not None:
            self._on_outcome(alert.severity, outcome)

    def submit(self, alerts: Iterable[Alert]) -> int:
        """Log (and queue for the webhook) the alerts that pass dedup and the rate limit.

        Called on the hot path with the anomalous items of a batch only; never blocks or raises.
        Returns how many alerts were emitted.
        """
        emitted = 0
        for alert in alerts:
            try:
                emitted += self._submit_one(alert)
            except Exception:  # fail open: an alert must never stop the data path
                logger.exception("alert failed")
        return emitted

    def _submit_one(self, alert: Alert) -> int:
        now = self._clock()
        if not self._dedup.fresh(alert.group, now):
            self._count(alert, "deduplicated")
            return 0
        if not self._bucket.take():
            self._count(alert, "rate_limited")
            return 0
        alert_logger.warning(
            "otelai %s: %s %s", alert.severity, alert.service, alert.operation, extra=alert.fields()
        )
        self._count(alert, "logged")
        if self.webhook_url and not self._worker.put(alert):
            self._count(alert, "queue_full")
        return 1

    async def start(self) -> None:
        """Start posting queued alerts (only needed with a webhook)."""
        if self.webhook_url:
            await self._worker.start(self._post)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Post what is queued (up to ``grace`` seconds) and close the session."""
        await self._worker.shutdown(grace)

    async def _post(self, first: Alert) -> None:
        batch = [first]
        while len(batch) < self.max_batch and not self._worker.queue.empty():
            batch.append(self._worker.queue.get_nowait())
            self._worker.queue.task_done()  # the worker marks only ``first`` done
        body = [
            a.to_alertmanager(resolve_after=self.resolve_after, generator_url=self.generator_url)
            for a in batch
        ]
        session = self._worker.session
        assert session is not None and self.webhook_url is not None
        try:
            async with session.post(self.webhook_url, json=body, headers=self.headers) as response:
                ok = response.status < 300
                if not ok:
                    text = (await response.text())[:_STDERR_TAIL]
                    logger.warning(
                        "alert webhook refused alerts", extra={"status": response.status, "body": text}
                    )
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("alert webhook unreachable", extra={"error": repr(exc)})
            ok = False
        for alert in batch:
            self._count(alert, "sent" if ok else "failed")


class MitigationHook:
    """Runs a mitigation webhook or command for critical alerts, rate-limited, with a dry run.

    Parameters
    ----------
    webhook_url
        URL to ``POST`` the alert's fields to, as a JSON object.
    command
        argv list to run (no shell). The alert comes as ``OTELAI_ALERT_*`` environment
        variables; ``PATH`` is the only variable inherited from otelai's environment.
    headers
        Extra HTTP headers for the webhook.
    max_runs
        Runs allowed per ``interval`` over all alerts.
    interval
        Seconds of the rate-limit window; also the cooldown of each (service, operation).
    timeout
        Seconds a run may take; a command still running is killed.
    dry_run
        Log what would run and do nothing.
    queue_size
        Runs waiting; beyond it they are dropped and counted.
    on_outcome
        Called with (severity, outcome): ``ran``, ``failed``, ``timeout``, ``rate_limited``,
        ``cooldown``, ``queue_full``, ``dry_run``.
    session
        aiohttp session to use (else one is created in :meth:`start`).
    clock
        Monotonic seconds, for the rate limit.
    """

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        command: Sequence[str] | None = None,
        headers: Mapping[str, str] | None = None,
        max_runs: int = 1,
        interval: float = 300.0,
        timeout: float = 30.0,
        dry_run: bool = False,
        queue_size: int = 16,
        on_outcome: OutcomeHook | None = None,
        session: aiohttp.ClientSession | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        if not webhook_url and not command:
            raise ValueError("a mitigation hook needs a webhook_url or a command")
        if max_runs < 1 or interval <= 0:
            raise ValueError(f"max_runs must be at least 1 and interval positive, got {max_runs}, {interval}")
        self.webhook_url = webhook_url
        self.command = list(command or [])
        self.headers = dict(headers or {})
        self.max_runs = max_runs
        self.interval = interval
        self.timeout = timeout
        self.dry_run = dry_run
        self.counts: Counter[str] = Counter()
        self._on_outcome = on_outcome
        self._clock = clock
        self._runs: deque[float] = deque()
        self._cooldown = _Deduper(interval)
        self._worker = _Worker(queue_size, timeout, session)

    def _count(self, alert: Alert, outcome: str) -> None:
        self.counts[outcome] += 1
        if self._on_outcome is not None:
            self._on_outcome(alert.severity, outcome)

    def trigger(self, alert: Alert) -> bool:
        """Queue a mitigation for ``alert`` if the rate limits allow; never blocks or raises."""
        try:
            return self._trigger(alert)
        except Exception:  # fail open
            logger.exception("mitigation trigger failed")
            return False

    def _trigger(self, alert: Alert) -> bool:
        now = self._clock()
        while self._runs and now - self._runs[0] >= self.interval:
            self._runs.popleft()
        if len(self._runs) >= self.max_runs:
            self._count(alert, "rate_limited")
            return False
        if not self._cooldown.fresh((alert.service, alert.operation), now):
            self._count(alert, "cooldown")
            return False
        self._runs.append(now)
        if not self._worker.put(alert):
            self._count(alert, "queue_full")
            return False
        return True

    async def start(self) -> None:
        """Start running queued mitigations."""
        await self._worker.start(self._run)

    async def shutdown(self, grace: float = 5.0) -> None:
        """Finish queued mitigations (up to ``grace`` seconds) and close the session."""
        await self._worker.shutdown(grace)

    async def _run(self, alert: Alert) -> None:
        extra = {**alert.fields(), "command": self.command, "webhook_url": self.webhook_url}
        if self.dry_run:
            alert_logger.warning("mitigation (dry run): would run", extra=extra)
            self._count(alert, "dry_run")
            return
        alert_logger.warning("mitigation: running", extra=extra)
        outcomes = []
        if self.webhook_url:
            outcomes.append(await self._post(alert))
        if self.command:
            outcomes.append(await self._exec(alert))
        bad = [outcome for outcome in outcomes if outcome != "ran"]
        self._count(alert, bad[0] if bad else "ran")

    async def _post(self, alert: Alert) -> str:
        session = self._worker.session
        assert session is not None and self.webhook_url is not None
        try:
            async with session.post(self.webhook_url, json=alert.fields(), headers=self.headers) as response:
                if response.status < 300:
                    return "ran"
                logger.warning("mitigation webhook refused", extra={"status": response.status})
                return "failed"
        except TimeoutError:
            logger.warning("mitigation webhook timed out", extra={"webhook_url": self.webhook_url})
            return "timeout"
        except aiohttp.ClientError as exc:
            logger.warning("mitigation webhook unreachable", extra={"error": repr(exc)})
            return "failed"

    async def _exec(self, alert: Alert) -> str:
        env = {"PATH": os.environ.get("PATH", os.defpath), **alert.environment()}
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            logger.warning(
                "mitigation command could not start", extra={"command": self.command, "error": repr(exc)}
            )
            return "failed"
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), self.timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            logger.warning(
                "mitigation command timed out", extra={"command": self.command, "timeout": self.timeout}
            )
            return "timeout"
        if process.returncode != 0:
            tail = stderr[-_STDERR_TAIL:].decode(errors="replace")
            logger.warning(
                "mitigation command failed",
                extra={"command": self.command, "returncode": process.returncode, "stderr": tail},
            )
            return "failed"
        return "ran"


def _rfc3339(seconds: float) -> str:
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
