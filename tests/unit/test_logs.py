import json
import logging

import pytest

from otelai.logs import ConsoleFormatter, JsonFormatter


def _record(**extra: object) -> logging.LogRecord:
    record = logging.LogRecord("otelai.test", logging.WARNING, __file__, 1, "queue %s full", ("otlp",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_json_lines_carry_extras() -> None:
    entry = json.loads(JsonFormatter().format(_record(exporter="otlp", items=3)))
    assert entry["msg"] == "queue otlp full"
    assert entry["level"] == "warning"
    assert entry["logger"] == "otelai.test"
    assert entry["exporter"] == "otlp"
    assert entry["items"] == 3
    assert entry["ts"].endswith("Z")


def test_console_form_is_one_line() -> None:
    line = ConsoleFormatter().format(_record(exporter="otlp"))
    assert "queue otlp full" in line
    assert "exporter=otlp" in line


@pytest.mark.parametrize("encoding", ["json", "console"])
def test_configure(encoding: str) -> None:
    from otelai.logs import configure_logging

    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        configure_logging("debug", encoding)
        assert logging.getLogger("otelai").level == logging.DEBUG
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
