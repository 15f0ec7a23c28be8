"""Writing the kept spans of a batch: each span's own bytes, then its tags and trace state.

The selection of :mod:`otelai.scoring.traces` decides which spans are kept and why (the codes
below); this writes them back under their resource and scope
(:class:`~otelai.decision.assemble.Assembler`), with the tags of DESIGN.md appended to each
span's bytes and its ``tracestate`` carrying the sampling threshold (``ot=th:...`` for the
consistent sample, ``th:0`` for what is kept whatever its randomness). Normal spans kept as a
sample or as context share one suffix per selection reason; anomalous spans get every tag. The
compiled path (:mod:`otelai.decision.assemble_numba`) writes the common case, normal spans
without a trace state of their own, in numba; the Python path gives the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cache, lru_cache
from itertools import accumulate
from typing import Any

import numpy as np
from numpy.typing import NDArray

from otelai.decision import sampling
from otelai.decision.assemble import Assembler, RangedRequest, skeleton
from otelai.decision.severity import Severity
from otelai.decision.tagging import SPAN_ATTRIBUTES, tag_suffix, trace_state_field
from otelai.features.otlp_layout import SpanState
from otelai.features.span_batch import SpanBatch

# Selection codes, in precedence order; the tag values are public (DESIGN.md).
DROPPED, SAMPLED, CRITICAL_CONTEXT, ANOMALY = 0, 1, 2, 3
REASONS = ("dropped", "sampled", "critical_context", "anomaly")
_NORMAL = int(Severity.NORMAL)
_SEVERITY_TAGS = {int(level): level.tag for level in Severity}


@cache
def plain_suffix(reason: int) -> bytes:
    """The tags of a normal span kept for ``reason``: only why it was kept (severity normal is
    implied), a quarter of the tag bytes, on most of what is forwarded, which keeps the
    forwarded bytes near the sample rate."""
    return tag_suffix(
        SPAN_ATTRIBUTES,
        score=None,
        severity=None,
        reason=None,
        model_version=None,
        selection_reason=REASONS[reason],
    )


@lru_cache(maxsize=4096)
def state_field(trace_state: bytes, threshold: int) -> bytes:
    """The trace state field appended to a span with ``trace_state`` kept at ``threshold``."""
    return trace_state_field(sampling.with_threshold(trace_state.decode("utf-8", "replace"), threshold))


def _threshold(reason: int, sampling_threshold: int) -> int:
    """The threshold a span kept for ``reason`` carries: a sampled one the sampling threshold,
    the others 0 (kept whatever their randomness)."""
    return sampling_threshold if reason == SAMPLED else 0


class Tags:
    """What a batch appends to its kept spans: tags, then the trace state with its threshold."""

    def __init__(self, threshold: int, model_version: str, scored: Any, reason: Callable[[int], str]) -> None:
        self.threshold = threshold
        self._model_version = model_version
        self._scored = scored
        self._reason = reason

    def extra(self, row: int, reason: int, level: int, trace_state: bytes) -> bytes:
        """The bytes after span ``row``'s own: its tags, then its trace state field.

        ``row`` (the batch row, for the score and the reason) is read for anomalous spans only.
        """
        state = state_field(trace_state, _threshold(reason, self.threshold))
        if level == _NORMAL:
            return plain_suffix(reason) + state
        suffix = tag_suffix(
            SPAN_ATTRIBUTES,
            score=round(float(self._scored.score[row]), 4),
            severity=_SEVERITY_TAGS[level],
            reason=self._reason(row),
            model_version=self._model_version,
            selection_reason=REASONS[reason],
        )
        return suffix + state


def _suffix_table(entries: Sequence[bytes]) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
    """``entries`` as write_items reads them: their bytes, and where each starts (read-only)."""
    offsets = np.array([0, *accumulate(map(len, entries))], dtype=np.int64)
    offsets.setflags(write=False)
    return np.frombuffer(b"".join(entries), dtype=np.uint8), offsets


@lru_cache(maxsize=8)
def _normal_suffixes(threshold: int) -> tuple[tuple[bytes, ...], NDArray[np.uint8], NDArray[np.int64]]:
    """The suffixes of normal spans without a trace state (most of what is kept), entry
    ``reason - 1``, and their table: the same for every batch at a sampling threshold, as
    :meth:`Tags.extra` writes them."""
    entries = tuple(
        plain_suffix(reason) + state_field(b"", _threshold(reason, threshold))
        for reason in (SAMPLED, CRITICAL_CONTEXT, ANOMALY)
    )
    return (entries, *_suffix_table(entries))


def add_kept(
    tags: Tags,
    assembler: Assembler,
    requests: list[Any],
    datas: list[bytes],
    batch: SpanBatch,
    code: Any,
    severity: Any,
    kept: Any,
) -> None:
    """The kept spans, one at a time (the Python path: numba missing or switched off).

    Per kept span: its bytes, a suffix and its trace state. Requests are read as
    skeletons, only those with kept spans: the resource and scope bytes come from there.
    """
    columns = zip(
        kept.tolist(),
        batch.request.take(kept).tolist(),
        batch.resource.take(kept).tolist(),
        batch.scope.take(kept).tolist(),
        batch.span_start.take(kept).tolist(),
        batch.span_end.take(kept).tolist(),
        code.take(kept).tolist(),
        severity.take(kept).tolist(),
        strict=True,
    )
    for row, r, resource, scope, start, end, reason, level in columns:
        if requests[r] is None:
            requests[r] = skeleton(datas[r])
        span = datas[r][start:end]
        # The span's own trace state (a skeleton parse that reads field 3 alone).
        trace_state = SpanState.FromString(span).trace_state
        assembler.add((r, resource, scope), span + tags.extra(row, reason, level, trace_state))


def add_compiled(
    kernels: Any,
    tags: Tags,
    assembler: Assembler,
    requests: list[Any],
    datas: list[bytes],
    batch: SpanBatch,
    code: Any,
    severity: Any,
    kept: Any,
) -> bool:
    """The kept spans through the compiled kernels (:mod:`otelai.decision.assemble_numba`),
    with the same bytes as :func:`add_kept`; False (nothing added) when the kept rows are
    not in request order, which the per-request calls need (never seen: SpanBatch reads the
    requests in order).

    Per request: its containers' byte ranges (a skeleton where the kernel defers to upb),
    then every kept span written as its scope's item with its suffix (tags and trace state)
    from a table: normal spans without a trace state (most of what is kept) share one entry
    per selection reason; the others (the kernel lists them) take an entry built in Python as
    :func:`add_kept` builds it. A scope's kept spans are contiguous rows, added as one
    encoded region.
    """
    in_order, runs = kernels.request_runs(kept, batch.request)
    if not in_order:
        return False
    normal, normal_buf, normal_offsets = _normal_suffixes(tags.threshold)
    span_start, span_end = batch.span_start, batch.span_end
    for r, first, stop in runs.tolist():
        data = datas[r]
        array = np.frombuffer(data, dtype=np.uint8)
        found = kernels.containers(array)
        requests[r] = RangedRequest(data, *found) if found is not None else skeleton(data)
        rows = kept[first:stop]
        extra_id, odd, states, listed = kernels.trace_states(
            array, rows, span_start, span_end, code, severity
        )
        extra_buf, extra_offsets = normal_buf, normal_offsets
        if listed:
            extras = list(normal)
            shared: dict[tuple[bytes, int], int] = {}  # normal spans with a trace state
            for i, (state_at, state_to) in zip(odd[:listed].tolist(), states[:listed].tolist(), strict=True):
                row = int(rows[i])
                if state_at < 0:  # a span the kernel leaves to upb
                    trace_state = SpanState.FromString(
                        data[int(span_start[row]) : int(span_end[row])]
                    ).trace_state
                else:
                    trace_state = data[state_at:state_to]
                reason, level = int(code[row]), int(severity[row])
                if level == _NORMAL:
                    entry = shared.get((trace_state, reason))
                    if entry is None:
                        entry = shared[trace_state, reason] = len(extras)
                        extras.append(tags.extra(row, reason, level, trace_state))
                else:
                    entry = len(extras)
                    extras.append(tags.extra(row, reason, level, trace_state))
                extra_id[i] = entry
            extra_buf, extra_offsets = _suffix_table(extras)
        out, groups, count = kernels.write_items(
            array, rows, span_start, span_end, batch.resource, batch.scope, extra_buf, extra_offsets, extra_id
        )
        region = out.tobytes()
        if count == 1:  # the request's kept spans are in one scope: the whole region
            assembler.add_encoded((r, int(groups[0, 0]), int(groups[0, 1])), region, stop - first)
            continue
        for resource, scope, items, start, end in groups[:count].tolist():
            assembler.add_encoded((r, resource, scope), region[start:end], items)
    return True
