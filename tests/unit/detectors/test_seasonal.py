"""SeasonalResidual against a plain-numpy reference: medians over past days, ring wrap-around,
fewer days of history than asked for, batches of any size, and loading from a bundle spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from otelai.detectors.registry import Serving
from otelai.detectors.seasonal import SeasonalResidual, period_of, residual_stats, standardised
from otelai.models.bundle import Bundle, BundleError, DetectorSpec, Manifest

PERIOD, DAYS, WIDTH = 7, 3, 4


def _reference(stream: np.ndarray, period: int, days: int) -> tuple[np.ndarray, np.ndarray]:
    """Baseline of every row of ``stream``: the median of the rows 1..days periods earlier
    (history is kept in float32)."""
    stored = stream.astype(np.float32).astype(np.float64)
    base = np.full(stream.shape, np.nan)
    for t in range(len(stream)):
        lagged = [stored[t - period * j] for j in range(1, days + 1) if t - period * j >= 0]
        if lagged:
            base[t] = np.median(np.stack(lagged), axis=0)
    return base, ~np.isnan(base[:, 0])


def _detector(**kwargs: object) -> SeasonalResidual:
    return SeasonalResidual(n_features=WIDTH, period=PERIOD, days=DAYS, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("batch", [1, 2, 5, PERIOD, 3 * PERIOD, 200])
def test_baselines_match_the_reference_in_any_batching(batch: int) -> None:
    rng = np.random.default_rng(batch)
    stream = rng.normal(size=(100, WIDTH))  # 100 rows: the 21-row ring wraps around several times
    want, ready = _reference(stream, PERIOD, DAYS)
    detector = _detector()
    got, flags = [], []
    for first in range(0, len(stream), batch):
        residuals, is_ready = detector.residuals_many(stream[first : first + batch])
        got.append(residuals)
        flags.append(is_ready)
    residuals, is_ready = np.concatenate(got), np.concatenate(flags)
    np.testing.assert_array_equal(is_ready, ready)
    assert not ready[: PERIOD - 1].any() and ready[PERIOD:].all()  # one full day before a baseline
    np.testing.assert_allclose(residuals[ready], (stream - want)[ready], rtol=0, atol=1e-12)
    assert (residuals[~ready] == 0).all()
    assert detector.seen == len(stream)


def test_fewer_days_of_history_use_the_days_there_are() -> None:
    stream = np.arange(3 * PERIOD * WIDTH, dtype=np.float64).reshape(-1, WIDTH)
    base, ready = _detector().baseline(stream)
    # second day: one past day; third: the median of two (their mean)
    np.testing.assert_array_equal(base[PERIOD], stream[0])
    np.testing.assert_array_equal(base[2 * PERIOD + 1], (stream[1] + stream[PERIOD + 1]) / 2)
    assert ready.sum() == 2 * PERIOD


def test_remember_then_score_equals_scoring_the_whole_stream() -> None:
    rng = np.random.default_rng(3)
    stream = rng.normal(size=(90, WIDTH))
    mu, sigma = rng.normal(size=WIDTH), rng.uniform(0.5, 2.0, size=WIDTH)
    whole = _detector(mu=mu, sigma=sigma, clip=2.5)
    want = whole.score_many(stream.astype(np.float32))
    primed = _detector(mu=mu, sigma=sigma, clip=2.5)
    primed.remember(stream[:61])
    got = primed.score_many(stream[61:].astype(np.float32))
    np.testing.assert_allclose(got, want[61:], rtol=1e-6)
    # the score is the mean over metrics of clipped squared z
    base, _ = _reference(stream, PERIOD, DAYS)
    z = standardised(stream - base, mu, sigma, 2.5)
    np.testing.assert_allclose(want[PERIOD:], (z * z).mean(axis=1)[PERIOD:], rtol=1e-6)
    assert (want[:PERIOD] == 0).all()


def test_explain_names_the_metric_off_its_daily_pattern_without_advancing() -> None:
    day = np.tile(np.sin(np.arange(PERIOD))[:, None], (1, WIDTH))
    detector = _detector()
    detector.remember(np.concatenate([day] * DAYS))
    odd = day[:2].copy()
    odd[1, 2] += 5.0
    assert detector.explain_many(odd.astype(np.float32), 1)[1, 0] == 2
    assert detector.seen == DAYS * PERIOD
    detector.reset()
    assert detector.seen == 0 and not detector.ready


def test_residual_stats_floor_a_constant_metric() -> None:
    residuals = np.stack([np.linspace(-1, 1, 50), np.zeros(50)], axis=1)
    mu, sigma = residual_stats(residuals)
    np.testing.assert_allclose(mu, [0.0, 0.0], atol=1e-12)
    assert sigma[1] == pytest.approx(max(1e-3, 0.05 * residuals[:, 0].std() / 2))  # 0.05 * mean sigma


def test_period_of_steps() -> None:
    assert period_of(300) == 288 and period_of(60) == 1440


def test_from_spec_and_bad_params(tmp_path: Path) -> None:
    bundle = Bundle(tmp_path, Manifest(name="t", version="1", signals={}))
    params = {
        "resource": "omi-1",
        "n_features": WIDTH,
        "period": PERIOD,
        "days": DAYS,
        "clip": 10.0,
        "mu": [0.0] * WIDTH,
        "sigma": [1.0] * WIDTH,
    }
    spec = DetectorSpec(name="omi-1/seasonal_residual", kind="seasonal_residual", params=params)
    detector = SeasonalResidual.from_spec(bundle, spec, Serving())
    assert (detector.resource, detector.period, detector.days, detector.clip) == ("omi-1", PERIOD, DAYS, 10.0)
    bad = spec.model_copy(update={"params": {**params, "sigma": [1.0] * (WIDTH - 1)}})
    with pytest.raises(BundleError, match="bad params"):
        SeasonalResidual.from_spec(bundle, bad, Serving())
