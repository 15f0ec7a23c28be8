"""HDFS block sessions: DeepLog-style next-event model plus session template counts.

DeepLog (Du et al., CCS 2017) on HDFS: a block is a session; a block is anomalous when one of
its events is unexpected after the ``h`` before it. Here the next-event model is an
interpolated n-gram (:mod:`otelai.detectors.log_sequence`, why: see there), the end of a block
is an event too, and the block's template count vector is scored against the normal subspace
(Xu et al., SOSP 2009). Templates are sent as log bodies and mined again with the service's
Drain miner, so what is scored is what the service computes.

The data has one labeled file (``hdfs_100k_train.csv``); it is split here, stratified by label
and seeded: ``train`` (normal blocks only are learned from, as DeepLog does), ``validation``
(calibration on its normal blocks, threshold by best F1), ``test`` (never used for either).
The bundle records digests of the blocks it used, so ``evaluate`` scores every other block of
the file it is given: the test part here, all of a held-back file.

Many anomalous blocks of HDFS_100k have exactly the template sequence of normal blocks (the
log was cut at 100k lines, before what made them anomalous): ``evaluate`` reports the best F1
any function of the template sequence could reach on the evaluated blocks (the label ceiling).
"""

from __future__ import annotations

import shlex
from collections import defaultdict
from pathlib import Path
from typing import ClassVar

import numpy as np
import numpy.typing as npt

from otelai.detectors.log_session_model import LogSessionModel
from otelai.models.bundle import Bundle, Training
from otelai.models.evaluation.metrics import best_f1, score_metrics
from otelai.models.task import Evaluation, Task
from otelai.models.training.log_sessions import (
    calibrate,
    choose_threshold,
    fit_models,
    save_units,
    score_stream,
    session_unit_scores,
    used_units,
    write_bundle,
)
from otelai.replay.hdfs import SESSION_ATTRIBUTE, Block, block_batches, read_blocks

NAME = "hdfs-log-sessions"
HISTORY = 10  # DeepLog's h for HDFS
SPLIT = (0.6, 0.2, 0.2)  # train, validation, test
REFERENCES = {"deeplog_precision": 0.95, "deeplog_recall": 0.96, "deeplog_f1": 0.96}


def split_blocks(blocks: list[Block], seed: int, shares: tuple[float, ...] = SPLIT) -> list[list[Block]]:
    """Blocks in parts of the given shares, stratified by label, seeded, file order kept inside."""
    rng = np.random.default_rng(seed)
    part_of = np.zeros(len(blocks), dtype=np.int64)
    labels = np.array([block.anomalous for block in blocks], dtype=np.bool_)
    bounds = np.cumsum(shares)[:-1] / sum(shares)
    for label in (False, True):
        rows = rng.permutation(np.flatnonzero(labels == label))
        cuts = np.round(bounds * rows.size).astype(np.int64)
        for part, chunk in enumerate(np.split(rows, cuts)):
            part_of[chunk] = part
    return [
        [b for b, p in zip(blocks, part_of.tolist(), strict=True) if p == part] for part in range(len(shares))
    ]


def _payloads(blocks: list[Block]) -> list[bytes]:
    return [batch.data for batch in block_batches(blocks)]


def _block_scores(
    model: LogSessionModel, blocks: list[Block], progress: bool, what: str
) -> npt.NDArray[np.float64]:
    records, sessions = score_stream(model, _payloads(blocks), close=True, progress=progress, what=what)
    return session_unit_scores(records, sessions, [b.block_id.encode() for b in blocks])


def label_ceiling(blocks: list[Block]) -> float:
    """Best F1 of any rule that sees only the template sequence (majority vote per sequence)."""
    votes: dict[tuple[str, ...], list[int]] = defaultdict(lambda: [0, 0])
    for block in blocks:
        votes[block.templates][int(block.anomalous)] += 1
    share = {seq: counts[1] / sum(counts) for seq, counts in votes.items()}
    labels = np.array([b.anomalous for b in blocks], dtype=np.int8)
    return best_f1(labels, np.array([share[b.templates] for b in blocks]))[0]


class HdfsTask(Task):
    """``otelai train|evaluate --dataset hdfs``."""

    kind: ClassVar[str] = "hdfs"

    def train(self, path: Path, out: Path, *, seed: int = 0, progress: bool = True) -> Bundle:
        blocks = read_blocks(path)
        train, validation, _ = split_blocks(blocks, seed)
        normal = [b for b in train if not b.anomalous]
        fitted = fit_models(
            _payloads(normal),
            session_key=SESSION_ATTRIBUTE,
            history=HISTORY,
            end_of_session=True,
            count_model=True,
            progress=progress,
        )
        training = Training(
            dataset=self.kind,
            path=str(path),
            items=sum(len(b.templates) for b in normal),
            seed=seed,
            command=shlex.join(
                ["otelai", "train", "--dataset", self.kind, "--path", str(path), "--seed", str(seed)]
            ),
            summary={
                "split": dict(zip(("train", "validation", "test"), SPLIT, strict=True)),
                "train_blocks": len(normal),
                "validation_blocks": len(validation),
                "validation_anomalies": sum(b.anomalous for b in validation),
                "templates": int(fitted.vocabulary.ids.size),
                "history": HISTORY,
            },
        )
        save_units(out, [b.block_id for b in train + validation])
        bundle = write_bundle(out, fitted, name=NAME, session_key=SESSION_ATTRIBUTE, training=training)
        # Calibrate on the validation part's normal blocks, through the saved bundle.
        model = LogSessionModel.from_bundle(bundle)
        records, sessions = score_stream(
            model,
            _payloads([b for b in validation if not b.anomalous]),
            close=True,
            progress=progress,
            what="calibrate",
        )
        calibration = calibrate(records, sessions, counts=fitted.counts_graph is not None)
        bundle = write_bundle(
            out, fitted, calibration=calibration, name=NAME, session_key=SESSION_ATTRIBUTE, training=training
        )
        labels = np.array([b.anomalous for b in validation], dtype=np.int8)
        scores = _block_scores(LogSessionModel.from_bundle(bundle), validation, progress, "tune")
        thresholds = choose_threshold(labels, scores)
        metrics = {"hdfs-validation": score_metrics(labels, scores, threshold=thresholds.anomaly)}
        return write_bundle(
            out,
            fitted,
            calibration=calibration,
            thresholds=thresholds,
            metrics=metrics,
            name=NAME,
            session_key=SESSION_ATTRIBUTE,
            training=training,
        )

    def evaluate(self, bundle: Bundle, path: Path, *, progress: bool = True) -> Evaluation:
        blocks = read_blocks(path)
        used = used_units(bundle, [b.block_id for b in blocks])
        held_out = [b for b, u in zip(blocks, used.tolist(), strict=True) if not u]
        if not held_out:
            raise ValueError(f"every block at {path} was used to train or tune the bundle {bundle.path}")
        model = LogSessionModel.from_bundle(bundle)
        try:
            scores = _block_scores(model, held_out, progress, "evaluate")
        finally:
            model.close_models()
        labels = np.array([b.anomalous for b in held_out], dtype=np.int8)
        signal = bundle.signal("logs")
        threshold = signal.thresholds.anomaly if signal is not None else 0.995
        metrics = score_metrics(labels, scores, threshold=threshold)
        metrics |= {"threshold": threshold, "blocks": float(len(held_out)), "anomalies": float(labels.sum())}
        metrics["label_ceiling_f1"] = label_ceiling(held_out)
        notes = [
            f"{len(held_out)} blocks not used to train or tune the bundle ({int(used.sum())} were)",
            "label_ceiling_f1: best F1 any rule that sees only a block's template sequence can reach "
            "on these blocks (anomalous blocks with a normal block's exact sequence cannot be told apart)",
        ]
        return Evaluation(
            dataset=self.kind,
            unit="block",
            metrics=metrics,
            scores=scores,
            labels=labels,
            references=dict(REFERENCES),
            notes=notes,
        )
