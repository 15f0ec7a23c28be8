"""OpenTelemetry Demo windows (as an OpenSearch store kept them) turned back into OTLP traces.

A window ``W`` is ``traces_W.json.gz`` (a JSON list of search hits whose ``_source`` is one
span in the Data Prepper / OpenSearch trace layout) and, beside it, ``metadata_W.json`` (the
feature flag switched on, its variant, the root cause). Each span document is converted field
by field into ``opentelemetry.proto.trace.v1.Span``; spans with the same resource attributes
share a ``ResourceSpans``, and those with the same instrumentation scope a ``ScopeSpans``.

The store adds fields of its own that were never part of the span (``data_stream`` in the
attributes, ``@timestamp``, ``_index``, ``sort``); they are dropped.
"""

from __future__ import annotations

import gzip
import json
import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, TypeVar

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from otelai.replay.batch import Batch, SourceError
from otelai.signals import Signal

log = logging.getLogger(__name__)

_E = TypeVar("_E")

DEFAULT_MAX_SPANS = 512

# Subfolders of the data set's root, replayed normal data first.
SPLITS = ("train", "eval")

_TRACES_FILE = re.compile(r"^traces_(?P<name>.+)\.json(?:\.gz)?$")
_METADATA_FILE = re.compile(r"^metadata_(?P<name>.+)\.json$")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d\d)-(\d\d)[Tt ](\d\d):(\d\d):(\d\d)(?:\.(\d+))?(?:([Zz])|([+-])(\d\d):(\d\d))$"
)
_EPOCH_ORDINAL = date(1970, 1, 1).toordinal()
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

_KINDS: dict[str, Span.SpanKind.ValueType] = {
    "unspecified": Span.SPAN_KIND_UNSPECIFIED,
    "internal": Span.SPAN_KIND_INTERNAL,
    "server": Span.SPAN_KIND_SERVER,
    "client": Span.SPAN_KIND_CLIENT,
    "producer": Span.SPAN_KIND_PRODUCER,
    "consumer": Span.SPAN_KIND_CONSUMER,
}
_STATUS_CODES: dict[str, Status.StatusCode.ValueType] = {
    "unset": Status.STATUS_CODE_UNSET,
    "ok": Status.STATUS_CODE_OK,
    "error": Status.STATUS_CODE_ERROR,
}
# The store's own attribute, added to every document; never the application's.
_STORE_ATTRIBUTE = "data_stream"
_KNOWN_SPAN_FIELDS = frozenset(
    {
        "traceId",
        "spanId",
        "parentSpanId",
        "traceState",
        "flags",
        "name",
        "kind",
        "startTime",
        "endTime",
        "durationInNanos",
        "attributes",
        "droppedAttributesCount",
        "events",
        "droppedEventsCount",
        "links",
        "droppedLinksCount",
        "status",
        "resource",
        "instrumentationScope",
        "@timestamp",
        "traceGroup",
        "traceGroupFields",
        "serviceName",
    }
)
_reported_unknown: set[str] = set()


@dataclass(frozen=True)
class Window:
    """One captured window.

    Attributes
    ----------
    name
        ``W`` of ``traces_W.json.gz`` (for example ``eval12_cartFailure_on``).
    path
        The traces file.
    metadata
        ``metadata_W.json`` (``flag``, ``variant``, ``ground_truth_root_cause`` ...), empty if absent.
    """

    name: str
    path: Path
    metadata: dict[str, Any] = field(default_factory=dict)


def _natural_key(name: str) -> list[Any]:
    # eval2 before eval10: the windows were numbered in capture order.
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", name)]


def _read_metadata(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("otel-demo: ignoring unreadable metadata %s: %s", path, exc)
        return {}
    return data if isinstance(data, dict) else {"value": data}


def _window_from_file(path: Path) -> Window:
    match = _TRACES_FILE.match(path.name)
    if match is None:
        raise ValueError(f"{path}: not an otel-demo traces file (expected traces_<window>.json.gz)")
    name = match["name"]
    return Window(name, path, _read_metadata(path.with_name(f"metadata_{name}.json")))


def _windows_in_folder(folder: Path) -> Iterator[Window]:
    traces: dict[str, Path] = {}
    names: set[str] = set()
    for entry in folder.iterdir():
        if match := _TRACES_FILE.match(entry.name):
            # A window kept both compressed and plain: the compressed one is the original.
            if match["name"] not in traces or entry.name.endswith(".gz"):
                traces[match["name"]] = entry
            names.add(match["name"])
        elif match := _METADATA_FILE.match(entry.name):
            names.add(match["name"])
    for name in sorted(names, key=_natural_key):
        if name not in traces:
            log.info("otel-demo: skipping window %s in %s: it has no traces file", name, folder)
            continue
        yield Window(name, traces[name], _read_metadata(folder / f"metadata_{name}.json"))


def iter_windows(path: Path) -> Iterator[Window]:
    """Windows under ``path``, in order; windows without a traces file are skipped (and logged).

    Parameters
    ----------
    path
        The otel-demo folder (holding ``train/`` and ``eval/``, replayed in that order), one of
        those folders, or a single ``traces_W.json.gz`` file.
    """
    path = Path(path)
    if path.is_file():
        yield _window_from_file(path)
        return
    if not path.is_dir():
        raise FileNotFoundError(f"otel-demo data not found at {path}")
    splits = [path / split for split in SPLITS if (path / split).is_dir()]
    for folder in splits or [path]:
        yield from _windows_in_folder(folder)


def load_span_documents(path: Path) -> list[dict[str, Any]]:
    """The span documents of a traces file (each hit's ``_source``)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as stream:
        data = json.load(stream)
    if isinstance(data, dict):  # a raw search response rather than its list of hits
        data = data.get("hits", {}).get("hits", [])
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of span documents")
    return [doc["_source"] if isinstance(doc, dict) and "_source" in doc else doc for doc in data]


def parse_rfc3339_nanos(text: str) -> int:
    """Unix nanoseconds of an RFC 3339 timestamp, exact to the nanosecond (no float on the way).

    Fractions of fewer than nine digits are scaled (the store trims trailing zeros); digits past
    the ninth are cut off.
    """
    match = _RFC3339.match(text)
    if match is None:
        raise ValueError(f"invalid RFC 3339 timestamp {text!r}")
    year, month, day, hour, minute, second, fraction, _zulu, sign, off_h, off_m = match.groups()
    hour_i, minute_i, second_i = int(hour), int(minute), int(second)
    if hour_i > 23 or minute_i > 59 or second_i > 60:
        raise ValueError(f"invalid RFC 3339 timestamp {text!r}")
    try:
        days = date(int(year), int(month), int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError as exc:
        raise ValueError(f"invalid RFC 3339 timestamp {text!r}: {exc}") from None
    seconds = days * 86400 + hour_i * 3600 + minute_i * 60 + second_i
    if sign is not None:
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    nanos = int(fraction[:9].ljust(9, "0")) if fraction else 0
    return seconds * 1_000_000_000 + nanos


def _unsigned_nanos(text: str, what: str) -> int:
    value = parse_rfc3339_nanos(text)
    if value < 0:
        raise ValueError(f"{what} {text!r} is before 1970; OTLP times are unsigned")
    return value


def _id(value: Any, size: int, what: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {value!r} is not hex") from None
    if len(raw) != size:
        raise ValueError(f"{what} {value!r} must be {size} bytes ({2 * size} hex digits)")
    return raw


def _enum(table: Mapping[str, _E], value: Any, prefix: str, what: str) -> _E:
    key = str(value).lower().removeprefix(prefix)
    if key not in table:
        raise ValueError(f"unknown {what} {value!r} (known: {', '.join(table)})")
    return table[key]


def set_any_value(target: AnyValue, value: Any) -> None:
    """Write a JSON value into an ``AnyValue`` with the matching type.

    Lists become ``array_value``, objects ``kvlist_value``; integers outside int64 become strings
    (kept exact rather than rounded into a double); ``null`` leaves the value empty.
    """
    if isinstance(value, str):
        target.string_value = value
    elif isinstance(value, bool):  # before int: bool is an int in Python
        target.bool_value = value
    elif isinstance(value, int):
        if _INT64_MIN <= value <= _INT64_MAX:
            target.int_value = value
        else:
            target.string_value = str(value)
    elif isinstance(value, float):
        target.double_value = value
    elif isinstance(value, list):
        array = target.array_value
        array.SetInParent()  # an empty list is still an array
        for item in value:
            set_any_value(array.values.add(), item)
    elif isinstance(value, dict):
        kvlist = target.kvlist_value
        kvlist.SetInParent()
        set_attributes(kvlist.values, value)
    elif value is not None:
        raise ValueError(f"unsupported attribute value {value!r}")


def set_attributes(target: Any, attributes: Mapping[str, Any] | None, *, drop_store: bool = False) -> None:
    """Append ``attributes`` to a repeated ``KeyValue`` field, in their order."""
    if not attributes:
        return
    for key, value in attributes.items():
        if drop_store and (key == _STORE_ATTRIBUTE or key.startswith(_STORE_ATTRIBUTE + ".")):
            continue
        set_any_value(target.add(key=key).value, value)


def _report_unknown_fields(source: Mapping[str, Any]) -> None:
    unknown = source.keys() - _KNOWN_SPAN_FIELDS - _reported_unknown
    for key in sorted(unknown):
        log.warning("otel-demo: span field %r is not converted", key)
        _reported_unknown.add(key)


def fill_span(span: Span, source: Mapping[str, Any], start_time_unix_nano: int | None = None) -> None:
    """Convert one span document into ``span`` (resource and scope are the caller's)."""
    if not _KNOWN_SPAN_FIELDS.issuperset(source.keys()):
        _report_unknown_fields(source)
    span.trace_id = _id(source.get("traceId"), 16, "traceId")
    span.span_id = _id(source.get("spanId"), 8, "spanId")
    if parent := source.get("parentSpanId"):
        span.parent_span_id = _id(parent, 8, "parentSpanId")
    if trace_state := source.get("traceState"):
        span.trace_state = trace_state
    if (flags := source.get("flags")) is not None:
        span.flags = int(flags)
    span.name = source.get("name") or ""
    span.kind = _enum(_KINDS, source.get("kind") or "unspecified", "span_kind_", "span kind")
    if start_time_unix_nano is None:
        start_time_unix_nano = _unsigned_nanos(source["startTime"], "startTime")
    span.start_time_unix_nano = start_time_unix_nano
    span.end_time_unix_nano = _unsigned_nanos(source["endTime"], "endTime")
    set_attributes(span.attributes, source.get("attributes"), drop_store=True)
    span.dropped_attributes_count = int(source.get("droppedAttributesCount") or 0)
    for doc in source.get("events") or ():
        event = span.events.add(name=doc.get("name") or "")
        stamp = doc.get("time", doc.get("@timestamp"))
        if stamp:
            event.time_unix_nano = _unsigned_nanos(stamp, "event time")
        set_attributes(event.attributes, doc.get("attributes"))
        event.dropped_attributes_count = int(doc.get("droppedAttributesCount") or 0)
    span.dropped_events_count = int(source.get("droppedEventsCount") or 0)
    for doc in source.get("links") or ():
        link = span.links.add(
            trace_id=_id(doc.get("traceId"), 16, "link traceId"),
            span_id=_id(doc.get("spanId"), 8, "link spanId"),
            trace_state=doc.get("traceState") or "",
            dropped_attributes_count=int(doc.get("droppedAttributesCount") or 0),
        )
        if (link_flags := doc.get("flags")) is not None:
            link.flags = int(link_flags)
        set_attributes(link.attributes, doc.get("attributes"))
    span.dropped_links_count = int(source.get("droppedLinksCount") or 0)
    status = source.get("status") or {}
    span.status.code = _enum(_STATUS_CODES, status.get("code") or "unset", "status_code_", "status code")
    if message := status.get("message"):
        span.status.message = message


def _group_key(value: Any) -> str:
    # Canonical JSON: equal attribute sets give equal keys whatever their order, and true != 1.
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _fill_resource_spans(resource_spans: ResourceSpans, resource: Mapping[str, Any]) -> None:
    resource_spans.resource.SetInParent()
    set_attributes(resource_spans.resource.attributes, resource)


def _fill_scope_spans(scope_spans: ScopeSpans, scope: Mapping[str, Any]) -> None:
    target = scope_spans.scope
    target.SetInParent()
    target.name = scope.get("name") or ""
    target.version = scope.get("version") or ""
    set_attributes(target.attributes, scope.get("attributes"))
    target.dropped_attributes_count = int(scope.get("droppedAttributesCount") or 0)
    # The store keeps the scope's schema URL inside the scope; OTLP carries it on ScopeSpans.
    scope_spans.schema_url = scope.get("schemaUrl") or ""


class _RequestBuilder:
    """One request under construction, grouping spans by resource then scope."""

    def __init__(self) -> None:
        self.request = ExportTraceServiceRequest()
        self.spans = 0
        self._resources: dict[str, tuple[ResourceSpans, dict[str, ScopeSpans]]] = {}
        self._canonical: dict[str, str] = {}

    def _key(self, value: Mapping[str, Any]) -> str:
        # repr is exact but depends on key order; canonical JSON is 3x dearer, so only once per repr.
        text = repr(value)
        key = self._canonical.get(text)
        if key is None:
            key = self._canonical[text] = _group_key(value)
        return key

    def add(self, source: Mapping[str, Any], start: int) -> None:
        resource = source.get("resource") or {}
        entry = self._resources.get(resource_key := self._key(resource))
        if entry is None:
            resource_spans = self.request.resource_spans.add()
            _fill_resource_spans(resource_spans, resource)
            entry = self._resources[resource_key] = (resource_spans, {})
        resource_spans, scopes = entry
        scope = source.get("instrumentationScope") or {}
        scope_spans = scopes.get(scope_key := self._key(scope))
        if scope_spans is None:
            scope_spans = scopes[scope_key] = resource_spans.scope_spans.add()
            _fill_scope_spans(scope_spans, scope)
        fill_span(scope_spans.spans.add(), source, start)
        self.spans += 1


def _sorted_by_start(documents: Iterable[Mapping[str, Any]]) -> list[tuple[int, Mapping[str, Any]]]:
    timed = []
    for index, source in enumerate(documents):
        try:
            timed.append((_unsigned_nanos(source["startTime"], "startTime"), source))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"span document {index}: {_describe(exc)}") from None
    timed.sort(key=lambda item: item[0])  # stable: equal starts keep the store's order
    return timed


def _describe(exc: Exception) -> str:
    return f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)


def span_batches(documents: Iterable[Mapping[str, Any]], source: str, max_spans: int) -> list[Batch]:
    """Serialised trace requests of at most ``max_spans`` spans, in start-time order."""
    if max_spans < 1:
        raise ValueError(f"max_spans must be at least 1, got {max_spans}")
    timed = _sorted_by_start(documents)
    batches = []
    for first in range(0, len(timed), max_spans):
        builder = _RequestBuilder()
        for offset, (start, document) in enumerate(timed[first : first + max_spans]):
            try:
                builder.add(document, start)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ValueError(f"span {first + offset} (by start time): {_describe(exc)}") from None
        data = builder.request.SerializeToString()
        batches.append(Batch(Signal.TRACES, data, builder.spans, timed[first][0], source))
    return batches


def window_batches(window: Window, max_spans: int = DEFAULT_MAX_SPANS) -> list[Batch]:
    """A window's requests with their span counts and start times."""
    try:
        documents = load_span_documents(window.path)
        return span_batches(documents, window.name, max_spans)
    except (OSError, EOFError, ValueError) as exc:  # json's decode error is a ValueError
        raise ValueError(f"otel-demo window {window.name} ({window.path}): {exc}") from exc


def window_requests(window: Window, max_spans: int = DEFAULT_MAX_SPANS) -> list[bytes]:
    """A window as serialised ``ExportTraceServiceRequest``s of at most ``max_spans`` spans.

    Spans keep their start-time order across and inside requests; inside a request they are
    grouped by resource, then by scope, in order of first appearance.
    """
    return [batch.data for batch in window_batches(window, max_spans)]


def batches(path: Path, *, max_items: int = DEFAULT_MAX_SPANS) -> Iterator[Batch | SourceError]:
    """Every window under ``path`` as requests; a window that cannot be read is reported, not raised."""
    for window in iter_windows(path):
        try:
            yield from window_batches(window, max_items)
        except ValueError as exc:
            log.error("%s; skipping it", exc)
            yield SourceError(window.name, str(exc))
