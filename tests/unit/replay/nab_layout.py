"""A tiny corpus in NAB's layout: data/<group>/<series>.csv, labels/combined_windows.json."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

START = datetime(2015, 3, 1, 0, 0, 0)
STEP = timedelta(minutes=5)


def stamp(row: int) -> str:
    return (START + row * STEP).strftime("%Y-%m-%d %H:%M:%S")


def write_nab(root: Path, *, rows: int = 400, series_per_group: int = 2) -> dict[str, list[list[str]]]:
    """Write the corpus; each series but the last of a group has one spike inside one window."""
    windows: dict[str, list[list[str]]] = {}
    for g, group in enumerate(("realTest", "artificialTest")):
        folder = root / "data" / group
        folder.mkdir(parents=True, exist_ok=True)
        for s in range(series_per_group):
            rng = np.random.default_rng(10 * g + s)
            values = 20.0 + 3.0 * np.sin(np.arange(rows) / 15.0) + rng.standard_normal(rows)
            key = f"{group}/series_{s}.csv"
            windows[key] = []
            if s < series_per_group - 1:
                spike = rows // 2 + 40 * s
                values[spike] += 40.0
                windows[key] = [[f"{stamp(spike - 10)}.000000", f"{stamp(spike + 10)}.000000"]]
            lines = ["timestamp,value"] + [f"{stamp(i)},{v:.6f}" for i, v in enumerate(values)]
            (folder / f"series_{s}.csv").write_text("\n".join(lines) + "\n")
    (root / "labels").mkdir(parents=True, exist_ok=True)
    (root / "labels" / "combined_windows.json").write_text(json.dumps(windows))
    (root / "final_results.json").write_text(
        json.dumps({"numenta": {"standard": 70.1}, "null": {"standard": 0.0}})
    )
    return windows
