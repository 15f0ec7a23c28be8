import subprocess
import sys
from pathlib import Path

import pytest

from otelai import __version__
from otelai.cli import EXIT_CONFIG, main


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"otelai {__version__}"


def test_validate_good_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "good.yaml"
    path.write_text("exporters: {otlp: {endpoint: 'gateway:4317'}, file: {path: out.jsonl}}\n")
    assert main(["validate", "--config", str(path)]) == 0
    assert "valid" in capsys.readouterr().out


def test_validate_names_the_key_and_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("exporters: {otlp: {endpoint: 'gateway:4317', retry_on_failure: {max_elapsed: 5s}}}\n")
    assert main(["validate", "--config", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert str(path) in err
    assert "exporters.otlp.retry_on_failure.max_elapsed: unknown key" in err


def test_serve_with_bad_config_exits_before_starting(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("receivers: {otlp: {protocols: {grpc: {endpoint: 'no-port'}}}}\n")
    done = subprocess.run(
        [sys.executable, "-m", "otelai", "serve", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_CONFIG
    assert "receivers.otlp.protocols.grpc.endpoint" in done.stderr


def test_replay_rejects_bad_header(tmp_path: Path) -> None:
    code = main(
        ["replay", "--dataset", "otel-demo", "--path", str(tmp_path), "--endpoint", "x:1", "--header", "nokv"]
    )
    assert code == EXIT_CONFIG
