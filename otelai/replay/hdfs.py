"""HDFS block sessions (loghub HDFS as deep-loglizer splits it) replayed as OTLP log records.

The data set (``hdfs_100k_train.csv``: ``BlockId``, ``Label``, ``Templates``, a JSON list of
the event templates of the block in log order) keeps the templates, not the raw lines; each
template is sent as a record body, with the block id as the ``BlockId`` attribute, the session
key (W. Xu et al., "Detecting Large-Scale System Problems by Mining Console Logs", SOSP 2009).
The file has no times or levels: records are stamped one millisecond apart from
:data:`START_NS` in file order, and their severity is left unset.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from otelai.replay.batch import Batch, SourceError
from otelai.replay.logs import LogLine, log_batches

log = logging.getLogger(__name__)

SERVICE = "hdfs"
SESSION_ATTRIBUTE = "BlockId"
START_NS = 1_226_188_800_000_000_000  # 2008-11-09T00:00:00Z, when loghub's HDFS log begins
STEP_NS = 1_000_000
DEFAULT_MAX_RECORDS = 512


@dataclass(frozen=True, slots=True)
class Block:
    """One block session: its id, whether it is labeled anomalous, its templates in order."""

    block_id: str
    anomalous: bool
    templates: tuple[str, ...]


def data_files(path: Path) -> list[Path]:
    """The block CSV files at ``path``: the file itself, or the ``*.csv`` in it (or in ``hdfs/``)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"hdfs data not found at {path}")
    files = sorted(path.glob("*.csv")) or sorted((path / "hdfs").glob("*.csv"))
    if not files:
        raise FileNotFoundError(f"no hdfs block CSV (BlockId,Label,Templates) in {path}")
    return files


def read_blocks(path: Path) -> list[Block]:
    """The blocks of every file at ``path``, in file order."""
    blocks: list[Block] = []
    for file in data_files(path):
        with file.open(newline="", encoding="utf-8") as stream:
            for number, row in enumerate(csv.DictReader(stream), start=2):
                try:
                    templates = json.loads(row["Templates"])
                    label = row["Label"].strip().lower()
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise ValueError(f"{file}:{number}: not a BlockId,Label,Templates row: {exc}") from None
                if label not in {"normal", "anomaly"} or not isinstance(templates, list):
                    raise ValueError(f"{file}:{number}: Label must be Normal/Anomaly, Templates a JSON list")
                blocks.append(Block(row["BlockId"], label == "anomaly", tuple(map(str, templates))))
    return blocks


def block_lines(blocks: Iterable[Block], start_ns: int = START_NS) -> Iterator[LogLine]:
    """The records of ``blocks``, block after block, stamped :data:`STEP_NS` apart."""
    time_ns = start_ns
    for block in blocks:
        attributes = {SESSION_ATTRIBUTE: block.block_id}
        for template in block.templates:
            yield LogLine(time_ns, template, attributes)
            time_ns += STEP_NS


def block_batches(
    blocks: Iterable[Block], *, max_items: int = DEFAULT_MAX_RECORDS, source: str = "hdfs"
) -> Iterator[Batch]:
    """Blocks as serialised logs requests of at most ``max_items`` records."""
    return log_batches(block_lines(blocks), service=SERVICE, source=source, max_items=max_items)


def batches(path: Path, *, max_items: int = DEFAULT_MAX_RECORDS) -> Iterator[Batch | SourceError]:
    """Every block at ``path`` (``otelai replay --dataset hdfs``); an unreadable file is reported."""
    for file in data_files(path):
        try:
            blocks = read_blocks(file)
        except (OSError, ValueError) as exc:
            log.error("hdfs: %s; skipping it", exc)
            yield SourceError(str(file), str(exc))
            continue
        yield from block_batches(blocks, max_items=max_items, source=file.name)
