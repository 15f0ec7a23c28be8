import asyncio
import threading

from otelai.decision.actions import Alert, Alerter
from otelai.scoring.thread import LoopAlerter, scoring_executor


def _alert() -> Alert:
    return Alert(
        severity="anomaly",
        signal="traces",
        service="cart",
        operation="GET /cart",
        score=0.99,
        reason="latency_z",
        trace_id="00" * 16,
    )


class RecordingAlerter(Alerter):
    """Records the thread that ``submit`` runs on."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    def submit(self, alerts: object) -> int:
        self.threads.append(threading.get_ident())
        return 0


async def test_alerts_raised_on_the_scoring_thread_are_submitted_on_the_loop() -> None:
    alerter = RecordingAlerter()
    proxy = LoopAlerter(alerter)
    proxy.bind(asyncio.get_running_loop())
    with scoring_executor() as executor:
        handed = await asyncio.get_running_loop().run_in_executor(executor, proxy.submit, [_alert()])
    await asyncio.sleep(0)  # the call scheduled from the thread runs on the next loop turn
    assert handed == 1
    assert alerter.threads == [threading.get_ident()]


async def test_alerts_raised_on_the_loop_are_submitted_at_once() -> None:
    alerter = RecordingAlerter()
    proxy = LoopAlerter(alerter)
    proxy.bind(asyncio.get_running_loop())
    proxy.submit([_alert()])
    assert alerter.threads == [threading.get_ident()]
