"""CPU per item of checking an OTLP request: upb parse against the compiled validator.

Usage::

    .venv/bin/python benchmarks/wire_check.py --out benchmarks/results/wire_check.json

On the hop benchmark's trace requests (``workload.build_batches``: 512 spans, about 240 KB
each) and on log requests of as many records built here (about ten attributes and a text
body a record), times with ``time.process_time`` (CPU, so other processes on the machine
matter less than for wall time) what the receiver pays per request:

- ``upb_parse``: ``request_type.FromString``;
- ``upb_parse_count``: the same plus ``count_items`` and the resource count: the receiver's
  path before the validator;
- ``wire_check``: :func:`otelai.receiver.wire_check.check` (validation and both counts);
- ``receiver_parse``: :func:`otelai.receiver.decode.parse`, the receiver's path now.

Rounds of the operations are interleaved, so a burst of load elsewhere hits all of them; the
JSON has each one's median and best round, in microseconds per span or log record.
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from measure import machine_info
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from workload import build_batches

from otelai.receiver import wire_check
from otelai.receiver.decode import Encoding, parse, prepare_wire_check
from otelai.signals import Signal, count_items

_LEVELS = (("INFO", 9), ("INFO", 9), ("WARN", 13), ("ERROR", 17))


def build_log_batches(seed: int, batches: int, records: int) -> list[bytes]:
    """``batches`` serialised log requests of ``records`` records over four services."""
    rng = random.Random(seed)
    out = []
    for _ in range(batches):
        request = ExportLogsServiceRequest()
        for service in range(4):
            resource_logs = request.resource_logs.add()
            for key, value in (
                ("service.name", f"svc-{service}"),
                ("host.name", f"node-{rng.randrange(64):02d}"),
            ):
                resource_logs.resource.attributes.add(key=key, value=AnyValue(string_value=value))
            scope = resource_logs.scope_logs.add()
            scope.scope.name = "opentelemetry.sdk._logs"
            for _ in range(records // 4 + (service < records % 4)):
                text, number = rng.choice(_LEVELS)
                record = scope.log_records.add(
                    time_unix_nano=1_700_000_000 * 10**9 + rng.randrange(10**12),
                    observed_time_unix_nano=1_700_000_000 * 10**9 + rng.randrange(10**12),
                    severity_number=number,
                    severity_text=text,
                    trace_id=rng.randbytes(16),
                    span_id=rng.randbytes(8),
                    body=AnyValue(
                        string_value=f"request {rng.randrange(10**6)} served in {rng.random():.3f}s"
                    ),
                )
                record.attributes.extend(
                    [
                        KeyValue(key="code.function", value=AnyValue(string_value="handle_request")),
                        KeyValue(key="code.lineno", value=AnyValue(int_value=rng.randrange(1000))),
                        KeyValue(key="http.route", value=AnyValue(string_value="/api/cart")),
                        KeyValue(key="http.response.status_code", value=AnyValue(int_value=200)),
                        KeyValue(key="user.id", value=AnyValue(string_value=f"u{rng.randrange(10**6)}")),
                        KeyValue(key="thread.name", value=AnyValue(string_value="MainThread")),
                        KeyValue(key="retry", value=AnyValue(bool_value=rng.random() < 0.1)),
                        KeyValue(key="duration_s", value=AnyValue(double_value=rng.random())),
                    ]
                )
        out.append(request.SerializeToString())
    return out


def _parse_count(signal: Signal, payload: bytes) -> tuple[int, int]:
    request: Any = signal.spec.request_type.FromString(payload)
    resources = request.resource_spans if signal is Signal.TRACES else request.resource_logs
    return count_items(signal, request), len(resources)


def _operations(signal: Signal) -> dict[str, Callable[[bytes], object]]:
    """Each operation on one request (results are dropped at once, as the receiver does)."""
    request_type = signal.spec.request_type
    return {
        "upb_parse": request_type.FromString,
        "upb_parse_count": lambda payload: _parse_count(signal, payload),
        "wire_check": lambda payload: wire_check.check(payload, signal),
        "receiver_parse": lambda payload: parse(signal, payload, Encoding.PROTOBUF),
    }


def measure(
    signal: Signal, payloads: list[bytes], items: int, rounds: int, repeat: int
) -> dict[str, dict[str, float]]:
    """CPU microseconds per item (median and best round) of each operation."""
    operations = _operations(signal)
    timings: dict[str, list[float]] = {name: [] for name in operations}
    for operation in operations.values():
        for payload in payloads:  # warm up
            operation(payload)
    for _ in range(rounds):
        for name, operation in operations.items():
            start = time.process_time()
            for _ in range(repeat):
                for payload in payloads:
                    operation(payload)
            timings[name].append((time.process_time() - start) * 1e6 / (items * repeat))
    return {
        name: {
            "us_per_item_median": round(statistics.median(values), 4),
            "us_per_item_best": round(min(values), 4),
        }
        for name, values in timings.items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/wire_check.json"))
    parser.add_argument("--spans", type=int, default=512, help="spans (log records) a request")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeat", type=int, default=3, help="passes over the batches per timed round")
    args = parser.parse_args(argv)
    if not prepare_wire_check():
        print("the compiled validator is not available (numba missing or failing)", file=sys.stderr)
        return 1
    workloads = {
        Signal.TRACES: build_batches(args.seed, args.batches, args.spans),
        Signal.LOGS: build_log_batches(args.seed, args.batches, args.spans),
    }
    report: dict[str, Any] = {
        "benchmark": "wire_check",
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": {
            "spans": args.spans,
            "batches": args.batches,
            "seed": args.seed,
            "rounds": args.rounds,
            "repeat": args.repeat,
        },
    }
    for signal, payloads in workloads.items():
        for payload in payloads:  # the fast path must be taken, with upb's answer
            assert wire_check.check(payload, signal) == _parse_count(signal, payload)
            assert parse(signal, payload, Encoding.PROTOBUF).request is None
        results = measure(signal, payloads, args.spans * args.batches, args.rounds, args.repeat)
        upb = results["upb_parse"]["us_per_item_median"]
        report[signal.value] = {
            "bytes_per_item": round(sum(len(p) for p in payloads) / (args.spans * args.batches), 1),
            "operations": results,
            "wire_check_over_upb_parse": round(results["wire_check"]["us_per_item_median"] / upb, 3),
        }
        print(f"{signal.value:<20}{'us/item median':>16}{'best':>10}")
        for name, row in results.items():
            print(f"  {name:<18}{row['us_per_item_median']:>16.3f}{row['us_per_item_best']:>10.3f}")
        print(f"  wire_check / upb_parse {report[signal.value]['wire_check_over_upb_parse']}")
    report["notes"] = [
        "CPU time (time.process_time) per span or log record; rounds of the operations interleaved.",
        "upb_parse_count was the receiver's path for protobuf requests; receiver_parse is it now.",
        "wire_check answers OK on every one of these requests (asserted before timing).",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
