"""Append-only decision log: one Parquet row per decision, batched off the hot path.

Each writer (one per gateway replica) buffers rows in memory and a background
thread writes them as Parquet files when the buffer reaches ``batch_rows`` or
every ``flush_interval_s``, and once more on :meth:`DecisionLogWriter.close`.
With a spill directory the rows are also journaled on local disk every
``spill_interval_s`` (50 ms by default), so a SIGKILL of the replica loses at
most the last interval; the next writer on that spill directory writes what
the dead one had not (see :mod:`telemetry.batched_writer`).
Writers never share a file: names carry the writer id and the chunk's
generation (one file per partition directory and generation, the same name
when a failed chunk is retried or replayed), and a reader never sees a
half-written file (on local disk each file is
written under a temporary name and renamed into place; on an object store an
object appears only when its upload completes; see :mod:`telemetry.storage`).
The root is a local directory or a URI such as ``s3://bucket/decisions``.

Layout::

    <root>/date=YYYY-MM-DD/experiment=<id or _none>/part-<writer>-<generation>.parquet

The directory names are for humans and for pruning; every column, including
``experiment_id`` and ``timestamp``, is inside the files, so readers do not
need to parse paths (:func:`read_decisions`).

A row's request values are typed JSON (numbers, booleans, strings, nulls,
nested lists). ``features`` keeps the numeric ones (int and float, not bool)
as a ``map<string, float64>``, which replay, drift and older readers use as
they always have; ``inputs`` holds the whole row as JSON only when
``features`` cannot (a value that is not a float, or a key left out of it),
so an all-float row costs no JSON. ``prediction`` is the answer's
:attr:`~models.outputs.Prediction.score`; ``output`` the rest of the answer
as JSON ``{"value", "label", "probabilities"}``, null when the score says it
all. JSON is encoded in the journal thread (the flush thread without a
journal), never when a row is appended.
Files written before ``inputs``, ``output``, ``unit_source``,
``arm_weights``, ``forced`` and the ranking columns (``item_id``, ``item_rank``,
``position``, ``team``, ``interleaving_method``) and ``propensity`` existed read
with those columns null, and a spill journal written before a column existed is replayed with it
null (:func:`conform`).
``unit_key`` (the unit id as an int64, :mod:`telemetry.unit_keys`) is computed
by the writer's thread for every row, replayed ones included; files written
before it existed read with it null.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import itertools
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from telemetry.batched_writer import BatchedWriter, PartialWrite, WriterEvents, part_name
from telemetry.storage import LogLocation, storage_errors
from telemetry.unit_keys import unit_key_array, with_unit_keys

if TYPE_CHECKING:
    from models.outputs import Prediction

log = logging.getLogger(__name__)

DECISION_SCHEMA = pa.schema(
    [
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("unit_id", pa.string()),
        # The unit id as a 64-bit integer (telemetry.unit_keys; null with a null
        # id): analysis groups and joins on it without hashing id strings.
        pa.field("unit_key", pa.int64()),
        pa.field("unit_type", pa.string()),
        pa.field("experiment_id", pa.string()),
        pa.field("layer", pa.string()),
        pa.field("arm", pa.string()),
        pa.field("model_name", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("role", pa.string(), nullable=False),
        pa.field("timestamp", pa.timestamp("us", tz="UTC"), nullable=False),
        # The row's numeric values (int and float, not bool).
        pa.field("features", pa.map_(pa.string(), pa.float64())),
        # The answer's score: None when it is not one number.
        pa.field("prediction", pa.float64()),
        pa.field("latency_ms", pa.float64()),
        pa.field("status", pa.string(), nullable=False),
        pa.field("error", pa.string()),
        # The request's context (country, platform...): what segments are cut by.
        pa.field("context", pa.map_(pa.string(), pa.string())),
        # The row as sent, as JSON, when ``features`` does not hold all of it.
        pa.field("inputs", pa.string()),
        # {"value", "label", "probabilities"} as JSON, when more than the score.
        pa.field("output", pa.string()),
        # Where the unit id came from: body, header, param or request_id.
        pa.field("unit_source", pa.string()),
        # The experiment's split in force at this decision, "control:9000,treatment:1000"
        # (basis points, from the routing table that decided): what an analysis
        # expects each unit's arm from when the weights were ramped. One value per
        # routing table, so Parquet's dictionary pages make it nearly free.
        pa.field("arm_weights", pa.string()),
        # True when a forcing header chose the arm or version (QA traffic): such
        # rows are real answers but no experiment's evidence, so analysis leaves
        # them out. Null in files written before the column existed: not forced.
        pa.field("forced", pa.bool_()),
        # ``POST /v1/rank`` (role ``ranker``): one row per candidate item and
        # ranker, holding that ranker's version (model_name/model_version) and
        # score (prediction); ``arm`` is the ranker, ``a`` or ``b``. Null on
        # every other row. The item's id, its 1-based rank in this row's
        # ranker's own list, the 0-based position the merged list showed it at
        # (null: not shown), the ranker that contributed that position, and the
        # interleaving method. Clicks join on (request_id, item_id) or
        # (request_id, position); the rows with ``arm == team`` are the list shown.
        pa.field("item_id", pa.string()),
        pa.field("item_rank", pa.int32()),
        pa.field("position", pa.int32()),
        pa.field("team", pa.string()),
        pa.field("interleaving_method", pa.string()),
        # Under a bandit experiment, the probability the unit was assigned the
        # arm that served it: its arm's share of the buckets in the routing
        # table that decided (times the coverage below 100%), which
        # inverse-propensity analysis weighs by. Null elsewhere, forced rows
        # included, and in files written before the column existed.
        pa.field("propensity", pa.float64()),
    ]
)

RANKER_ROLE = "ranker"
"""The role of a ``POST /v1/rank`` row. Readers of served decisions keep role
``primary`` only, so ranker rows never count as an A/B experiment's exposures."""


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
    features: Mapping[str, Any] | None  # the row as the client sent it (JSON values)
    prediction: float | None  # the answer's score
    latency_ms: float | None
    status: str
    error: str | None
    context: Mapping[str, Any] | None = None
    output: Prediction | None = None  # the whole answer
    unit_source: str | None = None
    arm_weights: str | None = None  # the experiment's split in force
    forced: bool = False  # chosen by a forcing header, not by routing
    propensity: float | None = None  # the arm's assignment probability under a bandit


def records_to_table(records: list[DecisionRecord]) -> pa.Table:
    """Columnar table in :data:`DECISION_SCHEMA` from buffered records."""
    transposed: list[tuple[Any, ...]] = (
        list(zip(*records, strict=True)) if records
        else [() for _ in DecisionRecord._fields])
    columns: dict[str, Any] = dict(zip(DecisionRecord._fields, transposed, strict=True))
    columns["context"] = _context_maps(columns["context"], DECISION_SCHEMA.field("context").type)
    return batch_table(len(records), columns)


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


def _json_default(value: Any) -> Any:
    """What orjson cannot write itself. Anything unknown becomes its text: one
    odd value must not cost the whole batch its write."""
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, set | frozenset):
        return list(value)
    return str(value)


_JSON_OPTIONS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


def to_json(value: Any) -> str:
    """``value`` as compact JSON text (NaN and infinities as null)."""
    return orjson.dumps(value, default=_json_default, option=_JSON_OPTIONS).decode()


def _is_number(value: Any) -> bool:
    """An int or float (numpy's too), not a bool: what ``features`` holds."""
    return (isinstance(value, int | float | np.integer | np.floating)
            and not isinstance(value, bool | np.bool_))


def _feature_maps(values: tuple[Any, ...], map_type: pa.DataType) -> pa.Array:
    """The ``features`` column alone (see :func:`_feature_columns`)."""
    return _feature_columns(values, map_type)[0]


def _feature_columns(values: tuple[Any, ...], map_type: pa.DataType
                     ) -> tuple[pa.Array, pa.Array]:
    """The ``features`` map column and the ``inputs`` JSON column from rows as sent.

    Built from flat keys/items (several times faster than converting a list of
    lists of pairs). When every row has the same keys in the same order (the
    usual case: one model's features) and every value is a float, keys are
    repeated and values flattened without a Python loop per row, and
    ``inputs`` is all null. Otherwise each row keeps its numbers in the map and,
    if it holds anything else (an int, whose type a replay must keep, a bool,
    a string, a null, a list), its whole self as JSON.
    """
    n = len(values)
    if values and all(v is not None for v in values):
        keys = tuple(values[0])
        width = len(keys)
        if all(len(v) == width for v in values) and all(tuple(v) == keys for v in values):
            flat = list(itertools.chain.from_iterable(v.values() for v in values))
            # set(map(type)) runs in C; an all-float list then converts to
            # float64 by inference, which is faster than asking for the type.
            if not flat or set(map(type, flat)) == {float}:
                items = pa.array(flat) if flat else pa.array([], type=pa.float64())
                return pa.MapArray.from_arrays(
                    pa.array(np.arange(0, width * n + 1, width, dtype=np.int32)),
                    pa.array(list(keys) * n, type=pa.string()), items,
                    type=map_type), pa.nulls(n, type=pa.string())
    offsets = [0]
    keys_out: list[str] = []
    values_out: list[float] = []
    valid: list[bool] = []
    inputs: list[str | None] = []
    for row in values:
        if row is None:
            valid.append(False)
            inputs.append(None)
            offsets.append(len(keys_out))
            continue
        valid.append(True)
        typed = False
        for key, value in row.items():
            if type(value) is float:
                keys_out.append(key)
                values_out.append(value)
            elif _is_number(value):
                keys_out.append(key)
                values_out.append(float(value))
                typed = typed or not isinstance(value, float)
            else:
                typed = True
        inputs.append(to_json(row) if typed else None)
        offsets.append(len(keys_out))
    mask = None if all(valid) else pa.array([not v for v in valid])
    features = pa.MapArray.from_arrays(
        pa.array(offsets, type=pa.int32()), pa.array(keys_out, type=pa.string()),
        pa.array(values_out, type=pa.float64()), type=map_type, mask=mask)
    return features, pa.array(inputs, type=pa.string())


def _output_json(value: Any) -> str | None:
    """A :class:`~models.outputs.Prediction` as JSON, or None when its score is
    the whole answer (a regressor's number, a bare score)."""
    if value is None or isinstance(value, str):
        return value
    score = value.score
    if (value.label is None and value.probabilities is None and score is not None
            and _is_number(value.value) and value.value == score):
        return None
    return to_json({"value": value.value, "label": value.label,
                    "probabilities": value.probabilities})


def _output_column(values: tuple[Any, ...]) -> pa.Array:
    if all(v is None for v in values):
        return pa.nulls(len(values), type=pa.string())
    return pa.array([_output_json(v) for v in values], type=pa.string())


def constant_column(value: Any, n: int, field_type: pa.DataType) -> pa.Array:
    """``n`` copies of one value (or ``n`` nulls) without a Python list of ``n`` items."""
    if value is None:
        return pa.nulls(n, type=field_type)
    return pa.repeat(pa.scalar(value, type=field_type), n)


def batch_table(n: int, columns: Mapping[str, Any]) -> pa.Table:
    """A table in :data:`DECISION_SCHEMA` from whole columns.

    Each column is a sequence or array of ``n`` values, or one value repeated;
    ``timestamp`` is seconds since the epoch (scalar or array), ``features`` a
    sequence of rows as sent (which also fills ``inputs``) and ``output`` a
    sequence of :class:`~models.outputs.Prediction` (or None); an Arrow array
    is taken as it is. Columns left out are null. This is how a batch that is
    already columnar (shadow scoring) is logged without building a record per
    row.
    """
    arrays: dict[str, pa.Array] = {}
    for field in DECISION_SCHEMA:
        value = columns.get(field.name)
        if field.name == "timestamp":
            micros = np.round(np.asarray(value, dtype=np.float64) * 1_000_000).astype(np.int64)
            arrays[field.name] = pa.array(np.broadcast_to(micros, (n,)),
                                          type=pa.int64()).cast(field.type)
        elif field.name == "inputs" and "inputs" in arrays:
            continue  # built with ``features``
        elif field.name == "features" and value is not None:
            arrays["features"], arrays["inputs"] = _feature_columns(tuple(value), field.type)
        elif field.name == "output" and value is not None:
            arrays[field.name] = _output_column(tuple(value))
        elif field.name == "unit_key" and value is None:
            # Keyed here, in the writer's thread, one column at a time: the
            # request path only hands over the id.
            arrays[field.name] = _unit_keys(n, columns.get("unit_id"), arrays["unit_id"])
        elif isinstance(value, pa.Array):
            arrays[field.name] = value
        elif value is None or isinstance(value, str | int | float):
            arrays[field.name] = constant_column(value, n, field.type)
        else:
            arrays[field.name] = pa.array(value, type=field.type)
    return pa.Table.from_arrays([arrays[f.name] for f in DECISION_SCHEMA],
                                schema=DECISION_SCHEMA)


def _unit_keys(n: int, given: Any, ids: pa.Array) -> pa.Array:
    """The ``unit_key`` column for the ``unit_id`` column ``ids``; an id given as
    one value for every row is hashed once."""
    if given is None or isinstance(given, str):
        return constant_column(None if given is None else unit_key_array([given])[0].as_py(),
                               n, pa.int64())
    return unit_key_array(ids)


def conform(table: pa.Table) -> pa.Table:
    """``table`` in :data:`DECISION_SCHEMA`: columns a writer of an older version
    did not have (a journal it left behind, a table it built) are added as nulls,
    so every file this writer writes has the current columns. The one exception
    is ``unit_key``: it is computed from ``unit_id``, so that rows replayed from
    an older journal are keyed like the rest."""
    if table.schema == DECISION_SCHEMA:
        return table
    table = with_unit_keys(table)
    present = set(table.schema.names)
    columns = [table[f.name] if f.name in present else pa.nulls(table.num_rows, f.type)
               for f in DECISION_SCHEMA]
    return pa.Table.from_arrays(columns, names=DECISION_SCHEMA.names).cast(DECISION_SCHEMA)


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


@dataclass(frozen=True)
class FeaturePolicy:
    """Which features of a model's rows are written as sent (``allowed``); the
    rest are left out (``drop``) or replaced by a keyed hash of their value
    (``hash``). Applied off the request path, before a row is journaled or
    written."""

    allowed: Mapping[str, frozenset[str]]
    mode: str = "drop"
    key: bytes = b""

    def apply(self, model: str | None, features: Mapping[str, Any] | None
              ) -> Mapping[str, Any] | None:
        allow = self.allowed.get(model) if model is not None else None
        if allow is None or features is None:
            return features
        if self.mode == "drop":
            return {k: v for k, v in features.items() if k in allow}
        return {k: v if k in allow else self._hash(v) for k, v in features.items()}

    def _hash(self, value: Any) -> str:
        digest = hmac.new(self.key, orjson.dumps(value, default=str), hashlib.sha256)
        return f"hmac:{digest.hexdigest()[:16]}"


class ColumnBatch(NamedTuple):
    """``n`` rows as whole columns, turned into a table by the flush thread
    (see :func:`batch_table`)."""

    n: int
    columns: Mapping[str, Any]


class DecisionLogWriter(BatchedWriter[DecisionRecord | ColumnBatch | pa.Table]):
    """Buffers decision records (and columnar batches) and writes them as Parquet
    in the background; with ``spill_dir``, journals them on local disk first
    (see :mod:`telemetry.batched_writer`)."""

    noun = "decision-log"

    def __init__(self, root: str | os.PathLike[str] | LogLocation, writer_id: str,
                 batch_rows: int = 5000, flush_interval_s: float = 2.0,
                 max_buffered_rows: int | None = None, events: WriterEvents | None = None,
                 feature_policy: FeaturePolicy | None = None,
                 spill_dir: str | os.PathLike[str] | None = None,
                 spill_interval_s: float = 0.05, spill_fsync: bool = True) -> None:
        self.feature_policy = feature_policy
        super().__init__(root, writer_id, batch_rows, flush_interval_s, max_buffered_rows,
                         events, spill_dir, spill_interval_s, spill_fsync)

    def _filtered(self, item: DecisionRecord | ColumnBatch | pa.Table
                  ) -> DecisionRecord | ColumnBatch | pa.Table:
        policy = self.feature_policy
        assert policy is not None
        if isinstance(item, DecisionRecord):
            return item._replace(features=policy.apply(item.model_name, item.features))
        if isinstance(item, ColumnBatch) and item.columns.get("features") is not None:
            model = item.columns.get("model_name")
            name = model if isinstance(model, str) else None
            return ColumnBatch(item.n, {**item.columns, "features": [
                policy.apply(name, row) for row in item.columns["features"]]})
        return item

    def append(self, record: DecisionRecord) -> None:
        """Buffer one record; never blocks on I/O."""
        self._buffer_items((record,), 1)

    def append_table(self, table: pa.Table) -> None:
        """Buffer a batch of rows already in :data:`DECISION_SCHEMA` (see
        :func:`batch_table`); never blocks on I/O."""
        self._buffer_items((table,), table.num_rows)

    def append_columns(self, n: int, columns: Mapping[str, Any]) -> None:
        """Buffer ``n`` rows given as whole columns, as :func:`batch_table` takes
        them; the table (and its JSON) is built off the request path, so the
        caller pays only a list append."""
        self._buffer_items((ColumnBatch(n, columns),), n)

    def _to_table(self, items: list[DecisionRecord | ColumnBatch | pa.Table]) -> pa.Table:
        # The allowlist applies here, before the journal: an unlisted feature
        # never reaches the disk, not even the spill file.
        if self.feature_policy is not None:
            items = [self._filtered(item) for item in items]
        records = [item for item in items if isinstance(item, DecisionRecord)]
        parts = ([records_to_table(records)] if records else []) + [
            batch_table(item.n, item.columns) if isinstance(item, ColumnBatch)
            else conform(item)
            for item in items if not isinstance(item, DecisionRecord)]
        return parts[0] if len(parts) == 1 else pa.concat_tables(parts)

    def _write(self, tables: list[pa.Table], generation: int, writer_id: str,
               skip_existing: bool = False) -> int:
        # A replayed journal may predate a column: written with it null.
        tables = [conform(t) for t in tables]
        combined = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        root = self.location
        name = part_name(writer_id, generation)
        pending = partitions(combined)
        written = 0
        for i, (day, experiment, rows) in enumerate(pending):
            try:
                directory = root.join(f"date={day}", f"experiment={experiment}")
                if not (skip_existing and directory.join(name).exists()):
                    directory.write_parquet(rows, name)
                    written += rows.num_rows
            except Exception as exc:
                left = [table for _, _, table in pending[i:]]
                raise PartialWrite(exc, left, sum(t.num_rows for t in left)) from exc
        return written


def read_decisions(path: str | os.PathLike[str] | LogLocation) -> pa.Table:
    """Every decision row under ``path`` (a directory tree or one file; a local
    path or a URI); raises :class:`~telemetry.storage.LogStorageError` when
    the storage cannot be read."""
    location = LogLocation.resolve(path)
    with storage_errors(f"cannot read the decision log at {location}"):
        if location.is_dir():
            files = location.visible_parquet_files()
            if not files:
                return DECISION_SCHEMA.empty_table()
            dataset = pads.dataset(files, filesystem=location.fs, format="parquet",
                                   schema=DECISION_SCHEMA)
            return dataset.to_table()
        return pq.read_table(location.path, filesystem=location.fs, schema=DECISION_SCHEMA)
