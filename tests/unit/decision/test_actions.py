"""Alerts and mitigation hooks against a real aiohttp server on loopback and a real command."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from otelai.decision.actions import Alert, Alerter, MitigationHook, TokenBucket


class ManualClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Peer:
    """An HTTP server that records JSON bodies and answers with ``status``."""

    url: str
    bodies: list[Any] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    status: int = 200
    delay: float = 0.0
    received: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    state = Peer(url="")

    async def handle(request: web.Request) -> web.Response:
        state.bodies.append(await request.json())
        state.paths.append(request.path)
        state.headers.append(dict(request.headers))
        state.received.set()
        if state.delay:
            await asyncio.sleep(state.delay)
        return web.Response(status=state.status, text="{}")

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}"
    try:
        yield state
    finally:
        await runner.cleanup()


def alert(
    service: str = "checkout", operation: str = "PlaceOrder", severity: str = "anomaly", **kw: Any
) -> Alert:
    defaults: dict[str, Any] = {
        "signal": "traces",
        "score": 0.9931,
        "reason": "duration_z=8.1",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "starts_at": 1_700_000_000.25,
    }
    defaults.update(kw)
    return Alert(severity=severity, service=service, operation=operation, **defaults)


def test_token_bucket() -> None:
    clock = ManualClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5  # one token back
    assert [bucket.take() for _ in range(2)] == [True, False]
    clock.now += 100  # never more than the burst
    assert sum(bucket.take() for _ in range(10)) == 3
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1)


def test_log_line_dedup_and_rate_limit(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock()
    outcomes: list[tuple[str, str]] = []
    alerter = Alerter(
        group_window=60, rate=1.0, burst=2, clock=clock, on_outcome=lambda s, o: outcomes.append((s, o))
    )
    caplog.set_level(logging.WARNING, logger="otelai.alerts")
    emitted = alerter.submit(
        [
            alert(),
            alert(),  # same group within the window: deduplicated
            alert(severity="critical"),  # another group
            alert(service="cart"),  # another group, but the bucket (burst 2) is empty
        ]
    )
    assert emitted == 2
    assert alerter.counts == {"logged": 2, "deduplicated": 1, "rate_limited": 1}
    assert outcomes == [
        ("anomaly", "logged"),
        ("anomaly", "deduplicated"),
        ("critical", "logged"),
        ("anomaly", "rate_limited"),
    ]
    records = [r for r in caplog.records if r.name == "otelai.alerts"]
    assert len(records) == 2
    first = records[0]
    assert first.levelno == logging.WARNING
    assert (first.service, first.operation, first.severity, first.trace_id) == (  # type: ignore[attr-defined]
        "checkout",
        "PlaceOrder",
        "anomaly",
        "4bf92f3577b34da6a3ce929d0e0e4736",
    )
    # After the window the same group fires again; tokens came back meanwhile.
    clock.now += 61
    assert alerter.submit([alert()]) == 1


async def test_webhook_body_is_alertmanager_v2(peer: Peer) -> None:
    alerter = Alerter(
        webhook_url=f"{peer.url}/api/v2/alerts",
        headers={"Authorization": "Bearer t0ken"},
        resolve_after=300,
        generator_url="http://grafana.local/d/otelai",
    )
    await alerter.start()
    try:
        assert alerter.submit([alert(), alert(service="cart", severity="critical")]) == 2
        await asyncio.wait_for(peer.received.wait(), 5)
    finally:
        await alerter.shutdown()
    assert peer.paths[0] == "/api/v2/alerts"
    assert peer.headers[0]["Authorization"] == "Bearer t0ken"
    posted = [a for body in peer.bodies for a in body]
    assert len(posted) == 2
    first = posted[0]
    assert set(first) == {"labels", "annotations", "startsAt", "endsAt", "generatorURL"}
    assert first["labels"] == {
        "alertname": "OtelaiAnomaly",
        "severity": "anomaly",
        "service": "checkout",
        "operation": "PlaceOrder",
        "signal": "traces",
    }
    assert first["annotations"] == {
        "score": "0.9931",
        "reason": "duration_z=8.1",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
    assert first["startsAt"] == "2023-11-14T22:13:20.250Z"
    starts = datetime.datetime.fromisoformat(first["startsAt"])
    ends = datetime.datetime.fromisoformat(first["endsAt"])
    assert (ends - starts).total_seconds() == 300
    assert first["generatorURL"] == "http://grafana.local/d/otelai"
    assert posted[1]["labels"]["severity"] == "critical"
    assert alerter.counts["sent"] == 2


async def test_webhook_failure_is_counted_not_raised(peer: Peer) -> None:
    peer.status = 500
    alerter = Alerter(webhook_url=peer.url)
    await alerter.start()
    try:
        alerter.submit([alert()])
        await asyncio.wait_for(peer.received.wait(), 5)
    finally:
        await alerter.shutdown()
    assert alerter.counts["failed"] == 1
    # An unreachable webhook (nothing listens on the port any more) is a failure too.
    closed = Alerter(webhook_url=peer.url.rsplit(":", 1)[0] + ":1", timeout=2)
    await closed.start()
    closed.submit([alert()])
    await closed.shutdown(grace=5)
    assert closed.counts["failed"] == 1
    assert closed.counts["logged"] == 1  # the log line does not depend on the webhook


async def test_full_queue_drops_and_counts(peer: Peer) -> None:
    alerter = Alerter(webhook_url=peer.url, queue_size=2, rate=1000, burst=1000)
    # Not started: nothing drains the queue, which must not block the caller.
    emitted = alerter.submit([alert(service=f"s{i}") for i in range(5)])
    assert emitted == 5
    assert alerter.counts["queue_full"] == 3
    await alerter.start()
    await alerter.shutdown(grace=5)
    assert alerter.counts["sent"] == 2


async def test_mitigation_command_runs_with_alert_environment(tmp_path: Path) -> None:
    out = tmp_path / "mitigations.log"
    hook = MitigationHook(
        command=[
            "sh",
            "-c",
            'echo "$OTELAI_ALERT_SERVICE $OTELAI_ALERT_SEVERITY $OTELAI_ALERT_OPERATION" >> "$0"',
            str(out),
        ],
        max_runs=5,
        interval=60,
    )
    await hook.start()
    try:
        # A hostile span name stays data: it reaches the command only as an environment value.
        assert hook.trigger(alert(severity="critical", operation="x; rm -rf /"))
        assert hook.trigger(alert(service="cart", severity="critical"))
    finally:
        await hook.shutdown(grace=10)
    assert out.read_text().splitlines() == ["checkout critical x; rm -rf /", "cart critical PlaceOrder"]
    assert hook.counts == {"ran": 2}


async def test_mitigation_rate_limit_and_cooldown(tmp_path: Path) -> None:
    clock = ManualClock()
    out = tmp_path / "runs"
    hook = MitigationHook(
        command=["sh", "-c", 'echo run >> "$0"', str(out)], max_runs=2, interval=60, clock=clock
    )
    await hook.start()
    try:
        assert hook.trigger(alert(service="a"))
        assert not hook.trigger(alert(service="a"))  # same service and operation: cooldown
        assert hook.trigger(alert(service="b"))
        assert not hook.trigger(alert(service="c"))  # two runs in the interval already
        clock.now += 61
        assert hook.trigger(alert(service="a"))
    finally:
        await hook.shutdown(grace=10)
    assert hook.counts == {"ran": 3, "cooldown": 1, "rate_limited": 1}
    assert out.read_text().splitlines() == ["run"] * 3


async def test_mitigation_dry_run_does_nothing(
    tmp_path: Path, peer: Peer, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "never"
    hook = MitigationHook(webhook_url=peer.url, command=["sh", "-c", 'echo x > "$0"', str(out)], dry_run=True)
    caplog.set_level(logging.WARNING, logger="otelai.alerts")
    await hook.start()
    try:
        assert hook.trigger(alert(severity="critical"))
    finally:
        await hook.shutdown(grace=5)
    assert hook.counts == {"dry_run": 1}
    assert not out.exists()
    assert peer.bodies == []
    dry = [r for r in caplog.records if "dry run" in r.getMessage()]
    assert len(dry) == 1
    assert dry[0].command[0] == "sh"  # type: ignore[attr-defined]


async def test_mitigation_webhook_posts_alert_fields(peer: Peer) -> None:
    hook = MitigationHook(webhook_url=f"{peer.url}/mitigate")
    await hook.start()
    try:
        hook.trigger(alert(severity="critical"))
        await asyncio.wait_for(peer.received.wait(), 5)
    finally:
        await hook.shutdown(grace=5)
    body = peer.bodies[0]
    assert body["alertname"] == "OtelaiAnomaly"
    assert (body["service"], body["operation"], body["severity"]) == ("checkout", "PlaceOrder", "critical")
    assert body["score"] == pytest.approx(0.9931)
    assert hook.counts == {"ran": 1}


async def test_mitigation_command_timeout_and_failure(tmp_path: Path) -> None:
    slow = MitigationHook(command=["sleep", "30"], timeout=0.2, max_runs=5)
    failing = MitigationHook(command=["sh", "-c", "echo boom >&2; exit 3"], max_runs=5)
    missing = MitigationHook(command=[str(tmp_path / "no-such-command")], max_runs=5)
    for hook in (slow, failing, missing):
        await hook.start()
        hook.trigger(alert(severity="critical"))
        await hook.shutdown(grace=10)
    assert slow.counts == {"timeout": 1}
    assert failing.counts == {"failed": 1}
    assert missing.counts == {"failed": 1}


def test_mitigation_needs_an_action() -> None:
    with pytest.raises(ValueError):
        MitigationHook()
    with pytest.raises(ValueError):
        MitigationHook(command=["true"], max_runs=0)


def test_alert_payload_shapes() -> None:
    a = alert()
    body = a.to_alertmanager(resolve_after=60)
    assert "generatorURL" not in body  # optional in the API: left out when unset
    assert json.loads(json.dumps(body)) == body
    env = a.environment()
    assert env["OTELAI_ALERT_SERVICE"] == "checkout"
    assert env["OTELAI_ALERT_TRACE_ID"] == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert a.group == ("checkout", "PlaceOrder", "anomaly")
