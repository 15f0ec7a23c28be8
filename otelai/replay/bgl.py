"""BGL (Blue Gene/L) log lines, loghub's structured form, replayed as OTLP log records.

``BGL_2k.log_structured.csv`` holds one line a row (``Label`` ``-`` for normal, else the alert
category; ``Timestamp`` in Unix seconds and ``Time`` with microseconds; ``Node``, ``Type``,
``Component``, ``Level``, ``Content``). A record's body is ``Content`` (the raw message, which
the receiver mines for its template), its severity comes from ``Level``, and the node that
logged it is the ``node`` attribute (the session key); ``Component`` and ``Type`` go along as
``bgl.component`` and ``bgl.type``. The label is not sent.
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from otelai.replay.batch import Batch, SourceError
from otelai.replay.logs import LogLine, log_batches

log = logging.getLogger(__name__)

SERVICE = "bgl"
SESSION_ATTRIBUTE = "node"
DEFAULT_MAX_RECORDS = 512
# BGL levels -> OpenTelemetry severity numbers (logs data model: 9 INFO, 13 WARN, 17 ERROR, 21 FATAL)
SEVERITY = {"INFO": 9, "WARNING": 13, "ERROR": 17, "SEVERE": 18, "FATAL": 21, "FAILURE": 21}
_MICROS = re.compile(r"\.(\d{1,6})$")


@dataclass(frozen=True, slots=True)
class BglLine:
    """One structured BGL line; ``category`` is the label (``-`` when normal)."""

    time_unix_nano: int
    node: str
    component: str
    type: str
    level: str
    content: str
    category: str

    @property
    def anomalous(self) -> bool:
        return self.category != "-"

    def record(self) -> LogLine:
        attributes = {SESSION_ATTRIBUTE: self.node, "bgl.component": self.component, "bgl.type": self.type}
        level = self.level.upper()
        return LogLine(self.time_unix_nano, self.content, attributes, SEVERITY.get(level, 0), level)


def data_files(path: Path) -> list[Path]:
    """``*.log_structured.csv`` at ``path`` (the file, the folder, or its ``loghub/BGL``)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"bgl data not found at {path}")
    for folder in (path, path / "BGL", path / "loghub" / "BGL"):
        files = sorted(folder.glob("*.log_structured.csv"))
        if files:
            return files
    raise FileNotFoundError(f"no BGL *.log_structured.csv in {path}")


def _time_ns(row: dict[str, str]) -> int:
    seconds = int(row["Timestamp"])
    micros = _MICROS.search(row.get("Time") or "")
    return seconds * 1_000_000_000 + (int(micros.group(1).ljust(6, "0")) * 1000 if micros else 0)


def read_lines(path: Path) -> list[BglLine]:
    """The lines of every file at ``path``, in file order."""
    lines: list[BglLine] = []
    for file in data_files(path):
        with file.open(newline="", encoding="utf-8", errors="replace") as stream:
            for number, row in enumerate(csv.DictReader(stream), start=2):
                try:
                    lines.append(
                        BglLine(
                            time_unix_nano=_time_ns(row),
                            node=row["Node"],
                            component=row["Component"],
                            type=row["Type"],
                            level=row["Level"],
                            content=row["Content"],
                            category=row["Label"].strip() or "-",
                        )
                    )
                except (KeyError, TypeError, ValueError, AttributeError) as exc:
                    raise ValueError(f"{file}:{number}: not a loghub structured BGL row: {exc}") from None
    return lines


def line_batches(
    lines: Iterable[BglLine], *, max_items: int = DEFAULT_MAX_RECORDS, source: str = "bgl"
) -> Iterator[Batch]:
    """Lines as serialised logs requests of at most ``max_items`` records, in order."""
    return log_batches((line.record() for line in lines), service=SERVICE, source=source, max_items=max_items)


def batches(path: Path, *, max_items: int = DEFAULT_MAX_RECORDS) -> Iterator[Batch | SourceError]:
    """Every line at ``path`` (``otelai replay --dataset bgl``); an unreadable file is reported."""
    for file in data_files(path):
        try:
            lines = read_lines(file)
        except (OSError, ValueError) as exc:
            log.error("bgl: %s; skipping it", exc)
            yield SourceError(str(file), str(exc))
            continue
        yield from line_batches(lines, max_items=max_items, source=file.name)
