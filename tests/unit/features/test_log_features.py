"""Log record features read from serialised OTLP logs requests."""

from __future__ import annotations

import numpy as np
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from otelai.features.logs import SCHEMA, LogBatch, LogState, log_features
from otelai.features.wire import WireError


def _request(services: dict[str, list[list[LogRecord]]]) -> ExportLogsServiceRequest:
    """``{service: [scope records, ...]}``; an empty service name leaves the resource bare."""
    request = ExportLogsServiceRequest()
    for service, scopes in services.items():
        resource_logs = request.resource_logs.add()
        if service:
            resource_logs.resource.attributes.add(key="host.name", value={"string_value": "h1"})
            resource_logs.resource.attributes.add(key="service.name", value={"string_value": service})
        for position, records in enumerate(scopes):
            scope_logs = resource_logs.scope_logs.add()
            scope_logs.scope.name = f"scope{position}"
            scope_logs.log_records.extend(records)
    return request


def _record(body: str, severity: int = 9, text: str = "") -> LogRecord:
    record = LogRecord(severity_number=severity, severity_text=text)  # type: ignore[arg-type]
    record.body.string_value = body
    record.attributes.add(key="k", value={"string_value": "v"})
    return record


def test_columns_and_locators_point_back_to_each_record() -> None:
    requests = [
        _request(
            {"checkout": [[_record("order 1 placed"), _record("order 2 placed")]], "": [[_record("x")]]}
        ),
        _request({"cart": [[_record("a")], [_record("b"), _record("c")]]}),
    ]
    state = LogState()
    batch = LogBatch.from_payloads([r.SerializeToString() for r in requests], state)
    assert len(batch) == 6
    for row in range(len(batch)):
        record = (
            requests[batch.request[row]]
            .resource_logs[batch.resource[row]]
            .scope_logs[batch.scope[row]]
            .log_records[batch.record[row]]
        )
        assert record.body.string_value == batch.bodies[row]
        assert batch.body_length[row] == len(record.body.string_value.encode())
    names = [state.interner.service_name(int(s)) for s in batch.service]
    assert names == ["checkout", "checkout", "unknown_service", "cart", "cart", "cart"]
    assert batch.template_id[0] == batch.template_id[1]  # "order <*> placed"


def test_severity_number_then_text_fallback() -> None:
    records = [_record("a", 17), _record("b", 0, "warn"), _record("c", 0, "Error "), _record("d", 0, "??")]
    records.append(_record("e", 0))
    batch = LogBatch.from_payloads([_request({"s": [records]}).SerializeToString()], LogState())
    assert batch.severity.tolist() == [17, 13, 17, 0, 0]


def test_non_string_and_multiline_bodies() -> None:
    number = LogRecord()
    number.body.int_value = 42
    structured = LogRecord()
    entry = structured.body.kvlist_value.values.add(key="message")
    entry.value.string_value = "payment failed"
    empty = LogRecord()
    trace = _record("Traceback (most recent call last):\n  File x.py, line 3\nValueError: bad")
    separator = _record("odd \x1e byte")  # the join separator inside a body
    payload = _request({"s": [[number, structured, empty, trace, separator]]}).SerializeToString()
    state = LogState()
    batch = LogBatch.from_payloads([payload], state)
    assert batch.bodies == ["42", "payment failed", "", trace.body.string_value, "odd \x1e byte"]
    assert state.miner.template(int(batch.template_id[3])) == "Traceback (most recent call last):"


def test_features_keywords_rates_and_schema() -> None:
    state = LogState(fast_window=10.0, slow_window=300.0)
    steady = [_record("GET /cart 200", 9)] * 10
    payload = _request({"web": [steady]}).SerializeToString()
    for second in range(60):  # one minute of 10 records a second
        matrix, schema = log_features(LogBatch.from_payloads([payload], state), state, now=float(second))
    assert schema == SCHEMA and matrix.shape == (10, len(SCHEMA)) and matrix.dtype == np.float32
    column = {name: matrix[:, index] for index, name in enumerate(SCHEMA.names)}
    assert column["service_rate_log1p"][0] == pytest.approx(np.log1p(10 * (1 - np.exp(-6))), rel=0.05)
    assert column["error_keywords_log1p"][0] == 0.0

    burst = [_record("upstream connect error: connection refused, timed out", 17)] * 50
    matrix, _ = log_features(
        LogBatch.from_payloads([_request({"web": [steady + burst]}).SerializeToString()], state),
        state,
        now=60.0,
    )
    column = {name: matrix[:, index] for index, name in enumerate(SCHEMA.names)}
    new = slice(10, 60)
    assert column["severity_error"][new].tolist() == [1.0] * 50
    assert column["error_keywords_log1p"][10] == pytest.approx(np.log1p(3))  # error, refused, timed out
    assert column["template_new"][10] == 1.0 and column["template_new"][0] == 0.0
    assert column["template_rarity"][10] > column["template_rarity"][0]
    assert column["template_surge"][10] > 2.0  # brand new and 50 at once
    assert column["service_surge"][0] > 0.5  # the service as a whole got busier
    assert np.isfinite(matrix).all()


def test_rates_decay_in_silence() -> None:
    state = LogState()
    payload = _request({"s": [[_record("tick")] * 20]}).SerializeToString()
    busy, _ = log_features(LogBatch.from_payloads([payload], state), state, now=0.0)
    quiet, _ = log_features(LogBatch.from_payloads([payload], state), state, now=1000.0)
    rate = SCHEMA.index("template_rate_log1p")
    assert quiet[0, rate] == pytest.approx(busy[0, rate], rel=1e-3)  # 1000 s: the old 20 are gone
    assert SCHEMA.index("template_surge") == 7


def test_empty_batch_and_malformed_payload() -> None:
    state = LogState()
    batch = LogBatch.from_payloads([], state)
    matrix, _ = log_features(batch, state, now=0.0)
    assert matrix.shape == (0, len(SCHEMA))
    assert len(LogBatch.from_payloads([b""], state)) == 0
    with pytest.raises(WireError):
        LogBatch.from_payloads([b"\x0a\xff\xff\xff"], state)
