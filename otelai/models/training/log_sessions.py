"""Training log session models (DeepLog-style next-event model, session count model) into a bundle.

The models are fitted on what the service computes: the training records go through the OTLP
converters of :mod:`otelai.replay` and the service's reader and template miner
(:class:`~otelai.features.logs.LogBatch`, Drain), so template ids, severities and session keys
are the ones the service sees. Steps:

1. mine the normal training sessions, snapshot the miner, fix the vocabulary to their templates;
2. count every window of ``h`` templates and its next template, the end of each session
   included (:class:`~otelai.detectors.log_sequence.LogSequenceDetector`; DeepLog, CCS 2017,
   trains on normal sessions only); fit the principal subspace of the sessions' template count
   vectors (:mod:`otelai.detectors.log_counts`; Xu et al., SOSP 2009);
3. calibrate each detector on held-out normal sessions (quantiles of its raw scores);
4. choose the anomaly threshold on a validation part with its labels (best F1), through the
   saved bundle and the serving code.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from tqdm import tqdm

from otelai.detectors.log_counts import fit_count_model
from otelai.detectors.log_sequence import END, LogSequenceDetector
from otelai.detectors.log_session_model import (
    COUNTS_KIND,
    SEQUENCE_KIND,
    LogSessionModel,
    RecordScores,
    SessionScores,
    Vocabulary,
    session_schema,
)
from otelai.detectors.log_sessions import Sessions, record_attribute
from otelai.features.drain import TemplateMiner
from otelai.features.logs import LogBatch, LogState
from otelai.features.otlp_layout import locate_items
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
from otelai.models.evaluation.metrics import best_f1

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

SEQUENCE_FILE = "log_sequence.npz"
COUNTS_FILE = "log_counts.onnx"
TEMPLATES_FILE = "log_templates.json"
UNITS_FILE = "log_units.npz"
QUANTILES = 1001
CHUNK = 64  # requests read per batch, as the service batches them


@dataclass(frozen=True, slots=True)
class Records:
    """Records as the service reads them: session key, template id, severity number."""

    keys: list[bytes]
    template_ids: I64
    severity: I64


def read_records(
    payloads: Iterable[bytes], state: LogState, session_key: str, *, progress: bool = False
) -> Records:
    """Read serialised logs requests with the service's reader (which teaches ``state.miner``)."""
    keys: list[bytes] = []
    ids: list[I64] = []
    severity: list[I64] = []
    for chunk in _chunks(payloads, CHUNK, progress, "read"):
        batch = LogBatch.from_payloads(chunk, state)
        layout = locate_items(chunk, state.containers)
        keys.extend(record_attribute(layout.buf, layout.start, layout.end, session_key))
        ids.append(batch.template_id)
        severity.append(batch.severity.astype(np.int64))
    empty = np.zeros(0, dtype=np.int64)
    return Records(
        keys, np.concatenate(ids) if ids else empty, np.concatenate(severity) if severity else empty
    )


def _chunks(payloads: Iterable[bytes], size: int, progress: bool, what: str) -> Iterable[list[bytes]]:
    chunk: list[bytes] = []
    for payload in tqdm(payloads, desc=what, unit=" requests", disable=not progress, leave=False):
        chunk.append(payload)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass(frozen=True, slots=True)
class FittedModels:
    miner: TemplateMiner
    vocabulary: Vocabulary
    sequence: LogSequenceDetector
    counts_graph: bytes | None
    sessions: int


def fit_models(
    payloads: Iterable[bytes],
    *,
    session_key: str,
    history: int,
    end_of_session: bool,
    count_model: bool,
    progress: bool = False,
) -> FittedModels:
    """Fit the next-event model (and the count model) on normal sessions' requests."""
    state = LogState(miner=TemplateMiner())
    records = read_records(payloads, state, session_key, progress=progress)
    vocabulary = Vocabulary(np.unique(records.template_ids))
    tokens = vocabulary.tokens(records.template_ids)
    sessions = Sessions(history=history, width=vocabulary.size, max_sessions=max(1, len(records.keys)))
    windows = sessions.step(records.keys, tokens)
    sequence = LogSequenceDetector(history=history, vocabulary=vocabulary.size)
    sequence.learn_many(LogSequenceDetector.rows(windows, tokens, records.severity))
    closed = sessions.close_all()
    if end_of_session and closed.keys:
        ends = np.full(len(closed.keys), END, dtype=np.int64)
        sequence.learn_many(LogSequenceDetector.rows(closed.windows, ends, np.zeros_like(ends)))
    graph = fit_count_model(closed.counts) if count_model and len(closed.keys) > 1 else None
    return FittedModels(state.miner, vocabulary, sequence, graph, len(closed.keys))


def write_bundle(
    out: Path,
    fitted: FittedModels,
    *,
    name: str,
    session_key: str,
    training: Training,
    calibration: dict[str, Calibration] | None = None,
    thresholds: Thresholds | None = None,
    metrics: dict[str, dict[str, float]] | None = None,
) -> Bundle:
    """Write the models, the miner snapshot and the manifest into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    calibration = calibration or {}
    fitted.sequence.save(out / SEQUENCE_FILE)
    templates = {"miner": fitted.miner.snapshot(), "vocabulary": fitted.vocabulary.ids.tolist()}
    (out / TEMPLATES_FILE).write_text(json.dumps(templates), encoding="utf-8")
    detectors = [
        DetectorSpec(
            name="next_event",
            kind=SEQUENCE_KIND,
            file=SEQUENCE_FILE,
            params={
                "history": fitted.sequence.history,
                "session_key": session_key,
                "templates": TEMPLATES_FILE,
            },
            calibration=calibration.get(SEQUENCE_KIND, Calibration()),
        )
    ]
    if fitted.counts_graph is not None:
        (out / COUNTS_FILE).write_bytes(fitted.counts_graph)
        detectors.append(
            DetectorSpec(
                name="session_counts",
                kind=COUNTS_KIND,
                file=COUNTS_FILE,
                params={"width": fitted.vocabulary.size},
                calibration=calibration.get(COUNTS_KIND, Calibration()),
            )
        )
    schema = session_schema(fitted.sequence.history)
    signal = SignalModel(
        feature_schema=SchemaSpec.of("log-sessions", schema),
        detectors=detectors,
        thresholds=thresholds or Thresholds(),
    )
    manifest = Manifest(
        name=name,
        version="1",
        signals={"logs": signal},
        training=[training],
        metrics=metrics or {},
    )
    return save_bundle(out, manifest)


def quantiles(raw: F64) -> Calibration:
    """Calibration from raw scores of normal data: :data:`QUANTILES` evenly spaced quantiles."""
    if not raw.size:
        return Calibration()
    values = np.quantile(raw, np.linspace(0.0, 1.0, QUANTILES))
    return Calibration(quantiles=[float(v) for v in values], samples=int(raw.size))


def score_stream(
    model: LogSessionModel,
    payloads: Iterable[bytes],
    *,
    close: bool,
    progress: bool = False,
    what: str = "score",
) -> tuple[RecordScores, SessionScores]:
    """Score every record of ``payloads`` in order; with ``close``, then end and score every session."""
    parts: list[RecordScores] = []
    for chunk in _chunks(payloads, CHUNK, progress, what):
        parts.append(model.score_payloads(chunk))
    keys = [key for part in parts for key in part.keys]
    cat = np.concatenate
    records = RecordScores(
        cat([p.score for p in parts]) if parts else np.zeros(0),
        cat([p.raw for p in parts]) if parts else np.zeros(0),
        keys,
        cat([p.template_ids for p in parts]) if parts else np.zeros(0, dtype=np.int64),
    )
    sessions = model.close_all() if close else SessionScores([], np.zeros(0), np.zeros(0), np.zeros(0))
    return records, sessions


def session_unit_scores(records: RecordScores, sessions: SessionScores, units: Sequence[bytes]) -> F64:
    """Score of each session in ``units``: the highest of its records' and its end's (0 if unseen)."""
    index = {key: i for i, key in enumerate(units)}
    out = np.zeros(len(units), dtype=np.float64)
    rows = np.fromiter((index.get(key, -1) for key in records.keys), np.int64, len(records.keys))
    hit = rows >= 0
    np.maximum.at(out, rows[hit], records.score[hit])
    ends = np.fromiter((index.get(key, -1) for key in sessions.keys), np.int64, len(sessions.keys))
    hit = ends >= 0
    np.maximum.at(out, ends[hit], sessions.score[hit])
    return out


def calibrate(records: RecordScores, sessions: SessionScores, counts: bool) -> dict[str, Calibration]:
    """Calibrations of the detectors from their raw scores on normal data."""
    out = {SEQUENCE_KIND: quantiles(records.raw)}
    if counts:
        out[COUNTS_KIND] = quantiles(sessions.count_residual)
    return out


def choose_threshold(labels: npt.NDArray[np.int8], scores: F64) -> Thresholds:
    """The best-F1 threshold on validation units (the default when it has no anomalies)."""
    f1, threshold, _, _ = best_f1(labels, scores)
    if not np.isfinite(threshold) or f1 <= 0:
        return Thresholds()
    anomaly = float(np.clip(threshold, 0.0, 1.0))
    return Thresholds(anomaly=anomaly, critical=max(anomaly, Thresholds().critical))


def unit_hashes(units: Iterable[str]) -> npt.NDArray[np.uint64]:
    """Sorted 64-bit digests of unit ids (blocks, lines): what a bundle records it used."""
    digests = [
        int.from_bytes(hashlib.blake2b(unit.encode(), digest_size=8).digest(), "little") for unit in units
    ]
    return np.unique(np.array(digests, dtype=np.uint64))


def save_units(out: Path, units: Iterable[str]) -> None:
    """Record in the bundle the units trained and tuned on, so evaluation leaves them out."""
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, units=unit_hashes(units))
    (out / UNITS_FILE).write_bytes(buffer.getvalue())


def used_units(bundle: Bundle, units: Sequence[str]) -> npt.NDArray[np.bool_]:
    """Which of ``units`` the bundle was trained or tuned on."""
    if UNITS_FILE not in bundle.manifest.files:
        return np.zeros(len(units), dtype=np.bool_)
    with np.load(bundle.file(UNITS_FILE), allow_pickle=False) as data:
        known = data["units"]
    digests = np.array(
        [int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little") for u in units],
        dtype=np.uint64,
    )
    return np.isin(digests, known)
