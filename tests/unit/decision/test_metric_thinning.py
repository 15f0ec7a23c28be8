"""Dropping metric points without breaking counter semantics."""

from __future__ import annotations

import numpy as np
import pytest

from otelai.decision.metric_thinning import DeltaCarry, PointKind, Temporality, droppable, fold_deltas


def test_droppable_by_kind_and_temporality() -> None:
    kinds = np.array(
        [
            PointKind.GAUGE,
            PointKind.SUM,
            PointKind.SUM,
            PointKind.HISTOGRAM,
            PointKind.HISTOGRAM,
            PointKind.SUMMARY,
            PointKind.SUM,
        ],
        dtype=np.int8,
    )
    temporality = np.array(
        [
            Temporality.UNSPECIFIED,
            Temporality.CUMULATIVE,
            Temporality.DELTA,
            Temporality.CUMULATIVE,
            Temporality.DELTA,
            Temporality.UNSPECIFIED,
            Temporality.UNSPECIFIED,
        ],
        dtype=np.int8,
    )
    assert droppable(kinds, temporality).tolist() == [True, True, False, True, False, True, False]


def test_simple_fold_within_a_batch() -> None:
    carry = DeltaCarry(dtype=np.int64)
    series = np.array([0, 0, 0, 1, 1])
    values = np.array([1, 2, 4, 10, 20])
    start = np.array([0, 10, 20, 0, 10], dtype=np.uint64)
    end = np.array([10, 20, 30, 10, 20], dtype=np.uint64)
    keep = np.array([False, True, False, False, False])
    kept, out, out_start = fold_deltas(carry, series, values, start, end, keep)
    assert kept.tolist() == keep.tolist()
    assert out[1] == 3 and out_start[1] == 0  # (0, 20] folded into the kept point
    ids, pending, pending_start = carry.pending()
    assert ids.tolist() == [0, 1]
    assert pending.tolist() == [4, 30]
    assert pending_start.tolist() == [20, 0]
    # The next batch's first kept point of each series takes its carry.
    kept, out, out_start = fold_deltas(
        carry,
        np.array([1, 0]),
        np.array([5, 8]),
        np.array([20, 30], dtype=np.uint64),
        np.array([30, 40], dtype=np.uint64),
        np.array([True, True]),
    )
    assert out.tolist() == [35, 12]
    assert out_start.tolist() == [0, 20]
    assert carry.pending()[0].size == 0


def test_forwarded_plus_carry_equals_everything_seen() -> None:
    rng = np.random.default_rng(11)
    carry = DeltaCarry(dtype=np.float64)
    total_in = 0.0
    total_out = 0.0
    clock = np.zeros(50, dtype=np.uint64)
    for _ in range(30):
        n = int(rng.integers(0, 400))
        series = rng.integers(0, 50, size=n)
        values = rng.random(n) * 100
        # each series' points are contiguous in time; the batch arrives shuffled
        start = np.empty(n, dtype=np.uint64)
        end = np.empty(n, dtype=np.uint64)
        for i, s in enumerate(series.tolist()):
            start[i] = clock[s]
            clock[s] += 10
            end[i] = clock[s]
        perm = rng.permutation(n)
        series, values, start, end = series[perm], values[perm], start[perm], end[perm]
        keep = rng.random(n) < 0.2
        kept, out, _ = fold_deltas(carry, series, values, start, end, keep)
        total_in += float(values.sum())
        total_out += float(out[kept].sum())
    series_left, pending, _ = carry.drain()
    assert total_out + float(pending.sum()) == pytest.approx(total_in, rel=1e-12)
    assert carry.pending()[0].size == 0
    assert series_left.size > 0


@pytest.mark.parametrize("shuffle", [False, True])
def test_folded_intervals_are_contiguous(shuffle: bool) -> None:
    carry = DeltaCarry(dtype=np.int64)
    # One series, ten one-second intervals, only every third point kept; arrival order may differ.
    order = np.random.default_rng(4).permutation(10) if shuffle else np.arange(10)
    start = (np.arange(10, dtype=np.uint64) * 1000)[order]
    end = start + 1000
    keep = (np.arange(10) % 3 == 2)[order]
    ones = np.ones(10, dtype=np.int64)
    kept, out, out_start = fold_deltas(carry, np.zeros(10, dtype=np.int64), ones, start, end, keep)
    spans = sorted(zip(out_start[kept].tolist(), end[kept].tolist(), out[kept].tolist(), strict=True))
    assert spans == [(0, 3000, 3), (3000, 6000, 3), (6000, 9000, 3)]
    assert carry.pending()[1].tolist() == [1]
    assert carry.pending()[2].tolist() == [9000]


def test_vector_values_fold_per_component() -> None:
    # Histogram deltas with fixed boundaries: [count, sum, bucket0, bucket1].
    carry = DeltaCarry(width=4, dtype=np.float64)
    values = np.array([[2, 3.0, 1, 1], [1, 10.0, 0, 1], [5, 1.0, 5, 0]])
    _, out, _ = fold_deltas(
        carry,
        np.array([7, 7, 7]),
        values,
        np.array([0, 1, 2], dtype=np.uint64),
        np.array([1, 2, 3], dtype=np.uint64),
        np.array([False, True, False]),
    )
    assert out[1].tolist() == [3, 13.0, 1, 2]
    assert carry.pending()[1].tolist() == [[5, 1.0, 5, 0]]


def test_series_beyond_the_carry_are_never_dropped() -> None:
    carry = DeltaCarry(dtype=np.int64, max_series=4)
    series = np.array([1, 9, -1, 1])
    kept, out, _ = fold_deltas(
        carry,
        series,
        np.array([1, 2, 3, 4]),
        np.zeros(4, dtype=np.uint64),
        np.arange(4, dtype=np.uint64),
        np.zeros(4, dtype=bool),
    )
    assert kept.tolist() == [False, True, True, False]
    assert out.tolist() == [1, 2, 3, 4]
    assert carry.pending()[1].tolist() == [5]


def test_empty_batch() -> None:
    carry = DeltaCarry()
    empty = np.zeros(0, dtype=np.int64)
    kept, out, start = fold_deltas(
        carry, empty, np.zeros(0), np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, bool)
    )
    assert kept.size == out.size == start.size == 0
