"""The loading's fast paths: outcome columns are copied once (the keyed grouping
and matching is tested in test_unit_groups.py)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from rollout.experiments import data


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
