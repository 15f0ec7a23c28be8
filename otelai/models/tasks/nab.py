"""The Numenta Anomaly Benchmark task: streaming novelty over every series, scored by NAB.

Lavin & Ahmad, "Evaluating Real-time Anomaly Detection Algorithms -- the Numenta Anomaly
Benchmark" (ICMLA 2015). NAB is an online benchmark: there is no training set; each series is
streamed once and its first 15 % is the probationary period, which is not scored. So the
detector (:class:`~otelai.detectors.novelty.NoveltyDetector`) learns as it scores, and what
``train`` fits is only its alarm threshold: swept NAB's way (the best total NAB score) over
half of the series (every other series of each group, by name). ``evaluate`` streams every
series through the service's own path (OTLP gauge requests from :mod:`otelai.replay.nab`,
the metric feature extractor, the bundle's detector) and reports

- ``nab_standard`` (and the two other profiles): the published protocol, one threshold per
  profile swept over the whole corpus; comparable with ``final_results.json``;
- ``nab_standard_heldout``: the bundle's fixed threshold on the other half of the series
  (never seen while choosing it);
- window-level precision and recall at the swept standard threshold.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from otelai.detectors.novelty import NoveltyDetector
from otelai.detectors.registry import Serving, detector_kinds, load_detector
from otelai.features.metrics import MetricBatch, SeriesState, metric_features
from otelai.models.bundle import (
    Bundle,
    DetectorSpec,
    Manifest,
    SchemaSpec,
    SignalModel,
    Thresholds,
    Training,
    save_bundle,
)
from otelai.models.evaluation.nab_score import PROFILES, LabeledSeries, NabResult, nab_score
from otelai.models.task import Evaluation, Task, Timeline
from otelai.models.training.calibration import calibration_of
from otelai.replay.nab import read_series, read_windows, series_batches, series_keys
from otelai.scoring.metrics import SCHEMA, with_abs_zscore

F64 = npt.NDArray[np.float64]

DETECTOR_KIND = "novelty"
RESULTS = "final_results.json"
TIMELINES = 4
# Detectors the service's metrics scorer combines with a NAB bundle: the streaming surprise
# detector over |z| and the bundle's novelty detector (otelai.scoring.detection).
SERVED_DETECTORS = 2


def split_series(keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """Every other series of each group (by name) to tune on, the rest held out."""
    tune: list[str] = []
    held: list[str] = []
    by_group: dict[str, list[str]] = {}
    for key in sorted(keys):
        by_group.setdefault(key.partition("/")[0], []).append(key)
    for members in by_group.values():
        tune.extend(members[0::2])
        held.extend(members[1::2])
    return tune, held


def served_threshold(scores: F64, threshold: float, detectors: int = SERVED_DETECTORS) -> float:
    """The alarm threshold on the novelty detector's raw score, in the service's calibrated units.

    The service calibrates a raw score by its ECDF over the bundle's quantiles of ``scores``
    (``c``) and combines ``detectors`` detectors by the Bonferroni rule, ``1 - k (1 - c)``
    (:mod:`otelai.scoring.scorer`). A point NAB's evaluation calls an alarm (raw score at least
    ``threshold``) has ``c`` at least the share of ``scores`` below ``threshold``, so at the
    value returned it is an anomaly in the service too (up to the drift of the online ECDF).
    """
    if not scores.size:
        return Thresholds().anomaly
    below = float(np.mean(scores < threshold))
    return float(min(1.0, max(0.0, 1.0 - detectors * (1.0 - below))))


def stream_series(detector: NoveltyDetector, path: Path, key: str) -> F64:
    """Scores of one series, sent through the service's path point by point in time order."""
    series = read_series(path, key)
    state = SeriesState()
    scores = []
    for batch in series_batches(series):
        points = MetricBatch.from_payloads([batch.data], state.containers)
        features = with_abs_zscore(metric_features(points, state)[0])
        scores.append(detector.score_series(points.series, features).astype(np.float64))
    return np.concatenate(scores) if scores else np.zeros(0)


def _labeled(
    detector: NoveltyDetector, path: Path, keys: Iterable[str], progress: bool
) -> list[LabeledSeries]:
    from otelai.models.evaluation.nab_score import window_rows

    windows = read_windows(path)
    out = []
    for key in tqdm(list(keys), desc="nab series", unit=" series", file=sys.stderr, disable=not progress):
        scores = stream_series(detector, path, key)
        rows = window_rows(read_series(path, key).time, windows.get(key, []))
        out.append(LabeledSeries(key, scores, rows))
    return out


def _detector(bundle: Bundle) -> tuple[NoveltyDetector, DetectorSpec]:
    model = bundle.signal("metrics")
    if model is None or not model.detectors:
        raise ValueError(f"bundle {bundle.path} has no metrics detector")
    spec = model.detectors[0]
    # Through the plugin registry when the kind is installed; the class itself otherwise.
    if spec.kind in detector_kinds():
        detector = load_detector(bundle, spec, Serving())
    else:
        detector = NoveltyDetector.from_spec(bundle, spec, Serving())
    if not isinstance(detector, NoveltyDetector):
        raise ValueError(f"bundle {bundle.path}: detector kind {spec.kind!r} cannot score NAB series")
    return detector, spec


class NabTask(Task):
    """Train (choose the alarm threshold) and evaluate the novelty detector on NAB."""

    kind = "nab"

    def train(self, path: Path, out: Path, *, seed: int = 0, progress: bool = True) -> Bundle:
        keys = series_keys(path)
        tune, _ = split_series(keys)
        detector = NoveltyDetector(SCHEMA.names)
        corpus = _labeled(detector, path, tune, progress)
        result = nab_score(corpus)
        scored = np.concatenate([s.scores[s.scored_from :] for s in corpus]) if corpus else np.zeros(0)
        spec = DetectorSpec(
            name="nab-novelty",
            kind=DETECTOR_KIND,
            params={**detector.params, "threshold": result.threshold},
            calibration=calibration_of(scored),
        )
        anomaly = served_threshold(scored, result.threshold)
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        manifest = Manifest(
            name="nab-novelty",
            version="1",
            signals={
                "metrics": SignalModel(
                    feature_schema=SchemaSpec.of("metrics", SCHEMA),
                    detectors=[spec],
                    thresholds=Thresholds(anomaly=anomaly, critical=max(anomaly, Thresholds().critical)),
                )
            },
            training=[
                Training(
                    dataset=self.kind,
                    path=str(path),
                    items=int(sum(len(s.scores) for s in corpus)),
                    parts=tune,
                    seed=seed,
                    command=f"otelai train --dataset nab --path {path} --out {out}",
                    summary={"threshold": result.threshold, "tune_nab_standard": result.score},
                )
            ],
            metrics={self.kind: {"tune_nab_standard": result.score}},
        )
        return save_bundle(out, manifest)

    def evaluate(self, bundle: Bundle, path: Path, *, progress: bool = True) -> Evaluation:
        detector, spec = _detector(bundle)
        keys = series_keys(path)
        corpus = _labeled(detector, path, keys, progress)
        metrics: dict[str, float] = {}
        results: dict[str, NabResult] = {}
        for profile in PROFILES:
            results[profile] = nab_score(corpus, profile)
            metrics[f"nab_{profile}"] = results[profile].score
        standard = results["standard"]
        metrics |= {
            "nab_threshold": standard.threshold,
            "window_precision": standard.window_precision,
            "window_recall": standard.window_recall,
            "windows_detected": float(standard.detected_windows),
            "windows": float(standard.windows),
            "false_alarms": float(standard.false_alarms),
        }
        _, held = split_series(keys)
        fixed = spec.params.get("threshold")
        held_corpus = [series for series in corpus if series.name in set(held)]
        if fixed is not None and held_corpus:
            heldout = nab_score(held_corpus, threshold=float(fixed))
            metrics |= {
                "nab_standard_heldout": heldout.score,
                "heldout_window_precision": heldout.window_precision,
                "heldout_window_recall": heldout.window_recall,
            }
        return Evaluation(
            dataset=self.kind,
            unit="point",
            metrics=metrics,
            scores=np.concatenate([s.scores[s.scored_from :] for s in corpus]) if corpus else np.zeros(0),
            labels=np.concatenate([_labels(s)[s.scored_from :] for s in corpus])
            if corpus
            else np.zeros(0, np.int8),
            references=_references(path),
            rows=_rows(corpus, standard),
            timelines=_timelines(path, corpus, standard.threshold),
            notes=[
                "nab_*: NAB's protocol (threshold swept per profile over the corpus, as the published scores)",
                "nab_standard_heldout: the bundle's threshold (tuned on the other series) on held-out series",
                "window precision: detected windows / (detected windows + runs of false alarms)",
            ],
        )


def _labels(series: LabeledSeries) -> npt.NDArray[np.int8]:
    labels = np.zeros(len(series.scores), dtype=np.int8)
    for first, last in series.windows:
        labels[first : last + 1] = 1
    return labels


def _rows(corpus: Sequence[LabeledSeries], result: NabResult) -> list[dict[str, object]]:
    return [
        {"series": s.name, "points": len(s.scores), "windows": len(s.windows), "nab_raw": float(raw)}
        for s, raw in zip(corpus, result.per_series.tolist(), strict=True)
    ]


def _timelines(path: Path, corpus: Sequence[LabeledSeries], threshold: float) -> list[Timeline]:
    labelled = [s for s in corpus if s.windows][:TIMELINES]
    out = []
    for series in labelled:
        time = read_series(path, series.name).time_ns.astype(np.float64) / 1e9
        out.append(Timeline(series.name, time, series.scores, _labels(series), threshold))
    return out


def _references(path: Path) -> dict[str, float]:
    """Published standard-profile scores (``final_results.json`` beside the data), if present."""
    file = Path(path) / RESULTS
    if not file.is_file():
        return {}
    raw = json.loads(file.read_text(encoding="utf-8"))
    return {name: float(profiles["standard"]) for name, profiles in raw.items() if "standard" in profiles}
