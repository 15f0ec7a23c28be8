"""Log lines turned into OTLP logs requests (``ExportLogsServiceRequest``), for HDFS and BGL.

Each line becomes one ``LogRecord`` (opentelemetry-proto ``logs/v1/logs.proto``): the text as a
string body, its severity (number and text, OpenTelemetry logs data model), its time, and the
attributes that name its session (HDFS ``BlockId``, BGL ``node``), so a receiver can group the
records of a session by that attribute. All records share one resource (the system's name as
``service.name``) and one scope.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import ScopeLogs

from otelai.replay.batch import Batch
from otelai.signals import Signal

SCOPE = "otelai.replay"


@dataclass(frozen=True, slots=True)
class LogLine:
    """One log line and what its record carries."""

    time_unix_nano: int
    body: str
    attributes: Mapping[str, str] = field(default_factory=dict)
    severity_number: int = 0
    severity_text: str = ""


def _request(service: str) -> tuple[ExportLogsServiceRequest, ScopeLogs]:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.add(key="service.name").value.string_value = service
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = SCOPE
    return request, scope_logs


def log_batches(lines: Iterable[LogLine], *, service: str, source: str, max_items: int) -> Iterator[Batch]:
    """Serialised requests of at most ``max_items`` records each, in the lines' order."""
    if max_items < 1:
        raise ValueError(f"max_items must be at least 1, got {max_items}")
    request, scope_logs = _request(service)
    first = 0
    for line in lines:
        if not scope_logs.log_records:
            first = line.time_unix_nano
        record = scope_logs.log_records.add(
            time_unix_nano=line.time_unix_nano,
            observed_time_unix_nano=line.time_unix_nano,
            severity_number=line.severity_number,
            severity_text=line.severity_text,
        )
        record.body.string_value = line.body
        for key, value in line.attributes.items():
            record.attributes.add(key=key).value.string_value = value
        if len(scope_logs.log_records) >= max_items:
            yield Batch(Signal.LOGS, request.SerializeToString(), len(scope_logs.log_records), first, source)
            request, scope_logs = _request(service)
    if scope_logs.log_records:
        yield Batch(Signal.LOGS, request.SerializeToString(), len(scope_logs.log_records), first, source)
