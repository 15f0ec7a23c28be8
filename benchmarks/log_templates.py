"""Cost per line of log template mining: otelai's Drain against the ``drain3`` package.

Usage::

    .venv/bin/python benchmarks/log_templates.py --out benchmarks/results/log_templates.json

Lines: the ``Content`` column of ``../shared/data/loghub/BGL/BGL_2k.log_structured.csv`` (raw
supercomputer log lines, with ground-truth ``EventId``) and the event templates of the first
``--hdfs-blocks`` blocks of ``../shared/data/hdfs/hdfs_100k_train.csv`` (already templates,
so mostly repeats). Skips with a message (exit 0) when the data is absent.

For each miner: ``cold`` is one pass of a fresh miner over the lines (every line a miss at
first), ``warm`` a second pass over the same lines (what a steady stream of known lines costs),
both in batches of ``--batch`` lines, median of ``--rounds``. ``drain3`` is measured when
importable (``pip install drain3``), with no masking (its default) and with otelai's mask.
Grouping accuracy is loghub's: a line counts when the set of lines sharing its template is
exactly the set sharing its ground-truth event.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from measure import machine_info

from otelai.features.drain import MASK, TemplateMiner

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"

Miner = Callable[[Sequence[str]], list[int]]


def _otelai(cache: bool) -> Callable[[], Miner]:
    def make() -> Miner:
        miner = TemplateMiner(cache_size=65_536 if cache else 0)
        return lambda lines: miner.add_batch(lines).ids.tolist()

    return make


def _drain3(masked: bool) -> Callable[[], Miner] | None:
    try:
        from drain3 import TemplateMiner as Drain3Miner  # type: ignore[import-not-found]
        from drain3.template_miner_config import (  # type: ignore[import-not-found]
            TemplateMinerConfig,
        )
    except ImportError:
        return None

    def make() -> Miner:
        config = TemplateMinerConfig()
        config.profiling_enabled = False
        if masked:
            from drain3.masking import MaskingInstruction  # type: ignore[import-not-found]

            config.masking_instructions = [MaskingInstruction(MASK.pattern, "*")]
            config.mask_prefix, config.mask_suffix = "<", ">"
        miner = Drain3Miner(config=config)
        return lambda lines: [miner.add_log_message(line)["cluster_id"] for line in lines]

    return make


def _batches(lines: Sequence[str], size: int) -> list[Sequence[str]]:
    return [lines[start : start + size] for start in range(0, len(lines), size)]


def _time_passes(make: Callable[[], Miner], lines: Sequence[str], batch: int, rounds: int) -> dict[str, Any]:
    cold, warm = [], []
    ids: list[int] = []
    for _ in range(rounds):
        miner = make()
        chunks = _batches(lines, batch)
        started = time.perf_counter_ns()
        ids = [cid for chunk in chunks for cid in miner(chunk)]
        cold.append((time.perf_counter_ns() - started) / 1e3 / len(lines))
        started = time.perf_counter_ns()
        for chunk in chunks:
            miner(chunk)
        warm.append((time.perf_counter_ns() - started) / 1e3 / len(lines))
    return {
        "cold_us_per_line": round(statistics.median(cold), 3),
        "warm_us_per_line": round(statistics.median(warm), 3),
        "templates": len(set(ids)),
        "ids": ids,
    }


def grouping_accuracy(predicted: Sequence[int], truth: Sequence[str]) -> float:
    """Share of lines whose predicted group has exactly the lines of their true group."""
    by_truth: dict[str, set[int]] = defaultdict(set)
    by_pred: dict[int, set[int]] = defaultdict(set)
    for index, (pred, true) in enumerate(zip(predicted, truth, strict=True)):
        by_truth[true].add(index)
        by_pred[pred].add(index)
    correct = sum(len(group) for group in by_truth.values() if by_pred[predicted[min(group)]] == group)
    return correct / len(predicted)


def _bgl() -> tuple[list[str], list[str]] | None:
    path = DATA / "loghub" / "BGL" / "BGL_2k.log_structured.csv"
    if not path.exists():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row["Content"] for row in rows], [row["EventId"] for row in rows]


def _hdfs(blocks: int) -> list[str] | None:
    path = DATA / "hdfs" / "hdfs_100k_train.csv"
    if not path.exists():
        return None
    lines: list[str] = []
    with path.open(newline="") as handle:
        for index, row in enumerate(csv.DictReader(handle)):
            if index >= blocks:
                break
            lines.extend(json.loads(row["Templates"]))
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hdfs-blocks", type=int, default=1000)
    args = parser.parse_args()
    bgl = _bgl()
    if bgl is None:
        print(f"skipped: no BGL data under {DATA}")
        return 0
    miners: dict[str, Callable[[], Miner] | None] = {
        "otelai": _otelai(cache=True),
        "otelai_nocache": _otelai(cache=False),
        "drain3": _drain3(masked=False),
        "drain3_masked": _drain3(masked=True),
    }
    results: dict[str, Any] = {}
    lines, truth = bgl
    hdfs = _hdfs(args.hdfs_blocks)
    for name, make in miners.items():
        if make is None:
            results[name] = {"skipped": "drain3 not importable"}
            continue
        entry = _time_passes(make, lines, args.batch, args.rounds)
        entry["grouping_accuracy"] = round(grouping_accuracy(entry.pop("ids"), truth), 4)
        results[name] = {"bgl_2k": entry}
        if hdfs is not None:
            hdfs_entry = _time_passes(make, hdfs, args.batch, max(1, args.rounds // 2))
            hdfs_entry.pop("ids")
            results[name]["hdfs_templates"] = {"lines": len(hdfs), **hdfs_entry}
    report = {
        "benchmark": "log_templates",
        "when": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "settings": vars(args) | {"out": str(args.out)},
        "bgl_lines": len(lines),
        "bgl_true_events": len(set(truth)),
        "results": results,
        "machine": machine_info(),
    }
    text = json.dumps(report, indent=2)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
