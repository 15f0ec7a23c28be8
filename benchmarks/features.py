"""Per-span cost of the span features, against the cost of parsing, on the hop's requests.

Usage::

    .venv/bin/python benchmarks/features.py --out benchmarks/results/features.json

On the same pre-serialised requests as ``hop.py`` (512 spans, about ten attributes each),
grouped into batches of ``--requests`` requests, each round times, back to back so that they
share the machine's load:

- ``parse``: ``ExportTraceServiceRequest.FromString`` of every request (the floor to beat);
- ``locate``: the container walk that finds every span's bytes (skeleton parse and tiling);
- ``span_batch``: ``SpanBatch.from_payloads`` (all columns, from the bytes), with the span reader
  ``--decoder`` names (``auto``, ``numba``, ``numpy``; several, comma-separated, add one
  ``span_batch@NAME`` and ``batch_and_features@NAME`` row each, timed in the same rounds);
- ``span_batch_from_requests``: ``SpanBatch.from_requests`` on parsed requests (serialises);
- ``features``: ``span_features`` on a ready batch, baselines updated;
- ``batch_and_features``: ``span_batch`` then ``features``: what the hot path pays.

and, for the record, ways to read the attributes the features need: ``attributes_raw_wire``
(the attribute step of ``span_batch`` alone, on spans already located and walked) against
the Python protobuf API on parsed requests (``attributes_loop_frozenset``,
``attributes_attrgetter_prefilter``), a parse into a type whose ``Span.attributes`` is a
``map<string, AnyValue>`` (wire-identical; parse included), and every column through the API
(``columns_via_protobuf_api``); and the cost of reaching a parsed span from its locator. Times are microseconds a span; the JSON has the median
and best round.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from collections.abc import Callable
from operator import attrgetter
from pathlib import Path
from typing import Any, cast

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from measure import machine_info
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from workload import build_batches

from otelai.features.interner import Interner
from otelai.features.span_batch import SpanBatch
from otelai.features.span_batch import _attribute_columns as attribute_columns
from otelai.features.span_decoder import Decoder, prepare_decoder
from otelai.features.spans import SpanBaselines, span_features
from otelai.features.trace_layout import locate_spans
from otelai.features.wire import walk

WANTED = frozenset(
    {"http.response.status_code", "http.status_code", "rpc.grpc.status_code", "db.system", "db.system.name"}
)


def _spans(request: Any) -> list[Any]:
    spans: list[Any] = []
    for resource_spans in request.resource_spans:
        for scope_spans in resource_spans.scope_spans:
            spans.extend(scope_spans.spans)
    return spans


def _attributes_loop(requests: list[Any]) -> int:
    """Compare every key with a frozenset."""
    hits = 0
    for request in requests:
        for span in _spans(request):
            for attribute in span.attributes:
                if attribute.key in WANTED:
                    hits += 1
    return hits


def _attributes_prefilter(requests: list[Any]) -> int:
    """Keys through a C-level map first; loop only over spans that have a wanted key."""
    key = attrgetter("key")
    hits = 0
    for request in requests:
        for span in _spans(request):
            attributes = span.attributes
            if not WANTED.isdisjoint(map(key, attributes)):
                hits += sum(1 for attribute in attributes if attribute.key in WANTED)
    return hits


def _map_skeleton() -> Any:
    """A request type whose Span.attributes is a map<string, AnyValue>: wire-identical to the
    repeated KeyValue, so upb builds a hash map and a key lookup is one C call."""
    file = descriptor_pb2.FileDescriptorProto(name="bench_map.proto", package="benchmap", syntax="proto3")
    field = descriptor_pb2.FieldDescriptorProto

    def add(
        message: Any, name: str, number: int, kind: int, type_name: str = "", repeated: bool = False
    ) -> None:
        added = message.field.add(name=name, number=number, type=kind)
        added.label = field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL
        if type_name:
            added.type_name = f".benchmap.{type_name}"

    request = file.message_type.add(name="Request")
    add(request, "resource_spans", 1, field.TYPE_MESSAGE, "ResourceSpans", True)
    resource_spans = file.message_type.add(name="ResourceSpans")
    add(resource_spans, "scope_spans", 2, field.TYPE_MESSAGE, "ScopeSpans", True)
    scope_spans = file.message_type.add(name="ScopeSpans")
    add(scope_spans, "spans", 2, field.TYPE_MESSAGE, "Span", True)
    any_value = file.message_type.add(name="AnyValue")
    add(any_value, "string_value", 1, field.TYPE_BYTES)
    add(any_value, "int_value", 3, field.TYPE_INT64)
    span = file.message_type.add(name="Span")
    entry = span.nested_type.add(name="AttributesEntry")
    entry.options.map_entry = True
    add(entry, "key", 1, field.TYPE_STRING)
    add(entry, "value", 2, field.TYPE_MESSAGE, "AnyValue")
    add(span, "attributes", 9, field.TYPE_MESSAGE, "Span.AttributesEntry", True)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("benchmap.Request"))


def _attributes_map(payloads: list[bytes], skeleton: Any) -> int:
    """Parse with the map skeleton (included in the time), then look each wanted key up."""
    hits = 0
    for payload in payloads:
        for span in _spans(skeleton.FromString(payload)):
            attributes = span.attributes
            hits += sum(1 for key in WANTED if key in attributes)
    return hits


def _columns_via_api(requests: list[Any]) -> int:
    """Every SpanBatch input read through the Python protobuf API (no links or interning)."""
    rows = 0
    for request in requests:
        spans = _spans(request)
        for name in (
            "trace_id",
            "span_id",
            "parent_span_id",
            "start_time_unix_nano",
            "end_time_unix_nano",
            "kind",
            "name",
        ):
            list(map(attrgetter(name), spans))
        list(map(attrgetter("status.code"), spans))
        for name in ("events", "links", "attributes"):
            list(map(len, map(attrgetter(name), spans)))
        _attributes_prefilter([request])
        for span in spans:
            if span.events:
                any(event.name == "exception" for event in span.events)
        rows += len(spans)
    return rows


def _operations(
    payloads: list[bytes], requests_per_batch: int, skeleton: Any, decoders: list[Decoder]
) -> dict[str, Callable[[], object]]:
    groups = [payloads[i : i + requests_per_batch] for i in range(0, len(payloads), requests_per_batch)]
    parsed = [[ExportTraceServiceRequest.FromString(payload) for payload in group] for group in groups]
    interner = Interner()
    baselines = SpanBaselines.create()
    ready = [SpanBatch.from_payloads(group, interner) for group in groups]
    for batch in ready:  # warm baselines, so scoring takes its usual path
        span_features(batch, baselines, now=0.0)
    fields = []
    for group in groups:
        buf, layout = locate_spans(group)
        fields.append((buf, walk(buf, layout.start, layout.end), int(layout.start.size)))

    def span_batch(decoder: Decoder) -> Callable[[], object]:
        return lambda: [SpanBatch.from_payloads(group, interner, decoder=decoder) for group in groups]

    def batch_and_features(decoder: Decoder) -> Callable[[], object]:
        def run() -> None:
            for group in groups:
                batch = SpanBatch.from_payloads(group, interner, decoder=decoder)
                span_features(batch, baselines, now=0.0)

        return run

    def suffix(decoder: Decoder) -> str:
        return f"@{decoder}" if len(decoders) > 1 else ""

    return {
        "parse": lambda: [ExportTraceServiceRequest.FromString(payload) for payload in payloads],
        "locate": lambda: [locate_spans(group) for group in groups],
        **{f"span_batch{suffix(d)}": span_batch(d) for d in decoders},
        "span_batch_from_requests": lambda: [
            SpanBatch.from_requests(group, interner, decoder=decoders[0]) for group in parsed
        ],
        "features": lambda: [span_features(batch, baselines, now=0.0) for batch in ready],
        **{f"batch_and_features{suffix(d)}": batch_and_features(d) for d in decoders},
        "attributes_raw_wire": lambda: [attribute_columns(*walked) for walked in fields],
        "attributes_loop_frozenset": lambda: [_attributes_loop(group) for group in parsed],
        "attributes_attrgetter_prefilter": lambda: [_attributes_prefilter(group) for group in parsed],
        "attributes_map_skeleton_incl_parse": lambda: _attributes_map(payloads, skeleton),
        "columns_via_protobuf_api": lambda: [_columns_via_api(group) for group in parsed],
    }


def measure(
    payloads: list[bytes], spans: int, requests_per_batch: int, rounds: int, decoders: list[Decoder]
) -> dict[str, dict[str, float]]:
    """Microseconds per span (median and best round) of each operation, rounds interleaved."""
    operations = _operations(payloads, requests_per_batch, _map_skeleton(), decoders)
    timings: dict[str, list[float]] = {name: [] for name in operations}
    for operation in operations.values():
        operation()  # warm up
    for _ in range(rounds):
        for name, operation in operations.items():
            start = time.perf_counter_ns()
            operation()
            timings[name].append((time.perf_counter_ns() - start) / 1e3 / spans)
    return {
        name: {
            "us_per_span_median": round(statistics.median(values), 4),
            "us_per_span_best": round(min(values), 4),
        }
        for name, values in timings.items()
    }


def _locator_cost(payloads: list[bytes], rounds: int) -> float:
    """Microseconds to reach one span of a parsed request from its (resource, scope, index)."""
    batch = SpanBatch.from_payloads(payloads, Interner())
    parsed = [ExportTraceServiceRequest.FromString(payload) for payload in payloads]
    rows = list(
        zip(
            batch.request.tolist(),
            batch.resource.tolist(),
            batch.scope.tolist(),
            batch.index.tolist(),
            strict=True,
        )
    )
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter_ns()
        for request, resource, scope, index in rows:
            parsed[request].resource_spans[resource].scope_spans[scope].spans[index]
        best = min(best, (time.perf_counter_ns() - start) / 1e3 / len(rows))
    return round(best, 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/features.json"))
    parser.add_argument("--spans", type=int, default=512)
    parser.add_argument("--batches", type=int, default=16)
    parser.add_argument("--requests", default="1,8", help="requests per SpanBatch, comma-separated")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument(
        "--decoder", default="auto", help="span reader(s): auto, numba, numpy; comma-separated to compare"
    )
    args = parser.parse_args(argv)
    decoders = [cast(Decoder, name) for name in args.decoder.split(",")]
    started = time.perf_counter()
    in_use = {name: prepare_decoder(name) for name in decoders}  # numba compiles (or loads) here
    prepare_s = round(time.perf_counter() - started, 2)
    payloads = build_batches(args.seed, args.batches, args.spans)
    total = args.spans * args.batches
    results = {
        f"{count}_requests_per_batch": measure(payloads, total, int(count), args.rounds, decoders)
        for count in args.requests.split(",")
    }
    report = {
        "benchmark": "features",
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": vars(args) | {"out": str(args.out)},
        "operations": results,
        "locator_us_per_span": _locator_cost(payloads[:8], args.rounds),
        "decoders_in_use": in_use,
        "decoder_prepare_s": prepare_s,
        "notes": [
            "us_per_span over all spans of all requests; rounds interleave the operations.",
            "span_batch reads the serialised bytes: it needs no parse; batch_and_features is the hot path's cost.",
            "attributes_* and columns_via_protobuf_api are the alternatives through the protobuf API, on parsed requests.",
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    for batching, rows in results.items():
        print(batching)
        for name, row in rows.items():
            print(f"  {name:<38}{row['us_per_span_median']:>10.3f}{row['us_per_span_best']:>10.3f}")
    print(f"decoders {in_use} (prepared in {prepare_s} s)")
    print(f"locator {report['locator_us_per_span']} us/span; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
