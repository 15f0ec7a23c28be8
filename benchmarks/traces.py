"""CPU cost per span of ``TraceProcessor.process`` (otelai/scoring/traces.py) on the hop's requests.

Usage::

    .venv/bin/python benchmarks/traces.py --out benchmarks/results/traces.json
    .venv/bin/python benchmarks/traces.py --requests 1,2,4,16 --rounds 5 --profile 1

The requests are ``hop.py``'s (512 spans, about ten attributes each), each sent with fresh
trace ids as the load generator does, and handed to the processor as the gRPC receiver does
(bytes plus the upb-parsed message). The processor runs at the default configuration
(``normal_sample_rate`` 0.05, ECDF window 8192 at sample rate 0.05) with the shipped model
bundle (``--bundle``: ``none`` for the online detectors alone, streaming baselines and PCA on
ONNX Runtime CPU), warmed until calibrated. Then, for each batch size in
``--requests`` (requests per batch), ``--rounds`` rounds of ``--batches`` batches each are timed
with ``time.process_time`` (CPU time of the whole process, so other engineers' load on the
machine barely moves it). The JSON has microseconds of CPU a span, median and best round,
the part of it spent before the batch is forwarded (``deciding``: the processor learns from a
batch after forwarding it, as in the service), and the forwarded share of spans. ``--profile N`` then prints a cProfile of batches of ``N``
requests (``--sort``; cProfile inflates Python-call-heavy steps, so read it for shares).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from measure import machine_info
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client import CollectorRegistry
from workload import build_batches, fresh_trace_ids, trace_id_offsets

from otelai.config import load_config
from otelai.decision.summaries import DroppedSummaries
from otelai.models.serving import load_configured_bundle
from otelai.pipeline import Payload
from otelai.scoring.traces import TraceProcessor
from otelai.signals import Signal
from otelai.telemetry.metrics import Metrics


class Traffic:
    """The hop benchmark's requests, each time with trace ids never used before."""

    def __init__(self, seed: int, batches: int, spans: int) -> None:
        self.batches = build_batches(seed, batches, spans)
        self.offsets = [trace_id_offsets(batch) for batch in self.batches]
        self.spans = spans
        self.key = 0
        self.index = 0

    def payloads(self, count: int) -> list[Payload]:
        out = []
        for _ in range(count):
            self.key += 1
            i = self.index % len(self.batches)
            self.index += 1
            data = fresh_trace_ids(self.batches[i], self.offsets[i], self.key)
            request = ExportTraceServiceRequest.FromString(data)  # what the receiver hands over
            out.append(Payload(Signal.TRACES, data, self.spans, time.monotonic_ns(), request))
        return out


def make_processor(bundle: str = "default") -> TraceProcessor:
    """The processor at the default configuration; ``bundle``: "default" (the shipped model
    bundle, as the service loads it), "none" (online detectors only) or a bundle path."""
    model = {"default": "{}", "none": "{enabled: false}"}.get(bundle, f"{{path: {bundle!r}}}")
    config = load_config(text=f"scoring: {{signals: [traces], model: {model}}}\n")
    summaries = DroppedSummaries(boundaries_ms=[5, 10, 25, 50, 100, 250, 500, 1000], max_series=10_000)
    loaded = load_configured_bundle(config.scoring.model)
    return TraceProcessor(config, Metrics(CollectorRegistry()), summaries=summaries, bundle=loaded)


def warm(processor: TraceProcessor, traffic: Traffic, requests: int) -> None:
    while True:
        for _ in range(requests // 4):
            processor.process(traffic.payloads(4))
        pca = processor.scorer.detectors[-1]
        wait = getattr(pca, "wait_fitted", None)
        if wait is not None:
            wait(60.0)
        if processor.scorer.warm and all(d.ready for d in processor.scorer.detectors):
            return


def measure(
    processor: TraceProcessor, traffic: Traffic, requests: int, batches: int, rounds: int
) -> dict[str, Any]:
    per_span: list[float] = []
    deciding: list[float] = []
    kept = total = 0
    processor.defer_learning = True  # as in the service: decide and forward, then settle
    for _ in range(rounds):
        inputs = [traffic.payloads(requests) for _ in range(batches)]
        spans = sum(p.items for batch in inputs for p in batch)
        decide = 0.0
        begin = time.process_time()
        for batch in inputs:
            start = time.process_time()
            for out in processor.process(batch):
                kept += out.items
            decide += time.process_time() - start
            processor.settle()
        per_span.append((time.process_time() - begin) / spans * 1e6)
        deciding.append(decide / spans * 1e6)
        total += spans
    return {
        "requests_per_batch": requests,
        "spans_per_batch": requests * traffic.spans,
        "us_per_span_median": round(statistics.median(per_span), 3),
        "us_per_span_best": round(min(per_span), 3),
        # Up to the forwarded payload (what a request waits for); the rest is learning.
        "us_per_span_deciding_median": round(statistics.median(deciding), 3),
        "rounds": [round(x, 3) for x in per_span],
        "forwarded_share": round(kept / total, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--requests", default="1,2,4,16", help="requests per batch, comma-separated")
    parser.add_argument(
        "--batches", type=int, default=0, help="batches a round (default: 64 requests' worth)"
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--spans", type=int, default=512)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--bundle", default="default", help='"default" (shipped), "none" or a bundle path')
    parser.add_argument("--warmup-requests", type=int, default=120)
    parser.add_argument("--profile", type=int, default=0, help="requests per batch to profile (cProfile)")
    parser.add_argument("--sort", default="tottime", help="cProfile sort key")
    args = parser.parse_args(argv)
    traffic = Traffic(args.seed, 8, args.spans)
    processor = make_processor(args.bundle)
    warm(processor, traffic, args.warmup_requests)
    results = []
    for requests in (int(x) for x in args.requests.split(",")):
        batches = args.batches or max(4, 64 // requests)
        result = measure(processor, traffic, requests, batches, args.rounds)
        results.append(result)
        print(
            f"{requests:3d} req/batch: {result['us_per_span_median']:7.3f} us/span CPU"
            f" (deciding {result['us_per_span_deciding_median']:.3f})"
            f" (best {result['us_per_span_best']:.3f}), forwarded {result['forwarded_share']:.3f}"
        )
    if args.profile:
        import cProfile
        import pstats

        inputs = [traffic.payloads(args.profile) for _ in range(max(4, 64 // args.profile))]
        profiler = cProfile.Profile()
        profiler.enable()
        for batch in inputs:
            processor.process(batch)
        profiler.disable()
        pstats.Stats(profiler).sort_stats(args.sort).print_stats(45)
    processor.close()
    if args.out:
        document = {
            "benchmark": "traces",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine_info(),
            "parameters": vars(args) | {"out": str(args.out)},
            "results": results,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
