"""Scoring in a worker process (otelai/scoring/worker.py): same decisions, same counters, fail open."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry

from otelai.config import Config, ConfigError, load_config
from otelai.decision.actions import Alert
from otelai.decision.tagging import SELECTION_REASON
from otelai.models.serving import load_configured_bundle
from otelai.pipeline import Admission, Payload, Pipeline
from otelai.scoring import worker as worker_module
from otelai.scoring.build import Scoring, build_processors, summaries_of
from otelai.scoring.worker import (
    RecordedActions,
    RecordingMetrics,
    RemoteProcessor,
    SharedWindow,
    WorkerProcess,
    WorkerUnavailable,
    apply_metric_ops,
    usable_cpus,
    use_worker,
)
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics

from .test_stage import Box
from .test_trace_processor import make_config
from .trace_workload import Workload, interleave, per_service, span_count

pytestmark = pytest.mark.slow  # each test starts a worker process (a few seconds)


@contextlib.asynccontextmanager
async def running_worker(config: Config, registry: CollectorRegistry) -> AsyncIterator[WorkerProcess]:
    """A started worker process counting into ``registry``, stopped on the way out."""
    worker = WorkerProcess(config, Metrics(registry), RecordedActions(), None)
    await worker.start()
    try:
        yield worker
    finally:
        await worker.stop()


def test_recorded_metric_updates_replay_on_the_service_metrics() -> None:
    recorder = RecordingMetrics()
    recorder.selection_items.labels("traces", "dropped").inc(5)
    recorder.selection_items.labels("traces", "dropped").inc()
    recorder.calibration_warm.labels("traces").set(1)
    recorder.batch_size.observe(512)
    recorder.model_info.labels(version="v1", backend="onnxruntime").set(1)
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    apply_metric_ops(metrics, recorder.take())
    assert recorder.ops == []
    assert (
        registry.get_sample_value("otelai_selection_items_total", {"signal": "traces", "decision": "dropped"})
        == 6
    )
    assert registry.get_sample_value("otelai_calibration_warm", {"signal": "traces"}) == 1
    assert registry.get_sample_value("otelai_batch_size_count") == 1
    assert registry.get_sample_value("otelai_model_info", {"version": "v1", "backend": "onnxruntime"}) == 1
    # A name the service does not know is skipped (logged), the rest still applies.
    recorder.no_such_family.inc()
    recorder.anomalies.labels("traces", "critical").inc(2)
    apply_metric_ops(metrics, recorder.take())
    assert (
        registry.get_sample_value("otelai_anomalies_total", {"signal": "traces", "severity": "critical"}) == 2
    )


def test_the_shared_window_is_a_ring_of_stretches_given_back_in_order() -> None:
    window = SharedWindow(200)
    twin = SharedWindow(200, fd=os.dup(window.fd))  # the worker's mapping of the same memory
    try:

        def batch(tag: bytes, *sizes: int) -> list[Payload]:
            return [Payload(Signal.TRACES, tag * size, 1, i) for i, size in enumerate(sizes)]

        first, second = batch(b"a", 60, 30), batch(b"b", 80)
        wired_first, wired_second = window.put(first), window.put(second)
        assert [entry[2] for entry in wired_first + wired_second] == [0, 60, 90]
        # Out: 170 of 200 bytes. What does not fit in the free 30 goes inline, whole.
        third = batch(b"c", 20, 20)
        wired_third = window.put(third)
        assert all(entry[1] is not None for entry in wired_third)
        # Nothing written over a batch still out: the worker reads each as it was put.
        assert twin.take(wired_first) == first and twin.take(wired_second) == second
        assert twin.take(wired_third) == third
        window.release()  # the first batch's reply: bytes 0-90 are free again
        fourth = batch(b"d", 70)  # after the second (ends at 170) there are 30: wraps to 0
        wired_fourth = window.put(fourth)
        assert wired_fourth[0][1] is None and wired_fourth[0][2] == 0
        assert twin.take(wired_second) == second  # untouched by the wrap
        window.release()  # the second
        window.release()  # the third (inline: took nothing)
        fifth = batch(b"e", 100)  # out: 0-70; free: 70-200
        wired_fifth = window.put(fifth)
        assert wired_fifth[0][1] is None and wired_fifth[0][2] == 70
        assert twin.take(wired_fourth) == fourth and twin.take(wired_fifth) == fifth
        window.release()
        window.release()  # nothing out: the next batch starts at 0
        assert window.put(batch(b"f", 200))[0][2] == 0
    finally:
        twin.close()
        window.close()


async def test_batches_of_several_signals_out_at_once_each_arrive_intact() -> None:
    # Every stage hands on up to DEPTH batches, and the stages share the worker: more batches
    # than DEPTH are out at once. Each must reach the worker as it was sent (a window written
    # over before the worker read it would corrupt a batch: unreadable, counted as such).
    config = load_config(text="scoring: {signals: [traces, logs], model: {enabled: false}}")
    registry = CollectorRegistry()
    async with running_worker(config, registry) as worker:
        workload = Workload(5)
        batches = []
        for _ in range(12):
            requests = list(per_service(workload.traces(40)))
            batches.append([Payload(Signal.TRACES, r.SerializeToString(), span_count([r])) for r in requests])
        replies = [await worker.submit("process", Signal.TRACES, batch) for batch in batches]
        results = [await worker.result(reply) for reply in replies]
    assert all(isinstance(result, list) for result in results)
    assert _decided(registry, "traces") == sum(p.items for batch in batches for p in batch)
    assert (
        registry.get_sample_value(
            "otelai_fail_open_items_total", {"signal": "traces", "reason": "unreadable"}
        )
        is None
    )


class _Alerts:
    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def submit(self, alerts: list[Alert]) -> int:
        self.alerts.extend(alerts)
        return len(alerts)


def _batches(seed: int, count: int) -> list[list[Payload]]:
    workload = Workload(seed, error_rates={"frontend/GET /checkout": 0.25})
    groups = [workload.traces(20) for _ in range(count)]
    # A latency outlier and a new error type in some batches, so that there are anomalies,
    # critical traces, alerts and recalled spans to compare.
    groups[count // 2].append(workload.trace(slow="cart/HGET"))
    groups[count // 2 + 5].append(workload.trace(new_error="cart/CartService/GetCart"))
    out = []
    for requests in interleave(groups, np.random.default_rng(seed)):
        out.append([Payload(Signal.TRACES, r.SerializeToString(), span_count([r])) for r in requests])
    return out


async def test_the_worker_decides_as_the_processor_in_this_process_does() -> None:
    config = make_config()
    batches = _batches(3, 60)
    # In this process, built as the worker builds its own, learning after each batch.
    registry = CollectorRegistry()
    alerts = _Alerts()
    local = build_processors(
        config,
        Metrics(registry),
        alerter=alerts,  # type: ignore[arg-type]
        mitigation=None,
        bundle=load_configured_bundle(config.scoring.model),
        summaries=summaries_of(config),
    )[Signal.TRACES]
    expected = []
    for batch in batches:
        expected.append([p.data for p in local.process(batch)])
        local.settle()
    expected_summaries = [p.data for p in local.tick(time.time_ns())]
    local.close()

    remote_registry = CollectorRegistry()
    remote_alerts = _Alerts()
    worker = WorkerProcess(config, Metrics(remote_registry), remote_alerts, None)
    await worker.start()
    try:
        processor = RemoteProcessor(Signal.TRACES, worker)
        got = [[p.data for p in await processor.process_async(batch)] for batch in batches]
        summaries = [p.data for p in await processor.tick_async(time.time_ns())]
    finally:
        await worker.stop()
    assert got == expected  # the same spans, tags and trace states, byte for byte
    assert sum(map(len, got)) > 0
    assert [len(s) for s in summaries] == [len(s) for s in expected_summaries]  # timestamps differ
    for decision in ("dropped", "sampled", "anomaly", "critical_context"):
        labels = {"signal": "traces", "decision": decision}
        assert remote_registry.get_sample_value("otelai_selection_items_total", labels) == (
            registry.get_sample_value("otelai_selection_items_total", labels)
        ), decision
    assert [a.trace_id for a in remote_alerts.alerts] == [a.trace_id for a in alerts.alerts]
    assert remote_alerts.alerts


def _tagged_fail_open(payload: Payload) -> bool:
    request = ExportTraceServiceRequest.FromString(payload.data)
    spans = [span for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans]
    return bool(spans) and all(
        any(kv.key == SELECTION_REASON and kv.value.string_value == "fail_open" for kv in span.attributes)
        for span in spans
    )


async def test_a_dead_worker_fails_batches_open_and_is_started_again() -> None:
    config = load_config(text="scoring: {signals: [traces, logs], model: {enabled: false}}")
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    box = Box(slots=10_000)
    scoring = Scoring(config, Pipeline([box], metrics), metrics, worker_process=True)
    await scoring.start()
    stage = scoring.stages[Signal.TRACES]
    requests = [r.SerializeToString() for r in per_service(Workload(1).traces(1))]

    async def send() -> list[Payload]:
        """One trace through the stage (the receiver's call); what it forwarded."""
        box.items.clear()
        results = await asyncio.gather(*(stage.submit(Payload(Signal.TRACES, r, 2)) for r in requests))
        assert set(results) == {Admission.ACCEPTED}
        return list(box.items)

    try:
        worker = scoring.worker
        assert worker is not None and worker.alive
        assert all(not _tagged_fail_open(p) for p in await send())
        pid = worker._process.pid  # type: ignore[union-attr]
        os.kill(pid, signal.SIGKILL)
        out = await send()
        assert sum(p.items for p in out) == 6  # nothing lost
        assert all(_tagged_fail_open(p) for p in out)
        failed = registry.get_sample_value(
            "otelai_fail_open_items_total", {"signal": "traces", "reason": "error"}
        )
        assert failed is not None and failed >= 6
        # While it starts again, batches fail open at once; then scoring resumes.
        deadline = time.monotonic() + 120
        while not worker.alive:
            assert time.monotonic() < deadline, "the worker did not come back"
            assert all(_tagged_fail_open(p) for p in await send())
            await asyncio.sleep(0.2)
        assert worker._process is not None and worker._process.pid != pid
        assert all(not _tagged_fail_open(p) for p in await send())
    finally:
        await scoring.stop()
    assert scoring.worker is not None and scoring.worker._process is None  # reaped


async def test_a_worker_that_cannot_build_its_processors_says_why(tmp_path: Any) -> None:
    # A bundle directory without a manifest: the worker's message names the problem.
    config = load_config(text=f"scoring: {{signals: [traces], model: {{path: '{tmp_path}'}}}}")
    worker = WorkerProcess(config, Metrics(CollectorRegistry()), RecordedActions(), None)
    with pytest.raises(RuntimeError, match=r"could not start: .*manifest"):
        await worker.start()
    assert not worker.alive


async def test_logs_and_metrics_are_scored_in_the_worker_too() -> None:
    from .test_log_processor import Traffic as LogTraffic
    from .test_metric_processor import Traffic as MetricTraffic

    config = load_config(text="scoring: {signals: [traces, logs, metrics], model: {enabled: false}}")
    registry = CollectorRegistry()
    async with running_worker(config, registry) as worker:
        logs, points = LogTraffic(), MetricTraffic()
        sent_records = sent_points = 0
        metric_out: list[Payload] = []
        for _ in range(20):
            batch = logs.batch(records=100)
            sent_records += sum(p.items for p in batch)
            await RemoteProcessor(Signal.LOGS, worker).process_async(batch)
            batch = points.batch()
            sent_points += sum(p.items for p in batch)
            metric_out = await RemoteProcessor(Signal.METRICS, worker).process_async(batch)

    assert _decided(registry, "logs") == sent_records  # every record decided on, counted here
    assert _decided(registry, "metrics") == sent_points
    # Metric points are never dropped or relabelled: the last batch's requests come back whole.
    assert [p.data for p in metric_out[: len(batch)]] == [p.data for p in batch]


def test_auto_asks_for_the_worker_when_two_cores_are_usable() -> None:
    cpus = usable_cpus()
    assert 0 < cpus <= len(os.sched_getaffinity(0))
    assert use_worker("auto") is (cpus >= 2)
    assert use_worker(True) is True and use_worker(False) is False
    assert load_config(text="scoring: {worker_process: auto}").scoring.worker_process == "auto"
    with pytest.raises(ConfigError, match="worker_process"):
        load_config(text="scoring: {worker_process: sometimes}")


async def test_counts_of_what_the_worker_learned_arrive_without_waiting_for_more_traffic() -> None:
    # The trace processor counts a batch when it learns from it, after replying: with no next
    # request to ride on, the worker sends the counts on their own.
    config = load_config(text="scoring: {signals: [traces], model: {enabled: false}}")
    registry = CollectorRegistry()
    async with running_worker(config, registry) as worker:
        requests = list(per_service(Workload(9).traces(10)))
        batch = [Payload(Signal.TRACES, r.SerializeToString(), span_count([r])) for r in requests]
        await worker.process(Signal.TRACES, batch)
        deadline = time.monotonic() + 10
        while _decided(registry, "traces") < sum(p.items for p in batch):
            assert time.monotonic() < deadline, "the counts did not come"
            await asyncio.sleep(0.05)
        assert _decided(registry, "traces") == sum(p.items for p in batch)


def _decided(registry: CollectorRegistry, signal: str) -> float:
    return sum(
        s.value
        for family in registry.collect()
        if family.name == "otelai_selection_items"
        for s in family.samples
        if s.name.endswith("_total") and s.labels["signal"] == signal
    )


class _Learner:
    """A processor that forwards nothing and counts each batch when it learns from it."""

    signal = Signal.TRACES

    def __init__(self, metrics: RecordingMetrics) -> None:
        self._metrics = metrics
        self._pending = 0

    def process(self, payloads: list[Payload]) -> list[Payload]:
        self._pending += sum(p.items for p in payloads)
        return []

    def settle(self) -> None:
        if self._pending:
            self._metrics.selection_items.labels("traces", "dropped").inc(self._pending)
        self._pending = 0

    def tick(self, now_ns: int) -> list[Payload]:
        return []


def test_counts_ride_on_the_next_reply_when_it_comes_soon(monkeypatch: pytest.MonkeyPatch) -> None:
    # Under steady traffic the counts of what the worker learned from a batch go with the next
    # reply, not in a frame of their own: each frame costs the service's event loop a wake-up
    # and a read in the middle of receiving requests. Alone only when no request comes.
    monkeypatch.setattr(worker_module, "UPDATE_DELAY", 5.0)
    ours, theirs = socket.socketpair()
    window = SharedWindow(1 << 16)
    metrics, actions = RecordingMetrics(), RecordedActions()
    processors: dict[Signal, Any] = {Signal.TRACES: _Learner(metrics)}
    thread = threading.Thread(
        target=worker_module._answer, args=(theirs, window, processors, metrics, actions)
    )
    thread.start()
    try:

        def send(items: int) -> None:
            worker_module._send_blocking(
                ours, ("process", "traces", window.put([Payload(Signal.TRACES, b"x" * 10, items)]))
            )

        send(3)
        first = worker_module._recv_blocking(ours)
        assert first is not None and first[0] == "ok" and first[2] == []  # learned after replying
        time.sleep(0.05)  # it has learned from the first batch by now; nothing else is waiting
        send(4)
        second = worker_module._recv_blocking(ours)
        assert second is not None and second[0] == "ok"  # not an "update" of its own
        assert [op[3:] for op in second[2]] == [("inc", 3.0)]
        worker_module._send_blocking(ours, ("stop", "traces", None))
        stopped = worker_module._recv_blocking(ours)
        assert stopped is not None and stopped[0] == "stopped"
        assert [op[3:] for op in stopped[2]] == [("inc", 4.0)]
    finally:
        thread.join(10)
        ours.close()
        theirs.close()
        window.close()


async def test_a_worker_that_does_not_answer_fails_the_batch_and_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = load_config(text="scoring: {signals: [traces], model: {enabled: false}}")
    async with running_worker(config, CollectorRegistry()) as worker:
        requests = list(per_service(Workload(2).traces(5)))
        batch = [Payload(Signal.TRACES, r.SerializeToString(), span_count([r])) for r in requests]
        # A reply whose awaiting task is cancelled does not put later replies out of step.
        waiting = asyncio.create_task(worker.result(await worker.submit("process", Signal.TRACES, batch)))
        await asyncio.sleep(0)
        waiting.cancel()
        assert isinstance(await worker.process(Signal.TRACES, batch), list)
        monkeypatch.setattr(worker_module, "REPLY_TIMEOUT", 0.5)
        process = worker._process
        assert process is not None
        os.kill(process.pid, signal.SIGSTOP)  # stuck: alive, silent
        with pytest.raises(WorkerUnavailable, match="did not answer"):
            await worker.process(Signal.TRACES, batch)
        assert not worker.alive  # killed; started again in the background
        assert await asyncio.wait_for(process.wait(), 10) == -signal.SIGKILL


class _FakeProcess:
    """Stands in for the worker's process: the test answers on the socket itself."""

    pid = 0
    returncode: int | None = None

    def kill(self) -> None:
        self.returncode = -9

    async def wait(self) -> int:
        return self.returncode or 0


async def _with_fake_worker(monkeypatch: pytest.MonkeyPatch) -> tuple[WorkerProcess, socket.socket]:
    """A started :class:`WorkerProcess` whose worker is the returned socket (blocking)."""
    ends: list[socket.socket] = []

    async def spawn(*command: Any, pass_fds: Any = (), **_: Any) -> _FakeProcess:
        ends.append(socket.socket(fileno=os.dup(int(command[3]))))  # theirs, closed by start()
        worker_module._send_blocking(ends[0], ("ready", "fake", []))
        return _FakeProcess()

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)
    config = load_config(text="scoring: {signals: [traces], model: {enabled: false}}")
    worker = WorkerProcess(
        config, Metrics(CollectorRegistry()), RecordedActions(), None, window_bytes=1 << 16
    )
    await worker.start()
    theirs = ends[0]
    theirs.setblocking(True)
    first = worker_module._recv_blocking(theirs)
    assert first is not None and first[0] == "config"
    return worker, theirs


async def _stop_fake_worker(worker: WorkerProcess, theirs: socket.socket) -> None:
    """Stop ``worker``, answering its ``stop`` as the worker does (if it is still connected)."""

    def answer() -> None:
        if worker_module._recv_blocking(theirs) is not None:
            worker_module._send_blocking(theirs, ("stopped", [], [], [], [], "fake"))

    thread = threading.Thread(target=answer) if worker.alive else None
    if thread is not None:
        thread.start()
    await worker.stop()
    if thread is not None:
        thread.join(10)
    theirs.close()


async def test_a_reply_wakes_its_waiter_in_the_turn_it_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    # The frame is parsed as the socket's bytes are read, and resolves the reply's future right
    # there: one turn of the event loop to read it, none more for a reader task to wake and
    # parse it (each is a wake-up in the middle of receiving requests).
    worker, theirs = await _with_fake_worker(monkeypatch)
    try:
        reply = await worker.submit("process", Signal.TRACES, [Payload(Signal.TRACES, b"x" * 10, 1)])
        request = worker_module._recv_blocking(theirs)
        assert request is not None and request[0] == "process"
        worker_module._send_blocking(theirs, ("ok", [], [], [], [], "fake"))  # in the socket now
        turns = 0
        while not reply.done():
            await asyncio.sleep(0)
            turns += 1
            assert turns < 10
        assert turns <= 2  # this task's own turn, then the one that reads the socket
        assert await worker.result(reply) == []
    finally:
        await _stop_fake_worker(worker, theirs)


async def test_frames_cut_or_run_together_are_read_in_order_and_eof_fails_open(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker, theirs = await _with_fake_worker(monkeypatch)
    registry_metrics = worker._metrics
    try:
        batch = [Payload(Signal.TRACES, b"x" * 10, 1)]
        first = await worker.submit("process", Signal.TRACES, batch)
        second = await worker.submit("process", Signal.TRACES, batch)
        third = await worker.submit("process", Signal.TRACES, batch)
        for _ in range(3):
            assert worker_module._recv_blocking(theirs) is not None
        kept = Payload(Signal.TRACES, b"kept", 1)
        op = ("selection_items", ("traces", "kept"), False, "inc", 5.0)
        frames = b"".join(
            b"".join(worker_module._frame(message))
            for message in (
                ("update", [], [op], [], [], "fake"),  # not a reply: only applied
                ("ok", worker_module._wire([kept]), [], [], [], "fake"),
                ("ok", [], [], [], [], "fake"),
            )
        )
        cut = len(frames) - 3  # the last frame arrives in two pieces
        theirs.sendall(frames[:cut])
        assert [p.data for p in await worker.result(first)] == [b"kept"]
        await asyncio.sleep(0.05)
        assert not second.done()
        theirs.sendall(frames[cut:])
        assert await worker.result(second) == []
        await asyncio.sleep(0.05)
        assert not third.done()
        assert registry_metrics.selection_items.labels("traces", "kept")._value.get() == 5.0
        theirs.shutdown(socket.SHUT_WR)  # the worker is gone before answering the third
        with pytest.raises(WorkerUnavailable, match="stopped answering"):
            await worker.result(third)
        assert not worker.alive
    finally:
        await _stop_fake_worker(worker, theirs)


def test_a_worker_whose_service_is_gone_before_it_is_ready_exits_quietly() -> None:
    # The service stopped (or was killed) while the worker was still building its processors:
    # the worker's "ready" finds the socket closed, and it exits 0 without a traceback.
    ours, theirs = socket.socketpair()
    window = SharedWindow(1 << 16)
    try:
        command = [sys.executable, "-m", "otelai.scoring.worker", str(theirs.fileno()), str(window.fd)]
        process = subprocess.Popen(
            [*command, str(window.size)],
            pass_fds=[theirs.fileno(), window.fd],
            stderr=subprocess.PIPE,
            text=True,
        )
        theirs.close()
        header, body = worker_module._frame(("config", make_config()))
        ours.sendall(header + body)
        ours.close()
        _, stderr = process.communicate(timeout=120)
    finally:
        window.close()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
