"""Consistent probability sampling against the OpenTelemetry specification's own vectors."""

from __future__ import annotations

import math

import numpy as np
import pytest

from otelai.decision.sampling import (
    MAX_ADJUSTED_COUNT,
    NEVER_SAMPLE,
    apply_explicit_randomness,
    decode_threshold,
    encode_threshold,
    incoming_thresholds,
    keep_mask,
    ot_fields,
    probability,
    randomness,
    threshold_for,
    with_threshold,
    with_thresholds,
)

# tracestate-probability-sampling.md, "Converting floating-point probability to threshold value":
# th for 1-in-N sampling at precision 3, 4 and 5.
SPEC_TABLE = {
    1.0: ("0", "0", "0"),
    0.5: ("8", "8", "8"),
    1 / 3: ("aab", "aaab", "aaaab"),
    0.25: ("c", "c", "c"),
    0.2: ("ccd", "cccd", "ccccd"),
    0.125: ("e", "e", "e"),
    0.1: ("e66", "e666", "e6666"),
    0.0625: ("f", "f", "f"),
    0.01: ("fd71", "fd70a", "fd70a4"),
    0.001: ("ffbe7", "ffbe77", "ffbe76d"),
    0.0001: ("fff972", "fff9724", "fff97247"),
    0.00001: ("ffff584", "ffff583a", "ffff583a5"),
    0.000001: ("ffffef4", "ffffef39", "ffffef391"),
}


@pytest.mark.parametrize(("rate", "expected"), SPEC_TABLE.items())
def test_thresholds_match_the_specification_table(rate: float, expected: tuple[str, str, str]) -> None:
    got = tuple(encode_threshold(threshold_for(rate, precision=p)) for p in (3, 4, 5))
    assert got == expected


def test_full_precision_thresholds() -> None:
    assert threshold_for(0.5, precision=None) == 1 << 55
    assert threshold_for(0.25, precision=None) == 3 << 54
    assert threshold_for(1 / 3, precision=None) == MAX_ADJUSTED_COUNT - round(MAX_ADJUSTED_COUNT / 3)
    assert encode_threshold(threshold_for(1 / 3, precision=None)) == "aaaaaaaaaaaaac"
    assert threshold_for(0.1, precision=None) == MAX_ADJUSTED_COUNT - round(0.1 * MAX_ADJUSTED_COUNT)
    # The specification's 1% example: (1 - 0.01) * 2^56 with 5 digits is 0xfd70a400000000.
    assert threshold_for(0.01, precision=5) == 0xFD70A400000000 == 71337018784743424


def test_rate_edges() -> None:
    assert threshold_for(1.0) == 0
    assert threshold_for(0.0) == NEVER_SAMPLE
    assert threshold_for(2.0**-58) == NEVER_SAMPLE
    assert threshold_for(2.0**-56, precision=None) == MAX_ADJUSTED_COUNT - 1
    for bad in (-0.1, 1.5, math.nan):
        with pytest.raises(ValueError):
            threshold_for(bad)
    with pytest.raises(ValueError):
        encode_threshold(NEVER_SAMPLE)
    assert probability(threshold_for(0.05)) == pytest.approx(0.05, rel=1e-4)


def test_encode_and_decode() -> None:
    assert encode_threshold(0) == "0"
    assert encode_threshold(1 << 55) == "8"
    assert encode_threshold(1 << 48) == "01"  # leading zeros are significant
    assert encode_threshold(MAX_ADJUSTED_COUNT - 1) == "ffffffffffffff"
    assert decode_threshold("8") == 1 << 55
    assert decode_threshold("01") == 1 << 48
    assert decode_threshold("fd70a4") == 0xFD70A400000000
    for bad in ("", "g", "fffffffffffffff", "-1"):
        assert decode_threshold(bad) is None


def test_randomness_is_the_low_56_bits() -> None:
    ids = np.zeros((3, 16), dtype=np.uint8)
    ids[0, 9:] = [0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC, 0xDE]
    ids[1, :] = 0xFF  # byte 8 must not leak into the randomness
    ids[2, 9] = 0x80
    r = randomness(ids)
    assert r.dtype == np.uint64
    assert r.tolist() == [0x123456789ABCDE, (1 << 56) - 1, 1 << 55]
    assert randomness(np.zeros((0, 16), dtype=np.uint8)).shape == (0,)
    # Works on a non-contiguous view too (rows picked out of a bigger buffer).
    big = np.arange(64, dtype=np.uint8).reshape(4, 16)
    assert randomness(big[::2]).tolist() == [int.from_bytes(bytes(row[9:]), "big") for row in big[::2]]
    with pytest.raises(ValueError):
        randomness(np.zeros((2, 8), dtype=np.uint8))


def test_w3c_example_trace_id() -> None:
    # The trace id of the W3C Trace Context examples; its low 56 bits are 0xce929d0e0e4736.
    ids = np.frombuffer(bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"), dtype=np.uint8).reshape(1, 16)
    r = randomness(ids)
    assert int(r[0]) == 0xCE929D0E0E4736
    assert keep_mask(r, threshold_for(0.5)).tolist() == [True]
    assert keep_mask(r, threshold_for(0.1)).tolist() == [False]


def test_same_trace_same_decision_across_batches_and_replicas() -> None:
    rng = np.random.default_rng(7)
    traces = rng.integers(0, 256, size=(500, 16), dtype=np.uint8)
    threshold = threshold_for(0.05)
    reference = keep_mask(randomness(traces), threshold)
    # Spans of the traces arrive shuffled, duplicated and split over batches of varying size.
    spans = rng.integers(0, 500, size=5000)
    start = 0
    for size in (1, 17, 999, 3983):
        batch = spans[start : start + size]
        start += size
        decided = keep_mask(randomness(traces[batch]), threshold_for(0.05))
        assert np.array_equal(decided, reference[batch])


@pytest.mark.parametrize("rate", [0.05, 0.5, 0.01])
def test_kept_fraction_within_binomial_bounds(rate: float) -> None:
    n = 100_000
    ids = np.random.default_rng(42).integers(0, 256, size=(n, 16), dtype=np.uint8)
    threshold = threshold_for(rate)
    kept = int(keep_mask(randomness(ids), threshold).sum())
    p = probability(threshold)
    sigma = math.sqrt(n * p * (1 - p))
    assert abs(kept - n * p) < 5 * sigma


def test_keep_mask_monotone_in_rate() -> None:
    ids = np.random.default_rng(3).integers(0, 256, size=(2000, 16), dtype=np.uint8)
    r = randomness(ids)
    low, high = keep_mask(r, threshold_for(0.1)), keep_mask(r, threshold_for(0.3))
    # Consistency: kept at a lower probability implies kept at any higher one.
    assert np.all(high[low])
    assert keep_mask(r, 0).all()
    assert not keep_mask(r, NEVER_SAMPLE).any()
    per_item = np.full(r.shape, threshold_for(0.1), dtype=np.uint64)
    assert np.array_equal(keep_mask(r, per_item), low)


def test_explicit_randomness_overrides_the_trace_id() -> None:
    ids = np.zeros((3, 16), dtype=np.uint8)  # R = 0: never kept below 100%
    r = randomness(ids)
    states = ["ot=rv:fffffffffffff0;th:8,vendor=x", "ot=rv:123"]  # second rv is invalid
    out = apply_explicit_randomness(r, np.array([0, 2]), states)
    assert out.tolist() == [0xFFFFFFFFFFFFF0, 0, 0]
    assert r.tolist() == [0, 0, 0]  # the input is not modified
    assert keep_mask(out, threshold_for(0.5)).tolist() == [True, False, False]


def test_ot_fields() -> None:
    assert ot_fields("") == (None, None)
    assert ot_fields("ot=th:8") == (1 << 55, None)
    assert ot_fields("a=1, ot=th:c;rv:00000000000001 ,b=2") == (3 << 54, 1)
    assert ot_fields("ot=th:xyz") == (None, None)
    assert ot_fields("ot=th:8;;") == (None, None)  # malformed ot value: ignored whole
    assert incoming_thresholds(["", "ot=th:8", "ot=th:0"]).tolist() == [0, 1 << 55, 0]


@pytest.mark.parametrize(
    ("before", "threshold", "after"),
    [
        ("", 1 << 55, "ot=th:8"),
        ("", 0, "ot=th:0"),
        # other vendors keep their order; the modified ot entry moves to the front
        (
            "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
            1 << 55,
            "ot=th:8,congo=t61rcWkgMzE,rojo=00f067aa0ba902b7",
        ),
        ("congo=1,ot=p:8;r:62,rojo=2", 3 << 54, "ot=p:8;r:62;th:c,congo=1,rojo=2"),
        # an existing, less strict th is replaced; other ot sub-keys stay
        ("rojo=2,ot=th:8;rv:fffffffffffff0", 3 << 54, "ot=rv:fffffffffffff0;th:c,rojo=2"),
        # an existing stricter (larger) th is kept as it is: a downstream stage cannot lower it
        ("rojo=2,ot=th:c", 1 << 55, "rojo=2,ot=th:c"),
        ("ot=th:c", 0, "ot=th:c"),
        ("ot=th:8", 1 << 55, "ot=th:8"),
        # an invalid th is erased and replaced
        ("ot=th:zz;x:1", 1 << 55, "ot=x:1;th:8"),
        # a malformed ot value is not ours to fix: left untouched
        ("ot=Bad Value", 1 << 55, "ot=Bad Value"),
        # optional whitespace and empty members are dropped when the list is rewritten
        (" a=1 ,, \tb=2", 1 << 55, "ot=th:8,a=1,b=2"),
    ],
)
def test_with_threshold(before: str, threshold: int, after: str) -> None:
    assert with_threshold(before, threshold) == after


def test_with_threshold_keeps_at_most_32_members() -> None:
    members = [f"v{i}=x" for i in range(32)]
    out = with_threshold(",".join(members), 1 << 55).split(",")
    assert len(out) == 32
    assert out[0] == "ot=th:8"
    assert out[1:] == members[:31]  # the right-most member made room


def test_with_threshold_respects_the_ot_length_limit() -> None:
    filler = "x:" + "a" * 250  # 252 characters of other ot sub-keys
    assert with_threshold(f"ot={filler}", 1 << 55) == f"ot={filler}"  # would not fit: aborted
    # When it would not fit over an older, lower th, that th is erased: unknown probability.
    assert with_threshold(f"ot={filler};th:1", 1 << 55) == f"ot={filler}"


def test_with_thresholds_batch() -> None:
    states = ["", "", "ot=th:c", "a=1"]
    assert with_thresholds(states, 1 << 55) == ["ot=th:8", "ot=th:8", "ot=th:c", "ot=th:8,a=1"]
    per_item = np.array([0, 1 << 55, 0, 3 << 54], dtype=np.uint64)
    assert with_thresholds(states, per_item) == ["ot=th:0", "ot=th:8", "ot=th:c", "ot=th:c,a=1"]
