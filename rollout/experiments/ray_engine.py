"""``rampart analyze --engine ray``: the analysis as a Ray Data job over the logs.

The logs may be larger than one machine's memory, so no machine holds every
unit. Units are spread over parts by their ``unit_key`` (the 64-bit hash of the
unit id that both logs carry; computed from ``unit_id`` for files written before
the column), so every decision and outcome event of a unit lands in the same
part. Each part runs the local engine's pure code on its own units (first
exposures with arm and split, outcome windows by received time as of ``as_of``)
and returns only sums (:func:`rollout.experiments.sums.partial_stats`); the
driver adds them and runs the local engine's estimates, corrections and decision
(:func:`rollout.experiments.sums.analyze_stats`), so the report is the same
type with the same numbers (to the last bits of sums added in another order).

Passes over the data, after each file is read and filtered by one task:

1. per block, the (arm, served version) pairs and the earliest decision: the
   periods (one is supported) and the first exposure, where the mSPRT's looks
   start;
2. for a group-sequential plan only, per part each arm's earliest exposure
   times, as many as the largest look needs (8 bytes a unit up to that size,
   per part): the time each arm reached each look's unit count;
3. per part, every metric's sums at ``as_of`` and the primary's at each look.

What needs the units themselves is refused: segments, the HTML timeline,
recorded looks, more than one served-version period, ``--skip-bad-files``.
"""

from __future__ import annotations

import datetime as dt
import pickle
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from rollout.experiments.analysis import (
    MICROS,
    Exposures,
    OutcomeRows,
    first_exposures,
    split_weights,
)
from rollout.experiments.data import (
    DECISION_LOG,
    OUTCOMES_LOG,
    UNIT_KEY,
    AnalysisInputError,
    LogPlace,
    LogSpec,
    _as_of_scalar,
    _keyed,
    _open_all,
    _or_null,
    _shown,
    checked_columns,
    exposed_only,
    log_files,
    not_forced,
    plan_metrics,
)
from rollout.experiments.periods import from_micros, same_version_warnings
from rollout.experiments.results import ExperimentAnalysis, Period
from rollout.experiments.sums import (
    UnitStats,
    analyze_stats,
    combine_stats,
    earliest_needed,
    exposure_sketch,
    partial_stats,
    sequential_times,
)
from serving.kernel.analysis_plan import AnalysisPlan
from serving.kernel.config import ExperimentSpec
from serving.kernel.errors import LogStorageUnavailable
from telemetry.storage import LogLocation, LogStorageError, storage_errors
from telemetry.unit_keys import unit_key_array

DECISIONS, OUTCOMES = 0, 1
# The columns every file is turned into, both logs in one table: a part's rows
# arrive together whichever log they came from.
ROWS = pa.schema([
    ("part", pa.int64()), ("kind", pa.int8()), ("unit_key", pa.int64()),
    ("arm", pa.string()), ("arm_weights", pa.string()), ("served", pa.string()),
    ("at", pa.int64()), ("metric", pa.string()), ("value", pa.float64()),
    ("received", pa.int64())])


@dataclass(frozen=True)
class FileTask:
    """One file of one log for one task to read (the log's URI is resolved again
    in the task: a filesystem is rebuilt from it, not shipped)."""

    kind: int
    log: str
    path: str
    keyed: bool


@dataclass(frozen=True)
class Job:
    """What every task needs to know about the analysis."""

    experiment: ExperimentSpec
    plan: AnalysisPlan
    metrics: tuple[str, ...]
    as_of_us: int
    parts: int


# --------------------------------------------------------------------------- reading


def _log_files(place: LogPlace, spec: LogSpec, kind: int, columns: list[str]) -> list[FileTask]:
    """Every file of a log, its footer read and checked against the log's schema
    on the driver (footers only), as the local engine checks them."""
    location = LogLocation.resolve(place)
    try:
        with storage_errors(f"cannot read the {spec.noun} at {location}"):
            fragments, _ = _open_all(location, log_files(location, spec), spec,
                                     checked_columns(spec, columns), False)
    except LogStorageError as exc:
        raise LogStorageUnavailable(str(exc)) from None
    return [FileTask(kind, str(place), f.path, _keyed(f)) for f in fragments]


def _read_file(task: FileTask, job: Job) -> pa.Table:
    """One file's rows of the analysis (the local engine's filters), checked for
    missing and non-finite values, as :data:`ROWS` with each row's part."""
    location = LogLocation.resolve(task.log)
    spec = DECISION_LOG if task.kind == DECISIONS else OUTCOMES_LOG
    as_of = _as_of_scalar(dt.datetime.fromtimestamp(job.as_of_us / MICROS, tz=dt.UTC))
    unit = UNIT_KEY if task.keyed else "unit_id"
    if task.kind == DECISIONS:
        columns = [unit, "arm", "role", "timestamp", "model_name", "model_version",
                   "arm_weights"]
        keep = ((pc.field("experiment_id") == job.experiment.id)
                & _or_null("role", pc.field("role") == "primary")
                & _or_null("timestamp", pc.field("timestamp") <= as_of)
                & not_forced())
        required = [unit, "arm", "role", "timestamp"]
    else:
        columns = [unit, "metric", "value", "timestamp", "received_at"]
        keep = (_or_null("metric", pc.field("metric").isin(list(job.metrics)))
                & (pc.field("experiment_id").is_null()
                   | (pc.field("experiment_id") == job.experiment.id))
                & _or_null("timestamp", pc.field("timestamp") <= as_of)
                & _or_null("received_at", pc.field("received_at") <= as_of))
        required = [unit, "metric", "value", "timestamp", "received_at"]
    fragment = spec.format.make_fragment(task.path, filesystem=location.fs)
    table = fragment.to_table(schema=spec.as_read, columns=columns, filter=keep)
    if task.kind == DECISIONS:  # ineligible and holdout rows are no exposures
        table = exposed_only(table, [a.name for a in job.experiment.arms])
    shown = _shown(location, task.path)
    for name in required:
        if table[name].null_count:
            raise AnalysisInputError(
                f"{spec.noun} file {shown}: {name} is null in a row the analysis reads "
                "(rampart analyze --engine local names the row)")
    if task.kind == OUTCOMES and table.num_rows and not pc.all(
            pc.is_finite(table["value"])).as_py():
        raise AnalysisInputError(
            f"{spec.noun} file {shown}: value is not a finite number in an event of the "
            "analysed metrics (rampart analyze --engine local names the row)")
    keys = table[UNIT_KEY] if task.keyed else unit_key_array(table["unit_id"])
    keys_np = np.asarray(pc.cast(keys, pa.int64()).to_numpy(zero_copy_only=False),
                         dtype=np.int64)
    n = table.num_rows

    def text(name: str) -> pa.Array:
        return pc.cast(table[name], pa.string()).combine_chunks()

    def micros(name: str) -> pa.Array:
        return pc.cast(table[name], pa.int64()).combine_chunks()

    strings, floats, ints = pa.nulls(n, pa.string()), pa.nulls(n, pa.float64()), pa.nulls(
        n, pa.int64())
    if task.kind == DECISIONS:
        served = pc.binary_join_element_wise(text("model_name"), text("model_version"), "/")
        body = [text("arm"), text("arm_weights"), served, micros("timestamp"), strings,
                floats, ints]
    else:
        body = [strings, strings, strings, micros("timestamp"), text("metric"),
                pc.cast(table["value"], pa.float64()).combine_chunks(), micros("received_at")]
    return pa.Table.from_arrays([
        pa.array(np.mod(keys_np, job.parts), type=pa.int64()),
        pa.array(np.full(n, task.kind, dtype=np.int8)), pa.array(keys_np, type=pa.int64()),
        *body], schema=ROWS)


# --------------------------------------------------------------------------- per part


def part_stats(rows: pa.Table, job: Job, times: Sequence[int], earliest: int) -> UnitStats:
    """The sums of one part's units (every row of each of its units is in ``rows``)."""
    arms = tuple(a.name for a in job.experiment.arms)
    weights = tuple(float(a.weight_bp) for a in job.experiment.arms)
    kind = np.asarray(rows["kind"].to_numpy(zero_copy_only=False))
    keys = np.asarray(rows["unit_key"].to_numpy(zero_copy_only=False), dtype=np.int64)
    at = np.asarray(pc.fill_null(rows["at"], 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    decided = kind == DECISIONS
    units, codes = np.unique(keys[decided], return_inverse=True)
    arm_names = rows["arm"].filter(pa.array(decided)).to_pylist()
    arm = np.asarray([arms.index(a) for a in arm_names], dtype=np.int64)
    labels = rows["arm_weights"].filter(pa.array(decided)).to_pylist()
    vectors: dict[tuple[float, ...], int] = {}
    split_of: dict[str | None, int] = {None: -1}
    for label in set(labels):
        if label is not None:
            try:
                vector = split_weights(label, arms)
            except ValueError as exc:
                raise AnalysisInputError(
                    f"decision log: experiment {job.experiment.id!r}: {exc}") from None
            split_of[label] = vectors.setdefault(vector, len(vectors))
    row_split = np.asarray([split_of[label] for label in labels], dtype=np.int64)
    if units.size:
        unit_arm, exposed_at, crossovers, first_rows = first_exposures(
            codes, units.size, arm, at[decided])
        # the split at exposure: among a unit's first rows the smallest, none logged first
        split = np.full(units.size, -1, dtype=np.int64)
        if vectors:
            split[:] = len(vectors)
            np.minimum.at(split, codes[first_rows], row_split[first_rows])
    else:
        unit_arm = exposed_at = split = np.zeros(0, dtype=np.int64)
        crossovers = 0
    exposures = Exposures(arms, weights, unit_arm, exposed_at, crossovers, split=split,
                          splits=tuple(vectors))
    happened = ~decided
    event_keys = keys[happened]
    position = np.searchsorted(units, event_keys)
    position = np.minimum(position, max(units.size - 1, 0))
    exposed = (units[position] == event_keys) if units.size else np.zeros(0, dtype=bool)
    metric = pc.index_in(rows["metric"].filter(pa.array(happened)),
                         value_set=pa.array(list(job.metrics)))
    metric_codes = np.asarray(pc.fill_null(metric, -1).to_numpy(zero_copy_only=False),
                              dtype=np.int64)
    value = np.asarray(pc.fill_null(rows["value"], 0.0).to_numpy(zero_copy_only=False),
                       dtype=np.float64)[happened]
    received = np.asarray(pc.fill_null(rows["received"], 0).to_numpy(zero_copy_only=False),
                          dtype=np.int64)[happened]
    outcomes = OutcomeRows(job.metrics, position[exposed], metric_codes[exposed],
                           value[exposed], at[happened][exposed], received[exposed])
    return partial_stats(job.plan, exposures, outcomes, job.as_of_us, times, earliest)


# --------------------------------------------------------------------------- driver


@contextmanager
def ray_connection(address: str | None) -> Iterator[str]:
    """Ray for the job: the one this process is already connected to, else a new
    local Ray (``address`` None) or the cluster at ``address`` (``auto``: the one
    on this machine); a Ray started here is shut down after. Yields what was used."""
    import ray

    if ray.is_initialized():
        yield "the running Ray of this process"
        return
    ray.init(address="local" if address is None else address, include_dashboard=False,
             log_to_driver=False)
    try:
        yield "a new local Ray" if address is None else f"the Ray cluster at {address}"
    finally:
        ray.shutdown()


def _unwrap(exc: BaseException) -> BaseException:
    """The exception a task raised, out of Ray's wrappers."""
    seen = exc
    while True:
        cause = getattr(seen, "cause", None) or seen.__cause__
        if isinstance(seen, AnalysisInputError) or cause is None or cause is seen:
            return seen
        seen = cause


def analyze_on_ray(experiment: ExperimentSpec, decisions: LogPlace, outcomes: LogPlace,
                   as_of: dt.datetime, *, parts: int | None = None) -> ExperimentAnalysis:
    """The analysis of a one-period experiment as a Ray Data job (Ray must be
    connected: :func:`ray_connection`). Bad input is an :class:`AnalysisInputError`."""
    import ray
    import ray.data

    plan = experiment.analysis
    assert plan is not None
    metrics = plan_metrics(plan)
    tasks = (_log_files(decisions, DECISION_LOG, DECISIONS,
                        ["unit_id", "arm", "role", "timestamp", "model_name", "model_version",
                         "arm_weights"])
             + _log_files(outcomes, OUTCOMES_LOG, OUTCOMES,
                          ["unit_id", "metric", "value", "timestamp", "received_at"]))
    if parts is None:
        cpus = ray.cluster_resources().get("CPU", 1)  # type: ignore[no-untyped-call]
        parts = max(2, 2 * int(cpus))
    as_of_us = int(as_of.timestamp() * MICROS)
    job = Job(experiment, plan, metrics, as_of_us, parts)
    try:
        return _analyze(job, tasks, as_of)
    except Exception as exc:
        cause = _unwrap(exc)
        if isinstance(cause, AnalysisInputError):
            raise AnalysisInputError(str(cause)) from None
        raise


def _analyze(job: Job, tasks: list[FileTask], as_of: dt.datetime) -> ExperimentAnalysis:
    import ray.data

    experiment, plan = job.experiment, job.plan
    arms = tuple(a.name for a in experiment.arms)
    weights = tuple(float(a.weight_bp) for a in experiment.arms)
    files = ray.data.from_items([{"task": pickle.dumps(t)} for t in tasks],
                                override_num_blocks=max(1, len(tasks)))

    def read(batch: dict[str, np.ndarray]) -> pa.Table:
        return pa.concat_tables([_read_file(pickle.loads(t), job) for t in batch["task"]])

    rows = files.map_batches(read, batch_size=1, batch_format="numpy").materialize()

    # Pass 1: (arm, served version) pairs, rows in unknown arms, the first decision.
    def served(block: pa.Table) -> pa.Table:
        decided = block.filter(pc.equal(block["kind"], DECISIONS))
        pairs = decided.group_by(["arm", "served"]).aggregate([("at", "min"), ("at", "count")])
        return pairs.rename_columns(["arm", "served", "first", "rows"])

    pairs = rows.map_batches(served, batch_size=None, batch_format="pyarrow").take_all()
    unknown = {p["arm"]: 0 for p in pairs if p["arm"] not in arms}
    for p in pairs:
        if p["arm"] in unknown:
            unknown[p["arm"]] += p["rows"]
    if unknown:
        raise AnalysisInputError(
            f"{sum(unknown.values())} decisions of experiment {experiment.id!r} are in arms "
            f"the config does not name: {sorted(unknown, key=str)}; configured arms are "
            f"{list(arms)}")
    per_arm: dict[str, set[str]] = {}
    for p in pairs:
        if p["served"] is not None:
            per_arm.setdefault(p["arm"], set()).add(p["served"])
    if any(len(v) > 1 for v in per_arm.values()):
        raise AnalysisInputError(
            "the ray engine analyses experiments whose arms each served one version; here "
            + ", ".join(f"{a} served {sorted(v)}" for a, v in sorted(per_arm.items())
                        if len(v) > 1)
            + " (periods): use --engine local")
    first = min((p["first"] for p in pairs), default=None)

    def stats_of(times: Sequence[int], earliest: int) -> UnitStats:
        def one(group: pa.Table) -> pa.Table:
            stats = part_stats(group, job, times, earliest)
            return pa.table({"stats": pa.array([pickle.dumps(stats)], type=pa.binary())})

        done = rows.groupby("part").map_groups(one, batch_format="pyarrow").take_all()
        return combine_stats([pickle.loads(d["stats"]) for d in done], len(arms))

    if plan.sequential.method == "group_sequential":
        earliest = stats_of((), earliest_needed(plan)).earliest
    else:  # the first exposure is the first decision: no pass over units needed
        earliest = tuple(np.asarray([first] if a == 0 and first is not None else [],
                                    dtype=np.int64) for a in range(len(arms)))
    times = sequential_times(plan, exposure_sketch(arms, weights, earliest), job.as_of_us)
    stats = stats_of(times, 0)
    stats = UnitStats(stats.units, stats.crossovers, stats.srm, stats.summaries, earliest,
                      earliest_needed(plan))
    period = None
    if first is not None:
        start = from_micros(first)
        served_by = {a: tuple(sorted(per_arm.get(a, ()))) for a in arms}
        period = Period(index=1, start=start, served=served_by,
                        warnings=same_version_warnings(arms, served_by, start),
                        units=sum(stats.units))
    return analyze_stats(experiment.id, plan, arms, weights, stats, as_of, period=period,
                         periods=() if period is None else (period,))
