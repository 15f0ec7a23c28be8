"""Compiled batch merge of :class:`~otelai.features.baseline.EwBaseline` (numba), the same arithmetic.

The numpy merge in :mod:`otelai.features.baseline` costs about forty numpy calls a batch (a
stable sort to group the keys, gathers, clips, weighted bin counts); these kernels make one
pass over the batch per step instead, and a whole update (the filters, the keys' rows, their
merge and the global baseline's) is one call, :func:`update`. They perform the same IEEE
operations in the same order (per-key sums in arrival order, as ``np.bincount`` adds; the
decay weights read from a table that numpy's ``exp`` filled), so both give bit-identical
states. They run without the GIL.

Importing this module imports numba (the optional ``fast`` extra); :mod:`~otelai.features.baseline`
imports it lazily and keeps the numpy merge when it is missing.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from otelai.kernels import cached_jit

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
I32 = NDArray[np.int32]


_jit = cached_jit("the baseline kernel")


NOT_STORED = -2  # the row of a negative key (never stored), as :func:`find_rows` writes it
MISSING = -1  # the row of a key without one (yet)


@_jit
def find_rows(stored: I64, dense: I32, keys: I64, rows: I64) -> None:
    """Each key's row in the sorted ``stored``: :data:`MISSING` without one, :data:`NOT_STORED`
    for a negative key.

    ``dense`` (may be empty) maps keys to rows: a key whose row there holds it takes it, in
    one read; any other is binary-searched, a search whose branches a fresh batch's keys
    mispredict (about 25 ns a key, half the merge's cost, not seen when a benchmark repeats
    one batch). The map only spares searches: a stale or partial one cannot give a wrong row.
    """
    size = stored.size
    top = dense.size
    for i in range(keys.size):
        key = keys[i]
        if key < 0:
            rows[i] = NOT_STORED
            continue
        row = dense[key] if key < top else MISSING
        if row < 0 or row >= size or stored[row] != key:  # not in the map: search
            row = np.searchsorted(stored, key)
            if row >= size or stored[row] != key:
                row = MISSING
        rows[i] = row


@_jit
def gather(rows: I64, values: F64, finite: F64, item_rows: I64, item_values: F64) -> tuple[int, int, int]:
    """The finite ``values`` in order into ``finite`` (the global baseline's), and those of
    stored keys with their rows into ``item_rows`` and ``item_values`` (the keys' merge).

    Returns ``(usable, items, missing)``: finite values, those of stored keys, and those of
    them whose key has no row (:data:`MISSING`, left out of the items).
    """
    usable = 0
    items = 0
    missing = 0
    for i in range(values.size):
        value = values[i]
        if not np.isfinite(value):
            continue
        finite[usable] = value
        usable += 1
        row = rows[i]
        if row == NOT_STORED:
            continue
        if row == MISSING:
            missing += 1
            continue
        item_rows[items] = row
        item_values[items] = value
        items += 1
    return usable, items, missing


@_jit
def merge_rows(
    weight: F64,
    mean: F64,
    m2: F64,
    count: I64,
    last_tick: I64,
    last_time: F64,
    local: I32,
    slot: I64,
    values: F64,
    table: F64,
    clip: float,
    min_count: int,
    tick: int,
    now: float,
) -> None:
    """Merge ``values`` into the rows ``slot`` in place (per row, in arrival order).

    ``local`` is scratch of a row's entry each, all -1, left so. ``table[m]`` is
    ``lam ** m`` (numpy's ``exp``) for ``m`` up to at least ``slot.size``; ``clip`` < 0 for
    no clipping.
    """
    n = slot.size
    # Local group of each item, in order of first appearance; rows of each group.
    group = np.empty(n, dtype=np.int64)
    rows = np.empty(n, dtype=np.int64)
    size = np.zeros(n, dtype=np.int64)
    groups = 0
    for i in range(n):
        g = local[slot[i]]
        if g < 0:
            g = groups
            local[slot[i]] = g
            rows[g] = slot[i]
            groups += 1
        group[i] = g
        size[g] += 1
    for g in range(groups):
        local[rows[g]] = -1
    low = np.empty(groups)
    high = np.empty(groups)
    trusted = np.zeros(groups, dtype=np.bool_)
    if clip >= 0:
        for g in range(groups):
            r = rows[g]
            if count[r] >= min_count:
                trusted[g] = True
                bound = clip * np.sqrt(m2[r] / max(weight[r], 1e-300))
                low[g] = mean[r] - bound
                high[g] = mean[r] + bound
    seen = np.zeros(groups, dtype=np.int64)
    item_weight = np.empty(n)
    clipped = np.empty(n)
    total = np.zeros(groups)
    weighted = np.zeros(groups)
    for i in range(n):
        g = group[i]
        value = values[i]
        if trusted[g]:  # np.clip: minimum(maximum(value, low), high)
            value = min(max(value, low[g]), high[g])
        clipped[i] = value
        w = table[size[g] - 1 - seen[g]]
        seen[g] += 1
        item_weight[i] = w
        total[g] += w
        weighted[g] += w * value
    batch_mean = np.empty(groups)
    for g in range(groups):
        batch_mean[g] = weighted[g] / total[g]
    batch_m2 = np.zeros(groups)
    for i in range(n):
        g = group[i]
        deviation = clipped[i] - batch_mean[g]
        batch_m2[g] += item_weight[i] * deviation * deviation
    for g in range(groups):  # Chan-Golub-LeVeque merge, as baseline._merge
        r = rows[g]
        carried = table[size[g]]
        weight_a = weight[r] * carried
        m2_a = m2[r] * carried
        total_weight = weight_a + total[g]
        delta = batch_mean[g] - mean[r]
        share_b = total[g] / max(total_weight, 1e-300)
        weight[r] = total_weight
        mean[r] = mean[r] + delta * share_b
        m2[r] = m2_a + batch_m2[g] + delta * delta * weight_a * share_b
        count[r] += size[g]
        last_tick[r] = tick
        last_time[r] = now


@_jit
def global_sums(values: F64, table: F64, low: float, high: float) -> tuple[float, float, float]:
    """Decayed weight, mean and sum of squared deviations of one run (the global baseline's).

    ``table[m]`` is ``lam ** m``; values are clipped to ``[low, high]`` (pass infinities for
    none). Sums in arrival order, as ``np.bincount`` adds.
    """
    n = values.size
    total = 0.0
    weighted = 0.0
    for i in range(n):
        value = min(max(values[i], low), high)
        w = table[n - 1 - i]
        total += w
        weighted += w * value
    batch_mean = weighted / total
    m2 = 0.0
    for i in range(n):
        deviation = min(max(values[i], low), high) - batch_mean
        m2 += table[n - 1 - i] * deviation * deviation
    return total, batch_mean, m2


@_jit
def merge_global(
    global_stats: F64, out: F64, finite: F64, table: F64, clip: float, min_count: int, now: float
) -> None:
    """The global baseline after the ``finite`` values into ``out``, as
    ``EwBaseline._merge_global``'s compiled branch computes it (same operations): values
    clipped once the global baseline is trusted, ``table[m]`` = ``lam ** m`` up to at least
    ``finite.size``, then the Chan-Golub-LeVeque merge of ``baseline._merge_scalar``."""
    g_weight, g_mean, g_m2, g_count = global_stats[0], global_stats[1], global_stats[2], global_stats[3]
    low, high = -np.inf, np.inf
    if clip >= 0 and g_count >= min_count and g_weight > 0:
        bound = clip * np.sqrt(g_m2 / g_weight)
        low, high = g_mean - bound, g_mean + bound
    total, batch_mean, batch_m2 = global_sums(finite, table, low, high)
    factor = table[finite.size]
    weight_a = g_weight * factor
    m2_a = g_m2 * factor
    merged = weight_a + total
    delta = batch_mean - g_mean
    share_b = total / max(merged, 1e-300)
    out[0] = merged
    out[1] = g_mean + delta * share_b
    out[2] = m2_a + batch_m2 + delta * delta * weight_a * share_b
    out[3] = g_count + finite.size
    out[4] = now


@_jit
def update(
    stored: I64,
    dense: I32,
    weight: F64,
    mean: F64,
    m2: F64,
    count: I64,
    last_tick: I64,
    last_time: F64,
    local: I32,
    keys: I64,
    values: F64,
    table: F64,
    global_table: F64,
    global_stats: F64,
    global_out: F64,
    clip: float,
    min_count: int,
    tick: int,
    now: float,
) -> tuple[int, int, int]:
    """A whole :meth:`~otelai.features.baseline.EwBaseline.update` (count decay only) in one call.

    ``dense``: see :func:`find_rows`. Drops the non-finite values, merges the finite ones of stored keys (``keys >= 0``) into
    their rows in place (:func:`merge_rows`), and writes the global baseline after the batch
    into ``global_out`` (``global_stats`` is read only, :func:`merge_global`).

    Returns ``(usable, items, missing)``: the finite values, those of stored keys, and those
    of keys without a row. Nothing is changed when ``missing`` > 0 (the caller adds the rows
    and calls again) or ``usable`` is 0. ``table`` and ``global_table`` hold ``lam ** m`` for
    ``m`` up to at least ``keys.size``.
    """
    n = keys.size
    rows = np.empty(n, dtype=np.int64)
    find_rows(stored, dense, keys, rows)
    finite = np.empty(n)
    item_rows = np.empty(n, dtype=np.int64)
    item_values = np.empty(n)
    usable, items, missing = gather(rows, values, finite, item_rows, item_values)
    if missing or not usable:
        return usable, items, missing
    merge_rows(
        weight, mean, m2, count, last_tick, last_time, local, item_rows[:items], item_values[:items],
        table, clip, min_count, tick, now,
    )  # fmt: skip
    merge_global(global_stats, global_out, finite[:usable], global_table, clip, min_count, now)
    return usable, items, 0
