"""Client TLS material for the exporters, read once at construction.

Reading the PEM files when the exporter is built turns a wrong path into a start-up error
that names the exporter and the key, instead of an export failure much later.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from otelai.config import ClientTLS


@dataclass(frozen=True, slots=True)
class ClientPems:
    """PEM bytes named by a :class:`~otelai.config.ClientTLS`; ``None`` where not set."""

    ca: bytes | None
    cert: bytes | None
    key: bytes | None


def read_pem(path: str, exporter: str, key: str) -> bytes:
    """Read one PEM file.

    Raises
    ------
    ValueError
        When the file cannot be read or holds no PEM block; the message names the exporter
        and the configuration key.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"exporter {exporter!r}: tls.{key}: cannot read {path}: {exc.strerror}") from exc
    if b"-----BEGIN " not in data:
        raise ValueError(f"exporter {exporter!r}: tls.{key}: {path} holds no PEM data")
    return data


def read_client_pems(tls: ClientTLS, exporter: str) -> ClientPems:
    """Read the CA bundle and the client certificate and key (mutual TLS) of ``tls``."""
    if bool(tls.cert_file) != bool(tls.key_file):
        raise ValueError(f"exporter {exporter!r}: tls.cert_file and tls.key_file must be set together")
    return ClientPems(
        ca=read_pem(tls.ca_file, exporter, "ca_file") if tls.ca_file else None,
        cert=read_pem(tls.cert_file, exporter, "cert_file") if tls.cert_file else None,
        key=read_pem(tls.key_file, exporter, "key_file") if tls.key_file else None,
    )


def ssl_context(tls: ClientTLS, exporter: str) -> ssl.SSLContext:
    """An :class:`ssl.SSLContext` for an HTTPS client configured by ``tls``.

    ``insecure_skip_verify`` turns off both the chain and the host name check, as Go's
    ``InsecureSkipVerify`` does; ``server_name_override`` is applied per request (SNI and
    host name check), not here.
    """
    pems = read_client_pems(tls, exporter)
    context = ssl.create_default_context(cafile=tls.ca_file if pems.ca else None)
    if tls.cert_file and tls.key_file:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(
                f"exporter {exporter!r}: tls.cert_file/tls.key_file: cannot load the client key pair: {exc}"
            ) from exc
    if tls.insecure_skip_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
