"""BGL (Blue Gene/L) log lines: line-level detection with the next-event model and severity.

Each line is sent as an OTLP record (body ``Content``, severity from ``Level``, the node as the
``node`` attribute) and mined by the service's Drain miner. A line scores by the surprise of its
template after the node's previous lines (DeepLog, CCS 2017, as an n-gram:
:mod:`otelai.detectors.log_sequence`) plus the surprise of its severity; templates never seen
in normal training lines are the strongest signal. ``BGL_2k`` samples 2,000 lines over seven
months, so nodes rarely repeat and most of the evidence is the template and its severity.

Split, chronological (the lines are in time order): the first 50 % train (normal lines only
are learned from), the next 20 % validate (calibration on its normal lines, threshold by best
F1), the last 30 % test. The bundle records digests of the lines it used, so ``evaluate``
scores every other line of the file it is given. Also reported: per node-hour window (a window
is anomalous when any of its lines is; its score is its highest line score).
"""

from __future__ import annotations

import itertools
import shlex
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from otelai.detectors.log_session_model import LogSessionModel
from otelai.models.bundle import Bundle, Training
from otelai.models.evaluation.metrics import score_metrics
from otelai.models.task import Evaluation, Task
from otelai.models.training.log_sessions import (
    calibrate,
    choose_threshold,
    fit_models,
    save_units,
    score_stream,
    used_units,
    write_bundle,
)
from otelai.replay.bgl import SESSION_ATTRIBUTE, BglLine, line_batches, read_lines

HISTORY = 3
SPLIT = (0.5, 0.2, 0.3)  # train, validation, test, in time order
WINDOW_NS = 3600 * 1_000_000_000


def split_lines(lines: list[BglLine], shares: tuple[float, ...] = SPLIT) -> list[list[BglLine]]:
    """Consecutive parts of the given shares (the file is in time order)."""
    bounds = np.round(np.cumsum(shares)[:-1] / sum(shares) * len(lines)).astype(np.int64).tolist()
    edges = [0, *bounds, len(lines)]
    return [lines[a:b] for a, b in itertools.pairwise(edges)]


def unit_id(line: BglLine) -> str:
    return f"{line.time_unix_nano}|{line.node}|{line.content}"


def _line_scores(
    model: LogSessionModel, lines: list[BglLine], progress: bool, what: str
) -> npt.NDArray[np.float64]:
    payloads = [batch.data for batch in line_batches(lines)]
    records, _ = score_stream(model, payloads, close=False, progress=progress, what=what)
    return records.score


def window_scores(
    lines: list[BglLine], scores: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int8]]:
    """Per (node, hour) window: its highest line score and whether any line is anomalous."""
    index: dict[tuple[str, int], int] = {}
    rows = np.array([index.setdefault((ln.node, ln.time_unix_nano // WINDOW_NS), len(index)) for ln in lines])
    best = np.zeros(len(index), dtype=np.float64)
    label = np.zeros(len(index), dtype=np.int8)
    np.maximum.at(best, rows, scores)
    np.maximum.at(label, rows, np.array([ln.anomalous for ln in lines], dtype=np.int8))
    return best, label


class BglTask(Task):
    """``otelai train|evaluate --dataset bgl``."""

    kind: ClassVar[str] = "bgl"

    def train(self, path: Path, out: Path, *, seed: int = 0, progress: bool = True) -> Bundle:
        lines = read_lines(path)
        train, validation, _ = split_lines(lines)
        normal = [line for line in train if not line.anomalous]
        fitted = fit_models(
            [batch.data for batch in line_batches(normal)],
            session_key=SESSION_ATTRIBUTE,
            history=HISTORY,
            end_of_session=False,
            count_model=False,
            progress=progress,
        )
        training = Training(
            dataset=self.kind,
            path=str(path),
            items=len(normal),
            seed=seed,
            command=shlex.join(
                ["otelai", "train", "--dataset", self.kind, "--path", str(path), "--seed", str(seed)]
            ),
            summary={
                "split": "chronological: first 50% train (normal lines), next 20% validation, last 30% test",
                "train_lines": len(normal),
                "validation_lines": len(validation),
                "validation_anomalies": sum(line.anomalous for line in validation),
                "templates": int(fitted.vocabulary.ids.size),
                "history": HISTORY,
            },
        )
        save_units(out, [unit_id(line) for line in train + validation])
        name = "bgl-log-lines"
        bundle = write_bundle(out, fitted, name=name, session_key=SESSION_ATTRIBUTE, training=training)
        calibration_lines = [line for line in validation if not line.anomalous]
        payloads = [batch.data for batch in line_batches(calibration_lines)]
        records, sessions = score_stream(
            LogSessionModel.from_bundle(bundle), payloads, close=False, progress=progress, what="calibrate"
        )
        calibration = calibrate(records, sessions, counts=False)
        bundle = write_bundle(
            out, fitted, name=name, session_key=SESSION_ATTRIBUTE, training=training, calibration=calibration
        )
        labels = np.array([line.anomalous for line in validation], dtype=np.int8)
        scores = _line_scores(LogSessionModel.from_bundle(bundle), validation, progress, "tune")
        thresholds = choose_threshold(labels, scores)
        return write_bundle(
            out,
            fitted,
            name=name,
            session_key=SESSION_ATTRIBUTE,
            training=training,
            calibration=calibration,
            thresholds=thresholds,
            metrics={"bgl-validation": score_metrics(labels, scores, threshold=thresholds.anomaly)},
        )

    def evaluate(self, bundle: Bundle, path: Path, *, progress: bool = True) -> Evaluation:
        lines = read_lines(path)
        used = used_units(bundle, [unit_id(line) for line in lines])
        held_out = [line for line, u in zip(lines, used.tolist(), strict=True) if not u]
        if not held_out:
            raise ValueError(f"every line at {path} was used to train or tune the bundle {bundle.path}")
        model = LogSessionModel.from_bundle(bundle)
        scores = _line_scores(model, held_out, progress, "evaluate")
        labels = np.array([line.anomalous for line in held_out], dtype=np.int8)
        signal = bundle.signal("logs")
        threshold = signal.thresholds.anomaly if signal is not None else 0.995
        metrics = score_metrics(labels, scores, threshold=threshold)
        metrics |= {"threshold": threshold, "lines": float(len(held_out)), "anomalies": float(labels.sum())}
        window, window_label = window_scores(held_out, scores)
        per_window = score_metrics(window_label, window, threshold=threshold)
        metrics |= {f"node_hour_{name}": value for name, value in per_window.items()}
        notes = [
            f"{len(held_out)} lines not used to train or tune the bundle ({int(used.sum())} were)",
            "node_hour_*: per (node, hour) window, score = its highest line score",
        ]
        return Evaluation(
            dataset=self.kind, unit="line", metrics=metrics, scores=scores, labels=labels, notes=notes
        )
