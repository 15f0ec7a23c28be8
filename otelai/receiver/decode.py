"""Turning request bodies into OTLP requests, or into a refusal that says why.

Pure functions, no I/O, shared by both receivers. Every failure is a :class:`Refusal`
carrying the HTTP status and gRPC code the OTLP specification asks for, so a malformed,
oversized or hostile body never escapes as another exception.

Protobuf requests keep their original bytes: the hop forwards exactly what it received.
JSON requests are serialised to protobuf once, here.

Protobuf trace and log requests are first checked by the compiled validator
(:mod:`otelai.receiver.wire_check`), which counts items and resources in a fifth of the time
upb takes to parse; only when it is not sure (or numba is missing) are they parsed with upb,
which then accepts or refuses them. So their :class:`Decoded` usually has no parsed request.
"""

from __future__ import annotations

import enum
import logging
import threading
import zlib
from dataclasses import dataclass
from types import ModuleType

import grpc
from google.protobuf.message import DecodeError, Message

from otelai.otlp_json import request_from_json
from otelai.signals import Signal, count_items

log = logging.getLogger(__name__)

# Stacked codings ("gzip, gzip") are legal HTTP but no OTLP client sends more than one;
# capping them bounds the work one request can cause.
MAX_CODINGS = 2
IDENTITY_CODINGS = frozenset({"", "identity", "none"})

_RESOURCE_FIELDS = {
    Signal.TRACES: "resource_spans",
    Signal.METRICS: "resource_metrics",
    Signal.LOGS: "resource_logs",
}
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_ZLIB_WBITS = zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS


class Encoding(enum.Enum):
    """The two OTLP/HTTP payload encodings; the value is the media type."""

    PROTOBUF = "application/x-protobuf"
    JSON = "application/json"

    @property
    def content_type(self) -> str:
        return self.value


class Refusal(Exception):
    """A request the receiver refuses, with the status to answer on each protocol.

    ``reason`` is the ``reason`` label of ``otelai_receiver_refused_requests_total``.
    """

    def __init__(self, http_status: int, grpc_code: grpc.StatusCode, reason: str, message: str) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.grpc_code = grpc_code
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"Refusal({self.http_status}, {self.grpc_code}, {self.reason!r}, {self.message!r})"


def invalid(message: str) -> Refusal:
    """400 / ``INVALID_ARGUMENT``: bad data, the client must not retry."""
    return Refusal(400, grpc.StatusCode.INVALID_ARGUMENT, "invalid", message)


def too_large(message: str) -> Refusal:
    """413 / ``RESOURCE_EXHAUSTED`` without retry information: the client must not retry."""
    return Refusal(413, grpc.StatusCode.RESOURCE_EXHAUSTED, "too_large", message)


def unsupported_media_type(message: str) -> Refusal:
    """415: neither protobuf nor JSON."""
    return Refusal(415, grpc.StatusCode.INVALID_ARGUMENT, "invalid", message)


@dataclass(frozen=True, slots=True)
class Decoded:
    """A checked request and the serialised protobuf to forward.

    ``request`` is the parsed message when the receiver had to parse it (JSON, metrics, trace
    and log requests the validator was not sure of); None for the requests the validator
    counted, which readers then parse from ``data`` themselves.
    """

    request: Message | None
    items: int
    data: bytes
    encoding: Encoding
    resources: int

    @property
    def empty(self) -> bool:
        """True when the request carries no resource at all (nothing to forward)."""
        return self.resources == 0


def encoding_of(content_type: str | None) -> Encoding:
    """The payload encoding named by a ``Content-Type`` header (parameters are ignored).

    Raises
    ------
    Refusal
        415 for anything but ``application/x-protobuf`` and ``application/json``.
    """
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type == Encoding.PROTOBUF.value:
        return Encoding.PROTOBUF
    if media_type == Encoding.JSON.value:
        return Encoding.JSON
    shown = media_type[:100] or "none"
    raise unsupported_media_type(
        f"unsupported content type {shown!r}; use application/x-protobuf or application/json"
    )


def decompress(body: bytes, content_encoding: str | None, limit: int) -> bytes:
    """Undo the ``Content-Encoding`` of ``body``, producing at most ``limit`` bytes.

    Supports ``gzip`` (several members too), ``deflate`` (zlib-wrapped, as the Collector
    and the OpenTelemetry SDKs send it, or raw), and ``identity``. Decompression stops as
    soon as the output passes ``limit``, so a compression bomb costs no more than that.

    Raises
    ------
    Refusal
        413 when the output would pass ``limit``; 400 for a corrupt or truncated stream
        and for an unsupported coding (the Collector's ``confighttp`` answers 400 too).
    """
    codings = [token.strip().lower() for token in (content_encoding or "").split(",")]
    codings = [coding for coding in codings if coding not in IDENTITY_CODINGS]
    if len(codings) > MAX_CODINGS:
        raise invalid(f"too many content codings ({len(codings)}); at most {MAX_CODINGS}")
    data = body
    for coding in reversed(codings):  # codings are listed in the order they were applied
        if coding in ("gzip", "x-gzip"):
            data = _gunzip(data, limit)
        elif coding == "deflate":
            data = _inflate_all(data, _deflate_wbits(data), limit, "deflate")
        else:
            raise invalid(f"unsupported Content-Encoding {coding[:100]!r}; use gzip, deflate or identity")
    return data


def parse(signal: Signal, data: bytes, encoding: Encoding) -> Decoded:
    """Parse, or for protobuf traces and logs only check, a decompressed body.

    For protobuf, ``Decoded.data`` is ``data`` itself, never re-serialised; for JSON it
    is the request serialised once. Protobuf traces and logs the compiled validator vouches
    for are not parsed (``Decoded.request`` is None); the rest are parsed with upb, which
    accepts or refuses them, exactly as without the validator.

    Raises
    ------
    Refusal
        400 when the body is not a valid request of ``signal``.
    """
    if encoding is Encoding.PROTOBUF:
        if signal is not Signal.METRICS:
            counts = _checked_counts(signal, data)
            if counts is not None:
                return Decoded(None, counts[0], data, encoding, counts[1])
        request = parse_protobuf(signal, data)
        forwarded = data
    else:
        try:
            request = request_from_json(signal, data)
        except ValueError as exc:
            raise invalid(str(exc)) from None
        except Exception as exc:  # the decoder is the edge: nothing else may escape it
            raise invalid(f"invalid OTLP JSON: {exc!r}"[:500]) from None
        forwarded = request.SerializeToString()
    resources = len(getattr(request, _RESOURCE_FIELDS[signal]))
    return Decoded(request, count_items(signal, request), forwarded, encoding, resources)


def parse_protobuf(signal: Signal, data: bytes) -> Message:
    """Parse a serialised ``Export*ServiceRequest`` of ``signal``.

    Raises
    ------
    Refusal
        400 / ``INVALID_ARGUMENT`` when ``data`` is not one.
    """
    try:
        return signal.spec.request_type.FromString(data)
    except DecodeError as exc:
        raise invalid(f"malformed {signal.value} protobuf: {exc}") from None
    except Exception as exc:  # e.g. RecursionError on absurd nesting
        raise invalid(f"malformed {signal.value} protobuf: {exc!r}"[:500]) from None


class _WireCheck:
    """The compiled validator, loaded once (None: numba missing or failing)."""

    lock = threading.Lock()
    tried = False
    module: ModuleType | None = None


def prepare_wire_check() -> bool:
    """Load and compile the validator now rather than on the first trace or log request.

    Compiling takes seconds on a busy machine (numba's on-disk cache makes later starts
    fast); the receivers call this as they start. Returns whether the validator is in use:
    without numba, or when it fails to compile, every request is parsed with upb.
    """
    if not _WireCheck.tried:
        with _WireCheck.lock:
            if not _WireCheck.tried:
                _WireCheck.module = _load_wire_check()
                _WireCheck.tried = True
    return _WireCheck.module is not None


def _load_wire_check() -> ModuleType | None:
    try:
        from otelai.receiver import wire_check

        wire_check.warm_up()
    except ImportError as exc:
        log.info("numba not available, requests are parsed with upb", extra={"error": str(exc)})
        return None
    except Exception:  # a numba or LLVM failure: fail over to upb, never to accepting
        log.exception("compiling the request validator failed, requests are parsed with upb")
        return None
    return wire_check


def _checked_counts(signal: Signal, data: bytes) -> tuple[int, int] | None:
    """(items, resources) of a request the validator vouches for; None: parse it with upb."""
    module = _WireCheck.module if prepare_wire_check() else None
    if module is None:
        return None
    try:
        counts: tuple[int, int] | None = module.check(data, signal)
    except Exception:  # never seen: upb decides, now and from now on
        log.exception("the request validator failed, requests are parsed with upb from now on")
        _WireCheck.module = None
        return None
    return counts


def decode_http_body(
    signal: Signal,
    body: bytes,
    *,
    content_type: str | None,
    content_encoding: str | None,
    limit: int,
) -> Decoded:
    """Everything between an OTLP/HTTP body as received and the request it carries.

    ``limit`` bounds the body both as received and after decompression.

    Raises
    ------
    Refusal
        415, 413 or 400; see :func:`encoding_of`, :func:`decompress`, :func:`parse`.
    """
    encoding = encoding_of(content_type)
    if len(body) > limit:
        raise too_large(f"request body of {len(body)} bytes exceeds the limit of {limit} bytes")
    return parse(signal, decompress(body, content_encoding, limit), encoding)


def _gunzip(data: bytes, limit: int) -> bytes:
    # A gzip file may hold several members, read one after the other (RFC 1952, 2.2).
    parts: list[bytes] = []
    remaining, rest = limit, data
    while True:
        part, rest = _inflate(rest, _GZIP_WBITS, remaining, "gzip")
        parts.append(part)
        remaining -= len(part)
        if not rest:
            return parts[0] if len(parts) == 1 else b"".join(parts)


def _deflate_wbits(data: bytes) -> int:
    # HTTP "deflate" is the zlib format (RFC 9110, 8.4.1.2), but some clients send raw
    # deflate; the two-byte zlib header tells them apart.
    if len(data) >= 2 and data[0] & 0x0F == 8 and ((data[0] << 8) | data[1]) % 31 == 0:
        return _ZLIB_WBITS
    return _RAW_DEFLATE_WBITS


def _inflate_all(data: bytes, wbits: int, limit: int, name: str) -> bytes:
    out, rest = _inflate(data, wbits, limit, name)
    if rest:
        raise invalid(f"invalid {name} body: {len(rest)} bytes of trailing data after the stream")
    return out


def _inflate(data: bytes, wbits: int, limit: int, name: str) -> tuple[bytes, bytes]:
    """One compressed stream of ``data``, and the bytes after it."""
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise invalid(f"invalid {name} body: {exc}") from None
    if len(out) > limit:
        raise too_large(f"decompressed request body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise invalid(f"invalid {name} body: truncated stream")
    return out, inflater.unused_data
