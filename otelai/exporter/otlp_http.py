"""OTLP/HTTP exporter: one ``POST`` per attempt, protobuf bytes untouched or OTLP JSON.

The URL of a signal is its ``<signal>_endpoint`` setting used as is, else ``endpoint`` with
``/v1/<signal>`` appended, as in the Collector. Responses map to outcomes as the OTLP/HTTP
specification says (``otlp.md``, "Failures" and "OTLP/HTTP Throttling"): 2xx is success (a
partial success counts rejected items, which are not retried); 429, 502, 503 and 504 are
retryable, honouring ``Retry-After``; connection errors and timeouts are retryable; any other
status is permanent.

``tls.insecure`` has no effect here: the URL's scheme decides between HTTP and HTTPS.
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import gzip
import json
import logging
import re
import time
from collections.abc import Mapping

import aiohttp
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from multidict import CIMultiDict
from yarl import URL

from otelai import __version__
from otelai.config import OtlpHttpExporter as OtlpHttpExporterConfig
from otelai.exporter.base import Exporter, ExportResult
from otelai.exporter.tls import ssl_context
from otelai.signals import Signal, rejected_in_response

logger = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({429, 502, 503, 504})
_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"
# zlib's default level: 95% of level 9's ratio at 85% of its time (about 1 ms per 150 KB of spans).
_GZIP_LEVEL = 6
# Compressing more than this in a worker thread keeps the event loop free (zlib drops the GIL).
_INLINE_LIMIT = 64 * 1024
_MAX_ERROR_TEXT = 256
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an RFC 9110 token
_HEADER_VALUE = re.compile(r"[^\x00\r\n]*")


def signal_url(config: OtlpHttpExporterConfig, signal: Signal, exporter: str) -> str:
    """The URL a signal is posted to; validated so that a typo fails at start-up."""
    override: str | None = getattr(config, f"{signal.value}_endpoint")
    key = f"{signal.value}_endpoint" if override else "endpoint"
    url = override or config.endpoint.rstrip("/") + signal.spec.http_path
    try:
        parsed = URL(url)
    except ValueError as exc:
        raise ValueError(f"exporter {exporter!r}: {key}: invalid URL {url!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(
            f"exporter {exporter!r}: {key}: {url!r} must be an http:// or https:// URL "
            "(for example http://gateway:4318)"
        )
    return url


def check_headers(headers: Mapping[str, str], exporter: str) -> None:
    """Refuse header names and values that no request could carry."""
    for key, value in headers.items():
        if not _HEADER_NAME.fullmatch(key):
            raise ValueError(f"exporter {exporter!r}: headers: {key!r} is not a valid HTTP header name")
        if not _HEADER_VALUE.fullmatch(value):
            raise ValueError(f"exporter {exporter!r}: headers.{key}: a value cannot hold CR, LF or NUL")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay in seconds or an HTTP date)."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # "-0000": UTC, by RFC 5322
        when = when.replace(tzinfo=datetime.UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def _media_type(headers: Mapping[str, str]) -> str:
    return headers.get("Content-Type", "").split(";", 1)[0].strip().lower()


def _partial_success(signal: Signal, media_type: str, body: bytes) -> ExportResult:
    if not body:
        return ExportResult.success()
    try:
        if media_type == _JSON:
            response = signal.spec.response_type()
            json_format.Parse(body, response, ignore_unknown_fields=True)
            body = response.SerializeToString()
        rejected, message = rejected_in_response(signal, body)
    except (DecodeError, json_format.ParseError, UnicodeDecodeError):
        # The server took the data; an unreadable answer does not make it undelivered.
        return ExportResult.success(message="unreadable Export response")
    return ExportResult.success(rejected=rejected, message=message)


def _error_text(media_type: str, body: bytes) -> str:
    """The message of a ``google.rpc.Status`` body, or the start of the body's text."""
    try:
        if media_type == _PROTOBUF:
            status = status_pb2.Status()
            status.ParseFromString(body)
            return str(status.message)
        if media_type == _JSON:
            decoded = json.loads(body)
            if isinstance(decoded, dict) and isinstance(decoded.get("message"), str):
                return str(decoded["message"])
    except (DecodeError, ValueError):
        pass
    return body[:_MAX_ERROR_TEXT].decode("utf-8", "replace").strip()


def result_from_response(
    signal: Signal, status: int, headers: Mapping[str, str], body: bytes
) -> ExportResult:
    """Map an HTTP response to an outcome, as the OTLP/HTTP specification says."""
    media_type = _media_type(headers)
    if 200 <= status < 300:
        return _partial_success(signal, media_type, body)
    text = _error_text(media_type, body)
    message = f"HTTP {status}: {text}" if text else f"HTTP {status}"
    if status in _RETRYABLE_STATUS:
        return ExportResult.retryable(message, retry_after=parse_retry_after(headers.get("Retry-After")))
    return ExportResult.permanent(message)


def _describe(exc: BaseException) -> str:
    # TimeoutError and some connection errors carry no text of their own.
    return str(exc) or type(exc).__name__


class OtlpHttpExporter(Exporter):
    """Posts each request to the upstream's OTLP/HTTP receiver with ``aiohttp``.

    Parameters
    ----------
    name
        The exporter's name in the configuration (``otlphttp``, ``otlphttp/backup``).
    config
        Its settings.

    Raises
    ------
    ValueError
        When an endpoint is not an http(s) URL, a header is invalid or a TLS file cannot be read.
    """

    def __init__(self, name: str, config: OtlpHttpExporterConfig) -> None:
        super().__init__(name)
        self._urls = {signal: signal_url(config, signal, name) for signal in Signal}
        check_headers(config.headers, name)
        self._ssl = ssl_context(config.tls, name)
        self._server_hostname = config.tls.server_name_override
        self._json = config.encoding == "json"
        self._gzip = config.compression == "gzip"
        # Case-insensitive, so that a user's "content-type" cannot go out beside ours.
        self._headers = CIMultiDict(config.headers)
        self._headers["Content-Type"] = _JSON if self._json else _PROTOBUF
        self._headers["User-Agent"] = f"otelai/{__version__}"
        if self._gzip:
            self._headers["Content-Encoding"] = "gzip"
        else:
            self._headers.popall("Content-Encoding", None)
        self._timeout = aiohttp.ClientTimeout(total=config.timeout if config.timeout > 0 else None)
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._open()

    def _open(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout, headers=self._headers)
        return self._session

    def _encode(self, signal: Signal, data: bytes) -> bytes:
        body = _request_json(signal, data) if self._json else data
        return gzip.compress(body, compresslevel=_GZIP_LEVEL, mtime=0) if self._gzip else body

    async def _body(self, signal: Signal, data: bytes) -> bytes:
        # JSON conversion walks every item in Python (17 ms for 512 spans): keep it off the loop.
        if self._json or (self._gzip and len(data) > _INLINE_LIMIT):
            return await asyncio.to_thread(self._encode, signal, data)
        return self._encode(signal, data)

    async def export(self, signal: Signal, data: bytes) -> ExportResult:
        url = self._urls[signal]
        try:
            body = await self._body(signal, data)
        except Exception as exc:  # the hot path never raises
            return ExportResult.permanent(f"cannot encode the request: {exc!r}")
        try:
            async with self._open().post(
                url, data=body, ssl=self._ssl, server_hostname=self._server_hostname
            ) as response:
                payload = await response.read()
                return result_from_response(signal, response.status, response.headers, payload)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return ExportResult.retryable(f"POST {url}: {_describe(exc)}")
        except Exception as exc:
            logger.exception("unexpected HTTP export failure", extra={"exporter": self.name})
            return ExportResult.permanent(f"unexpected error: {exc!r}")

    async def shutdown(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _request_json(signal: Signal, data: bytes) -> bytes:
    # Imported here so that the protobuf-only path never loads the JSON code.
    from otelai.otlp_json import request_to_json

    return request_to_json(signal, data).encode()
