"""Per-item cost of the decision building blocks on one batch (otelai/decision).

Usage::

    .venv/bin/python benchmarks/decision.py --out benchmarks/results/decision.json

Each operation runs on a seeded batch of ``--batch`` items ``--rounds`` times; the JSON has
microseconds per item (median and best round). The budget these must fit: p99 added latency
under 10 ms for a whole batch, and at least 0.7x the pass-through throughput, whose parse and
re-serialise floor is about 1 us a span (``parse_floor.py``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from measure import machine_info

from otelai.decision.calibration import EcdfCalibrator
from otelai.decision.metric_thinning import DeltaCarry, fold_deltas
from otelai.decision.sampling import keep_mask, randomness, threshold_for, with_thresholds
from otelai.decision.severity import classify, tags
from otelai.decision.summaries import DroppedSummaries


def _operations(n: int, seed: int) -> dict[str, Callable[[], object]]:
    rng = np.random.default_rng(seed)
    trace_ids = rng.integers(0, 256, size=(n, 16), dtype=np.uint8)
    threshold = threshold_for(0.05)
    tracestates = [""] * n
    raw = rng.lognormal(size=n)
    calibrator = EcdfCalibrator(window=8192, sample_rate=1.0, min_samples=1024, seed=seed)
    calibrator.update(rng.lognormal(size=8192))
    scores = calibrator.transform(raw)
    pairs = [(f"service-{i % 10}", f"operation-{i}") for i in range(50)]
    which = rng.integers(0, len(pairs), size=n)
    services = [pairs[i][0] for i in which]
    names = [pairs[i][1] for i in which]
    durations = rng.integers(0, 2_000_000_000, size=n)
    errors = rng.random(n) < 0.05
    dropped = rng.random(n) < 0.95
    summaries = DroppedSummaries()
    series = rng.integers(0, 200, size=n)
    values = rng.random(n)
    start = np.arange(n, dtype=np.uint64)
    end = start + 1
    keep = rng.random(n) < 0.1
    carry = DeltaCarry()

    def summaries_batch() -> None:
        summaries.add_spans(summaries.intern_spans(services, names), durations, errors, dropped)

    def summaries_batch_and_flush() -> bytes:
        summaries_batch()
        return summaries.flush()

    def calibrate_update_then_transform() -> object:
        calibrator.update(raw)
        return calibrator.transform(raw)

    return {
        "sampling_keep_mask": lambda: keep_mask(randomness(trace_ids), threshold),
        "with_thresholds_all_empty": lambda: with_thresholds(tracestates, threshold),
        "classify_and_tags": lambda: tags(classify(scores, 0.99, 0.999)),
        "calibrate_transform": lambda: calibrator.transform(raw),
        "calibrate_update_then_transform": calibrate_update_then_transform,
        "summaries_intern_and_add_spans": summaries_batch,
        "summaries_flush_50_series": summaries_batch_and_flush,
        "fold_deltas_200_series": lambda: fold_deltas(carry, series, values, start, end, keep),
    }


def measure(n: int, seed: int, rounds: int) -> dict[str, dict[str, float]]:
    """Microseconds per item (median and best round) of each operation."""
    results = {}
    for name, operation in _operations(n, seed).items():
        operation()  # warm up
        timings = []
        for _ in range(rounds):
            begin = time.perf_counter_ns()
            operation()
            timings.append((time.perf_counter_ns() - begin) / 1e3 / n)
        results[name] = {
            "us_per_item_median": round(statistics.median(timings), 4),
            "us_per_item_best": round(min(timings), 4),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/decision.json"))
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)
    results = measure(args.batch, args.seed, args.rounds)
    report = {
        "benchmark": "decision",
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": {"batch": args.batch, "seed": args.seed, "rounds": args.rounds},
        "operations": results,
        "notes": [
            "summaries_flush_50_series includes one add_spans batch; flush runs once per interval, not per batch.",
            "with_thresholds_all_empty is the worst case: it is applied to kept items only.",
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'operation':<36}{'us/item median':>16}{'best':>10}")
    for name, row in results.items():
        print(f"{name:<36}{row['us_per_item_median']:>16.3f}{row['us_per_item_best']:>10.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
