"""Deterministic assignment of randomization units to buckets and arms.

Pure functions, no I/O. The hash is part of the product's contract: every
implementation (this scalar path, the vectorized path below, any future SDK in
another language) must reproduce ``tests/golden/assignment_v1.csv`` exactly.

Hash version 1::

    state  = FNV-1a 64 over UTF-8(salt), then over the byte 0x00,
             then over UTF-8(unit_id)
    mixed  = murmur3 fmix64(state)
    bucket = mixed mod 10_000

FNV-1a is trivial to vectorize byte column by byte column; its low bits mix
poorly, so the fmix64 finalizer spreads every input bit over the whole word
before the modulo. The 0x00 separator cannot occur in a salt (salts are
validated to ``[A-Za-z0-9_.:-]``), so ``("a", "bc")`` and ``("ab", "c")``
never collide by construction.

Arms own bucket *ranges*: raising a treatment arm's weight only adds buckets
to it, so a unit already on a canary stays there while it ramps (monotone
ramp); setting its weight to 0 empties its range (rollback).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pyarrow as pa

HASH_VERSION = 1
BUCKETS = 10_000

_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_FNV_OFFSET = 0xCBF2_9CE4_8422_2325
_FNV_PRIME = 0x0000_0100_0000_01B3
_FMIX_C1 = 0xFF51_AFD7_ED55_8CCD
_FMIX_C2 = 0xC4CE_B9FE_1A85_EC53


def _fnv1a(state: int, data: bytes) -> int:
    for byte in data:
        state = ((state ^ byte) * _FNV_PRIME) & _MASK64
    return state


def _fmix64(value: int) -> int:
    value ^= value >> 33
    value = (value * _FMIX_C1) & _MASK64
    value ^= value >> 33
    value = (value * _FMIX_C2) & _MASK64
    value ^= value >> 33
    return value


def salt_state(salt: str) -> int:
    """FNV-1a state after ``salt`` and the 0x00 separator.

    Precompute it once per experiment; :func:`bucket_from_state` then hashes
    only the unit's bytes on the request path.
    """
    return _fnv1a(_fnv1a(_FNV_OFFSET, salt.encode("utf-8")), b"\x00")


def bucket_from_state(state: int, unit_id: str) -> int:
    """Bucket in ``[0, 10000)`` of ``unit_id`` given a precomputed salt state."""
    return _fmix64(_fnv1a(state, unit_id.encode("utf-8"))) % BUCKETS


def hash_from_state(state: int, unit_id: str) -> int:
    """The 64-bit mixed hash of ``unit_id`` given a salt state: its residue mod
    10,000 is :func:`bucket_from_state`, and :func:`second_bucket` reads a
    second, independent bucket from its next digits."""
    return _fmix64(_fnv1a(state, unit_id.encode("utf-8")))


def second_bucket(mixed: int) -> int:
    """A second bucket from one 64-bit hash, ``(mixed // 10000) % 10000``: for
    a uniform 64-bit value it is independent of ``mixed % 10000`` (the two are
    the low two base-10,000 digits), so one hash gives an experiment both its
    arm bucket and its coverage bucket."""
    return (mixed // BUCKETS) % BUCKETS


def bucket(salt: str, unit_id: str) -> int:
    """Bucket in ``[0, 10000)`` of ``unit_id`` under ``salt`` (hash version 1).

    >>> bucket("exp-1", "user-42") == bucket("exp-1", "user-42")
    True
    """
    return bucket_from_state(salt_state(salt), unit_id)


def buckets_vectorized(salt: str, unit_ids: Sequence[str] | pa.Array) -> npt.NDArray[np.int64]:
    """Buckets of many units at once; agrees with :func:`bucket` on every unit."""
    return (hashes_vectorized(salt, unit_ids) % np.uint64(BUCKETS)).astype(np.int64)


def second_buckets_vectorized(salt: str, unit_ids: Sequence[str] | pa.Array
                              ) -> npt.NDArray[np.int64]:
    """:func:`second_bucket` of many units at once."""
    mixed = hashes_vectorized(salt, unit_ids)
    return ((mixed // np.uint64(BUCKETS)) % np.uint64(BUCKETS)).astype(np.int64)


def hashes_vectorized(salt: str, unit_ids: Sequence[str] | pa.Array) -> npt.NDArray[np.uint64]:
    """:func:`hash_from_state` of many units at once (uint64, in input order).

    Works column by column over the UTF-8 bytes of all units, with units sorted
    by length so each column is a contiguous prefix: about ``max_len`` numpy
    passes over the array instead of one Python loop per unit.
    """
    array = unit_ids if isinstance(unit_ids, pa.Array) else pa.array(unit_ids, type=pa.string())
    if isinstance(array, pa.ChunkedArray):  # pragma: no cover - callers pass plain arrays
        array = array.combine_chunks()
    array = array.cast(pa.large_binary())
    n = len(array)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    if array.null_count:
        raise ValueError("unit ids must not be null")
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset : array.offset + n + 1]
    data = (
        np.frombuffer(data_buffer, dtype=np.uint8)
        if data_buffer is not None
        else np.zeros(0, dtype=np.uint8)
    )
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    order = np.argsort(-lengths, kind="stable")
    sorted_starts = starts[order]
    sorted_lengths = lengths[order]
    state = np.full(n, np.uint64(salt_state(salt)), dtype=np.uint64)
    prime = np.uint64(_FNV_PRIME)
    max_len = int(sorted_lengths[0])
    # active[k] = how many units have more than k bytes (a prefix, thanks to the sort)
    active_counts = np.searchsorted(-sorted_lengths, -np.arange(max_len), side="left")
    with np.errstate(over="ignore"):
        for k in range(max_len):
            count = int(active_counts[k])
            column = data[sorted_starts[:count] + k].astype(np.uint64)
            state[:count] = (state[:count] ^ column) * prime
        mixed = state
        mixed ^= mixed >> np.uint64(33)
        mixed *= np.uint64(_FMIX_C1)
        mixed ^= mixed >> np.uint64(33)
        mixed *= np.uint64(_FMIX_C2)
        mixed ^= mixed >> np.uint64(33)
    result = np.empty(n, dtype=np.uint64)
    result[order] = mixed
    return result


@dataclass(frozen=True, slots=True)
class BucketRange:
    """Half-open range ``[start, stop)`` of buckets."""

    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def __contains__(self, value: object) -> bool:
        return isinstance(value, int) and self.start <= value < self.stop


@dataclass(frozen=True, slots=True)
class Allocation:
    """Which bucket ranges each arm owns; arm 0 is the control (baseline).

    Built by :func:`allocate`. ``arm_of`` maps a bucket to an arm index in
    O(number of ranges), which is a handful.
    """

    arm_names: tuple[str, ...]
    ranges: tuple[tuple[BucketRange, ...], ...]
    lookup_starts: tuple[int, ...]
    lookup_arms: tuple[int, ...]

    def arm_of(self, bucket_value: int) -> int:
        """Index of the arm that owns ``bucket_value``."""
        starts = self.lookup_starts
        lo, hi = 0, len(starts)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if starts[mid] <= bucket_value:
                lo = mid
            else:
                hi = mid
        return self.lookup_arms[lo]

    def arms_of(self, buckets: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Vectorized :meth:`arm_of`."""
        starts = np.asarray(self.lookup_starts, dtype=np.int64)
        arms = np.asarray(self.lookup_arms, dtype=np.int64)
        return arms[np.searchsorted(starts, buckets, side="right") - 1]

    def share(self, arm_index: int) -> int:
        """Buckets owned by an arm (basis points of traffic)."""
        return sum(len(r) for r in self.ranges[arm_index])


def allocate(arm_names: Sequence[str], weights_bp: Sequence[int]) -> Allocation:
    """Lay arms out on the 10,000 buckets.

    Arm 0 is the control and owns every bucket no other arm owns. The ``m``
    treatment arms each get a lane of ``10000 // m`` buckets and fill it from
    the lane's start, so raising one treatment's weight only adds buckets to
    it and leaves every other arm's units alone. When a treatment's weight is
    larger than its lane (e.g. two treatments at 60% and 20%), treatments are
    packed one after another instead; that layout is still deterministic but
    changing such weights reassigns units, as it must.

    >>> a = allocate(["control", "canary"], [9900, 100])
    >>> a.ranges[1]
    (BucketRange(start=0, stop=100),)
    """
    if len(arm_names) != len(weights_bp) or not arm_names:
        raise ValueError("need one weight per arm and at least one arm")
    if any(w < 0 for w in weights_bp) or sum(weights_bp) != BUCKETS:
        raise ValueError(f"weights must be non-negative and sum to {BUCKETS} basis points")
    treatments = list(weights_bp[1:])
    owned: list[list[BucketRange]] = [[] for _ in arm_names]
    if treatments:
        lane = BUCKETS // len(treatments)
        if all(w <= lane for w in treatments):
            for i, w in enumerate(treatments):
                if w:
                    owned[i + 1].append(BucketRange(i * lane, i * lane + w))
        else:
            cursor = 0
            for i, w in enumerate(treatments):
                if w:
                    owned[i + 1].append(BucketRange(cursor, cursor + w))
                cursor += w
    taken = sorted((r for rs in owned[1:] for r in rs), key=lambda r: r.start)
    cursor = 0
    for r in taken:
        if r.start > cursor:
            owned[0].append(BucketRange(cursor, r.start))
        cursor = r.stop
    if cursor < BUCKETS:
        owned[0].append(BucketRange(cursor, BUCKETS))
    segments = sorted((r.start, i) for i, rs in enumerate(owned) for r in rs)
    return Allocation(
        arm_names=tuple(arm_names),
        ranges=tuple(tuple(sorted(rs, key=lambda r: r.start)) for rs in owned),
        lookup_starts=tuple(s for s, _ in segments),
        lookup_arms=tuple(i for _, i in segments),
    )
