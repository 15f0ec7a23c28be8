"""Row assembly per (resource, timestamp): complete rows, rows split over batches, late and
missing columns, and the bound on resources."""

from __future__ import annotations

import numpy as np

from otelai.features.resource_rows import RowAssembler

A, B = b"resource-a", b"resource-b"


def _add(rows: RowAssembler, points: list[tuple[bytes, int, int, float]]) -> dict[bytes, list[list[float]]]:
    keys = sorted({p[0] for p in points})
    ready = rows.add(
        keys,
        np.array([keys.index(p[0]) for p in points], dtype=np.int64),
        np.array([p[1] for p in points], dtype=np.int64),
        np.array([p[2] for p in points], dtype=np.int64),
        np.array([p[3] for p in points], dtype=np.float64),
    )
    return {r.resource: r.values.tolist() for r in ready}


def test_complete_rows_are_ready_at_once_in_time_order() -> None:
    rows = RowAssembler(2)
    out = _add(rows, [(A, 1, 20, 4.0), (A, 0, 10, 1.0), (A, 1, 10, 2.0), (A, 0, 20, 3.0), (B, 5, 10, 9.0)])
    assert out == {A: [[1.0, 2.0], [3.0, 4.0]]}  # column 5 is not a column of B's row: ignored


def test_a_row_split_over_batches_waits_for_its_rest() -> None:
    rows = RowAssembler(3)
    assert _add(rows, [(A, 0, 10, 1.0), (A, 1, 10, 2.0)]) == {}
    assert _add(rows, [(A, 2, 10, 3.0)]) == {A: [[1.0, 2.0, 3.0]]}


def test_a_later_timestamp_closes_the_row_with_carried_columns() -> None:
    rows = RowAssembler(2)
    _add(rows, [(A, 0, 10, 1.0), (A, 1, 10, 2.0)])
    assert _add(rows, [(A, 0, 20, 5.0), (A, 0, 30, 6.0), (A, 1, 30, 7.0)]) == {A: [[5.0, 2.0], [6.0, 7.0]]}
    # a point for an assembled timestamp is late: ignored and counted
    assert _add(rows, [(A, 1, 20, 8.0)]) == {}
    assert rows.late == 1


def test_a_column_never_reported_makes_the_row_unscoreable() -> None:
    rows = RowAssembler(2)
    _add(rows, [(A, 0, 10, 1.0)])
    assert _add(rows, [(A, 0, 20, 2.0), (A, 1, 20, 3.0)]) == {A: [[2.0, 3.0]]}
    assert rows.unscoreable == 1


def test_unset_times_and_non_finite_values_are_ignored() -> None:
    rows = RowAssembler(1)
    assert _add(rows, [(A, 0, 0, 1.0), (A, 0, 10, float("nan"))]) == {}
    assert len(rows) == 0


def test_resources_are_bounded_least_recently_seen_first() -> None:
    rows = RowAssembler(2, max_resources=2)
    for key in (A, B, b"c"):
        _add(rows, [(key, 0, 10, 1.0)])
    assert len(rows) == 2 and rows.evicted == 1
    # A was forgotten with its pending row: its second column alone completes nothing
    assert _add(rows, [(A, 1, 10, 2.0)]) == {}
    assert _add(rows, [(b"c", 1, 10, 2.0)]) == {b"c": [[1.0, 2.0]]}
