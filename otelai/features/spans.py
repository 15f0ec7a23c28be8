"""Span features: one float32 row a span, the same meaning on any user's services.

Raw values (a duration, a count) mean different things on different services; each feature
here is either a fact with a fixed meaning (an error status, an HTTP 5xx, an exception event,
the span kind) or a value normalised against a streaming baseline of the span's own
operation, (service.name, span name): the latency z-score and the error-rate surprise. So a
model trained on one deployment reads another's spans the same way. Attribute names follow
the OpenTelemetry semantic conventions (see :mod:`otelai.features.span_batch`).

Features (``SPAN_SCHEMA.names``, in column order):

``log_duration_us``
    ``log1p(duration in microseconds)``: the one raw scale, for models that want it.
``latency_z``
    z-score of ``log_duration_us`` against the operation's EW baseline before this batch
    (the global baseline while the operation has fewer than ``min_count`` spans), clipped to
    +-:data:`Z_CLIP`.
``is_error``
    Status code ERROR.
``error_surprise``
    For an error: ``-ln(p)``, ``p`` the operation's EW error rate (shrunk toward the global
    rate, floored at :data:`MIN_ERROR_RATE`); 0 for a span that is not an error. An error on
    an operation that never errors scores about 9, one on an operation failing half the time
    about 0.7.
``kind_server``, ``kind_client``, ``kind_messaging``
    Span kind SERVER, CLIENT, PRODUCER or CONSUMER (INTERNAL and UNSPECIFIED are all zeros).
``log_events``, ``log_links``, ``log_attributes``
    ``log1p`` of the span's event, link and attribute counts.
``has_exception``
    An event named ``exception``.
``http_4xx``, ``http_5xx``
    HTTP response status class 4 or 5 (``http.response.status_code``/``http.status_code``).
``grpc_error``
    ``rpc.grpc.status_code`` present and not OK (0).
``has_db``
    ``db.system.name`` or ``db.system`` present.
``is_root``
    No parent span id.
``log_depth``, ``depth_unknown``
    ``log1p`` of the hops to the trace root within the batch, and whether that is unknown
    (an ancestor is not in the batch; ``log_depth`` is then 0).
``log_children``
    ``log1p`` of the children present in the batch.
``new_operation``
    The operation had no baseline before this batch: never seen, or evicted.

Where numba is installed the matrix is computed in one compiled pass
(:mod:`otelai.features.spans_numba`, a fifth to a quarter of the numpy path's cost), bit for
bit the numpy path's; ``OTELAI_SPAN_FEATURES_KERNEL=numpy`` keeps the numpy path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from otelai.features.baseline import BaselineState, EwBaseline
from otelai.features.schema import FeatureSchema
from otelai.features.span_batch import SpanBatch
from otelai.kernels import load_kernels

__all__ = ["SPAN_SCHEMA", "FeatureSchema", "SpanBaselines", "SpanBatch", "span_features"]

F32 = NDArray[np.float32]

Z_CLIP = 20.0
MIN_ERROR_RATE = 1e-4  # -ln(1e-4) = 9.2: the most surprise one error can carry
ERROR_SURPRISE_CAP = -float(np.log(MIN_ERROR_RATE))

# "numpy" keeps the numpy path even where numba is installed (tests compare the two).
KERNEL_ENV = "OTELAI_SPAN_FEATURES_KERNEL"
MAX_TABLE_SIZE = 1 << 22  # the compiled path's log1p table of counts: 16 MiB at most


SPAN_SCHEMA = FeatureSchema(
    names=(
        "log_duration_us",
        "latency_z",
        "is_error",
        "error_surprise",
        "kind_server",
        "kind_client",
        "kind_messaging",
        "log_events",
        "log_links",
        "log_attributes",
        "has_exception",
        "http_4xx",
        "http_5xx",
        "grpc_error",
        "has_db",
        "is_root",
        "log_depth",
        "depth_unknown",
        "log_children",
        "new_operation",
    ),
    version="spans-1",
)
_ERROR_SURPRISE = SPAN_SCHEMA.names.index("error_surprise")


@dataclass
class SpanBaselines:
    """The per-operation baselines the span features are normalised against.

    ``latency`` tracks ``log_duration_us`` (robust, clipped updates); ``errors`` the 0/1
    error flag (unclipped: its mean is the EW error rate). ``error_prior_weight`` is how many
    pseudo-spans of the global error rate an operation's rate is shrunk with.
    """

    latency: EwBaseline
    errors: EwBaseline
    error_prior_weight: float = 2.0

    @classmethod
    def create(
        cls,
        *,
        half_life: float | None = 500.0,
        half_life_seconds: float | None = None,
        min_count: int = 20,
        max_keys: int = 65_536,
        clip: float | None = 3.0,
        min_std: float = 0.05,
        error_prior_weight: float = 2.0,
    ) -> SpanBaselines:
        """Both baselines with the same decay, warm-up and key cap (see :class:`EwBaseline`)."""

        def baseline(clip_: float | None) -> EwBaseline:
            return EwBaseline(
                half_life=half_life,
                half_life_seconds=half_life_seconds,
                min_count=min_count,
                max_keys=max_keys,
                clip=clip_,
                min_std=min_std,
            )

        return cls(latency=baseline(clip), errors=baseline(None), error_prior_weight=error_prior_weight)

    def snapshot(self) -> dict[str, BaselineState]:
        return {"latency": self.latency.snapshot(), "errors": self.errors.snapshot()}

    def restore(self, states: dict[str, BaselineState]) -> None:
        self.latency.restore(states["latency"])
        self.errors.restore(states["errors"])


def span_features(
    batch: SpanBatch, baselines: SpanBaselines, *, update: bool = True, now: float | None = None
) -> tuple[F32, FeatureSchema]:
    """The ``(len(batch), SPAN_SCHEMA.width)`` float32 feature matrix of ``batch``.

    Scores against the baselines as they were before this batch, then (with ``update``)
    merges the batch into them, so an anomaly never normalises itself. ``now`` (seconds,
    default ``time.monotonic()``) matters only with a time half-life. Computed in one compiled
    pass (:mod:`otelai.features.spans_numba`) where numba is installed, else with numpy; both
    give the same bits.
    """
    kernel = span_feature_kernels()
    if kernel is None:
        features = _features_numpy(batch, baselines)
    else:
        features = _features_compiled(kernel, batch, baselines)
    if update:
        update_span_baselines(batch, baselines, now=now)
    return features, SPAN_SCHEMA


@cache
def span_feature_kernels() -> Any:
    """The compiled span feature module, warmed up, or None: numba missing, or
    ``OTELAI_SPAN_FEATURES_KERNEL`` set to ``numpy``. Call it at start-up, so that the first
    batch does not pay for the compilation."""
    return load_kernels("otelai.features.spans_numba", KERNEL_ENV, "span features run on numpy")


def _log_duration(batch: SpanBatch) -> NDArray[np.float64]:
    log_duration: NDArray[np.float64] = np.log1p(batch.duration_ns.astype(np.float64) / 1e3)
    return log_duration


def _features_compiled(kernel: Any, batch: SpanBatch, baselines: SpanBaselines) -> F32:
    """:func:`_features_numpy` in one pass of the compiled kernel, and numpy's ``log`` for the
    error rows (see :mod:`otelai.features.spans_numba` for why numpy keeps the logarithms)."""
    n = len(batch)
    # The baselines' current state arrays, read in place: EwBaseline.lookup, zscore and
    # shrunk_mean read the same ones (a snapshot would copy every key's row).
    latency, errors = baselines.latency, baselines.errors
    latency_state, error_state = latency.state, errors.state
    features = np.empty((n, SPAN_SCHEMA.width), dtype=np.float32)
    error_rows = np.empty(n, dtype=np.int64)
    error_rates = np.empty(n, dtype=np.float64)
    log_duration = _log_duration(batch)
    table_size = kernel.TABLE_SIZE
    while True:
        found = kernel.span_features(
            features, log_duration, batch.operation_id, batch.status_code, batch.kind,
            batch.n_events, batch.n_links, batch.n_attributes, batch.has_exception_event,
            batch.http_status_class, batch.rpc_grpc_status, batch.has_db, batch.is_root,
            batch.depth, batch.child_count,
            latency_state.keys, latency_state.weight, latency_state.mean, latency_state.m2,
            latency_state.count, latency_state.global_stats,
            float(latency.min_count), float(latency.min_std), Z_CLIP,
            error_state.keys, error_state.weight, error_state.mean, error_state.global_stats,
            float(baselines.error_prior_weight), MIN_ERROR_RATE,
            _log1p_table(kernel, table_size), error_rows, error_rates,
        )  # fmt: skip
        if found >= 0:
            break
        # A child count beyond the table (a batch of over 32k spans): grow it to a power of
        # two; a count no real batch reaches (a hand-built one) is left to numpy instead.
        table_size = 1 << (-found - 1).bit_length()
        if table_size > MAX_TABLE_SIZE:
            return _features_numpy(batch, baselines)
    if found:  # the same numpy calls as the numpy path, on the error rows alone
        surprise = np.minimum(-np.log(error_rates[:found]), ERROR_SURPRISE_CAP)
        features[error_rows[:found], _ERROR_SURPRISE] = surprise
    return features


@cache
def _log1p_table(kernel: Any, size: int) -> F32:
    """The kernel's read-only ``log1p`` table of counts, made once a size."""
    table: F32 = kernel.log1p_table(size)
    return table


def _features_numpy(batch: SpanBatch, baselines: SpanBaselines) -> F32:
    """The feature matrix with numpy (the reference the compiled kernel matches bit for bit)."""
    n = len(batch)
    operation = batch.operation_id.astype(np.int64)
    log_duration = _log_duration(batch)
    is_error = batch.status_code == 2
    # One lookup of the operations a baseline, shared by the features read from it.
    latency = baselines.latency.lookup(operation)
    seen = latency[2]
    latency_z = np.clip(baselines.latency.zscore(operation, log_duration, looked_up=latency), -Z_CLIP, Z_CLIP)
    rate = baselines.errors.shrunk_mean(operation, baselines.error_prior_weight)
    surprise = np.where(is_error, -np.log(np.maximum(rate, MIN_ERROR_RATE)), 0.0)
    kind = batch.kind
    depth = batch.depth.astype(np.float64)
    columns = (
        log_duration,
        latency_z,
        is_error,
        np.minimum(surprise, ERROR_SURPRISE_CAP),
        kind == 2,
        kind == 3,
        (kind == 4) | (kind == 5),
        np.log1p(batch.n_events.astype(np.float64)),
        np.log1p(batch.n_links.astype(np.float64)),
        np.log1p(batch.n_attributes.astype(np.float64)),
        batch.has_exception_event,
        batch.http_status_class == 4,
        batch.http_status_class == 5,
        batch.rpc_grpc_status > 0,
        batch.has_db,
        batch.is_root,
        np.log1p(np.maximum(depth, 0.0)),
        depth < 0,
        np.log1p(batch.child_count.astype(np.float64)),
        (seen == 0) & (operation >= 0),
    )
    features = np.empty((n, SPAN_SCHEMA.width), dtype=np.float32)
    for column, values in enumerate(columns):
        features[:, column] = values
    return features


def update_span_baselines(batch: SpanBatch, baselines: SpanBaselines, *, now: float | None = None) -> None:
    """Merge ``batch`` into the per-operation baselines (what ``span_features(update=True)``
    does after computing the features; separate so that a caller can learn after it forwarded)."""
    operation = batch.operation_id.astype(np.int64)
    log_duration = _log_duration(batch)
    stamp = time.monotonic() if now is None else now
    baselines.latency.update(operation, log_duration, stamp)
    baselines.errors.update(operation, (batch.status_code == 2).astype(np.float64), stamp)
