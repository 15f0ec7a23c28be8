"""NabTask end to end on a tiny corpus in NAB's layout: train writes a bundle, evaluate scores it."""

from __future__ import annotations

from pathlib import Path

import pytest

from otelai.models.bundle import load_bundle
from otelai.models.task import get_task
from otelai.models.tasks.nab import split_series
from tests.unit.replay.nab_layout import write_nab


def test_split_alternates_within_each_group() -> None:
    tune, held = split_series(["b/2.csv", "a/1.csv", "a/2.csv", "a/3.csv", "b/1.csv"])
    assert tune == ["a/1.csv", "a/3.csv", "b/1.csv"] and held == ["a/2.csv", "b/2.csv"]


def test_train_then_evaluate(tmp_path: Path) -> None:
    data = tmp_path / "nab"
    write_nab(data, rows=400, series_per_group=3)
    task = get_task("nab")
    bundle = task.train(data, tmp_path / "bundle", seed=0, progress=False)
    (spec,) = bundle.manifest.signals["metrics"].detectors
    assert spec.kind == "novelty" and 0.0 < spec.params["threshold"] <= 1.0
    assert bundle.manifest.training[0].parts == [
        "artificialTest/series_0.csv",
        "artificialTest/series_2.csv",
        "realTest/series_0.csv",
        "realTest/series_2.csv",
    ]
    evaluation = task.evaluate(load_bundle(tmp_path / "bundle"), data, progress=False)
    metrics = evaluation.metrics
    # Every spike is far outside its series' range: all four windows found, no false alarm.
    assert metrics["nab_standard"] == pytest.approx(100.0 * (4 * 0.86 + 4) / 8, abs=5.0)
    assert metrics["window_recall"] == 1.0 and metrics["window_precision"] == 1.0
    assert "nab_standard_heldout" in metrics
    assert evaluation.references == {"numenta": 70.1, "null": 0.0}
    assert len(evaluation.rows) == 6 and len(evaluation.timelines) == 4
    assert evaluation.scores.shape == evaluation.labels.shape
    assert evaluation.labels.sum() == 4 * 21
