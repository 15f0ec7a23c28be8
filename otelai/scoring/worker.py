"""Scoring in a worker process: the event loop receives and forwards, another core scores.

Under the GIL one process runs one Python thread at a time, and the hop's main thread does
both halves of the work: receiving, checking and forwarding requests (gRPC, asyncio), and
scoring them (features, models, selection, learning). With ``scoring.worker_process`` the
processors of every scored signal live in one child process instead (one, so that they still
share the summaries and the critical-trace set, as they do in one process), and the stages
hand each batch over a socket pair, the requests' bytes through shared memory
(:class:`SharedWindow`):

```
event loop (this process)                       worker process (python -m otelai.scoring.worker)
  receive, check  --batch (shared memory)-->      process(): decode, score, select, tag
  forward         <--kept payloads, counts--      reply, then settle(): learn from it
```

Up to :data:`DEPTH` batches are in the worker at once (the batcher hands them on,
:mod:`otelai.batching.adaptive`): the next one waits in the socket while the worker scores
one, so it never idles waiting for this process to answer and send. The worker learns from a
batch after replying, while this process forwards it. Nothing that only this process owns is reached from the worker: its counter
updates, alerts and mitigation triggers are recorded there (:class:`RecordingMetrics`,
:class:`RecordedActions`) and carried back with each reply, then applied here, so
``/metrics`` and the local actions stay exactly as with in-process scoring.

Fail open: a worker that fails a batch, dies or does not answer within
:data:`REPLY_TIMEOUT` fails that batch open (the stage forwards it tagged
``otelai.selection.reason=fail_open``, which this process can do alone); a dead worker is
started again in the background, and batches fail open until it is ready. Its learned state
(baselines, calibration, trace buffer) starts over, as after a restart of the service.

Frames on the socket: an 8-byte big-endian length, then a pickle (protocol 5) of a tuple.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import logging
import mmap
import os
import pickle
import select
import signal as signals
import socket
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from otelai.config import Config
from otelai.decision import tagging
from otelai.decision.actions import Alert
from otelai.pipeline import Payload
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

log = logging.getLogger("otelai.scoring")

# Cold start compiles the numba kernels when their disk cache is empty (about 30 s here).
STARTUP_TIMEOUT = 300.0
# A batch takes milliseconds; a worker silent this long is stuck, and is replaced.
REPLY_TIMEOUT = 30.0
# Batches in the worker at once: the next one waits in its socket while it scores one, so it
# never idles between batches waiting for this process to answer and send.
DEPTH = 2
# Longest the counts of what the worker learned from a batch wait for the next reply to ride
# on before they are sent alone. A frame of their own costs the event loop a wake-up, a read
# and a dispatch per batch, in the middle of receiving the next requests; under steady traffic
# the next request comes well within this, and between bursts /metrics is this much behind.
UPDATE_DELAY = 0.05
RESTART_BACKOFF = (1.0, 30.0)  # first and longest wait between restarts, seconds
_HEADER = struct.Struct("!Q")
# The shared window a batch's requests are written to: the largest batches (max_batch_size
# spans of a few hundred bytes) fit; a request beyond it goes through the socket instead.
WINDOW_BYTES = 16 * 1024 * 1024

# One recorded metric update: (family attribute on Metrics, label values, method, argument).
# Label values are a tuple of positional values, or of (name, value) pairs for keyword labels.
MetricOp = tuple[str, tuple[Any, ...], bool, str, float]


class WorkerUnavailable(RuntimeError):
    """The worker process is not there (starting again, or stopped): fail the batch open."""


def usable_cpus() -> float:
    """The CPUs this process may use: its affinity mask, capped by the cgroup's CPU quota (a
    container's CPU limit, cgroup v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``), as Go's
    automaxprocs reads them."""
    cpus = float(len(os.sched_getaffinity(0)))
    for quota_file, period_file in (
        ("/sys/fs/cgroup/cpu.max", None),
        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    ):
        try:
            with open(quota_file) as handle:
                fields = handle.read().split()
            if period_file is not None:
                with open(period_file) as handle:
                    fields.append(handle.read().strip())
        except OSError:
            continue
        if len(fields) == 2 and fields[0] not in ("max", "-1"):
            cpus = min(cpus, int(fields[0]) / int(fields[1]))
        break
    return cpus


def use_worker(setting: bool | str) -> bool:
    """Whether ``scoring.worker_process`` asks for the worker: ``"auto"`` when two cores or
    more are usable (on one, the two processes would only take turns, and pay for the hand-off)."""
    if setting == "auto":
        return usable_cpus() >= 2
    return bool(setting)


# -- what the worker records for the service process ----------------------------------------


class _Recorded:
    """A metric family, or one labelled child of it, that records updates instead of counting."""

    __slots__ = ("_keyword", "_labels", "_name", "_ops")

    def __init__(self, ops: list[MetricOp], name: str, labels: tuple[Any, ...] = (), keyword: bool = False):
        self._ops, self._name, self._labels, self._keyword = ops, name, labels, keyword

    def labels(self, *values: Any, **named: Any) -> _Recorded:
        if named:
            return _Recorded(self._ops, self._name, tuple(sorted(named.items())), True)
        return _Recorded(self._ops, self._name, tuple(str(value) for value in values))

    def remove(self, *values: Any) -> None:
        self._ops.append((self._name, tuple(str(value) for value in values), False, "remove", 0.0))

    def inc(self, amount: float = 1.0) -> None:
        self._ops.append((self._name, self._labels, self._keyword, "inc", float(amount)))

    def dec(self, amount: float = 1.0) -> None:
        self._ops.append((self._name, self._labels, self._keyword, "dec", float(amount)))

    def set(self, value: float) -> None:
        self._ops.append((self._name, self._labels, self._keyword, "set", float(value)))

    def observe(self, value: float) -> None:
        self._ops.append((self._name, self._labels, self._keyword, "observe", float(value)))


class RecordingMetrics:
    """Stands in for :class:`~otelai.telemetry.metrics.Metrics` in the worker: every family
    (``metrics.selection_items.labels(...).inc(n)``) records its updates in :attr:`ops`."""

    def __init__(self) -> None:
        self.ops: list[MetricOp] = []

    def __getattr__(self, name: str) -> _Recorded:
        if name.startswith("__"):
            raise AttributeError(name)
        family = _Recorded(self.ops, name)
        setattr(self, name, family)
        return family

    def take(self) -> list[MetricOp]:
        ops, self.ops[:] = list(self.ops), []
        return ops


def apply_metric_ops(metrics: Metrics, ops: Sequence[MetricOp]) -> None:
    """Replay the worker's metric updates on the service's own metrics."""
    for name, labels, keyword, method, value in ops:
        try:
            family = getattr(metrics, name)
            if method == "remove":
                family.remove(*labels)
                continue
            target = (
                family.labels(**dict(labels)) if keyword else family.labels(*labels) if labels else family
            )
            getattr(target, method)(value)
        except (AttributeError, KeyError, ValueError):  # a worker of another version, or a bug
            log.warning("metric update from the scoring worker not applied", extra={"metric": name})


@dataclass
class RecordedActions:
    """The local actions the worker's processors trigger, applied by the service process
    (which owns the alerter and the mitigation hook, and their rate limits)."""

    alerts: list[Alert] = field(default_factory=list)
    mitigations: list[Alert] = field(default_factory=list)

    def submit(self, alerts: Sequence[Alert]) -> int:
        batch = list(alerts)
        self.alerts.extend(batch)
        return len(batch)

    def trigger(self, alert: Alert) -> bool:
        self.mitigations.append(alert)
        return True

    def take(self) -> tuple[list[Alert], list[Alert]]:
        taken = (list(self.alerts), list(self.mitigations))
        self.alerts.clear()
        self.mitigations.clear()
        return taken


# -- frames ----------------------------------------------------------------------------------


def _frame(message: tuple[Any, ...]) -> list[bytes]:
    body = pickle.dumps(message, protocol=5)
    return [_HEADER.pack(len(body)), body]


def _send_blocking(sock: socket.socket, message: tuple[Any, ...]) -> None:
    header, body = _frame(message)
    sent = sock.sendmsg([header, body])
    if sent < len(header) + len(body):
        sock.sendall((header + body)[sent:])


def _recv_exactly(sock: socket.socket, size: int) -> bytearray | None:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:])
        if n == 0:
            return None  # the other side is gone
        got += n
    return buf


def _recv_blocking(sock: socket.socket) -> tuple[Any, ...] | None:
    header = _recv_exactly(sock, _HEADER.size)
    if header is None:
        return None
    body = _recv_exactly(sock, _HEADER.unpack(header)[0])
    if body is None:
        return None
    message: tuple[Any, ...] = pickle.loads(body)
    return message


# A payload on the socket: (signal, data or None, offset, length, items, received_ns). With
# ``None``, the request's bytes are in the shared window at ``offset``.
_Wired = tuple[str, bytes | None, int, int, int, int]


class SharedWindow:
    """Memory both processes map (a memfd), where a batch's requests go instead of through the
    socket: one copy in, one copy out, and no socket buffers to fill and drain in between.

    The window is a ring: each batch takes the next free stretch, and gives it back when its
    reply comes (replies come in the order of the batches, so the oldest stretch is always the
    one given back). Several batches may be out at once (each stage's batcher hands on up to
    :data:`DEPTH`, and the stages of every signal share the worker); the worker copies a
    batch's requests out when it receives it, before it replies. A batch that does not fit in
    what is free goes through the socket.
    """

    def __init__(self, size: int, fd: int | None = None) -> None:
        self.size = size
        self.fd = os.memfd_create("otelai-scoring", 0) if fd is None else fd
        if fd is None:
            os.ftruncate(self.fd, size)
        self.map = mmap.mmap(self.fd, size)
        self._used: collections.deque[tuple[int, int]] = collections.deque()  # (start, end), oldest first
        self._head = 0  # where the next stretch starts

    def put(self, payloads: Sequence[Payload]) -> list[_Wired]:
        """Write ``payloads`` to the next free stretch (taken until :meth:`release`); a batch
        that does not fit is carried inline, and takes no stretch (an empty one is recorded,
        so that releases stay in step with the batches)."""
        total = sum(len(payload.data) for payload in payloads)
        start = self._reserve(total)
        if start is None:
            self._used.append((0, 0))
            return _wire(payloads)
        out: list[_Wired] = []
        offset = start
        for payload in payloads:
            length = len(payload.data)
            self.map[offset : offset + length] = payload.data
            out.append((payload.signal.value, None, offset, length, payload.items, payload.received_ns))
            offset += length
        return out

    def release(self) -> None:
        """Give back the oldest stretch: its batch was answered."""
        if self._used:
            self._used.popleft()

    def _reserve(self, size: int) -> int | None:
        used = self._used
        if not any(end > start for start, end in used):
            self._head = 0  # nothing in use: start over at the beginning
        head = self._head
        if size > self.size:
            return None
        occupied = [(start, end) for start, end in used if end > start]
        if not occupied:
            start = 0
        else:
            oldest = occupied[0][0]
            if head > oldest:  # in use: [oldest, head); free: [head, size) and [0, oldest)
                if size <= self.size - head:
                    start = head
                elif size <= oldest:
                    start = 0
                else:
                    return None
            elif size <= oldest - head:  # wrapped: free is [head, oldest)
                start = head
            else:
                return None
        self._used.append((start, start + size))
        self._head = start + size
        return start

    def take(self, wired: Sequence[_Wired]) -> list[Payload]:
        return [
            Payload(
                Signal(signal), self.map[offset : offset + length] if data is None else data, items, received
            )
            for signal, data, offset, length, items, received in wired
        ]

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def _wire(payloads: Sequence[Payload]) -> list[_Wired]:
    """Payloads carried in the frame itself (the replies: the kept few)."""
    return [(p.signal.value, p.data, 0, len(p.data), p.items, p.received_ns) for p in payloads]


def _unwire(wired: Sequence[_Wired]) -> list[Payload]:
    return [
        Payload(Signal(signal), data or b"", items, received) for signal, data, _, _, items, received in wired
    ]


# -- the worker process ----------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m otelai.scoring.worker SOCKET WINDOW SIZE``: serve the socket the service
    passed as file descriptor ``SOCKET`` (its first frame is the configuration), reading
    batches from the shared window ``WINDOW`` of ``SIZE`` bytes."""
    args = sys.argv[1:] if argv is None else argv
    sock = socket.socket(fileno=int(args[0]))
    window = SharedWindow(int(args[2]), fd=int(args[1]))
    first = _recv_blocking(sock)
    if first is None or first[0] != "config":
        return 2
    try:
        serve(sock, first[1], window)
    except (BrokenPipeError, ConnectionResetError):
        # The service is gone (it was stopped while this process started, or killed while it
        # answered): nothing is left to answer to, which is not an error of this process.
        log.info("the service closed the scoring worker's socket; stopping")
    return 0


def serve(sock: socket.socket, config: Config, window: SharedWindow) -> None:
    """The worker process's main: build the processors, then answer frames until told to stop
    or until the service process is gone (its end of the socket closes)."""
    from otelai.logs import configure_logging
    from otelai.models.serving import load_configured_bundle
    from otelai.scoring.build import build_processors, summaries_of

    logs = config.telemetry.logs
    configure_logging(logs.level, logs.encoding)
    # The service process decides when this one stops (a signal to the process group, such as
    # Ctrl-C, must not stop it before the service has drained its batches through it).
    signals.signal(signals.SIGINT, signals.SIG_IGN)
    signals.signal(signals.SIGTERM, signals.SIG_IGN)
    metrics = RecordingMetrics()
    actions = RecordedActions()
    try:
        processors = build_processors(
            config,
            cast(Metrics, metrics),
            alerter=cast(Any, actions),
            mitigation=cast(Any, actions) if config.mitigation is not None else None,
            bundle=load_configured_bundle(config.scoring.model),
            summaries=summaries_of(config),
        )
    except Exception as exc:
        _send_blocking(sock, ("failed", f"{type(exc).__name__}: {exc}"))
        return
    # As the service does after its start: what is loaded now lives as long as the process, and
    # the cyclic GC's full passes over it would stall batches for tens of ms.
    gc.collect()
    gc.freeze()
    _send_blocking(sock, ("ready", _backend(processors), metrics.take()))
    try:
        _answer(sock, window, processors, metrics, actions)
    finally:
        for processor in processors.values():
            with contextlib.suppress(Exception):
                getattr(processor, "close", lambda: None)()


def _answer(
    sock: socket.socket,
    window: SharedWindow,
    processors: dict[Signal, Any],
    metrics: RecordingMetrics,
    actions: RecordedActions,
) -> None:
    def updates() -> tuple[Any, ...]:
        alerts, mitigations = actions.take()
        return (metrics.take(), alerts, mitigations, _backend(processors))

    while True:
        message = _recv_blocking(sock)
        if message is None:
            return
        if message[0] == "stop":
            for processor in processors.values():  # what is left to learn, and its counts
                with contextlib.suppress(Exception):
                    processor.settle()
            _send_blocking(sock, ("stopped", [], *updates()))
            return
        kind, signal = message[0], Signal(message[1])
        processor = processors[signal]
        try:
            out = (
                processor.process(window.take(message[2]))
                if kind == "process"
                else processor.tick(message[2])
            )
            reply: tuple[Any, ...] = ("ok", _wire(out))
        except Exception as exc:
            log.exception("scoring worker: %s failed", kind)
            reply = ("error", f"{type(exc).__name__}: {exc}")
        _send_blocking(sock, (*reply, *updates()))
        if kind == "process":
            try:  # decide, forward, then learn: the service is already receiving the next batch
                processor.settle()
            except Exception:
                log.exception("learning from a forwarded batch failed; its lessons are skipped")
            # The counts of what was learned ride on the next reply; with no request within
            # UPDATE_DELAY, they are sent alone (a service between bursts must not show stale
            # counters).
            if (metrics.ops or actions.alerts or actions.mitigations) and not _readable(sock, UPDATE_DELAY):
                _send_blocking(sock, ("update", [], *updates()))


def _readable(sock: socket.socket, timeout: float = 0.0) -> bool:
    """Whether a request is waiting on ``sock``, or comes within ``timeout`` seconds."""
    return bool(select.select([sock], [], [], timeout)[0])


def _backend(processors: dict[Signal, Any]) -> str:
    for processor in processors.values():
        for detector in getattr(getattr(processor, "scorer", None), "detectors", ()):
            name = getattr(detector, "backend_name", None)
            if name:
                return str(name)
    return "none"


# -- the service process's side ----------------------------------------------------------------


class WorkerProcess:
    """The scoring worker and the connection to it, from the service process.

    Parameters
    ----------
    config
        The service's configuration; the worker builds its processors from it.
    metrics
        Where the worker's metric updates are applied.
    alerter, mitigation
        Where its alerts and mitigation triggers go (objects with ``submit`` and ``trigger``).
    window_bytes
        Size of the shared window batches are written to.
    """

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        alerter: Any,
        mitigation: Any | None,
        *,
        window_bytes: int = WINDOW_BYTES,
    ) -> None:
        self.config = config
        self._metrics = metrics
        self._alerter = alerter
        self._mitigation = mitigation
        self.backend = "none"
        self._process: asyncio.subprocess.Process | None = None
        self._connection: _Connection | None = None
        self._send_lock = asyncio.Lock()
        self._waiting: collections.deque[asyncio.Future[tuple[Any, ...]]] = collections.deque()
        # Per request sent and not answered, in order: whether it took a stretch of the window.
        self._windowed: collections.deque[bool] = collections.deque()
        self._restart: asyncio.Task[None] | None = None
        self._window: SharedWindow | None = None
        self._window_bytes = window_bytes
        self._stopping = False

    @property
    def alive(self) -> bool:
        return self._connection is not None

    async def start(self) -> None:
        """Start the worker and wait until its processors are built.

        Raises
        ------
        RuntimeError
            The worker could not build them (the message says why) or did not start.
        """
        # A fresh interpreter (not a fork of this one: its loop, threads and sockets stay here),
        # started as a module so that nothing depends on how this process was started.
        ours, theirs = socket.socketpair()
        window = SharedWindow(self._window_bytes)
        command = [sys.executable, "-m", "otelai.scoring.worker", str(theirs.fileno()), str(window.fd)]
        process = await asyncio.create_subprocess_exec(
            *command, str(window.size), pass_fds=[theirs.fileno(), window.fd]
        )
        theirs.close()
        loop = asyncio.get_running_loop()
        first: asyncio.Future[tuple[Any, ...]] = loop.create_future()
        _, connection = await loop.create_connection(lambda: _Connection(self, first), sock=ours)
        try:
            await connection.send(("config", self.config))
            message = await asyncio.wait_for(first, STARTUP_TIMEOUT)
        except (TimeoutError, OSError, EOFError) as exc:
            connection.close()
            window.close()
            _kill(process)
            await _reap(process)
            raise RuntimeError(f"the scoring worker did not start: {exc!r}") from exc
        if message[0] != "ready":
            connection.close()
            window.close()
            await _reap(process)
            raise RuntimeError(f"the scoring worker could not start: {message[1]}")
        self.backend = message[1]
        apply_metric_ops(self._metrics, message[2])
        self._process, self._connection, self._window = process, connection, window
        self._windowed.clear()
        log.info("scoring worker started", extra={"pid": process.pid, "backend": self.backend})

    async def process(self, signal: Signal, payloads: Sequence[Payload]) -> list[Payload]:
        """What the worker's processor of ``signal`` forwards of ``payloads``."""
        return await self.result(await self.submit("process", signal, payloads))

    async def tick(self, signal: Signal, now_ns: int) -> list[Payload]:
        """The periodic output of the worker's processor of ``signal``."""
        return await self.result(await self.submit("tick", signal, now_ns))

    async def submit(self, kind: str, signal: Signal, argument: Any) -> asyncio.Future[tuple[Any, ...]]:
        """Send one request (``process``: a batch; ``tick``) and return the future of its reply
        (:meth:`result` reads it), without waiting for it: up to :data:`DEPTH` batches are in
        the worker at once, so that it starts the next batch as soon as it has answered one.
        Raises :class:`WorkerUnavailable`."""
        async with self._send_lock:
            connection, window = self._connection, self._window
            if connection is None or window is None:
                raise WorkerUnavailable("the scoring worker is not running")
            if kind == "process":
                # A stretch of the window per batch, given back with its reply (read then).
                argument = window.put(argument)
                self._windowed.append(True)
            else:
                self._windowed.append(False)
            reply: asyncio.Future[tuple[Any, ...]] = asyncio.get_running_loop().create_future()
            self._waiting.append(reply)
            try:
                await connection.send((kind, signal.value, argument))
            except OSError as exc:
                self._lost(exc)
        return reply

    async def result(self, reply: asyncio.Future[tuple[Any, ...]]) -> list[Payload]:
        """The payloads of a reply from :meth:`submit`; its metric updates and actions are
        applied here. Raises :class:`WorkerUnavailable` or ``RuntimeError``."""
        # The reply itself is awaited, with a timer beside it (not wait_for over a shield: each
        # of those is another turn of the event loop between the reply and this task).
        timer = asyncio.get_running_loop().call_later(REPLY_TIMEOUT, self._timed_out, reply)
        try:
            message = await reply
        finally:
            timer.cancel()
        status, result = message[0], message[1]
        self._apply(message)
        if status != "ok":
            raise RuntimeError(f"scoring worker: {result}")
        return _unwire(result)

    def _apply(self, message: tuple[Any, ...]) -> None:
        """A frame's metric updates, alerts, mitigation triggers and backend name, here."""
        _, _, ops, alerts, mitigations, backend = message
        self.backend = backend
        apply_metric_ops(self._metrics, ops)
        if alerts and self._alerter is not None:
            self._alerter.submit(alerts)
        if self._mitigation is not None:
            for alert in mitigations:
                self._mitigation.trigger(alert)

    def _timed_out(self, reply: asyncio.Future[tuple[Any, ...]]) -> None:
        """A reply did not come in :data:`REPLY_TIMEOUT`: the worker is stuck, and replaced."""
        if reply.done():
            return
        exc = TimeoutError(f"no reply in {REPLY_TIMEOUT:.0f}s")
        reply.set_exception(WorkerUnavailable(f"the scoring worker did not answer in {REPLY_TIMEOUT:.0f}s"))
        self._lost(exc)

    def _received(self, connection: _Connection, message: tuple[Any, ...]) -> None:
        """A frame from the worker, as it is read (:class:`_Connection`). Replies come in the
        order of the requests: each resolves the oldest waiting one, whose task then wakes."""
        if connection is not self._connection:
            return  # from a connection already given up
        if message[0] == "update":  # not a reply: what the worker learned since its last
            self._apply(message)
            return
        if self._waiting:
            waiting = self._waiting.popleft()
            if self._windowed.popleft() and self._window is not None:
                self._window.release()  # the worker has copied that batch out
            if not waiting.done():
                waiting.set_result(message)
        if message[0] == "stopped":
            connection.finished = True  # its end of the socket is not a loss

    def _closed(self, connection: _Connection, exc: BaseException) -> None:
        """The worker's end of the socket closed, or reading from it failed."""
        if connection is self._connection and not connection.finished:
            self._lost(exc)

    def _lost(self, exc: BaseException) -> None:
        if self._connection is None:
            return  # already handled
        if not self._stopping:
            log.error(
                "scoring worker lost; failing batches open until it is back", extra={"error": repr(exc)}
            )
        self._drop_connection()
        self._windowed.clear()
        lost = WorkerUnavailable(f"the scoring worker stopped answering: {exc!r}")
        while self._waiting:
            waiting = self._waiting.popleft()
            if not waiting.done():
                waiting.set_exception(lost)
                waiting.exception()  # retrieved: a batch that no one awaits any more is not an error
        if self._process is not None:
            _kill(self._process)
        if not self._stopping and (self._restart is None or self._restart.done()):
            self._restart = asyncio.create_task(self._restart_loop(), name="otelai-scoring-restart")

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
        if self._window is not None:
            self._window.close()
        self._connection = None
        self._window = None

    async def _restart_loop(self) -> None:
        wait, longest = RESTART_BACKOFF
        while not self._stopping:
            await asyncio.sleep(wait)
            if self._process is not None:
                await _reap(self._process)
            try:
                await self.start()
                return
            except RuntimeError:
                log.exception("scoring worker did not restart")
                wait = min(wait * 2, longest)

    async def stop(self) -> None:
        """Ask the worker to finish (it closes its processors) and wait for it to exit."""
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
            await asyncio.gather(self._restart, return_exceptions=True)
        process = self._process
        if self._connection is not None:
            with contextlib.suppress(WorkerUnavailable, TimeoutError):
                stopped = await self.submit("stop", Signal.TRACES, None)
                self._apply(await asyncio.wait_for(asyncio.shield(stopped), REPLY_TIMEOUT))
        self._drop_connection()
        if process is not None:
            await _reap(process)
            self._process = None


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Wait for ``process`` to exit (killed after a while), so that no zombie is left."""
    try:
        await asyncio.wait_for(process.wait(), 10)
    except TimeoutError:
        _kill(process)
        await process.wait()


def _kill(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):  # it exited already
        process.kill()


class _Connection(asyncio.Protocol):
    """The service process's end of the socket to the worker.

    Frames are parsed as their bytes arrive (:meth:`data_received`, called by the event loop
    when the socket is readable) and handed straight to :meth:`WorkerProcess._received`, which
    resolves the future of the reply: the task awaiting it is the next to run. With a
    ``StreamReader``, a task of its own had to wake to read each frame and only then resolve
    that future, one more turn of the loop per reply, in the middle of receiving requests.

    Until the worker's first frame (``ready``, or why it could not start) has come, frames
    resolve ``first`` instead. Writes wait while the socket's buffer is full (:meth:`send`).
    """

    def __init__(self, worker: WorkerProcess, first: asyncio.Future[tuple[Any, ...]]) -> None:
        self._worker = worker
        self._first = first
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._drained: asyncio.Future[None] | None = None
        self._gone: BaseException | None = None
        self.finished = False  # the worker said it stopped: its EOF is expected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        size = len(buffer)
        header = _HEADER.size
        while size - start >= header:
            length: int = _HEADER.unpack_from(buffer, start)[0]
            end = start + header + length
            if end > size:
                break
            message: tuple[Any, ...] = pickle.loads(memoryview(buffer)[start + header : end])
            start = end
            if not self._first.done():
                self._first.set_result(message)
            else:
                self._worker._received(self, message)
        if start:
            del buffer[:start]

    def eof_received(self) -> bool:
        self._end(EOFError("the scoring worker closed its socket"))
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(exc or EOFError("the connection to the scoring worker closed"))

    def _end(self, exc: BaseException) -> None:
        if self._gone is not None:
            return
        self._gone = exc
        if not self._first.done():
            self._first.set_exception(exc)
            self._first.exception()  # retrieved: start() may have stopped waiting
        self._wake_writer()
        self._worker._closed(self, exc)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._wake_writer()

    def _wake_writer(self) -> None:
        drained, self._drained = self._drained, None
        if drained is not None and not drained.done():
            drained.set_result(None)

    async def send(self, message: tuple[Any, ...]) -> None:
        """Write one frame; return once the socket's buffer has room again.

        Raises
        ------
        OSError
            The connection is closed.
        """
        transport = self._transport
        if transport is None or self._gone is not None or transport.is_closing():
            raise ConnectionResetError("the connection to the scoring worker is closed")
        transport.writelines(_frame(message))
        while self._paused and self._gone is None:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await self._drained
        if self._gone is not None:
            raise ConnectionResetError(f"the connection to the scoring worker closed: {self._gone!r}")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


_FAIL_OPEN_SUFFIX = {
    signal: tagging.field(number, tagging.string_attribute(tagging.SELECTION_REASON, "fail_open"))
    for signal, number in (
        (Signal.TRACES, tagging.SPAN_ATTRIBUTES),
        (Signal.LOGS, tagging.LOG_RECORD_ATTRIBUTES),
    )
}


class RemoteProcessor:
    """The :class:`~otelai.scoring.stage.Processor` of one signal whose processor runs in the
    worker: the stage sends with :meth:`submit` (or :meth:`submit_tick`), up to :attr:`depth`
    batches ahead, and reads each reply with :meth:`result`."""

    depth = DEPTH

    def __init__(self, signal: Signal, worker: WorkerProcess) -> None:
        self.signal = signal
        self.worker = worker

    @property
    def backend_name(self) -> str:
        return self.worker.backend

    async def submit(self, payloads: Sequence[Payload]) -> asyncio.Future[tuple[Any, ...]]:
        return await self.worker.submit("process", self.signal, payloads)

    async def submit_tick(self, now_ns: int) -> asyncio.Future[tuple[Any, ...]]:
        return await self.worker.submit("tick", self.signal, now_ns)

    async def result(self, reply: asyncio.Future[tuple[Any, ...]]) -> list[Payload]:
        return await self.worker.result(reply)

    async def process_async(self, payloads: Sequence[Payload]) -> list[Payload]:
        """Send one batch and wait for what is forwarded of it."""
        return await self.worker.process(self.signal, payloads)

    async def tick_async(self, now_ns: int) -> list[Payload]:
        return await self.worker.tick(self.signal, now_ns)

    def process(self, payloads: Sequence[Payload]) -> list[Payload]:
        raise RuntimeError("a remote processor is awaited (submit, then result)")

    def tick(self, now_ns: int) -> list[Payload]:
        return []

    def settle(self) -> None:
        """The worker learns from each batch right after replying."""

    def fail_open(self, payloads: Sequence[Payload], reason: str) -> list[Payload]:
        """Every span or log record tagged ``fail_open``, done here (the worker may be gone);
        metric points as received (they are never tagged)."""
        suffix = _FAIL_OPEN_SUFFIX.get(self.signal)
        if suffix is None:
            return list(payloads)
        out = []
        for payload in payloads:
            try:
                data = tagging.tag_every_item(payload.data, suffix)
            except Exception:  # unreadable: forward it as it came, the receiver accepted it
                out.append(payload)
                continue
            out.append(Payload(payload.signal, data, payload.items, payload.received_ns))
        return out

    def close(self) -> None:
        """The worker closes its processors when it stops (:meth:`WorkerProcess.stop`)."""


if __name__ == "__main__":
    sys.exit(main())
