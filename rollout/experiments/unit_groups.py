"""Units of a decision log grouped by their 64-bit ``unit_key``, and outcome rows
matched to them: compiled, cache-conscious and on both cores.

At millions of rows the cost of grouping is not arithmetic but memory: one
random access into a table of millions of units misses every cache, and each
whole-array numpy pass allocates (and faults in) another array of the log's
length. Here rows are first split by the top bits of their key's hash into
partitions small enough that a partition's hash table stays in cache, then
each partition is grouped in one compiled pass, and the outcome rows of the
same partition (split the same way) look their unit up in its table while it
is still in cache. One table per thread serves partition after partition;
the partitions are shared between two threads (the kernels release the GIL).

The keys are hashes already (BLAKE2b of the unit id), but they are multiplied
by an odd constant before their bits are used, so that keys written by
something else (say, small consecutive integers) still spread.

Computation only (numpy and numba); numba caches the compiled kernels in this
package's ``__pycache__`` (or its user cache directory), so a process after the
first loads them instead of compiling.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import numpy as np
from numba import njit

# 2**64 / golden ratio, odd: multiplying by it permutes the 64-bit keys, and its
# high bits spread even clustered keys (Fibonacci hashing).
_SPREAD = 0x9E3779B97F4A7C15
# Decision rows per partition aimed at: a partition's table (16 bytes a slot,
# twice the rows) then fits in 1 MB of L2.
_ROWS_PER_PARTITION = 1 << 15
_MAX_PARTITION_BITS = 14
_THREADS = 2

_T = TypeVar("_T")


@dataclass(frozen=True)
class UnitMatch:
    """Decision rows grouped by unit key, and outcome rows matched to the units.

    Units have dense codes 0..n_units-1: ``keys`` the unit keys in code order;
    ``first`` each unit's minimum of its rows' ``packed`` values; ``crossovers``
    the number of units whose rows are in more than one arm; ``outcome_codes``
    each outcome row's unit code, -1 where no decision row has its key.
    """

    keys: np.ndarray
    first: np.ndarray
    crossovers: int
    outcome_codes: np.ndarray

    @property
    def n_units(self) -> int:
        return int(self.keys.size)


def match_units(keys: np.ndarray, packed: np.ndarray, arm: np.ndarray,
                outcome_keys: np.ndarray) -> UnitMatch:
    """Group decision rows by ``keys`` (int64): per unit the rows' minimum
    ``packed`` value and whether they span more than one ``arm``; and find each
    of ``outcome_keys`` among the units.

    Units get dense codes partition by partition, in first-seen order within
    one; no figure depends on the order of units.
    """
    keys = np.ascontiguousarray(keys, dtype=np.int64)
    packed = np.ascontiguousarray(packed, dtype=np.int64)
    arm = np.ascontiguousarray(arm, dtype=np.int64)
    outcome_keys = np.ascontiguousarray(outcome_keys, dtype=np.int64)
    rows, events = keys.size, outcome_keys.size
    partition_bits = min(_MAX_PARTITION_BITS,
                         max(0, (rows // _ROWS_PER_PARTITION).bit_length()))
    partitions = 1 << partition_bits
    # Both sides are copied into partition order first (each row read once,
    # written to one of a few hundred sequential streams), so that grouping and
    # probing read memory in order.
    bounds = np.zeros(partitions + 1, dtype=np.int64)
    by_part = (np.empty(rows, dtype=np.int64), np.empty(rows, dtype=np.int64),
               np.empty(rows, dtype=np.int64))
    outcome_bounds = np.zeros(partitions + 1, dtype=np.int64)
    outcome_part = np.empty(events, dtype=np.int32)
    outcome_by_part = (np.empty(events, dtype=np.int64), np.empty(events, dtype=np.int64))
    _on_threads([
        lambda: _partition_rows(keys, packed, arm, partition_bits, bounds, *by_part),
        lambda: _partition_events(outcome_keys, partition_bits, outcome_bounds, outcome_part,
                                  *outcome_by_part)])
    largest = int(np.diff(bounds).max()) if rows else 0
    # sized by rows, an upper bound of a partition's units: at most half full
    table_bits = max(1, (2 * largest - 1).bit_length())
    # The n-th new key of partition p is stored at bounds[p] + n (a partition
    # has no more units than rows); the units are gathered up once every
    # partition is counted.
    unit_keys = np.empty(rows, dtype=np.int64)
    unit_first = np.empty(rows, dtype=np.int64)
    unit_arm = np.empty(rows, dtype=np.int64)
    unit_mixed = np.zeros(rows, dtype=np.bool_)
    units_in = np.zeros(partitions, dtype=np.int64)
    found = np.empty(events, dtype=np.int64)
    edges = [partitions * i // _THREADS for i in range(_THREADS + 1)]
    _on_threads([
        partial(_group_and_probe, *by_part, bounds, *outcome_by_part, outcome_bounds, lo, hi,
                partition_bits, table_bits, unit_keys, unit_first, unit_arm, unit_mixed,
                units_in, found)
        for lo, hi in itertools.pairwise(edges) if hi > lo])
    offsets = np.cumsum(units_in) - units_in
    positions = np.repeat(bounds[:-1] - offsets, units_in) + np.arange(
        int(units_in.sum()), dtype=np.int64)
    _to_dense(found, outcome_part, bounds[:-1] - offsets)
    return UnitMatch(
        keys=unit_keys[positions], first=unit_first[positions],
        crossovers=int(np.count_nonzero(unit_mixed[positions])), outcome_codes=found)


def load_compiled() -> None:
    """Load the compiled code of :func:`match_units` (from numba's cache, else
    compile it) by matching a few keys: the first call in a process pays for
    it, and a caller may do so while it waits on something else."""
    keys = np.arange(4, dtype=np.int64)
    match_units(keys, keys, keys % 2, keys)


def _on_threads(jobs: list[Callable[[], _T]]) -> list[_T]:
    """Each job's result; the jobs run side by side (the kernels release the GIL)."""
    if len(jobs) < 2:
        return [job() for job in jobs]
    with ThreadPoolExecutor(max_workers=min(_THREADS, len(jobs))) as pool:
        return [f.result() for f in [pool.submit(job) for job in jobs]]


@njit(cache=True, nogil=True, inline="always")  # type: ignore[misc]
def _hash(key: np.int64) -> np.uint64:  # pragma: no cover - compiled
    return np.uint64(key) * np.uint64(_SPREAD)


@njit(cache=True, nogil=True, inline="always")  # type: ignore[misc]
def _slot(hashed: np.uint64, partition_bits: int, table_bits: int
          ) -> np.int64:  # pragma: no cover - compiled
    # the bits below the partition's: the partition's own rows spread over them
    return np.int64((hashed << np.uint64(partition_bits)) >> np.uint64(64 - table_bits))


@njit(cache=True, nogil=True)  # type: ignore[misc]
def _partition_of(keys: np.ndarray, partition_bits: int, bounds: np.ndarray,
                  part: np.ndarray) -> None:  # pragma: no cover - compiled
    """Each key's partition (the top bits of its hash) in ``part``, and
    ``bounds[p]:bounds[p+1]`` the slice partition ``p`` will take."""
    if partition_bits == 0:
        part[:] = 0
        bounds[1] = keys.size
        return
    shift = np.uint64(64 - partition_bits)
    for i in range(keys.size):
        home = np.int32(_hash(keys[i]) >> shift)
        part[i] = home
        bounds[home + 1] += 1
    for p in range(bounds.size - 1):
        bounds[p + 1] += bounds[p]


@njit(cache=True, nogil=True)  # type: ignore[misc]
def _partition_rows(keys: np.ndarray, packed: np.ndarray, arm: np.ndarray,
                    partition_bits: int, bounds: np.ndarray, keys_out: np.ndarray,
                    packed_out: np.ndarray, arm_out: np.ndarray) -> None:  # pragma: no cover
    part = np.empty(keys.size, dtype=np.int32)
    _partition_of(keys, partition_bits, bounds, part)
    filled = bounds[:-1].copy()
    for i in range(keys.size):
        at = filled[part[i]]
        filled[part[i]] = at + 1
        keys_out[at] = keys[i]
        packed_out[at] = packed[i]
        arm_out[at] = arm[i]


@njit(cache=True, nogil=True)  # type: ignore[misc]
def _partition_events(keys: np.ndarray, partition_bits: int, bounds: np.ndarray,
                      part: np.ndarray, keys_out: np.ndarray,
                      index_out: np.ndarray) -> None:  # pragma: no cover - compiled
    _partition_of(keys, partition_bits, bounds, part)
    filled = bounds[:-1].copy()
    for i in range(keys.size):
        at = filled[part[i]]
        filled[part[i]] = at + 1
        keys_out[at] = keys[i]
        index_out[at] = i


@njit(cache=True, nogil=True)  # type: ignore[misc]
def _group_and_probe(keys: np.ndarray, packed: np.ndarray, arm: np.ndarray,
                     bounds: np.ndarray, outcome_keys: np.ndarray, outcome_index: np.ndarray,
                     outcome_bounds: np.ndarray, lo: int, hi: int, partition_bits: int,
                     table_bits: int, unit_keys: np.ndarray, unit_first: np.ndarray,
                     unit_arm: np.ndarray, unit_mixed: np.ndarray, units_in: np.ndarray,
                     found: np.ndarray) -> None:  # pragma: no cover - compiled
    """Partitions ``lo`` to ``hi``: their units (at ``bounds[p] + n``), and each
    of their outcome rows' unit as that position (-1: none)."""
    size = 1 << table_bits
    mask = size - 1
    slot_keys = np.empty(size, dtype=np.int64)
    slot_codes = np.full(size, -1, dtype=np.int64)
    for p in range(lo, hi):
        start = bounds[p]
        n = 0
        for i in range(bounds[p], bounds[p + 1]):
            key = keys[i]
            s = _slot(_hash(key), partition_bits, table_bits)
            while True:
                code = slot_codes[s]
                if code < 0:
                    code = start + n
                    n += 1
                    slot_keys[s] = key
                    slot_codes[s] = code
                    unit_keys[code] = key
                    unit_first[code] = packed[i]
                    unit_arm[code] = arm[i]
                    break
                if slot_keys[s] == key:
                    if packed[i] < unit_first[code]:
                        unit_first[code] = packed[i]
                    if arm[i] != unit_arm[code]:
                        unit_mixed[code] = True
                    break
                s = (s + 1) & mask
        units_in[p] = n
        for j in range(outcome_bounds[p], outcome_bounds[p + 1]):
            key = outcome_keys[j]
            s = _slot(_hash(key), partition_bits, table_bits)
            result = -1
            while True:
                code = slot_codes[s]
                if code < 0:
                    break
                if slot_keys[s] == key:
                    result = code
                    break
                s = (s + 1) & mask
            found[outcome_index[j]] = result
        slot_codes[:] = -1  # an empty table for the next partition (it is in cache)


@njit(cache=True, nogil=True)  # type: ignore[misc]
def _to_dense(found: np.ndarray, part: np.ndarray,
              shift: np.ndarray) -> None:  # pragma: no cover - compiled
    """A unit's position ``bounds[p] + n`` becomes its dense code ``offset[p] + n``."""
    for i in range(found.size):
        if found[i] >= 0:
            found[i] -= shift[part[i]]
