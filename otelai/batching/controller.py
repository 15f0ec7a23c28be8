"""The control law of the adaptive batcher: how big a batch, how long to wait for it.

Triton's dynamic batcher (``max_queue_delay_microseconds``, ``preferred_batch_size``) is
tuned offline with a model analyser; this controller tunes the same two knobs online, from
what each batch cost and how long its requests waited. It is pure arithmetic on numbers the
batcher hands it, so it is tested without an event loop.

Control law
-----------
Three measurements, updated after every batch:

* a cost model ``cost(n) = a + b * n`` (seconds to process a batch of ``n`` items), fitted by
  ordinary least squares over the last ``model_window`` batches. Batch sizes vary naturally
  (light load closes batches by time, heavy load by size), which makes the fit well posed;
  when they do not vary, ``a = 0`` and ``b = mean(cost) / mean(n)``.
* the p99 of request latency (enqueue to end of processing), weighted by items, over a
  sliding window of the last ``latency_window`` requests: exact, and a window forgets an
  old regime on its own, which P2 or a t-digest would need decay for.
* the arrival rate ``lam`` (items/s), an exponentially weighted average.

The batch target ``N`` moves by AIMD on the measured p99 against the target ``T``:

* p99 > T: ``N <- beta * N`` and ``W <- beta * W`` (multiplicative decrease), and the
  latency window is cleared so the next decision sees only batches formed after this one
  (otherwise one spike would be punished again on every batch until it left the window);
* p99 < headroom * T: ``N <- N + step`` and ``W <- W + max_wait / 8`` (additive increase:
  larger batches are cheaper per item while latency has room);
* otherwise hold. No decision is taken on fewer than ``min_samples`` requests.

then ``N`` is clamped by the model:

* ceiling ``N_lat``, the largest ``n`` with ``2 * cost(n) <= headroom * T``. The worst case
  for a request under load is to arrive just as a batch of ``N`` starts: it waits for that
  batch, then is processed in the next one, so its latency is at most ``2 * cost(N)``
  (plus the wait below, which is bounded separately);
* floor ``N_thr = 1.25 * lam * a / (1 - lam * b)``, the smallest batch that keeps up with
  arrivals (throughput ``n / cost(n) >= lam``). Below it the queue grows without bound,
  which is worse for latency than any batch size, so the floor wins over the ceiling: in
  overload the controller maximises throughput and back-pressure does the rest. When
  ``lam * b >= 1`` no size keeps up and the floor is ``max_batch_size``.

and finally ``min_batch_size <= N <= max_batch_size``. The wait ``W`` (how long the oldest
request may wait for its batch to fill) is clamped to ``[0, min(max_wait, headroom * T -
cost(N))]``, so that under light load, where batches close by time, ``W + cost`` still fits.

Admission budget
----------------
The batcher admits a request when the model predicts it finishes within ``headroom * T``
(:meth:`AdaptiveBatcher.has_room`). The model prices scoring alone, but a queued request also
waits for everything else the event loop does between batches (receiving and parsing other
requests, exporting), which the model cannot see and which grows with load. So the budget it
admits against is scaled by a factor ``k`` moved by AIMD on what admitted requests lived:
``k <- admission_decrease * k`` after a batch in which a request waited in the queue longer
than ``headroom * T`` before its batch started (it was admitted on a prediction that did not
hold, and one that waits past ``T`` is forwarded unscored), ``k <- min(1, k +
admission_step)`` after one in which none did, with ``k >= min_admission``. Waits, not
latencies: a batch that runs long once started is the cost model's business, not admission's. This is the loss-based congestion control of TCP (Jacobson,
SIGCOMM 1988) applied to admission: without it, a hop whose loop is busier than the model
believes admits requests that then age past the target in the queue and are forwarded
unscored, which costs little, which admits more.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class CostModel:
    """``cost(n) = intercept + slope * n`` seconds for a batch of ``n`` items."""

    intercept: float
    slope: float

    def cost(self, n: float) -> float:
        return self.intercept + self.slope * n

    def largest_within(self, budget: float) -> float:
        """The largest ``n`` whose cost fits ``budget`` (``inf`` when cost does not grow)."""
        if self.slope <= 0.0:
            return math.inf if self.intercept <= budget else 0.0
        return (budget - self.intercept) / self.slope


class _Ring:
    """Fixed-size numpy ring buffer of (value, weight) pairs."""

    def __init__(self, size: int) -> None:
        self._values = np.zeros(size, dtype=np.float64)
        self._weights = np.zeros(size, dtype=np.float64)
        self._next = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def extend(self, values: npt.NDArray[np.float64], weights: npt.NDArray[np.float64]) -> None:
        size = self._values.size
        if values.size >= size:
            values, weights = values[-size:], weights[-size:]
        index = (self._next + np.arange(values.size)) % size
        self._values[index] = values
        self._weights[index] = weights
        self._next = int((self._next + values.size) % size)
        self._count = min(size, self._count + values.size)

    def clear(self) -> None:
        self._next = 0
        self._count = 0

    def arrays(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        return self._values[: self._count], self._weights[: self._count]


def weighted_quantile(values: npt.NDArray[np.float64], weights: npt.NDArray[np.float64], q: float) -> float:
    """The smallest value whose cumulative weight reaches ``q`` of the total."""
    if values.size == 0:
        return 0.0
    order = np.argsort(values, kind="stable")
    cumulative = np.cumsum(weights[order])
    index = int(np.searchsorted(cumulative, q * cumulative[-1], side="left"))
    return float(values[order[min(index, values.size - 1)]])


class BatchController:
    """AIMD on the measured p99, bounded by a learned cost model (see the module docstring).

    Parameters
    ----------
    min_batch_size, max_batch_size
        Bounds of the batch target, in items.
    max_wait
        Upper bound of the wait for a batch to fill, seconds.
    latency_target_p99
        Target for the p99 of request latency (queue + processing), seconds.
    headroom
        Fraction of the target the model plans for and below which the target grows.
    decrease
        Multiplicative decrease factor on violation.
    step
        Additive increase, items; default ``min_batch_size``.
    latency_window
        Requests in the sliding p99 window.
    model_window
        Batches in the least-squares fit.
    min_samples
        Requests needed in the window before a decision.
    admission_step, admission_decrease, min_admission
        Additive increase, multiplicative decrease and floor of the admission factor (see
        the module docstring).
    """

    def __init__(
        self,
        *,
        min_batch_size: int = 64,
        max_batch_size: int = 4096,
        max_wait: float = 0.002,
        latency_target_p99: float = 0.010,
        headroom: float = 0.8,
        decrease: float = 0.5,
        step: int | None = None,
        latency_window: int = 512,
        model_window: int = 32,
        min_samples: int = 16,
        admission_step: float = 0.05,
        admission_decrease: float = 0.7,
        min_admission: float = 0.05,
    ) -> None:
        if not 1 <= min_batch_size <= max_batch_size:
            raise ValueError("need 1 <= min_batch_size <= max_batch_size")
        if max_wait < 0 or latency_target_p99 <= 0:
            raise ValueError("max_wait must be >= 0 and latency_target_p99 > 0")
        if not 0 < headroom <= 1 or not 0 < decrease < 1:
            raise ValueError("need 0 < headroom <= 1 and 0 < decrease < 1")
        self.min_batch_size = min_batch_size
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait
        self.latency_target_p99 = latency_target_p99
        self.headroom = headroom
        self.decrease = decrease
        self.step = step if step is not None else min_batch_size
        self.min_samples = min_samples
        if not 0 < min_admission <= 1 or admission_step <= 0 or not 0 < admission_decrease < 1:
            raise ValueError("need 0 < min_admission <= 1, admission_step > 0, 0 < admission_decrease < 1")
        self.admission_decrease = admission_decrease
        self.admission_step = admission_step
        self.min_admission = min_admission
        self._admission = 1.0
        self._latencies = _Ring(latency_window)
        self._sizes = _Ring(model_window)  # value: items, weight: seconds
        self._target = float(min_batch_size)
        self._wait = max_wait
        self._rate = 0.0
        self._model: CostModel | None = None
        self._intercept = 0.0
        self._p99 = 0.0

    @property
    def target(self) -> int:
        """Current batch target, items."""
        return int(self._target)

    @property
    def wait(self) -> float:
        """Current longest wait of the oldest request for its batch to fill, seconds."""
        return self._wait

    @property
    def p99(self) -> float:
        """p99 latency over the current window (0 before any batch), seconds."""
        return self._p99

    @property
    def model(self) -> CostModel | None:
        """The fitted cost model, ``None`` before two batches."""
        return self._model

    @property
    def admission(self) -> float:
        """The admission factor ``k`` in ``[min_admission, 1]``."""
        return self._admission

    @property
    def admission_budget(self) -> float:
        """Seconds a request admitted now may be predicted to take: ``k * headroom * T``."""
        return self._admission * self.headroom * self.latency_target_p99

    @property
    def arrival_rate(self) -> float:
        """Smoothed arrival rate, items per second."""
        return self._rate

    def observe_arrivals(self, items: int, elapsed: float, smoothing: float = 0.2) -> None:
        """Fold ``items`` offered over ``elapsed`` seconds into the arrival rate."""
        if elapsed > 0:
            self._rate += smoothing * (items / elapsed - self._rate)

    def observe_batch(
        self,
        items: int,
        seconds: float,
        latencies: npt.NDArray[np.float64],
        weights: npt.NDArray[np.float64],
    ) -> None:
        """Learn from one processed batch and move the target.

        Parameters
        ----------
        items
            Items in the batch.
        seconds
            Its processing time.
        latencies
            Each request's enqueue-to-done latency, seconds.
        weights
            Each request's item count.
        """
        self._sizes.extend(np.array([float(items)]), np.array([seconds]))
        self._model = self._fit()
        # A request's wait before its batch started is its latency less the batch's processing.
        if latencies.size and float(latencies.max()) - seconds > self.headroom * self.latency_target_p99:
            self._admission = max(self.min_admission, self._admission * self.admission_decrease)
        else:
            self._admission = min(1.0, self._admission + self.admission_step)
        self._latencies.extend(latencies, weights)
        if len(self._latencies) >= self.min_samples:
            self._p99 = weighted_quantile(*self._latencies.arrays(), 0.99)
            self._aimd(self._p99)
        self._clamp()

    def _aimd(self, p99: float) -> None:
        if p99 > self.latency_target_p99:
            self._target *= self.decrease
            self._wait *= self.decrease
            self._latencies.clear()
        elif p99 < self.headroom * self.latency_target_p99:
            self._target += self.step
            self._wait += self.max_wait / 8

    def _clamp(self) -> None:
        budget = self.headroom * self.latency_target_p99
        lower, upper = float(self.min_batch_size), float(self.max_batch_size)
        model = self._model
        if model is not None:
            upper = min(upper, max(lower, model.largest_within(budget / 2)))
            lower = max(lower, min(float(self.max_batch_size), self._throughput_floor(model)))
            upper = max(upper, lower)
        self._target = float(math.floor(min(max(self._target, lower), upper)))
        wait_cap = self.max_wait
        if model is not None:
            wait_cap = min(wait_cap, max(0.0, budget - model.cost(self._target)))
        self._wait = min(max(self._wait, 0.0), wait_cap)

    def _throughput_floor(self, model: CostModel) -> float:
        load = self._rate * model.slope
        if load >= 1.0:
            return math.inf
        return math.ceil(1.25 * self._rate * model.intercept / (1.0 - load))

    def _fit(self) -> CostModel | None:
        sizes, seconds = self._sizes.arrays()
        if sizes.size < 2:
            return None
        mean_n, mean_s = float(sizes.mean()), float(seconds.mean())
        var_n = float(((sizes - mean_n) ** 2).mean())
        if var_n > (0.05 * mean_n) ** 2:
            slope = float(((sizes - mean_n) * (seconds - mean_s)).mean()) / var_n
            intercept = mean_s - slope * mean_n
            if slope >= 0.0 and intercept >= 0.0:
                self._intercept = intercept
                return CostModel(intercept, slope)
        # Sizes that barely vary say nothing about the intercept: keep the last one identified
        # (none yet: charge everything per item, which overstates the cost of big batches)
        # and refit the slope through the mean, so a change of cost is still followed.
        intercept = min(self._intercept, mean_s)
        return CostModel(intercept, (mean_s - intercept) / max(mean_n, 1.0))
