"""The ASD task with the seasonal residual detector: what the bundle holds, and that a value
normal for the busy hour but seen at a quiet hour is caught by the combination, not by the
autoencoder's short window alone; a bundle trained without it is the autoencoder as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from otelai.detectors.registry import Serving
from otelai.detectors.seasonal import SeasonalResidual
from otelai.models.bundle import Bundle, load_bundle
from otelai.models.task import Evaluation

pytest.importorskip("onnxruntime")
pytest.importorskip("torch")

from otelai.models.tasks.server_metrics import AsdTask
from tests.unit.models.tasks.seasonal_fixtures import ANOMALY, DAY, WIDTH, write_seasonal_asd
from tests.unit.models.tasks.test_server_metrics_task import SETTINGS


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Bundle, Evaluation]:
    root = tmp_path_factory.mktemp("seasonal")
    write_seasonal_asd(root / "data")
    task = AsdTask(settings=SETTINGS)
    bundle = task.train(root / "data", root / "bundle", seed=0, progress=False)
    return root / "data", bundle, task.evaluate(bundle, root / "data", progress=False)


def test_bundle_holds_a_seasonal_spec_per_server_and_pooled(trained: tuple[Path, Bundle, Evaluation]) -> None:
    _, bundle, _ = trained
    model = load_bundle(bundle.path).signal("metrics")
    assert model is not None
    seasonal = [spec for spec in model.detectors if spec.kind == "seasonal_residual"]
    assert [spec.params["resource"] for spec in seasonal] == ["omi-1", "omi-2", "*"]
    ae = {spec.params["resource"]: spec for spec in model.detectors if spec.kind == "multivariate_ae"}
    for spec in seasonal:
        params = spec.params
        assert (params["period"], params["days"], params["clip"]) == (DAY, 5, 100.0)
        assert len(params["mu"]) == len(params["sigma"]) == WIDTH
        assert params["ae_threshold"] == ae[params["resource"]].params["threshold"]
        assert params["threshold"] > 0 and params["score_threshold"] > 0
        # the calibration is of the combined held-out scores, pinned where it flags 0.5 %
        quantiles = np.asarray(spec.calibration.quantiles)
        assert np.mean(quantiles >= params["threshold"]) == pytest.approx(0.005, abs=0.01)
        assert spec.file is None  # numpy state only
        detector = SeasonalResidual.from_spec(bundle, spec, Serving())
        assert detector.capacity == 5 * DAY
    assert model.calibration == seasonal[-1].calibration


def test_busy_values_at_a_quiet_hour_are_caught_by_the_combination(
    trained: tuple[Path, Bundle, Evaluation],
) -> None:
    _, _, evaluation = trained
    metrics = evaluation.metrics
    for key in (
        "f1_ae_only",
        "f1_pa_ae_only",
        "roc_auc_ae_only",
        "best_f1_ae_only",
        "false_alarm_rate_ae_only",
    ):
        assert key in metrics
    assert metrics["roc_auc"] > 0.95 and metrics["roc_auc"] > metrics["roc_auc_ae_only"]
    assert metrics["f1"] > metrics["f1_ae_only"]
    inside = list(ANOMALY)[3:-3]  # away from the edges, every window of rows looks normal
    for timeline in evaluation.timelines:
        assert np.mean(timeline.score[inside] >= 1.0) > 0.8


def test_the_autoencoder_alone_misses_the_middle(
    tmp_path: Path, trained: tuple[Path, Bundle, Evaluation]
) -> None:
    data, _, combined = trained
    task = AsdTask(settings=SETTINGS, seasonal=None)
    bundle = task.train(data, tmp_path / "ae", seed=0, progress=False)
    model = bundle.signal("metrics")
    assert model is not None and {spec.kind for spec in model.detectors} == {"multivariate_ae"}
    evaluation = task.evaluate(bundle, data, progress=False)
    inside = list(ANOMALY)[3:-3]
    for timeline, both in zip(evaluation.timelines, combined.timelines, strict=True):
        assert np.mean(timeline.score[inside] >= 1.0) < 0.5
        assert np.mean(both.score[inside]) > 2 * np.mean(timeline.score[inside])
    # with no seasonal spec, the score is the autoencoder's and so is the AE-only column
    assert evaluation.metrics["f1"] == evaluation.metrics["f1_ae_only"]
    assert evaluation.metrics["f1"] == pytest.approx(combined.metrics["f1_ae_only"])
