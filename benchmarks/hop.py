"""Throughput and added latency of a pass-through OTLP hop: otelai beside rotel, in one run.

Usage::

    .venv/bin/python benchmarks/hop.py --out benchmarks/results/hop.json [--duration 8]

One load generator process and one counting sink process serve every hop in turn:
``direct`` (loadgen -> sink, the baseline), ``rotel`` (default batching), ``rotel-nobatch``
and ``otelai``. For each hop, a throughput phase saturates it with ``--concurrency`` requests
in flight and counts spans acknowledged by the hop and spans arrived at the sink (the truth);
then a latency phase offers every hop the same fixed rate (half the slower hop's measured
throughput unless ``--latency-rate`` is given) and times each request from the load
generator's send to the sink's arrival on the shared monotonic clock. Added latency is the
hop's percentile minus the direct percentile. See benchmarks/README.md.

``--py-spy DIR`` records each otelai hop's stacks with ``py-spy record`` during its throughput
window (``DIR/<hop>.txt``, collapsed stacks per thread, and ``DIR/<hop>-gil.txt``, only the
samples holding the GIL, from a second run of the phase) to see where the saturated hop spends
its time and which of it holds the GIL.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import multiprocessing
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from types import FrameType
from typing import Any

import counting_sink
import hops
import loadgen
from measure import machine_cpu_s, machine_info, process_cpu_s, summary_ms
from prometheus_client.parser import text_string_to_metric_families

_SPAWN = multiprocessing.get_context("spawn")  # grpc does not survive fork
CALL_SLACK_S = 30.0


class BenchError(Exception):
    """A helper process failed or did not answer."""


def ask(conn: Connection, command: tuple[Any, ...], timeout: float) -> Any:
    """Send a command to a helper process and return its reply."""
    conn.send(command)
    if not conn.poll(timeout):
        raise BenchError(f"no reply to {command[0]!r} within {timeout:.0f}s")
    reply = conn.recv()
    if isinstance(reply, tuple) and reply and reply[0] == "error":
        raise BenchError(f"{command[0]!r} failed: {reply[1]}")
    return reply


@contextlib.contextmanager
def helper(
    target: Callable[..., None], *args: Any
) -> Iterator[tuple[multiprocessing.process.BaseProcess, Any]]:
    """A helper process and its ready message; stopped, then killed if need be, on exit."""
    parent, child = _SPAWN.Pipe()
    process = _SPAWN.Process(target=target, args=(child, *args), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(60):
            raise BenchError(f"{target.__module__} did not start")
        ready = parent.recv()
        yield process, (parent, ready[1])
        with contextlib.suppress(Exception):  # a polite stop only when all went well
            parent.send(("stop",))
            if parent.poll(5):
                parent.recv()
            process.join(5)
    finally:
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()
        parent.close()


def _py_spy(pid: int | None, out: Path, seconds: float) -> subprocess.Popen[bytes] | None:
    """``py-spy record`` of ``pid`` for ``seconds``, collapsed stacks per thread into ``out``."""
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if pid is None or not Path(binary).exists():
        print(f"py-spy not found ({binary}); no profile", file=sys.stderr)
        return None
    command = [binary, "record", "-p", str(pid), "-d", str(max(1, int(seconds))), "-r", "200"]
    command += ["-f", "raw", "-t", "-o", str(out), "--nonblocking"]
    if out.stem.endswith("-gil"):
        command.append("--gil")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _scoring_counters(hop: hops.RunningHop) -> dict[str, float]:
    """Spans the hop decided on, by decision (``fail_open`` = forwarded unscored), from its
    ``/metrics``; empty for hops without one."""
    url = hop.settings.get("metrics")
    if url is None:
        return {}
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return {}
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if family.name == "otelai_selection_items" and sample.name.endswith("_total"):
                if sample.labels.get("signal") == "traces":
                    decision = sample.labels.get("decision", "?")
                    counts[decision] = counts.get(decision, 0.0) + sample.value
            elif sample.name in ("otelai_batch_size_sum", "otelai_batch_size_count"):
                counts[sample.name] = sample.value
            elif (
                sample.name == "otelai_pipeline_latency_seconds_bucket"
                and sample.labels.get("signal") == "traces"
            ):
                counts[f"{PIPELINE_BUCKET}{sample.labels['le']}"] = sample.value
    return counts


PIPELINE_BUCKET = "pipeline_le_"


def _pipeline_latency(delta: dict[str, float]) -> dict[str, Any]:
    """The hop's own receipt-to-hand-off latency over a phase (its warm-up included), from the
    increments of its ``otelai_pipeline_latency_seconds`` histogram (taken out of ``delta``):
    requests, the share of them over each bucket bound up to 25 ms, and the bucket bounds (ms)
    holding the median and the p99 (a histogram gives no finer quantile; None past the last)."""
    buckets = sorted(
        (float(key.removeprefix(PIPELINE_BUCKET)), delta.pop(key))
        for key in [key for key in delta if key.startswith(PIPELINE_BUCKET)]
    )
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return {}

    def bound_of(q: float) -> float | None:
        bound = next(bound for bound, count in buckets if count >= q * total)
        return bound * 1e3 if math.isfinite(bound) else None

    return {
        "requests": total,
        "share_over_ms": {
            f"{bound * 1e3:g}": round(1.0 - count / total, 5)
            for bound, count in buckets
            if 0.001 <= bound <= 0.025
        },
        "p50_bucket_ms": bound_of(0.5),
        "p99_bucket_ms": bound_of(0.99),
    }


def _decided(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counter increments between two scrapes; batches become ``mean_batch_items``."""
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    total, count = delta.pop("otelai_batch_size_sum", 0.0), delta.pop("otelai_batch_size_count", 0.0)
    if count:
        delta["batches"], delta["mean_batch_items"] = count, total / count
    return delta


def _sleep_until(deadline_ns: int) -> None:
    delay = deadline_ns - time.monotonic_ns()
    if delay > 0:
        time.sleep(delay / 1e9)


class Bench:
    """Runs the phases against each hop, with one load generator and one sink."""

    def __init__(self, args: argparse.Namespace, sink_conn: Connection, sink_pid: int | None) -> None:
        self.args = args
        self.sink = sink_conn
        self.sink_pid = sink_pid
        self.loadgen: Connection | None = None
        self.loadgen_pid: int | None = None

    def _wait_for_sink(self, done: Callable[[], bool], quiet_s: float) -> float:
        """Wait until ``done()`` or the sink count stops moving for ``quiet_s``; return seconds waited."""
        start = time.monotonic()
        last, last_change = -1, start
        while time.monotonic() - start < self.args.flush_timeout:
            if done():
                break
            spans = ask(self.sink, ("totals",), 10)["spans"]
            if spans != last:
                last, last_change = spans, time.monotonic()
            elif time.monotonic() - last_change > quiet_s:
                break
            time.sleep(0.05)
        return time.monotonic() - start

    def throughput(self, hop: hops.RunningHop, profile: Path | None = None) -> dict[str, Any]:
        """Saturate the hop; spans/s acknowledged and arrived, CPU of each process.

        With ``profile``, ``py-spy record`` samples the hop over the window into that file
        (extra options after the path's suffix ``-gil``: only samples holding the GIL).
        """
        assert self.loadgen is not None
        args = self.args
        ask(self.sink, ("reset",), 10)
        start_ns = time.monotonic_ns() + int(args.warmup * 1e9)
        end_ns = start_ns + int(args.duration * 1e9)
        self.loadgen.send(("throughput", hop.target, args.concurrency, start_ns, end_ns))
        pids = {"hop": hop.pid, "sink": self.sink_pid, "loadgen": self.loadgen_pid}
        _sleep_until(start_ns)
        cpu0 = {name: process_cpu_s(pid) for name, pid in pids.items()}
        machine0 = machine_cpu_s()
        decided0 = _scoring_counters(hop)
        spy = _py_spy(hop.pid, profile, args.duration) if profile is not None else None
        _sleep_until(end_ns)
        cpu1 = {name: process_cpu_s(pid) for name, pid in pids.items()}
        machine1 = machine_cpu_s()
        decided1 = _scoring_counters(hop)
        if spy is not None:
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        if not self.loadgen.poll(CALL_SLACK_S):
            raise BenchError("the load generator did not finish")
        sent = self.loadgen.recv()
        if isinstance(sent, tuple):
            raise BenchError(f"load generator: {sent[1]}")
        acked = sent["acked_spans_total"]
        flush_s = self._wait_for_sink(lambda: ask(self.sink, ("totals",), 10)["spans"] >= acked, quiet_s=1.0)
        totals = ask(self.sink, ("totals",), 10)
        window = ask(self.sink, ("window", start_ns, end_ns), 30)
        seconds = (end_ns - start_ns) / 1e9
        cores = {name: (cpu1[name] - cpu0[name]) / seconds for name in pids}
        sink_rate = window / seconds
        decided = _decided(decided0, decided1)
        pipeline = _pipeline_latency(decided)
        batches = {key: decided.pop(key) for key in ("batches", "mean_batch_items") if key in decided}
        scored = sum(value for key, value in decided.items() if key != "fail_open")
        return {
            "spans_per_s_ack": sent["ack_spans_per_s"],
            "spans_per_s_sink": sink_rate,
            "acked_spans": acked,
            "arrived_spans": totals["spans"],
            "lost_spans": max(0, acked - totals["spans"]),
            "sink_requests": totals["requests"],
            "sink_bad_requests": totals["bad_requests"],
            "spans_per_sink_request": totals["spans"] / totals["requests"] if totals["requests"] else 0,
            "errors": sent["errors"],
            "flush_wait_s": round(flush_s, 3),
            "cpu_cores": {name: round(value, 3) for name, value in cores.items()},
            "machine_cpu_busy": round((machine1[0] - machine0[0]) / max(1e-9, machine1[1] - machine0[1]), 3),
            "spans_per_hop_cpu_s": sink_rate / cores["hop"] if cores["hop"] > 0 else None,
            # Decided on inside the window (the hop's counters): what the scoring hop scored,
            # and what it forwarded unscored because scoring fell behind the latency target.
            "decisions": {key: round(value) for key, value in sorted(decided.items())},
            "batches": {key: round(value, 1) for key, value in batches.items()},
            "scored_spans_per_s": scored / seconds if decided else None,
            "fail_open_share": decided.get("fail_open", 0.0) / max(1.0, sum(decided.values()))
            if decided
            else None,
            "pipeline": pipeline,
        }

    def latency(self, hop: hops.RunningHop, rate_spans: float) -> dict[str, Any]:
        """Offer a fixed rate; end-to-end latency of every marked request after the warm-up."""
        assert self.loadgen is not None
        args = self.args
        rate_rps = rate_spans / args.spans
        ask(self.sink, ("reset",), 10)
        begin_ns = time.monotonic_ns() + 50_000_000
        measured_ns = begin_ns + int(args.latency_warmup * 1e9)
        end_ns = measured_ns + int(args.latency_duration * 1e9)
        timeout = (end_ns - time.monotonic_ns()) / 1e9 + CALL_SLACK_S
        decided0 = _scoring_counters(hop)
        sent = ask(
            self.loadgen, ("latency", hop.target, rate_rps, begin_ns, end_ns, args.max_inflight), timeout
        )
        wanted: int = sent["acked_requests"]

        def all_arrived() -> bool:
            arrived: int = ask(self.sink, ("marker_count",), 10)
            return arrived >= wanted

        flush_s = self._wait_for_sink(all_arrived, quiet_s=1.0)
        decided1 = _scoring_counters(hop)
        decided = _decided(decided0, decided1)
        pipeline = _pipeline_latency(decided)
        markers = ask(self.sink, ("markers",), 30)
        e2e = [arrival - send for _, send, arrival in markers if send >= measured_ns]
        acks = [latency for send, latency in sent["acks"] if send >= measured_ns]
        return {
            "offered_spans_per_s": rate_spans,
            "offered_requests_per_s": rate_rps,
            "sent_requests": sent["sent_requests"],
            "skipped_requests": sent["skipped_requests"],
            "arrived_requests": len(markers),
            "lost_requests": max(0, sent["acked_requests"] - len(markers)),
            "samples": len(e2e),
            "e2e_ms": summary_ms(e2e),
            "ack_ms": summary_ms(acks),
            "max_schedule_lag_ms": sent["max_schedule_lag_ms"],
            "decisions": {key: round(value, 1) for key, value in sorted(decided.items())},
            # what the hop itself took, receipt to hand-off to its exporter (its own histogram)
            "pipeline": pipeline,
            "errors": sent["errors"],
            "flush_wait_s": round(flush_s, 3),
        }


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/hop.json"))
    parser.add_argument("--hops", default=",".join(hops.HOPS), help="comma-separated; direct always runs")
    parser.add_argument("--duration", type=float, default=8.0, help="throughput window per hop, seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="load before each throughput window")
    parser.add_argument("--latency-duration", type=float, default=None, help="default: --duration")
    parser.add_argument("--latency-warmup", type=float, default=1.0)
    parser.add_argument(
        "--latency-rate", type=float, default=None, help="spans/s offered; default half the slower hop's max"
    )
    parser.add_argument("--latency-fraction", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight (throughput)")
    parser.add_argument("--max-inflight", type=int, default=64, help="cap in the latency phase")
    parser.add_argument("--spans", type=int, default=512, help="spans per request")
    parser.add_argument("--batches", type=int, default=8, help="distinct pre-serialised requests")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--flush-timeout", type=float, default=15.0)
    parser.add_argument(
        "--otelai-config", type=Path, default=None, help="YAML with {GRPC_PORT} {SINK_PORT} {METRICS_PORT}"
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="record otelai hops' stacks (py-spy, all samples, then GIL-holding ones) at saturation",
    )
    args = parser.parse_args(argv)
    if args.latency_duration is None:
        args.latency_duration = args.duration
    names = [name.strip() for name in args.hops.split(",") if name.strip()]
    unknown = [name for name in names if name not in hops.HOPS]
    if unknown:
        parser.error(f"unknown hop(s) {', '.join(unknown)}; known: {', '.join(hops.HOPS)}")
    args.hop_names = ["direct", *[name for name in names if name != "direct"]]
    return args


def _rate_for_latency(args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> float:
    if args.latency_rate:
        return float(args.latency_rate)
    # Acknowledged, not arrived: a scoring hop forwards only the selected part.
    rates = [
        result["throughput"]["spans_per_s_ack"]
        for name, result in results.items()
        if name != "direct" and "throughput" in result
    ]
    if not rates and "throughput" in results.get("direct", {}):
        rates = [results["direct"]["throughput"]["spans_per_s_sink"]]
    return args.latency_fraction * min(rates) if rates else 10_000.0


def _added(results: dict[str, dict[str, Any]]) -> None:
    base = results.get("direct", {}).get("latency", {}).get("e2e_ms")
    for name, result in results.items():
        latency = result.get("latency")
        if name == "direct" or not latency or not base:
            continue
        latency["added_ms"] = {q: latency["e2e_ms"][q] - base[q] for q in ("p50", "p99", "p999")}


def _ratio(results: dict[str, dict[str, Any]], top: str, bottom: str, key: str) -> float | None:
    try:
        value: float = results[top]["throughput"][key] / results[bottom]["throughput"][key]
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return round(value, 3)


def _scored_ratio(results: dict[str, dict[str, Any]], hop: str = "otelai-scoring") -> float | None:
    try:
        scored = results[hop]["throughput"]["scored_spans_per_s"]
        value: float = scored / results["otelai"]["throughput"]["spans_per_s_ack"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return round(value, 3)


def _table(report: dict[str, Any]) -> str:
    lines = [
        f"{'hop':<14}{'ack spans/s':>13}{'sink spans/s':>14}{'hop cores':>10}"
        f"{'e2e p50':>9}{'e2e p99':>9}{'added p50':>11}{'added p99':>11}{'fail-open':>10}  (ms)"
    ]
    for name, result in report["hops"].items():
        if "throughput" not in result:
            reason = str(result.get("skipped") or result.get("error", "?")).strip().splitlines()
            lines.append(f"{name:<14}{' | '.join(reason)}"[:200])
            continue
        tput, lat = result["throughput"], result.get("latency", {})
        e2e, added = lat.get("e2e_ms", {}), lat.get("added_ms", {})
        hop_cores = tput["cpu_cores"].get("hop")

        def fmt(value: float | None, width: int, digits: int = 1) -> str:
            return f"{'-':>{width}}" if value is None or math.isnan(value) else f"{value:>{width}.{digits}f}"

        lines.append(
            f"{name:<14}{tput['spans_per_s_ack']:>13,.0f}{tput['spans_per_s_sink']:>14,.0f}"
            f"{fmt(hop_cores, 10, 2)}{fmt(e2e.get('p50'), 9, 2)}{fmt(e2e.get('p99'), 9, 2)}"
            f"{fmt(added.get('p50'), 11, 2)}{fmt(added.get('p99'), 11, 2)}"
            f"{fmt(tput.get('fail_open_share'), 10, 3)}"
        )
    for key, value in report["ratios"].items():
        lines.append(f"{key}: {value}")
    return "\n".join(lines)


def _run_hop(bench: Bench, name: str, sink_port: int, workdir: Path, config: str | None) -> dict[str, Any]:
    try:
        with hops.start(name, sink_port, workdir, otelai_config_text=config) as hop:
            result: dict[str, Any] = {"command": hop.command, "settings": hop.settings}
            profile = bench.args.py_spy if name.startswith("otelai") else None
            if profile is not None:
                profile.mkdir(parents=True, exist_ok=True)
                bench.throughput(hop, profile / f"{name}-gil.txt")  # an extra, profiled-only phase
            result["throughput"] = bench.throughput(hop, profile / f"{name}.txt" if profile else None)
            if failure := hop.failure():
                result["error"] = failure
            return result
    except hops.HopUnavailable as error:
        print(f"skipping {name}: {error}", file=sys.stderr)
        return {"skipped": str(error)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every phase for every hop; the report as a JSON-ready dict."""
    report: dict[str, Any] = {
        "benchmark": "hop",
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "parameters": {
            key: (str(value) if isinstance(value, Path) else value)
            for key, value in vars(args).items()
            if key not in ("out", "hops", "py_spy")
        },
    }
    config = args.otelai_config.read_text() if args.otelai_config else None
    results: dict[str, dict[str, Any]] = {}
    with (
        tempfile.TemporaryDirectory(prefix="otelai-bench-") as tmp,
        helper(counting_sink.serve) as (sink_process, (sink_conn, sink_port)),
        helper(loadgen.serve, args.seed, args.batches, args.spans) as (lg_process, (lg_conn, sizes)),
    ):
        workdir = Path(tmp)
        report["parameters"]["request_bytes"] = sizes
        bench = Bench(args, sink_conn, sink_process.pid)
        bench.loadgen, bench.loadgen_pid = lg_conn, lg_process.pid
        # Throughput of every hop first: the latency phase's rate depends on the slowest.
        # Hops are started per phase so an idle hop never shares the CPU with a measured one.
        for name in args.hop_names:
            print(f"[{name}] throughput ...", file=sys.stderr, flush=True)
            try:
                results[name] = _run_hop(bench, name, sink_port, workdir, config)
            except Exception as error:
                print(f"[{name}] failed: {error}", file=sys.stderr)
                results[name] = {"error": str(error)}
        rate = _rate_for_latency(args, results)
        for name in args.hop_names:
            if "throughput" not in results[name]:
                continue
            print(f"[{name}] latency at {rate:,.0f} spans/s ...", file=sys.stderr, flush=True)
            try:
                with hops.start(name, sink_port, workdir, otelai_config_text=config) as hop:
                    results[name]["latency"] = bench.latency(hop, rate)
                    if failure := hop.failure():
                        results[name]["latency_error"] = failure
            except Exception as error:
                print(f"[{name}] latency failed: {error}", file=sys.stderr)
                results[name]["latency_error"] = str(error)
    _added(results)
    report["hops"] = results
    report["ratios"] = {
        "otelai_over_rotel_spans_per_s_sink": _ratio(results, "otelai", "rotel", "spans_per_s_sink"),
        "otelai_over_rotel_spans_per_s_ack": _ratio(results, "otelai", "rotel", "spans_per_s_ack"),
        "otelai_over_rotel_spans_per_hop_cpu_s": _ratio(results, "otelai", "rotel", "spans_per_hop_cpu_s"),
        "otelai_over_rotel_nobatch_spans_per_s_sink": _ratio(
            results, "otelai", "rotel-nobatch", "spans_per_s_sink"
        ),
        # A scoring hop forwards only what it selects: compare what it accepted (it acknowledges
        # a request only after scoring it and queueing what is kept).
        "otelai_scoring_over_otelai_spans_per_s_ack": _ratio(
            results, "otelai-scoring", "otelai", "spans_per_s_ack"
        ),
        "otelai_scoring_over_rotel_spans_per_s_ack": _ratio(
            results, "otelai-scoring", "rotel", "spans_per_s_ack"
        ),
        # What the goal means: spans scored, not those forwarded unscored (fail open) because
        # the saturated hop fell behind its latency target.
        "otelai_scoring_scored_over_otelai_spans_per_s_ack": _scored_ratio(results),
        # The same with scoring in the worker process (scoring.worker_process: true).
        "otelai_scoring_worker_scored_over_otelai_spans_per_s_ack": _scored_ratio(
            results, "otelai-scoring-worker"
        ),
    }
    report["notes"] = [
        "spans_per_s_sink (arrived at the sink inside the window) is the truth; ack counts what the hop accepted.",
        "rotel runs with its defaults (batches of up to 8192 spans, 200ms timeout) and OTLP export "
        "compression none like otelai; rotel-nobatch adds --disable-batching (forwards each request).",
        "direct is loadgen -> sink with no hop: its spans/s is the harness's ceiling, its latency the baseline.",
        "Added latency = hop percentile - direct percentile at the same offered rate; both on CLOCK_MONOTONIC.",
        "All processes share this machine's cores: compare hops only within one run.",
    ]
    report["finished_at"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    return report


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds the context managers, which stop every process


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    report = run(args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(_finite(report), indent=2, allow_nan=False) + "\n")
    print(_table(report))
    print(f"wrote {args.out}")
    failed = [
        name for name, result in report["hops"].items() if "error" in result or "latency_error" in result
    ]
    if failed:
        print(f"failed: {', '.join(failed)} (see {args.out})", file=sys.stderr)
    return 1 if failed else 0


def _finite(value: Any) -> Any:
    """The report with NaN (no samples) as null, since JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
