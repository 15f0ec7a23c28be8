"""Compiled batch merge of :class:`~otelai.features.baseline.EwBaseline` (numba), the same arithmetic.

The numpy merge in :mod:`otelai.features.baseline` costs about forty numpy calls a batch (a
stable sort to group the keys, gathers, clips, weighted bin counts); this kernel makes one
pass over the batch per step instead. It performs the same IEEE operations in the same order
(per-key sums in arrival order, as ``np.bincount`` adds; the decay weights read from a table
that numpy's ``exp`` filled), so both give bit-identical states. It runs without the GIL.

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


@_jit
def merge_keys(
    stored: I64,
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
    clip: float,
    min_count: int,
    tick: int,
    now: float,
) -> int:
    """Merge ``values`` into the rows of ``keys`` in place; the number of keys not stored.

    ``stored`` is sorted. ``local`` is scratch of ``stored.size`` entries, all -1, left so.
    ``table[m]`` is ``lam ** m`` (numpy's ``exp``); ``clip`` < 0 for no clipping. When some
    key is not stored, nothing is changed and their count is returned (the caller adds them
    and calls again).
    """
    n = keys.size
    slot = np.empty(n, dtype=np.int64)
    missing = 0
    for i in range(n):
        slot[i] = np.searchsorted(stored, keys[i])
        if slot[i] >= stored.size or stored[slot[i]] != keys[i]:
            missing += 1
    if missing:
        return missing
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
    return 0


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
