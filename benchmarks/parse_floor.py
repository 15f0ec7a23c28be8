"""Per-span floors of protobuf work in Python (upb) on the hop benchmark's requests.

Usage::

    .venv/bin/python benchmarks/parse_floor.py --out benchmarks/results/parse_floor.json

Times, per span, on the same pre-serialised batches as ``hop.py`` (512 spans, about ten
attributes each): parsing a request, serialising it again, the sink's skeleton count, reading
two fields of every span through the Python API, and (for contrast, the thing the hot path
must not do) reading every attribute of every span into a dict. Each operation runs
``--rounds`` times over all batches; the JSON has the median and the best round.
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
from typing import Any

from counting_sink import count_request
from measure import machine_info
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from workload import build_batches


def _touch_fields(request: ExportTraceServiceRequest) -> int:
    total = 0
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                total += span.end_time_unix_nano - span.start_time_unix_nano + span.status.code
    return total


def _attributes_to_dicts(request: ExportTraceServiceRequest) -> int:
    rows = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                row: dict[str, Any] = {}
                for attribute in span.attributes:
                    value = attribute.value
                    row[attribute.key] = getattr(value, value.WhichOneof("value") or "string_value")
                rows.append(row)
    return len(rows)


def _operations(payloads: list[bytes]) -> dict[str, Callable[[], object]]:
    parsed = [ExportTraceServiceRequest.FromString(payload) for payload in payloads]
    return {
        "copy_bytes": lambda: [bytearray(payload) for payload in payloads],
        "parse": lambda: [ExportTraceServiceRequest.FromString(payload) for payload in payloads],
        "serialize": lambda: [request.SerializeToString() for request in parsed],
        "parse_serialize": lambda: [
            ExportTraceServiceRequest.FromString(payload).SerializeToString() for payload in payloads
        ],
        "skeleton_count": lambda: [count_request(payload) for payload in payloads],
        "parse_read_duration_status": lambda: [
            _touch_fields(ExportTraceServiceRequest.FromString(payload)) for payload in payloads
        ],
        "parse_attributes_to_dicts": lambda: [
            _attributes_to_dicts(ExportTraceServiceRequest.FromString(payload)) for payload in payloads
        ],
    }


def measure(payloads: list[bytes], spans_per_batch: int, rounds: int) -> dict[str, dict[str, float]]:
    """Microseconds per span (median and best round) of each operation."""
    spans = spans_per_batch * len(payloads)
    results = {}
    for name, operation in _operations(payloads).items():
        operation()  # warm up
        timings = []
        for _ in range(rounds):
            start = time.perf_counter_ns()
            operation()
            timings.append((time.perf_counter_ns() - start) / 1e3 / spans)
        results[name] = {
            "us_per_span_median": round(statistics.median(timings), 4),
            "us_per_span_best": round(min(timings), 4),
        }
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/parse_floor.json"))
    parser.add_argument("--spans", type=int, default=512)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args(argv)
    payloads = build_batches(args.seed, args.batches, args.spans)
    results = measure(payloads, args.spans, args.rounds)
    total_bytes = sum(len(payload) for payload in payloads)
    report = {
        "benchmark": "parse_floor",
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": {
            "spans": args.spans,
            "batches": args.batches,
            "seed": args.seed,
            "rounds": args.rounds,
        },
        "bytes_per_span": round(total_bytes / (args.spans * args.batches), 1),
        "operations": results,
        "notes": [
            "parse = ExportTraceServiceRequest.FromString; serialize = SerializeToString of a parsed request.",
            "skeleton_count is what the benchmark sink pays per span to count spans and read markers.",
            "parse_attributes_to_dicts is the cost the hot path must avoid.",
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'operation':<30}{'us/span median':>16}{'best':>10}")
    for name, row in results.items():
        print(f"{name:<30}{row['us_per_span_median']:>16.3f}{row['us_per_span_best']:>10.3f}")
    print(f"bytes/span {report['bytes_per_span']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
