"""Per-operation span baselines saved by operation name, so a bundle can start them warm.

The baselines (:class:`otelai.features.spans.SpanBaselines`) are keyed by the dense operation
ids of a process's :class:`~otelai.features.interner.Interner`, which mean nothing in another
process; saved here they are keyed by ``(service.name, span name)`` and re-keyed on load into
the loading process's interner.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from otelai.features.baseline import BaselineState
from otelai.features.interner import Interner
from otelai.features.spans import SpanBaselines

_FIELDS = ("weight", "mean", "m2", "count", "last_tick", "last_time")


BASELINES_FILE = "span_baselines.npz"  # the file name in a model bundle


def save_span_baselines(path: str | os.PathLike[str], baselines: SpanBaselines, interner: Interner) -> None:
    """Write both baselines to ``path`` (.npz), keyed by operation names."""
    arrays: dict[str, np.ndarray] = {}
    for part, state in baselines.snapshot().items():
        names = [interner.operation_name(int(key)) for key in state.keys]
        arrays[f"{part}.service"] = np.array([service for service, _ in names], dtype=np.str_)
        arrays[f"{part}.name"] = np.array([name for _, name in names], dtype=np.str_)
        for field in _FIELDS:
            arrays[f"{part}.{field}"] = getattr(state, field)
        arrays[f"{part}.global_stats"] = state.global_stats
        arrays[f"{part}.tick"] = np.array(state.tick, dtype=np.int64)
    with Path(path).open("wb") as handle:
        np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types **kwds as bool


def load_span_baselines(path: str | os.PathLike[str], baselines: SpanBaselines, interner: Interner) -> None:
    """Restore ``baselines`` from ``path``, interning the saved operations into ``interner``."""
    with np.load(Path(path), allow_pickle=False) as data:
        states: dict[str, BaselineState] = {}
        for part in ("latency", "errors"):
            services = data[f"{part}.service"].tolist()
            names = data[f"{part}.name"].tolist()
            keys = np.array(
                [interner.operation(interner.service(s), n) for s, n in zip(services, names, strict=True)],
                dtype=np.int64,
            )
            order = np.argsort(keys, kind="stable")
            kept = order[keys[order] >= 0]  # operations past the interner's cap start afresh
            columns = {field: np.asarray(data[f"{part}.{field}"])[kept] for field in _FIELDS}
            states[part] = BaselineState(
                keys=keys[kept],
                global_stats=np.asarray(data[f"{part}.global_stats"], dtype=np.float64),
                tick=int(data[f"{part}.tick"]),
                **columns,
            )
    baselines.restore(states)
