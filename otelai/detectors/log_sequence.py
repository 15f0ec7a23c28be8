"""Next-event prediction over log sessions: a back-off n-gram model of template sequences.

The method is DeepLog's (M. Du, F. Li, G. Zheng, V. Srikumar, "DeepLog: Anomaly Detection and
Diagnosis from System Logs through Deep Learning", CCS 2017): learn from normal sessions which
template follows a window of the ``h`` previous ones, and flag an event the model did not
expect. DeepLog's model is an LSTM with a top-``g`` rule; this one is an interpolated n-gram
model of every order up to ``h`` with Witten-Bell smoothing (I. H. Witten, T. C. Bell, "The
zero-frequency problem", IEEE Trans. Inf. Theory 37(4), 1991), and the score is the surprise
``-ln P(event | window)`` in nats. Why an n-gram and not an LSTM:

* the service's template miner has an open vocabulary: a template first seen in production is
  an unknown token the model prices at once (its probability comes from the back-off mass),
  where an LSTM has a fixed output layer;
* it learns online (``learn_many`` adds counts), so it follows the user's services, which the
  edge tier needs, without a training job;
* scoring is a few ``searchsorted`` over sorted hash tables: whole-batch numpy, no graph
  needed, state of a few kilobytes (an ``.npz`` in the bundle);
* on sessions of a few dozen templates (HDFS has under 50) an LSTM's advantage over a full
  n-gram of the same window is small (DeepLog's own n-gram baseline is close on HDFS).

Each row the detector reads is one event: ``h`` context tokens (oldest first, :data:`PAD`
before a session's start), the event's token and its severity number (0 when unset). A
severity the model saw rarely on normal records adds its own surprise, ``-ln P(severity >= s)``
(independent evidence, so the surprises add), so an unexpected template logged as FATAL
outranks one logged as INFO.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from otelai.detectors.base import Detector, FloatArray, IntArray

if TYPE_CHECKING:
    from otelai.detectors.registry import Serving
    from otelai.models.bundle import Bundle, DetectorSpec

U64 = npt.NDArray[np.uint64]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

PAD, END, UNKNOWN = 0, 1, 2  # reserved tokens; templates are FIRST and up
FIRST = 3
SEVERITY_LEVELS = 25  # OTLP severity numbers 0 (unset) .. 24
_PRIME = np.uint64(0x100000001B3)  # FNV-1a 64-bit prime
_OFFSET = np.uint64(0xCBF29CE484222325)  # FNV-1a offset basis
_EVENT_SALT = np.uint64(0x9E3779B97F4A7C15)  # keeps (context, event) keys apart from context keys


def _mix(keys: U64, tokens: I64) -> U64:
    """FNV-1a step over whole token columns (uint64 wrap-around is the hash's modulus)."""
    with np.errstate(over="ignore"):
        mixed: U64 = (keys ^ tokens.astype(np.uint64)) * _PRIME
    return mixed


def context_keys(windows: I64, order: int) -> U64:
    """Hash of each window's last ``order`` tokens, salted with the order itself."""
    n, width = windows.shape
    keys = np.full(n, _OFFSET, dtype=np.uint64)
    keys = _mix(keys, np.full(n, order, dtype=np.int64))
    for column in range(width - order, width):
        keys = _mix(keys, windows[:, column])
    return keys


def pair_keys(contexts: U64, events: I64) -> U64:
    """Hash of (context, next event)."""
    return _mix(contexts ^ _EVENT_SALT, events)


def _lookup(keys: U64, table: U64, counts: F64) -> F64:
    """Counts of ``keys`` in the sorted ``table`` (0 where absent)."""
    if table.size == 0:
        return np.zeros(keys.size, dtype=np.float64)
    at = np.minimum(np.searchsorted(table, keys), table.size - 1)
    found: F64 = np.where(table[at] == keys, counts[at], 0.0)
    return found


def _merge(table: U64, counts: F64, keys: U64, weights: F64) -> tuple[U64, F64]:
    """``table``/``counts`` with ``keys`` added (sorted, unique)."""
    merged, inverse = np.unique(np.concatenate([table, keys]), return_inverse=True)
    summed = np.bincount(
        inverse.reshape(-1), weights=np.concatenate([counts, weights]), minlength=merged.size
    )
    return merged.astype(np.uint64), summed.astype(np.float64)


class LogSequenceDetector(Detector):
    """Surprise of each event given the ``history`` events before it in its session.

    Parameters
    ----------
    history
        Window length ``h`` (DeepLog's ``h``; orders 0..h are interpolated).
    vocabulary
        Size of the token space the model has seen (grows as it learns); the back-off base
        is uniform over it plus one for an unknown token.

    Rows are ``history + 2`` wide (see the module docstring); :meth:`rows` builds them.
    """

    name: ClassVar[str] = "log_sequence"

    def __init__(self, *, history: int = 10, vocabulary: int = FIRST) -> None:
        if history < 1:
            raise ValueError("history must be at least 1")
        self.history = history
        self.vocabulary = vocabulary
        empty_keys = np.zeros(0, dtype=np.uint64)
        empty = np.zeros(0, dtype=np.float64)
        # context -> occurrences, and distinct continuations (Witten-Bell's type count)
        self._contexts, self._context_counts, self._context_types = empty_keys, empty, empty
        self._pairs, self._pair_counts = empty_keys, empty
        self._severity = np.zeros(SEVERITY_LEVELS, dtype=np.float64)  # records per severity

    @property
    def width(self) -> int:
        return self.history + 2

    @property
    def ready(self) -> bool:
        return bool(self._contexts.size)

    @staticmethod
    def rows(windows: I64, events: I64, severity: npt.NDArray[np.integer[Any]]) -> FloatArray:
        """The detector's rows from context windows ``(n, h)``, event tokens and severities."""
        out = np.empty((len(events), windows.shape[1] + 2), dtype=np.float32)
        out[:, :-2] = windows
        out[:, -2] = events
        out[:, -1] = severity
        return out

    def _split(self, features: FloatArray) -> tuple[I64, I64, I64]:
        rows = np.asarray(features)
        if rows.ndim != 2 or rows.shape[1] != self.width:
            raise ValueError(f"expected rows of width {self.width}, got shape {rows.shape}")
        tokens = rows.astype(np.int64)
        severity = np.clip(tokens[:, -1], 0, SEVERITY_LEVELS - 1)
        return tokens[:, :-2], tokens[:, -2], severity

    def learn_many(self, features: FloatArray) -> None:
        windows, events, severity = self._split(features)
        if not events.size:
            return
        self.vocabulary = max(self.vocabulary, int(events.max()) + 1, int(windows.max(initial=0)) + 1)
        self._severity += np.bincount(severity, minlength=SEVERITY_LEVELS)
        contexts = np.concatenate([context_keys(windows, k) for k in range(self.history + 1)])
        pairs = pair_keys(contexts, np.tile(events, self.history + 1))
        # A pair never seen before adds one continuation type to its context (Witten-Bell).
        unique_pairs, first = np.unique(pairs, return_index=True)
        fresh = _lookup(unique_pairs, self._pairs, self._pair_counts) == 0
        fresh_contexts = contexts[first[fresh]]
        old_contexts, old_types = self._contexts, self._context_types
        ones = np.ones(pairs.size, dtype=np.float64)
        self._pairs, self._pair_counts = _merge(self._pairs, self._pair_counts, pairs, ones)
        self._contexts, self._context_counts = _merge(self._contexts, self._context_counts, contexts, ones)
        added = np.bincount(np.searchsorted(self._contexts, fresh_contexts), minlength=self._contexts.size)
        self._context_types = _lookup(self._contexts, old_contexts, old_types) + added

    def surprise(self, windows: I64, events: I64) -> F64:
        """``-ln P(event | window)`` in nats, interpolated from order 0 up to ``h``."""
        probability = np.full(events.size, 1.0 / (self.vocabulary + 1), dtype=np.float64)
        for order in range(self.history + 1):
            contexts = context_keys(windows, order)
            seen = _lookup(contexts, self._contexts, self._context_counts)
            types = _lookup(contexts, self._contexts, self._context_types)
            joint = _lookup(pair_keys(contexts, events), self._pairs, self._pair_counts)
            known = seen > 0
            mixed = (joint + types * probability) / np.where(known, seen + types, 1.0)
            probability = np.where(known, mixed, probability)
        result: F64 = -np.log(probability)
        return result

    def event_counts(self, events: I64) -> F64:
        """Times each event was learned, whatever its context (0 for one never learned)."""
        empty = np.zeros((events.size, self.history), dtype=np.int64)
        return _lookup(pair_keys(context_keys(empty, 0), events), self._pairs, self._pair_counts)

    def severity_surprise(self, severity: I64) -> F64:
        """``-ln P(severity >= s)`` on the records learned (add-one smoothed); 0 for unset."""
        at_least = np.cumsum(self._severity[::-1])[::-1]
        tail = (at_least + 1.0) / (at_least[0] + 1.0)
        result: F64 = np.where(severity > 0, -np.log(tail[severity]), 0.0)
        return result

    def _parts(self, features: FloatArray) -> tuple[F64, F64]:
        windows, events, severity = self._split(features)
        if not self.ready or not events.size:
            zero = np.zeros(events.size, dtype=np.float64)
            return zero, zero
        return self.surprise(windows, events), self.severity_surprise(severity)

    def score_many(self, features: FloatArray) -> FloatArray:
        template, severity = self._parts(features)
        return (template + severity).astype(np.float32)

    def explain_many(self, features: FloatArray, top: int = 3) -> IntArray:
        return self.score_explain_many(features, top)[1]

    def score_explain_many(self, features: FloatArray, top: int = 3) -> tuple[FloatArray, IntArray]:
        template, severity = self._parts(features)
        reasons = np.full((template.size, top), -1, dtype=np.int64)
        if top:
            event_first = template >= severity
            reasons[:, 0] = np.where(event_first, self.width - 2, self.width - 1)
            if top > 1:
                reasons[:, 1] = np.where(event_first, self.width - 1, self.width - 2)
        return (template + severity).astype(np.float32), reasons

    # -- state ------------------------------------------------------------------------------

    def state(self) -> dict[str, npt.NDArray[Any]]:
        """The learned tables as arrays (what :meth:`save` writes)."""
        return {
            "history": np.array(self.history, dtype=np.int64),
            "vocabulary": np.array(self.vocabulary, dtype=np.int64),
            "contexts": self._contexts,
            "context_counts": self._context_counts,
            "context_types": self._context_types,
            "pairs": self._pairs,
            "pair_counts": self._pair_counts,
            "severity": self._severity,
        }

    def save(self, path: Path) -> None:
        """Write the model to an ``.npz`` file (plain arrays, no pickle)."""
        buffer = io.BytesIO()
        np.savez_compressed(buffer, allow_pickle=False, **self.state())
        Path(path).write_bytes(buffer.getvalue())

    @classmethod
    def from_state(cls, arrays: Mapping[str, npt.NDArray[Any]]) -> LogSequenceDetector:
        detector = cls(history=int(arrays["history"]), vocabulary=int(arrays["vocabulary"]))
        detector._contexts = arrays["contexts"].astype(np.uint64)
        detector._context_counts = arrays["context_counts"].astype(np.float64)
        detector._context_types = arrays["context_types"].astype(np.float64)
        detector._pairs = arrays["pairs"].astype(np.uint64)
        detector._pair_counts = arrays["pair_counts"].astype(np.float64)
        detector._severity = arrays["severity"].astype(np.float64)
        return detector

    @classmethod
    def load(cls, path: Path) -> LogSequenceDetector:
        with np.load(path, allow_pickle=False) as data:
            return cls.from_state({name: data[name] for name in data.files})

    @classmethod
    def from_spec(cls, bundle: Bundle, spec: DetectorSpec, serving: Serving) -> Detector:
        """The model in the bundle file ``spec.file`` (numpy state: no inference backend)."""
        from otelai.models.bundle import BundleError

        if spec.file is None:
            raise BundleError(f"bundle {bundle.path}: detector {spec.name!r} names no file")
        return cls.load(bundle.file(spec.file))
