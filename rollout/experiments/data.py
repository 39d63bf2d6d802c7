"""Reading the decision and outcome logs into the arrays :mod:`rollout.experiments.analysis`
needs, finding the experiment's periods, and keeping each experiment's
pre-registered analysis plan.

Reading is columnar end to end: Parquet is filtered by experiment, role and
time while it is read (pushed down to the row groups), the arm and served
version columns arrive as dictionary indices (never one string per row), unit
ids become integer codes once (``dictionary_encode``), and outcome rows find
their unit with one hash lookup (``index_in``, or a numpy hash table of the
units' 64-bit keys) or join. No per-row Python.

Periods: the decision log records the concrete version every request was
served. When an arm's served versions change (an alias moved, a rollout split
the arm), :func:`load_experiment` cuts the experiment into periods
(:func:`rollout.experiments.periods.split_periods`) and loads one of them: its
exposures are the units' first decisions within it. A log in which every arm
served one version is one period, found with one counting pass over integer
codes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyarrow.fs import FileType

from rollout.experiments.exposures import (
    ARM_BITS,
    MICROS,
    MISSING_SEGMENT,
    Exposures,
    OutcomeRows,
    first_exposures,
    split_weights,
)
from rollout.experiments.periods import (
    ServedSpan,
    from_micros,
    same_version_warnings,
    split_periods,
    to_micros,
)
from rollout.experiments.results import LogName, Period, SkippedFile
from serving.kernel.analysis_plan import AnalysisPlan
from serving.kernel.config import ExperimentSpec, RampartConfig
from serving.kernel.errors import LogStorageUnavailable, RampartError
from serving.kernel.factorial import label_treatments
from telemetry.decision_log import DECISION_SCHEMA
from telemetry.outcomes_log import OUTCOME_LOG_SCHEMA
from telemetry.storage import LogLocation, LogStorageError, one_line, storage_errors

# Low-cardinality columns read as Arrow dictionaries: Parquet's dictionary pages
# become integer indices directly, without materializing a string per row. The
# decisions' experiment_id too: its filter then compares each dictionary entry
# once. Not a column the filters test for null: Arrow 25's scan drops every row
# of a row group whose dictionary-read column is all null from both
# ``is_null()`` and ``is_valid()``, which would lose rows silently.
DICTIONARY_COLUMNS = ("arm", "model_name", "model_version", "arm_weights")
_DECISION_DICTIONARIES = (*DICTIONARY_COLUMNS, "experiment_id")
_OUTCOME_DICTIONARIES: tuple[str, ...] = ()
# Read as dictionaries only when the footers show no null in them at all (the
# common case; a null there is an error the plain read then names).
_OUTCOME_DICTIONARIES_WITHOUT_NULLS = ("metric",)


def _as_read(schema: pa.Schema, dictionaries: tuple[str, ...]) -> pa.Schema:
    return pa.schema([f.with_type(pa.dictionary(pa.int32(), pa.string()))
                      if f.name in dictionaries else f for f in schema])


def _format(dictionaries: tuple[str, ...]) -> pads.ParquetFileFormat:
    return pads.ParquetFileFormat(
        read_options=pads.ParquetReadOptions(dictionary_columns=list(dictionaries)))


PeriodChoice = int | Literal["latest"]
# The unit id as a 64-bit integer, written next to it by the gateway and the
# import (telemetry.unit_keys). When both logs have it in every row, units are
# grouped and matched on it instead of on id strings.
UNIT_KEY = "unit_key"


class AnalysisInputError(RampartError):
    """Input the analysis cannot use; the message says what and where."""

    code, status = "invalid_analysis_input", 422


LogPlace = str | os.PathLike[str]

# The columns every file of a log must have. Without them a row cannot be placed:
# whose unit, which experiment and arm, when, served or shadow; for an outcome,
# which metric, its value, when it happened and when it arrived. Every other
# column the analysis reads may be missing from an older file and then reads as
# null: the served version (``model_name``, ``model_version``: not logged), the
# request ``context`` (segments: "(missing)"), an outcome's ``experiment_id``
# (untagged: it belongs to every experiment its unit is in).
DECISION_REQUIRED = ("unit_id", "experiment_id", "arm", "role", "timestamp")
OUTCOME_REQUIRED = ("unit_id", "metric", "value", "timestamp", "received_at")
# Fields that must hold a value in every row the analysis reads (the experiment's
# primary decisions; the events of its metrics), and the ones that must be finite.
DECISION_NOT_NULL = ("unit_id", "arm", "role", "timestamp")
OUTCOME_NOT_NULL = ("unit_id", "metric", "value", "timestamp", "received_at")
OUTCOME_FINITE = ("value",)
# A field read only to be checked is projected as one "is null" bit per row.
_NULL_FLAG = "__null_"
_ROW = "__row"


@dataclass(frozen=True)
class LogSpec:
    """What one log must hold: the declared schema (the types every file is
    checked against), the schema it is scanned with (dictionary columns), and
    the required, non-null and finite columns."""

    noun: LogName
    declared: pa.Schema
    as_read: pa.Schema
    format: pads.FileFormat
    required: tuple[str, ...]
    not_null: tuple[str, ...]
    finite: tuple[str, ...] = ()
    filtered: tuple[str, ...] = ("experiment_id",)  # read by the filters only
    # columns read as dictionaries when no file's footer counts a null in them
    dictionaries_without_nulls: tuple[str, ...] = ()


DECISION_LOG = LogSpec("decision log", DECISION_SCHEMA,
                       _as_read(DECISION_SCHEMA, _DECISION_DICTIONARIES),
                       _format(_DECISION_DICTIONARIES), DECISION_REQUIRED, DECISION_NOT_NULL,
                       filtered=("experiment_id", "forced"))
OUTCOMES_LOG = LogSpec("outcomes log", OUTCOME_LOG_SCHEMA,
                       _as_read(OUTCOME_LOG_SCHEMA, _OUTCOME_DICTIONARIES),
                       _format(_OUTCOME_DICTIONARIES), OUTCOME_REQUIRED, OUTCOME_NOT_NULL,
                       OUTCOME_FINITE,
                       dictionaries_without_nulls=_OUTCOME_DICTIONARIES_WITHOUT_NULLS)


def _with_dictionaries(spec: LogSpec) -> LogSpec:
    """``spec`` reading its ``dictionaries_without_nulls`` as dictionaries too."""
    columns = (*spec.format.read_options.dictionary_columns,
               *spec.dictionaries_without_nulls)
    return replace(spec, as_read=_as_read(spec.as_read, tuple(columns)),
                   format=_format(tuple(columns)), dictionaries_without_nulls=())


def _no_nulls(fragment: pads.ParquetFileFragment, column: str) -> bool:
    """Whether a file's footer counts no null in ``column`` in any row group
    (a file without the column, or without statistics, is not known to)."""
    metadata = fragment.metadata
    index = next((j for j in range(metadata.num_columns)
                  if metadata.schema.column(j).path == column), None)
    if index is None:
        return False
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(index).statistics
        if stats is None or not stats.has_null_count or stats.null_count:
            return False
    return True


@dataclass(frozen=True)
class LogTable:
    """The rows read from one log, and the files left out of it
    (``skip_bad_files``). ``filtered`` False: the rows are every row of the
    files the filter's statistics did not rule out, and the caller applies the
    filter (see :func:`_read`'s ``defer_filter``)."""

    table: pa.Table
    skipped: tuple[SkippedFile, ...] = ()
    filtered: bool = True


class _BadFile(Exception):
    """One file of a log that cannot be read as the log's schema says."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path, self.reason = path, reason


def _or_null(name: str, condition: pc.Expression) -> pc.Expression:
    """``condition``, keeping rows whose ``name`` is null: the checks after the scan
    must see such rows, which the condition alone would drop silently."""
    return condition | pc.field(name).is_null()


def _type_fits(actual: pa.DataType, declared: pa.DataType) -> bool:
    """Whether a file's column type reads as the declared one without loss or
    guessing: strings as strings (dictionary-encoded too), numbers as a float,
    timestamps with a zone at a unit down to microseconds (a naive time is
    ambiguous; nanoseconds would be truncated)."""
    if pa.types.is_dictionary(actual):
        actual = actual.value_type
    if actual.equals(declared):
        return True
    if pa.types.is_string(declared) or pa.types.is_large_string(declared):
        return bool(pa.types.is_string(actual) or pa.types.is_large_string(actual))
    if pa.types.is_floating(declared):
        return bool(pa.types.is_floating(actual) or pa.types.is_integer(actual))
    if pa.types.is_timestamp(declared):
        return (pa.types.is_timestamp(actual) and actual.tz is not None
                and actual.unit in ("s", "ms", "us"))
    return False


def _schema_problem(physical: pa.Schema, spec: LogSpec, checked: list[str]) -> str | None:
    """What is wrong with a file's schema for the columns read, or None."""
    for name in checked:
        index = physical.get_field_index(name)
        if index < 0:
            if name in spec.required:
                return f"no column {name!r} (a required column of the {spec.noun})"
            continue
        actual, declared = physical.field(index).type, spec.declared.field(name).type
        if not _type_fits(actual, declared):
            return f"column {name!r} is {actual}, expected {declared}"
    return None


def _opened(location: LogLocation, path: str, spec: LogSpec, checked: list[str]
            ) -> pads.ParquetFileFragment:
    """A file's fragment with its footer read (kept: the scan does not read it
    again) and its schema checked; a :class:`_BadFile` when it is not Parquet or
    not the log's schema. On an object store an I/O error is the store's
    (:class:`LogStorageError`); on local disk it is the file's."""
    shown = _shown(location, path)
    fragment = spec.format.make_fragment(path, filesystem=location.fs)
    try:
        fragment.ensure_complete_metadata()
        physical = fragment.physical_schema
    except pa.ArrowInvalid as exc:
        raise _BadFile(shown, f"not a readable Parquet file ({_cause(exc, path)})") from None
    except OSError as exc:
        if not location.local:
            raise
        raise _BadFile(shown, f"not a readable Parquet file ({_cause(exc, path)})") from None
    problem = _schema_problem(physical, spec, checked)
    if problem is not None:
        raise _BadFile(shown, problem)
    return fragment


def _cause(exc: BaseException, path: str) -> str:
    """Arrow's one-line reason, without the file name it repeats (the message names it)."""
    text = one_line(exc).split(f"{path}': ", 1)[-1]
    # a decoder's message may quote the corrupt bytes themselves
    return "".join(c if c.isprintable() else "?" for c in text)


def _shown(location: LogLocation, path: str) -> str:
    """A file of a log as people name it: its path, or the log's URI and the rest."""
    if location.local or not path.startswith(location.path):
        return path
    return location.uri + path[len(location.path):]


def checked_columns(spec: LogSpec, columns: list[str]) -> list[str]:
    """The columns a log's files are checked for when ``columns`` are read."""
    return list(dict.fromkeys([*columns, *spec.required, *spec.not_null, *spec.filtered]))


def log_files(location: LogLocation, spec: LogSpec) -> list[str]:
    """Every visible Parquet file of a log (the path itself when it names a
    file); an :class:`AnalysisInputError` when there is none. Storage errors are
    the caller's to wrap (:func:`telemetry.storage.storage_errors`)."""
    info = location.info()
    if info.type == FileType.NotFound:
        raise AnalysisInputError(f"no {spec.noun} at {location}")
    if info.type != FileType.Directory:
        return [location.path]
    files = location.visible_parquet_files()
    if not files:
        raise AnalysisInputError(f"no {spec.noun} files (*.parquet) under {location}")
    return files


def _read(path: LogPlace, spec: LogSpec, columns: list[str], filter: pc.Expression,
          skip_bad_files: bool = False, prefer_keys: bool = False,
          defer_filter: bool = False) -> LogTable:
    """The rows of one log (a local path or a URI such as ``s3://bucket/prefix``)
    that ``filter`` keeps, pushed down into the Parquet scan, checked against the
    log's declared schema.

    With ``prefer_keys``, when every file's footer shows a ``unit_key`` in every
    row, ``unit_key`` is read in place of ``unit_id`` (and checked in its place:
    the writers key every row that has an id), so no id string is decoded.

    Every file's footer is read first (footers only) and its columns checked; a
    file that is not Parquet or lacks or mistypes a column is an
    :class:`AnalysisInputError` naming it, or is left out and listed with
    ``skip_bad_files``. After the scan the non-null and finite fields are checked
    over the whole table at once; only when one fails are the files read again
    one by one to name the first bad row. A log whose storage cannot be read is
    a :class:`LogStorageUnavailable`.

    With ``defer_filter``, when the log is read by key and every file's footer
    counts no null in any non-null column, the filter only rules out row groups
    by their statistics: the rows come back unfiltered (with the ``filtered``
    columns), not checked for finiteness, and the caller applies the filter
    (``LogTable.filtered`` is False). Arrow's filter evaluates the expression
    batch by batch and copies every kept row of every column; a caller that
    copies the rows it keeps anyway saves that pass.
    """
    location = LogLocation.resolve(path)
    checked = checked_columns(spec, columns)
    try:
        with storage_errors(f"cannot read the {spec.noun} at {location}"):
            files = log_files(location, spec)
            if spec.dictionaries_without_nulls:
                # Opened to be read as dictionaries (the format decides how a
                # fragment is decoded), opened again as plain strings when a
                # footer counts a null: Arrow 25's scan loses the rows of a
                # row group whose dictionary-read column is all null.
                plain, spec = spec, _with_dictionaries(spec)
                fragments, skipped = _open_all(location, files, spec, checked, skip_bad_files)
                if not all(_no_nulls(f, column) for f in fragments
                           for column in plain.dictionaries_without_nulls):
                    spec = plain
                    fragments, skipped = _open_all(location, files, spec, checked,
                                                   skip_bad_files)
            else:
                fragments, skipped = _open_all(location, files, spec, checked, skip_bad_files)
            deferred = False
            if prefer_keys and fragments and all(_keyed(f) for f in fragments):
                columns = [UNIT_KEY if name == "unit_id" else name for name in columns]
                spec = replace(spec, not_null=tuple(UNIT_KEY if name == "unit_id" else name
                                                    for name in spec.not_null))
                deferred = defer_filter and all(_no_nulls(f, column) for f in fragments
                                                for column in spec.not_null)
            if deferred:
                fragments = [part for f in fragments
                             if (part := f.subset(filter=filter)).row_groups]
                table, unreadable = _scan(
                    location, fragments, spec,
                    {name: pc.field(name) for name in dict.fromkeys(
                        [*columns, *spec.filtered])}, None, skip_bad_files)
                skipped += unreadable
                if skipped and len(skipped) == len(files):
                    raise AnalysisInputError(
                        f"every file of the {spec.noun} at {location} was skipped; the "
                        f"first: {skipped[0].path}: {skipped[0].reason}")
                return LogTable(table, tuple(skipped), filtered=False)
            projection = {name: pc.field(name) for name in columns}
            projection.update({f"{_NULL_FLAG}{name}": pc.field(name).is_null()
                               for name in spec.not_null if name not in columns})
            table, unreadable = _scan(location, fragments, spec, projection, filter,
                                      skip_bad_files)
            skipped += unreadable
            if skipped and len(skipped) == len(files):
                raise AnalysisInputError(
                    f"every file of the {spec.noun} at {location} was skipped; the first: "
                    f"{skipped[0].path}: {skipped[0].reason}")
            problem = _first_problem(table, spec, columns)
            if problem is not None:
                raise AnalysisInputError(_locate(location, fragments, spec, checked, filter,
                                                 problem, [s.path for s in unreadable]))
            return LogTable(table.drop_columns([n for n in table.column_names
                                                if n.startswith(_NULL_FLAG)]),
                            tuple(skipped))
    except LogStorageError as exc:
        raise LogStorageUnavailable(str(exc)) from None


def _keyed(fragment: pads.ParquetFileFragment) -> bool:
    """Whether every row of a file has a ``unit_key``, by its footer: the column
    is int64 and each row group's statistics count no null (a file written before
    the key existed, or without statistics, is not keyed)."""
    index = fragment.physical_schema.get_field_index(UNIT_KEY)
    return (index >= 0 and pa.types.is_int64(fragment.physical_schema.field(index).type)
            and _no_nulls(fragment, UNIT_KEY))


def _open_all(location: LogLocation, files: list[str], spec: LogSpec, checked: list[str],
              skip_bad_files: bool) -> tuple[list[pads.ParquetFileFragment], list[SkippedFile]]:
    """Every file's checked fragment, in file order (footers fetched in parallel:
    on an object store each is a request)."""
    def one(path: str) -> pads.ParquetFileFragment | _BadFile:
        try:
            return _opened(location, path, spec, checked)
        except _BadFile as bad:
            return bad

    with ThreadPoolExecutor(max_workers=min(16, len(files))) as pool:
        opened = list(pool.map(one, files))
    fragments, skipped = [], []
    for result in opened:
        if isinstance(result, _BadFile):
            if not skip_bad_files:
                raise AnalysisInputError(f"{spec.noun} file {result.path}: {result.reason} "
                                         "(--skip-bad-files leaves such files out)")
            skipped.append(SkippedFile(log=spec.noun, path=result.path, reason=result.reason))
        else:
            fragments.append(result)
    return fragments, skipped


def _dataset(location: LogLocation, fragments: list[pads.ParquetFileFragment],
             spec: LogSpec) -> pads.FileSystemDataset:
    return pads.FileSystemDataset(fragments, schema=spec.as_read, format=spec.format,
                                  filesystem=location.fs)


def _scan(location: LogLocation, fragments: list[pads.ParquetFileFragment], spec: LogSpec,
          projection: dict[str, pc.Expression], filter: pc.Expression | None,
          skip_bad_files: bool) -> tuple[pa.Table, list[SkippedFile]]:
    """The filtered rows of the files. A file whose data pages cannot be decoded
    (its footer was fine) is found by scanning the files one by one: named, or
    left out with ``skip_bad_files``."""
    if not fragments:
        return pads.dataset(spec.as_read.empty_table()).to_table(
            columns=projection, filter=filter), []
    try:
        return _dataset(location, fragments, spec).to_table(
            columns=projection, filter=filter), []
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, OSError):
        pass
    good, skipped = [], []
    for fragment in fragments:
        try:
            fragment.to_table(schema=spec.as_read, columns=projection, filter=filter)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError,
                OSError) as exc:
            reason = f"cannot be decoded ({_cause(exc, fragment.path)})"
            shown = _shown(location, fragment.path)
            if not skip_bad_files:
                raise AnalysisInputError(f"{spec.noun} file {shown}: {reason} "
                                         "(--skip-bad-files leaves such files out)") from None
            skipped.append(SkippedFile(log=spec.noun, path=shown, reason=reason))
        else:
            good.append(fragment)
    if not good:
        return pads.dataset(spec.as_read.empty_table()).to_table(
            columns=projection, filter=filter), skipped
    return _dataset(location, good, spec).to_table(columns=projection, filter=filter), skipped


def _first_problem(table: pa.Table, spec: LogSpec, columns: list[str]) -> str | None:
    """The first kind of bad value in the rows read (whole columns at once: null
    counts are kept by Arrow, finiteness is one vectorized pass), or None."""
    for name in spec.not_null:
        if name in columns:
            if table[name].null_count:
                return name
        elif pc.any(table[f"{_NULL_FLAG}{name}"]).as_py():
            return name
    for name in spec.finite:
        if table.num_rows and not pc.all(pc.is_finite(table[name])).as_py():
            return name
    return None


def _locate(location: LogLocation, fragments: list[pads.ParquetFileFragment], spec: LogSpec,
            checked: list[str], filter: pc.Expression, column: str,
            unreadable: list[str]) -> str:
    """The message for the first row, in file order, whose ``column`` is null (or
    not finite) among the rows ``filter`` keeps: file, row and row group.

    Each file is read whole (only these columns) and filtered in memory, with
    the row positions carried along; Parquet statistics are not consulted, since
    they leave NaN out and would let a filter on finiteness skip the very row
    group that holds one.
    """
    finite = column in spec.finite
    bad = pc.field(column).is_null()
    if finite:
        bad = bad | ~pc.is_finite(pc.field(column))
    for fragment in fragments:
        if _shown(location, fragment.path) in unreadable:
            continue
        whole = fragment.to_table(schema=spec.as_read, columns=checked)
        whole = whole.append_column(_ROW, pa.array(np.arange(whole.num_rows, dtype=np.int64)))
        hits = pads.dataset(whole).to_table(columns=[_ROW, column], filter=filter & bad)
        if hits.num_rows == 0:
            continue
        row = int(hits[_ROW][0].as_py())
        sizes = [group.num_rows for group in fragment.row_groups]
        group = int(np.searchsorted(np.cumsum(sizes), row, side="right"))
        value = hits[column][0].as_py()
        what = (f"{column} is {value} (not a finite number)" if finite and value is not None
                else f"{column} is null")
        scope = ("in an event of the analysed metrics" if spec.noun == OUTCOMES_LOG.noun
                 else "in a primary decision of the experiment")
        return (f"{spec.noun} file {_shown(location, fragment.path)}: row {row} (row group "
                f"{group}): {what} {scope}")
    return f"the {spec.noun} at {location} holds a null or non-finite {column}"


def _micros(column: pa.ChunkedArray) -> np.ndarray:
    """A timestamp column without nulls as its int64 ticks: each chunk viewed in
    place, one concatenation (a cast would copy every chunk first)."""
    return _int64s(pa.chunked_array([c.view(pa.int64()) for c in column.chunks],
                                    type=pa.int64()))


def _as_of_scalar(as_of: dt.datetime) -> pa.Scalar:
    return pa.scalar(int(as_of.timestamp() * MICROS), type=pa.int64()).cast(
        pa.timestamp("us", tz="UTC"))


def encode(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Integer codes (int64) and the dictionary of a string column, in one hash pass.

    Arrow encodes chunk after chunk with one insertion-ordered memo table, so each
    chunk's dictionary is a prefix of the last one's and every chunk's indices are
    valid against the last dictionary; that is checked, not assumed.
    """
    if len(column) == 0:
        return np.zeros(0, dtype=np.int64), pa.array([], type=column.type)
    encoded = pc.dictionary_encode(column)
    chunks = [c for c in encoded.chunks if len(c)]
    dictionary = chunks[-1].dictionary
    for chunk in chunks:
        size = len(chunk.dictionary)
        if size != len(dictionary) and not chunk.dictionary.equals(dictionary.slice(0, size)):
            combined = column.combine_chunks().dictionary_encode()
            return (np.asarray(combined.indices.to_numpy(zero_copy_only=False),
                               dtype=np.int64), combined.dictionary)
    codes = np.concatenate([np.asarray(c.indices.to_numpy(zero_copy_only=False),
                                       dtype=np.int64) for c in chunks])
    return codes, dictionary


def dictionary_codes(column: pa.ChunkedArray) -> tuple[np.ndarray, list[str | None]]:
    """Row codes into one dictionary of a dictionary-typed column, and its values.

    Chunks read from different files have different dictionaries; unifying them
    remaps indices of small dictionaries only. A null row is code -1.
    """
    unified = column.unify_dictionaries()
    chunks = [c for c in unified.chunks if len(c)]
    if not chunks:
        return np.zeros(0, dtype=np.int32), []
    parts = []
    for chunk in chunks:
        indices = chunk.indices
        if indices.null_count:
            indices = pc.fill_null(indices, -1)
        parts.append(np.asarray(indices.to_numpy(zero_copy_only=False), dtype=np.int32))
    values = [None if v is None else str(v) for v in chunks[0].dictionary.to_pylist()]
    return np.concatenate(parts), values


# --------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class DecisionRows:
    """The numeric columns of an experiment's primary decisions, one entry per row.

    ``arm`` indexes the config's arms; ``at`` is microseconds since the epoch;
    ``served`` codes the served model version as ``(name + 1) * (len(versions) + 1)
    + version + 1`` over ``names``/``versions`` (0 in either part: not logged).
    ``split`` indexes ``splits``, the distinct logged weight vectors (config arm
    order), -1 where the row has no logged split.
    """

    table: pa.Table
    arm: np.ndarray
    at: np.ndarray
    served: np.ndarray
    names: list[str | None]
    versions: list[str | None]
    split: np.ndarray
    splits: tuple[tuple[float, ...], ...] = ()

    def served_label(self, key: int) -> str | None:
        """``model/version`` of a served code; None when either part was not logged."""
        name, version = divmod(int(key), len(self.versions) + 1)
        if name == 0 or version == 0:
            return None
        return f"{self.names[name - 1]}/{self.versions[version - 1]}"

    def subset(self, mask: np.ndarray) -> DecisionRows:
        return DecisionRows(self.table.filter(pa.array(mask)), self.arm[mask], self.at[mask],
                            self.served[mask], self.names, self.versions, self.split[mask],
                            self.splits)


def _read_decisions(decisions: LogPlace, experiment: ExperimentSpec, as_of: dt.datetime,
                    segments: tuple[str, ...], skip_bad_files: bool = False,
                    prefer_keys: bool = False) -> LogTable:
    columns = ["unit_id", "timestamp", *DICTIONARY_COLUMNS] + (
        ["context"] if segments or experiment.cluster else [])
    return _read(
        decisions, DECISION_LOG, columns,
        (pc.field("experiment_id") == experiment.id)
        & _or_null("role", pc.field("role") == "primary")
        & _or_null("timestamp", pc.field("timestamp") <= _as_of_scalar(as_of))
        & not_forced(), skip_bad_files, prefer_keys)


def not_forced() -> pc.Expression:
    """The decisions no forcing header chose: ``forced`` false, or null (files
    written before the column, shadow rows). A forced arm was not randomized,
    so its rows are QA traffic, no experiment's evidence: a unit whose only
    decisions were forced is not exposed."""
    return _or_null("forced", ~pc.field("forced"))


# Arms the router logs under an experiment for units it does not expose to it: a
# unit whose layer bucket is in the experiment's range but whose context fails
# its targeting (``ineligible``, served the layer's default), and a layer's
# holdout. The analysis counts only eligible exposed units, so these rows are no
# exposures (and no arm the config lacks). The config refuses them as arm names.
NOT_EXPOSED_ARMS = ("ineligible", "holdout")


def exposed_only(table: pa.Table, arms: list[str]) -> pa.Table:
    """``table``'s decisions without those in :data:`NOT_EXPOSED_ARMS`."""
    marks = [name for name in NOT_EXPOSED_ARMS if name not in arms]
    if not table.num_rows or not marks:
        return table
    unexposed = pc.is_in(table["arm"], value_set=pa.array(marks, type=pa.string()))
    if not pc.any(unexposed).as_py():
        return table
    return table.filter(pc.invert(unexposed))


def decision_rows(table: pa.Table, experiment: ExperimentSpec) -> DecisionRows:
    """Arm codes, times and served versions of decisions read by :func:`_read_decisions`.

    A decision in an arm the config does not name is an error: the log and the
    config disagree. Decisions the router logs under the experiment without
    exposing the unit to it (:data:`NOT_EXPOSED_ARMS`) are left out first.
    """
    arms = [a.name for a in experiment.arms]
    table = exposed_only(table, arms)
    codes, labels = dictionary_codes(table["arm"])
    # index -1 (a null arm) picks the appended -1: unknown, like a name the config lacks
    lookup = np.array([arms.index(v) if v in arms else -1 for v in labels] + [-1],
                      dtype=np.int64)
    arm = lookup[codes]
    unknown = arm < 0
    if unknown.any():
        seen = sorted({None if c < 0 else labels[c] for c in np.unique(codes[unknown])}, key=str)
        raise AnalysisInputError(
            f"{int(unknown.sum())} decisions of experiment {experiment.id!r} are in arms the "
            f"config does not name: {seen}; configured arms are {arms}")
    names, name_labels = dictionary_codes(table["model_name"])
    versions, version_labels = dictionary_codes(table["model_version"])
    served = (names + 1) * (len(version_labels) + 1) + (versions + 1)
    split, splits = _splits(table, experiment)
    return DecisionRows(table, arm, _micros(table["timestamp"]), served, name_labels,
                        version_labels, split, splits)


def _splits(table: pa.Table, experiment: ExperimentSpec
            ) -> tuple[np.ndarray, tuple[tuple[float, ...], ...]]:
    """Per row, the index of its logged split among the distinct weight vectors
    (-1: none logged, as in logs written before the column existed). Labels that
    give the same weights (the arms in another order) share one index."""
    if "arm_weights" not in table.column_names:
        return np.full(table.num_rows, -1, dtype=np.int64), ()
    codes, labels = dictionary_codes(table["arm_weights"])
    arms = [a.name for a in experiment.arms]
    vectors: dict[tuple[float, ...], int] = {}
    lookup = []
    for label in labels:
        if label is None:
            lookup.append(-1)
            continue
        try:
            weights = split_weights(label, arms)
        except ValueError as exc:
            raise AnalysisInputError(
                f"decision log: experiment {experiment.id!r}: {exc}") from None
        lookup.append(vectors.setdefault(weights, len(vectors)))
    # index -1 (a null row) picks the appended -1
    split = np.asarray([*lookup, -1], dtype=np.int64)[codes]
    return split, tuple(vectors)


def find_periods(rows: DecisionRows, experiment: ExperimentSpec) -> tuple[Period, ...]:
    """The experiment's periods (:func:`split_periods`); none without decisions.

    Counting (arm, served version) pairs is one pass over integer codes; only when
    some arm served more than one version are the pairs' first and last times
    aggregated.
    """
    if rows.arm.size == 0:
        return ()
    arms = tuple(a.name for a in experiment.arms)
    # a factorial's cells that differ in a label factor compare it, whatever they serve
    treatments = label_treatments(experiment.factors, arms) if experiment.factors else None
    size = (len(rows.names) + 1) * (len(rows.versions) + 1)
    pair = rows.arm * size + rows.served
    present = np.flatnonzero(np.bincount(pair, minlength=len(arms) * size))
    per_arm: dict[str, list[str]] = {}
    for p in present:
        label = rows.served_label(int(p) % size)
        if label is not None:
            per_arm.setdefault(arms[int(p) // size], []).append(label)
    if all(len(labels) == 1 for labels in per_arm.values()):
        start = from_micros(int(rows.at.min()))
        served = {a: tuple(per_arm.get(a, ())) for a in arms}
        return (Period(index=1, start=start, served=served,
                       warnings=same_version_warnings(arms, served, start, treatments)),)
    spans_table = pa.table({"pair": pa.array(pair), "at": pa.array(rows.at)}).group_by(
        "pair").aggregate([("at", "min"), ("at", "max")])
    spans = []
    for p, first, last in zip(spans_table["pair"].to_pylist(), spans_table["at_min"].to_pylist(),
                              spans_table["at_max"].to_pylist(), strict=True):
        label = rows.served_label(p % size)
        if label is not None:
            spans.append(ServedSpan(arms[p // size], label, first, last))
    return split_periods(arms, spans, treatments)


def segments_at_exposure(table: pa.Table, codes: np.ndarray, n_codes: int,
                         first_rows: np.ndarray, segments: tuple[str, ...]
                         ) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
    """Each unit's value of every segment attribute in the ``context`` of its
    first decision (``first_rows``), as codes into the attribute's labels; a
    missing attribute is :data:`MISSING_SEGMENT`."""
    segment_codes: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    for attribute in segments:
        looked_up = pc.map_lookup(table["context"], attribute, "first")
        filled = pc.fill_null(looked_up, MISSING_SEGMENT).combine_chunks().dictionary_encode()
        per_row = np.asarray(filled.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        per_unit = np.zeros(n_codes, dtype=np.int64)
        per_unit[codes[first_rows]] = per_row[first_rows]
        labels = tuple(str(v) for v in filled.dictionary.to_pylist())
        segment_codes[attribute] = (per_unit, labels)
    return segment_codes


def clusters_at_exposure(table: pa.Table, codes: np.ndarray, n_codes: int,
                         first_rows: np.ndarray, attribute: str | None) -> np.ndarray | None:
    """Each unit's cluster in a cluster-randomized experiment: a code for the
    value of ``attribute`` in the context of its first decision, which is the
    text routing hashed (None for an experiment without clusters). Routing
    places no unit whose context lacks the attribute; a log that has such
    units anyway gives them one cluster, :data:`MISSING_SEGMENT`, which can
    only widen the interval."""
    if attribute is None:
        return None
    if "context" not in table.column_names:
        return np.zeros(n_codes, dtype=np.int64)
    return segments_at_exposure(table, codes, n_codes, first_rows, (attribute,))[attribute][0]


def _exposures(rows: DecisionRows, codes: np.ndarray, n_codes: int,
               experiment: ExperimentSpec, segments: tuple[str, ...]) -> Exposures:
    """Exposures indexed by unit code (``codes`` per decision row, ``n_codes`` of
    them, each with at least one decision)."""
    arms = tuple(a.name for a in experiment.arms)
    weights = tuple(float(a.weight_bp) for a in experiment.arms)
    if rows.arm.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Exposures(arms, weights, empty, empty, cluster_attribute=experiment.cluster,
                         clusters=None if experiment.cluster is None else empty)
    arm, exposed_at, crossovers, first_rows = first_exposures(codes, n_codes, rows.arm, rows.at)
    segment_codes = segments_at_exposure(rows.table, codes, n_codes, first_rows, segments)
    # The split at exposure; among a unit's first rows (same time, same arm) the
    # smallest code, with none logged (-1) first, as the packed minimum of
    # _one_period picks it.
    split = np.full(n_codes, -1, dtype=np.int64)
    if rows.splits:
        split[:] = len(rows.splits)
        np.minimum.at(split, codes[first_rows], rows.split[first_rows])
    return Exposures(arms, weights, arm, exposed_at, crossovers, segment_codes,
                     split=split, splits=rows.splits, cluster_attribute=experiment.cluster,
                     clusters=clusters_at_exposure(rows.table, codes, n_codes, first_rows,
                                                   experiment.cluster))


def load_exposures(
    decisions: LogPlace,
    experiment: ExperimentSpec,
    as_of: dt.datetime,
    segments: tuple[str, ...] = (),
    skip_bad_files: bool = False,
) -> tuple[Exposures, pa.Array]:
    """Exposed units of ``experiment`` by ``as_of`` over all its periods, and the
    unit-id dictionary.

    Only primary decisions count (a shadow call exposes nobody). Decisions in an
    arm the config does not name are an error: the log and the config disagree.
    """
    rows = decision_rows(
        _read_decisions(decisions, experiment, as_of, segments, skip_bad_files).table, experiment)
    codes, dictionary = encode(rows.table["unit_id"])
    return _exposures(rows, codes, len(dictionary), experiment, segments), dictionary


# --------------------------------------------------------------------------- outcomes


def _read_outcomes(outcomes: LogPlace, metrics: tuple[str, ...], experiment_id: str,
                   as_of: dt.datetime, skip_bad_files: bool = False,
                   prefer_keys: bool = False, defer_filter: bool = False) -> LogTable:
    """Outcome events for ``metrics`` known by ``as_of``: received by then (and not
    stamped after it).

    An event tagged with another experiment's id is not this experiment's; an
    untagged event belongs to every experiment its unit is in.
    (:func:`_outcome_filter` is the same filter over rows read with
    ``defer_filter``.)
    """
    as_of_us = _as_of_scalar(as_of)
    return _read(
        outcomes, OUTCOMES_LOG, ["unit_id", "metric", "value", "timestamp", "received_at"],
        _or_null("metric", pc.field("metric").isin(list(metrics)))
        & (pc.field("experiment_id").is_null() | (pc.field("experiment_id") == experiment_id))
        & _or_null("timestamp", pc.field("timestamp") <= as_of_us)
        & _or_null("received_at", pc.field("received_at") <= as_of_us), skip_bad_files,
        prefer_keys, defer_filter)


def _outcome_rows(table: pa.Table, unit: np.ndarray, metrics: tuple[str, ...],
                  metric: np.ndarray | None = None) -> OutcomeRows:
    """Numeric columns of outcome rows; ``unit`` is -1 for units never exposed, and
    those rows are dropped from the arrays (not from the table: that would copy
    every unit-id string once more). ``metric``, when given, is
    :func:`_metric_codes` of the table."""
    exposed = unit >= 0
    keep = None if exposed.all() else exposed
    if metric is None:
        metric = _metric_codes(table, metrics)
    return OutcomeRows(metrics, unit if keep is None else unit[keep],
                       metric if keep is None else metric[keep],
                       _kept(table["value"], keep, np.float64),
                       _kept(table["timestamp"], keep, np.int64),
                       _kept(table["received_at"], keep, np.int64))


def _metric_codes(table: pa.Table, metrics: tuple[str, ...]) -> np.ndarray:
    """Each outcome row's metric as its index in ``metrics``, -1 for another (or
    none). A dictionary-read column is looked up by its dictionary's entries."""
    column = table["metric"]
    if not pa.types.is_dictionary(column.type):
        return _codes(pc.index_in(column, value_set=pa.array(list(metrics))))
    codes, labels = dictionary_codes(column)
    # index -1 (a null row) picks the appended -1; one byte a row is enough for
    # a plan's metrics, and a quarter of the memory traffic of int32
    lookup = [metrics.index(v) if v in metrics else -1 for v in labels] + [-1]
    found: np.ndarray = np.asarray(lookup, dtype=np.int8 if len(metrics) < 127 else np.int64
                                   )[codes]
    return found


def _kept(column: pa.ChunkedArray, keep: np.ndarray | None, dtype: type[Any]) -> np.ndarray:
    """A column without nulls as one numpy array (timestamps as their ticks), only
    the rows ``keep`` marks (all without it). Each chunk is viewed in place and
    copied once, straight into the result: no concatenated copy to filter again."""
    out = np.empty(len(column) if keep is None else int(np.count_nonzero(keep)), dtype=dtype)
    start = done = 0
    for chunk in column.chunks:
        values = np.asarray(chunk.to_numpy(zero_copy_only=False))
        if values.dtype.kind == "M":
            values = values.view(np.int64)
        size = len(values)
        if keep is None:
            out[done:done + size] = values
            done += size
        else:
            part = keep[start:start + size]
            kept = int(np.count_nonzero(part))
            out[done:done + kept] = values[part]
            done += kept
        start += size
    return out


def load_outcomes(
    outcomes: LogPlace,
    unit_dictionary: pa.Array,
    metrics: tuple[str, ...],
    experiment_id: str,
    as_of: dt.datetime,
    skip_bad_files: bool = False,
) -> OutcomeRows:
    """Outcome events of the units in ``unit_dictionary`` for ``metrics``, known by
    ``as_of`` (see :func:`_read_outcomes`)."""
    table = _read_outcomes(outcomes, metrics, experiment_id, as_of, skip_bad_files).table
    unit = _codes(pc.index_in(table["unit_id"], value_set=unit_dictionary))
    return _outcome_rows(table, unit, metrics)


# --------------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class ExperimentData:
    """One period of an experiment, ready for :func:`rollout.experiments.analysis.analyze`:
    its exposures, their outcome rows, the exposed units (indexed like the
    exposures), the period and every period of the experiment (``period`` is
    None only when nobody was exposed). ``units`` holds the unit ids, or their
    ``unit_key`` values (int64) when both logs were read by key; a unit's key is
    :func:`serving.kernel.ids.unit_key` of its id."""

    exposures: Exposures
    outcomes: OutcomeRows
    units: pa.Array
    period: Period | None
    periods: tuple[Period, ...]
    skipped_files: tuple[SkippedFile, ...] = ()


def load_experiment(
    decisions: LogPlace,
    outcomes: LogPlace,
    experiment: ExperimentSpec,
    metrics: tuple[str, ...],
    as_of: dt.datetime,
    segments: tuple[str, ...] = (),
    period: PeriodChoice = "latest",
    *,
    skip_bad_files: bool = False,
) -> ExperimentData:
    """One period of the experiment (the latest by default, else the 1-based index).

    The two logs are read side by side (Arrow releases the GIL). Hashing unit-id
    strings is most of the cost at millions of rows, so for a one-period
    experiment without segments the first exposures come from one multi-threaded
    hash aggregation and outcome rows find their unit by a hash join, both in
    Arrow's engine; with segments, the context at each unit's first decision
    needs row-level codes. Both paths give the same exposures and the same
    figures; only the order of units differs, and no figure depends on it.

    When every file of both logs has a ``unit_key`` in every row (by their
    footers), units are read, grouped and matched by that int64 instead of by
    id strings (:func:`_one_period_by_key`), with the same exposures and
    figures; a log with a file from before the key existed is read by id.

    Both logs are checked against their declared schemas as they are read
    (:func:`_read`); with ``skip_bad_files`` unreadable files are left out and
    listed in ``skipped_files``.
    """
    return _load(decisions, outcomes, experiment, metrics, as_of, segments, period,
                 skip_bad_files)[0]


def load_all_periods(
    decisions: LogPlace,
    outcomes: LogPlace,
    experiment: ExperimentSpec,
    metrics: tuple[str, ...],
    as_of: dt.datetime,
    segments: tuple[str, ...] = (),
    *,
    skip_bad_files: bool = False,
) -> list[ExperimentData]:
    """Every period of the experiment, each loaded as :func:`load_experiment` loads one."""
    return _load(decisions, outcomes, experiment, metrics, as_of, segments, "all",
                 skip_bad_files)


def _load(decisions: LogPlace, outcomes: LogPlace, experiment: ExperimentSpec,
          metrics: tuple[str, ...], as_of: dt.datetime, segments: tuple[str, ...],
          which: PeriodChoice | Literal["all"], skip_bad_files: bool = False
          ) -> list[ExperimentData]:
    return _load_logs(decisions, outcomes, experiment, metrics, as_of, segments, which,
                      skip_bad_files)


def _load_logs(decisions: LogPlace, outcomes: LogPlace, experiment: ExperimentSpec,
               metrics: tuple[str, ...], as_of: dt.datetime, segments: tuple[str, ...],
               which: PeriodChoice | Literal["all"], skip_bad_files: bool = False
               ) -> list[ExperimentData]:
    with ThreadPoolExecutor(max_workers=1) as pool:  # leaving waits for the outcomes side
        pending = pool.submit(_read_happened, outcomes, metrics, experiment.id, as_of,
                              skip_bad_files)
        decided_log = _read_decisions(decisions, experiment, as_of, segments, skip_bad_files,
                                      True)
        # The decisions are coded while the outcomes are still being read; an
        # error waits for the outcomes log's own, which comes first as before.
        try:
            coded: DecisionRows | AnalysisInputError = decision_rows(decided_log.table,
                                                                     experiment)
        except AnalysisInputError as exc:
            coded = exc
        read = pending.result()
    happened_log = read.log
    if isinstance(coded, AnalysisInputError):
        raise coded
    rows = coded
    # Keys match keys only: when one log is keyed and the other is not (some of
    # its files predate the key), the keyed one is read again by id.
    if _unit_column(decided_log.table) != _unit_column(happened_log.table):
        if _unit_column(decided_log.table) == UNIT_KEY:
            decided_log = _read_decisions(decisions, experiment, as_of, segments,
                                          skip_bad_files)
            rows = decision_rows(decided_log.table, experiment)
        else:
            happened_log = _read_outcomes(outcomes, metrics, experiment.id, as_of,
                                          skip_bad_files)
            read = _Happened(happened_log)
    decided = decided_log.table
    unit_column = _unit_column(decided)
    skipped = decided_log.skipped + happened_log.skipped
    periods = find_periods(rows, experiment)
    chosen = _choose(periods, which, experiment.id)
    if len(periods) <= 1:
        data = _one_period(rows, read, experiment, metrics, segments)
        period = periods[0].model_copy(update={"units": data.exposures.n_units}) if periods \
            else None
        return [ExperimentData(data.exposures, data.outcomes, data.units, period,
                               () if period is None else (period,), skipped)]
    in_period = [(rows.at >= to_micros(p.start))
                 & (rows.at < (np.iinfo(np.int64).max if p.end is None else to_micros(p.end)))
                 for p in periods]
    periods = tuple(p.model_copy(update={"units": int(pc.count_distinct(
        rows.table[unit_column].filter(pa.array(mask))).as_py())})
                    for p, mask in zip(periods, in_period, strict=True))
    happened = read.table
    entered = pa.table({unit_column: rows.table[unit_column], "at": pa.array(rows.at)}
                       ).group_by(unit_column).aggregate([("at", "min")])
    out = []
    for index in chosen:
        period_rows = rows.subset(in_period[index - 1])
        codes, dictionary = encode(period_rows.table[unit_column])
        exposures = _exposures(period_rows, codes, len(dictionary), experiment, segments)
        if index > 1:
            position = _codes(pc.index_in(dictionary,
                                          value_set=entered[unit_column].combine_chunks()))
            exposures = _with_entry(exposures, np.asarray(
                entered["at_min"].to_numpy(), dtype=np.int64)[position])
        unit = _codes(pc.index_in(happened[unit_column], value_set=dictionary))
        out.append(ExperimentData(exposures, _outcome_rows(happened, unit, metrics),
                                  dictionary, periods[index - 1], periods, skipped))
    return out


def _with_entry(exposures: Exposures, entered_at: np.ndarray) -> Exposures:
    return replace(exposures, entered_at=entered_at)


def _choose(periods: tuple[Period, ...], which: PeriodChoice | Literal["all"],
            experiment_id: str) -> list[int]:
    """The 1-based indices of the periods to load; a period that does not exist is
    an :class:`AnalysisInputError`."""
    count = max(len(periods), 1)
    if which == "all":
        return list(range(1, count + 1))
    if which == "latest":
        return [count]
    if not 1 <= which <= count:
        raise AnalysisInputError(
            f"experiment {experiment_id!r} has {count} period{'s' if count > 1 else ''} "
            f"(its arms' served versions changed {count - 1} times); choose a period "
            f"from 1 to {count}, or all")
    return [which]


@dataclass(frozen=True)
class _Loaded:
    exposures: Exposures
    outcomes: OutcomeRows
    units: pa.Array


def _one_period(rows: DecisionRows, happened: _Happened, experiment: ExperimentSpec,
                metrics: tuple[str, ...], segments: tuple[str, ...]) -> _Loaded:
    """Exposures and outcomes of an experiment with one period (see
    :func:`load_experiment` for the two paths)."""
    # One int64 per row: time since the first decision, then arm, then split
    # (+1, so "none logged" is 0); its minimum per unit is the exposure, exactly.
    # The split takes the bits it needs; a log too long to leave the time enough
    # bits (years, with many splits) takes the row-level path instead.
    split_bits = len(rows.splits).bit_length()
    low_bits = ARM_BITS + split_bits
    base = int(rows.at.min()) if rows.arm.size else 0
    name = _unit_column(rows.table)
    # Segments and clusters are read from each unit's first row: the row-level path.
    if segments or experiment.cluster or rows.arm.size == 0 or (
            int(rows.at.max()) - base) >> (63 - low_bits):
        codes, dictionary = encode(rows.table[name])
        exposures = _exposures(rows, codes, len(dictionary), experiment, segments)
        unit = _codes(pc.index_in(happened.table[name], value_set=dictionary))
        return _Loaded(exposures, _outcome_rows(happened.table, unit, metrics), dictionary)
    packed = ((rows.at - base) << low_bits) | (rows.arm << split_bits)
    if split_bits:
        packed |= rows.split + 1
    if name == UNIT_KEY:
        return _one_period_by_key(rows, happened, experiment, metrics, packed, base)
    first = pa.table({name: rows.table[name], "first": pa.array(packed),
                      "arm": pa.array(rows.arm)}).group_by(name).aggregate(
        [("first", "min"), ("arm", "min_max")])
    first_packed = np.asarray(first["first_min"].to_numpy(), dtype=np.int64)
    arm_range = pc.struct_field(first["arm_min_max"], "min"), pc.struct_field(
        first["arm_min_max"], "max")
    crossovers = int(pc.sum(pc.not_equal(*arm_range)).as_py() or 0)
    exposures = _packed_exposures(rows, experiment, first_packed, base, crossovers)
    units = first[name]
    keyed = pa.table({name: units, "unit": pa.array(np.arange(len(units)))})
    joined = happened.table.join(keyed, keys=name, join_type="inner")
    unit = np.asarray(joined["unit"].to_numpy(), dtype=np.int64)
    return _Loaded(exposures, _outcome_rows(joined, unit, metrics), units.combine_chunks())


def _one_period_by_key(rows: DecisionRows, happened: _Happened, experiment: ExperimentSpec,
                       metrics: tuple[str, ...], packed: np.ndarray, base: int) -> _Loaded:
    """:func:`_one_period`'s aggregation when both logs were read by ``unit_key``.

    Arrow's hash aggregation costs about as much on int64 keys as on short id
    strings, and a hash table of millions of units misses the cache at every
    row; :func:`match_units` groups the decision rows and matches the outcome
    rows in cache-sized partitions of the key space, on both cores. The
    exposures are those of the string path, unit for unit; only the order of
    units differs. Outcome rows read unfiltered are matched as they are; the
    ones the filter drops lose their unit, which drops them with the unexposed.
    """
    # Imported here: numba takes a few tenths of a second to import, and
    # `rampart serve` imports this module only to register analysis plans.
    from rollout.experiments.unit_groups import match_units

    table = happened.log.table
    keys = happened.keys if happened.keys is not None else _int64s(table[UNIT_KEY])
    match = match_units(_int64s(rows.table[UNIT_KEY]), packed, rows.arm, keys)
    exposures = _packed_exposures(rows, experiment, match.first, base, match.crossovers)
    unit = match.outcome_codes
    if happened.keep is not None:
        np.copyto(unit, -1, where=~happened.keep)
    return _Loaded(exposures, _outcome_rows(table, unit, metrics, happened.metric),
                   pa.array(match.keys, type=pa.int64()))


@dataclass(frozen=True)
class _Happened:
    """The outcomes log as read, and what the keyed path needs of it, computed in
    the reading thread while the decisions are coded: its keys and metric codes
    (None when it was read by id), row for row with ``log.table``. ``keep``
    marks the rows the outcomes filter keeps when ``log.table`` was read
    unfiltered (None: every row is kept)."""

    log: LogTable
    keys: np.ndarray | None = None
    metric: np.ndarray | None = None
    keep: np.ndarray | None = None

    @cached_property
    def table(self) -> pa.Table:
        """The rows the outcomes filter keeps."""
        if self.keep is None:
            return self.log.table
        return self.log.table.filter(pa.array(self.keep))


def _read_happened(outcomes: LogPlace, metrics: tuple[str, ...], experiment_id: str,
                   as_of: dt.datetime, skip_bad_files: bool,
                   defer_filter: bool = True) -> _Happened:
    log = _read_outcomes(outcomes, metrics, experiment_id, as_of, skip_bad_files, True,
                         defer_filter)
    if _unit_column(log.table) != UNIT_KEY:
        return _Happened(log)
    metric = _metric_codes(log.table, metrics)
    keep = None
    if not log.filtered:
        keep = _outcome_filter(log.table, metric, experiment_id, as_of)
        if not _finite_where(log.table["value"], keep):
            # a kept event's value is not finite: the filtered read names its row
            return _read_happened(outcomes, metrics, experiment_id, as_of, skip_bad_files,
                                  defer_filter=False)
    return _Happened(log, _int64s(log.table[UNIT_KEY]), metric, keep)


def _outcome_filter(table: pa.Table, metric: np.ndarray, experiment_id: str,
                    as_of: dt.datetime) -> np.ndarray:
    """:func:`_read_outcomes`'s filter over rows read unfiltered, whose footers
    count no null in the non-null columns: an event of the plan's metrics
    (``metric``, its :func:`_metric_codes`), untagged or tagged with this
    experiment, stamped and received by ``as_of``. Chunk by chunk, in place."""
    keep = metric >= 0
    limit = int(_as_of_scalar(as_of).cast(pa.int64()).as_py())
    start = 0
    tagged = table["experiment_id"]
    for index, chunk in enumerate(table["timestamp"].chunks):
        end = start + len(chunk)
        part = keep[start:end]
        part &= chunk.view(pa.int64()).to_numpy() <= limit
        part &= table["received_at"].chunk(index).view(pa.int64()).to_numpy() <= limit
        start = end
    if tagged.null_count < len(tagged):
        # untagged (null): every experiment's; tagged: this one's only
        ours = pc.fill_null(pc.equal(tagged, experiment_id), True)
        keep &= np.asarray(ours.to_numpy(zero_copy_only=False), dtype=bool)
    return keep


def _finite_where(column: pa.ChunkedArray, keep: np.ndarray) -> bool:
    """Whether every value ``keep`` marks is finite (the column has no nulls)."""
    start = 0
    for chunk in column.chunks:
        finite = np.isfinite(chunk.to_numpy())
        if not finite.all() and (keep[start:start + len(chunk)] & ~finite).any():
            return False
        start += len(chunk)
    return True


def _int64s(column: pa.ChunkedArray) -> np.ndarray:
    """An int64 column without nulls as one numpy array (each chunk zero-copy,
    one concatenation)."""
    parts = [np.asarray(c.to_numpy(), dtype=np.int64) for c in column.chunks if len(c)]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _packed_exposures(rows: DecisionRows, experiment: ExperimentSpec, first_packed: np.ndarray,
                      base: int, crossovers: int) -> Exposures:
    """Exposures from each unit's minimum packed code (see :func:`_one_period`)."""
    split_bits = len(rows.splits).bit_length()
    low_bits = ARM_BITS + split_bits
    return Exposures(
        tuple(a.name for a in experiment.arms), tuple(float(a.weight_bp) for a in experiment.arms),
        (first_packed >> split_bits) & ((1 << ARM_BITS) - 1),
        (first_packed >> low_bits) + base, crossovers,
        split=(first_packed & ((1 << split_bits) - 1)) - 1, splits=rows.splits)


def _unit_column(table: pa.Table) -> str:
    """The column a table read by :func:`_read` names its units by: ``unit_key``
    when it was read by key, else ``unit_id``."""
    return UNIT_KEY if UNIT_KEY in table.column_names else "unit_id"


def _codes(positions: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """``index_in`` positions as int64, -1 where the value was not found."""
    filled = pc.fill_null(positions, -1)
    return np.asarray(filled.to_numpy(zero_copy_only=False), dtype=np.int64)


def plan_metrics(plan: AnalysisPlan) -> tuple[str, ...]:
    """Every outcome metric name the plan reads (numerators and denominators)."""
    names: list[str] = []
    for spec in (plan.primary, *plan.secondary, *plan.guardrails):
        for name in (spec.name, spec.denominator):
            if name is not None and name not in names:
                names.append(name)
    return tuple(names)


# --------------------------------------------------------------------------- layer holdouts

# A layer's long-term comparison, as an experiment's two arms: the holdout is
# the control, every unit one of the layer's experiments served is "shipped".
HOLDOUT_GROUPS = ("holdout", "shipped")
# Logged with the layer but served its default, as the holdout is, yet outside
# it: neither group (the router's mark for a unit its experiment's targeting
# refused).
INELIGIBLE_ARM = "ineligible"
ROLLOUT_LAYER_PREFIX = "rollout:"  # the decision log's layer of a rollout's split


@dataclass(frozen=True)
class LayerRoute:
    """How the decision log names a layer's decisions. Routing logs them with
    ``layer:<id>``, unless a running rollout of the version served then split
    the unit: the row names ``rollout:<id>`` instead (the layer whose choice was
    served), and is the layer's by its experiment (``experiments``: the
    layer's) or, for a holdout row, by the layer's holdout holding its unit
    (``salt``, ``holdout_bp``) while no holdout routed before (``earlier_holdouts``,
    ``(salt, holdout_bp)`` pairs) does: a unit is held by the first holdout it
    meets. ``attributable`` is False when an earlier holdout hashes another
    unit type, whose id the row does not hold: such rows cannot be placed."""

    id: str
    salt: str
    holdout_bp: int
    experiments: tuple[str, ...]
    earlier_holdouts: tuple[tuple[str, int], ...] = ()
    attributable: bool = True

    @property
    def name(self) -> str:
        return f"layer:{self.id}"


def layer_route(config: RampartConfig, layer_id: str) -> LayerRoute:
    """The :class:`LayerRoute` of a layer of ``config``. Layers are routed where
    their first experiment is in the config."""
    order = list(dict.fromkeys(e.layer for e in config.experiments if e.layer is not None))
    layers = {layer.id: layer for layer in config.layers}
    layer = layers[layer_id]
    earlier = [layers[i] for i in order[:order.index(layer_id)]] if layer_id in order else []
    held_before = [e for e in earlier if e.holdout_bp > 0]
    return LayerRoute(
        layer.id, layer.salt, layer.holdout_bp,
        tuple(e.id for e in config.experiments if e.layer == layer_id),
        tuple((e.salt, e.holdout_bp) for e in held_before),
        all(e.unit == layer.unit for e in held_before))


@dataclass(frozen=True)
class HoldoutData:
    """A layer's holdout comparison, ready for
    :func:`rollout.experiments.analysis.analyze`: ``data.exposures`` has the arms
    :data:`HOLDOUT_GROUPS`, each unit in the group of its first decision in the
    layer (intention to treat), with the outcome events that are untagged or
    tagged with an experiment the layer's decisions name (``experiments``).

    The holdout's sample-ratio test counts units over a time window, not by
    first exposure, so the decisions are kept row by row: ``row_unit`` indexes
    ``data.units``, ``row_group`` indexes :data:`HOLDOUT_GROUPS`,
    ``row_experiment`` indexes ``experiments`` (-1: none, as for the holdout),
    ``row_at`` is microseconds since the epoch."""

    data: ExperimentData
    experiments: tuple[str, ...]
    row_unit: np.ndarray
    row_group: np.ndarray
    row_experiment: np.ndarray
    row_at: np.ndarray
    # holdout rows a rollout relabelled that the layer's holdout holds but that
    # could not be placed (:attr:`LayerRoute.attributable`): left out
    unplaced_rows: int = 0


def _under_rollouts(table: pa.Table, layer: LayerRoute) -> tuple[pa.Table, int]:
    """The rows read that are the layer's: those named ``layer:<id>``, and those
    a rollout relabelled that :class:`LayerRoute` places in it; and how many
    holdout rows could not be placed."""
    named = np.asarray(pc.fill_null(pc.equal(table["layer"], layer.name), False
                                    ).to_numpy(zero_copy_only=False), dtype=bool)
    if named.all():
        return table, 0
    arm_codes, arm_labels = dictionary_codes(table["arm"])
    held = np.asarray([v == HOLDOUT_GROUPS[0] for v in arm_labels] + [False])[arm_codes]
    experiment_codes, experiment_labels = dictionary_codes(table["experiment_id"])
    ours = np.asarray([v in layer.experiments for v in experiment_labels] + [False]
                      )[experiment_codes]
    keep = named | (~held & ours)
    candidates = np.flatnonzero(~named & held & (experiment_codes < 0))
    unplaced = 0
    if candidates.size:
        # imported here: only a log with relabelled holdout rows hashes units
        from serving.routing.assignment import buckets_vectorized

        ids = table["unit_id"].take(pa.array(candidates))
        mine = buckets_vectorized(layer.salt, ids) < layer.holdout_bp
        if not layer.attributable:
            unplaced = int(np.count_nonzero(mine))
        else:
            for salt, holdout_bp in layer.earlier_holdouts:
                mine &= buckets_vectorized(salt, ids) >= holdout_bp
            keep[candidates[mine]] = True
    return table.filter(pa.array(keep)), unplaced


def load_holdout(
    decisions: LogPlace,
    outcomes: LogPlace,
    layer: LayerRoute,
    metrics: tuple[str, ...],
    as_of: dt.datetime,
    segments: tuple[str, ...] = (),
    *,
    skip_bad_files: bool = False,
) -> HoldoutData:
    """Every primary decision the layer took by ``as_of`` (its holdout and each of
    its experiments, whatever the arm: the decision log's ``layer`` is
    ``layer:<id>``, or a rollout's, see :class:`LayerRoute`), as the two groups
    of :data:`HOLDOUT_GROUPS`, and their outcome events. Rows marked
    :data:`INELIGIBLE_ARM` are left out. Read by unit id, checked as an
    experiment's logs are (:func:`_read`)."""
    columns = ["unit_id", "timestamp", "arm", "experiment_id", "layer"] + (
        ["context"] if segments else [])
    decided = _read(
        decisions, DECISION_LOG, columns,
        ((pc.field("layer") == layer.name)
         | pc.starts_with(pc.field("layer"), ROLLOUT_LAYER_PREFIX))
        & _or_null("role", pc.field("role") == "primary")
        & _or_null("timestamp", pc.field("timestamp") <= _as_of_scalar(as_of))
        & not_forced(), skip_bad_files)
    table, unplaced = _under_rollouts(decided.table, layer)
    if table.num_rows:
        ineligible = pc.is_in(table["arm"], value_set=pa.array([INELIGIBLE_ARM]))
        if pc.any(ineligible).as_py():
            table = table.filter(pc.invert(ineligible))
    arm_codes, arm_labels = dictionary_codes(table["arm"])
    held = np.asarray([label == HOLDOUT_GROUPS[0] for label in arm_labels] + [False])
    group = np.where(held[arm_codes], 0, 1).astype(np.int64)
    experiment_codes, experiment_labels = dictionary_codes(table["experiment_id"])
    # A dictionary read from Parquet holds its row groups' values, the rows the
    # filter dropped included: only the codes the layer's rows use name experiments.
    used = np.unique(experiment_codes[(experiment_codes >= 0) & (group == 1)])
    named = [(int(i), label) for i in used if (label := experiment_labels[i]) is not None]
    experiments = tuple(dict.fromkeys(label for _, label in named))
    lookup = np.full(len(experiment_labels) + 1, -1, dtype=np.int64)  # last: a null (-1)
    for i, label in named:
        lookup[i] = experiments.index(label)
    row_experiment = np.where(group == 0, -1, lookup[experiment_codes])
    codes, dictionary = encode(table["unit_id"])
    at = _micros(table["timestamp"]) if table.num_rows else np.zeros(0, dtype=np.int64)
    weights = (1.0, 1.0)  # the layer's split is tested by its own rule, not by these
    if table.num_rows:
        arm, exposed_at, crossovers, first_rows = first_exposures(
            codes, len(dictionary), group, at)
        exposures = Exposures(HOLDOUT_GROUPS, weights, arm, exposed_at, crossovers,
                              segments_at_exposure(table, codes, len(dictionary), first_rows,
                                                   segments))
    else:
        empty = np.zeros(0, dtype=np.int64)
        exposures = Exposures(HOLDOUT_GROUPS, weights, empty, empty)
    as_of_us = _as_of_scalar(as_of)
    # Untagged events are every experiment's; a tagged one is the layer's when
    # it names an experiment the layer's decisions name.
    ours = pc.field("experiment_id").is_null()
    if experiments:
        ours = ours | pc.field("experiment_id").isin(list(experiments))
    happened = _read(
        outcomes, OUTCOMES_LOG, ["unit_id", "metric", "value", "timestamp", "received_at"],
        _or_null("metric", pc.field("metric").isin(list(metrics))) & ours
        & _or_null("timestamp", pc.field("timestamp") <= as_of_us)
        & _or_null("received_at", pc.field("received_at") <= as_of_us), skip_bad_files)
    unit = _codes(pc.index_in(happened.table["unit_id"], value_set=dictionary))
    data = ExperimentData(exposures, _outcome_rows(happened.table, unit, metrics), dictionary,
                          None, (), decided.skipped + happened.skipped)
    return HoldoutData(data, experiments, codes, group, row_experiment, at, unplaced)


# --------------------------------------------------------------------------- pre-registration


class PlanChanged(RampartError):
    """The analysis plan differs from the one registered before the start."""

    code, status = "analysis_plan_changed", 409


def plan_fingerprint(plan: AnalysisPlan) -> tuple[str, dict[str, Any]]:
    body = plan.model_dump(mode="json")
    text = json.dumps(body, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest(), body


def register_plan(directory: Path, experiment_id: str, plan: AnalysisPlan,
                  now: dt.datetime) -> dict[str, Any]:
    """Record ``plan`` as the experiment's pre-registration, or check it against
    the one recorded.

    Before the start a plan may change (the record is replaced). From the start
    on, a different plan raises :class:`PlanChanged` naming every changed field.
    Returns the record (``registered_at``, ``registered_after_start``, ``sha256``).
    """
    record, new = check_plan(directory, experiment_id, plan, now)
    if new:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{experiment_id}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
        os.replace(tmp, path)
    return record


def check_plan(directory: Path, experiment_id: str, plan: AnalysisPlan,
               now: dt.datetime) -> tuple[dict[str, Any], bool]:
    """What :func:`register_plan` would record, without writing anything: the
    record, and whether it is new (to be written). Raises :class:`PlanChanged`
    as :func:`register_plan` does. A run that may still fail checks with this
    first and registers only once it has succeeded, so a failed run records
    nothing."""
    digest, body = plan_fingerprint(plan)
    path = directory / f"{experiment_id}.json"
    if path.exists():
        record = json.loads(path.read_text())
        if record["sha256"] == digest:
            return dict(record), False
        if now >= plan.start:
            changes = _differences(record["plan"], body)
            raise PlanChanged(
                f"experiment {experiment_id!r} started at {plan.start.isoformat()}; its "
                f"pre-registered analysis plan (registered {record['registered_at']}) cannot "
                f"change after the start. Changed: {'; '.join(changes)}. Revert the config, "
                "or run the change as a new experiment.")
    record = {"experiment_id": experiment_id, "sha256": digest, "plan": body,
              "registered_at": now.astimezone(dt.UTC).isoformat(),
              "registered_after_start": now >= plan.start}
    return record, True


def register_config_plans(config: RampartConfig, now: dt.datetime) -> list[str]:
    """Record every experiment's analysis plan, and every layer's holdout plan, as
    the gateway starts serving them.

    Returns one message per plan that changed after its start (the gateway keeps
    serving; ``rampart analyze`` refuses such a plan).
    """
    problems = []
    for experiment in config.experiments:
        if experiment.analysis is None:
            continue
        try:
            register_plan(config.resolved_preregistration_dir(), experiment.id,
                          experiment.analysis, now)
        except PlanChanged as exc:
            problems.append(str(exc))
    for layer in config.layers:
        if layer.holdout_analysis is None:
            continue
        try:
            register_plan(holdout_plans_dir(config), layer.id, layer.holdout_analysis, now)
        except PlanChanged as exc:
            problems.append(f"layer {layer.id!r} holdout: {exc}")
    return problems


def holdout_plans_dir(config: RampartConfig) -> Path:
    """Where layers' holdout plans are pre-registered: apart from experiments'
    plans, so that a layer and an experiment may share an id."""
    return config.resolved_preregistration_dir() / "holdouts"


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: {json.dumps(old)} -> {json.dumps(new)}"]
    return []
