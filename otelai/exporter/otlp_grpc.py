"""OTLP/gRPC exporter: one ``Export`` call per attempt, the request bytes sent untouched.

The channel has no serialiser: the ``Export*ServiceRequest`` bytes the receiver accepted go
on the wire as they are, and the response comes back as bytes. Status codes map to outcomes
as the OTLP specification says (``otlp.md``, "OTLP/gRPC Throttling" and "Failures"):
``RESOURCE_EXHAUSTED`` is retryable only when the server attaches ``google.rpc.RetryInfo``.

The endpoint is ``host:port`` (TLS unless ``tls.insecure``), or, as in the Collector,
``https://host:port`` (always TLS) or ``http://host:port`` (always plaintext). Any other
gRPC target (``dns:///...``, ``unix:...``) is passed to gRPC as is.

``tls.insecure_skip_verify`` cannot be honoured: gRPC Python has no way to turn off server
certificate verification, so such a configuration is refused when the exporter is built.
Trust the server's CA with ``tls.ca_file`` instead, or use the ``otlphttp`` exporter.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence

import grpc
import grpc.aio
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2

from otelai import __version__
from otelai.config import OtlpExporter
from otelai.exporter.base import Exporter, ExportResult
from otelai.exporter.tls import read_client_pems
from otelai.signals import Signal, rejected_in_response

logger = logging.getLogger(__name__)

_RETRYABLE = frozenset(
    {
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)
_STATUS_DETAILS_KEY = "grpc-status-details-bin"
_METADATA_KEY = re.compile(r"[0-9a-z_.\-]+")
_METADATA_VALUE = re.compile(r"[\x20-\x7e]*")


def parse_target(endpoint: str, insecure: bool) -> tuple[str, bool]:
    """The gRPC target and whether to use TLS, from a Collector-style endpoint."""
    if endpoint.startswith("https://"):
        return endpoint.removeprefix("https://").rstrip("/"), True
    if endpoint.startswith("http://"):
        return endpoint.removeprefix("http://").rstrip("/"), False
    return endpoint, not insecure


def retry_delay(trailing_metadata: Sequence[tuple[str, str | bytes]] | None) -> float | None:
    """Seconds from a ``google.rpc.RetryInfo`` in ``grpc-status-details-bin``, if any."""
    for key, value in trailing_metadata or ():
        if key != _STATUS_DETAILS_KEY or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                info = error_details_pb2.RetryInfo()
                detail.Unpack(info)
                delay = info.retry_delay
                return max(0.0, float(delay.seconds) + float(delay.nanos) / 1e9)
    return None


def result_from_error(error: grpc.aio.AioRpcError) -> ExportResult:
    """Map a failed call to an outcome, as the OTLP specification says."""
    code = error.code()
    details = error.details()
    message = f"{code.name}: {details}" if details else code.name
    delay = retry_delay(error.trailing_metadata())
    if code in _RETRYABLE or (code is grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None):
        return ExportResult.retryable(message, retry_after=delay)
    return ExportResult.permanent(message)


def grpc_metadata(headers: Mapping[str, str], exporter: str) -> tuple[tuple[str, str | bytes], ...]:
    """Call metadata from the ``headers`` setting, checked now rather than failing every call.

    Keys are lower-cased (gRPC refuses upper case; HTTP/2 names are lower case anyway); the
    value of a ``-bin`` key is sent as its UTF-8 bytes.
    """
    metadata: list[tuple[str, str | bytes]] = []
    for key, value in headers.items():
        name = key.lower()
        if not _METADATA_KEY.fullmatch(name) or name.startswith("grpc-"):
            raise ValueError(f"exporter {exporter!r}: headers: {key!r} is not a valid gRPC metadata key")
        if name.endswith("-bin"):
            metadata.append((name, value.encode()))
        elif _METADATA_VALUE.fullmatch(value):
            metadata.append((name, value))
        else:
            raise ValueError(
                f"exporter {exporter!r}: headers.{key}: gRPC metadata values must be printable ASCII"
            )
    return tuple(metadata)


_MAX_RECONNECT_BACKOFF_MS = 5000


class OtlpGrpcExporter(Exporter):
    """Sends each request with one unary ``Export`` call over a ``grpc.aio`` channel.

    Parameters
    ----------
    name
        The exporter's name in the configuration (``otlp``, ``otlp/backup``).
    config
        Its settings.

    Raises
    ------
    ValueError
        When the TLS settings cannot be honoured, a PEM file cannot be read or a header
        cannot be sent as gRPC metadata.
    """

    def __init__(self, name: str, config: OtlpExporter) -> None:
        super().__init__(name)
        self._target, secure = parse_target(config.endpoint, config.tls.insecure)
        self._credentials = self._build_credentials(config) if secure else None
        self._options: list[tuple[str, str | int]] = [
            ("grpc.max_send_message_length", int(config.max_send_msg_size_mib * 1024 * 1024)),
            ("grpc.primary_user_agent", f"otelai/{__version__}"),
            # gRPC's own reconnect backoff grows to 120 s; cap it so delivery resumes soon
            # after upstream returns instead of long after our retry already gave up waiting.
            ("grpc.initial_reconnect_backoff_ms", 250),
            ("grpc.min_reconnect_backoff_ms", 250),
            ("grpc.max_reconnect_backoff_ms", _MAX_RECONNECT_BACKOFF_MS),
        ]
        if secure and config.tls.server_name_override:
            self._options.append(("grpc.ssl_target_name_override", config.tls.server_name_override))
        self._metadata = grpc_metadata(config.headers, name)
        self._compression = grpc.Compression.Gzip if config.compression == "gzip" else None
        self._timeout = config.timeout if config.timeout > 0 else None
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict[Signal, grpc.aio.UnaryUnaryMultiCallable] = {}

    def _build_credentials(self, config: OtlpExporter) -> grpc.ChannelCredentials:
        if config.tls.insecure_skip_verify:
            raise ValueError(
                f"exporter {self.name!r}: tls.insecure_skip_verify is not supported by the gRPC exporter "
                "(gRPC Python cannot skip certificate verification); set tls.ca_file to the server's CA, "
                "set tls.insecure: true for plaintext, or use the otlphttp exporter"
            )
        pems = read_client_pems(config.tls, self.name)
        return grpc.ssl_channel_credentials(
            root_certificates=pems.ca, private_key=pems.key, certificate_chain=pems.cert
        )

    async def start(self) -> None:
        self._open()

    def _open(self) -> grpc.aio.Channel:
        if self._channel is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self._target, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(
                    self._target, self._credentials, options=self._options
                )
        return self._channel

    def _method(self, signal: Signal) -> grpc.aio.UnaryUnaryMultiCallable:
        call = self._calls.get(signal)
        if call is None:
            # No (de)serialisers: bytes in, bytes out.
            call = self._open().unary_unary(signal.spec.grpc_method)
            self._calls[signal] = call
        return call

    async def export(self, signal: Signal, data: bytes) -> ExportResult:
        try:
            response = await self._method(signal)(
                data, timeout=self._timeout, metadata=self._metadata, compression=self._compression
            )
        except grpc.aio.AioRpcError as error:
            return result_from_error(error)
        except Exception as exc:  # the hot path never raises
            logger.exception("unexpected gRPC export failure", extra={"exporter": self.name})
            return ExportResult.permanent(f"unexpected error: {exc!r}")
        return _result_from_response(signal, response)

    async def shutdown(self) -> None:
        channel, self._channel = self._channel, None
        self._calls.clear()
        if channel is not None:
            await channel.close()


def _result_from_response(signal: Signal, response: bytes) -> ExportResult:
    try:
        rejected, message = rejected_in_response(signal, response)
    except DecodeError:
        # The server said OK; the data is delivered even if its answer is unreadable.
        return ExportResult.success(message="unreadable Export response")
    return ExportResult.success(rejected=rejected, message=message)
