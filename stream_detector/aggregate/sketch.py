"""Approximate distinct counting for bucket features: a stable hash and HyperLogLog registers.

A scan shows up as hundreds of distinct ports in one bucket, so distinct counts must stay cheap
and bounded per (key, bucket) however many events arrive: HyperLogLog keeps 2**p one-byte
registers, merges by element-wise max (so an out-of-order event can join its bucket later) and
estimates within about 1.04 / sqrt(2**p).

The hash is computed here rather than with Python's `hash`, which is salted per process: the same
stream must give the same features in training, replay, evaluation and the service.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np

_FNV_OFFSET: Final = np.uint64(0xCBF29CE484222325)
_FNV_PRIME: Final = np.uint64(0x100000001B3)
_MIX_1: Final = np.uint64(0xFF51AFD7ED558CCD)
_MIX_2: Final = np.uint64(0xC4CEB9FE1A85EC53)
_SHIFT_33: Final = np.uint64(33)


def hash_values(values: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(uint64 hash of each value's text, whether it counts): null and "" do not count.

    Values are compared as text so that a port sent as 443 in JSON and as "443" in a CSV cell
    is one port. The hash is FNV-1a over the UTF-32 code points, one character position at a time
    across all values, then MurmurHash3's finaliser so every bit is usable as a register index.
    """
    # fromiter keeps each value whole: asarray would split equal-length JSON arrays into columns.
    raw = np.fromiter(values, dtype=object, count=len(values))
    present = (raw != None) & (raw != "")  # noqa: E711 - element-wise on an object array
    hashes = np.zeros(raw.shape[0], dtype=np.uint64)
    if present.any():
        hashes[present] = _hash_text(raw[present].astype(np.str_))
    return hashes, present


def _hash_text(text: np.ndarray) -> np.ndarray:
    width = text.dtype.itemsize // 4  # numpy gives text at least one character of room
    points = np.ascontiguousarray(text).view(np.uint32).reshape(text.shape[0], width)
    h = np.full(text.shape[0], _FNV_OFFSET, dtype=np.uint64)
    for column in points.T:
        # Shorter strings are padded with zero code points, which must not change their hash.
        h = np.where(column != 0, (h ^ column.astype(np.uint64)) * _FNV_PRIME, h)
    h ^= h >> _SHIFT_33
    h *= _MIX_1
    h ^= h >> _SHIFT_33
    h *= _MIX_2
    h ^= h >> _SHIFT_33
    return h


def register_updates(hashes: np.ndarray, precision: int) -> tuple[np.ndarray, np.ndarray]:
    """(register index, rank) per hash: the top `precision` bits pick the register, the rank is
    one more than the number of leading zeros in the remaining bits."""
    rest_bits = 64 - precision
    index = (hashes >> np.uint64(rest_bits)).astype(np.int64)
    rest = hashes & np.uint64((1 << rest_bits) - 1)
    # Bit length of `rest` by smearing its highest set bit down, then counting the ones.
    for shift in (1, 2, 4, 8, 16, 32):
        rest = rest | (rest >> np.uint64(shift))
    rank = rest_bits - np.bitwise_count(rest).astype(np.int64) + 1
    return index, rank.astype(np.uint8)


def _alpha(m: int) -> float:
    """HyperLogLog's bias correction for m registers (Flajolet et al., 2007)."""
    return {16: 0.673, 32: 0.697, 64: 0.709}.get(m, 0.7213 / (1.0 + 1.079 / m))


def estimate(registers: np.ndarray) -> np.ndarray:
    """Distinct-count estimate for each row of uint8 registers [..., m].

    Small counts use linear counting (from the number of empty registers), which is far more
    accurate there than the raw estimate; empty registers therefore estimate exactly 0.
    """
    m = registers.shape[-1]
    raw = _alpha(m) * m * m / np.exp2(-registers.astype(np.float64)).sum(axis=-1)
    zeros = (registers == 0).sum(axis=-1)
    with np.errstate(divide="ignore"):
        linear = m * np.log(m / np.maximum(zeros, 1))
    return np.where((raw <= 2.5 * m) & (zeros > 0), linear, raw)
