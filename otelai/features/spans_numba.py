"""Compiled span feature matrix (numba), bit for bit the numpy one of :mod:`otelai.features.spans`.

The numpy path builds the matrix with about forty numpy calls a batch (two baseline lookups,
each a binary search, masks, gathers and scatters; the z-score; the error rate; a dozen
comparisons and ``log1p`` columns) and twenty column assignments: at the hop's 512-span
batches that is a fixed cost of about 105 us, mostly per-call overhead. :func:`span_features`
makes one pass over the rows instead (about 25 us for the same batch, with what the caller
still does in numpy; 70 instead of 330 us for 2048 spans): it finds each operation in both
baselines' sorted keys (the lower bound ``np.searchsorted`` finds, branch-free), repeats the
arithmetic of
:meth:`~otelai.features.baseline.EwBaseline.lookup`, :meth:`~otelai.features.baseline.EwBaseline.zscore`
and :meth:`~otelai.features.baseline.EwBaseline.shrunk_mean` in the same IEEE operations and
order (NaN propagating as ``np.maximum`` and ``np.clip`` propagate it), and writes each row
of the float32 matrix at once.

What it leaves to numpy, and why: numpy's ``log1p`` and ``log`` are not the C library's
(with AVX-512, numpy 2 evaluates them with its own SIMD code, which differs from glibc in the
last bit of about one value in fifty), so a compiled ``math.log1p`` would not give the same
matrix. Hence the caller passes ``log1p`` of the durations computed by numpy, the ``log1p``
columns of integer counts are read from a table that numpy's ``log1p`` filled
(:func:`log1p_table`; the value of ``log1p`` at an integer does not depend on where in an
array numpy meets it), and the error rows' ``-log`` of their error rates is left to the
caller, which applies numpy to the few rates this kernel collects.

Importing this module imports numba (the optional ``fast`` extra); :mod:`~otelai.features.spans`
imports it lazily and keeps the numpy path when it is missing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import NDArray

from otelai.kernels import cached_jit

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
IntArray = NDArray[np.int8] | NDArray[np.int16] | NDArray[np.int32] | NDArray[np.int64]
Bool = NDArray[np.bool_]

# Table index of a count v: v + TABLE_OFFSET, every v below -1 sharing entry 0 (numpy's
# log1p gives the same NaN for all of them, -inf at -1). The decoders never give negative
# counts; a hand-built batch may, and then still gets numpy's values.
TABLE_OFFSET = 2
TABLE_SIZE = (1 << 15) + TABLE_OFFSET  # every int16 count; larger child counts grow it


_jit = cached_jit("the span feature kernel")


def log1p_table(size: int) -> F32:
    """``float32(np.log1p(v))`` at ``table[v + TABLE_OFFSET]``, ``v`` from -2 to ``size - 3``.

    Filled by numpy so that the compiled columns equal the numpy path's; read-only, as the
    kernel is compiled for (a read-only array is another numba type).
    """
    with np.errstate(divide="ignore", invalid="ignore"):  # log1p(-2) is NaN, log1p(-1) -inf
        table = np.log1p(np.arange(-TABLE_OFFSET, size - TABLE_OFFSET, dtype=np.int64).astype(np.float64))
    values: F32 = table.astype(np.float32)
    values.setflags(write=False)
    return values


@_jit
def span_features(
    features: F32,
    log_duration: F64,
    operation: IntArray,
    status_code: IntArray,
    kind: IntArray,
    n_events: IntArray,
    n_links: IntArray,
    n_attributes: IntArray,
    has_exception_event: Bool,
    http_status_class: IntArray,
    rpc_grpc_status: IntArray,
    has_db: Bool,
    is_root: Bool,
    depth: IntArray,
    child_count: IntArray,
    latency_keys: I64,
    latency_weight: F64,
    latency_mean: F64,
    latency_m2: F64,
    latency_count: I64,
    latency_global: F64,
    min_count: float,
    min_std: float,
    z_clip: float,
    error_keys: I64,
    error_weight: F64,
    error_mean: F64,
    error_global: F64,
    prior_weight: float,
    min_error_rate: float,
    table: F32,
    error_rows: I64,
    error_rates: F64,
) -> int:
    """Fill ``features`` (``n`` rows of ``SPAN_SCHEMA``); the number of error rows, or minus
    the table size the counts need.

    Every column is written except ``error_surprise`` of error rows: for those, ``error_rows``
    and ``error_rates`` receive the row and ``np.maximum(rate, min_error_rate)`` (the EW error
    rate shrunk toward the global one), in row order, and the caller writes the column with
    numpy. ``latency_*`` and ``error_*`` are the two baselines' state arrays (sorted keys) and
    ``global_stats``; ``min_count`` is a float, as :meth:`~otelai.features.baseline.EwBaseline.zscore`
    compares it with the global count (a float) too; ``table`` is :func:`log1p_table`. When a
    count lies beyond the table, the matrix is incomplete and the size wanted is returned
    negated (the caller grows the table and calls again). Columns are written by their index
    in ``SPAN_SCHEMA.names`` (the tests compare every column with the numpy path's).
    """
    n = operation.size
    n_latency = latency_keys.size
    n_error = error_keys.size
    # EwBaseline.zscore's global fallback, as it computes it.
    g_weight, g_mean, g_m2, g_count = (
        latency_global[0],
        latency_global[1],
        latency_global[2],
        latency_global[3],
    )
    g_std = math.sqrt(g_m2 / g_weight) if g_weight > 0 else 0.0
    global_trusted = g_count >= min_count
    # EwBaseline.shrunk_mean: prior_weight * g_mean is one scalar product there too.
    e_mean = error_global[1] if error_global[0] > 0 else 0.0
    prior = prior_weight * e_mean
    clip_low, clip_high = np.float32(-z_clip), np.float32(z_clip)
    top = table.size - TABLE_OFFSET  # counts below this are in the table
    needed = 0
    errors = 0
    for i in range(n):
        key = np.int64(operation[i])
        # Lower bound of key in the latency keys (np.searchsorted, side="left"). Both searches
        # are written out: numba would reference-count an array passed to a helper, every row.
        low, size = 0, n_latency
        while size > 1:
            half = size >> 1
            low += half * (latency_keys[low + half] < key)  # arithmetic: a branch would mispredict
            size -= half
        if n_latency:
            low += latency_keys[low] < key
        # EwBaseline.lookup: NaN, NaN and 0 for an operation not stored.
        count = 0
        mean = np.nan
        std = np.nan
        if low < n_latency and latency_keys[low] == key:
            count = latency_count[low]
            mean = latency_mean[low]
            weight = latency_weight[low]
            std = math.sqrt(latency_m2[low] / (weight if weight >= 1e-300 or weight != weight else 1e-300))
        # EwBaseline.zscore: np.where, then np.maximum (a NaN std stays NaN).
        trusted = count >= min_count
        if not trusted:
            mean = g_mean
            std = g_std
        if not (std >= min_std or std != std):
            std = min_std
        # np.divide: IEEE division (inf, NaN) where ``/`` would raise on a zero std.
        z = np.divide(log_duration[i] - mean, std)
        if not trusted and not global_trusted:
            z = 0.0
        # Cast, then np.clip in float32 (a NaN passes unchanged).
        z32 = np.float32(z)
        if z32 < clip_low:
            z32 = clip_low
        elif z32 > clip_high:
            z32 = clip_high
        features[i, 0] = log_duration[i]
        features[i, 1] = z32
        if status_code[i] == 2:
            features[i, 2] = 1.0
            features[i, 3] = 0.0  # written by the caller
            low, size = 0, n_error
            while size > 1:
                half = size >> 1
                low += half * (error_keys[low + half] < key)
                size -= half
            if n_error:
                low += error_keys[low] < key
            weight = 0.0
            rate_mean = 0.0
            if low < n_error and error_keys[low] == key:
                weight = error_weight[low]
                rate_mean = error_mean[low]
            rate = np.divide(weight * rate_mean + prior, weight + prior_weight)  # 0/0 with no prior
            error_rows[errors] = i
            error_rates[errors] = rate if rate >= min_error_rate or rate != rate else min_error_rate
            errors += 1
        else:
            features[i, 2] = 0.0
            features[i, 3] = 0.0
        span_kind = kind[i]
        features[i, 4] = 1.0 if span_kind == 2 else 0.0
        features[i, 5] = 1.0 if span_kind == 3 else 0.0
        features[i, 6] = 1.0 if span_kind == 4 or span_kind == 5 else 0.0
        # The log1p columns of counts, from the table; a count beyond it is noted, not read.
        events, links, attributes = int(n_events[i]), int(n_links[i]), int(n_attributes[i])
        hops, children = max(int(depth[i]), 0), int(child_count[i])
        largest = max(max(events, links), max(max(attributes, hops), children))
        if largest < top:
            features[i, 7] = table[max(events, -TABLE_OFFSET) + TABLE_OFFSET]
            features[i, 8] = table[max(links, -TABLE_OFFSET) + TABLE_OFFSET]
            features[i, 9] = table[max(attributes, -TABLE_OFFSET) + TABLE_OFFSET]
            features[i, 16] = table[hops + TABLE_OFFSET]
            features[i, 18] = table[max(children, -TABLE_OFFSET) + TABLE_OFFSET]
        else:
            needed = max(needed, largest + TABLE_OFFSET + 1)
        features[i, 10] = 1.0 if has_exception_event[i] else 0.0
        status_class = http_status_class[i]
        features[i, 11] = 1.0 if status_class == 4 else 0.0
        features[i, 12] = 1.0 if status_class == 5 else 0.0
        features[i, 13] = 1.0 if rpc_grpc_status[i] > 0 else 0.0
        features[i, 14] = 1.0 if has_db[i] else 0.0
        features[i, 15] = 1.0 if is_root[i] else 0.0
        features[i, 17] = 1.0 if depth[i] < 0 else 0.0
        features[i, 19] = 1.0 if count == 0 and key >= 0 else 0.0
    return -needed if needed else errors


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernel for the argument types the caller
    passes: read-only batch columns (SpanBatch freezes them) of the decoders' dtypes, writable
    baseline states, the read-only table."""

    def frozen(dtype: type[np.generic], value: int = 0) -> Any:
        column = np.full(1, value, dtype=dtype)
        column.setflags(write=False)
        return column

    keys, count = np.zeros(1, dtype=np.int64), np.ones(1, dtype=np.int64)
    stats, global_stats = np.ones(1), np.ones(5)
    span_features(
        np.empty((1, 20), dtype=np.float32), np.zeros(1),
        frozen(np.int32),  # operation_id
        frozen(np.int8, 2),  # status_code: an error, so that the error branch runs too
        frozen(np.int8),  # kind
        frozen(np.int16), frozen(np.int16), frozen(np.int16),  # n_events, n_links, n_attributes
        frozen(np.bool_),  # has_exception_event
        frozen(np.int8),  # http_status_class
        frozen(np.int16),  # rpc_grpc_status
        frozen(np.bool_), frozen(np.bool_),  # has_db, is_root
        frozen(np.int16),  # depth
        frozen(np.int32),  # child_count
        keys, stats, stats, stats, count, global_stats, 20.0, 0.05, 20.0,
        keys, stats, stats, global_stats, 2.0, 1e-4,
        log1p_table(TABLE_SIZE), np.empty(1, dtype=np.int64), np.empty(1),
    )  # fmt: skip
