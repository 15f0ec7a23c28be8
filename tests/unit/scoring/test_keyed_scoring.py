"""Keyed scoring through the Scorer: a per-series detector scores interleaved series as if each
came alone, and detectors that are not per series ignore the keys."""

from __future__ import annotations

import numpy as np

from otelai.config import Calibration
from otelai.decision.calibration import EcdfCalibrator
from otelai.detectors.novelty import NoveltyDetector
from otelai.detectors.pca import PcaDetector
from otelai.scoring.metrics import SCHEMA
from otelai.scoring.scorer import Scorer

CALIBRATION = Calibration(window=256, sample_rate=1.0, min_samples=16, seed=0)
QUANTILES = np.linspace(0.0, 0.5, 65).tolist()


def _series(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, SCHEMA.width), dtype=np.float32)
    values = 100.0 * (seed + 1) + rng.standard_normal(n)
    values[n // 2] += 50.0
    rows[:, SCHEMA.index("value_slog")] = np.sign(values) * np.log1p(np.abs(values))
    return rows


def test_interleaved_series_score_as_each_alone() -> None:
    n = 200
    series = [_series(s, n) for s in range(3)]
    keys = np.tile(np.arange(3, dtype=np.int64) * 7919, n)
    features = np.stack(series, axis=1).reshape(-1, SCHEMA.width)  # point i of every series, then i+1
    scorer = Scorer(SCHEMA, [NoveltyDetector(SCHEMA.names)], CALIBRATION)
    scorer.prime(0, QUANTILES)
    scored = scorer.score(features, keys=keys)

    alone = np.stack([NoveltyDetector(SCHEMA.names).score_many(rows) for rows in series], axis=1).ravel()
    calibrator = EcdfCalibrator(window=256, sample_rate=1.0, min_samples=16, seed=0)
    calibrator.prime(QUANTILES)
    np.testing.assert_allclose(scored.score, calibrator.transform(alone))
    assert alone.max() > 0.0  # the spikes score

    # without keys, the interleaved rows read as one series: other scores
    unkeyed = Scorer(SCHEMA, [NoveltyDetector(SCHEMA.names)], CALIBRATION)
    unkeyed.prime(0, QUANTILES)
    assert not np.allclose(unkeyed.score(features).score, scored.score)


def test_detectors_that_are_not_per_series_ignore_keys() -> None:
    rng = np.random.default_rng(1)
    features = rng.standard_normal((300, SCHEMA.width)).astype(np.float32)
    detector = PcaDetector(n_features=SCHEMA.width, min_samples=50, refit_every=10_000)
    detector.learn_many(features)
    keys = rng.integers(0, 5, 300).astype(np.int64)
    np.testing.assert_array_equal(detector.score_keyed(features, keys), detector.score_many(features))
    score, top = detector.score_explain_keyed(features, keys, 2)
    expected_score, expected_top = detector.score_explain_many(features, 2)
    np.testing.assert_array_equal(score, expected_score)
    np.testing.assert_array_equal(top, expected_top)
