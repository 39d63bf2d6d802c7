"""Append-only outcomes log: what happened to units after they were served.

An outcome event is one value of one metric for one unit (a click, a
conversion, revenue), optionally naming the experiment it belongs to.
Experiment analysis joins these rows with the decision log on ``unit_id``.

Two ways in, one format:

- ``POST /v1/outcomes`` on the gateway: each replica's :class:`OutcomesLogWriter`
  buffers the validated events in memory (journaled on local disk every
  ``spill_interval_s`` when it has a spill directory) and a background thread
  writes them on size (``batch_rows``), on time (``flush_interval_s``) and on
  close, as the decision log does (see :mod:`telemetry.batched_writer`);
- ``rampart outcomes import FILE``: :func:`import_outcomes` loads a CSV or
  Parquet file, validates every row with vectorized checks, and writes all of
  it as one file, or nothing.

Layout::

    <root>/date=YYYY-MM-DD/part-<writer>-<generation>.parquet

The date is the day (UTC) the rows were received. The root is a local
directory or a URI such as ``s3://bucket/outcomes``. A reader never sees half
a file (on local disk each is written under a temporary name and renamed into
place; on an object store an object appears only when its upload completes;
see :mod:`telemetry.storage`); :func:`read_outcomes` reads them all.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pyarrow.fs import FileType

from telemetry.batched_writer import BatchedWriter, PartialWrite, WriterEvents, part_name
from telemetry.outcome_events import (
    EPOCH,
    ID_PATTERN,
    MAX_ITEM_ID_CHARS,
    MAX_OUTCOME_SECONDS,
    MAX_POSITION,
    MAX_REQUEST_ID_CHARS,
    MAX_UNIT_ID_CHARS,
    REQUEST_ID_PATTERN,
    OutcomeEvent,
    parse_outcome_timestamp,
)
from telemetry.storage import LogLocation, LogStorageError, storage_errors
from telemetry.unit_keys import unit_key_array, with_unit_keys

log = logging.getLogger(__name__)

TIMESTAMP = pa.timestamp("us", tz="UTC")
OUTCOME_SCHEMA = pa.schema(
    [
        pa.field("unit_id", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("timestamp", TIMESTAMP, nullable=False),
        pa.field("experiment_id", pa.string()),
        pa.field("received_at", TIMESTAMP, nullable=False),
    ]
)
# Where an outcome happened in a ``POST /v1/rank`` answer: the request, the item
# and its 0-based position in the list shown (a click, for an interleaving
# analysis). Null for every other outcome. Kept out of OUTCOME_SCHEMA, which
# stays the columns every outcome has.
OUTCOME_ITEM_FIELDS = (
    pa.field("request_id", pa.string()),
    pa.field("item_id", pa.string()),
    pa.field("position", pa.int32()),
)
# What the log's files hold: an event's columns and, after ``unit_id``, the unit
# id as a 64-bit integer (telemetry.unit_keys), which analysis groups and joins
# on without hashing id strings. Computed where the table is built (the
# writer's thread, the import's checks); files written before it existed read
# with it null, as do files written before the item fields existed.
OUTCOME_LOG_SCHEMA = pa.schema([*OUTCOME_SCHEMA.insert(1, pa.field("unit_key", pa.int64())),
                                *OUTCOME_ITEM_FIELDS])
INPUT_COLUMNS = ("unit_id", "metric", "value", "timestamp", "experiment_id", "request_id",
                 "item_id", "position")
REQUIRED_COLUMNS = ("unit_id", "metric", "value")
US_PER_S = 1_000_000
US_PER_DAY = 86_400 * US_PER_S
MAX_OUTCOME_US = MAX_OUTCOME_SECONDS * US_PER_S
ROW_GROUP_ROWS = 1_000_000
_ONE_US = dt.timedelta(microseconds=1)
_NAME_RULE = "1-64 characters of letters, digits and '_.-'"
_NUMBER = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_ZONED = r"^\d{4}-?\d\d-?\d\d[Tt ].*(?:[Zz]|[+-]\d\d(?::?\d\d)?)$"


class OutcomeRecord(NamedTuple):
    """One validated outcome; times as microseconds since the epoch (UTC)."""

    unit_id: str
    metric: str
    value: float
    timestamp_us: int
    experiment_id: str | None
    received_at_us: int
    request_id: str | None = None
    item_id: str | None = None
    position: int | None = None


def to_micros(moment: dt.datetime) -> int:
    """Microseconds since the epoch of an aware datetime (exact)."""
    return (moment - EPOCH) // _ONE_US


def outcome_records(events: Sequence[OutcomeEvent], received_at_s: float) -> list[OutcomeRecord]:
    """Records for validated events; an event without a timestamp gets the receive time."""
    received_us = round(received_at_s * US_PER_S)
    return [
        OutcomeRecord(e.unit_id, e.metric, e.value,
                      received_us if e.timestamp is None else to_micros(e.timestamp),
                      e.experiment_id, received_us, e.request_id, e.item_id, e.position)
        for e in events
    ]


def records_to_table(records: Sequence[OutcomeRecord]) -> pa.Table:
    """Columnar table in :data:`OUTCOME_LOG_SCHEMA` from buffered records."""
    fields = [*OUTCOME_SCHEMA, *OUTCOME_ITEM_FIELDS]
    columns: list[tuple[Any, ...]] = (
        list(zip(*records, strict=True)) if records else [() for _ in fields]
    )
    arrays = []
    for field, values in zip(fields, columns, strict=True):
        if field.type == TIMESTAMP:
            arrays.append(pa.array(values, type=pa.int64()).cast(TIMESTAMP))
        else:
            arrays.append(pa.array(values, type=field.type))
    return with_unit_keys(pa.Table.from_arrays(arrays, schema=pa.schema(fields)))


def conform(table: pa.Table) -> pa.Table:
    """``table`` in :data:`OUTCOME_LOG_SCHEMA`: a spill journal written before
    ``unit_key`` existed is replayed with its keys computed, one written before
    the item fields existed with them null."""
    if table.schema == OUTCOME_LOG_SCHEMA:
        return table
    table = with_unit_keys(table)
    for field in OUTCOME_ITEM_FIELDS:
        if field.name not in table.column_names:
            table = table.append_column(field, pa.nulls(table.num_rows, field.type))
    return table.select(OUTCOME_LOG_SCHEMA.names).cast(OUTCOME_LOG_SCHEMA)


def _day(micros: int) -> str:
    return (EPOCH + dt.timedelta(microseconds=micros)).strftime("%Y-%m-%d")


def write_outcome_file(root: str | os.PathLike[str] | LogLocation, day: str, name: str,
                       table: pa.Table) -> LogLocation:
    """Write ``table`` to ``<root>/date=<day>/<name>``, all of it or nothing (see
    :meth:`~telemetry.storage.LogLocation.write_parquet`)."""
    return LogLocation.resolve(root).join(f"date={day}").write_parquet(
        table, name, row_group_size=ROW_GROUP_ROWS)


class OutcomesLogWriter(BatchedWriter[OutcomeRecord]):
    """Buffers outcome records and writes them as Parquet in the background;
    with ``spill_dir``, journals them on local disk first."""

    noun = "outcomes-log"

    def __init__(self, root: str | os.PathLike[str] | LogLocation, writer_id: str,
                 batch_rows: int = 5000, flush_interval_s: float = 2.0,
                 max_buffered_rows: int | None = None, events: WriterEvents | None = None,
                 spill_dir: str | os.PathLike[str] | None = None,
                 spill_interval_s: float = 0.05, spill_fsync: bool = True) -> None:
        super().__init__(root, writer_id, batch_rows, flush_interval_s, max_buffered_rows,
                         events, spill_dir, spill_interval_s, spill_fsync)

    def append_many(self, records: Sequence[OutcomeRecord]) -> None:
        """Buffer a batch of records at once (all of them or, on error, none); no I/O."""
        self._buffer_items(records, len(records))

    def _to_table(self, items: list[OutcomeRecord]) -> pa.Table:
        return records_to_table(items)

    def _write(self, tables: list[pa.Table], generation: int, writer_id: str,
               skip_existing: bool = False) -> int:
        tables = [conform(t) for t in tables]
        combined = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        days = combined.column("received_at").cast(pa.int64()).to_numpy() // US_PER_DAY
        root = self.location
        name = part_name(writer_id, generation)
        pending = [(int(day), combined.filter(pa.array(days == day))) for day in np.unique(days)]
        written = 0
        for i, (day, rows) in enumerate(pending):
            try:
                date = _day(day * US_PER_DAY)
                if not (skip_existing and root.join(f"date={date}", name).exists()):
                    write_outcome_file(root, date, name, rows)
                    written += rows.num_rows
            except Exception as exc:
                left = [table for _, table in pending[i:]]
                raise PartialWrite(exc, left, sum(t.num_rows for t in left)) from exc
        return written


def read_outcomes(path: str | os.PathLike[str] | LogLocation) -> pa.Table:
    """Every outcome row under ``path`` (a directory tree or one file; a local
    path or a URI); an empty table in :data:`OUTCOME_LOG_SCHEMA` when there is
    none (files written before ``unit_key`` existed read with it null). Raises
    :class:`~telemetry.storage.LogStorageError` when the storage cannot be read."""
    location = LogLocation.resolve(path)
    with storage_errors(f"cannot read the outcomes log at {location}"):
        info = location.info()
        if info.type == FileType.Directory:
            files = location.visible_parquet_files()
            if not files:
                return OUTCOME_LOG_SCHEMA.empty_table()
            return pads.dataset(files, filesystem=location.fs, format="parquet",
                                schema=OUTCOME_LOG_SCHEMA).to_table()
        if info.type == FileType.NotFound:
            return OUTCOME_LOG_SCHEMA.empty_table()
        return pq.read_table(location.path, filesystem=location.fs, schema=OUTCOME_LOG_SCHEMA)


# --------------------------------------------------------------------------- import


class OutcomesInputError(Exception):
    """An outcomes file that cannot be imported; the message names the first problem."""


@dataclass(frozen=True, slots=True)
class ImportResult:
    rows: int
    file: Path | str  # a path on local disk, else the object's URI
    seconds: float


def import_outcomes(source: str | Path, root: str | os.PathLike[str] | LogLocation
                    ) -> ImportResult:
    """Load, validate and write one CSV or Parquet file of outcome events.

    Every row is checked before anything is written; the rows land in one
    Parquet file under ``root`` (a local directory or a URI), all of them or
    nothing.
    """
    started = time.perf_counter()
    source = Path(source)
    received_us = round(time.time() * US_PER_S)
    table = validate_outcomes(load_outcomes_file(source), received_us, source=str(source))
    name = f"part-import-{uuid.uuid4().hex[:8]}-{1:08d}.parquet"
    try:
        written = write_outcome_file(root, _day(received_us), name, table)
    except LogStorageError as exc:
        raise OutcomesInputError(f"cannot write to the outcomes log {root}: {exc}") from None
    except OSError as exc:
        raise OutcomesInputError(f"cannot write to the outcomes log {root}: "
                                 f"{exc.strerror or exc}") from None
    return ImportResult(table.num_rows, Path(written.uri) if written.local else written.uri,
                        time.perf_counter() - started)


def load_outcomes_file(path: Path) -> pa.Table:
    """A CSV (``.csv``, ``.csv.gz``, ...) or Parquet (``.parquet``, ``.pq``) file as a table.

    CSV cells of the known columns are read as text (typed later, with row
    numbers in the errors); only an empty cell is missing.
    """
    if not path.exists():
        raise OutcomesInputError(f"cannot read {path}: no such file")
    if not path.is_file():
        raise OutcomesInputError(f"cannot read {path}: not a file")
    suffixes = [s.lower() for s in path.suffixes]
    try:
        if suffixes and suffixes[-1] in (".parquet", ".pq"):
            try:
                return pq.read_table(path)
            except (pa.ArrowException, ValueError) as exc:
                raise OutcomesInputError(f"{path} is not a readable Parquet file: {exc}") from None
        if ".csv" in suffixes:
            from pyarrow import csv as pacsv

            convert = pacsv.ConvertOptions(
                column_types={name: pa.string() for name in INPUT_COLUMNS},
                null_values=[""], strings_can_be_null=True, quoted_strings_can_be_null=True,
            )
            try:
                return pacsv.read_csv(path, convert_options=convert)
            except (pa.ArrowException, ValueError) as exc:
                raise OutcomesInputError(f"{path} is not a readable CSV file: {exc}") from None
    except OSError as exc:
        raise OutcomesInputError(f"cannot read {path}: {exc.strerror or exc}") from None
    raise OutcomesInputError(
        f"{path}: unknown file type; name it .csv (or .csv.gz) or .parquet"
    )


@dataclass(frozen=True, slots=True)
class _Problem:
    row: int  # 0-based
    column: int  # position in INPUT_COLUMNS, to order problems on the same row
    message: str


def _first(mask: np.ndarray[Any, Any]) -> int | None:
    if not mask.any():
        return None
    return int(np.argmax(mask))


def _mask(array: pa.Array, null_as: bool) -> np.ndarray[Any, Any]:
    result: np.ndarray[Any, Any] = array.fill_null(null_as).to_numpy(zero_copy_only=False)
    return result


def _text(table: pa.Table, name: str) -> pa.Array:
    column = table.column(name)
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)
            or pa.types.is_null(kind)):
        raise OutcomesInputError(f"column {name} must hold text, not {column.type}")
    return column.cast(pa.string()).combine_chunks()


def _numbers(text: pa.Array) -> np.ndarray[Any, Any]:
    """Text to float64 (NaN where missing or not a number), vectorized."""
    try:
        parsed = pc.cast(text, pa.float64())
        return _floats(parsed)
    except pa.ArrowInvalid:
        import pandas as pd

        series = pd.Series(text.to_numpy(zero_copy_only=False), dtype=object)
        result: np.ndarray[Any, Any] = pd.to_numeric(series, errors="coerce").to_numpy(
            dtype=np.float64, na_value=np.nan)
        return result


def _floats(array: pa.Array) -> np.ndarray[Any, Any]:
    result: np.ndarray[Any, Any] = (
        array.cast(pa.float64()).fill_null(math.nan).to_numpy(zero_copy_only=False)
    )
    return result


def _check_names(
    values: pa.Array, name: str, position: int, required: bool, problems: list[_Problem]
) -> None:
    missing = _mask(values.is_null(), null_as=True)
    if required and (row := _first(missing)) is not None:
        problems.append(_Problem(row, position, f"{name} is missing"))
    bad = _mask(pc.invert(pc.match_substring_regex(values, ID_PATTERN)), null_as=False)
    if (row := _first(bad)) is not None:
        problems.append(_Problem(row, position, f"{name} must be {_NAME_RULE} "
                                                f"(got {values[row].as_py()!r})"))


def _value_column(table: pa.Table, problems: list[_Problem]) -> np.ndarray[Any, Any]:
    column = table.column("value").combine_chunks()
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = _numbers(column.cast(pa.string()))
    elif (pa.types.is_integer(kind) or pa.types.is_floating(kind)
          or pa.types.is_decimal(kind) or pa.types.is_null(kind)):
        values = _floats(column)
    else:
        raise OutcomesInputError(f"column value must hold numbers, not {column.type}")
    missing = _mask(column.is_null(), null_as=True)
    if (row := _first(missing)) is not None:
        problems.append(_Problem(row, 2, "value is missing"))
    bad = ~np.isfinite(values) & ~missing
    if (row := _first(bad)) is not None:
        problems.append(_Problem(row, 2, f"value must be a finite number "
                                         f"(got {column[row].as_py()!r})"))
    return values


def _seconds_to_micros(
    seconds: np.ndarray[Any, Any], given: np.ndarray[Any, Any],
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Micros from seconds since the epoch, and where a given number is out of range."""
    with np.errstate(invalid="ignore"):
        ok = np.isfinite(seconds) & (seconds >= 0) & (seconds < MAX_OUTCOME_SECONDS)
    micros = np.zeros(len(seconds), dtype=np.int64)
    micros[ok] = np.round(seconds[ok] * US_PER_S).astype(np.int64)
    return micros, given & ~ok


def _timestamp_column(
    table: pa.Table, received_us: int, problems: list[_Problem]
) -> np.ndarray[Any, Any]:
    """Microseconds since the epoch for every row; a missing time is the receive time."""
    n = table.num_rows
    if "timestamp" not in table.column_names:
        return np.full(n, received_us, dtype=np.int64)
    column = table.column("timestamp").combine_chunks()
    kind = column.type
    if pa.types.is_dictionary(kind):
        column, kind = column.cast(kind.value_type), kind.value_type
    given = ~_mask(column.is_null(), null_as=True)
    unparsed = np.zeros(n, dtype=bool)
    if pa.types.is_timestamp(kind):
        # Arrow keeps instants as UTC counts; a zone-less column is taken as UTC.
        per_us = {"s": US_PER_S, "ms": 1000, "us": 1, "ns": 1}[kind.unit]
        counts = column.cast(pa.int64()).fill_null(0).to_numpy(zero_copy_only=False)
        if kind.unit == "ns":
            counts = counts // 1000
        limit = MAX_OUTCOME_US // per_us
        out_of_range = given & ((counts < 0) | (counts >= limit))
        micros = np.where(out_of_range, 0, counts) * per_us
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind):
        micros, out_of_range = _seconds_to_micros(_floats(column), given)
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind):
        micros, out_of_range, unparsed = _parse_times(column.cast(pa.string()), given)
    else:
        raise OutcomesInputError(
            f"column timestamp must hold timestamps, seconds since the epoch or ISO-8601 "
            f"text, not {column.type}")
    if (row := _first(unparsed)) is not None:
        problems.append(_Problem(row, 3, f"timestamp {column[row].as_py()!r} is neither "
                                         "seconds since the epoch nor an ISO-8601 date-time"))
    if (row := _first(out_of_range)) is not None:
        problems.append(_Problem(row, 3, f"timestamp {column[row].as_py()!s} is out of range: "
                                         "outcome times lie in 1970-01-01..9999-12-31 UTC, "
                                         "and a number is seconds since the epoch"))
    return np.where(given, micros, received_us)


def _parse_times(
    text: pa.Array, given: np.ndarray[Any, Any],
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """Text cells that are numbers are seconds since the epoch, the others ISO-8601
    (without an offset: UTC).

    Returns micros, out-of-range and unparseable masks. Cells are classified
    first (a failing Arrow cast costs as much as a whole column), then each
    class is cast by Arrow; what Arrow refuses goes to pandas' ISO-8601
    parser, and what that leaves to the gateway's own parser, in row order.
    """
    n = len(text)
    micros = np.zeros(n, dtype=np.int64)
    out_of_range = np.zeros(n, dtype=bool)
    unparsed = np.zeros(n, dtype=bool)
    numeric = given & _mask(pc.match_substring_regex(text, _NUMBER), null_as=False)
    if numeric.any():
        seconds = np.full(n, math.nan)
        seconds[numeric] = _numbers(text.filter(pa.array(numeric)))
        from_seconds, out_of_range = _seconds_to_micros(seconds, numeric)
        micros[numeric] = from_seconds[numeric]
    iso = given & ~numeric
    if not iso.any():
        return micros, out_of_range, unparsed
    zoned = iso & _mask(pc.match_substring_regex(text, _ZONED), null_as=False)
    left = np.zeros(n, dtype=bool)
    for mask, target in ((zoned, TIMESTAMP), (iso & ~zoned, pa.timestamp("us"))):
        if not mask.any():
            continue
        try:
            stamps = pc.cast(text.filter(pa.array(mask)), target)
        except pa.ArrowInvalid:
            left |= mask
            continue
        micros[mask] = stamps.cast(pa.int64()).to_numpy(zero_copy_only=False)
    if left.any():
        _parse_times_slowly(text, left, micros, unparsed)
    out_of_range |= iso & ~unparsed & ((micros < 0) | (micros >= MAX_OUTCOME_US))
    return micros, out_of_range, unparsed


def _parse_times_slowly(
    text: pa.Array, rows: np.ndarray[Any, Any], micros: np.ndarray[Any, Any],
    unparsed: np.ndarray[Any, Any],
) -> None:
    import pandas as pd

    where = np.flatnonzero(rows)
    series = pd.Series(text.take(pa.array(where)).to_numpy(zero_copy_only=False), dtype=object)
    parsed = pd.to_datetime(series, format="ISO8601", utc=True, errors="coerce")
    parsed_us = parsed.astype("datetime64[us, UTC]").to_numpy(dtype="datetime64[us]")
    ok = ~np.isnat(parsed_us)
    micros[where[ok]] = parsed_us[ok].astype(np.int64)
    for row in where[~ok]:  # in row order; the first bad row is all an error names
        try:
            micros[row] = to_micros(parse_outcome_timestamp(text[row].as_py()))
        except ValueError:
            unparsed[row] = True
            break


def validate_outcomes(table: pa.Table, received_us: int, source: str = "input") -> pa.Table:
    """Check every row of an input table and return it in :data:`OUTCOME_LOG_SCHEMA`
    (each row keyed by its unit id).

    Raises :class:`OutcomesInputError` naming the columns that are missing or
    unknown, or the first bad row (rows numbered from 1, a CSV header not
    counted) and what is wrong with it.
    """
    names = table.column_names
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise OutcomesInputError(f"{source}: columns listed more than once: {twice}")
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    unknown = [c for c in names if c not in INPUT_COLUMNS]
    if missing or unknown:
        parts = ([f"missing columns {missing}"] if missing else []) + (
            [f"unknown columns {unknown}"] if unknown else [])
        raise OutcomesInputError(
            f"{source}: {'; '.join(parts)}; the columns are unit_id, metric, value and "
            "optionally timestamp, experiment_id, request_id, item_id, position")
    if table.num_rows == 0:
        raise OutcomesInputError(f"{source}: no rows to import")
    try:
        problems: list[_Problem] = []
        units = _text(table, "unit_id")
        absent = _mask(units.is_null(), null_as=True)
        if (row := _first(absent)) is not None:
            problems.append(_Problem(row, 0, "unit_id is missing"))
        lengths = pc.utf8_length(units).fill_null(1).to_numpy(zero_copy_only=False)
        if (row := _first((lengths < 1) | (lengths > MAX_UNIT_ID_CHARS))) is not None:
            problems.append(_Problem(row, 0, f"unit_id must be 1-{MAX_UNIT_ID_CHARS} "
                                             f"characters (got {lengths[row]})"))
        metrics = _text(table, "metric")
        _check_names(metrics, "metric", 1, True, problems)
        values = _value_column(table, problems)
        micros = _timestamp_column(table, received_us, problems)
        if "experiment_id" in names:
            experiments = _text(table, "experiment_id")
            _check_names(experiments, "experiment_id", 4, False, problems)
        else:
            experiments = pa.nulls(table.num_rows, pa.string())
        requests = _item_ids(table, "request_id", 5, MAX_REQUEST_ID_CHARS, problems)
        items = _item_ids(table, "item_id", 6, MAX_ITEM_ID_CHARS, problems)
        positions = _position_column(table, problems)
    except OutcomesInputError as exc:
        raise OutcomesInputError(f"{source}: {exc}") from None
    if problems:
        first = min(problems, key=lambda p: (p.row, p.column))
        raise OutcomesInputError(f"{source}: row {first.row + 1}: {first.message}; "
                                 "nothing was imported")
    return pa.Table.from_arrays(
        [units, unit_key_array(units), metrics, pa.array(values, type=pa.float64()),
         pa.array(micros, type=pa.int64()).cast(TIMESTAMP), experiments,
         pa.array(np.full(table.num_rows, received_us, dtype=np.int64)).cast(TIMESTAMP),
         requests, items, positions],
        schema=OUTCOME_LOG_SCHEMA,
    )


def _item_ids(table: pa.Table, name: str, position: int, max_chars: int,
              problems: list[_Problem]) -> pa.Array:
    """An optional request or item id column as text (all null when absent),
    checked as ``POST /v1/outcomes`` checks it: 1-``max_chars`` printable ASCII
    characters without spaces."""
    if name not in table.column_names:
        return pa.nulls(table.num_rows, pa.string())
    values = _text(table, name)
    lengths = pc.utf8_length(values).fill_null(1).to_numpy(zero_copy_only=False)
    bad = (lengths < 1) | (lengths > max_chars) | _mask(
        pc.invert(pc.match_substring_regex(values, REQUEST_ID_PATTERN)), null_as=False)
    if (row := _first(bad)) is not None:
        problems.append(_Problem(row, position, f"{name} must be 1-{max_chars} printable "
                                                f"ASCII characters without spaces "
                                                f"(got {values[row].as_py()!r})"))
    return values


def _position_column(table: pa.Table, problems: list[_Problem]) -> pa.Array:
    """The optional ``position`` column as int32 (all null when absent): a whole
    number from 0, the place in the list shown."""
    n = table.num_rows
    if "position" not in table.column_names:
        return pa.nulls(n, pa.int32())
    column = table.column("position").combine_chunks()
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        numbers = _numbers(column.cast(pa.string()))
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind):
        numbers = _floats(column)
    else:
        raise OutcomesInputError(f"column position must hold whole numbers, not {column.type}")
    given = ~_mask(column.is_null(), null_as=True)
    with np.errstate(invalid="ignore"):
        ok = (np.isfinite(numbers) & (numbers >= 0) & (numbers <= MAX_POSITION)
              & (numbers == np.floor(numbers)))
    if (row := _first(given & ~ok)) is not None:
        problems.append(_Problem(row, 7, f"position must be a whole number from 0 to "
                                         f"{MAX_POSITION} (got {column[row].as_py()!r})"))
    whole = np.where(given & ok, numbers, 0).astype(np.int32)
    return pa.array(whole, type=pa.int32(), mask=~(given & ok))
