from prometheus_client import CollectorRegistry

from otelai.pipeline import Admission, Payload, Pipeline
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics


class Box:
    """A sink with a fixed number of request slots."""

    durable = False

    def __init__(self, name: str, slots: int) -> None:
        self.name = name
        self.slots = slots
        self.items: list[Payload] = []

    def has_room(self, payload: Payload) -> bool:
        return len(self.items) < self.slots

    def put(self, payload: Payload) -> None:
        self.items.append(payload)


def _payload(items: int = 3) -> Payload:
    return Payload(Signal.TRACES, b"\x0a\x00", items)


async def test_fans_out_to_every_sink_and_counts() -> None:
    registry = CollectorRegistry()
    a, b = Box("a", 10), Box("b", 10)
    pipeline = Pipeline([a, b], Metrics(registry))
    assert await pipeline.submit(_payload()) is Admission.ACCEPTED
    assert len(a.items) == len(b.items) == 1
    labels = {"signal": "traces", "decision": "forwarded"}
    assert registry.get_sample_value("otelai_selection_items_total", labels) == 3
    assert registry.get_sample_value("otelai_pipeline_latency_seconds_count", {"signal": "traces"}) == 1


async def test_admission_is_all_or_nothing() -> None:
    a, b = Box("a", 10), Box("b", 1)
    pipeline = Pipeline([a, b], Metrics(CollectorRegistry()))
    assert await pipeline.submit(_payload()) is Admission.ACCEPTED
    assert await pipeline.submit(_payload()) is Admission.OVERLOADED
    # the refused request is in neither queue, so the client's retry duplicates nothing
    assert len(a.items) == len(b.items) == 1


async def test_stopping_refuses() -> None:
    a = Box("a", 10)
    pipeline = Pipeline([a], Metrics(CollectorRegistry()))
    pipeline.stop_accepting()
    assert await pipeline.submit(_payload()) is Admission.STOPPING
    assert not a.items


class BrokenDisk(Box):
    durable = True

    def put(self, payload: Payload) -> None:
        raise OSError(28, "No space left on device")


async def test_storage_failure_refuses_before_touching_memory_queues() -> None:
    registry = CollectorRegistry()
    memory, disk = Box("memory", 10), BrokenDisk("disk", 10)
    pipeline = Pipeline([memory, disk], Metrics(registry))
    assert await pipeline.submit(_payload()) is Admission.OVERLOADED
    assert not memory.items
    assert (
        registry.get_sample_value(
            "otelai_receiver_refused_requests_total", {"signal": "traces", "reason": "storage"}
        )
        == 1
    )
