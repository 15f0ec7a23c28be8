"""Features of OTLP log records, computed for a whole batch of requests at once.

Reads serialised ``ExportLogsServiceRequest`` bytes (opentelemetry-proto ``logs/v1/logs.proto``;
severity numbers from the OpenTelemetry logs data model: 1-4 TRACE, 5-8 DEBUG, 9-12 INFO,
13-16 WARN, 17-20 ERROR, 21-24 FATAL). upb reads the containers through a skeleton message
(:mod:`otelai.features.otlp_layout`), the vectorised wire reader reads every record's fields at
once, and the bodies are sliced, joined, decoded once and split. The per-record Python work is
that slice and the template miner's loop (:mod:`otelai.features.drain`, Drain, ICWS 2017),
which for a line seen before is one dict lookup (about 0.15 us; ``benchmarks/log_templates.py``).

Features per record: severity, body length, error keywords, template rarity and novelty,
and the rates of the record's template and service (records per second, exponentially
weighted with a fast and a slow time constant) with their ratio ("surge"), so that a burst
of a template reads the same on any service.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from otelai.features.drain import TemplateMiner
from otelai.features.interner import Interner
from otelai.features.otlp_layout import ResourceCache, locate_items
from otelai.features.schema import FeatureSchema
from otelai.features.wire import FIXED64, LEN, VARINT, Fields, read_varints, tag, walk

U8 = NDArray[np.uint8]
Bool = NDArray[np.bool_]
I32 = NDArray[np.int32]
I64 = NDArray[np.int64]
F64 = NDArray[np.float64]

# LogRecord (logs.proto) and AnyValue (common.proto) field tags
SEVERITY_NUMBER, SEVERITY_TEXT, BODY = tag(2, VARINT), tag(3, LEN), tag(5, LEN)
ANY_STRING = tag(1, LEN)
ANY_OTHER = (tag(2, VARINT), tag(3, VARINT), tag(4, FIXED64), tag(5, LEN), tag(6, LEN), tag(7, LEN))

SEVERITY_ERROR = 17
SEVERITY_MAX = 24
# severity_text when severity_number is unset: the data model's short names and common aliases
SEVERITY_TEXT_NUMBER = {
    "TRACE": 1, "DEBUG": 5, "INFO": 9, "INFORMATION": 9, "NOTICE": 10, "WARN": 13,
    "WARNING": 13, "ERROR": 17, "ERR": 17, "CRITICAL": 21, "CRIT": 21, "ALERT": 22,
    "EMERG": 23, "EMERGENCY": 23, "FATAL": 21, "PANIC": 21,
}  # fmt: skip
ERROR_KEYWORDS = re.compile(
    r"\b(?:errors?|exceptions?|fail(?:ed|ure|ures|ing|s)?|fatal|panic(?:ked)?|timeouts?|timed out"
    r"|refused|denied|unreachable|unavailable|crash(?:ed|es)?|abort(?:ed)?|killed|oom"
    r"|out of memory|segfault|segmentation fault|traceback|deadlock|corrupt(?:ed|ion)?"
    r"|unauthori[sz]ed|forbidden|broken pipe|reset by peer|cannot|unable)\b"
)
MINE_MAX_CHARS = 512  # a template is in the first line; a stack trace below it is noise to Drain
_SEPARATOR = 0x1E  # ASCII record separator: joins bodies for one decode, then one split
_NO_SERVICE = 0  # rate key of records whose service the interner refused (over its cap)

SCHEMA = FeatureSchema(
    names=(
        "severity",
        "severity_error",
        "body_length_log1p",
        "error_keywords_log1p",
        "template_rarity",
        "template_new",
        "template_rate_log1p",
        "template_surge",
        "service_rate_log1p",
        "service_surge",
    ),
    version="logs-1",
)


class _Rates:
    """Exponentially weighted event rates per dense key: ``r <- r * exp(-dt / tau) + n / tau``.

    The sum over past events of ``exp(-age / tau) / tau`` estimates events per second; after
    a silence it has decayed by the time it is next read, since decay is applied on update.
    """

    def __init__(self, tau: float) -> None:
        self.tau = tau
        self._rate = np.zeros(64, dtype=np.float64)
        self._last = np.zeros(64, dtype=np.float64)

    def _grow(self, size: int) -> None:
        if size > self._rate.size:
            new = max(size, 2 * self._rate.size)
            self._rate = np.concatenate([self._rate, np.zeros(new - self._rate.size)])
            self._last = np.concatenate([self._last, np.zeros(new - self._last.size)])

    def reset(self, keys: I64, now: float) -> None:
        self._grow(int(keys.max(initial=-1)) + 1)
        self._rate[keys] = 0.0
        self._last[keys] = now

    def update(self, keys: I64, now: float) -> F64:
        """Count one event per element of ``keys`` at ``now``; each element's key's rate after."""
        if keys.size == 0:
            return np.zeros(0, dtype=np.float64)
        unique, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        self._grow(int(unique[-1]) + 1)
        elapsed = np.maximum(now - self._last[unique], 0.0)
        rate = self._rate[unique] * np.exp(-elapsed / self.tau) + counts / self.tau
        self._rate[unique] = rate
        self._last[unique] = now
        result: F64 = rate[inverse.reshape(-1)]
        return result


class LogState:
    """What log features remember between batches: templates, services, rates.

    Parameters
    ----------
    miner
        The template miner; default :class:`~otelai.features.drain.TemplateMiner` defaults.
    interner
        Service names to dense ids (shared with the span features if given).
    fast_window, slow_window
        Time constants of the fast and slow rates, seconds.
    """

    def __init__(
        self,
        *,
        miner: TemplateMiner | None = None,
        interner: Interner | None = None,
        fast_window: float = 10.0,
        slow_window: float = 300.0,
    ) -> None:
        if not 0 < fast_window < slow_window:
            raise ValueError("need 0 < fast_window < slow_window")
        self.miner = miner or TemplateMiner()
        self.interner = interner or Interner()
        self.containers = ResourceCache()
        self.keywords = KeywordCounter()
        self.slow_window = slow_window
        self._template_fast = _Rates(fast_window)
        self._template_slow = _Rates(slow_window)
        self._service_fast = _Rates(fast_window)
        self._service_slow = _Rates(slow_window)

    def rates(self, template_slot: I64, created: NDArray[np.bool_], service_key: I64, now: float) -> F64:
        """Columns: template rate, template surge, service rate, service surge."""
        if created.any():  # a slot reused after an eviction starts from nothing
            fresh = np.unique(template_slot[created])
            self._template_fast.reset(fresh, now)
            self._template_slow.reset(fresh, now)
        floor = 1.0 / self.slow_window
        template_fast = self._template_fast.update(template_slot, now)
        template_slow = self._template_slow.update(template_slot, now)
        service_fast = self._service_fast.update(service_key, now)
        service_slow = self._service_slow.update(service_key, now)
        return np.column_stack(
            [
                np.log1p(template_fast),
                np.log((template_fast + floor) / (template_slow + floor)),
                np.log1p(service_fast),
                np.log((service_fast + floor) / (service_slow + floor)),
            ]
        )


@dataclass(frozen=True, slots=True)
class LogBatch:
    """``n`` log records as columns; row ``i`` of every array is the same record.

    Locators: the record is ``requests[request].resource_logs[resource].scope_logs[scope]
    .log_records[record]``. ``service`` is the interner's id (-1 past its cap). ``bodies`` are
    the decoded bodies (non-string bodies rendered as text). ``template_slot`` indexes the
    miner's per-template arrays; ``template_id`` is the identity to report.
    """

    request: I32
    resource: I32
    scope: I32
    record: I32
    service: I32
    severity: NDArray[np.int8]
    body_length: I64
    bodies: list[str]
    template_id: I64
    template_slot: I32
    template_new: NDArray[np.bool_]
    template_rarity: F64

    def __len__(self) -> int:
        return int(self.request.size)

    @classmethod
    def from_payloads(cls, payloads: Sequence[bytes], state: LogState) -> LogBatch:
        """Read the records of serialised ``ExportLogsServiceRequest`` payloads.

        Mines each body's template (which teaches the miner). Raises
        :class:`~otelai.features.wire.WireError` on malformed bytes.
        """
        layout = locate_items(payloads, state.containers)
        buf, n = layout.buf, len(layout)
        fields = walk(buf, layout.start, layout.end)
        bodies, body_length, multiline = _bodies(buf, fields, n)
        severity = _severity(buf, fields, n)
        service_ids = np.array([state.interner.service(name) for name in layout.service], dtype=np.int32)
        matches = state.miner.add_batch(_mining_lines(bodies, body_length, multiline))
        return cls(
            request=layout.request.astype(np.int32),
            resource=layout.resource.astype(np.int32),
            scope=layout.scope.astype(np.int32),
            record=layout.position.astype(np.int32),
            service=service_ids.take(layout.resource_row) if n else np.zeros(0, np.int32),
            severity=severity,
            body_length=body_length,
            bodies=bodies,
            template_id=matches.ids,
            template_slot=matches.slots,
            template_new=matches.created,
            template_rarity=matches.rarity,
        )


def log_features(
    batch: LogBatch, state: LogState, now: float | None = None
) -> tuple[NDArray[np.float32], FeatureSchema]:
    """The feature matrix of ``batch`` (one row a record, columns as in :data:`SCHEMA`).

    Updates the rates in ``state``: call once per batch. ``now`` is the time of arrival in
    seconds (default ``time.monotonic()``); rates are by arrival, not by record timestamps,
    which replays and clock skew make unreliable.
    """
    now = time.monotonic() if now is None else now
    n = len(batch)
    matrix = np.zeros((n, len(SCHEMA)), dtype=np.float32)
    if n == 0:
        return matrix, SCHEMA
    severity = batch.severity.astype(np.float64)
    matrix[:, 0] = severity / SEVERITY_MAX
    matrix[:, 1] = severity >= SEVERITY_ERROR
    matrix[:, 2] = np.log1p(batch.body_length)
    matrix[:, 3] = np.log1p(state.keywords.count(batch.bodies))
    matrix[:, 4] = batch.template_rarity
    matrix[:, 5] = batch.template_new
    service_key = np.where(batch.service >= 0, batch.service.astype(np.int64) + 1, _NO_SERVICE)
    matrix[:, 6:10] = state.rates(batch.template_slot.astype(np.int64), batch.template_new, service_key, now)
    return matrix, SCHEMA


class KeywordCounter:
    """Error keywords per body: one regex pass over the bodies not seen before.

    Python's ``re`` takes about 2 us for a 50-character line with this alternation, so counts
    are cached by body (bodies up to :data:`MINE_MAX_CHARS`; the cache is cleared when full):
    logs repeat, and a repeated body costs one dict lookup.
    """

    def __init__(self, cache_size: int = 65_536) -> None:
        self.cache_size = cache_size
        self._cache: dict[str, int] = {}

    def count(self, bodies: list[str]) -> I64:
        get = self._cache.get
        known = [get(body, -1) for body in bodies]
        hits = np.array(known, dtype=np.int64)
        missing = np.flatnonzero(hits < 0)
        if missing.size:
            fresh = [bodies[index] for index in missing.tolist()]
            counts = _keyword_hits(fresh)
            hits[missing] = counts
            if len(self._cache) + len(fresh) > self.cache_size:
                self._cache.clear()
            for body, value in zip(fresh, counts.tolist(), strict=True):
                if len(body) <= MINE_MAX_CHARS:
                    self._cache[body] = value
        return hits


def _keyword_hits(bodies: list[str]) -> I64:
    """How many error keywords each body holds (one regex pass over all of them)."""
    text = "\n".join(bodies).lower()
    lengths = np.fromiter(map(len, bodies), dtype=np.int64, count=len(bodies))
    starts = np.cumsum(lengths + 1) - (lengths + 1)
    hits = np.fromiter((match.start() for match in ERROR_KEYWORDS.finditer(text)), dtype=np.int64)
    owner = np.searchsorted(starts, hits, side="right") - 1
    return np.bincount(owner, minlength=len(bodies))


def _severity(buf: U8, fields: Fields, n: int) -> NDArray[np.int8]:
    row = fields.last(SEVERITY_NUMBER, n)
    present = np.flatnonzero(row >= 0)
    number = np.zeros(n, dtype=np.int64)
    if present.size:
        values, _ = read_varints(buf, fields.data.take(row.take(present)))
        number[present] = np.minimum(values, SEVERITY_MAX).astype(np.int64)
    # severity_text only where the number is unset: some logging bridges set just the text
    text_row = fields.last(SEVERITY_TEXT, n)
    missing = np.flatnonzero((number == 0) & (text_row >= 0))
    if missing.size:
        raw = buf.tobytes()
        for index, at in zip(missing.tolist(), text_row.take(missing).tolist(), strict=True):
            text = raw[int(fields.data[at]) : int(fields.end[at])].decode("ascii", errors="replace")
            number[index] = SEVERITY_TEXT_NUMBER.get(text.strip().upper(), 0)
    return number.astype(np.int8)


def _bodies(buf: U8, fields: Fields, n: int) -> tuple[list[str], I64, Bool]:
    """Each record's body as text, its length in bytes, and whether it spans several lines."""
    body_row = fields.last(BODY, n)
    has_body = np.flatnonzero(body_row >= 0)
    start = np.full(n, -1, dtype=np.int64)
    other = np.zeros(0, dtype=np.int64)
    length = np.zeros(n, dtype=np.int64)
    if has_body.size:
        rows = body_row.take(has_body)
        values = walk(buf, fields.data.take(rows), fields.end.take(rows))
        string_row = values.last(ANY_STRING, has_body.size)
        is_string = string_row >= 0
        at = has_body[is_string]
        start[at] = values.data.take(string_row[is_string])
        length[at] = values.end.take(string_row[is_string]) - start[at]
        other_count = sum(values.count(other_tag, has_body.size) for other_tag in ANY_OTHER)
        other = has_body[~is_string & (np.asarray(other_count) > 0)]
    bodies, multiline = _decode_joined(buf, start, length)
    if other.size:
        raw = buf.tobytes()
        for index in other.tolist():
            row = int(body_row[index])
            bodies[index] = _render_any(raw[int(fields.data[row]) : int(fields.end[row])])
            length[index] = len(bodies[index])
            multiline[index] = "\n" in bodies[index]
    return bodies, length, multiline


def _decode_joined(buf: U8, start: I64, length: I64) -> tuple[list[str], Bool]:
    """Decode all ranges with one ``join``, one ``decode`` and one ``split`` on a separator.

    Also says which ranges hold a newline, found on the joined bytes rather than per string.
    (Slicing in a list comprehension measured faster than gathering the bytes with numpy.)
    """
    n = start.size
    multiline = np.zeros(n, dtype=np.bool_)
    if n == 0:
        return [], multiline
    raw = buf.tobytes()
    # start is -1 (length 0) where there is no string body: raw[-1:-1] is empty.
    pieces = [raw[begin : begin + size] for begin, size in zip(start.tolist(), length.tolist(), strict=True)]
    joined = bytes([_SEPARATOR]).join(pieces)
    newlines = np.flatnonzero(np.frombuffer(joined, dtype=np.uint8) == 0x0A)
    if newlines.size:
        slot_first = np.cumsum(length + 1) - (length + 1)  # each range, then one separator
        multiline[np.searchsorted(slot_first, newlines, side="right") - 1] = True
    parts = joined.decode("utf-8", errors="replace").split(chr(_SEPARATOR))
    if len(parts) != n:  # a body holds the separator byte itself: decode one by one
        parts = [piece.decode("utf-8", errors="replace") for piece in pieces]
    return parts, multiline


def _render_any(data: bytes) -> str:
    """Text for a non-string body (rare): scalars as themselves, structures as compact text."""
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue

    value = AnyValue.FromString(data)
    kind = value.WhichOneof("value")
    if kind in {"bool_value", "int_value", "double_value"}:
        return str(getattr(value, kind))
    if kind == "kvlist_value":
        for pair in value.kvlist_value.values:
            if pair.key in {"message", "msg", "body", "log"} and pair.value.HasField("string_value"):
                return pair.value.string_value
        return " ".join(pair.key for pair in value.kvlist_value.values)
    if kind == "array_value":
        return " ".join(v.string_value for v in value.array_value.values if v.HasField("string_value"))
    return f"<{kind or 'empty'}>"


def _mining_lines(bodies: list[str], length: I64, multiline: Bool) -> list[str]:
    """Bodies cut to their first line and :data:`MINE_MAX_CHARS`, only where needed."""
    cut = np.flatnonzero(multiline | (length > MINE_MAX_CHARS))
    if cut.size == 0:
        return bodies
    lines = list(bodies)
    for index in cut.tolist():
        lines[index] = bodies[index].partition("\n")[0][:MINE_MAX_CHARS]
    return lines
