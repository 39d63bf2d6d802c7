"""Reading the decision and outcome logs into the arrays :mod:`rollout.analysis` needs,
and keeping each experiment's pre-registered analysis plan.

Reading is columnar end to end: Parquet is filtered by experiment, role and
time while it is read (pushed down to the row groups), unit ids become integer
codes once (``dictionary_encode``), and outcome rows find their unit with one
hash lookup (``index_in``). No per-row Python.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from rollout.experiments.analysis import (
    ARM_BITS,
    MICROS,
    MISSING_SEGMENT,
    Exposures,
    OutcomeRows,
    first_exposures,
)
from serving.kernel.analysis_plan import AnalysisPlan
from serving.kernel.config import ExperimentSpec, RampartConfig
from telemetry.batched_writer import visible_parquet_files
from telemetry.decision_log import DECISION_SCHEMA
from telemetry.outcomes_log import OUTCOME_SCHEMA


class AnalysisInputError(Exception):
    """Input the analysis cannot use; the message says what and where."""


def _dataset(path: Path, schema: pa.Schema, noun: str) -> pads.Dataset:
    if not path.exists():
        raise AnalysisInputError(f"no {noun} at {path}")
    if path.is_dir():
        files = visible_parquet_files(path)
        if not files:
            raise AnalysisInputError(f"no {noun} files (*.parquet) under {path}")
        return pads.dataset(files, format="parquet", schema=schema)
    return pads.dataset(str(path), format="parquet", schema=schema)


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


def load_exposures(
    decisions: Path,
    experiment: ExperimentSpec,
    as_of: dt.datetime,
    segments: tuple[str, ...] = (),
) -> tuple[Exposures, pa.Array]:
    """Exposed units of ``experiment`` by ``as_of`` and the unit-id dictionary.

    Only primary decisions count (a shadow call exposes nobody). Decisions in an
    arm the config does not name are an error: the log and the config disagree.
    """
    table = _read_decisions(decisions, experiment, as_of, segments)
    codes, dictionary = encode(table["unit_id"])
    return _exposures(table, codes, len(dictionary), experiment, segments), dictionary


def _read_decisions(decisions: Path, experiment: ExperimentSpec, as_of: dt.datetime,
                    segments: tuple[str, ...]) -> pa.Table:
    dataset = _dataset(decisions, DECISION_SCHEMA, "decision log")
    columns = ["unit_id", "arm", "timestamp"] + (["context"] if segments else [])
    return dataset.to_table(
        columns=columns,
        filter=(pc.field("experiment_id") == experiment.id) & (pc.field("role") == "primary")
        & (pc.field("timestamp") <= _as_of_scalar(as_of)))


def _arm_codes(table: pa.Table, experiment: ExperimentSpec) -> np.ndarray:
    """Each decision's arm as its index in the config; an arm the config does not
    name is an error (the log and the config disagree)."""
    arms = [a.name for a in experiment.arms]
    arm_codes = pc.index_in(table["arm"], value_set=pa.array(arms))
    unknown = arm_codes.null_count
    if unknown:
        seen = sorted(set(pc.unique(table["arm"]).to_pylist()) - set(arms), key=str)
        raise AnalysisInputError(
            f"{unknown} decisions of experiment {experiment.id!r} are in arms the config "
            f"does not name: {seen}; configured arms are {arms}")
    return np.asarray(arm_codes.to_numpy(zero_copy_only=False), dtype=np.int64)


def _exposures(table: pa.Table, codes: np.ndarray, n_codes: int, experiment: ExperimentSpec,
               segments: tuple[str, ...]) -> Exposures:
    """Exposures indexed by unit code (``codes`` per decision row, ``n_codes`` of
    them; a code without decisions is left unexposed and dropped by the caller)."""
    arms = tuple(a.name for a in experiment.arms)
    weights = tuple(float(a.weight_bp) for a in experiment.arms)
    if table.num_rows == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Exposures(arms, weights, empty, empty)
    arm, exposed_at, crossovers, first_rows = first_exposures(
        codes, n_codes, _arm_codes(table, experiment), _micros(table["timestamp"]))
    segment_codes: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {}
    for attribute in segments:
        looked_up = pc.map_lookup(table["context"], attribute, "first")
        filled = pc.fill_null(looked_up, MISSING_SEGMENT).combine_chunks().dictionary_encode()
        per_row = np.asarray(filled.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        per_unit = np.zeros(n_codes, dtype=np.int64)
        per_unit[codes[first_rows]] = per_row[first_rows]
        labels = tuple(str(v) for v in filled.dictionary.to_pylist())
        segment_codes[attribute] = (per_unit, labels)
    return Exposures(arms, weights, arm, exposed_at, crossovers, segment_codes)


def _read_outcomes(outcomes: Path, metrics: tuple[str, ...], experiment_id: str,
                   as_of: dt.datetime) -> pa.Table:
    """Outcome events for ``metrics`` known by ``as_of``.

    An event tagged with another experiment's id is not this experiment's; an
    untagged event belongs to every experiment its unit is in.
    """
    dataset = _dataset(outcomes, OUTCOME_SCHEMA, "outcomes log")
    return dataset.to_table(
        columns=["unit_id", "metric", "value", "timestamp"],
        filter=pc.field("metric").isin(list(metrics))
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
    outcomes: Path,
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


def load_experiment(
    decisions: Path,
    outcomes: Path,
    experiment: ExperimentSpec,
    metrics: tuple[str, ...],
    as_of: dt.datetime,
    segments: tuple[str, ...] = (),
) -> tuple[Exposures, OutcomeRows, pa.Array]:
    """Exposures, their outcome rows and the exposed units' ids.

    The two logs are read side by side (Arrow releases the GIL). Hashing unit-id
    strings is most of the cost at millions of rows, so without segments the
    first exposures come from one multi-threaded hash aggregation and outcome
    rows find their unit by a hash join, both in Arrow's engine; with segments,
    the context at each unit's first decision needs row-level codes
    (:func:`load_exposures`). Both paths give the same exposures and the same
    figures; only the order of units differs, and no figure depends on it.
    """
    with ThreadPoolExecutor(max_workers=1) as pool:  # leaving waits for the outcomes side
        pending = pool.submit(_read_outcomes, outcomes, metrics, experiment.id, as_of)
        decided = _read_decisions(decisions, experiment, as_of, segments)
        happened = pending.result()
    if segments or decided.num_rows == 0:
        codes, dictionary = encode(decided["unit_id"])
        exposures = _exposures(decided, codes, len(dictionary), experiment, segments)
        unit = _codes(pc.index_in(happened["unit_id"], value_set=dictionary))
        return exposures, _outcome_rows(happened, unit, metrics), dictionary
    arm_codes = _arm_codes(decided, experiment)
    packed = (_micros(decided["timestamp"]) << ARM_BITS) | arm_codes
    first = pa.table({"unit_id": decided["unit_id"], "first": pa.array(packed),
                      "arm": pa.array(arm_codes)}).group_by("unit_id").aggregate(
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
    return exposures, _outcome_rows(joined, unit, metrics), units.combine_chunks()


def _codes(positions: pa.ChunkedArray) -> np.ndarray:
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


class PlanChanged(Exception):
    """The analysis plan differs from the one registered before the start."""


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
