"""Tiny synthetic HDFS and BGL files in the layout of ../shared/data (for the log task tests)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

ALLOCATE = "BLOCK* NameSystem.allocateBlock:<*>"
RECEIVING = "Receiving block <*> src: /<*> dest: /<*>"
RESPONDER = "PacketResponder <*> for block <*> terminating"
RECEIVED = "Received block <*> of size <*> from /<*>"
STORED = "BLOCK* NameSystem.addStoredBlock: blockMap updated: <*> is added to <*> size <*>"
EXCEPTION = "writeBlock <*> received exception <*>"


def _normal_block(rng: np.random.Generator) -> list[str]:
    replicas = int(rng.integers(2, 4))
    events = [ALLOCATE] + [RECEIVING] * replicas
    for _ in range(replicas):
        events += [RESPONDER, RECEIVED]
    return events + [STORED] * replicas


def write_hdfs(root: Path, *, normal: int = 150, anomalous: int = 15, seed: int = 0) -> Path:
    """``root/hdfs/hdfs_100k_train.csv`` with separable anomalies (exceptions, early ends)."""
    rng = np.random.default_rng(seed)
    folder = root / "hdfs"
    folder.mkdir(parents=True)
    rows = [(f"blk_{i}", "Normal", _normal_block(rng)) for i in range(normal)]
    for i in range(anomalous):
        block = _normal_block(rng)
        block = [*block[:3], EXCEPTION] if i % 2 else block[:2]
        rows.append((f"blk_a{i}", "Anomaly", block))
    order = rng.permutation(len(rows))
    with (folder / "hdfs_100k_train.csv").open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(["BlockId", "Label", "Templates"])
        for i in order.tolist():
            block_id, label, templates = rows[i]
            writer.writerow([block_id, label, json.dumps(templates)])
    return root


BGL_HEADER = [
    "LineId", "Label", "Timestamp", "Date", "Node", "Time", "NodeRepeat", "Type", "Component",
    "Level", "Content", "EventId", "EventTemplate",
]  # fmt: skip
BGL_NORMAL = [
    ("INFO", "instruction cache parity error corrected"),
    ("INFO", "generating core.{n}"),
    ("INFO", "{n} double-hummer alignment exceptions"),
    ("FATAL", "ciod: Error loading /bgl/apps/prog{n}: invalid or missing program image"),
]
BGL_ANOMALY = [
    ("FATAL", "data TLB error interrupt"),
    ("FATAL", "rts: kernel terminated for reason {n}"),
    ("FATAL", "Lustre mount FAILED : bglio{n} : point /p/gb1"),
]


def write_bgl(root: Path, *, lines: int = 600, seed: int = 0) -> Path:
    """``root/loghub/BGL/BGL_2k.log_structured.csv``: normal lines, anomalies every 25 lines."""
    rng = np.random.default_rng(seed)
    folder = root / "loghub" / "BGL"
    folder.mkdir(parents=True)
    with (folder / "BGL_2k.log_structured.csv").open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(BGL_HEADER)
        for i in range(lines):
            anomalous = i % 25 == 24
            level, text = (BGL_ANOMALY if anomalous else BGL_NORMAL)[
                int(rng.integers(0, 3 if anomalous else 4))
            ]
            node = f"R0{i % 7}-M1-N0-C:J12-U11"
            stamp = 1117838570 + 60 * i
            writer.writerow([
                i + 1, "KERNDTLB" if anomalous else "-", stamp, "2005.06.03", node,
                f"2005-06-03-15.42.50.{i:06d}", node, "RAS", "KERNEL", level,
                text.format(n=int(rng.integers(1, 9999))), "E1", "",
            ])  # fmt: skip
    return root
