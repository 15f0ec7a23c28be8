"""The load generator: sends pre-serialised trace requests as raw bytes over gRPC.

It runs in its own process (``serve`` is the entry point), builds the workload from the seed
once, and runs the orchestrator's commands:

- ``throughput``: closed loop, ``concurrency`` requests always in flight, from ``start_ns`` to
  ``end_ns`` (absolute ``CLOCK_MONOTONIC`` times, so the orchestrator can sample CPU over the
  same window); counts the spans the hop acknowledged inside the window.
- ``latency``: open loop at a fixed rate of requests; every request carries a fresh marker
  (sequence number and send time) for the sink to time it end to end. A request that would
  exceed ``max_inflight`` is skipped and counted, not delayed, so a slow hop cannot slow the
  offered rate (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from multiprocessing.connection import Connection
from typing import Any

import grpc
from workload import build_batches, fresh_trace_ids, marker_offsets, stamp, trace_id_offsets

METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
CALL_TIMEOUT_S = 10.0
# Back off briefly after a refusal so a hop that sheds load is not hammered in a hot loop.
REFUSED_BACKOFF_S = 0.005


class LoadGen:
    """Sends one workload to one target at a time."""

    def __init__(self, batches: list[bytes], spans_per_batch: int) -> None:
        self.batches = batches
        self.offsets = [marker_offsets(batch) for batch in batches]
        self.trace_offsets = [trace_id_offsets(batch) for batch in batches]
        self.spans_per_batch = spans_per_batch
        self._key = 0

    def fresh(self, index: int, payload: bytes | None = None) -> bytes:
        """Batch ``index`` (or ``payload`` made from it) with trace ids never sent before."""
        self._key += 1
        return fresh_trace_ids(payload or self.batches[index], self.trace_offsets[index], self._key)

    @contextlib.asynccontextmanager
    async def _call(self, target: str) -> Any:
        channel = grpc.aio.insecure_channel(
            target,
            options=[
                ("grpc.max_send_message_length", 256 * 1024 * 1024),
                ("grpc.use_local_subchannel_pool", 1),
            ],
        )
        try:
            await asyncio.wait_for(channel.channel_ready(), timeout=10)
            yield channel.unary_unary(METHOD)
        finally:
            await channel.close()

    async def throughput(self, target: str, concurrency: int, start_ns: int, end_ns: int) -> dict[str, Any]:
        """Saturate ``target`` with ``concurrency`` callers; count acknowledgements in the window."""
        acked_window, acked_total, sent = 0, 0, 0
        errors: Counter[str] = Counter()
        spans, batches = self.spans_per_batch, self.batches
        async with self._call(target) as export:

            async def caller(index: int) -> None:
                nonlocal acked_window, acked_total, sent
                while time.monotonic_ns() < end_ns:
                    sent += 1
                    try:
                        await export(self.fresh(index % len(batches)), timeout=CALL_TIMEOUT_S)
                    except grpc.aio.AioRpcError as error:
                        errors[error.code().name] += 1
                        await asyncio.sleep(REFUSED_BACKOFF_S)
                        continue
                    finally:
                        index += concurrency
                    acked_total += spans
                    if start_ns <= time.monotonic_ns() <= end_ns:
                        acked_window += spans

            await asyncio.gather(*(caller(i) for i in range(concurrency)))
        seconds = (end_ns - start_ns) / 1e9
        return {
            "sent_requests": sent,
            "acked_spans_total": acked_total,
            "acked_spans_window": acked_window,
            "ack_spans_per_s": acked_window / seconds,
            "errors": dict(errors),
        }

    async def latency(
        self, target: str, rate_rps: float, start_ns: int, end_ns: int, max_inflight: int
    ) -> dict[str, Any]:
        """Offer ``rate_rps`` requests a second from ``start_ns`` to ``end_ns``, each one marked."""
        interval_ns = int(1e9 / rate_rps)
        errors: Counter[str] = Counter()
        acks: list[tuple[int, int]] = []  # (send ns, send-to-ack ns)
        inflight: set[asyncio.Task[None]] = set()
        sent = skipped = 0
        max_lag_ns = 0
        async with self._call(target) as export:

            async def one(payload: bytes, send_ns: int) -> None:
                try:
                    await export(payload, timeout=CALL_TIMEOUT_S)
                except grpc.aio.AioRpcError as error:
                    errors[error.code().name] += 1
                    return
                acks.append((send_ns, time.monotonic_ns() - send_ns))

            due = start_ns
            while due < end_ns:
                delay = due - time.monotonic_ns()
                if delay > 0:
                    await asyncio.sleep(delay / 1e9)
                now = time.monotonic_ns()
                max_lag_ns = max(max_lag_ns, now - due)
                due += interval_ns
                if len(inflight) >= max_inflight:
                    skipped += 1
                    continue
                sent += 1
                index = sent % len(self.batches)
                payload = self.fresh(index, stamp(self.batches[index], self.offsets[index], sent, now))
                task = asyncio.create_task(one(payload, now))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            if inflight:
                await asyncio.wait(inflight, timeout=CALL_TIMEOUT_S + 1)
        return {
            "sent_requests": sent,
            "last_seq": sent,
            "skipped_requests": skipped,
            "acked_requests": len(acks),
            "acks": acks,
            "max_schedule_lag_ms": max_lag_ns / 1e6,
            "errors": dict(errors),
        }


async def _serve(conn: Connection, seed: int, batches: int, spans_per_batch: int) -> None:
    gen = LoadGen(build_batches(seed, batches, spans_per_batch), spans_per_batch)
    conn.send(("ready", [len(batch) for batch in gen.batches]))
    loop = asyncio.get_running_loop()
    while True:
        try:
            command = await loop.run_in_executor(None, conn.recv)
        except (EOFError, OSError):
            return  # the orchestrator is gone
        kind, args = command[0], command[1:]
        if kind == "stop":
            conn.send("ok")
            return
        try:
            if kind == "throughput":
                conn.send(await gen.throughput(*args))
            elif kind == "latency":
                conn.send(await gen.latency(*args))
            else:
                conn.send(("error", f"unknown loadgen command {kind!r}"))
        except Exception as error:
            conn.send(("error", repr(error)))


def serve(conn: Connection, seed: int, batches: int, spans_per_batch: int) -> None:
    """Process entry point: build the workload, then run commands until told to stop."""
    asyncio.run(_serve(conn, seed, batches, spans_per_batch))
