import aiohttp
from prometheus_client import CollectorRegistry

from otelai.telemetry.metrics import Metrics
from otelai.telemetry.server import TelemetryServer


async def test_metrics_and_health_endpoints() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.receiver_items.labels("traces").inc(7)
    ready = False
    server = TelemetryServer("127.0.0.1:0", registry, lambda: ready)
    await server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                text = await response.text()
            assert 'otelai_receiver_items_total{signal="traces"} 7.0' in text
            async with session.get(f"{base}/healthz") as response:
                assert response.status == 200
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 503
            ready = True
            async with session.get(f"{base}/readyz") as response:
                assert response.status == 200
    finally:
        await server.stop()


def test_every_design_metric_is_defined() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    names = {metric.name for metric in registry.collect()}
    # prometheus_client reports counters without the _total suffix in .name
    for name in [
        "otelai_receiver_items",
        "otelai_receiver_bytes",
        "otelai_exporter_items",
        "otelai_exporter_bytes",
        "otelai_selection_items",
        "otelai_anomalies",
        "otelai_inference_duration_seconds",
        "otelai_pipeline_latency_seconds",
        "otelai_sla_violations",
        "otelai_batch_size",
        "otelai_queue_items",
        "otelai_backend_fallbacks",
        "otelai_model_info",
    ]:
        assert name in names
