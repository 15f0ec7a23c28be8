"""EwBaseline: z-scores, robustness, decay, exact batch merging, fallback, cap, snapshots."""

from __future__ import annotations

import math

import numpy as np
import pytest

from otelai.features.baseline import EwBaseline


def _stream(baseline: EwBaseline, keys: np.ndarray, values: np.ndarray, size: int) -> list[np.ndarray]:
    """Score then update, ``size`` items at a time; the scores of every batch."""
    scores = []
    for start in range(0, len(values), size):
        part_keys, part_values = keys[start : start + size], values[start : start + size]
        scores.append(baseline.zscore(part_keys, part_values))
        baseline.update(part_keys, part_values)
    return scores


def test_stable_key_scores_near_zero_and_an_outlier_high() -> None:
    rng = np.random.default_rng(1)
    baseline = EwBaseline(half_life=200)
    values = rng.normal(10.0, 0.5, 2000)
    scores = np.concatenate(_stream(baseline, np.zeros(2000, dtype=np.int64), values, 100))
    assert abs(float(np.mean(scores[500:]))) < 0.2
    assert 0.7 < float(np.std(scores[500:])) < 1.3
    z = baseline.zscore(np.array([0, 0]), np.array([10.0, 14.0]))
    assert abs(z[0]) < 0.5 and z[1] > 6
    assert z.dtype == np.float32


def test_outlier_does_not_normalise_itself() -> None:
    rng = np.random.default_rng(2)
    baseline = EwBaseline(half_life=100)
    baseline.update(np.zeros(500, dtype=np.int64), rng.normal(5.0, 0.2, 500))
    keys = np.zeros(3, dtype=np.int64)
    burst = np.array([9.0, 9.0, 9.0])  # scored against the state before the burst
    first = baseline.zscore(keys, burst)
    baseline.update(keys, burst)
    again = baseline.zscore(keys[:1], burst[:1])
    assert first.min() > 15
    assert again[0] > 0.5 * first[0]  # the clipped update moved the baseline only a little
    mean, _, _ = baseline.lookup(np.array([0]))
    assert mean[0] < 5.0 + 3 * 0.2


def test_without_clipping_the_same_outliers_move_the_mean_further() -> None:
    rng = np.random.default_rng(2)
    history = rng.normal(5.0, 0.2, 500)
    means = []
    for clip in (3.0, None):
        baseline = EwBaseline(half_life=100, clip=clip)
        baseline.update(np.zeros(500, dtype=np.int64), history)
        baseline.update(np.zeros(3, dtype=np.int64), np.full(3, 9.0))
        means.append(baseline.lookup(np.array([0]))[0][0])
    assert means[0] < means[1] - 0.05


def test_after_a_shift_z_returns_toward_zero_within_a_few_half_lives() -> None:
    rng = np.random.default_rng(3)
    half_life = 50
    baseline = EwBaseline(half_life=half_life)
    keys = np.zeros(4000, dtype=np.int64)
    values = np.concatenate([rng.normal(0.0, 1.0, 2000), rng.normal(2.0, 1.0, 2000)])  # +2 sd
    scores = np.concatenate(_stream(baseline, keys, values, 10))
    assert float(np.mean(scores[2000:2010])) > 1.5  # the shift shows
    settled = scores[2000 + 6 * half_life : 2000 + 10 * half_life]
    assert abs(float(np.mean(settled))) < 0.5  # and fades once the baseline has moved


def test_batch_merge_equals_one_item_at_a_time() -> None:
    rng = np.random.default_rng(4)
    keys = rng.integers(0, 5, 300)
    values = rng.normal(3.0, 2.0, 300)
    whole, single = EwBaseline(half_life=20, clip=None), EwBaseline(half_life=20, clip=None)
    whole.update(keys[:100], values[:100])
    whole.update(keys[100:], values[100:])
    for key, value in zip(keys, values, strict=True):
        single.update(np.array([key]), np.array([value]))
    for got, want in zip(whole.lookup(np.arange(5)), single.lookup(np.arange(5)), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-9)
    np.testing.assert_allclose(
        whole.snapshot().global_stats[:4], single.snapshot().global_stats[:4], rtol=1e-9
    )


def test_new_keys_use_the_global_baseline() -> None:
    rng = np.random.default_rng(5)
    baseline = EwBaseline(half_life=1000, min_count=20)
    values = rng.normal(7.0, 1.0, 1000)
    baseline.update(rng.integers(0, 10, 1000), values)
    g_weight, g_mean, g_m2, _, _ = baseline.snapshot().global_stats
    expected = (9.0 - g_mean) / math.sqrt(g_m2 / g_weight)
    z = baseline.zscore(np.array([99, -1]), np.array([9.0, 9.0]))
    np.testing.assert_allclose(z, [expected, expected], rtol=1e-5)
    baseline.update(np.full(5, 42), np.full(5, 100.0))  # fewer than min_count: still global
    assert baseline.zscore(np.array([42]), np.array([100.0]))[0] > 20


def test_scores_are_zero_before_any_baseline_is_trusted() -> None:
    baseline = EwBaseline(min_count=20)
    assert baseline.zscore(np.array([1, 2]), np.array([1.0, 50.0])).tolist() == [0.0, 0.0]


def test_negative_keys_are_never_stored() -> None:
    baseline = EwBaseline()
    baseline.update(np.array([-1, -1, 3]), np.array([1.0, 2.0, 3.0]))
    assert len(baseline) == 1
    assert baseline.snapshot().global_stats[3] == 3


def test_memory_is_capped_and_recent_keys_survive() -> None:
    baseline = EwBaseline(max_keys=100)
    for start in range(0, 1000, 50):
        keys = np.arange(start, start + 50)
        baseline.update(keys, np.ones(50))
        assert len(baseline) <= 100
    kept = baseline.snapshot().keys
    assert set(range(950, 1000)) <= set(kept.tolist())
    assert kept.min() >= 800


def test_time_half_life_halves_old_weight() -> None:
    baseline = EwBaseline(half_life=None, half_life_seconds=10.0, clip=None)
    baseline.update(np.zeros(4, dtype=np.int64), np.zeros(4), now=0.0)
    baseline.update(np.zeros(1, dtype=np.int64), np.ones(1), now=10.0)
    state = baseline.snapshot()
    assert state.weight[0] == pytest.approx(3.0)  # 4 halved, plus 1
    assert state.mean[0] == pytest.approx(1.0 / 3.0)


def test_snapshot_restore_round_trip() -> None:
    rng = np.random.default_rng(6)
    baseline = EwBaseline(half_life=30)
    baseline.update(rng.integers(0, 20, 500), rng.normal(0, 1, 500))
    state = baseline.snapshot()
    probe_keys, probe_values = rng.integers(0, 25, 50), rng.normal(0, 2, 50)
    before = baseline.zscore(probe_keys, probe_values)
    restored = EwBaseline(half_life=30)
    restored.restore(state)
    baseline.update(probe_keys, probe_values)  # later updates leave the snapshot alone
    np.testing.assert_array_equal(restored.zscore(probe_keys, probe_values), before)
    again = restored.snapshot()
    for name in ("keys", "weight", "mean", "m2", "count", "last_tick", "last_time", "global_stats"):
        np.testing.assert_array_equal(getattr(again, name), getattr(state, name), err_msg=name)
    assert again.tick == state.tick


def test_shrunk_mean_is_a_smoothed_rate() -> None:
    baseline = EwBaseline(clip=None, half_life=1000)
    errors = np.zeros(1000)
    errors[:50] = 1.0  # 5 % overall, all of it on key 1
    keys = np.where(np.arange(1000) < 100, 1, 0)
    baseline.update(keys, errors)
    rates = baseline.shrunk_mean(np.array([0, 1, 7]), prior_weight=2.0)
    assert rates[0] < 0.01 and 0.45 < rates[1] < 0.55
    assert rates[2] == pytest.approx(baseline.snapshot().global_stats[1])


def test_non_finite_values_are_ignored() -> None:
    baseline = EwBaseline()
    baseline.update(np.array([1, 1, 1]), np.array([1.0, np.nan, np.inf]))
    assert baseline.lookup(np.array([1]))[2].tolist() == [1]


def test_needs_a_half_life() -> None:
    with pytest.raises(ValueError, match="half_life"):
        EwBaseline(half_life=None)
