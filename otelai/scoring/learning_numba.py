"""Compiled bookkeeping of the trace processor's learning step (numba), the numpy path's results.

After a batch is forwarded, :class:`~otelai.scoring.traces.TraceProcessor` counts its
selection codes and severities (the Prometheus counters) and maps its operations to summary
series. With numpy that is two ``bincount`` and half a dozen calls of gathers, comparisons and
reductions over the batch, each mostly call overhead at a few hundred spans; here each is one
pass. Counts are integers: any order gives the same.

Importing this module imports numba (the optional ``fast`` extra);
:mod:`~otelai.scoring.traces` imports it lazily and keeps the numpy path when it is missing.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from otelai.kernels import cached_jit

I64 = NDArray[np.int64]
I32 = NDArray[np.int32]
I8 = NDArray[np.int8]

CODES = 4  # selection codes (dropped, sampled, critical_context, anomaly)
LEVELS = 3  # severity levels (normal, anomaly, critical)


_jit = cached_jit("the trace learning kernels")


@_jit
def tally(code: I8, severity: I8) -> tuple[I64, I64]:
    """Spans of each selection code (entries ``0 .. CODES``), then of each severity level
    (``CODES .. CODES + LEVELS``), as ``np.bincount`` of each; and the rows of severity
    normal (level 0), as ``np.flatnonzero(severity == 0)``. One pass."""
    n = code.size
    # Comparisons summed in registers (a loop the compiler vectorises), not increments of
    # counts[code[i]], each waiting on the last when neighbours share a code.
    sampled = critical_context = anomaly = anomalous = critical = 0
    outside = False
    for i in range(n):
        c, level = code[i], severity[i]
        sampled += c == 1
        critical_context += c == 2
        anomaly += c == 3
        anomalous += level == 1
        critical += level == 2
        outside |= (c < 0) | (c >= CODES) | (level < 0) | (level >= LEVELS)
    if outside:
        raise ValueError("selection code or severity out of range")
    normal = np.empty(n - anomalous - critical, dtype=np.int64)
    rows = 0
    for i in range(n):
        if severity[i] == 0:
            normal[rows] = i
            rows += 1
    counts = np.empty(CODES + LEVELS, dtype=np.int64)
    counts[0] = n - sampled - critical_context - anomaly
    counts[1], counts[2], counts[3] = sampled, critical_context, anomaly
    counts[4], counts[5], counts[6] = n - anomalous - critical, anomalous, critical
    return counts, normal


@_jit
def series_of(table: I64, operation_ids: I32, out: I64) -> int:
    """``out[i] = table[operation_ids[i] + 1]``; the spans whose operation has no series there
    yet (beyond the table, or ``-1`` in it), for which ``out`` is left unspecified."""
    size = table.size
    missing = 0
    for i in range(operation_ids.size):
        slot = operation_ids[i] + 1  # OVERFLOW (-1) takes slot 0
        found = table[slot] if 0 <= slot < size else -1
        out[i] = found
        if found < 0:
            missing += 1
    return missing


def warm_up() -> None:
    """Compile (or load from numba's cache) the kernels now, not on the first batch."""
    tally(np.zeros(2, dtype=np.int8), np.ones(2, dtype=np.int8))
    series_of(np.zeros(2, dtype=np.int64), np.array([-1, 3], dtype=np.int32), np.empty(2, dtype=np.int64))
