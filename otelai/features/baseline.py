"""Streaming per-key baselines: exponentially weighted mean and variance, robust, bounded.

Each key (an operation id, a log template id, a metric series) keeps an exponentially weighted
(EW) mean and variance of a value, updated a whole batch at a time. A batch is merged exactly
as if its items had arrived one by one: the item ``j`` places from the end of its key's run in
the batch carries weight ``2**(-j / half_life)``, and the batch's weighted mean and sum of
squares are merged into the decayed state with the pairwise formulas of Chan, Golub and
LeVeque ("Algorithms for computing the sample variance", 1983), the batch form of West's
weighted incremental update (West, "Updating mean and variance estimates: an improved
method", CACM 22(9), 1979; Finch, "Incremental calculation of weighted mean and variance",
2009, for the exponential weights).

Robustness: before a batch is merged, each value is clipped to ``mean +- clip * std`` of its
key (Huber's clipped update, Huber 1964; as in the robust exponential smoothing of Cipra,
J. Forecasting 11, 1992), so one outlier moves a trusted baseline by at most ``clip`` standard
deviations times its weight, while a lasting shift still pulls the baseline over (the clipped
values widen the variance, which widens the clip).

The global baseline (every value, all keys) is clipped the same way once trusted.

Memory is bounded: at most ``max_keys`` keys; when full, the keys updated least recently are
evicted (an eighth of the table at a time, so eviction is rare) and start afresh if they
return. Negative keys (``interner.OVERFLOW``) are never stored and always use the global
baseline, which every value updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from otelai.kernels import load_kernels

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
IntArray = NDArray[np.int32] | NDArray[np.int64]
FloatArray = NDArray[np.float32] | NDArray[np.float64]


# "numpy" keeps the numpy merge even where numba is installed (tests compare the two).
MERGE_ENV = "OTELAI_BASELINE_MERGE"


@dataclass(frozen=True)
class BaselineState:
    """A baseline's full state, as arrays (for snapshots, restores and hot swaps).

    Rows are keys in ascending order. ``weight`` is the decayed total weight, ``mean`` and
    ``m2`` the EW mean and the decayed weighted sum of squared deviations (variance =
    ``m2 / weight``), ``count`` the number of values ever seen, ``last_tick`` the update tick
    and ``last_time`` the time (seconds) of the key's last update. ``global_stats`` holds
    weight, mean, m2, count and last time of the global baseline.
    """

    keys: I64
    weight: F64
    mean: F64
    m2: F64
    count: I64
    last_tick: I64
    last_time: F64
    global_stats: F64
    tick: int


@dataclass(frozen=True)
class Slots:
    """Where a batch's keys sit in one state of a baseline (:meth:`EwBaseline.slots`).

    ``row`` is each key's row (clamped to a valid row where absent), ``found`` whether the
    key is stored; ``stored`` is the state's key array they were found in, so that a
    baseline can tell slots of an older state (an update since adds and evicts keys) from
    current ones.
    """

    row: I64
    found: NDArray[np.bool_]
    stored: I64


class EwBaseline:
    """Per-key EW mean and variance of a value, merged a batch at a time.

    Parameters
    ----------
    half_life
        Items (per key) after which an observation's weight has halved; None for no decay by
        count.
    half_life_seconds
        Seconds after which a key's state has halved, applied at each update from the time
        passed to :meth:`update`; None for no decay by time.
    min_count
        Values a key must have seen before its own baseline is trusted; until then
        :meth:`zscore` uses the global baseline.
    max_keys
        Most keys kept; see the module docstring for eviction.
    clip
        Huber bound in standard deviations for values merged into a trusted key; None to
        merge values as they are (use None for 0/1 values such as error flags).
    min_std
        Floor of the standard deviation used in z-scores, in the value's units, so a key
        with a near-constant value does not turn noise into huge scores.
    global_half_life
        ``half_life`` of the global baseline (items over all keys); defaults to
        ``half_life * 10``.
    """

    def __init__(
        self,
        *,
        half_life: float | None = 500.0,
        half_life_seconds: float | None = None,
        min_count: int = 20,
        max_keys: int = 65_536,
        clip: float | None = 3.0,
        min_std: float = 0.05,
        global_half_life: float | None = None,
    ) -> None:
        if half_life is None and half_life_seconds is None:
            raise ValueError("set half_life, half_life_seconds or both")
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self.half_life = half_life
        self.half_life_seconds = half_life_seconds
        self.min_count = min_count
        self.max_keys = max_keys
        self.clip = clip
        self.min_std = min_std
        self.global_half_life = (
            global_half_life
            if global_half_life is not None
            else (half_life * 10 if half_life is not None else None)
        )
        self._state = _empty_state()
        self._table = np.zeros(0)  # lam ** m for the compiled merge
        self._global_table = np.zeros(0)  # the same for the global baseline's half-life
        self._scratch = np.zeros(0, dtype=np.int32)  # the compiled merge's per-row scratch
        # The compiled merge's row of each key (baseline_numba.find_rows), for the key array
        # it was made for: made again only when the keys change (a new key, an eviction).
        self._dense = _NO_ROWS
        self._dense_for = _NO_KEYS

    def __len__(self) -> int:
        return int(self._state.keys.size)

    @property
    def state(self) -> BaselineState:
        """The state itself, not a copy: for compiled readers of a whole batch (the span
        feature kernel), which must not write to it (:meth:`snapshot` for a copy)."""
        return self._state

    def snapshot(self) -> BaselineState:
        """A copy of the state."""
        return _copy(self._state)

    def restore(self, state: BaselineState) -> None:
        """Replace the state with a copy of ``state`` (from :meth:`snapshot`)."""
        self._state = _copy(state)

    def slots(self, keys: IntArray) -> Slots:
        """Each key's row in the state as it is now, for :meth:`lookup`, :meth:`zscore` and
        :meth:`shrunk_mean` on the same keys: a caller that asks several of them about one
        batch finds the keys once (a binary search a key) instead of once a call.

        Valid while the state keeps its keys: an :meth:`update` that adds or evicts keys, or a
        :meth:`restore`, makes them stale, and passing stale slots raises.
        """
        slot, found = self._slots(keys)
        return Slots(slot, found, self._state.keys)

    def _rows(self, keys: IntArray, slots: Slots | None) -> tuple[I64, NDArray[np.bool_]]:
        if slots is None:
            return self._slots(keys)
        if slots.stored is not self._state.keys:
            raise ValueError("slots are of an older state of this baseline (or of another one)")
        return slots.row, slots.found

    def lookup(self, keys: IntArray, *, slots: Slots | None = None) -> tuple[F64, F64, I64]:
        """Mean, standard deviation (before the ``min_std`` floor) and count of each key.

        Keys not stored get NaN, NaN and 0. ``slots``: :meth:`slots` of ``keys``, if at hand.
        """
        state = self._state
        slot, found = self._rows(keys, slots)
        mean = np.full(slot.size, np.nan)
        std = np.full(slot.size, np.nan)
        count = np.zeros(slot.size, dtype=np.int64)
        rows = slot[found]
        mean[found] = state.mean.take(rows)
        std[found] = np.sqrt(state.m2.take(rows) / np.maximum(state.weight.take(rows), 1e-300))
        count[found] = state.count.take(rows)
        return mean, std, count

    def zscore(
        self,
        keys: IntArray,
        values: FloatArray,
        *,
        slots: Slots | None = None,
        looked_up: tuple[F64, F64, I64] | None = None,
    ) -> F32:
        """``(value - mean) / std`` against the state before any update with these values.

        Keys with fewer than ``min_count`` values (and negative keys) are scored against the
        global baseline; 0 while the global baseline itself has fewer than ``min_count``.
        ``slots``: :meth:`slots` of ``keys``; ``looked_up``: :meth:`lookup` of ``keys`` (now),
        for a caller that needs the lookup too and would otherwise pay for it twice.
        """
        values = np.asarray(values, dtype=np.float64)
        mean, std, count = self.lookup(keys, slots=slots) if looked_up is None else looked_up
        trusted = count >= self.min_count
        g_weight, g_mean, g_m2, g_count, _ = self._state.global_stats
        g_std = math.sqrt(g_m2 / g_weight) if g_weight > 0 else 0.0
        mean = np.where(trusted, mean, g_mean)
        std = np.maximum(np.where(trusted, std, g_std), self.min_std)
        z = (values - mean) / std
        if g_count < self.min_count:
            z = np.where(trusted, z, 0.0)
        scores: F32 = z.astype(np.float32)
        return scores

    def shrunk_mean(self, keys: IntArray, prior_weight: float = 2.0, *, slots: Slots | None = None) -> F64:
        """Each key's EW mean shrunk toward the global mean by ``prior_weight`` pseudo-items.

        For 0/1 values this is a smoothed rate: a new key gets the global rate, and a key
        seen a few times cannot claim a rate of exactly 0 or 1. ``slots``: :meth:`slots` of
        ``keys``, if at hand.
        """
        state = self._state
        g_mean = state.global_stats[1] if state.global_stats[0] > 0 else 0.0
        slot, found = self._rows(keys, slots)
        weight = np.zeros(slot.size)
        mean = np.zeros(slot.size)
        weight[found] = state.weight.take(slot[found])
        mean[found] = state.mean.take(slot[found])
        result: F64 = (weight * mean + prior_weight * g_mean) / (weight + prior_weight)
        return result

    def update(self, keys: IntArray, values: FloatArray, now: float = 0.0) -> None:
        """Merge a batch of ``values`` (in arrival order) into their keys and the global baseline.

        ``now`` is the time in seconds (any fixed origin), used only with
        ``half_life_seconds``. Non-finite values are ignored.
        """
        kernel = _compiled()
        if kernel is not None and self.half_life_seconds is None:
            self._update_compiled(kernel, keys, values, now)
            return
        keys_ = np.asarray(keys, dtype=np.int64)
        values_ = np.asarray(values, dtype=np.float64)
        usable = np.isfinite(values_)
        if not usable.all():
            keys_, values_ = keys_[usable], values_[usable]
        if values_.size == 0:
            return
        state = self._state
        tick = state.tick + 1
        global_stats = self._merge_global(values_, now)
        stored = keys_ >= 0
        state = self._merge_keys(state, keys_[stored], values_[stored], tick, now)
        self._state = replace(state, global_stats=global_stats, tick=tick)

    def _update_compiled(self, kernel: Any, keys: IntArray, values: FloatArray, now: float) -> None:
        """:meth:`update` in one call of the compiled kernel (count decay only; same results).

        The numpy steps around the merge (filters, the keys' binary search, the global
        baseline's scalar merge: a dozen calls on the batch's arrays) cost as much as the
        merge at a few hundred values a batch; the kernel does them in the same pass.
        """
        keys_ = np.ascontiguousarray(keys, dtype=np.int64)
        values_ = np.ascontiguousarray(values, dtype=np.float64)
        if keys_.shape != values_.shape or keys_.ndim != 1:
            raise ValueError(f"{keys_.shape} keys for {values_.shape} values")
        n = keys_.size
        # Tables of lam ** m for the batch (an entry is the same however long its table is).
        if self._table.size <= n:
            self._table = _powers(max(2 * n, 1024), self.half_life)
        if self._global_table.size <= n:
            self._global_table = _powers(max(2 * n, 1024), self.global_half_life)
        state = self._state
        tick = state.tick + 1
        global_stats = np.empty(5)
        clip = -1.0 if self.clip is None else float(self.clip)
        for attempt in range(2):
            if self._scratch.size != state.keys.size:
                self._scratch = np.full(state.keys.size, -1, dtype=np.int32)
            if self._dense_for is not state.keys:  # new keys or evicted ones: a new map
                self._dense, self._dense_for = _dense_rows(state.keys), state.keys
            usable, items, missing = kernel.update(
                state.keys, self._dense, state.weight, state.mean, state.m2, state.count,
                state.last_tick, state.last_time, self._scratch, keys_, values_, self._table,
                self._global_table, state.global_stats, global_stats, clip, self.min_count, tick,
                float(now),
            )  # fmt: skip
            if not missing:
                break
            if attempt:  # the rows were just added
                raise RuntimeError("baseline keys without a row after they were added")
            # Rows for the missing keys (of finite values only, as the numpy path adds them).
            stored = keys_[np.isfinite(values_) & (keys_ >= 0)]
            _, found = self._slots(stored)
            state = _with_keys(state, np.unique(stored[~found]))
        if not usable:  # as the numpy path: no finite value, no tick
            return
        if items:  # as _merge_keys: eviction follows a merge of stored keys
            state = self._evict(state)
        self._state = replace(state, global_stats=global_stats, tick=tick)

    def _merge_global(self, values: F64, now: float) -> F64:
        kernel = _compiled()
        if kernel is None:
            return _merge_global(
                self._state.global_stats,
                self._clipped_global(values),
                self.global_half_life,
                self.half_life_seconds,
                now,
            )
        weight, mean, m2, count, last_time = self._state.global_stats
        low, high = -math.inf, math.inf
        if self.clip is not None and count >= self.min_count and weight > 0:
            bound = self.clip * math.sqrt(m2 / weight)
            low, high = mean - bound, mean + bound
        if self._global_table.size <= values.size:
            self._global_table = _powers(max(2 * values.size, 1024), self.global_half_life)
        total, batch_mean, batch_m2 = kernel.global_sums(values, self._global_table, low, high)
        factor = float(self._global_table[values.size])
        if self.half_life_seconds is not None and count > 0:
            factor *= 2.0 ** (-max(now - last_time, 0.0) / self.half_life_seconds)
        w, m, s = _merge_scalar(weight * factor, mean, m2 * factor, total, batch_mean, batch_m2)
        return np.array([w, m, s, count + values.size, now])

    def _clipped_global(self, values: F64) -> F64:
        weight, mean, m2, count, _ = self._state.global_stats
        if self.clip is None or count < self.min_count or weight <= 0:
            return values
        bound = self.clip * math.sqrt(m2 / weight)
        clipped: F64 = np.clip(values, mean - bound, mean + bound)
        return clipped

    def _slots(self, keys: IntArray) -> tuple[I64, NDArray[np.bool_]]:
        """Row of each key in the state, and whether it is there."""
        stored = self._state.keys
        keys = np.asarray(keys, dtype=np.int64)
        slot = np.searchsorted(stored, keys)
        safe = np.minimum(slot, max(stored.size - 1, 0))
        found = (
            (slot < stored.size) & (stored.take(safe) == keys) if stored.size else np.zeros(keys.size, bool)
        )
        return safe, found

    def _merge_keys(
        self, state: BaselineState, keys: I64, values: F64, tick: int, now: float
    ) -> BaselineState:
        if keys.size == 0:
            return state
        runs = _Runs.of(keys)
        # Items are taken in key order (stable: arrival order within a key), so every per-key
        # sum below adds the same terms in the same order as one in arrival order would.
        values = values.take(runs.order)
        unique, group = runs.unique, runs.group
        slot, found = self._slots(unique)
        if not found.all():
            state = _with_keys(state, unique[~found])  # adds missing keys with zero weight
            slot = np.searchsorted(state.keys, unique)
        old_weight, old_mean, old_m2 = state.weight.take(slot), state.mean.take(slot), state.m2.take(slot)
        old_count = state.count.take(slot)
        if self.clip is not None:
            trusted = old_count >= self.min_count
            if trusted.any():
                bound = (self.clip * np.sqrt(old_m2 / np.maximum(old_weight, 1e-300))).repeat(runs.size)
                centre = old_mean.repeat(runs.size)
                clipped = np.clip(values, centre - bound, centre + bound)
                values = np.where(trusted.repeat(runs.size), clipped, values)
        per_item, carried = runs.decay(self.half_life)
        if self.half_life_seconds is not None:
            elapsed = np.maximum(now - state.last_time.take(slot), 0.0)
            carried = carried * np.exp2(-elapsed / self.half_life_seconds)
        weight, mean, m2 = _merge(
            old_weight * carried,
            old_mean,
            old_m2 * carried,
            *_group_stats(group, unique.size, values, per_item),
        )
        # In place: the state's arrays are private (snapshots copy them), and copying the
        # whole table on every batch would cost O(max_keys) per batch.
        state.weight[slot], state.mean[slot], state.m2[slot] = weight, mean, m2
        state.count[slot] = old_count + runs.size
        state.last_tick[slot] = tick
        state.last_time[slot] = now
        return self._evict(state)

    def _evict(self, state: BaselineState) -> BaselineState:
        if state.keys.size <= self.max_keys:
            return state
        # Down to 7/8 of the cap, so the next few batches of new keys need no eviction.
        keep_count = max(self.max_keys - self.max_keys // 8, 1)
        order = np.lexsort((-state.count, -state.last_tick))  # newest first, then most seen
        keep = np.sort(order[:keep_count])
        return _select(state, keep)


@cache
def _compiled() -> Any:
    """The compiled merge module, or None (numba missing or ``OTELAI_BASELINE_MERGE=numpy``)."""
    return load_kernels("otelai.features.baseline_numba", MERGE_ENV, "baselines merge with numpy")


_NO_KEYS = np.zeros(0, dtype=np.int64)
_NO_ROWS = np.zeros(0, dtype=np.int32)  # no map: the kernel binary-searches the keys
DENSE_SLACK = 4096  # keys a map may span beyond four per stored key


def _dense_rows(keys: I64) -> NDArray[np.int32]:
    """The row of every key from 0 to the largest of ``keys`` (sorted, none negative), -1
    for those not there: a key's row in one read (:func:`baseline_numba.find_rows`). Only for
    keys dense enough that the map stays within a few times the state's size (operation and
    template ids, which an interner hands out from 0); others get no map and are
    binary-searched."""
    if not keys.size or int(keys[-1]) >= 4 * keys.size + DENSE_SLACK:
        return _NO_ROWS
    rows = np.full(int(keys[-1]) + 1, -1, dtype=np.int32)
    rows[keys] = np.arange(keys.size, dtype=np.int32)
    return rows


def _powers(size: int, half_life: float | None) -> F64:
    """``lam ** m`` for ``m`` in ``0..size``, by numpy's exp as the numpy merge computes it."""
    if half_life is None:
        return np.ones(size + 1)
    powers: F64 = np.exp(np.arange(size + 1, dtype=np.int64) * (-math.log(2.0) / half_life))
    return powers


def _empty_state() -> BaselineState:
    empty_f, empty_i = np.zeros(0), np.zeros(0, dtype=np.int64)
    return BaselineState(
        keys=empty_i,
        weight=empty_f,
        mean=empty_f,
        m2=empty_f,
        count=empty_i,
        last_tick=empty_i,
        last_time=empty_f,
        global_stats=np.zeros(5),
        tick=0,
    )


def _copy(state: BaselineState) -> BaselineState:
    return _select(state, np.arange(state.keys.size))


def _select(state: BaselineState, rows: I64) -> BaselineState:
    return BaselineState(
        keys=state.keys[rows],
        weight=state.weight[rows],
        mean=state.mean[rows],
        m2=state.m2[rows],
        count=state.count[rows],
        last_tick=state.last_tick[rows],
        last_time=state.last_time[rows],
        global_stats=state.global_stats.copy(),
        tick=state.tick,
    )


def _with_keys(state: BaselineState, missing: I64) -> BaselineState:
    """``state`` with zero-weight rows for ``missing`` (sorted, unique, none of them stored)."""
    at = np.searchsorted(state.keys, missing)
    zeros_f, zeros_i = np.zeros(missing.size), np.zeros(missing.size, dtype=np.int64)
    return BaselineState(
        keys=np.insert(state.keys, at, missing),
        weight=np.insert(state.weight, at, zeros_f),
        mean=np.insert(state.mean, at, zeros_f),
        m2=np.insert(state.m2, at, zeros_f),
        count=np.insert(state.count, at, zeros_i),
        last_tick=np.insert(state.last_tick, at, zeros_i),
        last_time=np.insert(state.last_time, at, zeros_f),
        global_stats=state.global_stats,
        tick=state.tick,
    )


class _Runs:
    """A batch's keys grouped by one stable sort: each key's run of items, in arrival order.

    ``order`` sorts the items by key (arrival order within a key); ``unique`` holds the keys
    in ascending order, ``size`` the items of each, ``group`` each sorted item's key index.
    """

    __slots__ = ("group", "order", "size", "unique")

    def __init__(self, order: I64, unique: I64, size: I64, group: I64) -> None:
        self.order, self.unique, self.size, self.group = order, unique, size, group

    @classmethod
    def of(cls, keys: I64) -> _Runs:
        order = np.argsort(keys, kind="stable")
        ordered = keys.take(order)
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        size = np.diff(np.append(starts, ordered.size))
        group = np.repeat(np.arange(starts.size), size)
        return cls(order, ordered.take(starts), size, group)

    def decay(self, half_life: float | None) -> tuple[F64, F64]:
        """Per-item weights (items in key order) and the factor carried onto each key's state.

        The last item of a run has weight 1, the one before ``lam``, and so on; the old state,
        ``m`` items back, is carried with ``lam ** m``.
        """
        if half_life is None:
            return np.ones(self.group.size), np.ones(self.size.size)
        ends = np.cumsum(self.size)
        after = ends.repeat(self.size) - 1 - np.arange(self.group.size)  # later items of the key
        log_lam = -math.log(2.0) / half_life
        return np.exp(after * log_lam), np.exp(self.size * log_lam)


def _group_stats(group: I64, groups: int, values: F64, weight: F64) -> tuple[F64, F64, F64]:
    """Weighted total weight, mean and sum of squared deviations of each group."""
    total: F64 = np.bincount(group, weights=weight, minlength=groups).astype(np.float64)
    mean: F64 = np.bincount(group, weights=weight * values, minlength=groups) / total
    deviation = values - mean.take(group)
    m2: F64 = np.bincount(group, weights=weight * deviation * deviation, minlength=groups).astype(np.float64)
    return total, mean, m2


def _merge(
    weight_a: F64, mean_a: F64, m2_a: F64, weight_b: F64, mean_b: F64, m2_b: F64
) -> tuple[F64, F64, F64]:
    """Chan-Golub-LeVeque pairwise merge of two weighted (weight, mean, M2) summaries."""
    weight = weight_a + weight_b
    delta = mean_b - mean_a
    share_b = weight_b / np.maximum(weight, 1e-300)
    mean = mean_a + delta * share_b
    m2 = m2_a + m2_b + delta * delta * weight_a * share_b
    return weight, mean, m2


def _merge_global(
    stats: F64, values: F64, half_life: float | None, half_life_seconds: float | None, now: float
) -> F64:
    weight, mean, m2, count, last_time = stats
    n = values.size
    if half_life is None:
        per_item, factor = np.ones(n), 1.0
    else:
        log_lam = -math.log(2.0) / half_life
        per_item = np.exp(np.arange(n - 1, -1, -1, dtype=np.int64) * log_lam)
        factor = float(np.exp(np.array([n]) * log_lam)[0])
    if half_life_seconds is not None and count > 0:
        factor *= 2.0 ** (-max(now - last_time, 0.0) / half_life_seconds)
    # One group: sums in arrival order, as np.bincount adds (np.sum would add pairwise).
    total = float(np.cumsum(per_item)[-1])
    batch_mean = float(np.cumsum(per_item * values)[-1]) / total
    deviation = values - batch_mean
    batch_m2 = float(np.cumsum(per_item * deviation * deviation)[-1])
    w, m, s = _merge_scalar(weight * factor, mean, m2 * factor, total, batch_mean, batch_m2)
    return np.array([w, m, s, count + n, now])


def _merge_scalar(
    weight_a: float, mean_a: float, m2_a: float, weight_b: float, mean_b: float, m2_b: float
) -> tuple[float, float, float]:
    """:func:`_merge` of one pair of summaries, in Python floats (same operations, same order)."""
    weight = weight_a + weight_b
    delta = mean_b - mean_a
    share_b = weight_b / max(weight, 1e-300)
    return weight, mean_a + delta * share_b, m2_a + m2_b + delta * delta * weight_a * share_b


def warm_up() -> None:
    """Compile (or load from numba's cache) the merge kernels now, not on the first batch."""
    EwBaseline().update(np.array([0, 1], dtype=np.int64), np.array([1.0, 2.0]))
