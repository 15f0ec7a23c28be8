from pathlib import Path

import pytest

from otelai.config import (
    EMBEDDED_DEFAULT,
    ConfigError,
    FileExporter,
    OtlpExporter,
    OtlpHttpExporter,
    QueueBatch,
    load_config,
    parse_duration,
    parse_size,
)

DESIGN_EXAMPLE = """
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "0.0.0.0:4317"}
      http: {endpoint: "0.0.0.0:4318"}
exporters:
  otlp: {endpoint: "gateway:4317", compression: gzip, tls: {insecure: true},
         sending_queue: {queue_size: 10000, storage: "/var/lib/otelai/queue"},
         retry_on_failure: {max_elapsed_time: "300s"}}
  otlphttp: {endpoint: "http://gateway:4318"}
  file: {path: "./otelai-out/forwarded.jsonl"}
selection:
  normal_sample_rate: 0.05
telemetry:
  metrics: {endpoint: "0.0.0.0:9464"}
"""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("200ms", 0.2),
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("0", 0.0),
        ("1.5s", 1.5),
        ("10us", 1e-5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["", "5", "s", "5 s", "5x", "1m30", 5, None, True])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_sizes() -> None:
    assert parse_size(1024) == 1024
    assert parse_size("4MiB") == 4 * 1024 * 1024
    assert parse_size("1KB") == 1000
    with pytest.raises(ValueError):
        parse_size("4 parsecs")


def test_embedded_default_is_the_documented_default() -> None:
    config = load_config()
    assert config == load_config(text=EMBEDDED_DEFAULT)
    assert config.receivers.otlp.protocols.grpc is not None
    assert config.receivers.otlp.protocols.grpc.endpoint == "0.0.0.0:4317"
    assert config.receivers.otlp.protocols.http is not None
    assert config.receivers.otlp.protocols.http.endpoint == "0.0.0.0:4318"
    assert config.telemetry.metrics is not None
    assert config.telemetry.metrics.endpoint == "0.0.0.0:9464"
    assert isinstance(config.exporters["file"], FileExporter)
    # forwarded requests merged for up to 200ms, as the Collector's batch processor default
    batch = config.exporters["file"].sending_queue.batch
    assert batch is not None
    assert (batch.flush_timeout, batch.min_size) == (pytest.approx(0.2), 8192)
    assert QueueBatch().flush_timeout == 0.0  # the key's own default never waits


def test_design_example_loads() -> None:
    config = load_config(text=DESIGN_EXAMPLE)
    otlp = config.exporters["otlp"]
    assert isinstance(otlp, OtlpExporter)
    assert otlp.sending_queue.storage == "/var/lib/otelai/queue"
    assert otlp.retry_on_failure.max_elapsed_time == 300.0
    assert isinstance(config.exporters["otlphttp"], OtlpHttpExporter)


def test_exporter_names_with_suffix() -> None:
    config = load_config(text="exporters: {otlp/primary: {endpoint: 'a:1'}, otlp/backup: {endpoint: 'b:2'}}")
    assert set(config.exporters) == {"otlp/primary", "otlp/backup"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("exporters: {otlp: {endpoint: 'a:1', compresion: gzip}}", "exporters.otlp.compresion: unknown key"),
        ("bogus: 1", "bogus: unknown key"),
        ("exporters: {otlp: {endpoint: 'a:1', timeout: 5}}", "exporters.otlp.timeout"),
        ("exporters: {kafka: {}}", "unknown type 'kafka'"),
        ("exporters: {otlp: {}}", "exporters.otlp.endpoint: Field required"),
        ("exporters: {}", "at least one exporter"),
        (
            "receivers: {otlp: {protocols: {grpc: {endpoint: nowhere}}}}",
            "receivers.otlp.protocols.grpc.endpoint",
        ),
        ("selection: {normal_sample_rate: 2}", "selection.normal_sample_rate"),
        ("exporters: {otlp: {endpoint: 'a:1', type: otlphttp}}", "unknown key 'type'"),
        ("- a list", "top level must be a mapping"),
        ("a: [unclosed", "invalid YAML"),
    ],
)
def test_errors_name_the_key_and_the_file(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert expected in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file() -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config("/nonexistent/otelai.yaml")


def test_environment_overrides_and_references() -> None:
    env = {
        "OTELAI_SELECTION__NORMAL_SAMPLE_RATE": "0.5",
        "OTELAI_EXPORTERS__OTLP__COMPRESSION": "none",
        "GATEWAY": "gw:4317",
        "OTELAI_UNRELATED": "x",
    }
    config = load_config(text="exporters: {otlp: {endpoint: '${env:GATEWAY}'}}", environ=env)
    otlp = config.exporters["otlp"]
    assert isinstance(otlp, OtlpExporter)
    assert otlp.endpoint == "gw:4317"
    assert otlp.compression == "none"
    assert config.selection.normal_sample_rate == 0.5


def test_bad_override_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"selection\.normal_sample_rate"):
        load_config(environ={"OTELAI_SELECTION__NORMAL_SAMPLE_RATE": "lots"})


def test_config_is_frozen() -> None:
    config = load_config()
    with pytest.raises(ValueError):
        config.selection.normal_sample_rate = 1.0  # type: ignore[misc]
