"""Consistent probability sampling by trace id, with the OpenTelemetry ``ot=th`` threshold.

Implements the OpenTelemetry specification "TraceState: Probability Sampling"
(``specification/trace/tracestate-probability-sampling.md``, OTEP 235) and the ``th``/``rv``
encodings of "TraceState Handling" (``specification/trace/tracestate-handling.md``), as the
Collector-contrib ``pkg/sampling`` package does for the ``probabilistic_sampler`` processor:

- randomness ``R`` is the least-significant 56 bits of the trace id (W3C Trace Context Level 2,
  "randomness of trace-id"), or the explicit ``rv`` sub-key of the ``ot`` tracestate entry
  when present (14 hex digits);
- the rejection threshold is ``T = (1 - p) * 2**56``; an item is kept iff ``R >= T``. Every
  replica computes the same ``R`` for a trace and the same ``T`` for a rate, so all spans of a
  trace get the same decision in every batch and every replica;
- ``th`` is ``T`` as 14 hex digits with trailing zeros removed (``"0"`` for ``T == 0``).

otelai is a *downstream* sampler in the specification's terms: it may raise a threshold set by
an earlier stage but never lower it (lowering would retroactively raise an earlier stage's
probability), so :func:`with_threshold` keeps an incoming ``th`` that is already stricter. This is
the "equalizing downstream sampler" rule.

W3C tracestate edits follow Trace Context section "Mutating the tracestate Field": the modified
``ot`` member moves to the left of the list, other vendors' members keep their order, at most 32
members. The ``ot`` value must stay within 256 characters; when a new ``th`` would not fit, the
old ``th`` is erased instead (a span of unknown probability must carry no threshold).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import numpy.typing as npt

MAX_ADJUSTED_COUNT = 1 << 56
# A threshold no 56-bit randomness reaches: "never sample" (not a probability, so not encodable).
NEVER_SAMPLE = MAX_ADJUSTED_COUNT
ALWAYS_SAMPLE = 0
RANDOMNESS_MASK = np.uint64(MAX_ADJUSTED_COUNT - 1)
NUM_HEX_DIGITS = 14
# OpenTelemetry SDKs are recommended 4 significant hex digits; the Collector's
# probabilistic_sampler defaults `sampling_precision` to 4 as well. It keeps `th` short.
DEFAULT_PRECISION = 4

_MAX_OT_LENGTH = 256
_MAX_MEMBERS = 32
_OT_VALUE = re.compile(r"[a-z][a-z0-9]*:[a-zA-Z0-9._\-]*(?:;[a-z][a-z0-9]*:[a-zA-Z0-9._\-]*)*")
_HEX = re.compile(r"[0-9a-fA-F]{1,14}")
_CACHE_SIZE = 4096

U64Array = npt.NDArray[np.uint64]
BoolArray = npt.NDArray[np.bool_]


def threshold_for(rate: float, *, precision: int | None = DEFAULT_PRECISION) -> int:
    """The 56-bit rejection threshold that keeps a fraction ``rate`` of traces.

    Parameters
    ----------
    rate
        Sampling probability in [0, 1]. 1 gives 0 (keep all); 0, or a rate below 2**-56,
        gives :data:`NEVER_SAMPLE`.
    precision
        Significant hex digits of the threshold, raised by one for every leading ``f`` as in the
        specification's ``probability_to_threshold_with_precision`` (so small rates keep their
        relative accuracy); ``None`` for the full 56 bits, ``T = 2**56 - round(rate * 2**56)``.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"a sampling rate must be in [0, 1], got {rate!r}")
    kept = round(rate * MAX_ADJUSTED_COUNT)
    if kept == 0:
        return NEVER_SAMPLE
    exact = MAX_ADJUSTED_COUNT - kept
    if precision is None or exact == 0:
        return exact
    if precision < 1:
        raise ValueError(f"precision must be at least 1 hex digit, got {precision}")
    _, exponent = math.frexp(rate)
    digits = min(NUM_HEX_DIGITS, precision + exponent // -4)
    shift = 4 * (NUM_HEX_DIGITS - digits)
    if shift == 0:
        return exact
    rounded = ((exact + (1 << (shift - 1))) >> shift) << shift
    # Rounding up past the last representable value would mean "never": keep full precision.
    return rounded if rounded < MAX_ADJUSTED_COUNT else exact


def probability(threshold: int) -> float:
    """The sampling probability a threshold stands for (the inverse of the adjusted count)."""
    return (MAX_ADJUSTED_COUNT - threshold) / MAX_ADJUSTED_COUNT


def encode_threshold(threshold: int) -> str:
    """The ``th`` value of a threshold: 14 hex digits less trailing zeros, ``"0"`` for 0."""
    if not 0 <= threshold < MAX_ADJUSTED_COUNT:
        raise ValueError(f"a threshold must be in [0, 2**56), got {threshold}")
    return f"{threshold:014x}".rstrip("0") or "0"


def decode_threshold(value: str) -> int | None:
    """The threshold of a ``th`` value (1 to 14 hex digits, right-padded); ``None`` if invalid."""
    if not _HEX.fullmatch(value):
        return None
    return int(value.ljust(NUM_HEX_DIGITS, "0"), 16)


def decode_randomness(value: str) -> int | None:
    """The randomness of an ``rv`` value (exactly 14 hex digits); ``None`` if invalid."""
    if len(value) != NUM_HEX_DIGITS or not _HEX.fullmatch(value):
        return None
    return int(value, 16)


def randomness(trace_ids: npt.NDArray[np.uint8]) -> U64Array:
    """The 56-bit randomness of each trace id: bytes 9..15 read big-endian.

    Parameters
    ----------
    trace_ids
        ``uint8`` array of shape (n, 16), one trace id a row, in wire (big-endian) order.
    """
    if trace_ids.dtype != np.uint8 or trace_ids.ndim != 2 or trace_ids.shape[1] != 16:
        raise ValueError(
            f"trace ids must be a uint8 array of shape (n, 16), got {trace_ids.dtype} {trace_ids.shape}"
        )
    low = np.ascontiguousarray(trace_ids[:, 8:])
    return low.view(">u8").reshape(-1).astype(np.uint64) & RANDOMNESS_MASK


def keep_mask(rand: U64Array, threshold: int | U64Array) -> BoolArray:
    """Keep iff ``R >= T`` (``threshold`` is one value or one per item)."""
    if isinstance(threshold, int):
        return rand >= np.uint64(threshold)
    return rand >= threshold


@lru_cache(maxsize=_CACHE_SIZE)
def ot_fields(tracestate: str) -> tuple[int | None, int | None]:
    """``(th, rv)`` of the ``ot`` entry of a W3C tracestate, each ``None`` when absent or invalid."""
    ot = _find_ot(tracestate)
    if ot is None or not _OT_VALUE.fullmatch(ot):
        return None, None
    th: int | None = None
    rv: int | None = None
    for member in ot.split(";"):
        key, _, value = member.partition(":")
        if key == "th":
            th = decode_threshold(value)
        elif key == "rv":
            rv = decode_randomness(value)
    return th, rv


def apply_explicit_randomness(
    rand: U64Array, index: npt.NDArray[np.intp], tracestates: Sequence[str]
) -> U64Array:
    """``rand`` with the explicit ``rv`` of the items that carry one in their tracestate.

    Parameters
    ----------
    rand
        Randomness of the whole batch, from :func:`randomness`.
    index
        Positions in the batch of the items with a non-empty tracestate.
    tracestates
        Their tracestate strings, one per position of ``index``. Few spans carry one and all
        spans of a trace carry the same string, so parsing is per item but cached.
    """
    out = rand.copy()
    for position, tracestate in zip(index.tolist(), tracestates, strict=True):
        rv = ot_fields(tracestate)[1]
        if rv is not None:
            out[position] = rv
    return out


def incoming_thresholds(tracestates: Sequence[str]) -> U64Array:
    """The ``th`` each tracestate carries, 0 (an always-sample stage) where it has none."""
    return np.fromiter(
        ((ot_fields(ts)[0] or 0) for ts in tracestates), dtype=np.uint64, count=len(tracestates)
    )


def with_threshold(tracestate: str, threshold: int) -> str:
    """``tracestate`` with ``th`` set to ``threshold`` in its ``ot`` entry.

    An existing valid ``th`` that is larger (stricter) is kept: a downstream sampler may raise a
    threshold, never lower it. Other ``ot`` sub-keys and other vendors' entries are kept; the
    ``ot`` entry moves to the front of the list. When the new ``ot`` value would exceed 256
    characters, the old ``th`` is erased instead. A malformed ``ot`` value is left untouched.

    Parameters
    ----------
    tracestate
        A W3C tracestate header value (may be empty).
    threshold
        Rejection threshold in [0, 2**56).
    """
    encoded = encode_threshold(threshold)
    return _with_threshold(tracestate, threshold, encoded)


def with_thresholds(tracestates: Sequence[str], thresholds: int | U64Array) -> list[str]:
    """:func:`with_threshold` for a batch; repeated ``(tracestate, threshold)`` pairs are computed once."""
    count = len(tracestates)
    values = [thresholds] * count if isinstance(thresholds, int) else thresholds.tolist()
    memo: dict[tuple[str, int], str] = {}
    out: list[str] = []
    for tracestate, threshold in zip(tracestates, values, strict=True):
        key = (tracestate, threshold)
        result = memo.get(key)
        if result is None:
            result = memo[key] = with_threshold(tracestate, threshold)
        out.append(result)
    return out


@lru_cache(maxsize=_CACHE_SIZE)
def _with_threshold(tracestate: str, threshold: int, encoded: str) -> str:
    members = _members(tracestate)
    position = next((i for i, member in enumerate(members) if member.partition("=")[0] == "ot"), None)
    if position is None:
        others = members[: _MAX_MEMBERS - 1]  # the right-most member goes when the list is full
        return ",".join([f"ot=th:{encoded}", *others])
    ot = members[position].partition("=")[2]
    if not _OT_VALUE.fullmatch(ot):
        return tracestate
    subs = ot.split(";")
    kept = [sub for sub in subs if sub.partition(":")[0] != "th"]
    existing = next((decode_threshold(sub[3:]) for sub in subs if sub.startswith("th:")), None)
    if existing is not None and existing >= threshold:
        return tracestate
    value = ";".join([*kept, f"th:{encoded}"])
    if len(value) > _MAX_OT_LENGTH:
        if len(kept) == len(subs):
            return tracestate
        value = ";".join(kept)
    others = members[:position] + members[position + 1 :]
    return ",".join([f"ot={value}", *others] if value else others)


def _members(tracestate: str) -> list[str]:
    # Members are separated by commas with optional spaces or tabs; empty members are allowed.
    return [part.strip(" \t") for part in tracestate.split(",") if part.strip(" \t")]


def _find_ot(tracestate: str) -> str | None:
    for member in _members(tracestate):
        key, _, value = member.partition("=")
        if key == "ot":
            return value
    return None
