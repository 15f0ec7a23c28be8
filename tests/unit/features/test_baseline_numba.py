"""The compiled baseline merge against the numpy one: bit-identical states and scores."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otelai.features import baseline
from otelai.features.baseline import BaselineState, EwBaseline

pytest.importorskip("numba")

_FIELDS = ("keys", "weight", "mean", "m2", "count", "last_tick", "last_time", "global_stats")


def _stream(seed: int, settings_: dict[str, Any], batches: int) -> tuple[list[Any], BaselineState]:
    rng = np.random.default_rng(seed)
    model = EwBaseline(**settings_)
    outputs: list[Any] = []
    for step in range(batches):
        n = int(rng.integers(0, 300))
        keys = rng.integers(-2, int(rng.integers(1, 200)), n)
        values = rng.normal(5.0, 2.0, n) * (1 + 10 * (rng.random(n) < 0.02))
        if n and rng.random() < 0.2:
            values[rng.integers(0, n)] = np.nan
        outputs += [model.zscore(keys, values), model.shrunk_mean(keys)]
        model.update(keys, values, now=step * 0.7)
    return outputs, model.snapshot()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([None, 7.0, 500.0]),
    st.sampled_from([None, 1.0, 3.0]),
    st.sampled_from([0, 3, 20]),
    st.sampled_from([40, 65_536]),
)
def test_compiled_and_numpy_merges_agree_bit_for_bit(
    seed: int, half_life: float | None, clip: float | None, min_count: int, max_keys: int
) -> None:
    settings_: dict[str, Any] = dict(
        half_life=half_life,
        half_life_seconds=None if half_life else 3.0,
        clip=clip,
        min_count=min_count,
        max_keys=max_keys,
    )
    assert baseline._compiled() is not None
    compiled = _stream(seed, settings_, 12)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(baseline, "_compiled", lambda: None)
        reference = _stream(seed, settings_, 12)
    for got, want in zip(compiled[0], reference[0], strict=True):
        np.testing.assert_array_equal(got, want)
    for name in _FIELDS:
        np.testing.assert_array_equal(getattr(compiled[1], name), getattr(reference[1], name), err_msg=name)
    assert compiled[1].tick == reference[1].tick


@pytest.mark.parametrize("stride", [1, 100_003], ids=["dense_keys", "sparse_keys"])
def test_compiled_update_matches_numpy_across_restores_and_evictions(stride: int) -> None:
    """Dense keys (interner ids) take the row map, sparse ones the binary search; a restore
    and the evictions replace the keys, and with them the map."""

    def stream(model: EwBaseline) -> list[bytes]:
        out: list[bytes] = []
        saved = None
        for step in range(40):
            n = int(rng.integers(0, 400))
            keys = rng.integers(-2, 60, n) * stride
            values = rng.normal(3.0, 1.0, n)
            values[rng.random(n) < 0.02] = np.nan
            model.update(keys, values, now=step * 0.5)
            if step == 10:
                saved = model.snapshot()
            if step == 25 and saved is not None:
                model.restore(saved)
            state = model.snapshot()
            out += [np.asarray(getattr(state, f)).tobytes() for f in _FIELDS]
            out.append(model.zscore(keys, values).tobytes())
        return out

    settings_: dict[str, Any] = dict(half_life=50.0, min_count=4, max_keys=24, clip=3.0)
    assert baseline._compiled() is not None
    rng = np.random.default_rng(stride)
    compiled = stream(EwBaseline(**settings_))
    rng = np.random.default_rng(stride)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(baseline, "_compiled", lambda: None)
        reference = stream(EwBaseline(**settings_))
    assert compiled == reference


def test_a_stale_row_map_cannot_give_a_wrong_row() -> None:
    """The row map only spares binary searches: rows it gets wrong (a map of other keys, one
    too short) are searched for, so every key still gets its own row or none."""
    kernel = baseline._compiled()
    assert kernel is not None
    rng = np.random.default_rng(0)
    stored = np.array([2, 5, 9, 40, 41], dtype=np.int64)
    keys = rng.integers(-3, 50, 500)
    want = np.empty(keys.size, dtype=np.int64)
    kernel.find_rows(stored, np.zeros(0, dtype=np.int32), keys, want)
    expected = [
        -2 if key < 0 else int(np.flatnonzero(stored == key)[0]) if key in stored else -1
        for key in keys.tolist()
    ]
    assert want.tolist() == expected
    for size in (3, 45, 60):  # shorter than the keys, as long, longer
        stale = rng.integers(-1, 7, size).astype(np.int32)
        got = np.empty(keys.size, dtype=np.int64)
        kernel.find_rows(stored, stale, keys, got)
        assert got.tolist() == expected
