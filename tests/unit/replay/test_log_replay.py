from pathlib import Path

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from otelai.replay import bgl, hdfs
from otelai.replay.batch import Batch, SourceError
from otelai.signals import Signal
from tests.unit.models.tasks.log_fixtures import write_bgl, write_hdfs


def _records(data: bytes) -> list[LogRecord]:
    request = ExportLogsServiceRequest.FromString(data)
    return [r for rl in request.resource_logs for sl in rl.scope_logs for r in sl.log_records]


def test_hdfs_blocks_become_records_keyed_by_block_id(tmp_path: Path) -> None:
    root = write_hdfs(tmp_path, normal=5, anomalous=1)
    blocks = hdfs.read_blocks(root)
    batches = [b for b in hdfs.batches(root, max_items=7) if isinstance(b, Batch)]
    assert all(b.signal is Signal.LOGS for b in batches)
    assert sum(b.items for b in batches) == sum(len(b.templates) for b in blocks)
    records = [r for b in batches for r in _records(b.data)]
    first = blocks[0]
    head = records[: len(first.templates)]
    assert [r.body.string_value for r in head] == list(first.templates)
    assert {a.value.string_value for r in head for a in r.attributes if a.key == "BlockId"} == {
        first.block_id
    }
    times = [r.time_unix_nano for r in records]
    assert times == sorted(times) and batches[0].time_unix_nano == times[0]


def test_bgl_lines_carry_content_node_and_severity(tmp_path: Path) -> None:
    root = write_bgl(tmp_path, lines=30)
    lines = bgl.read_lines(root)
    records = [r for b in bgl.batches(root, max_items=512) if isinstance(b, Batch) for r in _records(b.data)]
    assert len(records) == 30
    fatal = next(i for i, line in enumerate(lines) if line.level == "FATAL")
    assert records[fatal].severity_number == 21 and records[fatal].severity_text == "FATAL"
    assert records[fatal].body.string_value == lines[fatal].content
    attributes = {a.key: a.value.string_value for a in records[fatal].attributes}
    assert attributes["node"] == lines[fatal].node
    assert "Label" not in attributes and records[0].time_unix_nano % 1000 == 0


def test_bad_files_are_reported_not_raised(tmp_path: Path) -> None:
    (tmp_path / "broken.csv").write_text("BlockId,Label,Templates\nblk_1,Odd,[]\n", encoding="utf-8")
    items = list(hdfs.batches(tmp_path, max_items=8))
    assert len(items) == 1 and isinstance(items[0], SourceError)
    with pytest.raises(FileNotFoundError):
        bgl.data_files(tmp_path / "missing")
