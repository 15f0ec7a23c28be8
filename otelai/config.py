"""One typed configuration, loaded once and validated at the edge.

Key names follow the OpenTelemetry Collector where the concept is the same. Unknown keys
are errors; durations are strings with units ("200ms", "30s", "1m30s"); sizes may carry
units ("4MiB"). ``OTELAI_*`` environment variables override keys of the file:
``OTELAI_EXPORTERS__OTLP__ENDPOINT=gateway:4317`` sets ``exporters.otlp.endpoint``
(``__`` separates levels; the value is read as a YAML scalar). ``${env:NAME}`` in the
file is replaced by the variable's value, as in the Collector.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

ENV_PREFIX = "OTELAI_"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "kib": 1024,
    "mb": 1000**2,
    "mib": 1024**2,
    "gb": 1000**3,
    "gib": 1024**3,
}


class ConfigError(Exception):
    """A configuration problem; the message names the file and the key."""


def parse_duration(value: Any) -> float:
    """Seconds from a Go-style duration string such as ``"1m30s"`` or ``"200ms"``."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"a duration must be a string with a unit such as '200ms' or '30s', got {value!r}")
    text = value.strip()
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != pos:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {value!r}: use a number with a unit (ns, us, ms, s, m, h)")
    return total


def parse_size(value: Any) -> int:
    """Bytes from an integer or a string with a unit such as ``"4MiB"``."""
    if isinstance(value, bool):
        raise ValueError(f"invalid size {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a size cannot be negative, got {value}")
        return value
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"invalid size {value!r}: use bytes or a unit (KiB, MiB, GiB, KB, MB, GB)")
    return int(float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()])


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_host_port(value: str) -> str:
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"endpoint must be host:port, got {value!r}")
    return value


class ServerTLS(_Model):
    """TLS for a receiver; ``client_ca_file`` turns on mutual TLS."""

    cert_file: str
    key_file: str
    client_ca_file: str | None = None


class Auth(_Model):
    """Bearer-token check on incoming requests (``Authorization: Bearer <token>``)."""

    bearer_token: str | None = None
    bearer_token_file: str | None = None

    def token(self) -> str | None:
        if self.bearer_token_file:
            return Path(self.bearer_token_file).read_text().strip()
        return self.bearer_token


class GrpcReceiver(_Model):
    endpoint: str = "0.0.0.0:4317"
    max_recv_msg_size_mib: float = Field(default=4.0, gt=0)
    tls: ServerTLS | None = None
    auth: Auth | None = None

    _endpoint = field_validator("endpoint")(_check_host_port)


class HttpReceiver(_Model):
    endpoint: str = "0.0.0.0:4318"
    max_request_body_size: Size = 20 * 1024 * 1024
    tls: ServerTLS | None = None
    auth: Auth | None = None

    _endpoint = field_validator("endpoint")(_check_host_port)


class Protocols(_Model):
    grpc: GrpcReceiver | None = None
    http: HttpReceiver | None = None


class OtlpReceiver(_Model):
    protocols: Protocols = Protocols(grpc=GrpcReceiver(), http=HttpReceiver())


class Receivers(_Model):
    otlp: OtlpReceiver = OtlpReceiver()


class ClientTLS(_Model):
    """TLS for an exporter, as the Collector's ``configtls`` client settings."""

    insecure: bool = False
    insecure_skip_verify: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name_override: str | None = None


class QueueBatch(_Model):
    """Merging queued requests at send time, as the Collector's ``sending_queue.batch``.

    ``flush_timeout: 0`` (the default) merges only what is already queued and never waits, so
    it adds no latency; a wait (the Collector's usual 200ms) merges more and writes each
    resource once per merged request, at the cost of that much delivery delay.
    """

    flush_timeout: Duration = 0.0
    min_size: int = Field(default=0, ge=0)
    max_size: int = Field(default=8192, ge=0)  # 0: no limit
    sizer: Literal["requests", "items", "bytes"] = "items"

    @model_validator(mode="after")
    def _sizes(self) -> QueueBatch:
        if self.max_size and self.max_size < self.min_size:
            raise ValueError("max_size must be 0 or at least min_size")
        return self


class SendingQueue(_Model):
    """Bounded queue in front of an exporter; ``storage`` makes it persistent."""

    num_consumers: int = Field(default=4, ge=1)
    queue_size: int = Field(default=1000, ge=1)
    sizer: Literal["requests", "items", "bytes"] = "requests"
    storage: str | None = None
    batch: QueueBatch | None = QueueBatch()  # null: every request is sent as it was queued


class RetryOnFailure(_Model):
    """Exponential backoff with jitter, as the Collector's ``configretry``."""

    enabled: bool = True
    initial_interval: Duration = 5.0
    randomization_factor: float = Field(default=0.5, ge=0, le=1)
    multiplier: float = Field(default=1.5, ge=1)
    max_interval: Duration = 30.0
    max_elapsed_time: Duration = 300.0


class _NetworkExporter(_Model):
    endpoint: str
    headers: dict[str, str] = {}
    compression: Literal["gzip", "none"] = "gzip"
    tls: ClientTLS = ClientTLS()
    timeout: Duration = 5.0
    sending_queue: SendingQueue = SendingQueue()
    retry_on_failure: RetryOnFailure = RetryOnFailure()


class OtlpExporter(_NetworkExporter):
    """OTLP/gRPC exporter; ``endpoint`` is ``host:port``."""

    type: Literal["otlp"] = "otlp"
    max_send_msg_size_mib: float = Field(default=64.0, gt=0)


class OtlpHttpExporter(_NetworkExporter):
    """OTLP/HTTP exporter; ``endpoint`` is a base URL (``/v1/<signal>`` is appended)."""

    type: Literal["otlphttp"] = "otlphttp"
    traces_endpoint: str | None = None
    metrics_endpoint: str | None = None
    logs_endpoint: str | None = None
    encoding: Literal["proto", "json"] = "proto"


class FileExporter(_Model):
    """OTLP JSON lines, one request a line."""

    type: Literal["file"] = "file"
    path: str = "./otelai-out/forwarded.jsonl"
    sending_queue: SendingQueue = SendingQueue(num_consumers=1)


ExporterConfig = OtlpExporter | OtlpHttpExporter | FileExporter
_EXPORTER_TYPES: dict[str, type[BaseModel]] = {
    "otlp": OtlpExporter,
    "otlphttp": OtlpHttpExporter,
    "file": FileExporter,
}


class Selection(_Model):
    """What is forwarded: anomalies, their trace context, and a consistent sample of the rest."""

    normal_sample_rate: float = Field(default=0.05, ge=0, le=1)
    # Significant hex digits of the ot=th threshold (the Collector's probabilistic_sampler name).
    sampling_precision: int = Field(default=4, ge=1, le=14)
    # Calibrated scores are quantiles of recent traffic: 0.995 tags the rarest 0.5%, which at
    # thousands of spans a second is already tens of anomalies a second.
    anomaly_threshold: float = Field(default=0.995, ge=0, le=1)
    critical_threshold: float = Field(default=0.9995, ge=0, le=1)
    # Trace buffer: recent requests are kept this long so a critical span's earlier spans can follow it.
    decision_wait: Duration = 5.0
    trace_buffer_size: Size = 64 * 1024 * 1024
    # Later spans of a critical trace are forwarded for this long after it was seen.
    critical_trace_ttl: Duration = 60.0
    max_critical_traces: int = Field(default=10_000, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Selection:
        if self.anomaly_threshold > self.critical_threshold:
            raise ValueError("anomaly_threshold must not exceed critical_threshold")
        return self


class Batching(_Model):
    """Adaptive batching in front of the models (``otelai.batching``)."""

    min_batch_size: int = Field(default=64, ge=1)
    max_batch_size: int = Field(default=4096, ge=1)
    max_wait: Duration = 0.002
    latency_target: Duration = 0.010
    max_queued_items: int = Field(default=65536, ge=1)
    # How long a request may wait for room in a batch that can still meet the latency target
    # before it is refused (OVERLOADED / 503 with a retry delay: the client retries).
    max_admission_wait: Duration = 1.0

    @model_validator(mode="after")
    def _ordered(self) -> Batching:
        if self.min_batch_size > self.max_batch_size:
            raise ValueError("min_batch_size must not exceed max_batch_size")
        return self


class Calibration(_Model):
    """Empirical-CDF calibration of raw scores over recent traffic."""

    window: int = Field(default=8192, ge=16)
    sample_rate: float = Field(default=0.05, gt=0, le=1)
    min_samples: int = Field(default=1024, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _fits(self) -> Calibration:
        if self.min_samples > self.window:
            raise ValueError("min_samples must not exceed window")
        return self


class PcaModel(_Model):
    """The online principal-subspace detector (``otelai.detectors.pca``)."""

    enabled: bool = True
    variance: float = Field(default=0.95, gt=0, le=1)
    min_samples: int = Field(default=2048, ge=16)
    reservoir_size: int = Field(default=8192, ge=16)
    refit_every: int = Field(default=1_000_000, ge=1)


class ModelBundle(_Model):
    """The trained model bundle (``otelai train``) the detectors start from.

    ``path: ""`` takes the bundle shipped in the package (``make model`` rebuilds it); a
    bundle whose feature schema differs from this otelai's is refused at start-up.
    """

    enabled: bool = True
    path: str = ""
    # Per-resource metric models (``otelai train --dataset asd|smd``): the resource attribute
    # that names a server (its own calibration if the bundle has one, else the pooled one),
    # how many resources are remembered (least recently seen forgotten first), and the memory
    # their seasonal history may take in all (fewer resources are remembered beyond it).
    resource_attribute: str = "host.name"
    max_resources: int = Field(default=10_000, ge=1)
    max_history_size: Size = 256 * 1024 * 1024


class Scoring(_Model):
    """Scoring of every item: backends, batching, calibration, detectors."""

    enabled: bool = True
    signals: list[Literal["traces", "logs", "metrics"]] = ["traces", "logs", "metrics"]
    # Ordered fallback list of inference backends (entry points in ``otelai.backends``).
    backend: list[str] = ["onnxruntime"]
    backend_options: dict[str, dict[str, Any]] = {}
    batching: Batching = Batching()
    calibration: Calibration = Calibration()
    pca: PcaModel = PcaModel()
    model: ModelBundle = ModelBundle()
    # Score in a worker thread instead of on the event loop (measured slower on 2 cores: the
    # GIL stretches each batch; may help where the models release the GIL for long, e.g. GPUs).
    worker_thread: bool = False
    # Score in a worker process (otelai.scoring.worker): the event loop receives and forwards
    # on one core while the models run on another. "auto": when the process may use two cores
    # or more (CPU affinity and the cgroup's CPU quota). Takes precedence over worker_thread.
    worker_process: bool | Literal["auto"] = "auto"
    # The version tagged on items when no bundle is loaded (a bundle names its own).
    model_version: str = "builtin-0"


class ExplicitBuckets(_Model):
    buckets: list[Duration] = [0, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10]


class ExponentialBuckets(_Model):
    max_size: int = Field(default=160, ge=2)


class SummaryHistogram(_Model):
    """Explicit buckets or a base-2 exponential histogram (the default: about half the bytes).

    Setting ``explicit`` alone selects it, as in the spanmetrics connector.
    """

    explicit: ExplicitBuckets | None = None
    exponential: ExponentialBuckets | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_exponential(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("explicit") is None and data.get("exponential") is None:
            return {**data, "exponential": {}}
        return data

    @model_validator(mode="after")
    def _one(self) -> SummaryHistogram:
        if self.explicit is not None and self.exponential is not None:
            raise ValueError("set one of explicit and exponential")
        return self


class Summaries(_Model):
    """Summaries of what was dropped, forwarded as delta OTLP metrics (spanmetrics key names)."""

    enabled: bool = True
    # Per (service, operation) summaries cost bytes per series per flush, whatever the traffic:
    # a minute keeps them small on a quiet edge site (upstream totals lag by up to a minute).
    interval: Duration = 60.0
    histogram: SummaryHistogram = SummaryHistogram()
    aggregation_cardinality_limit: int = Field(default=2000, ge=2)
    instance_id: str = ""


class Webhook(_Model):
    url: str
    headers: dict[str, str] = {}
    timeout: Duration = 5.0


class Alerts(_Model):
    """Local alerts for anomalies: a structured log line, optionally an Alertmanager webhook."""

    group_window: Duration = 300.0
    rate: float = Field(default=1.0, gt=0)
    burst: int = Field(default=20, ge=1)
    queue_size: int = Field(default=1000, ge=1)
    resolve_after: Duration = 300.0
    generator_url: str = ""
    webhook: Webhook | None = None


class Mitigation(_Model):
    """A hook run on critical anomalies: a webhook or a command (argv, no shell)."""

    webhook: Webhook | None = None
    command: list[str] | None = None
    max_runs: int = Field(default=1, ge=1)
    interval: Duration = 300.0
    timeout: Duration = 30.0
    dry_run: bool = False

    @model_validator(mode="after")
    def _one_action(self) -> Mitigation:
        if (self.webhook is None) == (self.command is None):
            raise ValueError("set exactly one of webhook or command")
        return self


class MetricsTelemetry(_Model):
    endpoint: str = "0.0.0.0:9464"

    _endpoint = field_validator("endpoint")(_check_host_port)


class LogsTelemetry(_Model):
    level: Literal["debug", "info", "warn", "error"] = "info"
    encoding: Literal["json", "console"] = "json"


class Telemetry(_Model):
    metrics: MetricsTelemetry | None = MetricsTelemetry()
    logs: LogsTelemetry = LogsTelemetry()


class ServiceSettings(_Model):
    shutdown_timeout: Duration = 30.0
    retry_after: Duration = 1.0


class Config(_Model):
    """The whole service configuration."""

    receivers: Receivers = Receivers()
    exporters: dict[str, Annotated[ExporterConfig, Field(discriminator="type")]] = {"file": FileExporter()}
    selection: Selection = Selection()
    scoring: Scoring = Scoring()
    summaries: Summaries = Summaries()
    alerts: Alerts = Alerts()
    mitigation: Mitigation | None = None
    telemetry: Telemetry = Telemetry()
    service: ServiceSettings = ServiceSettings()

    @field_validator("exporters", mode="before")
    @classmethod
    def _typed_exporters(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            raise ValueError("exporters must be a mapping of name to settings")
        if not value:
            raise ValueError("at least one exporter is required")
        typed: dict[str, Any] = {}
        for name, settings in value.items():
            kind = str(name).split("/", 1)[0]
            if kind not in _EXPORTER_TYPES:
                known = ", ".join(sorted(_EXPORTER_TYPES))
                raise ValueError(f"exporter {name!r}: unknown type {kind!r} (known: {known})")
            if isinstance(settings, BaseModel):
                typed[name] = settings
                continue
            if settings is not None and not isinstance(settings, Mapping):
                raise ValueError(f"exporter {name!r}: settings must be a mapping")
            body = dict(settings or {})
            if "type" in body:
                raise ValueError(f"exporter {name!r}: unknown key 'type' (the type is the name before '/')")
            body["type"] = kind
            typed[name] = body
        return typed


EMBEDDED_DEFAULT = """\
receivers:
  otlp:
    protocols:
      grpc: {endpoint: "0.0.0.0:4317"}
      http: {endpoint: "0.0.0.0:4318"}
exporters:
  file:
    path: "./otelai-out/forwarded.jsonl"
    # Merge the forwarded requests of up to 200ms (the Collector's batch processor default):
    # each resource and scope is written once per merged request instead of once per batch.
    sending_queue: {batch: {flush_timeout: 200ms, min_size: 8192}}
telemetry:
  metrics: {endpoint: "0.0.0.0:9464"}
"""

_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")


def _expand_env(node: Any, environ: Mapping[str, str]) -> Any:
    """Replace ``${env:NAME}`` inside parsed string values, as the Collector does: a value from
    the environment never changes the YAML structure, and an unset one is an empty string."""
    if isinstance(node, str):
        return _ENV_REF.sub(lambda m: environ.get(m.group(1), ""), node)
    if isinstance(node, dict):
        return {key: _expand_env(value, environ) for key, value in node.items()}
    if isinstance(node, list):
        return [_expand_env(value, environ) for value in node]
    return node


def _apply_overrides(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        path = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        if path[0] not in Config.model_fields:
            continue
        node = raw
        for key in path[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[path[-1]] = yaml.safe_load(value) if value else ""


def _format_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        parts = [str(part) for part in item["loc"]]
        if len(parts) > 2 and parts[0] == "exporters" and parts[2] in _EXPORTER_TYPES:
            del parts[2]  # the union's tag repeats the exporter's type
        loc = ".".join(parts)
        msg = str(item["msg"]).removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"  {loc or '<root>'}: {msg}")
    return "\n".join(lines)


def load_config(
    path: str | Path | None = None,
    *,
    text: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Read, expand, override and validate a configuration.

    Parameters
    ----------
    path
        YAML file; ``None`` with no ``text`` uses the embedded default.
    text
        YAML text to use instead of a file (``path`` then only names it in messages).
    environ
        Environment for ``${env:...}`` and ``OTELAI_*`` overrides; ``os.environ`` by default.
    """
    env = os.environ if environ is None else environ
    source = str(path) if path is not None else "<embedded default>"
    if text is None:
        if path is None:
            text = EMBEDDED_DEFAULT
        else:
            try:
                text = Path(path).read_text()
            except OSError as exc:
                raise ConfigError(f"cannot read configuration {source}: {exc.strerror}") from exc
    try:
        raw = _expand_env(yaml.safe_load(text), env) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML in {source}: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"invalid configuration in {source}: the top level must be a mapping")
    _apply_overrides(raw, env)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc, source)) from exc
