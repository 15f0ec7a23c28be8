"""Server metric tasks: ASD (labeled test part) and SMD (training halves only, unlabeled).

Both train one windowed autoencoder over all of a server's metrics
(:mod:`otelai.models.training.multivariate`, after USAD, KDD 2020), shared by the servers of
the data set, with a per-server calibration from held-out normal data (the last
``validation`` share of each server's training rows) and a fallback calibration (``*``) pooled
over all servers for a server the bundle has never seen. Beside it, per server (and ``*``), a
seasonal residual detector (:mod:`otelai.detectors.seasonal`: each metric against its median at
the same time of day over the last days, a robust seasonal naive baseline after Hyndman &
Athanasopoulos, *Forecasting: Principles and Practice*), combined with the autoencoder by the
geometric mean of the threshold-normalised scores and thresholded again on held-out data
(:mod:`otelai.scoring.combine`, the code path the service scores with). Labels are never used
in training.

- ASD (InterFusion, KDD 2021): train on ``train/``, evaluate on ``test/`` against
  ``test_label/``, per point. The primary numbers are precision / recall / F1 at the threshold
  the bundle ships (chosen on training data only), with and without point adjustment
  (Xu et al., WWW 2018); best-F1 over all thresholds (OmniAnomaly's protocol, optimistic: it
  picks the threshold with the test labels) is reported beside them. Scores are pooled over
  servers after dividing each by its server's threshold, so ``1.0`` is the shipped threshold.
- SMD (OmniAnomaly, KDD 2019): only the unlabeled training halves are here, so the task trains
  on the first ``train_share`` of each machine and evaluates on the rest as a sanity check:
  the share of steps over the threshold (a false-alarm rate if those steps are normal, as the
  data set's authors say they mostly are) and score quantiles; no F1.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from otelai.backends.select import load_backend
from otelai.detectors.base import top_features
from otelai.detectors.multivariate import ANY_RESOURCE, KIND, MultivariateAutoencoder
from otelai.detectors.registry import Serving, detector_kinds, load_detector
from otelai.detectors.seasonal import KIND as SEASONAL_KIND
from otelai.detectors.seasonal import period_of
from otelai.models.bundle import (
    Bundle,
    BundleError,
    DetectorSpec,
    Manifest,
    SchemaSpec,
    SignalModel,
    SignalName,
    Thresholds,
    Training,
    save_bundle,
)
from otelai.models.evaluation.metrics import score_metrics, segments
from otelai.models.task import Evaluation, Task, Timeline
from otelai.models.training.calibration import calibration_of
from otelai.models.training.multivariate import (
    ResourceCalibration,
    WindowAutoencoderSettings,
    calibrate_resource,
    train_window_autoencoder,
)
from otelai.models.training.seasonal import (
    Residuals,
    SeasonalCalibration,
    SeasonalSettings,
    calibrate_seasonal,
    training_residuals,
)
from otelai.replay.server_metrics import ASD, SMD, Layout, metric_names, read_matrix, server_files
from otelai.scoring.combine import ResourceScorer, pick_specs, seasonal_part, spec_tables

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]

MODEL_FILE = "multivariate_ae.onnx"
SIGNAL: SignalName = "metrics"
CHUNK = 256  # rows scored per call, as the service would see consecutive batches
# ECDF points per detector: one spec per server, so the default 2049 would bloat the manifest
CALIBRATION_POINTS = 257


@dataclass(frozen=True, slots=True)
class _Scored:
    score: F64  # raw, combined
    top: npt.NDArray[np.int64]
    threshold: float
    ae: F64  # the autoencoder alone, for comparison
    ae_threshold: float


def _chunks(rows: F64) -> Iterator[F64]:
    for first in range(0, len(rows), CHUNK):
        yield rows[first : first + CHUNK]


def _detector(bundle: Bundle, spec: DetectorSpec, serving: Serving) -> MultivariateAutoencoder:
    # Through the plugin registry once the entry point is installed, as the service loads it.
    detector = (
        load_detector(bundle, spec, serving)
        if spec.kind in detector_kinds()
        else MultivariateAutoencoder.from_spec(bundle, spec, serving)
    )
    if not isinstance(detector, MultivariateAutoencoder):
        raise BundleError(f"bundle {bundle.path}: detector {spec.name!r} is not a {KIND} detector")
    return detector


def _score(scorer: ResourceScorer, rows: F64, context: F64 | None = None) -> _Scored:
    """Rows scored in consecutive chunks after ``context``, as the service scores a stream."""
    scorer.reset()
    if context is not None and len(context):
        scorer.prime(context)
    scores, tops, ae = [], [], []
    for chunk in _chunks(rows):
        scored = scorer.score_many(chunk)
        scores.append(scored.raw)
        tops.append(top_features(scored.contribution.astype(np.float32), 3))
        ae.append(scored.ae)
    return _Scored(
        np.concatenate(scores),
        np.concatenate(tops),
        scorer.threshold,
        np.concatenate(ae),
        float(scorer.autoencoder.threshold),
    )


class ServerMetricsTask(Task):
    """Shared training for ASD and SMD; subclasses say which data set and how it is split.

    Parameters
    ----------
    settings
        Network, training and calibration settings.
    validation
        Share of each server's training rows held out (the last ones) to calibrate on.
    serving
        Backends used to calibrate and evaluate, as the service would use them.
    seasonal
        Settings of the seasonal residual detector; None trains the autoencoder alone.
    """

    layout: ClassVar[Layout]
    reference: ClassVar[dict[str, float]] = {}

    def __init__(
        self,
        *,
        settings: WindowAutoencoderSettings | None = None,
        validation: float = 0.2,
        serving: Serving | None = None,
        seasonal: SeasonalSettings | None = SeasonalSettings(),  # noqa: B008 (frozen, shared safely)
    ) -> None:
        if not 0.0 < validation < 1.0:
            raise ValueError(f"validation must be between 0 and 1, got {validation}")
        self.settings = settings or WindowAutoencoderSettings()
        self.validation = validation
        self.serving = serving or Serving()
        self.seasonal = seasonal

    # -- data ----------------------------------------------------------------------------------

    def training_rows(self, path: Path) -> dict[str, F64]:
        """Server -> the rows this task trains (and calibrates) on."""
        files = server_files(Path(path) / "train")
        if not files:
            raise FileNotFoundError(f"{self.layout.dataset}: no server files in {Path(path) / 'train'}")
        return {name: read_matrix(file) for name, file in files.items()}

    # -- training ------------------------------------------------------------------------------

    def train(self, path: Path, out: Path, *, seed: int = 0, progress: bool = True) -> Bundle:
        servers = self.training_rows(path)
        widths = {matrix.shape[1] for matrix in servers.values()}
        if len(widths) != 1:
            raise ValueError(f"{self.layout.dataset}: servers have different numbers of metrics {widths}")
        width = widths.pop()
        cuts = {name: max(1, round(len(m) * (1.0 - self.validation))) for name, m in servers.items()}
        fit_parts = [servers[name][: cuts[name]] for name in servers]
        trained = train_window_autoencoder(fit_parts, self.settings, seed=seed, progress=progress)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / MODEL_FILE).write_bytes(trained.onnx)
        backend = load_backend(
            self.serving.backend_order,
            trained.onnx,
            options=self.serving.backend_options,
            on_fallback=self.serving.on_fallback,
        )
        unit = MultivariateAutoencoder(
            backend=backend, window=self.settings.window, n_features=width, weights=np.ones(width)
        )
        held_out: dict[str, F32] = {}
        try:
            for name, matrix in tqdm(servers.items(), desc="calibrate", disable=not progress):
                unit.reset()
                errors = np.concatenate([unit.errors_many(c.astype(np.float32)) for c in _chunks(matrix)])
                held_out[name] = errors[cuts[name] :] if cuts[name] < len(matrix) else errors
        finally:
            unit.close()
        calibrations = {name: calibrate_resource(errors, self.settings) for name, errors in held_out.items()}
        calibrations[ANY_RESOURCE] = calibrate_resource(
            np.concatenate(list(held_out.values())), self.settings
        )
        specs = [self._spec(name, calibration, width) for name, calibration in calibrations.items()]
        pooled = specs[-1]
        if self.seasonal is not None:
            specs += self._seasonal_specs(servers, cuts, calibrations, width, self.seasonal, progress)
        # the signal's calibration is the pooled one of what is served: the combination if any
        pooled = next(
            (s for s in specs if s.kind == SEASONAL_KIND and s.params["resource"] == ANY_RESOURCE), pooled
        )
        manifest = Manifest(
            name=f"{self.layout.dataset}-multivariate",
            version=f"{self.layout.dataset}-mvae-seed{seed}",
            signals={
                SIGNAL: SignalModel(
                    feature_schema=SchemaSpec(
                        name=f"{self.layout.dataset}-server-metrics",
                        version=f"{self.layout.dataset}/{width}/1",
                        columns=list(metric_names(self.layout.dataset, width)),
                    ),
                    detectors=specs,
                    calibration=pooled.calibration,
                    thresholds=Thresholds(anomaly=self.settings.quantile),
                )
            },
            training=[
                Training(
                    dataset=self.layout.dataset,
                    path=str(path),
                    items=sum(cuts.values()),
                    parts=list(servers),
                    seed=seed,
                    command=f"otelai train --dataset {self.layout.dataset} --path {path} --seed {seed}",
                    summary={
                        "fit_rows": sum(cuts.values()),
                        "held_out_rows": sum(len(e) for e in held_out.values()),
                        "final_loss": trained.final_loss,
                        "settings": {k: getattr(self.settings, k) for k in self.settings.__slots__},
                        "validation": self.validation,
                        "seasonal": None
                        if self.seasonal is None
                        else {
                            "period": period_of(self.layout.step_seconds),
                            **{k: getattr(self.seasonal, k) for k in self.seasonal.__slots__},
                        },
                    },
                )
            ],
        )
        return save_bundle(out, manifest)

    def _spec(self, resource: str, calibration: ResourceCalibration, width: int) -> DetectorSpec:
        return DetectorSpec(
            name=resource,
            kind=KIND,
            file=MODEL_FILE,
            params={
                "resource": resource,
                "window": self.settings.window,
                "n_features": width,
                "weights": [float(w) for w in calibration.weights],
                "threshold": calibration.threshold,
            },
            calibration=calibration_of(calibration.scores, CALIBRATION_POINTS),
        )

    def _seasonal_specs(
        self,
        servers: dict[str, F64],
        cuts: dict[str, int],
        calibrations: dict[str, ResourceCalibration],
        width: int,
        settings: SeasonalSettings,
        progress: bool,
    ) -> list[DetectorSpec]:
        """A seasonal spec per server with a ready fit row, and the pooled ``*`` one."""
        period = period_of(self.layout.step_seconds)
        residuals: dict[str, Residuals] = {
            name: training_residuals(matrix, cuts[name], period, settings)
            for name, matrix in tqdm(servers.items(), desc="seasonal", disable=not progress)
        }
        specs = []
        for name, part in residuals.items():
            own = calibrations[name]
            fitted = calibrate_seasonal([part], own.scores, own.threshold, settings)
            if fitted is not None:
                specs.append(self._seasonal_spec(name, fitted, width, period, settings))
        pool = calibrations[ANY_RESOURCE]  # its scores: every server's held-out rows, in order
        fitted = calibrate_seasonal(list(residuals.values()), pool.scores, pool.threshold, settings)
        if fitted is not None:
            specs.append(self._seasonal_spec(ANY_RESOURCE, fitted, width, period, settings))
        return specs

    @staticmethod
    def _seasonal_spec(
        resource: str, fitted: SeasonalCalibration, width: int, period: int, settings: SeasonalSettings
    ) -> DetectorSpec:
        combination = fitted.combination
        return DetectorSpec(
            name=f"{resource}/{SEASONAL_KIND}",
            kind=SEASONAL_KIND,
            params={
                "resource": resource,
                "n_features": width,
                "period": period,
                "days": settings.days,
                "clip": settings.clip,
                "mu": [float(v) for v in fitted.mu],
                "sigma": [float(v) for v in fitted.sigma],
                # the combination (otelai.scoring.combine): each part's normaliser, and the
                # combined threshold its calibration is pinned at
                "ae_threshold": combination.ae_threshold,
                "score_threshold": combination.seasonal_threshold,
                "threshold": combination.threshold,
            },
            calibration=calibration_of(fitted.scores, CALIBRATION_POINTS),
        )

    # -- evaluation ----------------------------------------------------------------------------

    def _specs(self, bundle: Bundle) -> tuple[dict[str, DetectorSpec], dict[str, DetectorSpec]]:
        model = bundle.signal(SIGNAL)
        if model is None:
            raise BundleError(f"bundle {bundle.path}: no {SIGNAL} models")
        specs = spec_tables(model.detectors)
        if not specs[0]:
            raise BundleError(f"bundle {bundle.path}: no {KIND} detector")
        return specs

    def _score_server(
        self,
        bundle: Bundle,
        specs: tuple[dict[str, DetectorSpec], dict[str, DetectorSpec]],
        name: str,
        rows: F64,
        context: F64 | None,
    ) -> tuple[_Scored, str]:
        picked = pick_specs(*specs, name)
        if picked is None:
            raise BundleError(f"bundle {bundle.path}: no calibration for {name!r} and no '*' fallback")
        scorer = ResourceScorer(_detector(bundle, picked.autoencoder, self.serving))
        try:
            if picked.seasonal is not None:
                seasonal, combination = seasonal_part(bundle, picked.seasonal, self.serving)
                scorer = ResourceScorer(scorer.autoencoder, seasonal, combination)
            return _score(scorer, rows, context), picked.resource
        finally:
            scorer.close()


def _interpretation(path: Path) -> list[tuple[int, int, set[int]]]:
    """InterFusion's interpretation labels: ``start-end:dims`` (rows inclusive, metrics 1-based)."""
    if not path.is_file():
        return []
    out = []
    text = read_text(path)
    for line in text.splitlines():
        match = re.match(r"^\s*(\d+)-(\d+):([\d,\s]+)$", line)
        if match:
            dims = {int(d) - 1 for d in match[3].split(",") if d.strip()}
            out.append((int(match[1]), int(match[2]), dims))
    return out


def read_text(path: Path) -> str:
    if path.name.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8") as stream:
            return stream.read()
    return path.read_text(encoding="utf-8")


def _hit_rate(
    scored: _Scored, labels: npt.NDArray[np.int8], spans: list[tuple[int, int, set[int]]]
) -> tuple[int, int]:
    """Detected anomalous steps whose top-3 metrics include a labelled one: (hits, detected)."""
    hits = detected = 0
    flagged = scored.score >= scored.threshold
    for start, end, dims in spans:
        for step in range(start, min(end + 1, len(labels))):
            if flagged[step] and labels[step]:
                detected += 1
                hits += bool(dims.intersection(scored.top[step].tolist()))
    return hits, detected


@dataclass
class _Pool:
    scores: list[F64] = field(default_factory=list)
    labels: list[npt.NDArray[np.int8]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    timelines: list[Timeline] = field(default_factory=list)


def _rounded(metrics: dict[str, float], keys: tuple[str, ...]) -> dict[str, float]:
    return {key: round(float(metrics[key]), 4) for key in keys if key in metrics}


_ROW_KEYS = ("f1", "f1_pa", "precision", "recall", "best_f1", "best_f1_pa", "roc_auc")


class AsdTask(ServerMetricsTask):
    """ASD: train on ``train/``, evaluate per point on ``test/`` against ``test_label/``."""

    kind: ClassVar[str] = "asd"
    layout: ClassVar[Layout] = ASD
    # InterFusion (KDD 2021) on ASD, best F1 with point adjustment, as the issue cites it.
    reference: ClassVar[dict[str, float]] = {"InterFusion best_f1_pa": 0.95}

    def evaluate(self, bundle: Bundle, path: Path, *, progress: bool = True) -> Evaluation:
        path = Path(path)
        specs = self._specs(bundle)
        tests = server_files(path / "test")
        trains = server_files(path / "train")
        label_files = server_files(path / "test_label")
        if not tests:
            raise FileNotFoundError(f"asd: no server files in {path / 'test'}")
        pool, alone = _Pool(), _Pool()
        hits = detected = 0
        for name, file in tqdm(tests.items(), desc="evaluate asd", disable=not progress):
            if name not in label_files:
                raise FileNotFoundError(f"asd: {name} has no labels in {path / 'test_label'}")
            rows = read_matrix(file)
            labels = (read_matrix(label_files[name])[:, 0] > 0).astype(np.int8)
            if len(labels) != len(rows):
                raise ValueError(f"asd: {name}: {len(rows)} rows but {len(labels)} labels")
            # a server's test rows follow its training rows (as `otelai replay` sends them), so
            # both detectors continue from them: the seasonal one needs the past days
            context = read_matrix(trains[name]) if name in trains else None
            scored, used = self._score_server(bundle, specs, name, rows, context)
            normalised = scored.score / scored.threshold
            metrics = score_metrics(labels, normalised, threshold=1.0, adjust=True)
            alone.scores.append(scored.ae / scored.ae_threshold)
            h, d = _hit_rate(scored, labels, _interpretation(_label_path(path, name)))
            hits, detected = hits + h, detected + d
            pool.scores.append(normalised)
            pool.labels.append(labels)
            pool.rows.append(
                {
                    "server": name,
                    "calibration": used,
                    "steps": len(rows),
                    "anomalous": int(labels.sum()),
                    "segments": len(segments(labels)),
                    "threshold": scored.threshold,
                    **_rounded(metrics, _ROW_KEYS),
                }
            )
            time = np.arange(len(rows), dtype=np.float64)
            pool.timelines.append(Timeline(name, time, normalised, labels, 1.0))
        scores, labels = np.concatenate(pool.scores), np.concatenate(pool.labels)
        metrics = score_metrics(labels, scores, threshold=1.0, adjust=True)
        for key in ("f1", "f1_pa", "best_f1", "best_f1_pa"):
            metrics[f"server_mean_{key}"] = float(np.mean([row[key] for row in pool.rows]))
        metrics["false_alarm_rate"] = float(np.mean(scores[labels == 0] >= 1.0))
        metrics.update(_ae_only(np.concatenate(alone.scores), labels))
        if detected:
            metrics["interpretation_hit_at_3"] = hits / detected
        return Evaluation(
            dataset="asd",
            unit="point",
            metrics=metrics,
            scores=scores,
            labels=labels,
            references=dict(self.reference),
            rows=pool.rows,
            timelines=pool.timelines,
            notes=[
                "Scores are each server's raw score divided by its shipped threshold "
                f"(quantile {self.settings.quantile} of held-out training rows): 1.0 = the threshold.",
                "f1 / f1_pa: at the shipped threshold (primary); best_f1 / best_f1_pa: best over "
                "all thresholds, chosen with the test labels (optimistic, for comparison only).",
                "_pa: point-adjusted (Xu et al., WWW 2018), as InterFusion reports; metrics pooled "
                "over all servers' points; server_mean_* average the per-server rows.",
                "interpretation_hit_at_3: detected anomalous steps whose top-3 metrics include one "
                "of the metrics InterFusion's interpretation labels name.",
                "The score is the autoencoder combined with the seasonal residual detector where the "
                "bundle has one (geometric mean of the threshold-normalised scores, thresholded again "
                "on held-out rows); *_ae_only: the autoencoder alone at its own threshold, same run.",
                "Each server's test rows are scored after its training rows (the detectors' context).",
            ],
        )


def _ae_only(scores: F64, labels: npt.NDArray[np.int8]) -> dict[str, float]:
    """The autoencoder alone (scores over its own threshold), under ``*_ae_only`` keys."""
    metrics = score_metrics(labels, scores, threshold=1.0, adjust=True)
    metrics["false_alarm_rate"] = float(np.mean(scores[labels == 0] >= 1.0))
    keys = ("f1", "f1_pa", "precision", "recall", "best_f1", "best_f1_pa", "roc_auc", "false_alarm_rate")
    return {f"{key}_ae_only": float(metrics[key]) for key in keys}


def _label_path(path: Path, name: str) -> Path:
    folder = path / "interpretation_label"
    return folder / f"{name}.txt.gz" if (folder / f"{name}.txt.gz").is_file() else folder / f"{name}.txt"


class SmdTask(ServerMetricsTask):
    """SMD: train on the first ``train_share`` of each machine; check the rest (no labels).

    Parameters
    ----------
    train_share
        Share of each machine's rows (the first ones) used for training and calibration.
    """

    kind: ClassVar[str] = "smd"
    layout: ClassVar[Layout] = SMD

    def __init__(self, *, train_share: float = 0.7, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not 0.0 < train_share < 1.0:
            raise ValueError(f"train_share must be between 0 and 1, got {train_share}")
        self.train_share = train_share

    def _cut(self, rows: F64) -> int:
        return max(1, round(len(rows) * self.train_share))

    def training_rows(self, path: Path) -> dict[str, F64]:
        return {name: rows[: self._cut(rows)] for name, rows in super().training_rows(path).items()}

    def evaluate(self, bundle: Bundle, path: Path, *, progress: bool = True) -> Evaluation:
        specs = self._specs(bundle)
        files = server_files(Path(path) / "train")
        if not files:
            raise FileNotFoundError(f"smd: no server files in {Path(path) / 'train'}")
        pool, alone = _Pool(), _Pool()
        for name, file in tqdm(files.items(), desc="evaluate smd", disable=not progress):
            rows = read_matrix(file)
            cut = self._cut(rows)
            scored, used = self._score_server(bundle, specs, name, rows[cut:], rows[:cut])
            normalised = scored.score / scored.threshold
            alone.scores.append(scored.ae / scored.ae_threshold)
            zeros = np.zeros(len(normalised), dtype=np.int8)
            pool.scores.append(normalised)
            pool.labels.append(zeros)
            pool.rows.append(
                {
                    "server": name,
                    "calibration": used,
                    "steps": len(normalised),
                    "alarm_rate": round(float(np.mean(normalised >= 1.0)), 4),
                    "alarm_rate_ae_only": round(float(np.mean(alone.scores[-1] >= 1.0)), 4),
                    "median_score": round(float(np.median(normalised)), 4),
                    "p99_score": round(float(np.quantile(normalised, 0.99)), 4),
                }
            )
            time = np.arange(cut, len(rows), dtype=np.float64)
            pool.timelines.append(Timeline(name, time, normalised, zeros, 1.0))
        scores = np.concatenate(pool.scores)
        metrics = {
            "alarm_rate": float(np.mean(scores >= 1.0)),
            "alarm_rate_ae_only": float(np.mean(np.concatenate(alone.scores) >= 1.0)),
            "expected_alarm_rate": 1.0 - self.settings.quantile,
            "median_score": float(np.median(scores)),
            "p99_score": float(np.quantile(scores, 0.99)),
            "machines_alarm_rate_over_5pct": float(sum(row["alarm_rate"] > 0.05 for row in pool.rows)),
        }
        return Evaluation(
            dataset="smd",
            unit="point",
            metrics=metrics,
            scores=scores,
            labels=np.concatenate(pool.labels),
            rows=pool.rows,
            timelines=pool.timelines,
            notes=[
                "SMD's training halves carry no labels: no F1 is computed. The bundle trains on the "
                f"first {self.train_share:.0%} of each machine and these numbers are its scores on "
                "the rest, later in time and unseen.",
                "alarm_rate: share of steps at or over the shipped threshold; on normal data it "
                f"should be near {1.0 - self.settings.quantile:.3g} (the calibration quantile); "
                "the source says these halves are mostly, not all, normal.",
                "Scores are each machine's raw score divided by its shipped threshold; "
                "alarm_rate_ae_only: the autoencoder alone at its own threshold, same run.",
            ],
        )
