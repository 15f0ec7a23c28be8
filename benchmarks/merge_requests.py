"""Merging queued requests at send time: bytes-level (``otelai.exporter.merge``) against protobuf.

Usage::

    .venv/bin/python benchmarks/merge_requests.py --out benchmarks/results/merge_requests.json

The otel-demo windows are cut into small requests (``--spans`` spans each, about what one
forwarded request holds on otel-demo), and every ``--merge`` consecutive ones are merged:

- ``bytes``: :func:`otelai.exporter.merge.merge_requests` (envelopes read by their length
  prefixes, items copied as bytes);
- ``protobuf``: each request parsed (upb), resources and scopes grouped by their serialised
  bytes, the spans copied into one new request, serialised.

Reports microseconds per merged request and per span (median of ``--rounds``), and the bytes
saved by merging (the envelope written once), which both methods share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from otelai.exporter.merge import merge_requests
from otelai.replay.otel_demo import iter_windows, window_requests

ROOT = Path(__file__).resolve().parent.parent


def merge_protobuf(requests: list[bytes]) -> bytes:
    merged = ExportTraceServiceRequest()
    resources: dict[tuple[bytes, str], Any] = {}
    scopes: dict[tuple[bytes, str, bytes, str], Any] = {}
    for data in requests:
        for resource_spans in ExportTraceServiceRequest.FromString(data).resource_spans:
            resource_key = (resource_spans.resource.SerializeToString(), resource_spans.schema_url)
            target = resources.get(resource_key)
            if target is None:
                target = resources[resource_key] = merged.resource_spans.add(
                    schema_url=resource_spans.schema_url
                )
                target.resource.CopyFrom(resource_spans.resource)
            for scope_spans in resource_spans.scope_spans:
                scope_key = (*resource_key, scope_spans.scope.SerializeToString(), scope_spans.schema_url)
                scope = scopes.get(scope_key)
                if scope is None:
                    scope = scopes[scope_key] = target.scope_spans.add(schema_url=scope_spans.schema_url)
                    scope.scope.CopyFrom(scope_spans.scope)
                scope.spans.extend(scope_spans.spans)
    out: bytes = merged.SerializeToString()
    return out


def _time(method: Callable[[list[bytes]], bytes], groups: list[list[bytes]], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for group in groups:
            method(group)
        times.append(time.perf_counter() - start)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--path", type=Path, default=ROOT.parent / "shared" / "data" / "otel-demo" / "eval")
    parser.add_argument("--windows", type=int, default=2)
    parser.add_argument("--spans", type=int, default=20)
    parser.add_argument("--merge", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not args.path.exists():
        print(json.dumps({"skipped": f"no data at {args.path}"}))
        return 0
    requests: list[bytes] = []
    for index, window in enumerate(iter_windows(args.path)):
        if index >= args.windows:
            break
        requests.extend(window_requests(window, max_spans=args.spans))
    groups = [requests[i : i + args.merge] for i in range(0, len(requests), args.merge)]
    spans = sum(
        len(s.spans)
        for r in requests
        for rs in ExportTraceServiceRequest.FromString(r).resource_spans
        for s in rs.scope_spans
    )
    for group in groups[:50]:  # the two methods agree on the content
        a = ExportTraceServiceRequest.FromString(merge_requests(group))
        b = ExportTraceServiceRequest.FromString(merge_protobuf(group))
        assert a == b, "methods disagree"
    received = sum(len(r) for r in requests)
    merged = sum(len(merge_requests(g)) for g in groups)
    result: dict[str, Any] = {
        "benchmark": "merge_requests",
        "requests": len(requests),
        "merged_requests": len(groups),
        "spans": spans,
        "bytes_in": received,
        "bytes_out": merged,
        "saved_fraction": round(1 - merged / received, 4),
    }
    for name, method in (("bytes", merge_requests), ("protobuf", merge_protobuf)):
        times = _time(method, groups, args.rounds)
        median = statistics.median(times)
        result[name] = {
            "us_per_merged_request": round(median / len(groups) * 1e6, 1),
            "us_per_span": round(median / spans * 1e6, 3),
            "best_us_per_span": round(min(times) / spans * 1e6, 3),
        }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
