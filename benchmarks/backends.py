"""Per-batch latency and throughput of every inference backend usable here.

Usage::

    .venv/bin/python benchmarks/backends.py --out benchmarks/results/backends.json
    .venv/bin/python benchmarks/backends.py --backends onnxruntime --sizes 1,512 --seconds 0.5

Runs the contract tests' autoencoder (``otelai.backends.testing``: 32 features, 8 hidden,
MatMul+Add+Relu+MatMul+Add plus the reconstruction error) through each backend at its default
options (one intra-op thread on the CPU backends), for each batch size: a few warm-up runs,
then back-to-back runs for ``--seconds`` (at least ``--min-runs``). Reported per batch size:
p50/p99/mean latency of one ``run`` call (host arrays in, host arrays out, so GPU figures include
both copies) and items/s = batch size / mean latency, plus the largest score deviation from the
float64 numpy reference. Backends whose probe says unavailable are listed with the reason.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from otelai.backends import Backend, backend_class, installed_backends
from otelai.backends.testing import Autoencoder, autoencoder

_PACKAGES = ("numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "openvino", "torch", "onnx2torch", "tensorrt")


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _machine() -> dict[str, Any]:
    import os
    import platform

    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), ""
            )
    except OSError:
        pass
    return {
        "usable_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "load_average_at_start": os.getloadavg(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "versions": {name: _version(name) for name in _PACKAGES},
    }


def measure(backend: Backend, model: Autoencoder, size: int, seconds: float, min_runs: int) -> dict[str, Any]:
    """Latency percentiles (ms) and items/s of ``backend.run`` on batches of ``size`` rows."""
    rng = np.random.default_rng(size)
    batches = [rng.standard_normal((size, model.n_features)).astype(np.float32) for _ in range(4)]
    for x in batches:
        backend.run({"x": x})  # warm up: lazy allocations, kernel selection
    deviation = float(
        np.max(np.abs(backend.run({"x": batches[0]})["score"] - model.reference(batches[0])["score"]))
    )
    latencies: list[int] = []
    deadline = time.perf_counter() + seconds
    while len(latencies) < min_runs or time.perf_counter() < deadline:
        x = batches[len(latencies) % len(batches)]
        start = time.perf_counter_ns()
        backend.run({"x": x})
        latencies.append(time.perf_counter_ns() - start)
    ms = np.asarray(latencies, dtype=np.float64) / 1e6
    mean = float(ms.mean())
    return {
        "batch_size": size,
        "runs": len(latencies),
        "latency_ms_p50": round(float(np.percentile(ms, 50)), 4),
        "latency_ms_p99": round(float(np.percentile(ms, 99)), 4),
        "latency_ms_mean": round(mean, 4),
        "items_per_s": round(size / (mean / 1e3), 1),
        "max_abs_score_deviation": deviation,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/backends.json"))
    parser.add_argument("--backends", default="", help="comma-separated names (default: every installed one)")
    parser.add_argument("--sizes", default="1,64,512,2048")
    parser.add_argument("--seconds", type=float, default=1.0, help="timed seconds per backend and batch size")
    parser.add_argument("--min-runs", type=int, default=50)
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=8)
    args = parser.parse_args(argv)
    names = [name for name in args.backends.split(",") if name] or sorted(installed_backends())
    sizes = [int(size) for size in args.sizes.split(",")]
    model = autoencoder(args.features, args.hidden, seed=0)
    results: dict[str, Any] = {}
    for name in names:
        cls = backend_class(name)
        reason = cls.probe()
        if reason is not None:
            results[name] = {"available": False, "reason": reason}
            print(f"{name:<12} unavailable: {reason}")
            continue
        started = time.perf_counter()
        with cls(model.onnx) as backend:
            load_s = time.perf_counter() - started
            rows = [measure(backend, model, size, args.seconds, args.min_runs) for size in sizes]
        results[name] = {
            "available": True,
            "precision": cls.precision,
            "load_s": round(load_s, 3),
            "sizes": rows,
        }
        for row in rows:
            print(
                f"{name:<12} batch {row['batch_size']:>5}: p50 {row['latency_ms_p50']:>8.3f} ms"
                f"  p99 {row['latency_ms_p99']:>8.3f} ms  {row['items_per_s']:>12,.0f} items/s"
            )
    report = {
        "benchmark": "backends",
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "parameters": vars(args) | {"out": str(args.out)},
        "model": {"features": args.features, "hidden": args.hidden, "outputs": ["reconstruction", "score"]},
        "backends": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
