"""Streaming per-series novelty: new extremes, surges, unpredicted steps, new shapes.

Five signals, all online and per series, with no training set (the Numenta Anomaly Benchmark
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
- **Forecast surprise**, the one predictive signal: the error of a one-step forecast by simple
  exponential smoothing (the weighted mean of the recent values, half-life
  ``forecast_half_life``; Hyndman & Athanasopoulos, "Forecasting: Principles and Practice", 3rd
  ed., section 8.1) on the same signed log, divided by the root of the decayed mean of its own
  earlier squared errors (half-life ``forecast_error_half_life``), with its own refractory
  maximum. The surprise above measures a value against the series' long-run spread; this one
  measures a step against how well the last few points have been predicting the next, so a
  sudden step on a smooth series counts even when it stays well inside the long-run spread.
  (Chosen on the tuning half of NAB: half-life 5, error half-life 200, weight 0.45, scale 12;
  standard 67.7 -> 68.1 there, 66.9 -> 67.5 held out, false alarms 213 -> 204. An online AR
  model fitted by recursive least squares, Holt's trend and a seasonal-naive term with the
  period from the series' autocorrelation did not beat it on the tuning half.)
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

The score is ``max(e / (e + range_scale), z_weight * z / (z + z_scale), forecast_weight * f / (f
+ forecast_scale), context_weight * i, context_weight * j)`` in [0, 1), ``f`` the refractory
forecast surprise, ``i`` and ``j`` the information of a novel context and of a novel slow context,
in [0, 1].

Every step is closed-form over a batch: exponentially weighted sums are cumulative sums scaled by
powers of the decay (chunked so the powers stay small), and the decayed running maximum is a
cumulative maximum in log space; the forecast's chunks are shorter, as its half-life is. The only
Python loop is over the series of a batch. The forecast costs five floats per series. The value
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
class _Forecast:
    """What the one-step forecast carries between batches for one series (five floats)."""

    weight: float = 0.0  # decayed count of points, short half-life (the forecast)
    total: float = 0.0  # decayed sum of their values
    error_weight: float = 0.0  # decayed count of forecast errors, long half-life (their scale)
    error_total: float = 0.0  # decayed sum of their squares
    peak: float = 0.0  # decayed maximum of past forecast surprises (its own refractory period)


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
    forecast: _Forecast = field(default_factory=lambda: _Forecast())  # one-step forecast


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
    ones = np.ones_like(y)
    # Sums before each point (:func:`decayed_sums`): count, sum and sum of squares of (x - reference).
    weight, first, (state.weight, state.first) = decayed_sums(
        y, ones, (state.weight, state.first), decay=decay
    )
    _, second, (_, state.second) = decayed_sums(y * y, ones, (0.0, state.second), decay=decay)
    ready = weight > 0
    mean = np.divide(first, weight, out=np.zeros_like(first), where=ready)
    var = np.maximum(np.divide(second, weight, out=np.zeros_like(second), where=ready) - mean**2, 0.0)
    scale = np.maximum(np.sqrt(var), 1e-3 * np.abs(mean + state.reference) + 1e-9)
    out = np.where(ready, np.abs(y - mean) / scale, 0.0)
    seen = state.seen + np.arange(x.size)
    surprise: F64 = np.where(seen >= warmup, out, 0.0)
    return surprise


def decayed_sums(
    values: F64, counted: F64, carried: tuple[float, float], *, decay: float, chunk: int = _CHUNK
) -> tuple[F64, F64, tuple[float, float]]:
    """Exponentially weighted count and sum of the earlier points, before each point.

    Point ``i`` enters with weight ``counted[i]`` (0 leaves it out) and value ``values[i]``;
    ``carried`` is the decayed (count, sum) before ``values``, and the same pair after them is
    returned. Closed form per chunk of ``chunk`` points: cumulative sums scaled by powers of
    ``decay``, which stay within ``decay**-chunk`` (keep that small for a short half-life).
    """
    weight_out = np.zeros(values.size, dtype=np.float64)
    total_out = np.zeros(values.size, dtype=np.float64)
    carried_weight, carried_sum = carried
    for start in range(0, values.size, chunk):
        part, mass = values[start : start + chunk], counted[start : start + chunk]
        steps = np.arange(part.size, dtype=np.float64)
        grow, shrink = decay ** (-steps), decay**steps
        weight = shrink * (carried_weight + np.concatenate([[0.0], np.cumsum(mass * grow)[:-1]]))
        total = shrink * (carried_sum + np.concatenate([[0.0], np.cumsum(mass * part * grow)[:-1]]))
        weight_out[start : start + part.size] = weight
        total_out[start : start + part.size] = total
        last = part.size - 1
        carried_weight = decay * (weight[last] + mass[last])
        carried_sum = decay * (total[last] + mass[last] * part[last])
    return weight_out, total_out, (carried_weight, carried_sum)


def decayed_share(
    novel: npt.NDArray[np.bool_], carried: tuple[float, float], *, decay: float
) -> tuple[F64, tuple[float, float]]:
    """The exponentially weighted share of ``novel`` before each point (0 before any).

    ``carried`` is the decayed (count of points, count of novel ones) before ``novel``; the same
    pair after it is returned with the shares.
    """
    r = novel.astype(np.float64)
    weight, total, carried = decayed_sums(r, np.ones_like(r), carried, decay=decay)
    rate: F64 = np.divide(total, weight, out=np.zeros_like(total), where=weight > 0)
    return rate, carried


def forecast_surprise(x: F64, state: _Forecast, *, decay: float, error_decay: float) -> F64:
    """``|x - forecast| / scale``: the one-step error of simple exponential smoothing, standardised.

    The forecast of a point is the exponentially weighted mean of the earlier values with a
    short half-life (simple exponential smoothing, Brown 1956; Hyndman & Athanasopoulos,
    "Forecasting: Principles and Practice", 3rd ed., section 8.1; bias-corrected as the surprise
    is). Its error is divided by the root of the decayed mean of the earlier squared errors with
    a long half-life, at least 1e-3 of the forecast as in :func:`weighted_surprise`: the
    forecaster's own error scale, the idea of Numenta's anomaly likelihood (Ahmad et al. 2017),
    which judges a raw score against the series' recent distribution of it. The surprise of
    :func:`weighted_surprise` measures a value against the long-run spread of the series; this
    one measures a step against how well the recent past has been predicting the next point, so
    a jump on a smooth series counts even inside the long-run spread, and a series that is noisy
    from step to step scores low. 0 until a series has a forecast error to compare with.
    """
    chunk = max(1, min(_CHUNK, int(-16.0 * math.log(2.0) / math.log(decay))))  # decay**-chunk <= 2**16
    weight, total, (state.weight, state.total) = decayed_sums(
        x, np.ones_like(x), (state.weight, state.total), decay=decay, chunk=chunk
    )
    ready = weight > 0
    forecast = np.divide(total, weight, out=np.zeros_like(total), where=ready)
    error = np.where(ready, x - forecast, 0.0)
    error_weight, error_total, (state.error_weight, state.error_total) = decayed_sums(
        error * error, ready.astype(np.float64), (state.error_weight, state.error_total), decay=error_decay
    )
    has_scale = error_weight > 0
    mean_square = np.divide(error_total, error_weight, out=np.zeros_like(error_total), where=has_scale)
    scale = np.maximum(np.sqrt(mean_square), 1e-3 * np.abs(forecast) + 1e-9)
    surprise: F64 = np.where(has_scale, np.abs(error) / scale, 0.0)
    return surprise


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


def refractory(z: F64, state: _SeriesState | _Forecast, *, decay: float, margin: float) -> F64:
    """``z`` where it beats ``(1 + margin)`` times the decayed maximum of earlier ``z``, else 0.

    The decayed maximum is ``state.peak`` (the surprise's, or the forecast's own)."""
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
    """Per-series range novelty, refractory and forecast surprise, context novelty over metric points.

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
    forecast_weight, forecast_half_life, forecast_error_half_life, forecast_scale
        Weight of the forecast surprise (0 turns it off), the half-life of its forecast (simple
        exponential smoothing), that of its error scale, and the surprise giving a score of one
        half (before the weight). It measures on ``log_surprise``'s scale and shares the
        surprise's refractory period (``refractory_half_life``, ``margin``), with its own maximum.
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
        forecast_weight: float = 0.45,
        forecast_half_life: float = 5.0,
        forecast_error_half_life: float = 200.0,
        forecast_scale: float = 12.0,
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
        if (
            forecast_weight < 0
            or forecast_half_life <= 0
            or forecast_error_half_life < 8
            or forecast_scale <= 0
        ):
            raise ValueError(
                "need forecast_weight >= 0, forecast_half_life > 0, forecast_error_half_life >= 8 "
                "and forecast_scale > 0"
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
        self.forecast_weight = forecast_weight
        self.forecast_half_life = forecast_half_life
        self.forecast_error_half_life = forecast_error_half_life
        self.forecast_scale = forecast_scale
        self._forecast_decay = 0.5 ** (1.0 / forecast_half_life)
        self._forecast_error_decay = 0.5 ** (1.0 / forecast_error_half_life)
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
            "forecast_weight": self.forecast_weight,
            "forecast_half_life": self.forecast_half_life,
            "forecast_error_half_life": self.forecast_error_half_life,
            "forecast_scale": self.forecast_scale,
        }

    @classmethod
    def from_spec(cls, bundle: Bundle, spec: DetectorSpec, serving: Serving) -> NoveltyDetector:
        """Build from a bundle entry: the metrics schema's columns and ``spec.params``.

        A bundle written before context novelty existed (no ``context_weight``) scores without
        it, one written before ``log_surprise`` scores the surprise on the raw value and one
        written before ``slow_window`` has no slow context novelty and one written before
        ``forecast_weight`` no forecast surprise, so its threshold keeps its meaning.
        """
        model = bundle.signal("metrics")
        if model is None:
            from otelai.models.bundle import BundleError

            raise BundleError(f"bundle {bundle.path}: detector {spec.name!r} needs a metrics section")
        known = {"half_life", "refractory_half_life", "margin", "range_scale", "z_scale", "z_weight"}
        known |= {"warmup", "tolerance", "max_series", "context_bins", "context_length"}
        known |= {"context_half_life", "context_floor", "context_weight", "context_warmup"}
        known |= {"log_surprise", "slow_window", "slow_length", "slow_half_life"}
        known |= {"forecast_weight", "forecast_half_life", "forecast_error_half_life", "forecast_scale"}
        params = {key: value for key, value in spec.params.items() if key in known}
        params.setdefault("context_weight", 0.0)
        params.setdefault("log_surprise", False)
        params.setdefault("slow_window", 0)
        params.setdefault("forecast_weight", 0.0)
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
            jump = np.zeros(x.size)
            if self.forecast_weight > 0:  # off (no state moves) at weight 0
                error = forecast_surprise(
                    level, state.forecast, decay=self._forecast_decay, error_decay=self._forecast_error_decay
                )
                error = np.where(state.seen + np.arange(x.size) >= self.warmup, error, 0.0)
                jump = refractory(error, state.forecast, decay=self._refractory_decay, margin=self.margin)
            state.seen += x.size
            score[finite] = np.maximum.reduce(
                [
                    novelty / (novelty + self.range_scale),
                    self.z_weight * surge / (surge + self.z_scale),
                    self.context_weight * context,
                    self.context_weight * slow,
                    self.forecast_weight * jump / (jump + self.forecast_scale),
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
