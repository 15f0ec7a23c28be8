"""Detection quality on every labeled data set: ``otelai train`` then ``otelai evaluate``.

Usage::

    .venv/bin/python benchmarks/quality.py --data ../shared/data --out benchmarks/results/quality

Runs the same CLI commands a user runs, one data set at a time, into ``OUT/<kind>/`` (the
bundle in ``bundle/``, the report in ``report/``), and collects every ``evaluation.json`` into
``OUT/quality.json`` with the training and evaluation times. A data set whose folder is absent
is skipped with a message; so is the whole run without ``--data``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from measure import machine_info

from otelai.cli import main as otelai

# Data set kind -> its folder under the data root (../shared/data/README.md).
FOLDERS = {
    "otel-demo": "otel-demo",
    "nab": "nab",
    "asd": "asd",
    "smd": "smd",
    "hdfs": "hdfs",
    "bgl": "loghub/BGL",
}


def _run(kind: str, data: Path, out: Path, seed: int) -> dict[str, Any]:
    bundle, report = out / "bundle", out / "report"
    shutil.rmtree(bundle, ignore_errors=True)
    started = time.perf_counter()
    code = otelai(
        ["train", "--dataset", kind, "--path", str(data), "--out", str(bundle), "--seed", str(seed)]
    )
    trained = time.perf_counter()
    if code != 0:
        return {"status": f"train exited {code}"}
    code = otelai(
        ["evaluate", "--bundle", str(bundle), "--dataset", kind, "--path", str(data), "--out", str(report)]
    )
    evaluated = time.perf_counter()
    if code != 0:
        return {"status": f"evaluate exited {code}"}
    result: dict[str, Any] = json.loads((report / "evaluation.json").read_text())
    size = sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    return {
        "status": "ok",
        "train_seconds": round(trained - started, 1),
        "evaluate_seconds": round(evaluated - trained, 1),
        "bundle_bytes": size,
        "metrics": result.get("metrics", {}),
        "references": result.get("references", {}),
        "report": str(report / "report.html"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/quality"))
    parser.add_argument("--only", action="append", choices=sorted(FOLDERS), help="repeatable")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not args.data.is_dir():
        print(f"quality: no data at {args.data}; skipped", file=sys.stderr)
        return 0
    results: dict[str, Any] = {}
    for kind in args.only or list(FOLDERS):
        folder = args.data / FOLDERS[kind]
        if not folder.is_dir():
            print(f"quality: {kind}: no data at {folder}; skipped", file=sys.stderr)
            results[kind] = {"status": "skipped: no data"}
            continue
        print(f"quality: {kind} ...", file=sys.stderr)
        results[kind] = _run(kind, folder, args.out / kind, args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": "quality",
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "data": str(args.data),
        "results": results,
    }
    (args.out / "quality.json").write_text(json.dumps(document, indent=2) + "\n")
    for kind, result in results.items():
        print(f"{kind:10s} {result['status']:10s} {json.dumps(result.get('metrics', {}))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
