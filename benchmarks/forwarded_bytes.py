"""Bytes forwarded over bytes received: ``otelai serve`` fed by ``otelai replay`` on otel-demo.

The issue's goal (issue 3): at the default settings, forwarded bytes are at most 10% of the
bytes received when ``../shared/data/otel-demo`` is replayed with ``otelai replay``.

The service runs as a subprocess with the embedded default configuration (``load_config(None)``:
a ``file`` exporter that merges what it forwards within 200ms, ``sending_queue.batch``), moved
to free loopback ports and a temporary output file (its other settings kept), plus any
``--set KEY=VALUE`` overrides (YAML values, dotted keys). The data set is replayed in segments
(``train/`` then ``eval/``, or ``--segments N`` slices of the windows in replay order, through
folders of symbolic links), so that what the warm-up costs shows up per segment. After each
segment the benchmark waits until the exporters have drained and one summaries interval has
passed, then reads ``/metrics``.

Two independent measures of what was forwarded:

- ``metrics``: ``otelai_exporter_bytes_total{signal}`` against ``otelai_receiver_bytes_total``
  (what the service itself counts: the bytes it handed to its exporter);
- ``file``: the file exporter's OTLP JSON lines parsed back to protobuf and measured per span,
  by ``otelai.selection.reason``: the span bytes as received (``span``), otelai's tags and
  tracestate on them (``tags``), and per request the resource and scope headers
  (``envelope``); metric requests are the summaries of dropped items.

``--pace INTERVAL ...`` estimates instead what the summaries cost at the data's recorded pace
(a replay compresses hours of data time into a minute, so it flushes a handful of summaries
where a real deployment flushes one per interval): the windows are laid end to end in replay
order, each over its recorded span times (30 s), the spans outside the consistent sample are
counted as dropped in :class:`~otelai.decision.summaries.DroppedSummaries` (the service's own
class), which is flushed every ``INTERVAL`` seconds of data time, with explicit and with
exponential buckets. Anomalies and critical context (about 1.5% of the spans) are counted as
dropped too, so the estimate is a slight upper bound. No service runs.

Usage::

    .venv/bin/python benchmarks/forwarded_bytes.py --out benchmarks/results/forwarded_bytes.json
    .venv/bin/python benchmarks/forwarded_bytes.py --set scoring.calibration.min_samples=256
    .venv/bin/python benchmarks/forwarded_bytes.py --pace 10 60 --out /tmp/pace.json

Exit status: 0 measured (or skipped: no data), 1 the service or the replay failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hops import _die_with_parent, free_port, stop

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "otel-demo"
OTELAI = ROOT / ".venv" / "bin" / "otelai"
READY_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 60.0
TAG_PREFIX = "otelai."
SELECTION_REASON = "otelai.selection.reason"


# -- the service ---------------------------------------------------------------------------


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    node = tree
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value


def service_config(out_file: Path, overrides: list[str]) -> tuple[dict[str, Any], int, int]:
    """The embedded default with its ports moved, its file exporter in ``out_file`` and overrides.

    Returns the configuration tree, the gRPC port and the metrics port.
    """
    from otelai.config import EMBEDDED_DEFAULT

    tree: dict[str, Any] = yaml.safe_load(EMBEDDED_DEFAULT)
    grpc_port, metrics_port = free_port(), free_port()
    tree["receivers"]["otlp"]["protocols"] = {"grpc": {"endpoint": f"127.0.0.1:{grpc_port}"}}
    # the default's file exporter, with all its settings (its send batching included), elsewhere
    tree["exporters"] = {"file": {**tree["exporters"]["file"], "path": str(out_file)}}
    tree["telemetry"]["metrics"]["endpoint"] = f"127.0.0.1:{metrics_port}"
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        _set(tree, key, yaml.safe_load(value))
    return tree, grpc_port, metrics_port


@dataclass
class Service:
    """``otelai serve`` as a subprocess."""

    process: subprocess.Popen[bytes]
    metrics_url: str
    log: Path

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def running_service(config_file: Path, metrics_port: int, log: Path) -> Iterator[Service]:
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(OTELAI), "serve", "--config", str(config_file)],
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=config_file.parent,
            preexec_fn=_die_with_parent,
        )
    service = Service(process, f"http://127.0.0.1:{metrics_port}", log)
    try:
        _wait_ready(service)
        yield service
    finally:
        stop(process, STOP_TIMEOUT_S)


def _wait_ready(service: Service) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"otelai exited with {service.process.returncode}: {service.tail()}")
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{service.metrics_url}/readyz", timeout=1) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"otelai not ready after {READY_TIMEOUT_S}s: {service.tail()}")


# -- Prometheus metrics --------------------------------------------------------------------

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(service: Service) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{service.metrics_url}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def by_label(samples: Samples, name: str, label: str, **match: str) -> dict[str, float]:
    """``{label value: sample}`` of metric ``name`` among the samples whose labels match."""
    out: dict[str, float] = defaultdict(float)
    for (sample, labels), value in samples.items():
        found = dict(labels)
        if sample == name and all(found.get(k) == v for k, v in match.items()):
            out[found.get(label, "")] += value
    return dict(out)


def diff(after: Samples, before: Samples) -> Samples:
    return {key: value - before.get(key, 0.0) for key, value in after.items()}


def wait_drained(service: Service, settle_s: float) -> Samples:
    """Metrics once the exporter queues are empty, nothing moved for ``settle_s`` seconds
    (one summaries interval: what was dropped is summarised and exported), and no request is
    waiting in a scoring stage."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S + settle_s
    last = scrape(service)
    still_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = scrape(service)
        moving = _exported(now) != _exported(last)
        queued = sum(by_label(now, "otelai_queue_items", "queue").values())
        if moving or queued:
            still_since = time.monotonic()
        elif time.monotonic() - still_since >= settle_s:
            return now
        last = now
    return last


def _exported(samples: Samples) -> float:
    return sum(by_label(samples, "otelai_exporter_bytes_total", "signal").values())


def metric_summary(delta: Samples) -> dict[str, Any]:
    received = by_label(delta, "otelai_receiver_bytes_total", "signal")
    forwarded = by_label(delta, "otelai_exporter_bytes_total", "signal")
    total_in, total_out = sum(received.values()), sum(forwarded.values())
    return {
        "received_bytes": received,
        "forwarded_bytes": forwarded,
        "ratio": total_out / total_in if total_in else None,
        "received_items": by_label(delta, "otelai_receiver_items_total", "signal"),
        "selection_items": by_label(delta, "otelai_selection_items_total", "decision", signal="traces"),
        "anomalies": by_label(delta, "otelai_anomalies_total", "severity", signal="traces"),
        "fail_open": by_label(delta, "otelai_fail_open_items_total", "reason", signal="traces"),
        "exported_items": by_label(delta, "otelai_exporter_items_total", "outcome", signal="traces"),
    }


# -- what the file exporter wrote ----------------------------------------------------------


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def _field_size(payload: int) -> int:
    """Bytes of a length-delimited field (one-byte tag) holding ``payload`` bytes."""
    return 1 + _varint_size(payload) + payload


def _root_keys() -> dict[bytes, Any]:
    from otelai.signals import Signal

    return {
        b'"resourceSpans"': Signal.TRACES,
        b'"resourceMetrics"': Signal.METRICS,
        b'"resourceLogs"': Signal.LOGS,
    }


_ROOT_KEYS = _root_keys()


@dataclass
class FileBreakdown:
    """Forwarded bytes re-encoded from the file exporter's JSON, by selection reason."""

    requests: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    request_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    spans: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    span_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    tag_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    envelope_bytes: int = 0
    summary_points: int = 0

    def add_line(self, line: bytes) -> None:
        from otelai.otlp_json import request_from_json
        from otelai.signals import Signal

        head = line[:64]
        signal = next((s for key, s in _ROOT_KEYS.items() if key in head), Signal.TRACES)
        request = request_from_json(signal, line)
        size = request.ByteSize()
        self.requests[signal.value] += 1
        self.request_bytes[signal.value] += size
        if signal is Signal.METRICS:
            for resource_metrics in request.resource_metrics:  # type: ignore[attr-defined]
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        kind = metric.WhichOneof("data")
                        if kind:
                            self.summary_points += len(getattr(metric, kind).data_points)
            return
        if signal is not Signal.TRACES:
            return
        in_spans = 0
        for resource_spans in request.resource_spans:  # type: ignore[attr-defined]
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    whole = _field_size(span.ByteSize())
                    in_spans += whole
                    reason = "untagged"
                    tags = 0
                    for attribute in span.attributes:
                        if attribute.key.startswith(TAG_PREFIX):
                            tags += _field_size(attribute.ByteSize())
                            if attribute.key == SELECTION_REASON:
                                reason = attribute.value.string_value
                    if span.trace_state:
                        tags += _field_size(len(span.trace_state.encode()))
                    self.spans[reason] += 1
                    self.tag_bytes[reason] += tags
                    self.span_bytes[reason] += whole - tags
        self.envelope_bytes += size - in_spans

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "bytes": dict(self.request_bytes),
            "spans": dict(self.spans),
            "span_bytes": dict(self.span_bytes),
            "tag_bytes": dict(self.tag_bytes),
            "envelope_bytes": self.envelope_bytes,
            "summary_points": self.summary_points,
        }


def read_breakdown(path: Path, start: int, end: int | None) -> FileBreakdown:
    breakdown = FileBreakdown()
    if not path.exists():
        return breakdown
    with path.open("rb") as handle:
        handle.seek(start)
        data = handle.read() if end is None else handle.read(end - start)
    for line in data.splitlines():
        if line.strip():
            breakdown.add_line(line)
    return breakdown


# -- segments of the data set --------------------------------------------------------------


def segments(data: Path, count: int, work: Path) -> list[tuple[str, Path]]:
    """Replay units in replay order: ``train``, ``eval``, or ``count`` slices of all windows."""
    from otelai.replay.otel_demo import iter_windows

    if count <= 0:
        from otelai.replay.otel_demo import SPLITS

        found = [(split, data / split) for split in SPLITS if (data / split).is_dir()]
        return found or [(data.name, data)]
    windows = list(iter_windows(data))
    out = []
    for i in range(count):
        part = windows[i * len(windows) // count : (i + 1) * len(windows) // count]
        if not part:
            continue
        folder = work / f"segment{i:02d}"
        folder.mkdir()
        for window in part:
            (folder / window.path.name).symlink_to(window.path)
            meta = window.path.with_name(f"metadata_{window.name}.json")
            if meta.exists():
                (folder / meta.name).symlink_to(meta)
        out.append((f"{part[0].name}..{part[-1].name}", folder))
    return out


def replay(path: Path, grpc_port: int) -> dict[str, Any]:
    started = time.monotonic()
    done = subprocess.run(
        [
            str(OTELAI),
            "replay",
            "--dataset",
            "otel-demo",
            "--path",
            str(path),
            "--endpoint",
            f"127.0.0.1:{grpc_port}",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    summary = (done.stdout.strip().splitlines() or [""])[-1]
    return {
        "returncode": done.returncode,
        "seconds": round(time.monotonic() - started, 1),
        "summary": summary,
        "stderr_tail": done.stderr[-1500:] if done.returncode else "",
    }


# -- the run -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"benchmark": "forwarded_bytes", "data": str(args.path), "overrides": args.set}
    with tempfile.TemporaryDirectory(prefix="otelai-bytes-") as tmp:
        work = Path(tmp)
        out_file = work / "forwarded.jsonl"
        tree, grpc_port, metrics_port = service_config(out_file, args.set)
        config_file = work / "config.yaml"
        config_file.write_text(yaml.safe_dump(tree))
        settle = float(args.settle) if args.settle is not None else _summaries_interval(tree) + 1.0
        result["config"] = tree
        result["segments"] = []
        with running_service(config_file, metrics_port, work / "otelai.log") as service:
            before = initial = scrape(service)
            offset = 0
            for name, path in segments(args.path, args.segments, work):
                sent = replay(path, grpc_port)
                if sent["returncode"] != 0:
                    result["error"] = f"replay of {name} failed: {sent}"
                    result["service_log_tail"] = service.tail()
                    return result
                after = wait_drained(service, settle)
                end = out_file.stat().st_size if out_file.exists() else 0
                result["segments"].append(
                    {
                        "name": name,
                        "replay": sent,
                        "metrics": metric_summary(diff(after, before)),
                        "file": read_breakdown(out_file, offset, end).as_dict(),
                    }
                )
                result["segments"][-1]["calibration_warm_at_end"] = by_label(
                    after, "otelai_calibration_warm", "signal"
                )
                if result["segments"][-1]["metrics"]["fail_open"]:
                    result["segments"][-1]["service_log_tail"] = service.tail()
                before, offset = after, end
            total = diff(before, initial)
        result["total"] = {
            "metrics": metric_summary(total),
            "file": read_breakdown(out_file, 0, None).as_dict(),
        }
        result["total"]["summary"] = _headline(result["total"])
    return result


# -- summaries at the recorded pace ---------------------------------------------------------

WINDOW_S = 30.0  # otel-demo windows are 30 s of traffic each


def pace_estimate(data: Path, intervals: list[float], max_sizes: list[int]) -> dict[str, Any]:
    """Summary bytes over received bytes when ``data`` arrives at its recorded pace."""
    import numpy as np
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    from otelai.decision import sampling
    from otelai.decision.summaries import DroppedSummaries
    from otelai.replay.otel_demo import iter_windows, window_requests

    threshold = sampling.threshold_for(0.05)
    received = 0
    rows: list[
        tuple[float, str, str, int, bool, bool]
    ] = []  # (data time s, service, name, ns, error, dropped)
    windows = [window for _, folder in segments(data, 0, data) for window in iter_windows(folder)]
    for w, window in enumerate(windows):
        first: int | None = None
        for payload in window_requests(window):
            received += len(payload)
            request = ExportTraceServiceRequest.FromString(payload)
            for resource_spans in request.resource_spans:
                service = next(
                    (
                        a.value.string_value
                        for a in resource_spans.resource.attributes
                        if a.key == "service.name"
                    ),
                    "",
                )
                for scope_spans in resource_spans.scope_spans:
                    spans = scope_spans.spans
                    if not spans:
                        continue
                    ids = np.frombuffer(b"".join(span.trace_id for span in spans), dtype=np.uint8).reshape(
                        -1, 16
                    )
                    kept = sampling.keep_mask(sampling.randomness(ids), threshold)
                    for span, keep in zip(spans, kept.tolist(), strict=True):
                        first = (
                            span.start_time_unix_nano
                            if first is None
                            else min(first, span.start_time_unix_nano)
                        )
                        rows.append(
                            (
                                float(span.end_time_unix_nano),
                                service,
                                span.name,
                                span.end_time_unix_nano - span.start_time_unix_nano,
                                span.status.code == 2,
                                not keep,
                            )
                        )
        # The window's spans at their offset from its first span, the windows end to end.
        if first is not None:
            for i in range(len(rows) - 1, -1, -1):
                end_ns = rows[i][0]
                if end_ns < 1e12:  # already placed (an earlier window)
                    break
                offset = min(max((end_ns - first) / 1e9, 0.0), WINDOW_S)
                rows[i] = (w * WINDOW_S + offset, *rows[i][1:])
    times = np.array([r[0] for r in rows])
    services = [r[1] for r in rows]
    names = [r[2] for r in rows]
    durations = np.array([r[3] for r in rows], dtype=np.int64)
    errors = np.array([r[4] for r in rows], dtype=np.bool_)
    dropped = np.array([r[5] for r in rows], dtype=np.bool_)
    result: dict[str, Any] = {
        "windows": len(windows),
        "data_seconds": len(windows) * WINDOW_S,
        "spans": len(rows),
        "dropped": int(dropped.sum()),
        "received_bytes": received,
        "by_interval": {},
    }
    encodings: list[tuple[str, int | None]] = [("explicit", None)] + [
        (f"exponential_{m}", m) for m in max_sizes
    ]
    for interval in intervals:
        slot = (times // interval).astype(np.int64)
        per: dict[str, Any] = {}
        for label, max_size in encodings:
            table = DroppedSummaries(exponential_max_size=max_size, start_ns=0)
            total, flushes, points = 0, 0, 0
            for k in np.unique(slot).tolist():
                rows_k = np.flatnonzero(slot == k)
                series = table.intern_spans([services[i] for i in rows_k], [names[i] for i in rows_k])
                table.add_spans(series, durations[rows_k], errors[rows_k], dropped[rows_k])
                body, count = table.flush_counted(int((k + 1) * interval * 1e9))
                total += len(body)
                flushes += bool(body)
                points += count
            per[label] = {
                "bytes": total,
                "flushes": flushes,
                "points": points,
                "share_of_received": round(total / received, 5) if received else None,
            }
        result["by_interval"][f"{interval:g}s"] = per
    return result


def _summaries_interval(tree: dict[str, Any]) -> float:
    from otelai.config import Config

    return float(Config.model_validate(tree).summaries.interval)


def _headline(total: dict[str, Any]) -> dict[str, Any]:
    metrics, file = total["metrics"], total["file"]
    received = sum(metrics["received_bytes"].values())
    headline: dict[str, Any] = {"received_bytes": received, "forwarded_ratio": metrics["ratio"]}
    if received:
        shares = {f"span:{k}": v / received for k, v in file["span_bytes"].items()}
        shares.update({f"tags:{k}": v / received for k, v in file["tag_bytes"].items()})
        shares["envelope"] = file["envelope_bytes"] / received
        shares["summaries"] = file["bytes"].get("metrics", 0) / received
        headline["share_of_received"] = {k: round(v, 5) for k, v in sorted(shares.items())}
        headline["file_ratio"] = sum(file["bytes"].values()) / received
    return headline


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", type=Path, default=DEFAULT_DATA, help="the otel-demo folder")
    parser.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (YAML)")
    parser.add_argument("--segments", type=int, default=0, help="slices of the windows (0: train, eval)")
    parser.add_argument("--settle", type=float, default=None, help="seconds still before a scrape")
    parser.add_argument("--out", type=Path, default=None, help="JSON results (default: stdout only)")
    parser.add_argument(
        "--pace",
        type=float,
        nargs="+",
        default=None,
        metavar="INTERVAL",
        help="estimate the summaries at the recorded pace, flushed every INTERVAL seconds (no service)",
    )
    parser.add_argument(
        "--max-size", type=int, nargs="+", default=[160, 20], help="exponential max_size values (--pace)"
    )
    args = parser.parse_args()
    if not args.path.is_dir():
        print(f"forwarded_bytes: skipped: no otel-demo data at {args.path}", file=sys.stderr)
        return 0
    if args.pace:
        estimate = {"benchmark": "forwarded_bytes.pace", "data": str(args.path)}
        estimate.update(pace_estimate(args.path, args.pace, args.max_size))
        text = json.dumps(estimate, indent=2)
        if args.out:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(text + "\n")
        print(text)
        return 0
    if not OTELAI.exists():
        print(f"forwarded_bytes: skipped: {OTELAI} not installed", file=sys.stderr)
        return 0
    result = run(args)
    text = json.dumps(result, indent=2, sort_keys=False)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    print(json.dumps(result.get("total", {}).get("summary", result.get("error")), indent=2))
    for segment in result.get("segments", []):
        m = segment["metrics"]
        print(
            f"{segment['name']}: ratio {m['ratio']}, selection {m['selection_items']}, fail_open {m['fail_open']}"
        )
    return 1 if "error" in result else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
