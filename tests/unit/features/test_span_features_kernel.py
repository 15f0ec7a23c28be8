"""The compiled span feature matrix against the numpy one: the same bits on any batch and baseline."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from typing import Any

import numpy as np
import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from otelai.features import spans
from otelai.features.interner import Interner
from otelai.features.span_batch import SpanBatch
from otelai.features.spans import SPAN_SCHEMA, SpanBaselines, span_features

from .span_requests import make_request, make_span

pytest.importorskip("numba")

from otelai.features import spans_numba  # after the skip: importing it imports numba

F32 = np.ndarray[Any, np.dtype[np.float32]]


@contextmanager
def _path(kernels: Any) -> Iterator[None]:
    """``span_features`` on the compiled kernels (``spans_numba``) or on numpy (None),
    whatever ``OTELAI_SPAN_FEATURES_KERNEL`` says."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(spans, "span_feature_kernels", lambda: kernels)
        yield


def _both(batch: SpanBatch, baselines: SpanBaselines) -> tuple[F32, F32]:
    """Compiled and numpy matrices of ``batch`` against the same (unchanged) baselines."""
    # Negative durations, zero stds and a zero prior weight make NaN and inf on purpose.
    with np.errstate(all="ignore"):
        with _path(spans_numba):
            compiled, _ = span_features(batch, baselines, update=False)
        with _path(None):
            reference, _ = span_features(batch, baselines, update=False)
    return compiled, reference


def _assert_same_bits(got: F32, want: F32) -> None:
    assert got.dtype == want.dtype == np.float32
    assert got.shape == want.shape == (want.shape[0], SPAN_SCHEMA.width)
    assert np.array_equal(got, want, equal_nan=True)
    same = got.view(np.uint32) == want.view(np.uint32)  # NaN signs and payloads too
    if not same.all():
        row, column = np.argwhere(~same)[0]
        raise AssertionError(
            f"{(~same).sum()} entries differ, first {SPAN_SCHEMA.names[column]} of row {row}: "
            f"{got[row, column]!r} != {want[row, column]!r}"
        )


def _random_batch(rng: np.random.Generator, n: int, operations: int, *, odd: bool) -> SpanBatch:
    """A batch of columns drawn at random, frozen like the decoders' (``odd``: also values no
    decoder gives, such as negative durations and counts)."""

    def ints(dtype: Any, low: int, high: int) -> Any:
        return rng.integers(low, high, n, endpoint=True).astype(dtype)

    def bools(p: float) -> Any:
        return rng.random(n) < p

    # Durations: zero, nanoseconds to hours, and a few near the int64 limit.
    duration = np.exp(rng.uniform(0.0, 30.0, n)).astype(np.int64)
    duration[rng.random(n) < 0.05] = 0
    duration[rng.random(n) < 0.02] = rng.integers(2**60, 2**63 - 1, endpoint=True)
    # Operations: stored ones, -1 (interner overflow), and ids no baseline has seen.
    operation = ints(np.int32, -1, operations + 5)
    operation[rng.random(n) < 0.05] = -1
    is_root = bools(0.2)
    depth = np.where(is_root, 0, ints(np.int16, -1, 40)).astype(np.int16)
    columns: dict[str, Any] = {
        "has_parent": ~is_root,
        "start_unix_nano": ints(np.int64, 0, 2**62),
        "duration_ns": duration,
        "status_code": ints(np.int8, 0, 2),
        "kind": ints(np.int8, 0, 5),
        "n_events": ints(np.int16, 0, 3),
        "n_links": ints(np.int16, 0, 2),
        "n_attributes": ints(np.int16, 0, 40),
        "has_exception_event": bools(0.1),
        "http_status_class": ints(np.int8, 0, 5),
        "rpc_grpc_status": ints(np.int16, -1, 16),
        "has_db": bools(0.2),
        "is_root": is_root,
        "parent_index": ints(np.int32, -1, max(n - 1, 0)),
        "depth": depth,
        "child_count": ints(np.int32, 0, 8),
        "service_id": ints(np.int32, 0, 4),
        "operation_id": operation,
    }
    if odd:
        columns["duration_ns"][rng.random(n) < 0.1] = -rng.integers(1, 10**7, endpoint=True)
        columns["duration_ns"][rng.random(n) < 0.05] = -1000  # log1p(-1) = -inf
        for name in ("n_events", "n_links", "n_attributes"):
            columns[name][rng.random(n) < 0.05] = rng.choice([-1, -2, -300, 32767])
        columns["child_count"][rng.random(n) < 0.05] = rng.choice([-1, -7, 2**15 - 3])
        columns["depth"][rng.random(n) < 0.05] = rng.choice([-2, 32767])
        columns["kind"][rng.random(n) < 0.05] = rng.choice([-1, 6, 7])
        columns["status_code"][rng.random(n) < 0.05] = rng.choice([3, -2])
    # Ids and locators: no feature reads them.
    columns["trace_id"] = np.zeros((n, 16), dtype=np.uint8)
    columns["span_id"] = np.zeros((n, 8), dtype=np.uint8)
    for name in ("request", "resource", "scope", "index"):
        columns[name] = np.zeros(n, dtype=np.int32)
    columns["span_start"], columns["span_end"] = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    for value in columns.values():
        value.setflags(write=False)
    return SpanBatch(**columns)


def _with(batch: SpanBatch, **columns: Any) -> SpanBatch:
    values = {f.name: getattr(batch, f.name) for f in fields(SpanBatch)}
    for value in columns.values():
        value.setflags(write=False)
    values.update(columns)
    return SpanBatch(**values)


SETTINGS: list[dict[str, Any]] = [
    {},
    {"min_count": 0},
    {"min_count": 3, "half_life": 7.0},
    {"min_count": 50, "max_keys": 16},
    {"min_std": 0.0, "clip": None},
    {"error_prior_weight": 0.0},
    {"half_life": None, "half_life_seconds": 2.0, "min_count": 5, "error_prior_weight": 0.5},
]


@pytest.mark.parametrize("odd", [False, True], ids=["decoder-like", "odd"])
@pytest.mark.parametrize(
    "settings", SETTINGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "default"
)
def test_compiled_and_numpy_matrices_agree_bit_for_bit(settings: dict[str, Any], odd: bool) -> None:
    """Baselines empty, warming up (keys and the global one below ``min_count``), trusted, with
    keys evicted (``max_keys`` 16) and returning; batches of 0 to 700 spans."""
    rng = np.random.default_rng(2 * SETTINGS.index(settings) + odd)
    baselines = SpanBaselines.create(**settings)
    operations = int(rng.integers(1, 60))
    for step in range(14):
        n = int(rng.choice([0, 1, 7, 64, 700])) if step else 33
        batch = _random_batch(rng, n, operations, odd=odd)
        compiled, reference = _both(batch, baselines)
        _assert_same_bits(compiled, reference)
        with np.errstate(all="ignore"):
            spans.update_span_baselines(batch, baselines, now=0.5 * step)


def test_every_baseline_state_is_visited() -> None:
    """One stream through every state of the scoring: the global baseline below and above
    ``min_count``, operations untrusted and trusted, and error spans in every batch."""
    rng = np.random.default_rng(3)
    baselines = SpanBaselines.create(min_count=20)
    seen_global: set[bool] = set()
    seen_keys: set[bool] = set()
    for step in range(8):
        batch = _random_batch(rng, 64, 10, odd=False)
        g_count = baselines.latency.snapshot().global_stats[3]
        seen_global.add(bool(g_count >= 20))
        count = baselines.latency.lookup(batch.operation_id)[2]
        seen_keys.update(bool(c >= 20) for c in count)
        compiled, reference = _both(batch, baselines)
        _assert_same_bits(compiled, reference)
        assert (batch.status_code == 2).any()
        spans.update_span_baselines(batch, baselines, now=float(step))
    assert seen_global == {False, True} and seen_keys == {False, True}


def test_decoded_batches_agree() -> None:
    """Real decoded batches (both readers' column types) on warm baselines, with an error on
    an operation that never fails, a slow span and an operation never seen."""
    interner = Interner()
    baselines = SpanBaselines.create(half_life=200, min_count=20)
    rng = np.random.default_rng(11)
    for trace in range(1, 6):
        batch_spans = []
        for i in range(40):
            duration = int(rng.lognormal(np.log(1e6), 0.3))
            status = Status.STATUS_CODE_ERROR if i % 3 == 0 else Status.STATUS_CODE_UNSET
            batch_spans.append(make_span(trace, 2 * i + 1, name="GET /fast", duration=duration))
            batch_spans.append(
                make_span(
                    trace, 2 * i + 2, 2 * i + 1, name="GET /flaky", duration=duration, status=status,
                    kind=Span.SPAN_KIND_CLIENT, events=("exception",) * (i % 2), links=i % 3,
                    attributes={"http.response.status_code": 500 + i % 2, "db.system.name": "pg"},
                )
            )  # fmt: skip
        batch_spans.append(make_span(trace, 999, 12345, name="GET /new", status=Status.STATUS_CODE_ERROR))
        batch_spans.append(make_span(trace, 998, name="GET /fast", duration=50_000_000_000))
        for decoder in ("numpy", "numba"):
            batch = SpanBatch.from_requests([make_request({"shop": batch_spans})], interner, decoder=decoder)
            _assert_same_bits(*_both(batch, baselines))
        span_features(batch, baselines, now=float(trace))


def test_a_child_count_beyond_the_table() -> None:
    """Counts past the kernel's table grow it (bit-identical still); absurd ones go to numpy."""
    rng = np.random.default_rng(5)
    baselines = SpanBaselines.create(min_count=0)
    batch = _random_batch(rng, 50, 5, odd=False)
    spans.update_span_baselines(batch, baselines, now=0.0)
    for count in (2**15, 2**15 + 1, 70_000, 2**30):
        children = batch.child_count.copy()
        children[[3, 17]] = count
        grown = _with(batch, child_count=children)
        compiled, reference = _both(grown, baselines)
        _assert_same_bits(compiled, reference)
        assert compiled[3, SPAN_SCHEMA.names.index("log_children")] == np.float32(np.log1p(count))


def test_error_surprise_reaches_the_cap_and_nan() -> None:
    """Error rates at the floor (the cap) and undefined (a zero prior weight on an unseen key)."""
    rng = np.random.default_rng(6)
    batch = _random_batch(rng, 200, 3, odd=False)
    baselines = SpanBaselines.create(min_count=1, error_prior_weight=0.0)
    never = _with(batch, status_code=np.zeros(200, dtype=np.int8))
    spans.update_span_baselines(never, baselines, now=0.0)  # every stored operation never fails
    errors = _with(batch, status_code=np.full(200, 2, dtype=np.int8))
    compiled, reference = _both(errors, baselines)
    _assert_same_bits(compiled, reference)
    surprise = compiled[:, SPAN_SCHEMA.names.index("error_surprise")]
    stored = batch.operation_id >= 0  # -1 is never stored: weight 0 and prior 0 give 0/0
    assert (surprise[stored] == np.float32(spans.ERROR_SURPRISE_CAP)).all() and stored.any()
    assert np.isnan(surprise[~stored]).all() and (~stored).any()


def test_the_environment_forces_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(spans.KERNEL_ENV, "numpy")
    assert spans.span_feature_kernels.__wrapped__() is None
    monkeypatch.setenv(spans.KERNEL_ENV, "auto")
    assert spans.span_feature_kernels.__wrapped__() is not None
