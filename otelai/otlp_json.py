"""The OTLP JSON encoding, both ways.

OTLP JSON is the proto3 JSON mapping with three deviations (OTLP specification, "JSON
Protobuf Encoding"): trace and span ids are hex strings instead of base64, enums are
integers, and unknown fields are ignored. Keys are lowerCamelCase; the original snake_case
names are accepted on input too, as ``json_format`` does.

Protobuf is the hot path, not JSON: these functions are for OTLP/HTTP JSON requests and for
the ``file`` exporter. Even so, ids are rewritten in place on the objects ``json`` builds
anyway (while decoding, through ``object_hook``; while encoding, along the few known paths
that hold ids) rather than by walking whole messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Iterable
from typing import Any

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from otelai.signals import Signal

# Byte lengths of the id fields; every OTLP message that carries an id uses these names.
_ID_BYTES = {
    "traceId": 16,
    "trace_id": 16,
    "spanId": 8,
    "span_id": 8,
    "parentSpanId": 8,
    "parent_span_id": 8,
}
_ID_KEYS = frozenset(_ID_BYTES)
_HEX = re.compile(r"[0-9a-fA-F]*")
_METRIC_KINDS = ("gauge", "sum", "histogram", "exponentialHistogram", "summary")


def request_from_json(signal: Signal, body: bytes) -> Message:
    """Parse an OTLP JSON ``Export*ServiceRequest``.

    Raises
    ------
    ValueError
        The body is not JSON, not an object, has an id that is not hex of the right
        length, or does not match the schema; the message says which.
    """
    try:
        document = json.loads(body, object_hook=_hex_ids_to_base64)
    except RecursionError as exc:
        raise ValueError("invalid JSON: nested too deeply") from exc
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid JSON: not UTF-8 ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"invalid OTLP JSON: the top level must be an object, got {type(document).__name__}")
    return message_from_dict(signal.spec.request_type(), document)


def message_from_dict(message: Message, document: dict[str, Any]) -> Message:
    """Fill ``message`` from a JSON object whose ids are already base64."""
    try:
        json_format.ParseDict(document, message, ignore_unknown_fields=True)
    except RecursionError as exc:
        raise ValueError("invalid OTLP JSON: nested too deeply") from exc
    except (json_format.ParseError, DecodeError, ValueError, TypeError, AttributeError) as exc:
        raise ValueError(f"invalid OTLP JSON: {exc}") from exc
    return message


def request_to_json(signal: Signal, data: bytes) -> str:
    """One line of OTLP JSON for a serialised ``Export*ServiceRequest``.

    Raises
    ------
    ValueError
        ``data`` is not a valid serialised request.
    """
    try:
        message = signal.spec.request_type.FromString(data)
    except DecodeError as exc:
        raise ValueError(f"invalid {signal.value} request protobuf: {exc}") from exc
    return message_to_json(message, signal)


def message_to_json(message: Message, signal: Signal | None = None) -> str:
    """One line of OTLP JSON for any OTLP message.

    With ``signal``, ``message`` is that signal's request and its ids are written as hex;
    without, the message has no ids (responses, ``google.rpc.Status``).
    """
    document = json_format.MessageToDict(message, use_integers_for_enums=True)
    if signal is not None:
        for holder in _id_holders(signal, document):
            for key in ("traceId", "spanId", "parentSpanId"):
                value = holder.get(key)
                if value:
                    holder[key] = base64.b64decode(value).hex()
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def _hex_ids_to_base64(obj: dict[str, Any]) -> dict[str, Any]:
    # Called for every JSON object; only objects that hold ids are touched. Attribute keys
    # are JSON values ({"key": "traceId"}), never object keys, so they cannot collide.
    if _ID_KEYS.isdisjoint(obj):
        return obj
    for key in _ID_KEYS.intersection(obj):
        obj[key] = _hex_to_base64(key, obj[key])
    return obj


def _hex_to_base64(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"invalid OTLP JSON: {key} must be a hex string, got {type(value).__name__}")
    if not value:
        return ""
    size = _ID_BYTES[key]
    if len(value) != 2 * size or not _HEX.fullmatch(value):
        raise ValueError(f"invalid OTLP JSON: {key} must be {2 * size} hex digits, got {value[:80]!r}")
    return base64.b64encode(binascii.unhexlify(value)).decode("ascii")


def _id_holders(signal: Signal, document: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """The objects of a request dict that may carry ids: spans, links, log records, exemplars."""
    if signal is Signal.TRACES:
        for rs in document.get("resourceSpans", ()):
            for ss in rs.get("scopeSpans", ()):
                for span in ss.get("spans", ()):
                    yield span
                    yield from span.get("links", ())
    elif signal is Signal.LOGS:
        for rl in document.get("resourceLogs", ()):
            for sl in rl.get("scopeLogs", ()):
                yield from sl.get("logRecords", ())
    else:
        for rm in document.get("resourceMetrics", ()):
            for sm in rm.get("scopeMetrics", ()):
                for metric in sm.get("metrics", ()):
                    for kind in _METRIC_KINDS:
                        if kind in metric:
                            for point in metric[kind].get("dataPoints", ()):
                                yield from point.get("exemplars", ())
