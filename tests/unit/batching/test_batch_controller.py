"""The batching control law, driven by hand: no event loop, no clock."""

from __future__ import annotations

import numpy as np
import pytest

from otelai.batching.controller import BatchController, weighted_quantile


def _feed(
    controller: BatchController, items: int, seconds: float, latency: float, requests: int = 16
) -> None:
    controller.observe_batch(items, seconds, np.full(requests, latency), np.full(requests, items / requests))


def test_weighted_quantile_weights_by_items() -> None:
    values = np.array([1.0, 2.0, 3.0])
    assert weighted_quantile(values, np.array([1.0, 1.0, 1.0]), 0.5) == 2.0
    assert weighted_quantile(values, np.array([1.0, 1.0, 98.0]), 0.5) == 3.0
    assert weighted_quantile(np.array([]), np.array([]), 0.99) == 0.0


def test_cost_model_is_least_squares_over_recent_batches() -> None:
    controller = BatchController(min_samples=10**6)  # no AIMD: only the model
    for n in (100, 300, 200, 400):
        _feed(controller, n, 0.001 + 1e-5 * n, 0.0)
    assert controller.model is not None
    assert controller.model.intercept == pytest.approx(0.001)
    assert controller.model.slope == pytest.approx(1e-5)


def test_constant_sizes_keep_the_intercept_and_follow_the_slope() -> None:
    controller = BatchController(min_samples=10**6, model_window=4)
    for n in (100, 300, 100, 300):
        _feed(controller, n, 0.001 + 1e-5 * n, 0.0)
    for _ in range(4):
        _feed(controller, 200, 0.001 + 3e-5 * 200, 0.0)  # slower per item, sizes all alike
    model = controller.model
    assert model is not None
    assert model.intercept > 0.0  # kept from when sizes varied
    assert model.cost(200) == pytest.approx(0.001 + 3e-5 * 200)  # and still exact where it runs


def test_violation_halves_target_and_wait_then_headroom_grows_them() -> None:
    controller = BatchController(min_batch_size=10, max_batch_size=10_000, max_wait=0.004)
    controller._target = 1000.0  # as if it had grown there
    _feed(controller, 100, 0.0001, 0.020)  # p99 20 ms > 10 ms
    assert controller.target == 500
    assert controller.wait == pytest.approx(0.002)
    assert controller.p99 == pytest.approx(0.020)
    _feed(controller, 100, 0.0001, 0.001)  # window was cleared: the old 20 ms is forgotten
    assert controller.target == 510
    assert controller.wait == pytest.approx(0.0025)


def test_hold_between_headroom_and_target() -> None:
    controller = BatchController(min_batch_size=10)
    _feed(controller, 10, 0.0001, 0.009)
    assert controller.target == 10
    assert controller.wait == pytest.approx(0.002)


def test_model_ceiling_caps_growth() -> None:
    controller = BatchController(min_batch_size=10, max_batch_size=10_000)
    for n in (100, 200) * 200:
        _feed(controller, n, 0.001 + 1e-5 * n, 0.001)
    # 2 * cost(N) <= 0.8 * 10 ms  ->  N <= (4 ms - 1 ms) / 10 us = 300
    assert controller.target == 300
    # and the wait leaves room for one batch of that size: 8 ms - cost(300) = 4 ms > max_wait
    assert controller.wait == pytest.approx(0.002)


def test_throughput_floor_beats_latency_ceiling_in_overload() -> None:
    controller = BatchController(min_batch_size=10, max_batch_size=10_000)
    controller.observe_arrivals(90_000, 1.0)
    controller.observe_arrivals(90_000, 1.0)
    for _ in range(40):
        controller.observe_arrivals(90_000, 1.0)
        for n in (100, 200):
            _feed(controller, n, 0.004 + 1e-5 * n, 0.050)  # always violating
    rate = controller.arrival_rate
    assert rate == pytest.approx(90_000, rel=0.01)
    # Shrinking below what keeps up with 90k items/s would grow the queue without bound.
    floor = 1.25 * rate * 0.004 / (1 - rate * 1e-5)
    assert controller.target == pytest.approx(floor, abs=2)
    for _ in range(3):
        controller.observe_arrivals(200_000, 1.0)  # 200k/s x 10 us = 2 s of work per second
        _feed(controller, 100, 0.004 + 1e-3, 0.050)
    assert controller.target == 10_000


def test_rejects_inconsistent_settings() -> None:
    with pytest.raises(ValueError, match="min_batch_size"):
        BatchController(min_batch_size=100, max_batch_size=10)
    with pytest.raises(ValueError, match="latency_target_p99"):
        BatchController(latency_target_p99=0.0)
    with pytest.raises(ValueError, match="decrease"):
        BatchController(decrease=1.5)


def test_admission_budget_shrinks_on_overrun_and_recovers_additively() -> None:
    controller = BatchController(latency_target_p99=0.010, headroom=0.8, admission_step=0.1)
    assert controller.admission_budget == pytest.approx(0.008)
    _feed(controller, 100, 0.001, 0.012)  # a request waited 11 ms in the queue
    assert controller.admission == pytest.approx(0.7)
    _feed(controller, 100, 0.001, 0.030)
    assert controller.admission == pytest.approx(0.49)
    assert controller.admission_budget == pytest.approx(0.49 * 0.008)
    _feed(controller, 100, 0.008, 0.0085)  # over the target, but it was processing, not waiting
    assert controller.admission == pytest.approx(0.59)
    for _ in range(2):
        _feed(controller, 100, 0.001, 0.002)
    assert controller.admission == pytest.approx(0.79)
    for _ in range(10):
        _feed(controller, 100, 0.001, 0.002)
    assert controller.admission == 1.0


def test_admission_factor_has_a_floor() -> None:
    controller = BatchController(min_admission=0.1)
    for _ in range(20):
        _feed(controller, 100, 0.001, 1.0)
    assert controller.admission == pytest.approx(0.1)
    with pytest.raises(ValueError, match="min_admission"):
        BatchController(min_admission=0.0)
