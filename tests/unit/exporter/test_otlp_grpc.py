"""OtlpGrpcExporter against a real grpc.aio server on loopback."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from otelai.config import ClientTLS, OtlpExporter
from otelai.exporter.base import ExportOutcome
from otelai.exporter.otlp_grpc import OtlpGrpcExporter, parse_target
from otelai.signals import Signal, success_response

from .exporter_peers import GrpcPeer, GrpcReply, Pki, free_port, grpc_peer, make_pki
from .otlp_samples import sample, traces

GZIP_DISABLED = [("grpc.compression_enabled_algorithms_bitset", 1)]  # identity only


def exporter_for(endpoint: str, **settings: Any) -> OtlpGrpcExporter:
    settings.setdefault("tls", ClientTLS(insecure=True))
    return OtlpGrpcExporter("otlp", OtlpExporter(endpoint=endpoint, **settings))


@pytest.fixture
async def peer() -> AsyncIterator[GrpcPeer]:
    async with grpc_peer() as running:
        yield running


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def server_credentials(pki: Pki, *, require_client_cert: bool = False) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(pki.server_key.read_bytes(), pki.server_cert.read_bytes())],
        root_certificates=pki.ca.read_bytes() if require_client_cert else None,
        require_client_auth=require_client_cert,
    )


@pytest.mark.parametrize("signal", list(Signal))
async def test_bytes_arrive_untouched(peer: GrpcPeer, signal: Signal) -> None:
    exporter = exporter_for(f"127.0.0.1:{peer.port}")
    await exporter.start()
    data = sample(signal)
    result = await exporter.export(signal, data)
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.SUCCESS
    assert result.rejected == 0
    [received] = peer.requests
    assert received.path == signal.spec.grpc_method
    assert received.body == data


async def test_export_without_start_opens_the_channel(peer: GrpcPeer) -> None:
    exporter = exporter_for(f"127.0.0.1:{peer.port}")
    first = await exporter.export(Signal.TRACES, traces())
    second = await exporter.export(Signal.LOGS, sample(Signal.LOGS))
    await exporter.shutdown()
    assert (first.outcome, second.outcome) == (ExportOutcome.SUCCESS, ExportOutcome.SUCCESS)
    assert len(peer.requests) == 2


async def test_headers_are_sent_as_metadata(peer: GrpcPeer) -> None:
    exporter = exporter_for(
        f"127.0.0.1:{peer.port}", headers={"Authorization": "Bearer s3cret", "X-Tenant": "edge-1"}
    )
    await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    headers = peer.requests[0].headers
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["x-tenant"] == "edge-1"
    assert headers["user-agent"].startswith("otelai/")


async def test_gzip_compresses_the_message() -> None:
    # A server that accepts only uncompressed messages tells gzip from none for us.
    async with grpc_peer(options=GZIP_DISABLED) as strict:
        gzipped = exporter_for(f"127.0.0.1:{strict.port}", compression="gzip")
        plain = exporter_for(f"127.0.0.1:{strict.port}", compression="none")
        refused = await gzipped.export(Signal.TRACES, traces())
        accepted = await plain.export(Signal.TRACES, traces())
        await gzipped.shutdown()
        await plain.shutdown()
    assert refused.outcome is ExportOutcome.PERMANENT
    assert "UNIMPLEMENTED" in refused.message and "gzip" in refused.message
    assert accepted.outcome is ExportOutcome.SUCCESS


async def test_gzip_bytes_arrive_untouched(peer: GrpcPeer) -> None:
    exporter = exporter_for(f"127.0.0.1:{peer.port}", compression="gzip")
    data = traces(spans=200)
    result = await exporter.export(Signal.TRACES, data)
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.SUCCESS
    assert peer.requests[0].body == data


async def test_partial_success_counts_rejected_items(peer: GrpcPeer) -> None:
    peer.reply = GrpcReply(response=success_response(Signal.TRACES, rejected=2, message="2 spans too old"))
    exporter = exporter_for(f"127.0.0.1:{peer.port}")
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.SUCCESS
    assert (result.rejected, result.message) == (2, "2 spans too old")


async def test_unreadable_ok_response_is_still_success(peer: GrpcPeer) -> None:
    peer.reply = GrpcReply(response=b"\xff\xff\xff")
    exporter = exporter_for(f"127.0.0.1:{peer.port}")
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.SUCCESS
    assert result.rejected == 0


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.OUT_OF_RANGE,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    ],
)
async def test_retryable_codes(peer: GrpcPeer, code: grpc.StatusCode) -> None:
    peer.reply = GrpcReply(code=code, details="try later")
    exporter = exporter_for(f"127.0.0.1:{peer.port}")
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.RETRYABLE
    assert result.message == f"{code.name}: try later"
    assert result.retry_after is None


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN,
    ],
)
async def test_permanent_codes(peer: GrpcPeer, code: grpc.StatusCode) -> None:
    peer.reply = GrpcReply(code=code, details="no")
    exporter = exporter_for(f"127.0.0.1:{peer.port}")
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.PERMANENT
    assert result.message == f"{code.name}: no"


async def test_resource_exhausted_without_retry_info_is_permanent(peer: GrpcPeer) -> None:
    peer.reply = GrpcReply(code=grpc.StatusCode.RESOURCE_EXHAUSTED, details="quota")
    exporter = exporter_for(f"127.0.0.1:{peer.port}")
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.PERMANENT


async def test_resource_exhausted_with_retry_info_is_retryable_after_the_delay(peer: GrpcPeer) -> None:
    peer.reply = GrpcReply(code=grpc.StatusCode.RESOURCE_EXHAUSTED, details="slow down", retry_delay=2.5)
    exporter = exporter_for(f"127.0.0.1:{peer.port}")
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.RETRYABLE
    assert result.retry_after == pytest.approx(2.5)


async def test_unavailable_carries_the_servers_retry_delay(peer: GrpcPeer) -> None:
    peer.reply = GrpcReply(code=grpc.StatusCode.UNAVAILABLE, retry_delay=0.25)
    exporter = exporter_for(f"127.0.0.1:{peer.port}")
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.RETRYABLE
    assert result.retry_after == pytest.approx(0.25)


async def test_timeout_is_retryable(peer: GrpcPeer) -> None:
    peer.reply = GrpcReply(hang=True)
    exporter = exporter_for(f"127.0.0.1:{peer.port}", timeout="50ms")
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.RETRYABLE
    assert result.message.startswith("DEADLINE_EXCEEDED")


async def test_nobody_listening_is_retryable() -> None:
    exporter = exporter_for(f"127.0.0.1:{free_port()}")
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.RETRYABLE
    assert result.message.startswith("UNAVAILABLE")


async def test_message_over_max_send_size_is_permanent(peer: GrpcPeer) -> None:
    exporter = exporter_for(f"127.0.0.1:{peer.port}", max_send_msg_size_mib=0.001)
    result = await exporter.export(Signal.TRACES, traces(spans=50))
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.PERMANENT
    assert result.message.startswith("RESOURCE_EXHAUSTED")
    assert peer.requests == []


async def test_http_scheme_means_plaintext(peer: GrpcPeer) -> None:
    exporter = exporter_for(f"http://127.0.0.1:{peer.port}", tls=ClientTLS())
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.SUCCESS


@pytest.mark.parametrize("endpoint", ["127.0.0.1:{port}", "https://127.0.0.1:{port}"])
async def test_tls_with_the_servers_ca(pki: Pki, endpoint: str) -> None:
    async with grpc_peer(server_credentials(pki)) as peer:
        exporter = exporter_for(endpoint.format(port=peer.port), tls=ClientTLS(ca_file=str(pki.ca)))
        result = await exporter.export(Signal.TRACES, traces())
        await exporter.shutdown()
    assert result.outcome is ExportOutcome.SUCCESS
    assert peer.requests[0].body == traces()


async def test_tls_with_an_unknown_ca_fails_retryably(pki: Pki) -> None:
    async with grpc_peer(server_credentials(pki)) as peer:
        exporter = exporter_for(f"127.0.0.1:{peer.port}", tls=ClientTLS(ca_file=str(pki.other_ca)))
        result = await exporter.export(Signal.TRACES, traces())
        await exporter.shutdown()
    assert result.outcome is ExportOutcome.RETRYABLE
    assert peer.requests == []


async def test_https_scheme_overrides_insecure(pki: Pki) -> None:
    async with grpc_peer(server_credentials(pki)) as peer:
        exporter = exporter_for(
            f"https://127.0.0.1:{peer.port}", tls=ClientTLS(insecure=True, ca_file=str(pki.ca))
        )
        result = await exporter.export(Signal.TRACES, traces())
        await exporter.shutdown()
    assert result.outcome is ExportOutcome.SUCCESS


async def test_mutual_tls(pki: Pki) -> None:
    async with grpc_peer(server_credentials(pki, require_client_cert=True)) as peer:
        with_cert = exporter_for(
            f"127.0.0.1:{peer.port}",
            tls=ClientTLS(ca_file=str(pki.ca), cert_file=str(pki.client_cert), key_file=str(pki.client_key)),
        )
        without_cert = exporter_for(f"127.0.0.1:{peer.port}", tls=ClientTLS(ca_file=str(pki.ca)))
        accepted = await with_cert.export(Signal.TRACES, traces())
        refused = await without_cert.export(Signal.TRACES, traces())
        await with_cert.shutdown()
        await without_cert.shutdown()
    assert accepted.outcome is ExportOutcome.SUCCESS
    assert refused.outcome is ExportOutcome.RETRYABLE
    assert len(peer.requests) == 1


async def test_server_name_override(tmp_path: Path) -> None:
    pki = make_pki(tmp_path, server_names=("DNS:upstream.example",))
    async with grpc_peer(server_credentials(pki)) as peer:
        tls = ClientTLS(ca_file=str(pki.ca), server_name_override="upstream.example")
        exporter = exporter_for(f"127.0.0.1:{peer.port}", tls=tls)
        result = await exporter.export(Signal.TRACES, traces())
        await exporter.shutdown()
    assert result.outcome is ExportOutcome.SUCCESS


def test_insecure_skip_verify_is_refused_at_construction(pki: Pki) -> None:
    with pytest.raises(ValueError, match=r"exporter 'otlp': tls.insecure_skip_verify is not supported"):
        exporter_for("gateway:4317", tls=ClientTLS(insecure_skip_verify=True))


def test_insecure_skip_verify_is_irrelevant_without_tls() -> None:
    exporter_for("gateway:4317", tls=ClientTLS(insecure=True, insecure_skip_verify=True))


def test_unreadable_ca_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"exporter 'otlp': tls.ca_file: cannot read .*missing.pem"):
        exporter_for("gateway:4317", tls=ClientTLS(ca_file=str(tmp_path / "missing.pem")))


def test_client_cert_without_key_is_refused(pki: Pki) -> None:
    with pytest.raises(ValueError, match=r"cert_file and tls\.key_file must be set together"):
        exporter_for("gateway:4317", tls=ClientTLS(ca_file=str(pki.ca), cert_file=str(pki.client_cert)))


@pytest.mark.parametrize(
    ("endpoint", "insecure", "expected"),
    [
        ("gateway:4317", False, ("gateway:4317", True)),
        ("gateway:4317", True, ("gateway:4317", False)),
        ("http://gateway:4317", False, ("gateway:4317", False)),
        ("https://gateway:4317/", True, ("gateway:4317", True)),
        ("dns:///gateway:4317", True, ("dns:///gateway:4317", False)),
    ],
)
def test_parse_target(endpoint: str, insecure: bool, expected: tuple[str, bool]) -> None:
    assert parse_target(endpoint, insecure) == expected


async def test_binary_header_is_sent_as_bytes(peer: GrpcPeer) -> None:
    exporter = exporter_for(f"127.0.0.1:{peer.port}", headers={"X-Token-Bin": "raw"})
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.SUCCESS
    assert peer.requests[0].headers["x-token-bin"] == b"raw"  # type: ignore[comparison-overlap]


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"X Tenant": "a"}, "'X Tenant' is not a valid gRPC metadata key"),
        ({"grpc-timeout": "1S"}, "'grpc-timeout' is not a valid gRPC metadata key"),
        ({"x-tenant": "caf\u00e9"}, r"headers\.x-tenant: gRPC metadata values must be printable ASCII"),
        ({"x-tenant": "a\nb"}, r"headers\.x-tenant: gRPC metadata values must be printable ASCII"),
    ],
)
def test_invalid_headers_are_refused_at_construction(headers: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        exporter_for("gateway:4317", headers=headers)
