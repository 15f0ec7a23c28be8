"""Scoring log records and sessions with a bundle's session models, as the service computes them.

Per batch of OTLP logs requests: the service's own reader (:class:`~otelai.features.logs.LogBatch`
with the Drain miner of :mod:`otelai.features.drain`, restored from the bundle so template ids
mean what they meant in training) gives each record's template and severity; the session key is
read from the wire (:func:`~otelai.detectors.log_sessions.record_attribute`); the session table
gives each record its window of earlier templates; the next-event model
(:mod:`otelai.detectors.log_sequence`, DeepLog, CCS 2017) scores the record. When a session ends
its end-of-session event and its template count vector (:mod:`otelai.detectors.log_counts`,
Xu et al., SOSP 2009) are scored too.

Raw scores become calibrated scores in [0, 1] through each detector's empirical CDF on held-out
normal data (the bundle's calibration quantiles); several detectors combine by the Bonferroni
rule, ``1 - min(1, k * min_d p_d)``, as :mod:`otelai.scoring.scorer` does.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from otelai.detectors.log_counts import SessionCountDetector
from otelai.detectors.log_sequence import END, FIRST, UNKNOWN, LogSequenceDetector
from otelai.detectors.log_sessions import Closed, Sessions, record_attribute
from otelai.detectors.registry import Serving
from otelai.features.drain import TemplateMiner
from otelai.features.logs import LogBatch, LogState
from otelai.features.otlp_layout import locate_items
from otelai.features.schema import FeatureSchema
from otelai.models.bundle import Bundle, BundleError, Calibration

I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

SEQUENCE_KIND = LogSequenceDetector.name
COUNTS_KIND = SessionCountDetector.name


def session_schema(history: int) -> FeatureSchema:
    """The rows the next-event model reads: the context window, the event, the severity."""
    names = (*(f"context_{i}" for i in range(history)), "event", "severity")
    return FeatureSchema(names=names, version="log-sessions-1")


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """Template ids of the miner -> tokens of the models (templates not trained on: UNKNOWN)."""

    ids: I64  # sorted template ids; template ids[i] is token FIRST + i

    @property
    def size(self) -> int:
        """Tokens, the reserved ones included (the width of count vectors)."""
        return FIRST + int(self.ids.size)

    def tokens(self, template_ids: I64) -> I64:
        if not self.ids.size:
            return np.full(template_ids.size, UNKNOWN, dtype=np.int64)
        at = np.minimum(np.searchsorted(self.ids, template_ids), self.ids.size - 1)
        known = self.ids[at] == template_ids
        result: I64 = np.where(known, FIRST + at, UNKNOWN).astype(np.int64)
        return result


def ecdf(raw: F64, calibration: Calibration) -> F64:
    """Calibrated score: the empirical CDF of the calibration data, with an exponential tail.

    Linear between the stored quantiles (so scores keep their order inside the tail, where a
    step function would tie everything above the top few quantiles), reaching
    ``1 - 1/(n + 1)`` at the largest of the ``n`` calibration scores; above it the remaining
    mass decays exponentially with the spread of the top percent, so scores beyond anything
    seen stay ordered and below 1. A score within float noise of the largest is not beyond it.
    """
    table = np.asarray(calibration.quantiles, dtype=np.float64)
    if not table.size:
        return np.zeros(raw.size, dtype=np.float64)
    top = table[-1]
    tolerance = 1e-6 + 1e-4 * abs(top)
    spread = max(top - table[int(0.99 * (table.size - 1))], tolerance)
    room = 1.0 / (max(calibration.samples, table.size) + 1.0)
    inside = np.interp(raw, table, np.linspace(0.0, 1.0 - room, table.size), left=0.0)
    beyond = raw > top + tolerance
    excess = np.where(beyond, raw - top, 0.0) / spread
    result: F64 = np.where(beyond, 1.0 - room * np.exp(-excess), inside)
    return result


def bonferroni(*calibrated: F64) -> F64:
    """``1 - min(1, k * min_d (1 - c_d))`` over the ``k`` calibrated scores."""
    stacked = np.vstack(calibrated)
    p = np.minimum(1.0, len(calibrated) * (1.0 - stacked).min(axis=0))
    result: F64 = 1.0 - p
    return result


@dataclass(frozen=True, slots=True)
class RecordScores:
    """Per record of a batch: calibrated score, raw surprise (nats), session key, template id."""

    score: F64
    raw: F64
    keys: list[bytes]
    template_ids: I64


@dataclass(frozen=True, slots=True)
class SessionScores:
    """Per ended session: calibrated score, raw end-of-session surprise and count residual."""

    keys: list[bytes]
    score: F64
    end_surprise: F64
    count_residual: F64


class LogSessionModel:
    """A bundle's log session models, with the miner and live sessions they need.

    Parameters
    ----------
    miner
        The template miner (restored from the bundle: ids as in training).
    vocabulary
        Template ids the models know.
    sequence, counts
        The next-event model and the (optional) session count model.
    calibration
        Calibration quantiles of ``sequence`` and ``counts`` raw scores on normal data.
    session_key
        The log attribute that names a record's session (``trace_id`` for the trace id).
    max_sessions, idle_timeout
        Bounds of the session table (:class:`~otelai.detectors.log_sessions.Sessions`).
    """

    def __init__(
        self,
        *,
        miner: TemplateMiner,
        vocabulary: Vocabulary,
        sequence: LogSequenceDetector,
        counts: SessionCountDetector | None,
        calibration: dict[str, Calibration],
        session_key: str,
        max_sessions: int = 100_000,
        idle_timeout: float = 300.0,
    ) -> None:
        self.state = LogState(miner=miner)
        self.vocabulary = vocabulary
        self.sequence = sequence
        self.counts = counts
        self.calibration = calibration
        self.session_key = session_key
        # A model trained without end-of-session events (BGL's lines) has no opinion on an
        # ending: scoring one would price every ending as unseen and flag every session.
        self.scores_ends = bool(sequence.event_counts(np.array([END], dtype=np.int64))[0] > 0)
        self.sessions = Sessions(
            history=sequence.history,
            width=vocabulary.size,
            max_sessions=max_sessions,
            idle_timeout=idle_timeout,
        )

    @classmethod
    def from_bundle(cls, bundle: Bundle, serving: Serving | None = None, **options: Any) -> LogSessionModel:
        """The models of the bundle's ``logs`` signal (a ``log_sequence`` detector is required)."""
        serving = serving or Serving()
        model = bundle.signal("logs")
        specs = {spec.kind: spec for spec in model.detectors} if model is not None else {}
        if SEQUENCE_KIND not in specs:
            raise BundleError(f"bundle {bundle.path}: no {SEQUENCE_KIND!r} detector for logs")
        spec = specs[SEQUENCE_KIND]
        sequence = LogSequenceDetector.from_spec(bundle, spec, serving)
        assert isinstance(sequence, LogSequenceDetector)
        templates = json.loads(bundle.file(str(spec.params["templates"])).read_text(encoding="utf-8"))
        counts = None
        calibration = {SEQUENCE_KIND: spec.calibration}
        if COUNTS_KIND in specs:
            built = SessionCountDetector.from_spec(bundle, specs[COUNTS_KIND], serving)
            assert isinstance(built, SessionCountDetector)
            counts = built
            calibration[COUNTS_KIND] = specs[COUNTS_KIND].calibration
        return cls(
            miner=TemplateMiner.restore(templates["miner"]),
            vocabulary=Vocabulary(np.asarray(templates["vocabulary"], dtype=np.int64)),
            sequence=sequence,
            counts=counts,
            calibration=calibration,
            session_key=str(spec.params.get("session_key", "trace_id")),
            **options,
        )

    def read(self, payloads: Sequence[bytes]) -> tuple[LogBatch, list[bytes]]:
        """Records of serialised logs requests, as the service reads them, and their session keys."""
        batch = LogBatch.from_payloads(payloads, self.state)
        layout = locate_items(payloads, self.state.containers)
        return batch, record_attribute(layout.buf, layout.start, layout.end, self.session_key)

    def score_payloads(self, payloads: Sequence[bytes], now: float = 0.0) -> RecordScores:
        """Score every record of ``payloads`` against the earlier records of its session."""
        batch, keys = self.read(payloads)
        return self.score_records(keys, batch.template_id, batch.severity.astype(np.int64), now)

    def score_records(
        self, keys: Sequence[bytes], template_ids: I64, severity: I64, now: float = 0.0
    ) -> RecordScores:
        tokens = self.vocabulary.tokens(template_ids)
        windows = self.sessions.step(keys, tokens, now)
        raw = self.sequence.score_many(LogSequenceDetector.rows(windows, tokens, severity)).astype(np.float64)
        score = ecdf(raw, self.calibration[SEQUENCE_KIND])
        return RecordScores(score, raw, list(keys), template_ids)

    def close(self, keys: Sequence[bytes]) -> SessionScores:
        """End sessions ``keys`` and score them."""
        return self.score_closed(self.sessions.close(keys))

    def close_all(self) -> SessionScores:
        return self.score_closed(self.sessions.close_all())

    def expire(self, now: float) -> SessionScores:
        """End idle sessions (and the oldest past the bound) and score them."""
        return self.score_closed(self.sessions.expire(now))

    def score_closed(self, closed: Closed) -> SessionScores:
        n = len(closed.keys)
        ends = np.full(n, END, dtype=np.int64)
        rows = LogSequenceDetector.rows(closed.windows, ends, np.zeros(n, dtype=np.int64))
        parts = []
        end_surprise = np.zeros(n, dtype=np.float64)
        if self.scores_ends and n:
            end_surprise = self.sequence.score_many(rows).astype(np.float64)
            parts.append(ecdf(end_surprise, self.calibration[SEQUENCE_KIND]))
        residual = np.zeros(n, dtype=np.float64)
        if self.counts is not None and n:
            residual = self.counts.score_many(closed.counts).astype(np.float64)
            parts.append(ecdf(residual, self.calibration[COUNTS_KIND]))
        score = bonferroni(*parts) if parts else np.zeros(n, dtype=np.float64)
        return SessionScores(closed.keys, score, end_surprise, residual)

    def session_parts(self, ended: SessionScores) -> tuple[F64, F64]:
        """Calibrated end-of-session and count scores of ``ended`` (0 where not scored)."""
        n = len(ended.keys)
        end = np.zeros(n, dtype=np.float64)
        counts = np.zeros(n, dtype=np.float64)
        if self.scores_ends:
            end = ecdf(ended.end_surprise, self.calibration[SEQUENCE_KIND])
        if self.counts is not None:
            counts = ecdf(ended.count_residual, self.calibration[COUNTS_KIND])
        return end, counts

    def close_models(self) -> None:
        if self.counts is not None:
            self.counts.close()
