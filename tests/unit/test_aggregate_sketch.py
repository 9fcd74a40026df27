"""The distinct-count sketch: a stable text hash and HyperLogLog registers and estimates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from stream_detector.aggregate.sketch import estimate, hash_values, register_updates


def _registers(values: list[object], precision: int) -> np.ndarray:
    hashes, present = hash_values(values)
    index, rank = register_updates(hashes[present], precision)
    registers = np.zeros(1 << precision, dtype=np.uint8)
    np.maximum.at(registers, index, rank)
    return registers


@settings(max_examples=60, deadline=None)
@given(
    value=st.one_of(st.text(min_size=1, max_size=40), st.integers(-(10**12), 10**12)),
    others=st.lists(st.text(max_size=60), max_size=5),
)
def test_hash_of_a_value_does_not_depend_on_its_batch(value: object, others: list[str]) -> None:
    # Shorter strings are zero-padded to the batch's longest one; padding must not leak in.
    alone = hash_values([value])[0][0]
    assert hash_values([*others, value])[0][-1] == alone


def _reference_hash(text: str) -> int:
    """FNV-1a over code points (zeros skipped, as padding is), then MurmurHash3's fmix64."""
    mask = (1 << 64) - 1
    h = 0xCBF29CE484222325
    for point in map(ord, text):
        if point:
            h = ((h ^ point) * 0x100000001B3) & mask
    for multiplier in (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53):
        h ^= h >> 33
        h = (h * multiplier) & mask
    return h ^ (h >> 33)


@settings(max_examples=60, deadline=None)
@given(texts=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=8))
@example(texts=["\0", "a\0b", "ü€😀"])
def test_hash_matches_a_plain_python_reference(texts: list[str]) -> None:
    # A fixed function of the text, unlike Python's per-process salted hash().
    hashes, present = hash_values(texts)
    assert present.all()
    assert [int(h) for h in hashes] == [_reference_hash(t) for t in texts]


def test_values_compare_as_text_and_null_or_empty_do_not_count() -> None:
    hashes, present = hash_values(["10.0.0.1", 443, "443", None, "", "443"])
    assert present.tolist() == [True, True, True, False, False, True]
    assert hashes[1] == hashes[2] == hashes[5]
    assert hashes[0] != hashes[1]


def test_rank_counts_leading_zeros_after_the_register_bits() -> None:
    precision = 4
    hashes = np.array(
        [
            (3 << 60) | (1 << 59),  # register 3, first remaining bit set: rank 1
            (5 << 60) | 1,  # register 5, 59 zeros then a one: rank 60
            7 << 60,  # register 7, remaining bits all zero: rank 61 (the maximum)
        ],
        dtype=np.uint64,
    )
    index, rank = register_updates(hashes, precision)
    assert index.tolist() == [3, 5, 7]
    assert rank.tolist() == [1, 60, 61]


@pytest.mark.parametrize("n", [0, 1, 2, 5, 20, 100, 1_000, 20_000])
def test_estimate_is_within_the_documented_error(n: int) -> None:
    precision = 10
    sigma = 1.04 / np.sqrt(1 << precision)
    got = float(estimate(_registers([f"host-{i}" for i in range(n)], precision)))
    assert abs(got - n) <= max(4 * sigma * n, 0.5)


def test_registers_merge_as_the_union_of_their_sets() -> None:
    left = [f"p{i}" for i in range(0, 300)]
    right = [f"p{i}" for i in range(200, 700)]
    merged = np.maximum(_registers(left, 6), _registers(right, 6))
    assert np.array_equal(merged, _registers(left + right, 6))
    # Repeats change nothing: the sketch counts distinct values, not events.
    assert np.array_equal(_registers(left * 3, 6), _registers(left, 6))


def test_empty_sketch_estimates_zero_and_rows_are_independent() -> None:
    rows = np.stack([np.zeros(64, dtype=np.uint8), _registers(["a", "b", "c"], 6)])
    got = estimate(rows)
    assert got[0] == 0.0 and abs(got[1] - 3) < 0.5
