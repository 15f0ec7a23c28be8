from pathlib import Path

import numpy as np
import pytest

from otelai.detectors.log_counts import SessionCountDetector
from otelai.detectors.log_sequence import LogSequenceDetector
from otelai.detectors.log_session_model import LogSessionModel
from otelai.detectors.registry import Serving
from otelai.models.bundle import load_bundle
from otelai.models.tasks.bgl import BglTask, split_lines
from otelai.models.tasks.hdfs import HdfsTask, split_blocks
from otelai.replay.bgl import read_lines
from otelai.replay.hdfs import Block, block_batches, read_blocks

from .log_fixtures import ALLOCATE, RECEIVING, write_bgl, write_hdfs

pytest.importorskip("onnxruntime")


def test_hdfs_train_bundle_evaluate_on_blocks_it_never_saw(tmp_path: Path) -> None:
    data = write_hdfs(tmp_path / "data")
    task = HdfsTask()
    bundle = task.train(data, tmp_path / "bundle", seed=3, progress=False)
    loaded = load_bundle(tmp_path / "bundle")
    kinds = {spec.kind: spec for spec in loaded.manifest.signals["logs"].detectors}
    assert set(kinds) == {"log_sequence", "log_counts"}
    assert isinstance(
        LogSequenceDetector.from_spec(loaded, kinds["log_sequence"], Serving()), LogSequenceDetector
    )
    counts = SessionCountDetector.from_spec(loaded, kinds["log_counts"], Serving())
    counts.close()
    evaluation = task.evaluate(bundle, data, progress=False)
    blocks = read_blocks(data)
    _, _, test = split_blocks(blocks, seed=3)
    assert evaluation.unit == "block"
    assert len(evaluation.scores) == len(test)  # exactly the held-out part
    assert evaluation.labels.sum() == sum(b.anomalous for b in test) > 0
    assert evaluation.metrics["f1"] == pytest.approx(1.0)
    assert evaluation.metrics["label_ceiling_f1"] == pytest.approx(1.0)


def test_hdfs_unseen_template_and_broken_order_score_high(tmp_path: Path) -> None:
    data = write_hdfs(tmp_path / "data")
    bundle = HdfsTask().train(data, tmp_path / "bundle", seed=0, progress=False)
    model = LogSessionModel.from_bundle(bundle)
    blocks = [
        Block("ok", False, (ALLOCATE, RECEIVING, RECEIVING)),
        Block("new", False, (ALLOCATE, RECEIVING, "Deleting block <*> file <*>")),
        Block("order", False, (RECEIVING, RECEIVING, ALLOCATE)),
    ]
    scores = model.score_payloads([batch.data for batch in block_batches(blocks)])
    by_block = np.array(scores.score).reshape(3, 3).max(axis=1)
    threshold = bundle.manifest.signals["logs"].thresholds.anomaly
    assert by_block[0] < threshold <= by_block[1]
    assert by_block[2] >= threshold
    model.close_models()


def test_bgl_chronological_split_and_line_scores(tmp_path: Path) -> None:
    data = write_bgl(tmp_path / "data")
    task = BglTask()
    bundle = task.train(data, tmp_path / "bundle", progress=False)
    evaluation = task.evaluate(bundle, data, progress=False)
    lines = read_lines(data)
    _, _, test = split_lines(lines)
    assert evaluation.unit == "line"
    assert len(evaluation.scores) == len(test)
    assert evaluation.metrics["recall"] == pytest.approx(1.0)
    assert evaluation.metrics["precision"] > 0.9
    assert "node_hour_f1" in evaluation.metrics
