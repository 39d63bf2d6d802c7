"""Reading the decision and outcome logs into the arrays :mod:`rollout.experiments.analysis`
needs, finding the experiment's periods, and keeping each experiment's
pre-registered analysis plan.

Reading is columnar end to end: Parquet is filtered by experiment, role and
time while it is read (pushed down to the row groups), the arm and served
version columns arrive as dictionary indices (never one string per row), unit
ids become integer codes once (``dictionary_encode``), and outcome rows find
their unit with one hash lookup (``index_in``) or join. No per-row Python.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pyarrow.fs import FileType

from rollout.experiments.analysis import (
    ARM_BITS,
    MICROS,
    MISSING_SEGMENT,
    Exposures,
    OutcomeRows,
    first_exposures,
)
from rollout.experiments.periods import (
    ServedSpan,
    from_micros,
    same_version_warnings,
    split_periods,
    to_micros,
)
from rollout.experiments.results import Period
from serving.kernel.analysis_plan import AnalysisPlan
from serving.kernel.config import ExperimentSpec, RampartConfig
from serving.kernel.errors import LogStorageUnavailable, RampartError
from telemetry.decision_log import DECISION_SCHEMA
from telemetry.outcomes_log import OUTCOME_SCHEMA
from telemetry.storage import LogLocation, LogStorageError, storage_errors

# Low-cardinality columns read as Arrow dictionaries: Parquet's dictionary pages
# become integer indices directly, without materializing a string per row.
DICTIONARY_COLUMNS = ("arm", "model_name", "model_version")
_DECISIONS_AS_READ = pa.schema([
    f.with_type(pa.dictionary(pa.int32(), pa.string())) if f.name in DICTIONARY_COLUMNS else f
    for f in DECISION_SCHEMA])
_DECISIONS_FORMAT = pads.ParquetFileFormat(
    read_options=pads.ParquetReadOptions(dictionary_columns=list(DICTIONARY_COLUMNS)))

PeriodChoice = int | Literal["latest"]


class AnalysisInputError(RampartError):
    """Input the analysis cannot use; the message says what and where."""

    code, status = "invalid_analysis_input", 422


LogPlace = str | os.PathLike[str]


def _read(path: LogPlace, schema: pa.Schema, noun: str, columns: list[str],
          filter: pc.Expression, format: pads.FileFormat | str = "parquet") -> pa.Table:
    """The rows of one log (a local path or a URI such as ``s3://bucket/prefix``)
    that ``filter`` keeps, pushed down into the Parquet scan; a log whose storage
    cannot be read is a :class:`LogStorageUnavailable`."""
    location = LogLocation.resolve(path)
    try:
        with storage_errors(f"cannot read the {noun} at {location}"):
            info = location.info()
            if info.type == FileType.NotFound:
                raise AnalysisInputError(f"no {noun} at {location}")
            if info.type == FileType.Directory:
                files = location.visible_parquet_files()
                if not files:
                    raise AnalysisInputError(f"no {noun} files (*.parquet) under {location}")
                dataset = pads.dataset(files, filesystem=location.fs, format=format,
                                       schema=schema)
            else:
                dataset = pads.dataset(location.path, filesystem=location.fs, format=format,
                                       schema=schema)
            return dataset.to_table(columns=columns, filter=filter)
    except LogStorageError as exc:
        raise LogStorageUnavailable(str(exc)) from None


def _micros(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False), dtype=np.int64)


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
        return np.zeros(0, dtype=np.int64), pa.array([], type=pa.string())
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
    """

    table: pa.Table
    arm: np.ndarray
    at: np.ndarray
    served: np.ndarray
    names: list[str | None]
    versions: list[str | None]

    def served_label(self, key: int) -> str | None:
        """``model/version`` of a served code; None when either part was not logged."""
        name, version = divmod(int(key), len(self.versions) + 1)
        if name == 0 or version == 0:
            return None
        return f"{self.names[name - 1]}/{self.versions[version - 1]}"

    def subset(self, mask: np.ndarray) -> DecisionRows:
        return DecisionRows(self.table.filter(pa.array(mask)), self.arm[mask], self.at[mask],
                            self.served[mask], self.names, self.versions)


def _read_decisions(decisions: LogPlace, experiment: ExperimentSpec, as_of: dt.datetime,
                    segments: tuple[str, ...]) -> pa.Table:
    columns = ["unit_id", "timestamp", *DICTIONARY_COLUMNS] + (["context"] if segments else [])
    return _read(
        decisions, _DECISIONS_AS_READ, "decision log", columns,
        (pc.field("experiment_id") == experiment.id) & (pc.field("role") == "primary")
        & (pc.field("timestamp") <= _as_of_scalar(as_of)), _DECISIONS_FORMAT)


def decision_rows(table: pa.Table, experiment: ExperimentSpec) -> DecisionRows:
    """Arm codes, times and served versions of decisions read by :func:`_read_decisions`.

    A decision in an arm the config does not name is an error: the log and the
    config disagree.
    """
    arms = [a.name for a in experiment.arms]
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
    return DecisionRows(table, arm, _micros(table["timestamp"]), served, name_labels,
                        version_labels)


def find_periods(rows: DecisionRows, experiment: ExperimentSpec) -> tuple[Period, ...]:
    """The experiment's periods (:func:`split_periods`); none without decisions.

    Counting (arm, served version) pairs is one pass over integer codes; only when
    some arm served more than one version are the pairs' first and last times
    aggregated.
    """
    if rows.arm.size == 0:
        return ()
    arms = tuple(a.name for a in experiment.arms)
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
                       warnings=same_version_warnings(arms, served, start)),)
    spans_table = pa.table({"pair": pa.array(pair), "at": pa.array(rows.at)}).group_by(
        "pair").aggregate([("at", "min"), ("at", "max")])
    spans = []
    for p, first, last in zip(spans_table["pair"].to_pylist(), spans_table["at_min"].to_pylist(),
                              spans_table["at_max"].to_pylist(), strict=True):
        label = rows.served_label(p % size)
        if label is not None:
            spans.append(ServedSpan(arms[p // size], label, first, last))
    return split_periods(arms, spans)


def _exposures(rows: DecisionRows, codes: np.ndarray, n_codes: int,
               experiment: ExperimentSpec, segments: tuple[str, ...]) -> Exposures:
    """Exposures indexed by unit code (``codes`` per decision row, ``n_codes`` of
    them, each with at least one decision)."""
    arms = tuple(a.name for a in experiment.arms)
    weights = tuple(float(a.weight_bp) for a in experiment.arms)
    if rows.arm.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Exposures(arms, weights, empty, empty)
    arm, exposed_at, crossovers, first_rows = first_exposures(codes, n_codes, rows.arm, rows.at)
    segment_codes: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    for attribute in segments:
        looked_up = pc.map_lookup(rows.table["context"], attribute, "first")
        filled = pc.fill_null(looked_up, MISSING_SEGMENT).combine_chunks().dictionary_encode()
        per_row = np.asarray(filled.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        per_unit = np.zeros(n_codes, dtype=np.int64)
        per_unit[codes[first_rows]] = per_row[first_rows]
        labels = tuple(str(v) for v in filled.dictionary.to_pylist())
        segment_codes[attribute] = (per_unit, labels)
    return Exposures(arms, weights, arm, exposed_at, crossovers, segment_codes)


def load_exposures(
    decisions: LogPlace,
    experiment: ExperimentSpec,
    as_of: dt.datetime,
    segments: tuple[str, ...] = (),
) -> tuple[Exposures, pa.Array]:
    """Exposed units of ``experiment`` by ``as_of`` over all its periods, and the
    unit-id dictionary.

    Only primary decisions count (a shadow call exposes nobody). Decisions in an
    arm the config does not name are an error: the log and the config disagree.
    """
    rows = decision_rows(_read_decisions(decisions, experiment, as_of, segments), experiment)
    codes, dictionary = encode(rows.table["unit_id"])
    return _exposures(rows, codes, len(dictionary), experiment, segments), dictionary


# --------------------------------------------------------------------------- outcomes


def _read_outcomes(outcomes: LogPlace, metrics: tuple[str, ...], experiment_id: str,
                   as_of: dt.datetime) -> pa.Table:
    """Outcome events for ``metrics`` known by ``as_of``.

    An event tagged with another experiment's id is not this experiment's; an
    untagged event belongs to every experiment its unit is in.
    """
    return _read(
        outcomes, OUTCOME_SCHEMA, "outcomes log", ["unit_id", "metric", "value", "timestamp"],
        pc.field("metric").isin(list(metrics))
        & (pc.field("experiment_id").is_null() | (pc.field("experiment_id") == experiment_id))
        & (pc.field("timestamp") <= _as_of_scalar(as_of)))


def _outcome_rows(table: pa.Table, unit: np.ndarray, metrics: tuple[str, ...]) -> OutcomeRows:
    """Numeric columns of outcome rows; ``unit`` is -1 for units never exposed, and
    those rows are dropped from the arrays (not from the table: that would copy
    every unit-id string once more)."""
    metric = _codes(pc.index_in(table["metric"], value_set=pa.array(list(metrics))))
    value = np.asarray(table["value"].to_numpy(), dtype=np.float64)
    at = _micros(table["timestamp"])
    exposed = unit >= 0
    if not exposed.all():
        unit, metric, value, at = unit[exposed], metric[exposed], value[exposed], at[exposed]
    return OutcomeRows(metrics, unit, metric, value, at)


def load_outcomes(
    outcomes: LogPlace,
    unit_dictionary: pa.Array,
    metrics: tuple[str, ...],
    experiment_id: str,
    as_of: dt.datetime,
) -> OutcomeRows:
    """Outcome events of the units in ``unit_dictionary`` for ``metrics``, known by
    ``as_of`` (see :func:`_read_outcomes`)."""
    table = _read_outcomes(outcomes, metrics, experiment_id, as_of)
    unit = _codes(pc.index_in(table["unit_id"], value_set=unit_dictionary))
    return _outcome_rows(table, unit, metrics)


# --------------------------------------------------------------------------- experiments


@dataclass(frozen=True)
class ExperimentData:
    """One period of an experiment, ready for :func:`rollout.experiments.analysis.analyze`:
    its exposures, their outcome rows, the exposed units' ids (indexed like the
    exposures), the period and every period of the experiment (``period`` is
    None only when nobody was exposed)."""

    exposures: Exposures
    outcomes: OutcomeRows
    units: pa.Array
    period: Period | None
    periods: tuple[Period, ...]


def load_experiment(
    decisions: LogPlace,
    outcomes: LogPlace,
    experiment: ExperimentSpec,
    metrics: tuple[str, ...],
    as_of: dt.datetime,
    segments: tuple[str, ...] = (),
    period: PeriodChoice = "latest",
) -> ExperimentData:
    """One period of the experiment (the latest by default, else the 1-based index).

    The two logs are read side by side (Arrow releases the GIL). Hashing unit-id
    strings is most of the cost at millions of rows, so for a one-period
    experiment without segments the first exposures come from one multi-threaded
    hash aggregation and outcome rows find their unit by a hash join, both in
    Arrow's engine; with segments, the context at each unit's first decision
    needs row-level codes. Both paths give the same exposures and the same
    figures; only the order of units differs, and no figure depends on it.
    """
    return _load(decisions, outcomes, experiment, metrics, as_of, segments, period)[0]


def load_all_periods(
    decisions: LogPlace,
    outcomes: LogPlace,
    experiment: ExperimentSpec,
    metrics: tuple[str, ...],
    as_of: dt.datetime,
    segments: tuple[str, ...] = (),
) -> list[ExperimentData]:
    """Every period of the experiment, each loaded as :func:`load_experiment` loads one."""
    return _load(decisions, outcomes, experiment, metrics, as_of, segments, "all")


def _load(decisions: LogPlace, outcomes: LogPlace, experiment: ExperimentSpec,
          metrics: tuple[str, ...], as_of: dt.datetime, segments: tuple[str, ...],
          which: PeriodChoice | Literal["all"]) -> list[ExperimentData]:
    with ThreadPoolExecutor(max_workers=1) as pool:  # leaving waits for the outcomes side
        pending = pool.submit(_read_outcomes, outcomes, metrics, experiment.id, as_of)
        decided = _read_decisions(decisions, experiment, as_of, segments)
        happened = pending.result()
    rows = decision_rows(decided, experiment)
    periods = find_periods(rows, experiment)
    chosen = _choose(periods, which, experiment.id)
    if len(periods) <= 1:
        data = _one_period(rows, happened, experiment, metrics, segments)
        period = periods[0].model_copy(update={"units": data.exposures.n_units}) if periods \
            else None
        return [ExperimentData(data.exposures, data.outcomes, data.units, period,
                               () if period is None else (period,))]
    in_period = [(rows.at >= to_micros(p.start))
                 & (rows.at < (np.iinfo(np.int64).max if p.end is None else to_micros(p.end)))
                 for p in periods]
    periods = tuple(p.model_copy(update={"units": int(pc.count_distinct(
        rows.table["unit_id"].filter(pa.array(mask))).as_py())})
                    for p, mask in zip(periods, in_period, strict=True))
    entered = pa.table({"unit_id": rows.table["unit_id"], "at": pa.array(rows.at)}).group_by(
        "unit_id").aggregate([("at", "min")])
    out = []
    for index in chosen:
        period_rows = rows.subset(in_period[index - 1])
        codes, dictionary = encode(period_rows.table["unit_id"])
        exposures = _exposures(period_rows, codes, len(dictionary), experiment, segments)
        if index > 1:
            position = _codes(pc.index_in(dictionary,
                                          value_set=entered["unit_id"].combine_chunks()))
            exposures = _with_entry(exposures, np.asarray(
                entered["at_min"].to_numpy(), dtype=np.int64)[position])
        unit = _codes(pc.index_in(happened["unit_id"], value_set=dictionary))
        out.append(ExperimentData(exposures, _outcome_rows(happened, unit, metrics),
                                  dictionary, periods[index - 1], periods))
    return out


def _with_entry(exposures: Exposures, entered_at: np.ndarray) -> Exposures:
    return Exposures(exposures.arms, exposures.weights, exposures.arm, exposures.exposed_at,
                     exposures.crossovers, exposures.segments, entered_at)


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


def _one_period(rows: DecisionRows, happened: pa.Table, experiment: ExperimentSpec,
                metrics: tuple[str, ...], segments: tuple[str, ...]) -> _Loaded:
    """Exposures and outcomes of an experiment with one period (see
    :func:`load_experiment` for the two paths)."""
    if segments or rows.arm.size == 0:
        codes, dictionary = encode(rows.table["unit_id"])
        exposures = _exposures(rows, codes, len(dictionary), experiment, segments)
        unit = _codes(pc.index_in(happened["unit_id"], value_set=dictionary))
        return _Loaded(exposures, _outcome_rows(happened, unit, metrics), dictionary)
    packed = (rows.at << ARM_BITS) | rows.arm
    first = pa.table({"unit_id": rows.table["unit_id"], "first": pa.array(packed),
                      "arm": pa.array(rows.arm)}).group_by("unit_id").aggregate(
        [("first", "min"), ("arm", "min_max")])
    first_packed = np.asarray(first["first_min"].to_numpy(), dtype=np.int64)
    arm_range = pc.struct_field(first["arm_min_max"], "min"), pc.struct_field(
        first["arm_min_max"], "max")
    crossovers = int(pc.sum(pc.not_equal(*arm_range)).as_py() or 0)
    exposures = Exposures(
        tuple(a.name for a in experiment.arms), tuple(float(a.weight_bp) for a in experiment.arms),
        first_packed & ((1 << ARM_BITS) - 1), first_packed >> ARM_BITS, crossovers)
    units = first["unit_id"]
    keyed = pa.table({"unit_id": units, "unit": pa.array(np.arange(len(units)))})
    joined = happened.join(keyed, keys="unit_id", join_type="inner")
    unit = np.asarray(joined["unit"].to_numpy(), dtype=np.int64)
    return _Loaded(exposures, _outcome_rows(joined, unit, metrics), units.combine_chunks())


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
    digest, body = plan_fingerprint(plan)
    path = directory / f"{experiment_id}.json"
    if path.exists():
        record = json.loads(path.read_text())
        if record["sha256"] == digest:
            return dict(record)
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
    directory.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    os.replace(tmp, path)
    return record


def register_config_plans(config: RampartConfig, now: dt.datetime) -> list[str]:
    """Record every experiment's analysis plan as the gateway starts serving it.

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
    return problems


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    if old != new:
        return [f"{prefix.rstrip('.')}: {json.dumps(old)} -> {json.dumps(new)}"]
    return []
