"""A tiny ASD-layout data set with a daily cycle (288 five-minute steps a day) and, in each test
part, an anomaly that is normal for the time of day 12 hours away: from a quiet hour on, the
servers report the values of the busy hour (a copy of the rows 144 steps earlier). A short window
of rows looks entirely normal there; only the time of day says it is not."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.unit.models.tasks.test_server_metrics_task import _write

DAY = 288
TRAIN_DAYS, TEST_DAYS = 7, 2
WIDTH = 3
# test rows: a night-time stretch (quiet hours) replaced by the rows of noon
ANOMALY = range(DAY + 10, DAY + 40)


def _days(rng: np.random.Generator, days: int) -> np.ndarray:
    t = 2 * np.pi * np.arange(days * DAY) / DAY
    load = 0.5 - 0.35 * np.cos(t)  # quiet at midnight, busy at noon
    rows = np.stack([load, 0.3 + 0.5 * load, 0.9 - 0.6 * load], axis=1)
    return np.clip(rows + 0.01 * rng.standard_normal(rows.shape), 0.0, 1.0)


def write_seasonal_asd(root: Path) -> None:
    """Two servers; each test part holds one labelled busy-at-night stretch."""
    rng = np.random.default_rng(7)
    for name in ["omi-1", "omi-2"]:
        rows = _days(rng, TRAIN_DAYS + TEST_DAYS)
        train, test = rows[: TRAIN_DAYS * DAY], rows[TRAIN_DAYS * DAY :].copy()
        labels = np.zeros(len(test), dtype=np.int64)
        test[list(ANOMALY)] = test[[i - DAY // 2 for i in ANOMALY]]
        labels[list(ANOMALY)] = 1
        _write(root / "train" / f"{name}.txt.gz", train)
        _write(root / "test" / f"{name}.txt.gz", test)
        _write(root / "test_label" / f"{name}.txt.gz", labels)
