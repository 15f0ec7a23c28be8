"""The logs processor with a bundle of log session models (``otelai train --dataset hdfs|bgl``):
the bundle's miner and models score records in their sessions, ended sessions alert, and a
bundle that cannot be used stops the start."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from prometheus_client import CollectorRegistry

from otelai.config import Config, load_config
from otelai.decision.actions import Alert
from otelai.models.bundle import Bundle, BundleError, load_bundle
from otelai.models.serving import load_configured_bundle
from otelai.models.tasks.bgl import BglTask
from otelai.models.tasks.hdfs import HdfsTask
from otelai.pipeline import Payload, Pipeline
from otelai.replay.bgl import BglLine, line_batches
from otelai.replay.hdfs import Block, block_batches
from otelai.scoring.build import Scoring
from otelai.scoring.logs import LogProcessor
from otelai.service import StartupError
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics
from tests.unit.models.tasks.log_fixtures import (
    ALLOCATE,
    RECEIVED,
    RECEIVING,
    RESPONDER,
    STORED,
    write_bgl,
    write_hdfs,
)

pytest.importorskip("onnxruntime")

NODE = "R00-M1-N0-C:J12-U11"


@pytest.fixture(scope="module")
def bgl_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = tmp_path_factory.mktemp("bgl")
    return BglTask().train(write_bgl(root / "data"), root / "bundle", progress=False)


@pytest.fixture(scope="module")
def hdfs_bundle(tmp_path_factory: pytest.TempPathFactory) -> Bundle:
    root = tmp_path_factory.mktemp("hdfs")
    return HdfsTask().train(write_hdfs(root / "data"), root / "bundle", seed=0, progress=False)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Alerts:
    """Stands in for the Alerter: keeps what is submitted."""

    def __init__(self) -> None:
        self.alerts: list[Alert] = []

    def submit(self, alerts: list[Alert]) -> None:
        self.alerts.extend(alerts)


def _config(extra: str = "") -> Config:
    # Nothing normal is sampled: what is forwarded is what was judged anomalous.
    return load_config(
        text=f"selection: {{normal_sample_rate: 0.0{extra}}}\nscoring: {{model_version: builtin-9}}"
    )


def _processor(bundle: Bundle, registry: CollectorRegistry, **kwargs: Any) -> LogProcessor:
    return LogProcessor(kwargs.pop("config", _config()), Metrics(registry), bundle=bundle, **kwargs)


def _payloads(batches: Any) -> list[Payload]:
    return [Payload(Signal.LOGS, batch.data, batch.items) for batch in batches]


def _kept(payloads: list[Payload]) -> dict[str, dict[str, Any]]:
    """Forwarded records: body -> otelai tags."""
    out = {}
    for payload in payloads:
        request = ExportLogsServiceRequest.FromString(payload.data)
        for resource in request.resource_logs:
            for scope in resource.scope_logs:
                for record in scope.log_records:
                    tags = {
                        a.key: getattr(a.value, a.value.WhichOneof("value") or "string_value")
                        for a in record.attributes
                        if a.key.startswith("otelai.")
                    }
                    out[record.body.string_value] = tags
    return out


def _line(level: str, content: str, i: int) -> BglLine:
    return BglLine(1117838570_000_000_000 + i, NODE, "KERNEL", "RAS", level, content, "-")


def _anomalies(registry: CollectorRegistry, severity: str) -> float:
    return (
        registry.get_sample_value("otelai_anomalies_total", {"signal": "logs", "severity": severity}) or 0.0
    )


def test_bgl_unseen_template_is_tagged_and_normal_lines_pass(bgl_bundle: Bundle) -> None:
    registry = CollectorRegistry()
    processor = _processor(bgl_bundle, registry, clock=Clock())
    assert processor.sessions is not None
    assert processor.state is processor.sessions.state  # template ids as in training
    normal = [
        _line("INFO", "instruction cache parity error corrected", 0),
        _line("INFO", "generating core.4321", 1),
        _line("INFO", "77 double-hummer alignment exceptions", 2),
    ]
    unseen = _line("FATAL", "machine check interrupt: L3 major internal error", 3)
    kept = _kept(processor.process(_payloads(line_batches([*normal, unseen]))))
    assert set(kept) == {unseen.content}
    tags = kept[unseen.content]
    assert tags["otelai.anomaly.severity"] in ("anomaly", "critical")
    assert tags["otelai.selection.reason"] == "anomaly"
    assert tags["otelai.anomaly.reason"] == "next_event: unseen template"
    assert tags["otelai.model.version"] == bgl_bundle.manifest.version
    assert 0.99 <= tags["otelai.anomaly.score"] <= 1.0
    assert _anomalies(registry, "anomaly") + _anomalies(registry, "critical") == 1
    processor.close()


def _block(block_id: str, templates: list[str]) -> Block:
    return Block(block_id, False, tuple(templates))


def _normal(block_id: str) -> Block:
    return _block(
        block_id, [ALLOCATE, RECEIVING, RECEIVING, RESPONDER, RECEIVED, RESPONDER, RECEIVED, STORED, STORED]
    )


def test_hdfs_broken_order_is_tagged_and_an_early_end_alerts_when_the_session_ends(
    hdfs_bundle: Bundle,
) -> None:
    registry, clock, alerts = CollectorRegistry(), Clock(), Alerts()
    processor = _processor(hdfs_bundle, registry, clock=clock, alerter=alerts)
    blocks = [
        _normal("blk_ok"),
        _block("blk_order", [RECEIVING, RECEIVING, ALLOCATE]),
        _block("blk_short", [ALLOCATE, RECEIVING]),
    ]
    forwarded = processor.process(_payloads(block_batches(blocks)))
    requests = [ExportLogsServiceRequest.FromString(p.data) for p in forwarded]
    kept = [
        (record, {a.key: a.value for a in record.attributes})
        for request in requests
        for resource in request.resource_logs
        for scope in resource.scope_logs
        for record in scope.log_records
    ]
    sessions = {attrs["BlockId"].string_value for _, attrs in kept}
    assert sessions == {"blk_order"}  # the normal block and the (so far) normal prefix pass
    reasons = {attrs["otelai.anomaly.reason"].string_value for _, attrs in kept}
    assert reasons == {"next_event: unexpected template"}
    assert {alert.operation for alert in alerts.alerts} == {RECEIVING, ALLOCATE}  # records of blk_order
    alerts.alerts.clear()

    clock.now += processor.sessions.sessions.idle_timeout + 1  # type: ignore[union-attr]
    before = _anomalies(registry, "anomaly") + _anomalies(registry, "critical")
    assert processor.tick(0) == []
    ended = {alert.reason.rsplit("BlockId=", 1)[1]: alert for alert in alerts.alerts}
    assert "blk_short" in ended and "blk_ok" not in ended
    alert = ended["blk_short"]
    assert alert.operation == "BlockId session" and alert.signal == "logs"
    assert alert.reason.startswith(("next_event: session end", "session_counts: template counts"))
    assert alert.service == "hdfs"
    after = _anomalies(registry, "anomaly") + _anomalies(registry, "critical")
    assert after - before == len(alerts.alerts)
    assert processor.sessions is not None and len(processor.sessions.sessions) == 0
    processor.close()


def test_explicit_selection_thresholds_override_the_bundles(hdfs_bundle: Bundle) -> None:
    tuned = hdfs_bundle.manifest.signals["logs"].thresholds
    default = _processor(hdfs_bundle, CollectorRegistry())
    assert (default._session_anomaly, default._session_critical) == (tuned.anomaly, tuned.critical)
    config = _config(", anomaly_threshold: 0.9, critical_threshold: 0.9999")
    processor = _processor(hdfs_bundle, CollectorRegistry(), config=config)
    assert (processor._session_anomaly, processor._session_critical) == (0.9, 0.9999)
    default.close()
    processor.close()


def test_a_failing_session_model_leaves_the_online_scorer(
    hdfs_bundle: Bundle, caplog: pytest.LogCaptureFixture
) -> None:
    processor = _processor(hdfs_bundle, CollectorRegistry(), clock=Clock())

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    processor.sessions.score_records = broken  # type: ignore[method-assign, union-attr]
    blocks = [_block("blk_order", [RECEIVING, RECEIVING, ALLOCATE])]
    assert processor.process(_payloads(block_batches(blocks))) == []  # scored, not lost nor raised
    processor.process(_payloads(block_batches(blocks)))
    assert sum("log session model failed" in r.getMessage() for r in caplog.records) == 1
    processor.close()


def test_without_session_models_the_processor_is_the_builtin_one(hdfs_bundle: Bundle, tmp_path: Path) -> None:
    config = load_config(text=f"scoring: {{model: {{path: {str(_traces_only(tmp_path))!r}}}}}")
    bundle = load_configured_bundle(config.scoring.model)
    processor = LogProcessor(config, Metrics(CollectorRegistry()), bundle=bundle)
    assert processor.sessions is None
    processor.close()


def _traces_only(tmp_path: Path) -> Path:
    from otelai.features.spans import SPAN_SCHEMA
    from otelai.models.bundle import Manifest, SchemaSpec, SignalModel, save_bundle

    out = tmp_path / "traces"
    out.mkdir()
    manifest = Manifest(
        name="t",
        version="t-1",
        signals={"traces": SignalModel(feature_schema=SchemaSpec.of("spans", SPAN_SCHEMA), detectors=[])},
    )
    save_bundle(out, manifest)
    return out


# -- the bundle the service loads ------------------------------------------------------------------


def _scoring(text: str) -> tuple[Scoring, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    return Scoring(load_config(text=text), Pipeline([], metrics), metrics), registry


def test_scoring_serves_the_configured_log_bundle(hdfs_bundle: Bundle) -> None:
    scoring, registry = _scoring(f"scoring: {{signals: [logs], model: {{path: {str(hdfs_bundle.path)!r}}}}}")
    processor = scoring.stages[Signal.LOGS].processor
    assert isinstance(processor, LogProcessor) and processor.sessions is not None
    version = hdfs_bundle.manifest.version
    assert registry.get_sample_value("otelai_model_info", {"version": version, "backend": "none"}) == 1
    scoring._close_stages()


def test_a_bundle_that_cannot_be_used_stops_the_start(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(StartupError, match=r"scoring\.model.*no manifest\.json"):
        _scoring(f"scoring: {{model: {{path: {str(missing)!r}}}}}")


def test_a_log_schema_the_service_does_not_compute_is_refused(hdfs_bundle: Bundle, tmp_path: Path) -> None:
    copy = _copy(hdfs_bundle, tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["signals"]["logs"]["feature_schema"]["name"] = "log-windows"
    _rewrite(copy, manifest)
    with pytest.raises(StartupError, match="'log-windows', which this otelai does not compute"):
        _scoring(f"scoring: {{model: {{path: {str(copy)!r}}}}}")


def test_a_session_schema_of_another_history_is_refused(hdfs_bundle: Bundle, tmp_path: Path) -> None:
    copy = _copy(hdfs_bundle, tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["signals"]["logs"]["feature_schema"]["columns"].remove("context_0")
    _rewrite(copy, manifest)
    config = load_config(text=f"scoring: {{model: {{path: {str(copy)!r}}}}}")
    with pytest.raises(BundleError, match="not in the bundle: context_0"):
        load_configured_bundle(config.scoring.model)


def _copy(bundle: Bundle, out: Path) -> Path:
    out.mkdir()
    for file in bundle.path.iterdir():
        (out / file.name).write_bytes(file.read_bytes())
    return out


def _rewrite(root: Path, manifest: dict[str, Any]) -> None:
    (root / "manifest.json").write_text(json.dumps(manifest))
    load_bundle(root)  # the digests still hold: only the manifest changed


def test_combined_score_is_bonferroni_over_the_two_parts(hdfs_bundle: Bundle) -> None:
    processor = _processor(hdfs_bundle, CollectorRegistry(), clock=Clock())
    assert not processor.scorer.warm  # the bundle alone votes: its score is not halved
    blocks = [_block("blk_order", [RECEIVING, RECEIVING, ALLOCATE])]
    kept = _kept(processor.process(_payloads(block_batches(blocks))))
    scores = np.array([tags["otelai.anomaly.score"] for tags in kept.values()])
    assert scores.size and np.all(scores >= hdfs_bundle.manifest.signals["logs"].thresholds.anomaly - 1e-4)
    processor.close()
