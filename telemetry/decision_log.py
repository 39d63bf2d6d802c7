"""Append-only decision log: one Parquet row per decision, batched off the hot path.

Each writer (one per gateway replica) buffers rows in memory and a background
thread writes them as Parquet files when the buffer reaches ``batch_rows`` or
every ``flush_interval_s``, and once more on :meth:`DecisionLogWriter.close`.
Writers never share a file: names carry the writer id and a sequence number,
and each file is written under a temporary name and renamed into place, so a
reader never sees a half-written file.

Layout::

    <root>/date=YYYY-MM-DD/experiment=<id or _none>/part-<writer>-<seq>.parquet

The directory names are for humans and for pruning; every column, including
``experiment_id`` and ``timestamp``, is inside the files, so readers do not
need to parse paths (:func:`read_decisions`).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from telemetry.batched_writer import BatchedWriter, visible_parquet_files

log = logging.getLogger(__name__)

DECISION_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("unit_id", pa.string()),
        pa.field("unit_type", pa.string()),
        pa.field("experiment_id", pa.string()),
        pa.field("layer", pa.string()),
        pa.field("arm", pa.string()),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("role", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("features", pa.map_(pa.string(), pa.float64())),
        pa.field("prediction", pa.float64()),
        pa.field("latency_ms", pa.float64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        # The request's context (country, platform...): what segments are cut by.
        pa.field("context", pa.map_(pa.string(), pa.string())),
    ]
)


class DecisionRecord(NamedTuple):
    """One decision; a tuple so that appending on the request path is cheap."""

    request_id: str
    unit_id: str | None
    unit_type: str | None
    experiment_id: str | None
    layer: str | None
    arm: str | None
    model_name: str | None
    model_version: str | None
    role: str
    timestamp: float  # seconds since the epoch
    features: Mapping[str, float] | None
    prediction: float | None
    latency_ms: float | None
    status: str
    error: str | None
    context: Mapping[str, Any] | None = None


def records_to_table(records: list[DecisionRecord]) -> pa.Table:
    """Columnar table in :data:`DECISION_SCHEMA` from buffered records."""
    columns: list[tuple[Any, ...]] = (
        list(zip(*records, strict=True)) if records else [() for _ in DECISION_SCHEMA]
    )
    arrays = []
    for field, values in zip(DECISION_SCHEMA, columns, strict=True):
        if field.name == "timestamp":
            micros = [round(v * 1_000_000) for v in values]
            arrays.append(pa.array(micros, type=pa.int64()).cast(field.type))
        elif field.name == "features":
            arrays.append(_feature_maps(values, field.type))
        elif field.name == "context":
            arrays.append(_context_maps(values, field.type))
        else:
            arrays.append(pa.array(values, type=field.type))
    return pa.Table.from_arrays(arrays, schema=DECISION_SCHEMA)


def _context_maps(values: tuple[Any, ...], map_type: pa.DataType) -> pa.Array:
    """The context column: values as text (booleans as ``true``/``false``), so
    one segment column serves strings, numbers and flags alike."""
    if all(not c for c in values):
        return pa.nulls(len(values), type=map_type)
    offsets = [0]
    keys: list[str] = []
    items: list[str] = []
    valid: list[bool] = []
    for context in values:
        if not context:
            valid.append(False)
        else:
            valid.append(True)
            for key, value in context.items():
                keys.append(key)
                items.append(("true" if value else "false") if isinstance(value, bool)
                             else str(value))
        offsets.append(len(keys))
    mask = None if all(valid) else pa.array([not v for v in valid])
    return pa.MapArray.from_arrays(
        pa.array(offsets, type=pa.int32()), pa.array(keys, type=pa.string()),
        pa.array(items, type=pa.string()), type=map_type, mask=mask)


def _feature_maps(values: tuple[Any, ...], map_type: pa.DataType) -> pa.Array:
    """A map column from dicts, built from flat keys/items (several times faster
    than converting a list of lists of pairs). When every row has the same keys
    in the same order (the usual case: one model's features), keys are repeated
    and values flattened without a Python loop per row."""
    if values and all(v is not None for v in values):
        keys = tuple(values[0])
        width = len(keys)
        if all(len(v) == width for v in values) and all(tuple(v) == keys for v in values):
            n = len(values)
            return pa.MapArray.from_arrays(
                pa.array(np.arange(0, width * n + 1, width, dtype=np.int32)),
                pa.array(list(keys) * n, type=pa.string()),
                pa.array(list(itertools.chain.from_iterable(v.values() for v in values)),
                         type=pa.float64()), type=map_type)
    offsets = [0]
    keys_out: list[str] = []
    items: list[float] = []
    valid: list[bool] = []
    for features in values:
        if features is None:
            valid.append(False)
        else:
            valid.append(True)
            keys_out.extend(features.keys())
            items.extend(features.values())
        offsets.append(len(keys_out))
    mask = None if all(valid) else pa.array([not v for v in valid])
    return pa.MapArray.from_arrays(
        pa.array(offsets, type=pa.int32()), pa.array(keys_out, type=pa.string()),
        pa.array(items, type=pa.float64()), type=map_type, mask=mask)


def constant_column(value: Any, n: int, field_type: pa.DataType) -> pa.Array:
    """``n`` copies of one value (or ``n`` nulls) without a Python list of ``n`` items."""
    if value is None:
        return pa.nulls(n, type=field_type)
    return pa.repeat(pa.scalar(value, type=field_type), n)


def batch_table(n: int, columns: Mapping[str, Any]) -> pa.Table:
    """A table in :data:`DECISION_SCHEMA` from whole columns.

    Each column is a sequence or array of ``n`` values, or one value repeated;
    ``timestamp`` is seconds since the epoch (scalar or array) and ``features``
    a sequence of mappings. Columns left out are null. This is how a batch that
    is already columnar (shadow scoring) is logged without building a record
    per row.
    """
    arrays = []
    for field in DECISION_SCHEMA:
        value = columns.get(field.name)
        if field.name == "timestamp":
            micros = np.round(np.asarray(value, dtype=np.float64) * 1_000_000).astype(np.int64)
            arrays.append(pa.array(np.broadcast_to(micros, (n,)), type=pa.int64())
                          .cast(field.type))
        elif field.name == "features" and value is not None:
            arrays.append(_feature_maps(tuple(value), field.type))
        elif value is None or isinstance(value, str | int | float):
            arrays.append(constant_column(value, n, field.type))
        else:
            arrays.append(pa.array(value, type=field.type))
    return pa.Table.from_arrays(arrays, schema=DECISION_SCHEMA)


_MICROS_PER_DAY = 86_400_000_000


def partitions(table: pa.Table) -> list[tuple[str, str, pa.Table]]:
    """Split rows by (UTC date, experiment) for the directory layout, vectorized."""
    if table.num_rows == 0:
        return []
    days = table["timestamp"].cast(pa.int64()).to_numpy() // _MICROS_PER_DAY
    experiments = pc.fill_null(table["experiment_id"], "_none").combine_chunks()
    encoded = experiments.dictionary_encode()
    width = len(encoded.dictionary)
    keys = days * width + encoded.indices.to_numpy(zero_copy_only=False)
    out: list[tuple[str, str, pa.Table]] = []
    for key in np.unique(keys):
        day = (dt.date(1970, 1, 1) + dt.timedelta(days=int(key // width))).isoformat()
        experiment = str(encoded.dictionary[int(key % width)].as_py())
        rows = table if len(out) == 0 and bool((keys == key).all()) else table.filter(
            pa.array(keys == key))
        out.append((day, experiment, rows))
    return out


class DecisionLogWriter(BatchedWriter[DecisionRecord | pa.Table]):
    """Buffers decision records (and columnar batches) and writes them as Parquet
    in the background."""

    noun = "decision-log"

    def __init__(self, root: Path, writer_id: str, batch_rows: int = 5000,
                 flush_interval_s: float = 2.0) -> None:
        super().__init__(root, writer_id, batch_rows, flush_interval_s)

    def append(self, record: DecisionRecord) -> None:
        """Buffer one record; never blocks on I/O."""
        self._buffer_items((record,), 1)

    def append_table(self, table: pa.Table) -> None:
        """Buffer a batch of rows already in :data:`DECISION_SCHEMA` (see
        :func:`batch_table`); never blocks on I/O."""
        self._buffer_items((table,), table.num_rows)

    def _write(self, batch: list[DecisionRecord | pa.Table]) -> None:
        records = [item for item in batch if isinstance(item, DecisionRecord)]
        parts = ([records_to_table(records)] if records else []) + [
            item for item in batch if isinstance(item, pa.Table)]
        combined = parts[0] if len(parts) == 1 else pa.concat_tables(parts)
        for day, experiment, rows in partitions(combined):
            directory = self.root / f"date={day}" / f"experiment={experiment}"
            directory.mkdir(parents=True, exist_ok=True)
            name = self._next_name()
            tmp = directory / f".{name}.tmp"
            pq.write_table(rows, tmp, compression="zstd")
            os.replace(tmp, directory / name)


def read_decisions(path: str | Path) -> pa.Table:
    """Every decision row under ``path`` (a directory tree or one file)."""
    path = Path(path)
    if path.is_dir():
        files = visible_parquet_files(path)
        if not files:
            return DECISION_SCHEMA.empty_table()
        dataset = pads.dataset(files, format="parquet", schema=DECISION_SCHEMA)
        return dataset.to_table()
    return pq.read_table(path, schema=DECISION_SCHEMA)
