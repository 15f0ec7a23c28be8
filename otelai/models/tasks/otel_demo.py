"""Training and evaluation on the OpenTelemetry Demo windows (``otelai train --dataset otel-demo``).

Data (``../shared/data/otel-demo``): 30-second windows of Astronomy Shop traces, normal ones
under ``train/`` and fault ones (a feature flag switched on) under ``eval/``. Windows are
turned into OTLP requests by :mod:`otelai.replay.otel_demo` and read by the service's own span
reader and features (:class:`~otelai.features.span_batch.SpanBatch`,
:func:`~otelai.features.spans.span_features`), so the models see exactly what the service
computes. Copies are dropped by content hash (the ``eval0N_baseline`` windows repeat
``train0N_baseline``; two fault windows are repeated).

Splits, all deterministic for a seed:

- normal windows: a third of the light and a third of the heavy ones are held out as normal
  *test* windows (false positives are measured on normal data the models never saw), one of
  each for *calibration* (per-detector ECDF quantiles, and the normal side of threshold
  tuning), the rest to *fit* the detectors;
- fault windows: by content hash, half *tune* the anomaly threshold, half are *test*.

Models: a dense autoencoder (Sakurada & Yairi, MLSDA 2014) and an isolation forest (Liu, Ting &
Zhou, ICDM 2008) over the span features, calibrated and combined by the service's
:class:`~otelai.scoring.scorer.Scorer` (ECDF p-values, Bonferroni).

Evaluation runs every window through the service's :class:`~otelai.scoring.traces.TraceProcessor`
with the bundle's detectors in its scorer, starting from the bundle's warm per-operation
baselines and calibration, and reads the tags back from what it forwards: a trace is anomalous
when any of its spans is tagged ``anomaly`` or ``critical``, and a window's score is the share
of its traces that are. Window-level ROC AUC is reported on the test windows, beside two rules
computed on the same windows: "trace has an error span" and "root span slower than its
operation's training p99" (the data README's references, 0.56 and 0.31 on all of ``eval/``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from otelai.detectors.autoencoder import AutoencoderDetector
from otelai.detectors.base import Detector
from otelai.detectors.isolation_forest import IsolationForestDetector
from otelai.detectors.registry import Serving, detector_kinds, load_detector
from otelai.features.interner import Interner
from otelai.features.span_batch import SpanBatch
from otelai.features.spans import SPAN_SCHEMA, SpanBaselines, span_features
from otelai.models.bundle import (
    Bundle,
    Calibration,
    DetectorSpec,
    Manifest,
    SchemaSpec,
    SignalModel,
    Thresholds,
    Training,
    save_bundle,
)
from otelai.models.evaluation.metrics import pr_auc, roc_auc
from otelai.models.span_state import BASELINES_FILE, load_span_baselines, save_span_baselines
from otelai.models.task import Evaluation, Task
from otelai.replay.otel_demo import iter_windows, window_requests

log = logging.getLogger("otelai.models")

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

DATASET = "otel-demo"
LIGHT_SPANS = 500  # light windows hold about 100 spans, heavy ones 1,000 or more
THRESHOLD_GRID = (0.99, 0.995, 0.998, 0.999)
NORMAL_FLAGS = frozenset({"", "none", "baseline"})
PUBLISHED = {"rrcf_roc_auc": 0.75, "rrcf_f1": 0.51}  # the source repository's own comparison


# -- windows ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoWindow:
    """One window as OTLP requests, with its label and content hash."""

    name: str
    split: str  # "train" or "eval" (the folder)
    fault: str  # the flag switched on, "normal" for none
    requests: list[bytes] = field(repr=False)
    digest: str
    spans: int

    @property
    def label(self) -> int:
        return 0 if self.fault == "normal" else 1

    @property
    def light(self) -> bool:
        return self.spans < LIGHT_SPANS


def _fault(name: str, metadata: dict[str, Any]) -> str:
    flag = str(metadata.get("flag") or metadata.get("ground_truth_root_cause") or "").lower()
    if flag in NORMAL_FLAGS or name.endswith("_baseline"):
        return "normal"
    variant = metadata.get("variant")
    return (
        f"{metadata.get('flag')}_{variant}" if variant not in (None, "", "on") else str(metadata.get("flag"))
    )


def load_windows(path: Path, *, progress: bool = False) -> list[DemoWindow]:
    """Every window under ``path`` (``train/`` first), copies dropped by content hash."""
    from tqdm import tqdm

    found: list[DemoWindow] = []
    seen: set[str] = set()
    splits = [s for s in ("train", "eval") if (path / s).is_dir()]
    for split in splits:
        for window in tqdm(list(iter_windows(path / split)), desc=f"read {split}", disable=not progress):
            try:
                requests = window_requests(window)
            except ValueError as exc:
                log.warning("%s; skipping it", exc)
                continue
            digest = hashlib.sha256(b"".join(requests)).hexdigest()
            if digest in seen or not requests:
                continue
            seen.add(digest)
            spans = sum(len(SpanBatch.from_payloads([r], Interner())) for r in requests)
            found.append(
                DemoWindow(window.name, split, _fault(window.name, window.metadata), requests, digest, spans)
            )
    return found


@dataclass(frozen=True)
class Split:
    """Window names per role (see the module docstring)."""

    fit: list[str]
    calibrate: list[str]
    test_normal: list[str]
    tune_fault: list[str]
    test_fault: list[str]


def split_windows(windows: Sequence[DemoWindow], seed: int) -> Split:
    """Deterministic roles for a seed, stratified by light and heavy normal windows."""
    rng = np.random.default_rng(seed)
    fit: list[str] = []
    calibrate: list[str] = []
    test: list[str] = []
    for light in (True, False):
        group = sorted(w.name for w in windows if w.label == 0 and w.light == light)
        group = [group[i] for i in rng.permutation(len(group))]
        n_test = len(group) // 3 if len(group) >= 3 else 0
        n_cal = 1 if len(group) - n_test >= 3 else 0
        test += group[:n_test]
        calibrate += group[n_test : n_test + n_cal]
        fit += group[n_test + n_cal :]
    faults = [w for w in windows if w.label == 1]
    tune = [w.name for w in faults if int(w.digest[:8], 16) % 2 == 0]
    rest = [w.name for w in faults if int(w.digest[:8], 16) % 2 == 1]
    return Split(fit=fit, calibrate=calibrate, test_normal=test, tune_fault=tune, test_fault=rest)


# -- features, as the service computes them ------------------------------------------------------


def window_features(
    window: DemoWindow, interner: Interner, baselines: SpanBaselines
) -> tuple[F32, SpanBatch]:
    """Features of a window's spans read as one batch (updating the baselines, as the service does)."""
    batch = SpanBatch.from_payloads(window.requests, interner)
    features, _ = span_features(batch, baselines, now=0.0)
    return features, batch


def fit_rows(
    windows: Sequence[DemoWindow], interner: Interner, baselines: SpanBaselines, *, passes: int = 2
) -> F32:
    """Feature rows of ``windows`` streamed ``passes`` times through the same baselines.

    The first pass starts cold, as a fresh service does (new operations, global z-scores), the
    later ones see warm baselines: the rows cover both states.
    """
    rows = [window_features(w, interner, baselines)[0] for _ in range(passes) for w in windows]
    return np.concatenate(rows) if rows else np.empty((0, SPAN_SCHEMA.width), dtype=np.float32)


# -- rules: the data README's references ----------------------------------------------------------


def _trace_groups(batch: SpanBatch) -> tuple[npt.NDArray[np.int64], int]:
    _, inverse = np.unique(batch.trace_id, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1).astype(np.int64)
    return inverse, int(inverse.max()) + 1 if len(inverse) else 0


def rule_scores(batch: SpanBatch, interner: Interner, root_p99: dict[str, float]) -> tuple[float, float]:
    """Share of traces with an error span; share whose root is slower than its training p99."""
    trace, n = _trace_groups(batch)
    if n == 0:
        return 0.0, 0.0
    error = np.zeros(n, dtype=bool)
    np.logical_or.at(error, trace, batch.status_code == 2)
    slow = np.zeros(n, dtype=bool)
    for row in np.flatnonzero(batch.is_root).tolist():
        limit = root_p99.get(_op_key(interner, int(batch.operation_id[row])))
        if limit is not None and batch.duration_ns[row] > limit:
            slow[trace[row]] = True
    return float(error.mean()), float(slow.mean())


def _op_key(interner: Interner, operation: int) -> str:
    service, name = interner.operation_name(operation)
    return f"{service}|{name}"


def root_durations(batches: Iterable[tuple[SpanBatch, Interner]]) -> dict[str, float]:
    """Training p99 of the root span duration (ns) of each root operation."""
    durations: dict[str, list[float]] = {}
    for batch, interner in batches:
        for row in np.flatnonzero(batch.is_root).tolist():
            key = _op_key(interner, int(batch.operation_id[row]))
            durations.setdefault(key, []).append(float(batch.duration_ns[row]))
    return {key: float(np.quantile(values, 0.99)) for key, values in durations.items()}


# -- the service path ----------------------------------------------------------------------------

_BUILTIN_KINDS: dict[str, type[AutoencoderDetector] | type[IsolationForestDetector]] = {
    "autoencoder": AutoencoderDetector,
    "isolation_forest": IsolationForestDetector,
}


def bundle_detectors(bundle: Bundle, serving: Serving | None = None) -> list[Detector]:
    """The traces detectors of ``bundle``, through the plugin registry (or the built-ins
    while the entry points are not installed)."""
    serving = serving or Serving()
    model = bundle.signal("traces")
    if model is None:
        return []
    registered = detector_kinds()
    detectors: list[Detector] = []
    for spec in model.detectors:
        if spec.kind in registered:
            detectors.append(load_detector(bundle, spec, serving))
        else:
            detectors.append(_BUILTIN_KINDS[spec.kind].from_spec(bundle, spec, serving))
    return detectors


@dataclass
class WindowResult:
    name: str
    fault: str
    label: int
    spans: int
    traces: int
    score: float  # share of traces tagged anomalous
    rule_error: float
    rule_root_slow: float
    light: bool


class ServicePath:
    """Runs windows through the service's :class:`~otelai.scoring.traces.TraceProcessor` built
    from the bundle as the service builds it (the bundle's detectors beside the streaming
    baselines, calibrated from the bundle's quantiles, its operation baselines), each window
    from that fresh state, and reads the tags back."""

    def __init__(self, bundle: Bundle, *, anomaly_threshold: float | None = None) -> None:
        from otelai.config import Config

        model = bundle.signal("traces")
        if model is None:
            raise ValueError(f"bundle {bundle.path} has no traces models")
        self.model = model
        threshold = model.thresholds.anomaly if anomaly_threshold is None else anomaly_threshold
        self.config = Config.model_validate(
            {
                "selection": {
                    "normal_sample_rate": 1.0,  # forward everything, so every span's tags come back
                    "anomaly_threshold": threshold,
                    "critical_threshold": max(threshold, model.thresholds.critical),
                    "decision_wait": "0s",
                },
            }
        )
        self.bundle = bundle
        self.processor = self._fresh()

    def _fresh(self) -> Any:
        from prometheus_client import CollectorRegistry

        from otelai.scoring.traces import TraceProcessor
        from otelai.telemetry.metrics import Metrics

        return TraceProcessor(self.config, Metrics(CollectorRegistry()), bundle=self.bundle)

    def _reset(self) -> None:
        self.processor.close()
        self.processor = self._fresh()

    def tagged(self, window: DemoWindow) -> tuple[int, int]:
        """(traces, traces with a span tagged anomalous) of one window from the warm state."""
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        from otelai.pipeline import Payload
        from otelai.signals import Signal

        self._reset()
        payloads = [Payload(Signal.TRACES, data, 0) for data in window.requests]
        forwarded = self.processor.process(payloads)
        traces: set[bytes] = set()
        anomalous: set[bytes] = set()
        for payload in forwarded:
            if payload.signal is not Signal.TRACES:
                continue
            request = ExportTraceServiceRequest.FromString(payload.data)
            for resource_spans in request.resource_spans:
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        traces.add(span.trace_id)
                        for attribute in span.attributes:
                            if (
                                attribute.key == "otelai.anomaly.severity"
                                and attribute.value.string_value
                                in (
                                    "anomaly",
                                    "critical",
                                )
                            ):
                                anomalous.add(span.trace_id)
        return len(traces), len(anomalous)

    def close(self) -> None:
        self.processor.close()


def score_windows(
    bundle: Bundle,
    windows: Sequence[DemoWindow],
    *,
    anomaly_threshold: float | None = None,
    progress: bool = False,
) -> list[WindowResult]:
    """Each window's share of anomalous traces through the service path, and the two rules."""
    from tqdm import tqdm

    summary = bundle.manifest.training[0].summary if bundle.manifest.training else {}
    root_p99 = {str(k): float(v) for k, v in summary.get("root_p99_ns", {}).items()}
    path = ServicePath(bundle, anomaly_threshold=anomaly_threshold)
    results = []
    try:
        for window in tqdm(windows, desc="score windows", disable=not progress):
            traces, anomalous = path.tagged(window)
            interner = Interner()
            batch = SpanBatch.from_payloads(window.requests, interner)
            rule_error, rule_slow = rule_scores(batch, interner, root_p99)
            results.append(
                WindowResult(
                    name=window.name,
                    fault=window.fault,
                    label=window.label,
                    spans=window.spans,
                    traces=traces,
                    score=anomalous / traces if traces else 0.0,
                    rule_error=rule_error,
                    rule_root_slow=rule_slow,
                    light=window.light,
                )
            )
    finally:
        path.close()
    return results


def _auc(results: Sequence[WindowResult], attribute: str, *, light_normals: bool = False) -> float:
    chosen = [r for r in results if r.label == 1 or not light_normals or r.light]
    labels = np.array([r.label for r in chosen], dtype=np.int8)
    scores = np.array([getattr(r, attribute) for r in chosen], dtype=np.float64)
    return float(roc_auc(labels, scores))


# -- training -------------------------------------------------------------------------------------


def _by_name(windows: Sequence[DemoWindow], names: Iterable[str]) -> list[DemoWindow]:
    table = {w.name: w for w in windows}
    return [table[n] for n in names]


class OtelDemoTask(Task):
    """Span detectors trained on normal otel-demo windows, evaluated window by window."""

    kind: ClassVar[str] = DATASET

    def __init__(
        self,
        *,
        autoencoder: Any = None,
        forest: Any = None,
        with_forest: bool = False,
        threshold_grid: Sequence[float] = THRESHOLD_GRID,
    ) -> None:
        self.autoencoder_settings = autoencoder
        self.forest_settings = forest
        # The forest's ONNX tree ensemble costs ~30 us a span on ONNX Runtime CPU (benchmarks/
        # traces.py), ten times the whole scoring path's budget: off in the default bundle.
        self.with_forest = with_forest or forest is not None
        self.threshold_grid = tuple(threshold_grid)

    def train(self, path: Path, out: Path, *, seed: int = 0, progress: bool = True) -> Bundle:
        from otelai.models.training.autoencoder import train_autoencoder
        from otelai.models.training.calibration import calibration_of
        from otelai.models.training.isolation_forest import train_isolation_forest

        path, out = Path(path), Path(out)
        windows = load_windows(path, progress=progress)
        split = split_windows(windows, seed)
        if not split.fit:
            raise ValueError(f"otel-demo data at {path}: no normal windows to train on")
        fit = _by_name(windows, split.fit)
        rng = np.random.default_rng(seed)
        fit = [fit[i] for i in rng.permutation(len(fit))]  # light and heavy mixed, as traffic varies
        interner, baselines = Interner(), SpanBaselines.create()
        rows = fit_rows(fit, interner, baselines)
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.iterdir():
            if stale.is_file():
                stale.unlink()
        save_span_baselines(out / BASELINES_FILE, baselines, interner)
        root_p99 = root_durations(
            (SpanBatch.from_payloads(w.requests, i), i) for w in fit for i in [Interner()]
        )

        autoencoder = train_autoencoder(
            rows, settings=self.autoencoder_settings, seed=seed, progress=progress
        )
        (out / "autoencoder.onnx").write_bytes(autoencoder.onnx)

        calibration_rows = self._calibration_rows(_by_name(windows, split.calibrate) or fit, out)
        specs = [
            DetectorSpec(
                name="autoencoder",
                kind="autoencoder",
                file="autoencoder.onnx",
                params=autoencoder.params,
                calibration=calibration_of(autoencoder.score(calibration_rows)),
            ),
        ]
        if self.with_forest:
            forest = train_isolation_forest(rows, settings=self.forest_settings, seed=seed)
            (out / "isolation_forest.onnx").write_bytes(forest.onnx)
            specs.append(
                DetectorSpec(
                    name="isolation_forest",
                    kind="isolation_forest",
                    file="isolation_forest.onnx",
                    params=forest.params,
                    calibration=calibration_of(forest.score(calibration_rows)),
                )
            )
        training = Training(
            dataset=DATASET,
            path=str(path),
            items=len(rows),
            parts=split.fit + split.calibrate,
            seed=seed,
            command=f"otelai train --dataset {DATASET} --path {path} --seed {seed}",
            summary={
                "fit_windows": split.fit,
                "calibration_windows": split.calibrate,
                "test_normal_windows": split.test_normal,
                "tune_fault_windows": split.tune_fault,
                "trained_digests": [w.digest for w in windows if w.name in set(split.fit + split.calibrate)],
                "tune_digests": [w.digest for w in windows if w.name in set(split.tune_fault)],
                "calibration_spans": len(calibration_rows),
                "root_p99_ns": root_p99,
            },
        )
        manifest = Manifest(
            name="otelai-traces",
            version=f"otel-demo-{SPAN_SCHEMA.version}-seed{seed}",
            signals={
                "traces": SignalModel(
                    feature_schema=SchemaSpec.of("spans", SPAN_SCHEMA),
                    detectors=specs,
                    calibration=Calibration(),
                )
            },
            training=[training],
        )
        bundle = save_bundle(out, manifest)
        tune = _by_name(windows, split.tune_fault) + _by_name(windows, split.calibrate)
        threshold, tuned = self._tune(bundle, tune, progress=progress)
        final = manifest.model_copy(
            update={
                "signals": {
                    "traces": manifest.signals["traces"].model_copy(
                        update={"thresholds": Thresholds(anomaly=threshold, critical=max(threshold, 0.9995))}
                    )
                },
                "metrics": {DATASET: {"tune_roc_auc": tuned}},
            }
        )
        return save_bundle(out, final)

    @staticmethod
    def _calibration_rows(windows: Sequence[DemoWindow], out: Path) -> F32:
        """Rows of held-out normal windows, each from the warm training state (as evaluated)."""
        rows = []
        for window in windows:
            interner, baselines = Interner(), SpanBaselines.create()
            load_span_baselines(out / BASELINES_FILE, baselines, interner)
            rows.append(window_features(window, interner, baselines)[0])
        return np.concatenate(rows)

    def _tune(self, bundle: Bundle, windows: Sequence[DemoWindow], *, progress: bool) -> tuple[float, float]:
        """The anomaly threshold of the grid with the best window AUC on the tuning windows."""
        default = bundle.manifest.signals["traces"].thresholds.anomaly
        labels = {w.label for w in windows}
        if labels != {0, 1}:
            return default, float("nan")
        best, best_auc = default, -1.0
        for threshold in self.threshold_grid:
            results = score_windows(bundle, windows, anomaly_threshold=threshold, progress=progress)
            auc = _auc(results, "score")
            log.info("otel-demo: threshold %s tunes to window AUC %.3f", threshold, auc)
            if auc > best_auc + 1e-9:
                best, best_auc = threshold, auc
        return best, best_auc

    # -- evaluation ---------------------------------------------------------------------------

    def evaluate(self, bundle: Bundle, path: Path, *, progress: bool = True) -> Evaluation:
        windows = load_windows(Path(path), progress=progress)
        summary = bundle.manifest.training[0].summary if bundle.manifest.training else {}
        excluded = set(summary.get("trained_digests", [])) | set(summary.get("tune_digests", []))
        test = [w for w in windows if w.digest not in excluded]
        results = score_windows(bundle, test, progress=progress)
        labels = np.array([r.label for r in results], dtype=np.int8)
        scores = np.array([r.score for r in results], dtype=np.float64)
        metrics = {
            "roc_auc": _auc(results, "score"),
            "roc_auc_vs_light_normals": _auc(results, "score", light_normals=True),
            "pr_auc": float(pr_auc(labels, scores)),
            "windows": float(len(results)),
            "normal_windows": float(int((labels == 0).sum())),
            "fault_windows": float(int((labels == 1).sum())),
        }
        references = {
            "rule_error_span_roc_auc": _auc(results, "rule_error"),
            "rule_root_slower_than_p99_roc_auc": _auc(results, "rule_root_slow"),
            "rule_error_span_roc_auc_vs_light_normals": _auc(results, "rule_error", light_normals=True),
            "rule_root_slower_than_p99_roc_auc_vs_light_normals": _auc(
                results, "rule_root_slow", light_normals=True
            ),
            **PUBLISHED,
        }
        rows = [
            {
                "window": r.name,
                "fault": r.fault,
                "label": r.label,
                "spans": r.spans,
                "traces": r.traces,
                "score": round(r.score, 4),
                "rule_error_span": round(r.rule_error, 4),
                "rule_root_slow": round(r.rule_root_slow, 4),
            }
            for r in results
        ]
        notes = [
            "window score = share of traces with a span tagged anomaly/critical by the TraceProcessor",
            f"test windows exclude the {len(excluded)} windows trained, calibrated or tuned on (by content hash)",
            f"anomaly threshold {bundle.manifest.signals['traces'].thresholds.anomaly}",
            json.dumps(_per_fault(results)),
        ]
        return Evaluation(
            dataset=DATASET,
            unit="window",
            metrics=metrics,
            scores=scores,
            labels=labels,
            references=references,
            rows=rows,
            notes=notes,
        )


def _per_fault(results: Sequence[WindowResult]) -> dict[str, float]:
    """Mean window score per fault type (and of the normal windows)."""
    groups: dict[str, list[float]] = {}
    for r in results:
        groups.setdefault(r.fault, []).append(r.score)
    return {fault: round(float(np.mean(v)), 4) for fault, v in sorted(groups.items())}
