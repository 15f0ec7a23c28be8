"""Base-2 exponential buckets at a fixed scale, downscaled per point."""

from __future__ import annotations

import numpy as np

from otelai.decision import exponential_buckets as eb


def counts_of(millis: list[float]) -> np.ndarray:
    return np.bincount(eb.slots(np.array(millis, dtype=np.float64)), minlength=eb.WIDTH)


def bounds(scale: int, index: int) -> tuple[float, float]:
    base = 2.0 ** (2.0**-scale)
    return base**index, base ** (index + 1)


def test_each_value_lies_in_its_bucket_at_the_written_scale() -> None:
    rng = np.random.default_rng(3)
    millis = np.exp(rng.uniform(np.log(1e-3), np.log(1e5), size=500))
    for max_size in (160, 20, 4, 2):
        for value in millis[:50].tolist():
            scale, zero, offset, buckets = eb.point_buckets(counts_of([value]), max_size)
            assert zero == 0 and buckets == [1] and scale == eb.MAX_SCALE
            low, high = bounds(scale, offset)
            assert low < value * (1 + 1e-12) and value <= high * (1 + 1e-12)
        scale, zero, offset, buckets = eb.point_buckets(counts_of(millis.tolist()), max_size)
        assert len(buckets) <= max_size and sum(buckets) == millis.size
        # Downscaled: every value still in the bucket the written scale puts it in.
        index = np.ceil(np.log2(millis) * 2.0**scale) - 1
        want = np.bincount((index - offset).astype(np.int64), minlength=len(buckets))
        assert buckets == want.tolist()


def test_zero_goes_to_the_zero_bucket_and_extremes_to_the_edges() -> None:
    scale, zero, offset, buckets = eb.point_buckets(counts_of([0.0, 0.0, 1e-12, 1e12]), 1000)
    assert zero == 2 and sum(buckets) == 2 and scale == eb.MAX_SCALE
    assert offset == eb.LOW_INDEX and offset + len(buckets) - 1 == eb.HIGH_INDEX
    assert eb.point_buckets(counts_of([0.0]), 160) == (eb.MAX_SCALE, 1, 0, [])


def test_values_below_and_above_one_fit_two_buckets_at_the_smallest_scale() -> None:
    scale, _, offset, buckets = eb.point_buckets(counts_of([1e-6, 1e7]), 2)
    assert (offset, buckets) == (-1, [1, 1]) and scale >= eb.MIN_SCALE


def test_negative_indexes_downscale_by_flooring() -> None:
    # 0.3 ms and 3 ms: indexes -14 and 12 at scale 3; at max_size 4 they merge down to scale -3.
    scale, _, offset, buckets = eb.point_buckets(counts_of([0.3, 3.0]), 4)
    assert len(buckets) <= 4 and sum(buckets) == 2
    for value in (0.3, 3.0):
        index = int(np.ceil(np.log2(value) * 2.0**scale) - 1)
        assert buckets[index - offset] >= 1
