"""build_exporter finds each built-in exporter through its entry point."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from otelai.config import FileExporter, OtlpExporter, OtlpHttpExporter, load_config
from otelai.exporter import ENTRY_POINT_GROUP, ExporterNotFoundError, build_exporter
from otelai.exporter.file import FileExporter as FilePlugin
from otelai.exporter.otlp_grpc import OtlpGrpcExporter
from otelai.exporter.otlp_http import OtlpHttpExporter as HttpPlugin


def test_builds_every_configured_type(tmp_path: Path) -> None:
    config = load_config(
        text=f"""
exporters:
  otlp: {{endpoint: "gateway:4317", tls: {{insecure: true}}}}
  otlp/backup: {{endpoint: "https://backup:4317"}}
  otlphttp: {{endpoint: "http://gateway:4318"}}
  file: {{path: "{tmp_path / "out.jsonl"}"}}
""",
        environ={},
    )
    built = {name: build_exporter(name, settings) for name, settings in config.exporters.items()}
    assert {name: type(exporter) for name, exporter in built.items()} == {
        "otlp": OtlpGrpcExporter,
        "otlp/backup": OtlpGrpcExporter,
        "otlphttp": HttpPlugin,
        "file": FilePlugin,
    }
    assert all(exporter.name == name for name, exporter in built.items())
    assert not (tmp_path / "out.jsonl").exists()  # building opens nothing; start() does


def test_plugin_errors_surface_with_the_exporter_name() -> None:
    with pytest.raises(ValueError, match="exporter 'otlphttp/bad': endpoint"):
        build_exporter("otlphttp/bad", OtlpHttpExporter(endpoint="gateway:4318"))


def test_missing_plugin_is_a_clear_error() -> None:
    config = FileExporter.model_construct(type="kafka")  # type: ignore[arg-type]
    with pytest.raises(ExporterNotFoundError, match=r"exporter 'kafka': no plugin for type 'kafka'") as info:
        build_exporter("kafka", config)
    assert ENTRY_POINT_GROUP in str(info.value)
    assert "file, otlp, otlphttp" in str(info.value)


def test_package_import_stays_light() -> None:
    code = "import sys, otelai.exporter; print(sorted(m for m in ('grpc', 'aiohttp') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout
    assert out.strip() == "[]"


def test_grpc_config_builds_the_grpc_plugin() -> None:
    exporter = build_exporter("otlp", OtlpExporter(endpoint="gateway:4317"))
    assert isinstance(exporter, OtlpGrpcExporter)
