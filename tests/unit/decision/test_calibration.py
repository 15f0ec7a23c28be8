"""ECDF calibration of raw scores."""

from __future__ import annotations

import numpy as np
import pytest

from otelai.decision.calibration import EcdfCalibrator


def test_docstring_example() -> None:
    cal = EcdfCalibrator(window=1000, sample_rate=1.0, min_samples=10, seed=0)
    cal.update(np.arange(1000.0))
    assert cal.transform(np.array([-1.0, 499.5, 5000.0])).tolist() == [0.0, 0.5, 1.0]


def test_monotone_and_in_unit_interval() -> None:
    rng = np.random.default_rng(1)
    cal = EcdfCalibrator(window=4096, sample_rate=1.0, min_samples=100, seed=1)
    cal.update(rng.lognormal(size=10_000))
    raw = np.sort(np.concatenate([rng.lognormal(size=5000) * 3, [-np.inf, 0.0, np.inf, 1e300]]))
    scores = cal.transform(raw)
    assert np.all((scores >= 0.0) & (scores <= 1.0))
    assert np.all(np.diff(scores) >= 0.0)


def test_quantiles_of_a_known_distribution() -> None:
    rng = np.random.default_rng(2)
    cal = EcdfCalibrator(window=8192, sample_rate=0.5, min_samples=1024, seed=2)
    for _ in range(20):
        cal.update(rng.standard_normal(2000))
    assert cal.samples == 8192
    # Phi(0) = 0.5, Phi(1.2816) = 0.9, Phi(2.3263) = 0.99; the ECDF's sampling error on 8192
    # samples is at most about 0.0055 (sqrt(p(1-p)/n)) at the median: 4 sigma bounds below.
    got = cal.transform(np.array([0.0, 1.2816, 2.3263, -1.2816]))
    assert got == pytest.approx([0.5, 0.9, 0.99, 0.1], abs=0.022)
    assert cal.quantile(0.9) == pytest.approx(1.2816, abs=0.08)
    # Fresh traffic from the same distribution maps to about uniform scores.
    scores = cal.transform(rng.standard_normal(20_000))
    assert np.mean(scores >= 0.99) == pytest.approx(0.01, abs=0.004)


def test_transform_keeps_the_input_shape() -> None:
    cal = EcdfCalibrator(window=100, sample_rate=1.0, min_samples=10)
    cal.update(np.arange(100.0))
    raw = np.array([[99.5, -1.0], [np.nan, 49.5]])
    out = cal.transform(raw)
    assert out.shape == (2, 2)
    assert out[0].tolist() == [1.0, 0.0] and out[1, 1] == 0.5 and np.isnan(out[1, 0])


def test_ties_count_half() -> None:
    cal = EcdfCalibrator(window=1000, sample_rate=1.0, min_samples=10)
    cal.update(np.zeros(900))
    cal.update(np.arange(1.0, 101.0))
    # A constant raw score shared by most of the traffic is the median, not the maximum.
    assert cal.transform(np.array([0.0]))[0] == pytest.approx(0.45)


def test_warm_up_is_conservative() -> None:
    cal = EcdfCalibrator(window=100, sample_rate=1.0, min_samples=50, warmup_score=0.0)
    cal.update(np.arange(49.0))
    assert not cal.warm
    assert cal.transform(np.array([1e9, 0.0, np.nan])).tolist()[:2] == [0.0, 0.0]
    assert np.isnan(cal.transform(np.array([np.nan]))[0])
    assert np.isnan(cal.quantile(0.5))
    cal.update(np.array([49.0]))
    assert cal.warm
    assert cal.transform(np.array([1e9]))[0] == 1.0


def test_window_is_bounded_and_forgets() -> None:
    cal = EcdfCalibrator(window=256, sample_rate=1.0, min_samples=16)
    cal.update(np.zeros(1000))
    for _ in range(10):  # wrap around the ring in pieces that straddle its end
        cal.update(np.full(100, 10.0))
    assert cal.samples == 256
    assert cal.transform(np.array([5.0]))[0] == 0.0  # the old zeros are gone
    cal.update(np.arange(10_000.0))  # a batch bigger than the window keeps its newest part
    assert cal.quantile(0.0) == 10_000 - 256


def test_nan_and_inf_are_not_learned_and_nan_passes_through() -> None:
    cal = EcdfCalibrator(window=100, sample_rate=1.0, min_samples=10)
    cal.update(np.array([np.nan, np.inf, -np.inf]))
    assert cal.samples == 0
    cal.update(np.arange(20.0))
    out = cal.transform(np.array([np.nan, 100.0]))
    assert np.isnan(out[0]) and out[1] == 1.0


def test_thinning_is_seeded() -> None:
    data = np.random.default_rng(3).random(50_000)
    a = EcdfCalibrator(window=1024, sample_rate=0.01, min_samples=10, seed=9)
    b = EcdfCalibrator(window=1024, sample_rate=0.01, min_samples=10, seed=9)
    a.update(data)
    b.update(data)
    assert a.samples == b.samples
    assert 400 < a.samples < 600  # about 1% of 50k
    probe = np.linspace(0, 1, 11)
    assert np.array_equal(a.transform(probe), b.transform(probe))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 0},
        {"sample_rate": 0.0},
        {"min_samples": 0},
        {"window": 10, "min_samples": 11},
        {"warmup_score": 2.0},
    ],
)
def test_invalid_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        EcdfCalibrator(**kwargs)  # type: ignore[arg-type]


def test_incrementally_sorted_window_equals_a_fresh_sort() -> None:
    rng = np.random.default_rng(5)
    cal = EcdfCalibrator(window=512, sample_rate=1.0, min_samples=16, seed=1)
    for step in range(400):
        # ties and repeats on purpose: integers from a small range
        cal.update(rng.integers(0, 40, size=int(rng.integers(1, 40))).astype(np.float64))
        probe = rng.integers(-1, 41, size=32).astype(np.float64)
        got = cal.transform(probe)
        assert cal._sorted is not None
        np.testing.assert_array_equal(cal._sorted, np.sort(cal._ring[: cal.samples]))
        expected = EcdfCalibrator(window=512, sample_rate=1.0, min_samples=16)
        expected.update(cal._ring[: cal.samples])
        np.testing.assert_allclose(got, expected.transform(probe), err_msg=f"step {step}")


def test_the_lookup_table_gives_the_mid_rank_ecdf_of_the_window_with_ties_and_nan() -> None:
    rng = np.random.default_rng(3)
    cal = EcdfCalibrator(window=512, sample_rate=1.0, min_samples=16, seed=0)
    for _ in range(20):
        # Few distinct values: ties everywhere; the window wraps around many times.
        cal.update(rng.integers(0, 40, size=int(rng.integers(1, 200))).astype(np.float64) / 4)
        window = np.sort(cal._ring[: cal.samples])
        raw = np.concatenate([rng.integers(-4, 44, size=300) / 4, [np.nan, -np.inf, np.inf]])
        expected = (np.searchsorted(window, raw, "left") + np.searchsorted(window, raw, "right")) / (
            2.0 * window.size
        )
        expected[np.isnan(raw)] = np.nan
        np.testing.assert_array_equal(cal.transform(raw), expected)
