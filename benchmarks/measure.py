"""Small measuring helpers: percentiles, process and machine CPU from /proc, machine facts."""

from __future__ import annotations

import importlib.metadata
import math
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..1) of already sorted values; NaN when empty."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return float(sorted_values[min(rank, len(sorted_values)) - 1])


def summary_ms(values_ns: Sequence[int]) -> dict[str, float]:
    """p50/p99/p999/max/mean in milliseconds of nanosecond samples."""
    ordered = sorted(values_ns)
    ms = [value / 1e6 for value in ordered]
    return {
        "p50": percentile(ms, 0.50),
        "p99": percentile(ms, 0.99),
        "p999": percentile(ms, 0.999),
        "max": ms[-1] if ms else math.nan,
        "mean": sum(ms) / len(ms) if ms else math.nan,
    }


def process_cpu_s(pid: int | None) -> float:
    """User plus system CPU seconds of a process and all its threads, and of its live child
    processes (a scoring worker's CPU is the hop's); NaN if it is gone."""
    if pid is None:
        return math.nan
    fields = _stat(pid)
    if fields is None:
        return math.nan
    # fields[0] is field 3 (state) of proc(5); utime and stime are fields 14 and 15.
    total = (int(fields[11]) + int(fields[12])) * _TICK_S
    for child in _children(pid):
        total += process_cpu_s(child) if _stat(child) is not None else 0.0
    return total


def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (field 4 of proc(5) stat is the parent's pid)."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields is not None and int(fields[1]) == pid:
                out.append(int(entry))
    return out


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat") as stat:
        values = [int(value) for value in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    total = sum(values[:8])  # guest time is already inside user time
    return (total - idle) * _TICK_S, total * _TICK_S


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """What a reader needs to compare this run with another."""
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), ""
            )
    except OSError:
        pass
    from google.protobuf.internal import api_implementation

    return {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "load_average_at_start": os.getloadavg(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "protobuf_implementation": api_implementation.Type(),
        "versions": {
            name: _version(name) for name in ("grpcio", "protobuf", "rotel", "otelai", "opentelemetry-proto")
        },
    }
