"""The loading's fast paths: outcome rows find their unit in a numpy hash table of
the units' keys, exactly as Arrow's ``index_in`` finds it, and outcome columns are
copied once."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from rollout.experiments import data
from rollout.experiments.data import _FREE, _home, _KeyIndex


def _reference(distinct: np.ndarray, keys: np.ndarray) -> np.ndarray:
    found = pc.index_in(pa.array(keys, type=pa.int64()),
                        value_set=pa.array(distinct, type=pa.int64()))
    return np.asarray(pc.fill_null(found, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


@pytest.mark.parametrize("seed", range(5))
def test_found_positions_are_those_of_index_in(seed: int) -> None:
    rng = np.random.default_rng(seed)
    distinct = np.unique(rng.integers(np.iinfo(np.int64).min + 1, np.iinfo(np.int64).max,
                                      3_000, dtype=np.int64))
    rng.shuffle(distinct)
    absent = rng.integers(-(1 << 62), 1 << 62, 2_000, dtype=np.int64)
    absent = absent[~np.isin(absent, distinct)]
    keys = np.concatenate([distinct[rng.integers(0, distinct.size, 10_000)], absent,
                           [_FREE]])
    rng.shuffle(keys)
    index = _KeyIndex.of(distinct)
    assert index is not None
    found = index.find(keys)
    assert found.dtype == np.int64
    np.testing.assert_array_equal(found, _reference(distinct, keys))


def test_keys_sharing_home_slots_probe_on_and_are_all_found() -> None:
    # sequential keys, strided keys and keys chosen to share one home slot: long
    # clusters of linear probing, including clusters that wrap past the last slot
    bits = max(4, (2 * 600 - 1).bit_length())
    candidates = np.arange(-(1 << 20), 1 << 20, dtype=np.int64)
    homes = _home(candidates, bits)
    crowded = candidates[np.isin(homes, [0, (1 << bits) - 1])][:200]
    distinct = np.unique(np.concatenate([crowded, np.arange(200, dtype=np.int64),
                                         np.arange(200, dtype=np.int64) << 40]))[:600]
    index = _KeyIndex.of(distinct)
    assert index is not None and index.bits == bits
    assert int(np.count_nonzero(index.slot_keys != _FREE)) == distinct.size
    np.testing.assert_array_equal(index.find(distinct), np.arange(distinct.size))
    missing = candidates[np.isin(homes, [0, 1, (1 << bits) - 1])]
    missing = missing[~np.isin(missing, distinct)][:300]
    np.testing.assert_array_equal(index.find(missing), -1)


def test_empty_inputs_and_the_free_marker() -> None:
    empty = _KeyIndex.of(np.zeros(0, dtype=np.int64))
    assert empty is not None
    np.testing.assert_array_equal(empty.find(np.array([1, _FREE], dtype=np.int64)), [-1, -1])
    assert empty.find(np.zeros(0, dtype=np.int64)).size == 0
    # a unit whose key is the free-slot marker leaves the matching to Arrow
    assert _KeyIndex.of(np.array([3, _FREE], dtype=np.int64)) is None


def test_outcome_columns_are_kept_chunk_by_chunk_as_one_filtered_copy() -> None:
    ticks = [[5, 6, 7], [], [8, 9]]
    times = pa.chunked_array([pa.array(c, type=pa.int64()).cast(pa.timestamp("us", tz="UTC"))
                              for c in ticks])
    values = pa.chunked_array([[0.5, -1.0, 2.0], [], [3.0, 4.0]], type=pa.float64())
    codes = pa.chunked_array([[0, 1, 0], [], [1, 1]], type=pa.int32())
    keep = np.array([True, False, True, False, True])
    np.testing.assert_array_equal(data._kept(times, keep, np.int64), [5, 7, 9])
    np.testing.assert_array_equal(data._kept(times, None, np.int64), [5, 6, 7, 8, 9])
    np.testing.assert_array_equal(data._kept(values, keep, np.float64), [0.5, 2.0, 4.0])
    kept = data._kept(codes, keep, np.int64)
    assert kept.dtype == np.int64
    np.testing.assert_array_equal(kept, [0, 0, 1])
    table = pa.table({"metric": pa.chunked_array([["m", "x", "n"], [], ["n", "m"]]),
                      "value": values, "timestamp": times, "received_at": times})
    rows = data._outcome_rows(table, np.array([3, -1, 0, 2, -1]), ("m", "n"))
    np.testing.assert_array_equal(rows.unit, [3, 0, 2])
    np.testing.assert_array_equal(rows.metric, [0, 1, 1])
    np.testing.assert_array_equal(rows.value, [0.5, 2.0, 3.0])
    np.testing.assert_array_equal(rows.at, [5, 7, 8])
    assert rows.received is not None
    np.testing.assert_array_equal(rows.received, [5, 7, 8])
