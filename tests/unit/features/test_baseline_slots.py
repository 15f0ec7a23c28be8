"""Baseline queries given precomputed slots or lookups: bit-identical to plain queries."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otelai.features.baseline import EwBaseline


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 2**32 - 1), st.sampled_from([None, 7.0, 500.0]), st.sampled_from([0, 3, 20]))
def test_shared_slots_and_lookups_give_the_same_answers(
    seed: int, half_life: float | None, min_count: int
) -> None:
    rng = np.random.default_rng(seed)
    settings_: dict[str, Any] = dict(
        half_life=half_life, half_life_seconds=None if half_life else 3.0, min_count=min_count, max_keys=40
    )
    model = EwBaseline(**settings_)
    for step in range(10):
        n = int(rng.integers(0, 200))
        keys = rng.integers(-3, int(rng.integers(1, 80)), n)  # negative, unseen and evicted keys
        values = rng.normal(5.0, 2.0, n)
        slots = model.slots(keys)
        looked_up = model.lookup(keys)
        for got, want in zip(model.lookup(keys, slots=slots), looked_up, strict=True):
            np.testing.assert_array_equal(got, want)
        plain = model.zscore(keys, values)
        np.testing.assert_array_equal(model.zscore(keys, values, slots=slots), plain)
        np.testing.assert_array_equal(model.zscore(keys, values, looked_up=looked_up), plain)
        np.testing.assert_array_equal(model.shrunk_mean(keys, 3.0, slots=slots), model.shrunk_mean(keys, 3.0))
        model.update(keys, values, now=step * 0.7)


def test_stale_slots_are_refused() -> None:
    model = EwBaseline()
    model.update(np.array([1, 2]), np.array([1.0, 2.0]))
    slots = model.slots(np.array([1, 3]))
    model.update(np.array([3]), np.array([3.0]))  # adds a key: rows move
    with pytest.raises(ValueError, match="older state"):
        model.lookup(np.array([1, 3]), slots=slots)
    assert model.lookup(np.array([1, 3]), slots=model.slots(np.array([1, 3])))[2].tolist() == [1, 1]
