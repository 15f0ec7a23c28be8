"""FileExporter writes valid OTLP JSON lines to a real file."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from otelai.config import FileExporter as FileExporterConfig
from otelai.exporter.base import ExportOutcome
from otelai.exporter.file import FileExporter
from otelai.otlp_json import request_from_json
from otelai.signals import Signal

from .otlp_samples import sample, traces


def exporter_at(path: Path) -> FileExporter:
    return FileExporter("file", FileExporterConfig(path=str(path)))


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


async def test_each_request_is_one_valid_otlp_json_line(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "forwarded.jsonl"
    exporter = exporter_at(path)
    await exporter.start()
    results = [await exporter.export(signal, sample(signal)) for signal in Signal]
    await exporter.shutdown()
    assert all(result.outcome is ExportOutcome.SUCCESS for result in results)
    lines = read_lines(path)
    assert len(lines) == 3
    for signal, line in zip(Signal, lines, strict=True):
        assert request_from_json(signal, line.encode()) == signal.spec.request_type.FromString(sample(signal))
    assert (
        json.loads(lines[0])["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"]
        == bytes(range(16)).hex()
    )


async def test_lines_are_visible_before_shutdown(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    exporter = exporter_at(path)
    await exporter.start()
    await exporter.export(Signal.TRACES, traces())
    visible = read_lines(path)
    await exporter.shutdown()
    assert len(visible) == 1


async def test_appends_to_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text('{"resourceSpans":[]}\n')
    exporter = exporter_at(path)
    await exporter.export(Signal.TRACES, traces())  # no start: opens on first export
    await exporter.shutdown()
    assert len(read_lines(path)) == 2


async def test_concurrent_exports_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    exporter = exporter_at(path)
    await exporter.start()
    requests = [traces(spans=50, attribute=str(index) * 500) for index in range(20)]
    results = await asyncio.gather(*(exporter.export(Signal.TRACES, data) for data in requests))
    await exporter.shutdown()
    assert all(result.outcome is ExportOutcome.SUCCESS for result in results)
    lines = read_lines(path)
    assert len(lines) == 20
    parsed = {request_from_json(Signal.TRACES, line.encode()).SerializeToString() for line in lines}
    assert parsed == set(requests)


async def test_a_moved_file_is_recreated(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    exporter = exporter_at(path)
    await exporter.start()
    await exporter.export(Signal.TRACES, traces())
    path.rename(tmp_path / "out.jsonl.1")
    await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert len(read_lines(path)) == 1
    assert len(read_lines(tmp_path / "out.jsonl.1")) == 1


async def test_invalid_request_is_permanent(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    exporter = exporter_at(path)
    await exporter.start()
    result = await exporter.export(Signal.TRACES, b"\xff\xff")
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.PERMANENT
    assert "OTLP JSON" in result.message
    assert path.read_text() == ""


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full to simulate a full disk")
async def test_full_disk_is_retryable() -> None:
    exporter = exporter_at(Path("/dev/full"))
    await exporter.start()
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.RETRYABLE
    assert result.message.startswith("cannot write /dev/full: No space left on device")


async def test_unusable_path_fails_the_start_and_exports_permanently(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    exporter = exporter_at(blocker / "out.jsonl")
    with pytest.raises(OSError):
        await exporter.start()
    result = await exporter.export(Signal.TRACES, traces())
    await exporter.shutdown()
    assert result.outcome is ExportOutcome.PERMANENT
    assert result.message.startswith(f"cannot write {blocker / 'out.jsonl'}")
