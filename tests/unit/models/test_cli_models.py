"""``otelai train`` and ``otelai evaluate`` on a tiny fake task registered for the test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from otelai.cli import EXIT_CONFIG, main
from otelai.features.schema import FeatureSchema
from otelai.models import task as task_module
from otelai.models.bundle import (
    Bundle,
    DetectorSpec,
    Manifest,
    SchemaSpec,
    SignalModel,
    Training,
    save_bundle,
)
from otelai.models.evaluation.metrics import roc_auc
from otelai.models.task import Evaluation, Task, Timeline

MODULE = __name__
SCHEMA = FeatureSchema(names=("value",), version="1")


def _read(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = np.loadtxt(path / "data.csv", delimiter=",", ndmin=2)
    return rows[:, 0], rows[:, 1].astype(np.int8)


class FakeTask(Task):
    """Scores a value by its distance from the training mean."""

    kind = "fake"
    schema = SCHEMA  # what this otelai "computes"; tests swap it to provoke a mismatch

    def train(self, path: Path, out: Path, *, seed: int = 0, progress: bool = True) -> Bundle:
        values, labels = _read(path)
        (out / "state.json").write_text(json.dumps({"mean": float(values[labels == 0].mean())}))
        signal = SignalModel(
            feature_schema=SchemaSpec.of("fake", SCHEMA),
            detectors=[DetectorSpec(name="mean", kind="fake", file="state.json")],
        )
        manifest = Manifest(
            name="fake",
            version="0.1",
            signals={"metrics": signal},
            training=[Training(dataset="fake", path=str(path), items=values.size, seed=seed)],
        )
        return save_bundle(out, manifest)

    def evaluate(self, bundle: Bundle, path: Path, *, progress: bool = True) -> Evaluation:
        bundle.check_schema("metrics", type(self).schema)
        mean = json.loads(bundle.file("state.json").read_text())["mean"]
        values, labels = _read(path)
        scores = np.abs(values - mean)
        time = np.arange(values.size, dtype=np.float64)
        return Evaluation(
            dataset="fake",
            unit="point",
            metrics={"roc_auc": roc_auc(labels, scores)},
            scores=scores,
            labels=labels,
            references={"roc_auc: coin": 0.5},
            timelines=[Timeline("series", time, scores, labels, threshold=1.0)],
        )


class NeedsTorchTask(FakeTask):
    def train(self, path: Path, out: Path, *, seed: int = 0, progress: bool = True) -> Bundle:
        raise ModuleNotFoundError("No module named 'torch'", name="torch")


@pytest.fixture
def data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(task_module.TASKS, "fake", f"{MODULE}:FakeTask")
    monkeypatch.setitem(task_module.TASKS, "fake-torch", f"{MODULE}:NeedsTorchTask")
    monkeypatch.setitem(task_module.TASKS, "fake-missing", "otelai.models.tasks.no_such_module:Task")
    rng = np.random.default_rng(0)
    labels = (rng.random(200) < 0.1).astype(int)
    values = rng.normal(size=200) + 4 * labels
    root = tmp_path / "data"
    root.mkdir()
    np.savetxt(root / "data.csv", np.c_[values, labels], delimiter=",")
    return root


def _train(data: Path, out: Path, kind: str = "fake") -> int:
    return main(["train", "--dataset", kind, "--path", str(data), "--out", str(out), "--no-progress"])


def test_train_then_evaluate(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "models" / "fake-bundle"
    assert _train(data, bundle) == 0
    out = capsys.readouterr().out
    assert f"written to {bundle}" in out
    assert "MB" in out
    assert (bundle / "manifest.json").is_file()
    assert not [p for p in bundle.parent.iterdir() if p.name.startswith(".")]  # no staging left

    args = ["evaluate", "--bundle", str(bundle), "--dataset", "fake", "--path", str(data), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "roc_auc" in out and "coin 0.5000" in out
    report = tmp_path / "models" / "report-fake"  # default: beside the bundle
    assert str(report / "report.html") in out
    record = json.loads((report / "evaluation.json").read_text())
    assert record["metrics"]["roc_auc"] > 0.9
    assert record["bundle"]["name"] == "fake"
    assert "<svg" in (report / "report.html").read_text()


def test_evaluate_writes_where_asked(data: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert _train(data, bundle) == 0
    out = tmp_path / "elsewhere"
    args = ["evaluate", "--bundle", str(bundle), "--dataset", "fake", "--path", str(data), "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    assert (out / "evaluation.json").is_file() and (out / "report.html").is_file()


def test_retrain_replaces_the_bundle_without_stale_files(data: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    assert _train(data, bundle) == 0
    (bundle / "stale.onnx").write_bytes(b"old")
    assert _train(data, bundle) == 0
    assert not (bundle / "stale.onnx").exists()
    assert "stale.onnx" not in json.loads((bundle / "manifest.json").read_text())["files"]


def test_train_refuses_to_overwrite_a_directory_that_is_not_a_bundle(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert _train(data, out) == EXIT_CONFIG
    assert "not a bundle" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def test_unknown_kind_lists_the_kinds(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(data, tmp_path / "b", kind="nope") == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "unknown data set kind 'nope'" in err
    assert "otel-demo" in err and "hdfs" in err


def test_missing_data_path(tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(tmp_path / "absent", tmp_path / "b") == EXIT_CONFIG
    assert "absent does not exist" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    args = ["evaluate", "--bundle", str(tmp_path), "--dataset", "fake", "--path", str(tmp_path / "absent")]
    assert main(args) == EXIT_CONFIG
    assert "does not exist" in capsys.readouterr().err


def test_missing_train_extra_says_what_to_install(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _train(data, tmp_path / "b", kind="fake-torch") == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "'torch'" in err and "otelai[train]" in err and "torch==2.13.0" in err
    assert not (tmp_path / "b").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_task_module_not_installed(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _train(data, tmp_path / "b", kind="fake-missing") == EXIT_CONFIG
    assert "cannot run here" in capsys.readouterr().err


def test_evaluate_refuses_a_directory_that_is_not_a_bundle(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["evaluate", "--bundle", str(tmp_path / "nothing"), "--dataset", "fake", "--path", str(data)]
    assert main(args) == EXIT_CONFIG
    assert "no manifest.json" in capsys.readouterr().err


def test_evaluate_refuses_a_tampered_bundle(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    assert _train(data, bundle) == 0
    (bundle / "state.json").write_text('{"mean": 100.0}')
    args = ["evaluate", "--bundle", str(bundle), "--dataset", "fake", "--path", str(data)]
    assert main(args) == EXIT_CONFIG
    assert "does not match its SHA-256" in capsys.readouterr().err


def test_evaluate_refuses_a_bundle_built_for_other_features(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "bundle"
    assert _train(data, bundle) == 0
    monkeypatch.setattr(FakeTask, "schema", FeatureSchema(names=("value", "delta"), version="2"))
    args = ["evaluate", "--bundle", str(bundle), "--dataset", "fake", "--path", str(data), "--no-progress"]
    assert main(args) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "version '1'" in err and "version '2'" in err
    assert "not in the bundle: delta" in err
    assert not (tmp_path / "report-fake").exists()


def test_unwritable_report_dir(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = tmp_path / "bundle"
    assert _train(data, bundle) == 0
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = [
        "evaluate",
        "--bundle",
        str(bundle),
        "--dataset",
        "fake",
        "--path",
        str(data),
        "--out",
        str(blocker),
    ]
    assert main([*args, "--no-progress"]) == EXIT_CONFIG
    assert "cannot write the report" in capsys.readouterr().err
