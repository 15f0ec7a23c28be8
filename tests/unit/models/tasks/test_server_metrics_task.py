import gzip
from pathlib import Path

import numpy as np
import pytest

from otelai.detectors.multivariate import MultivariateAutoencoder
from otelai.detectors.registry import Serving
from otelai.models.bundle import load_bundle

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from otelai.models.tasks.server_metrics import AsdTask, SmdTask
from otelai.models.training.multivariate import WindowAutoencoderSettings

SETTINGS = WindowAutoencoderSettings(window=4, hidden=16, latent=2, epochs=6, batch_size=64)
WIDTH = 5


def _rows(rng: np.random.Generator, n: int, phase: float) -> np.ndarray:
    t = 2 * np.pi * (np.arange(n) + phase) / 48
    sin, cos = np.sin(t), np.cos(t)
    rows = 0.5 + np.stack([0.4 * sin, 0.2 * cos, -0.4 * sin, 0.1 * sin + 0.1 * cos, 0.3 * cos], axis=1)
    return np.clip(rows + 0.01 * rng.standard_normal(rows.shape), 0.0, 1.0)


def _write(path: Path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(",".join(f"{v:g}" for v in np.atleast_1d(row)) for row in rows) + "\n"
    with gzip.open(path, "wt") as stream:
        stream.write(text)


def _asd(root: Path) -> None:
    """Two servers in ASD's layout; each test part has one labelled anomaly in metric 1."""
    rng = np.random.default_rng(0)
    for i, name in enumerate(["omi-1", "omi-2"]):
        _write(root / "train" / f"{name}.txt.gz", _rows(rng, 700, 5.0 * i))
        test = _rows(rng, 300, 700 + 5.0 * i)
        labels = np.zeros(300, dtype=np.int64)
        test[150:170, 1] = np.clip(test[150:170, 1] + 0.35, 0, 1)
        labels[150:170] = 1
        _write(root / "test" / f"{name}.txt.gz", test)
        _write(root / "test_label" / f"{name}.txt.gz", labels)
    (root / "interpretation_label").mkdir()
    with gzip.open(root / "interpretation_label" / "omi-1.txt.gz", "wt") as stream:
        stream.write("150-169:2\n")


def test_asd_train_bundle_evaluate(tmp_path: Path) -> None:
    _asd(tmp_path / "asd")
    task = AsdTask(settings=SETTINGS)
    bundle = task.train(tmp_path / "asd", tmp_path / "bundle", seed=1, progress=False)
    again = load_bundle(tmp_path / "bundle")
    model = again.signal("metrics")
    assert model is not None
    seasonal = ["omi-1/seasonal_residual", "omi-2/seasonal_residual", "*/seasonal_residual"]
    assert [d.name for d in model.detectors] == ["omi-1", "omi-2", "*", *seasonal]
    assert model.feature_schema.columns == [f"asd.metric_{i:02d}" for i in range(WIDTH)]
    assert set(again.manifest.files) == {"multivariate_ae.onnx"}
    # the shipped graph serves through a backend from the bundle alone
    detector = MultivariateAutoencoder.from_spec(bundle, model.detectors[0], Serving())
    assert detector.backend_name == "onnxruntime"
    detector.close()

    evaluation = task.evaluate(bundle, tmp_path / "asd", progress=False)
    assert evaluation.dataset == "asd" and evaluation.unit == "point"
    assert len(evaluation.scores) == len(evaluation.labels) == 600
    for key in ("f1", "f1_pa", "best_f1", "best_f1_pa", "precision_pa", "recall_pa", "roc_auc"):
        assert key in evaluation.metrics
    assert evaluation.metrics["f1_pa"] > 0.6
    assert evaluation.metrics["roc_auc"] > 0.8
    assert [row["server"] for row in evaluation.rows] == ["omi-1", "omi-2"]
    assert [t.name for t in evaluation.timelines] == ["omi-1", "omi-2"]
    assert evaluation.timelines[0].threshold == 1.0
    assert 0.0 <= evaluation.metrics["interpretation_hit_at_3"] <= 1.0


def test_unknown_server_uses_the_pooled_calibration(tmp_path: Path) -> None:
    _asd(tmp_path / "asd")
    task = AsdTask(settings=SETTINGS)
    bundle = task.train(tmp_path / "asd", tmp_path / "bundle", progress=False)
    (tmp_path / "asd" / "test" / "omi-2.txt.gz").rename(tmp_path / "asd" / "test" / "omi-9.txt.gz")
    (tmp_path / "asd" / "test_label" / "omi-2.txt.gz").rename(
        tmp_path / "asd" / "test_label" / "omi-9.txt.gz"
    )
    evaluation = task.evaluate(bundle, tmp_path / "asd", progress=False)
    assert [row["calibration"] for row in evaluation.rows] == ["omi-1", "*"]


def test_smd_trains_on_the_first_part_and_reports_no_f1(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for name in ["machine-1-1", "machine-1-2"]:
        _write(tmp_path / "smd" / "train" / f"{name}.txt.gz", _rows(rng, 800, 0.0))
    task = SmdTask(settings=SETTINGS, train_share=0.75)
    bundle = task.train(tmp_path / "smd", tmp_path / "bundle", progress=False)
    assert bundle.manifest.training[0].items == 2 * round(0.75 * 800 * 0.8)
    evaluation = task.evaluate(bundle, tmp_path / "smd", progress=False)
    assert "f1" not in evaluation.metrics
    assert len(evaluation.scores) == 2 * 200
    assert evaluation.metrics["alarm_rate"] < 0.1
    assert any("no labels" in note for note in evaluation.notes)
