"""The compiled calibration kernels against the numpy path: bit-identical scores and windows."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otelai.decision import calibration
from otelai.decision.calibration import EcdfCalibrator

pytest.importorskip("numba")


def _batch(rng: np.random.Generator, window: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Raw scores with ties, signed zeros, NaN and infinities; now and then empty or huge."""
    size = int(rng.choice([0, 1, 7, window // 16, window // 8, window // 8 + 1, 3 * window]))
    raw = rng.integers(-20, 20, size).astype(np.float64) / 4
    if rng.random() < 0.5:
        raw += rng.normal(size=size) * (rng.random(size) < 0.5)
    odd = rng.random(size)
    raw[odd < 0.05] = np.nan
    raw[(odd >= 0.05) & (odd < 0.08)] = np.inf
    raw[(odd >= 0.08) & (odd < 0.1)] = -np.inf
    raw[(odd >= 0.1) & (odd < 0.12)] = -0.0
    return raw


def _stream(seed: int, kwargs: dict[str, Any], steps: int) -> tuple[list[Any], EcdfCalibrator]:
    rng = np.random.default_rng(seed)
    cal = EcdfCalibrator(**kwargs)
    outputs: list[Any] = []
    for step in range(steps):
        if step == steps // 2 and rng.random() < 0.5:
            cal.prime(rng.normal(size=int(rng.integers(0, 50))))
        raw = _batch(rng, cal.window)
        outputs.append(cal.transform(raw))
        outputs.append(cal.transform(raw.reshape(1, -1)[:, ::-1]))  # 2-D, not contiguous
        cal.update(raw)
        outputs += [cal.samples, cal._next, cal._rng.bit_generator.state["state"]["state"]]
        outputs += [cal._ring[: cal.samples].copy(), None if cal._sorted is None else cal._sorted.copy()]
    return outputs, cal


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([1, 16, 64, 512]),
    st.sampled_from([1.0, 0.3, 0.05]),
    st.sampled_from([1, 8]),
)
def test_compiled_and_numpy_calibration_agree_bit_for_bit(
    seed: int, window: int, sample_rate: float, min_samples: int
) -> None:
    kwargs: dict[str, Any] = dict(
        window=window, sample_rate=sample_rate, min_samples=min(min_samples, window), seed=seed % 1000
    )
    assert calibration._compiled() is not None
    compiled, _ = _stream(seed, kwargs, 40)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(calibration, "_compiled", lambda: None)
        reference, _ = _stream(seed, kwargs, 40)
    assert len(compiled) == len(reference)
    for step, (got, want) in enumerate(zip(compiled, reference, strict=True)):
        if isinstance(want, np.ndarray):
            assert isinstance(got, np.ndarray)
            assert got.shape == want.shape and got.dtype == want.dtype
            # Bits, not values: -0.0 and 0.0 differ, and NaN must be NaN.
            np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64), err_msg=f"item {step}")
        else:
            assert got == want, f"item {step}"


def test_scores_of_an_empty_batch_and_a_scalar() -> None:
    cal = EcdfCalibrator(window=64, sample_rate=1.0, min_samples=4)
    cal.update(np.arange(64.0))
    assert cal.transform(np.zeros(0)).shape == (0,)
    assert cal.transform(np.float64(31.0)).shape == ()
    assert float(cal.transform(np.float64(31.0))) == 63 / 128  # 31 below, one equal
