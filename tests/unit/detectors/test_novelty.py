"""The per-series novelty detector: streaming, batch-size invariant, keyed by series."""

from __future__ import annotations

import numpy as np
import pytest

from otelai.detectors.novelty import (
    NoveltyDetector,
    _Forecast,
    decayed_sums,
    decode_slog,
    forecast_surprise,
)
from otelai.detectors.registry import Serving
from otelai.models.bundle import Bundle, DetectorSpec, Manifest, SchemaSpec, SignalModel, save_bundle
from otelai.scoring.metrics import SCHEMA

VALUE = SCHEMA.index("value_slog")


def rows(values: np.ndarray) -> np.ndarray:
    features = np.zeros((values.size, SCHEMA.width), dtype=np.float32)
    features[:, VALUE] = np.sign(values) * np.log1p(np.abs(values))
    return features


def series(seed: int, n: int = 600) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 50.0 + 5.0 * np.sin(np.arange(n) / 20.0) + rng.standard_normal(n)


def test_decode_inverts_the_feature() -> None:
    values = np.array([-1e6, -3.5, 0.0, 0.25, 42.0, 7e8])
    assert decode_slog(rows(values)[:, VALUE]) == pytest.approx(values, rel=1e-6)


def test_spike_scores_far_above_normal_points() -> None:
    values = series(0)
    values[400] = 90.0  # far outside everything seen
    scores = NoveltyDetector(SCHEMA.names).score_many(rows(values))
    assert scores[:30].max() == 0.0  # warm-up
    assert scores[400] > 0.9
    assert np.quantile(np.delete(scores, 400)[30:], 0.99) < 0.5
    assert ((scores >= 0) & (scores < 1)).all()


def test_a_burst_alarms_at_its_rising_edge_only() -> None:
    values = series(1)
    values[300:320] += 30.0  # a surge that lasts 20 points
    surprise_only = NoveltyDetector(SCHEMA.names, range_scale=1e9, context_weight=0.0, forecast_weight=0.0)
    scores = surprise_only.score_many(rows(values))
    assert scores[300] > 0.2
    assert np.count_nonzero(scores[301:320] > 0.2) <= 3


def surprise_only(**params: object) -> NoveltyDetector:
    params = {"forecast_weight": 0.0} | params
    return NoveltyDetector(SCHEMA.names, range_scale=1e9, context_weight=0.0, **params)  # type: ignore[arg-type]


def test_surprise_is_relative_to_the_level_of_a_heavy_tailed_series() -> None:
    rng = np.random.default_rng(7)
    values = np.exp(rng.normal(3.0, 0.5, 2000))  # positive, spread growing with the level
    values[1500:1520] *= 30.0  # a burst thirty times the usual level
    logged = surprise_only().score_many(rows(values))
    raw = surprise_only(log_surprise=False).score_many(rows(values))
    # On the raw value the ordinary high values of the long tail look like bursts ...
    assert np.count_nonzero(raw[100:1500] > 0.15) >= 5
    # ... on its signed log they do not, and the real burst still stands out.
    assert np.count_nonzero(logged[100:1500] > 0.15) == 0
    assert logged[1500] > 0.15


def test_surprise_on_the_log_handles_negative_and_zero_values() -> None:
    values = series(8) - 50.0  # crosses zero
    values[500] = -400.0
    scores = surprise_only().score_many(rows(values))
    assert np.isfinite(scores).all() and scores[500] == scores[30:].max() > 0.1


def cycle(n: int = 2400, period: int = 40) -> np.ndarray:
    """A clean repeating ramp: after one period every context of it has been seen."""
    return 10.0 + (np.arange(n) % period).astype(np.float64)


def context_only(**params: float) -> NoveltyDetector:
    params = {"forecast_weight": 0.0} | params
    return NoveltyDetector(SCHEMA.names, range_scale=1e9, z_weight=0.0, **params)  # type: ignore[arg-type]


def forecast_only(**params: float) -> NoveltyDetector:
    return NoveltyDetector(
        SCHEMA.names,
        range_scale=1e9,
        z_weight=0.0,
        context_weight=0.0,
        **params,  # type: ignore[arg-type]
    )


def smooth(n: int = 3000) -> np.ndarray:
    """A steady level with little noise (each step well predicted by the last few), after an
    early swing that makes its range 100 wide."""
    rng = np.random.default_rng(9)
    values = 100.0 + 0.2 * rng.standard_normal(n)
    values[40:80] = 100.0 + 50.0 * np.sin(np.arange(40) * np.pi / 20.0)
    return values


def test_decayed_sums_match_a_direct_sum_whatever_the_chunk() -> None:
    rng = np.random.default_rng(4)
    values, counted = rng.standard_normal(300), (rng.random(300) < 0.7).astype(np.float64)
    decay = 0.9
    t = np.arange(300)
    for chunk in (1, 7, 300):
        weight, total, (after_weight, after_total) = decayed_sums(
            values, counted, (2.0, 3.0), decay=decay, chunk=chunk
        )
        for i in (0, 1, 150, 299):
            powers = decay ** (i - t[:i])  # point j < i, i - j steps old
            assert weight[i] == pytest.approx(2.0 * decay**i + (counted[:i] * powers).sum())
            assert total[i] == pytest.approx(3.0 * decay**i + (counted[:i] * values[:i] * powers).sum())
        powers = decay ** (300 - t)
        assert after_weight == pytest.approx(2.0 * decay**300 + (counted * powers).sum())
        assert after_total == pytest.approx(3.0 * decay**300 + (counted * values * powers).sum())


def test_forecast_surprise_is_the_standardised_smoothing_error() -> None:
    x = np.log1p(series(3, 400))  # noise well above the scale's floor (1e-3 of the level)
    state = _Forecast()
    got = forecast_surprise(x, state, decay=0.8, error_decay=0.95)
    # Direct: forecast = decayed mean of earlier values; scale = root decayed mean of earlier
    # squared errors (errors from point 1 on, the first point has no forecast).
    for i in (1, 2, 100, 399):
        forecast = np.average(x[:i], weights=0.8 ** (i - np.arange(i)))
        errors_before = np.array(
            [x[j] - np.average(x[:j], weights=0.8 ** (j - np.arange(j))) for j in range(1, i)]
        )
        if i == 1:
            assert got[i] == 0.0  # no error to compare with yet
            continue
        scale = np.sqrt(np.average(errors_before**2, weights=0.95 ** (i - np.arange(1, i))))
        assert got[i] == pytest.approx(abs(x[i] - forecast) / scale, rel=1e-9)
    assert got[0] == 0.0 and state.weight > 0 and state.error_weight > 0


def test_a_jump_inside_the_range_of_a_smooth_series_is_a_forecast_surprise() -> None:
    values = smooth()
    values[2500:] += 8.0  # a step well inside the range (100 wide): no new extreme
    with_forecast = forecast_only().score_many(rows(values))
    without = forecast_only(forecast_weight=0.0).score_many(rows(values))
    assert without.max() < 1e-6  # no range novelty, surprise or context
    assert with_forecast[2500] > 0.2  # the step is far off the smoothed forecast
    assert np.quantile(with_forecast[300:2500], 0.99) < 0.1  # the steady level is predicted
    assert np.count_nonzero(with_forecast[2501:2600] > 0.2) <= 2  # refractory: one alarm


def test_a_series_noisy_step_to_step_gives_little_forecast_surprise() -> None:
    rng = np.random.default_rng(11)
    noisy = 50.0 + 10.0 * rng.standard_normal(1500)  # every step is off by the noise
    scores = forecast_only().score_many(rows(noisy))
    assert scores[300:].max() < 0.25  # judged against its own error scale


def test_a_change_of_shape_inside_the_range_is_a_new_context() -> None:
    values = cycle()
    values[2000:2100] = 30.0  # the ramp stops at a level it always passes: no new extreme
    scores = context_only(slow_window=0).score_many(rows(values))
    assert scores[40:2000].max() == 0.0  # after the first ramp, only contexts seen before
    # The flat run is new at once, and (the last new context 2000 points ago) nearly fully rare.
    assert scores[2000:2003].max() > 0.3
    assert np.count_nonzero(scores[2000:2100]) <= 2  # new once, not at every point
    assert ((scores >= 0) & (scores <= 0.35)).all()


def test_a_change_of_the_moving_average_is_a_new_slow_context() -> None:
    values = cycle()
    values[2000:2100] = 30.0  # the ramp's 48-point average is steady until the ramp stops
    fine = context_only(slow_window=0).score_many(rows(values))
    both = context_only(slow_window=48).score_many(rows(values))
    slow = np.flatnonzero(both != fine)  # points where a new slow context beats the fine ones
    assert slow.size >= 1
    assert ((slow >= 2000) & (slow < 2100 + 3 * 48)).all()  # only while the averages move
    assert ((both >= 0) & (both <= 0.35)).all()


def test_new_contexts_are_worth_less_on_a_series_that_keeps_making_them() -> None:
    rng = np.random.default_rng(5)
    noisy = 50.0 + 10.0 * rng.standard_normal(1200)
    scores = context_only().score_many(rows(noisy))
    regular = context_only().score_many(rows(np.concatenate([cycle(), np.full(400, 30.0)])))
    assert np.count_nonzero(scores[300:]) > 0  # noise keeps finding new contexts ...
    assert scores[300:].max() < 0.5 * regular.max()  # ... each far less informative


def bundle_with(path: pytest.TempPathFactory, spec: DetectorSpec) -> Bundle:
    """A metrics bundle in ``path`` holding the detector ``spec``."""
    manifest = Manifest(
        name="t",
        version="1",
        signals={"metrics": SignalModel(feature_schema=SchemaSpec.of("metrics", SCHEMA), detectors=[spec])},
    )
    return save_bundle(path, manifest)  # type: ignore[arg-type]


def test_bundles_without_new_params_score_as_before(tmp_path: pytest.TempPathFactory) -> None:
    spec = DetectorSpec(name="n", kind="novelty", params={"threshold": 0.3})
    bundle = bundle_with(tmp_path, spec)
    old = NoveltyDetector.from_spec(bundle, spec, Serving())
    assert old.context_weight == 0.0 and not old.log_surprise  # the surprise on the raw value
    assert old.slow_window == 0  # no slow contexts
    assert old.forecast_weight == 0.0  # no forecast surprise
    fresh = DetectorSpec(name="n", kind="novelty", params=NoveltyDetector(SCHEMA.names).params)
    assert NoveltyDetector.from_spec(bundle, fresh, Serving()).params == NoveltyDetector(SCHEMA.names).params


def test_invalid_context_params_are_refused() -> None:
    with pytest.raises(ValueError, match="context_floor"):
        NoveltyDetector(SCHEMA.names, context_floor=0.0)
    with pytest.raises(ValueError, match="context_bins"):
        NoveltyDetector(SCHEMA.names, context_bins=64, context_length=4)
    with pytest.raises(ValueError, match="slow_window"):
        NoveltyDetector(SCHEMA.names, slow_window=-1)
    with pytest.raises(ValueError, match="forecast_weight"):
        NoveltyDetector(SCHEMA.names, forecast_error_half_life=4.0)
    with pytest.raises(ValueError, match="forecast_weight"):
        NoveltyDetector(SCHEMA.names, forecast_half_life=0.0)
    with pytest.raises(ValueError, match="slow_length"):
        NoveltyDetector(SCHEMA.names, context_bins=64, context_length=2, slow_length=4)


@pytest.mark.parametrize("size", [1, 7, 47, 256, 1000])
def test_context_scores_do_not_depend_on_batch_size(size: int) -> None:
    values = np.concatenate([series(6, 700), cycle(300) + 40.0])
    features = rows(values)
    whole = context_only(context_half_life=50.0, slow_window=16).score_many(features)
    fine = context_only(context_half_life=50.0, slow_window=0).score_many(features)
    assert np.count_nonzero(whole) >= 3  # the test has something to compare
    assert np.count_nonzero(whole != fine) >= 3  # slow contexts included
    detector = context_only(context_half_life=50.0, slow_window=16)
    parts = np.concatenate([detector.score_many(features[i : i + size]) for i in range(0, 1000, size)])
    assert parts == pytest.approx(whole, abs=1e-6)


@pytest.mark.parametrize("size", [1, 7, 47, 256, 1000])
def test_forecast_scores_do_not_depend_on_batch_size(size: int) -> None:
    values = smooth(1000)
    values[600:] += 8.0
    values[800] = 100.0
    features = rows(values)
    whole = forecast_only().score_many(features)
    assert np.count_nonzero(whole > 0.05) >= 2  # the test has something to compare
    detector = forecast_only()
    parts = np.concatenate([detector.score_many(features[i : i + size]) for i in range(0, 1000, size)])
    assert parts == pytest.approx(whole, abs=1e-6)


@pytest.mark.parametrize("size", [1, 7, 256, 1000])
def test_scores_do_not_depend_on_batch_size(size: int) -> None:
    features = rows(series(2, 1000))
    whole = NoveltyDetector(SCHEMA.names).score_many(features)
    detector = NoveltyDetector(SCHEMA.names)
    parts = np.concatenate([detector.score_many(features[i : i + size]) for i in range(0, 1000, size)])
    assert parts == pytest.approx(whole, abs=1e-6)


def test_series_keep_their_own_state_when_interleaved() -> None:
    a, b = rows(series(3, 400)), rows(10.0 * series(4, 400))
    alone_a = NoveltyDetector(SCHEMA.names).score_many(a)
    alone_b = NoveltyDetector(SCHEMA.names).score_many(b)
    detector = NoveltyDetector(SCHEMA.names)
    keys = np.tile(np.array([11, 22], dtype=np.int64), 400)
    mixed = np.empty((800, SCHEMA.width), dtype=np.float32)
    mixed[0::2], mixed[1::2] = a, b
    scores = np.concatenate(
        [detector.score_series(keys[i : i + 64], mixed[i : i + 64]) for i in range(0, 800, 64)]
    )
    assert scores[0::2] == pytest.approx(alone_a, abs=1e-6)
    assert scores[1::2] == pytest.approx(alone_b, abs=1e-6)


def test_forgets_least_recently_seen_series() -> None:
    detector = NoveltyDetector(SCHEMA.names, max_series=2)
    for key in (1, 2, 3):
        detector.score_series(np.array([key], dtype=np.int64), rows(np.array([1.0])))
    assert sorted(detector._series) == [2, 3]


def test_from_spec_reads_params_and_schema(tmp_path: pytest.TempPathFactory) -> None:
    spec = DetectorSpec(name="n", kind="novelty", params={"half_life": 200.0, "threshold": 0.3})
    bundle = bundle_with(tmp_path, spec)
    detector = NoveltyDetector.from_spec(bundle, spec, Serving())
    assert detector.half_life == 200.0 and detector.columns == SCHEMA.names
