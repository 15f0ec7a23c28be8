"""Streaming per-series novelty: new extremes, surges against the slow baseline, new shapes.

Three signals, all online and per series, with no training set (the Numenta Anomaly Benchmark
setting: Lavin & Ahmad, "Evaluating Real-time Anomaly Detection Algorithms -- the Numenta
Anomaly Benchmark", ICMLA 2015):

- **Range novelty**, the "spatial anomaly" of Numenta's NAB detector (Ahmad, Lavin, Purdy & Agha,
  "Unsupervised real-time anomaly detection for streaming data", Neurocomputing 2017): how far a
  value lands outside everything its series has shown so far, in units of that range.
- **Surprise** against an exponentially weighted mean and variance with a long half-life,
  bias-corrected as in Adam (Kingma & Ba, ICLR 2015) so the first points are not over-scored, and
  kept only where it beats the decayed maximum of its recent surprises by a margin (a refractory
  period: a burst raises one alarm at its rising edge, not one per point). It is measured on the
  signed log of the value, ``sign(x) log1p(|x|)`` (the service's ``value_slog``), so a change
  counts by its ratio to the level rather than its absolute size: the service metrics NAB holds
  (request and tweet counts, bytes, CPU) are positive and heavy tailed, their spread grows with
  their level, and on the raw value every burst of a busy series is many standard deviations
  out. (Chosen on the tuning half of NAB's series: standard score 64.7 -> 66.3 there, 62.7 ->
  65.5 on the held-out half, false alarms 262 -> 179 over the corpus.)
- **Context novelty**, after the "contextual anomaly detector" (CAD OSE, the contextOSE entry of
  NAB's scoreboard, M. Smirnov 2016): each point's context is its last ``context_length`` values
  quantised into ``context_bins`` equal bins of the series' range so far; a context never seen
  before in the series is novel. That fires often on a noisy series and rarely on a regular one,
  so a novel context is scored by its self-information against the series' own recent rate of
  novel contexts, ``log(rate) / log(context_floor)`` (the rate an exponentially weighted mean with
  ``context_half_life``): the same idea as Numenta's anomaly likelihood (Ahmad et al. 2017), which
  judges a raw score by how unusual it is for that series. It catches changes of shape that stay
  inside the range and near the mean (a flattened or missing daily cycle), which the other two
  signals cannot see.
- **Slow context novelty**, the same over a coarser time scale: the context of a point is the
  moving averages of its last ``slow_window`` values, taken ``slow_window`` points apart
  (``slow_length`` of them), binned the same way, with its own table and its own rate of novel
  contexts (``slow_half_life``). A change that builds over hours (a daily pattern that drifts,
  a slow ramp before a failure) makes a new slow context long before it makes a new extreme,
  while the point-level noise that makes a noisy series' fine contexts new all the time is
  averaged out. Multi-scale context in the spirit of CAD OSE's longer left semi-contexts
  (Smirnov 2016), who builds contexts from up to seven past steps. (Windows averaged rather
  than decimated, so every point is scored at once and no block boundary is arbitrary; 48 points,
  3 averages and half-life 800 chosen on the tuning half of NAB: standard 66.3 -> 67.7 there,
  65.5 -> 66.8 held out.)

The score is ``max(e / (e + range_scale), z_weight * z / (z + z_scale), context_weight * i,
context_weight * j)`` in [0, 1), ``i`` and ``j`` the information of a novel context and of a novel
slow context, in [0, 1].

Every step is closed-form over a batch: exponentially weighted sums are cumulative sums scaled by
powers of the decay (chunked so the powers stay small), and the decayed running maximum is a
cumulative maximum in log space. The only Python loop is over the series of a batch. The value
is read back from the service's own ``value_slog`` feature (:mod:`otelai.features.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt

from otelai.detectors.base import Detector, FloatArray

if TYPE_CHECKING:
    from otelai.detectors.registry import Serving
    from otelai.models.bundle import Bundle, DetectorSpec

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

VALUE_COLUMN = "value_slog"
_CHUNK = 256  # decay powers stay within d**-256: exact enough in float64 for any half-life >= 8
_TINY = 1e-300


@dataclass(slots=True)
class _Contexts:
    """What one scale of context novelty carries between batches for one series."""

    tail: F64 = field(default_factory=lambda: np.zeros(0))  # the values its next contexts reach back to
    seen: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=np.bool_))  # by code
    weight: float = 0.0  # decayed count of points (for the rate of novel contexts)
    novel: float = 0.0  # decayed count of novel contexts


@dataclass(slots=True)
class _SeriesState:
    """What one series carries between batches."""

    seen: int = 0
    low: float = math.inf
    high: float = -math.inf
    reference: float = 0.0  # subtracted before the weighted sums (less cancellation)
    weight: float = 0.0  # sum of decay weights
    first: float = 0.0  # weighted sum of (x - reference)
    second: float = 0.0  # weighted sum of (x - reference)^2
    peak: float = 0.0  # decayed maximum of past surprises
    fine: _Contexts = field(default_factory=lambda: _Contexts())  # contexts of values
    slow: _Contexts = field(default_factory=lambda: _Contexts())  # contexts of moving averages


def signed_log(x: F64) -> F64:
    """``sign(x) log1p(|x|)``: the scale the surprise is measured on (the ``value_slog`` feature)."""
    y: F64 = np.sign(x) * np.log1p(np.abs(x))
    return y


def decode_slog(column: npt.NDArray[np.float32]) -> F64:
    """Invert the signed log ``sign(x) log1p(|x|)`` of :mod:`otelai.features.metrics`."""
    values = column.astype(np.float64)
    decoded: F64 = np.sign(values) * np.expm1(np.abs(values))
    return decoded


def range_novelty(x: F64, state: _SeriesState, *, warmup: int, tolerance: float) -> F64:
    """How far each value lands outside the range of all earlier values, in units of that range."""
    high = np.maximum.accumulate(np.concatenate([[state.high], x]))[:-1]
    low = np.minimum.accumulate(np.concatenate([[state.low], x]))[:-1]
    width = high - low
    finite = np.isfinite(width) & (width > 0)
    safe = np.where(finite, width, 1.0)
    excess = np.where(finite, np.maximum(x - high, low - x) / safe, 0.0)
    seen = state.seen + np.arange(x.size)
    novelty: F64 = np.where((seen >= warmup) & (excess > tolerance), excess, 0.0)
    if x.size:
        state.high, state.low = max(state.high, float(x.max())), min(state.low, float(x.min()))
    return novelty


def weighted_surprise(x: F64, state: _SeriesState, *, decay: float, warmup: int) -> F64:
    """``|x - mean| / std`` against the decayed mean and variance of the earlier values."""
    if state.seen == 0 and x.size:
        state.reference = float(x[0])
    y = x - state.reference
    out = np.zeros(x.size, dtype=np.float64)
    for start in range(0, x.size, _CHUNK):
        part = y[start : start + _CHUNK]
        steps = np.arange(part.size, dtype=np.float64)
        grow, shrink = decay ** (-steps), decay**steps
        # Sums before each point: the carried state decayed, plus the chunk's earlier points.
        weight = shrink * (state.weight + np.concatenate([[0.0], np.cumsum(grow)[:-1]]))
        first = shrink * (state.first + np.concatenate([[0.0], np.cumsum(part * grow)[:-1]]))
        second = shrink * (state.second + np.concatenate([[0.0], np.cumsum(part * part * grow)[:-1]]))
        ready = weight > 0
        mean = np.divide(first, weight, out=np.zeros_like(first), where=ready)
        var = np.maximum(np.divide(second, weight, out=np.zeros_like(second), where=ready) - mean**2, 0.0)
        scale = np.maximum(np.sqrt(var), 1e-3 * np.abs(mean + state.reference) + 1e-9)
        out[start : start + part.size] = np.where(ready, np.abs(part - mean) / scale, 0.0)
        last = part.size - 1
        # The sums before the next point: this chunk's last point in, everything one step older.
        state.weight = decay * (weight[last] + 1.0)
        state.first = decay * (first[last] + part[last])
        state.second = decay * (second[last] + part[last] ** 2)
    seen = state.seen + np.arange(x.size)
    surprise: F64 = np.where(seen >= warmup, out, 0.0)
    return surprise


def decayed_share(
    novel: npt.NDArray[np.bool_], carried: tuple[float, float], *, decay: float
) -> tuple[F64, tuple[float, float]]:
    """The exponentially weighted share of ``novel`` before each point (0 before any).

    ``carried`` is the decayed (count of points, count of novel ones) before ``novel``; the same
    pair after it is returned with the shares.
    """
    r = novel.astype(np.float64)
    rate = np.zeros(r.size, dtype=np.float64)
    carried_weight, carried_sum = carried
    for start in range(0, r.size, _CHUNK):
        part = r[start : start + _CHUNK]
        steps = np.arange(part.size, dtype=np.float64)
        grow, shrink = decay ** (-steps), decay**steps
        weight = shrink * (carried_weight + np.concatenate([[0.0], np.cumsum(grow)[:-1]]))
        total = shrink * (carried_sum + np.concatenate([[0.0], np.cumsum(part * grow)[:-1]]))
        rate[start : start + part.size] = np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)
        last = part.size - 1
        carried_weight = decay * (weight[last] + 1.0)
        carried_sum = decay * (total[last] + part[last])
    return rate, (carried_weight, carried_sum)


def context_novelty(
    x: F64, state: _SeriesState, contexts: _Contexts, *, window: int, bins: int, length: int
) -> npt.NDArray[np.bool_]:
    """Whether each point's context at one scale is new to its series (see the module docstring).

    The context of point ``t`` is the means of ``x[t - lag * window - window + 1 : t - lag *
    window + 1]`` for ``lag < length`` (``window`` 1: its last ``length`` values), each put in one
    of ``bins`` equal bins of the range seen up to and including ``t``; the first ``window *
    length - 1`` points of a series have none. Every mean is taken over its own ``window`` values
    (no running sum), so it does not depend on how the series was split into batches. Reads
    ``state.low``/``state.high`` as they were before ``x`` (call before :func:`range_novelty`).
    """
    if contexts.seen.size != bins**length:
        contexts.seen = np.zeros(bins**length, dtype=np.bool_)
    need = window * length - 1
    high = np.maximum.accumulate(np.concatenate([[state.high], x]))[1:]
    low = np.minimum.accumulate(np.concatenate([[state.low], x]))[1:]
    width = high - low
    width = np.where(width > 0, width, 1.0)
    values = np.concatenate([contexts.tail, x])
    if window > 1:
        padded = np.concatenate([np.zeros(window - 1), values])  # means of incomplete windows unused
        values = np.lib.stride_tricks.sliding_window_view(padded, window).mean(axis=1)  # one per value
    ends = np.arange(x.size) + contexts.tail.size  # each point's row in ``values``
    codes = np.zeros(x.size, dtype=np.int64)
    for lag in range(length):
        value = values[np.maximum(ends - lag * window, 0)]
        binned = np.clip(np.floor(bins * (value - low) / width), 0, bins - 1).astype(np.int64)
        codes = codes * bins + binned
    complete = (state.seen + np.arange(x.size)) >= need
    first = np.zeros(x.size, dtype=np.bool_)
    first[np.unique(np.where(complete, codes, -1), return_index=True)[1]] = True  # first in the batch
    novel: npt.NDArray[np.bool_] = complete & first & ~contexts.seen[codes]
    contexts.seen[codes[complete]] = True
    raw = np.concatenate([contexts.tail, x])
    contexts.tail = raw[max(raw.size - need, 0) :].copy()  # not a view of the batch
    return novel


def refractory(z: F64, state: _SeriesState, *, decay: float, margin: float) -> F64:
    """``z`` where it beats ``(1 + margin)`` times the decayed maximum of earlier ``z``, else 0."""
    out = np.zeros(z.size, dtype=np.float64)
    log_decay = math.log(decay)
    for start in range(0, z.size, _CHUNK):
        part = z[start : start + _CHUNK]
        steps = np.arange(part.size, dtype=np.float64)
        logs = np.log(np.maximum(part, _TINY)) - steps * log_decay
        carried = math.log(max(state.peak, _TINY)) + log_decay  # the state, one step on
        running = np.maximum.accumulate(np.concatenate([[carried], logs]))
        before = np.exp(running[:-1] + steps * log_decay)  # decayed max of everything earlier
        out[start : start + part.size] = np.where(part > before * (1.0 + margin), part, 0.0)
        state.peak = float(np.exp(running[-1] + (part.size - 1) * log_decay))
    return out


class NoveltyDetector(Detector):
    """Per-series range novelty, refractory surprise and context novelty over metric points.

    Parameters
    ----------
    columns
        The feature schema's column names (``value_slog`` is read).
    half_life
        Points over which the surprise baseline forgets half its weight.
    refractory_half_life
        Points over which the refractory maximum halves.
    margin
        How much a surprise must beat the recent maximum to count.
    range_scale, z_scale
        Novelty and surprise giving a score of one half (before ``z_weight``).
    z_weight
        Weight of surprise against range novelty.
    log_surprise
        Measure the surprise on ``sign(x) log1p(|x|)`` rather than on ``x`` (relative changes;
        see the module docstring). Bundles written before it existed score on ``x``.
    warmup
        Points of a series before it is scored.
    tolerance
        Novelty below this share of the range is ignored (rounding of the float32 feature).
    context_bins, context_length
        Bins of the range, and values per context, of context novelty.
    context_half_life
        Points over which the rate of novel contexts forgets half its weight.
    context_floor
        The rate below which a novel context is fully surprising (information 1).
    context_weight
        Weight of context novelty against range novelty (0 turns it off). The context defaults
        (8 bins, 3 values, half-life 200, floor 1e-4, weight 0.35) were chosen by the NAB score
        of the tuning half of its series only (:func:`otelai.models.tasks.nab.split_series`).
    context_warmup
        Points of a series before context novelty is scored (its early contexts are all new).
    slow_window, slow_length, slow_half_life
        Points per moving average and averages per slow context (``slow_window`` 0 turns slow
        context novelty off), and the half-life of its rate of novel contexts. It shares
        ``context_bins``, ``context_floor``, ``context_weight`` and ``context_warmup``.
    max_series
        Series remembered; the least recently seen are forgotten beyond it.
    """

    name: ClassVar[str] = "novelty"

    def __init__(
        self,
        columns: Sequence[str],
        *,
        half_life: float = 1500.0,
        refractory_half_life: float = 100.0,
        margin: float = 0.2,
        range_scale: float = 0.05,
        z_scale: float = 10.0,
        z_weight: float = 0.5,
        log_surprise: bool = True,
        warmup: int = 30,
        tolerance: float = 1e-4,
        context_bins: int = 8,
        context_length: int = 3,
        context_half_life: float = 200.0,
        context_floor: float = 1e-4,
        context_weight: float = 0.35,
        context_warmup: int = 300,
        slow_window: int = 48,
        slow_length: int = 3,
        slow_half_life: float = 800.0,
        max_series: int = 100_000,
    ) -> None:
        if half_life < 8 or refractory_half_life < 1 or context_half_life < 8:
            raise ValueError("need half_life >= 8, context_half_life >= 8 and refractory_half_life >= 1")
        if context_bins < 1 or context_length < 1 or context_bins**context_length > 1 << 20:
            raise ValueError(
                "need context_bins, context_length >= 1 and context_bins**context_length <= 2**20"
            )
        if slow_window < 0 or slow_length < 1 or slow_half_life < 8 or context_bins**slow_length > 1 << 20:
            raise ValueError(
                "need slow_window >= 0, slow_length >= 1, slow_half_life >= 8 and "
                "context_bins**slow_length <= 2**20"
            )
        if not 0.0 < context_floor < 1.0:
            raise ValueError("need 0 < context_floor < 1")
        self.columns = tuple(columns)
        self._value = self.columns.index(VALUE_COLUMN)
        self.half_life = half_life
        self.refractory_half_life = refractory_half_life
        self.margin = margin
        self.range_scale = range_scale
        self.z_scale = z_scale
        self.z_weight = z_weight
        self.log_surprise = bool(log_surprise)
        self.warmup = warmup
        self.tolerance = tolerance
        self.context_bins = context_bins
        self.context_length = context_length
        self.context_half_life = context_half_life
        self.context_floor = context_floor
        self.context_weight = context_weight
        self.context_warmup = context_warmup
        self.slow_window = int(slow_window)
        self.slow_length = int(slow_length)
        self.slow_half_life = slow_half_life
        self._slow_decay = 0.5 ** (1.0 / slow_half_life)
        self.max_series = max_series
        self._context_decay = 0.5 ** (1.0 / context_half_life)
        self._decay = 0.5 ** (1.0 / half_life)
        self._refractory_decay = 0.5 ** (1.0 / refractory_half_life)
        self._series: dict[int, _SeriesState] = {}

    @property
    def params(self) -> dict[str, Any]:
        """Hyperparameters under their constructor names (for the bundle)."""
        return {
            "half_life": self.half_life,
            "refractory_half_life": self.refractory_half_life,
            "margin": self.margin,
            "range_scale": self.range_scale,
            "z_scale": self.z_scale,
            "z_weight": self.z_weight,
            "log_surprise": self.log_surprise,
            "warmup": self.warmup,
            "tolerance": self.tolerance,
            "context_bins": self.context_bins,
            "context_length": self.context_length,
            "context_half_life": self.context_half_life,
            "context_floor": self.context_floor,
            "context_weight": self.context_weight,
            "context_warmup": self.context_warmup,
            "slow_window": self.slow_window,
            "slow_length": self.slow_length,
            "slow_half_life": self.slow_half_life,
        }

    @classmethod
    def from_spec(cls, bundle: Bundle, spec: DetectorSpec, serving: Serving) -> NoveltyDetector:
        """Build from a bundle entry: the metrics schema's columns and ``spec.params``.

        A bundle written before context novelty existed (no ``context_weight``) scores without
        it, one written before ``log_surprise`` scores the surprise on the raw value and one
        written before ``slow_window`` has no slow context novelty, so its threshold keeps its
        meaning.
        """
        model = bundle.signal("metrics")
        if model is None:
            from otelai.models.bundle import BundleError

            raise BundleError(f"bundle {bundle.path}: detector {spec.name!r} needs a metrics section")
        known = {"half_life", "refractory_half_life", "margin", "range_scale", "z_scale", "z_weight"}
        known |= {"warmup", "tolerance", "max_series", "context_bins", "context_length"}
        known |= {"context_half_life", "context_floor", "context_weight", "context_warmup"}
        known |= {"log_surprise", "slow_window", "slow_length", "slow_half_life"}
        params = {key: value for key, value in spec.params.items() if key in known}
        params.setdefault("context_weight", 0.0)
        params.setdefault("log_surprise", False)
        params.setdefault("slow_window", 0)
        return cls(model.feature_schema.columns, **params)

    def learn_many(self, features: FloatArray) -> None:
        """Nothing to learn apart from scoring: every scored point updates its series."""

    def score_many(self, features: FloatArray) -> FloatArray:
        """Scores of rows that all belong to one series, in time order (see :meth:`score_series`)."""
        return self.score_series(np.zeros(len(features), dtype=np.int64), features)

    def score_keyed(self, features: FloatArray, keys: I64 | None) -> FloatArray:
        """Per-series scores (:meth:`score_series`); without keys, the rows are one series."""
        return self.score_many(features) if keys is None else self.score_series(keys, features)

    def score_explain_keyed(
        self, features: FloatArray, keys: I64 | None, top: int = 3
    ) -> tuple[FloatArray, I64]:
        """Per-series scores; no feature is named (the score reads the value column alone)."""
        return self.score_keyed(features, keys), self.explain_many(features, top)

    def score_series(self, keys: I64, features: FloatArray) -> FloatArray:
        """Scores of rows of many series (``keys``), each series' rows in time order.

        Scoring advances each series' state: call it once per point, in the order they arrive.
        """
        scores = np.zeros(len(features), dtype=np.float32)
        if not len(features):
            return scores
        values = decode_slog(np.asarray(features)[:, self._value])
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_keys[1:] != sorted_keys[:-1]]))
        ends = np.append(starts[1:], sorted_keys.size)
        for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
            rows = order[start:end]
            scores[rows] = self._score_one(int(sorted_keys[start]), values[rows])
        self._forget()
        return scores

    def _score_one(self, key: int, x: F64) -> F64:
        state = self._series.pop(key, None) or _SeriesState()
        self._series[key] = state  # most recently seen last (dicts keep insertion order)
        finite = np.isfinite(x)
        score = np.zeros(x.size, dtype=np.float64)
        if finite.any():
            x = x[finite]
            # before range_novelty, which moves the range it reads; off (no state) at weight 0
            context = slow = np.zeros(x.size)
            if self.context_weight > 0:
                context = self._information(
                    x, state, state.fine, window=1, length=self.context_length, decay=self._context_decay
                )
                if self.slow_window > 0:
                    slow = self._information(
                        x,
                        state,
                        state.slow,
                        window=self.slow_window,
                        length=self.slow_length,
                        decay=self._slow_decay,
                    )
            novelty = range_novelty(x, state, warmup=self.warmup, tolerance=self.tolerance)
            level = signed_log(x) if self.log_surprise else x
            surprise = weighted_surprise(level, state, decay=self._decay, warmup=self.warmup)
            surge = refractory(surprise, state, decay=self._refractory_decay, margin=self.margin)
            state.seen += x.size
            score[finite] = np.maximum.reduce(
                [
                    novelty / (novelty + self.range_scale),
                    self.z_weight * surge / (surge + self.z_scale),
                    self.context_weight * context,
                    self.context_weight * slow,
                ]
            )
        return score

    def _information(
        self, x: F64, state: _SeriesState, contexts: _Contexts, *, window: int, length: int, decay: float
    ) -> F64:
        """Information of each novel context at one scale, ``log(rate) / log(floor)`` in [0, 1]
        against the series' decayed rate of novel contexts at that scale; 0 elsewhere."""
        novel = context_novelty(x, state, contexts, window=window, bins=self.context_bins, length=length)
        rate, (contexts.weight, contexts.novel) = decayed_share(
            novel, (contexts.weight, contexts.novel), decay=decay
        )
        information = np.log(np.maximum(rate, self.context_floor)) / math.log(self.context_floor)
        seen = state.seen + np.arange(x.size)
        scored: F64 = np.where(novel & (seen >= self.context_warmup), information, 0.0)
        return scored

    def _forget(self) -> None:
        excess = len(self._series) - self.max_series
        for key in list(self._series)[: max(excess, 0)]:
            del self._series[key]
