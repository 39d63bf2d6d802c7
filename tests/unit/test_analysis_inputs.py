"""Reading the logs against their declared schemas: every bad input is refused
with the file, the row and the problem, nothing is dropped silently, and an
outcome counts at a time only once it had been received."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollout.experiments.analysis import MICROS, Exposures, OutcomeRows, outcome_periods
from rollout.experiments.data import (
    UNIT_KEY,
    AnalysisInputError,
    ExperimentData,
    _read_happened,
    load_experiment,
)
from serving.kernel.analysis_plan import AnalysisPlan
from serving.kernel.config import parse_config
from telemetry.decision_log import DECISION_SCHEMA, batch_table
from telemetry.outcomes_log import OUTCOME_SCHEMA
from telemetry.unit_keys import unit_key, with_unit_keys
from tests.unit.test_analysis import experiment_document

START = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
AS_OF = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
UNITS = 400
PLAN: dict[str, Any] = {
    "start": "2026-11-01T00:00:00Z",
    "primary": {"name": "converted", "type": "binary"},
    "secondary": [{"name": "revenue", "type": "mean"}],
    "alpha": 0.05, "mde": 0.1, "baseline": 0.1,
}
METRICS = ("converted", "revenue")


def config(tmp: Path, plan: dict[str, Any] | None = None) -> Any:
    return parse_config(config_document(tmp, plan))


def config_document(tmp: Path, plan: dict[str, Any] | None = None) -> dict[str, Any]:
    return experiment_document(tmp, plan or PLAN)


def _ts(seconds: np.ndarray) -> pa.Array:
    return pa.array((seconds * MICROS).astype(np.int64)).cast(pa.timestamp("us", tz="UTC"))


def first_seen(units: int = UNITS) -> np.ndarray:
    """Each unit's first decision, seconds since the epoch, spread over a day."""
    return START.timestamp() + 86_400 * 2 + np.arange(units) * 60.0


def decisions_table(units: int = UNITS) -> pa.Table:
    """Two primary decisions per unit; even units in control, odd in treatment."""
    ids = [f"user-{i}" for i in range(units)]
    treated = np.arange(units) % 2 == 1
    parts = []
    for k in range(2):
        parts.append(batch_table(units, {
            "request_id": [f"r{k}-{i}" for i in range(units)], "unit_id": ids,
            "unit_type": "user_id", "experiment_id": "exp",
            "arm": list(np.where(treated, "treatment", "control")), "model_name": "clf",
            "model_version": list(np.where(treated, "2", "1")), "role": "primary",
            "timestamp": first_seen(units) + k * 3600.0, "features": [{"f0": 1.0}] * units,
            "prediction": 0.5, "latency_ms": 1.0, "status": "ok",
        }))
    return pa.concat_tables(parts)


def outcomes_table(units: int = UNITS, control_rate: float = 0.25,
                   treatment_rate: float = 0.25) -> pa.Table:
    """A conversion for a fixed share of each arm's units, and revenue for every unit,
    an hour after its first decision and received at once."""
    index = np.arange(units)
    treated = index % 2 == 1
    # deterministic: the first `rate` share of each arm converts
    rank = index // 2
    per_arm = units // 2
    converts = np.where(treated, rank < treatment_rate * per_arm, rank < control_rate * per_arm)
    at = first_seen(units) + 3600.0
    chosen = np.flatnonzero(converts)
    ids = np.array([f"user-{i}" for i in range(units)], dtype=object)
    unit_ids = list(ids[chosen]) + list(ids)
    times = np.concatenate([at[chosen], at])
    values = np.concatenate([np.ones(chosen.size), 1.0 + (index % 7)])
    metric = ["converted"] * chosen.size + ["revenue"] * units
    return pa.table({
        "unit_id": pa.array(unit_ids, pa.string()), "metric": pa.array(metric, pa.string()),
        "value": pa.array(values), "timestamp": _ts(times),
        "experiment_id": pa.nulls(len(metric), pa.string()), "received_at": _ts(times + 1.0),
    }).cast(OUTCOME_SCHEMA)


def write_logs(tmp: Path, decisions: pa.Table | None = None,
               outcomes: pa.Table | None = None) -> None:
    (tmp / "decisions").mkdir(parents=True, exist_ok=True)
    (tmp / "outcomes").mkdir(parents=True, exist_ok=True)
    pq.write_table(decisions_table() if decisions is None else decisions,
                   tmp / "decisions" / "part-0.parquet")
    pq.write_table(outcomes_table() if outcomes is None else outcomes,
                   tmp / "outcomes" / "part-0.parquet")


def load(tmp: Path, *, skip_bad_files: bool = False, as_of: dt.datetime = AS_OF
         ) -> ExperimentData:
    experiment = config(tmp).experiments[0]
    options = {"skip_bad_files": True} if skip_bad_files else {}
    return load_experiment(tmp / "decisions", tmp / "outcomes", experiment, METRICS, as_of,
                           **options)


def refused(tmp: Path) -> str:
    with pytest.raises(AnalysisInputError) as caught:
        load(tmp)
    message = str(caught.value)
    assert "\n" not in message
    return message


def with_column(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, values)


def with_value(table: pa.Table, name: str, row: int, value: Any) -> pa.Table:
    values = table[name].to_pylist()
    values[row] = value
    return with_column(table, name, pa.array(values, table.schema.field(name).type))


# --------------------------------------------------------------------------- the good case


def test_a_well_formed_log_loads_every_unit_and_event(tmp_path: Path) -> None:
    write_logs(tmp_path)
    data = load(tmp_path)
    assert data.exposures.n_units == UNITS
    assert data.outcomes.unit.size == outcomes_table().num_rows
    assert data.skipped_files == ()
    assert data.outcomes.received is not None
    assert (data.outcomes.received - data.outcomes.at == MICROS).all()


def test_optional_columns_may_be_missing_from_an_older_file(tmp_path: Path) -> None:
    # an older decision file without the served version, and outcomes without the
    # experiment tag: the versions are "not logged", the events untagged
    decisions = decisions_table().drop_columns(["model_name", "model_version", "context"])
    write_logs(tmp_path, decisions, outcomes_table().drop_columns(["experiment_id"]))
    data = load(tmp_path)
    assert data.exposures.n_units == UNITS
    assert data.outcomes.unit.size == outcomes_table().num_rows


def test_bad_rows_of_other_experiments_and_roles_are_not_this_ones(tmp_path: Path) -> None:
    decisions = decisions_table()
    other = with_column(decisions.slice(0, 3), "experiment_id", pa.array(["other"] * 3))
    other = with_column(other, "unit_id", pa.nulls(3, pa.string()))
    write_logs(tmp_path, pa.concat_tables([decisions, other]))
    assert load(tmp_path).exposures.n_units == UNITS


# --------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_outcome_value_is_refused_with_file_and_row(tmp_path: Path,
                                                                 bad: float) -> None:
    write_logs(tmp_path, outcomes=with_value(outcomes_table(), "value", 37, bad))
    message = refused(tmp_path)
    assert "part-0.parquet" in message and "row 37" in message and "value" in message
    assert "finite" in message


def test_a_null_unit_id_of_the_experiment_is_refused_not_one_phantom_unit(
        tmp_path: Path) -> None:
    write_logs(tmp_path, with_value(decisions_table(), "unit_id", 5, None))
    message = refused(tmp_path)
    assert "decision" in message and "row 5" in message and "unit_id" in message


@pytest.mark.parametrize("column", ["arm", "role"])
def test_a_null_arm_or_role_of_the_experiment_is_refused(tmp_path: Path, column: str) -> None:
    decisions = decisions_table()
    decisions = decisions.cast(decisions.schema.set(
        decisions.schema.get_field_index(column),
        decisions.schema.field(column).with_nullable(True)))
    write_logs(tmp_path, with_value(decisions, column, 9, None))
    message = refused(tmp_path)
    assert "row 9" in message and column in message


@pytest.mark.parametrize(("log", "column"), [("decisions", "role"), ("outcomes", "metric"),
                                             ("outcomes", "experiment_id")])
def test_a_file_whose_filtered_column_is_all_null_is_read_not_dropped(
        tmp_path: Path, log: str, column: str) -> None:
    # A column the filters test for null, null in every row of a file: the rows
    # are refused (role, metric) or kept (an untagged event), never lost by the
    # scan (a dictionary-read column that is all null would be).
    write_logs(tmp_path)
    table = decisions_table() if log == "decisions" else outcomes_table()
    table = table.cast(pa.schema([f.with_nullable(True) for f in table.schema]))
    table = with_column(table, column, pa.nulls(table.num_rows, pa.string()))
    pq.write_table(table, tmp_path / log / "part-1.parquet")
    if column == "experiment_id":
        assert load(tmp_path).outcomes.unit.size == 2 * outcomes_table().num_rows
    else:
        message = refused(tmp_path)
        assert "part-1.parquet" in message and "row 0" in message and column in message


@pytest.mark.parametrize("column", ["unit_id", "metric", "timestamp", "received_at"])
def test_a_null_required_outcome_field_is_refused(tmp_path: Path, column: str) -> None:
    outcomes = outcomes_table()
    nullable = pa.schema([f.with_nullable(True) for f in outcomes.schema])
    write_logs(tmp_path, outcomes=with_value(outcomes.cast(nullable), column, 3, None))
    message = refused(tmp_path)
    assert "outcomes" in message and "row 3" in message and column in message


def test_the_row_is_named_in_the_right_file_and_row_group(tmp_path: Path) -> None:
    write_logs(tmp_path)
    bad = with_value(outcomes_table(), "value", 250, float("nan"))
    pq.write_table(bad, tmp_path / "outcomes" / "part-1.parquet", row_group_size=100)
    message = refused(tmp_path)
    assert "part-1.parquet" in message and "row 250" in message and "row group 2" in message


# ------------------------------------------------------- keyed logs, read unfiltered


def _keyed_outcomes_with_strays() -> tuple[pa.Table, int]:
    """Keyed outcome events with rows the filter drops, each holding a value that
    would be refused in a kept row: another experiment's event (NaN), a metric
    the plan does not read (inf), one received after the as-of time (NaN) and
    one stamped after it (-inf). Returned with the number of strays."""
    good = outcomes_table()
    late = (AS_OF.timestamp() + 3600.0) * np.ones(1)
    early = np.array([first_seen()[4] + 60.0])
    strays = pa.table({
        "unit_id": pa.array(["user-1", "user-2", "user-3", "user-4"]),
        "metric": pa.array(["revenue", "sessions", "revenue", "converted"]),
        "value": pa.array([float("nan"), float("inf"), float("nan"), float("-inf")]),
        "timestamp": pa.concat_arrays([_ts(early), _ts(early), _ts(early), _ts(late)]),
        "experiment_id": pa.array(["other", None, None, None], pa.string()),
        "received_at": pa.concat_arrays([_ts(early + 1), _ts(early + 1), _ts(late),
                                         _ts(late)]),
    }).cast(OUTCOME_SCHEMA)
    return with_unit_keys(pa.concat_tables([good, strays])), strays.num_rows


def _sorted_events(data: ExperimentData) -> list[tuple[Any, ...]]:
    units = data.units.to_pylist()
    rows = data.outcomes
    return sorted(zip([units[u] for u in rows.unit.tolist()], rows.metric.tolist(),
                      rows.value.tolist(), rows.at.tolist(),
                      (rows.received if rows.received is not None else rows.at).tolist(),
                      strict=True))


def test_keyed_outcomes_read_unfiltered_keep_exactly_the_rows_the_filter_keeps(
        tmp_path: Path) -> None:
    outcomes, strays = _keyed_outcomes_with_strays()
    # two row groups, the strays in the second: pruning by statistics and the
    # filter in numpy both see them
    (tmp_path / "outcomes").mkdir(parents=True)
    write_logs(tmp_path, with_unit_keys(decisions_table()))
    pq.write_table(outcomes, tmp_path / "outcomes" / "part-0.parquet",
                   row_group_size=outcomes.num_rows - strays)
    read = _read_happened(tmp_path / "outcomes", METRICS, "exp", AS_OF, False)
    assert read.keep is not None and read.log.table.num_rows == outcomes.num_rows
    filtered = _read_happened(tmp_path / "outcomes", METRICS, "exp", AS_OF, False,
                              defer_filter=False)
    assert filtered.keep is None
    columns = [UNIT_KEY, "value", "timestamp", "received_at"]
    order = [(name, "ascending") for name in columns]
    assert read.table.select(columns).sort_by(order).equals(
        filtered.log.table.select(columns).sort_by(order))
    keyed = load(tmp_path)
    assert keyed.units.type == pa.int64()  # read by key
    assert keyed.outcomes.unit.size == outcomes.num_rows - strays
    # the same events as the log without keys gives, read by id and filtered by Arrow
    plain = tmp_path / "plain"
    write_logs(plain, decisions_table(), outcomes.drop_columns([UNIT_KEY]))
    by_id = load(plain)
    key_of = {unit_key(u): u for u in by_id.units.to_pylist()}
    assert sorted((key_of[e[0]], *e[1:]) for e in _sorted_events(keyed)) == _sorted_events(
        by_id)


def test_a_non_finite_value_in_a_kept_keyed_event_is_refused_with_file_and_row(
        tmp_path: Path) -> None:
    outcomes, _ = _keyed_outcomes_with_strays()
    write_logs(tmp_path, with_unit_keys(decisions_table()),
               with_value(outcomes, "value", 37, float("nan")))
    message = refused(tmp_path)
    assert "part-0.parquet" in message and "row 37" in message and "finite" in message


def test_a_keyed_log_whose_footer_counts_a_null_is_filtered_by_arrow(tmp_path: Path) -> None:
    outcomes, _ = _keyed_outcomes_with_strays()
    nullable = pa.schema([f.with_nullable(True) for f in outcomes.schema])
    write_logs(tmp_path, with_unit_keys(decisions_table()),
               with_value(outcomes.cast(nullable), "timestamp", 3, None))
    with pytest.raises(AnalysisInputError, match=r"row 3 .*timestamp is null in an event"):
        _read_happened(tmp_path / "outcomes", METRICS, "exp", AS_OF, False)
    message = refused(tmp_path)
    assert "row 3" in message and "timestamp is null in an event" in message


# --------------------------------------------------------------------------- bad files


def test_a_non_numeric_value_column_is_refused(tmp_path: Path) -> None:
    outcomes = outcomes_table()
    text = pa.array([str(v) for v in outcomes["value"].to_pylist()], pa.string())
    write_logs(tmp_path, outcomes=outcomes.set_column(2, "value", text))
    message = refused(tmp_path)
    assert "part-0.parquet" in message and "value" in message and "string" in message


@pytest.mark.parametrize("log", ["decisions", "outcomes"])
def test_a_corrupt_file_is_refused(tmp_path: Path, log: str) -> None:
    write_logs(tmp_path)
    (tmp_path / log / "part-9.parquet").write_bytes(b"this is not parquet at all" * 10)
    message = refused(tmp_path)
    assert "part-9.parquet" in message and "Parquet" in message


@pytest.mark.parametrize(("log", "kind"), [("decisions", "int64"), ("decisions", "string"),
                                           ("outcomes", "int64"), ("outcomes", "string")])
def test_a_mistyped_timestamp_is_refused(tmp_path: Path, log: str, kind: str) -> None:
    table = decisions_table() if log == "decisions" else outcomes_table()
    stamps = table["timestamp"].cast(pa.int64())
    replaced = stamps if kind == "int64" else pa.array([str(v) for v in stamps.to_pylist()])
    table = with_column(table.cast(pa.schema([
        f.with_type(replaced.type) if f.name == "timestamp" else f for f in table.schema])),
        "timestamp", replaced)
    if log == "decisions":
        write_logs(tmp_path, decisions=table)
    else:
        write_logs(tmp_path, outcomes=table)
    message = refused(tmp_path)
    assert "timestamp" in message and kind in message and "part-0.parquet" in message


@pytest.mark.parametrize(("log", "column"), [("decisions", "timestamp"), ("decisions", "role"),
                                             ("decisions", "arm"), ("decisions", "unit_id"),
                                             ("outcomes", "timestamp"),
                                             ("outcomes", "received_at")])
def test_a_missing_required_column_is_refused(tmp_path: Path, log: str, column: str) -> None:
    if log == "decisions":
        write_logs(tmp_path, decisions=decisions_table().drop_columns([column]))
    else:
        write_logs(tmp_path, outcomes=outcomes_table().drop_columns([column]))
    message = refused(tmp_path)
    assert f"no column {column!r}" in message and "part-0.parquet" in message


def test_skip_bad_files_leaves_out_unreadable_files_and_lists_them(tmp_path: Path) -> None:
    write_logs(tmp_path)
    (tmp_path / "outcomes" / "part-8.parquet").write_bytes(b"garbage" * 20)
    pq.write_table(decisions_table().drop_columns(["timestamp"]),
                   tmp_path / "decisions" / "part-7.parquet")
    data = load(tmp_path, skip_bad_files=True)
    assert data.exposures.n_units == UNITS
    assert data.outcomes.unit.size == outcomes_table().num_rows
    skipped = {(s.log, Path(s.path).name): s.reason for s in data.skipped_files}
    assert set(skipped) == {("decision log", "part-7.parquet"),
                            ("outcomes log", "part-8.parquet")}
    assert "timestamp" in skipped[("decision log", "part-7.parquet")]


def test_a_file_with_a_sound_footer_and_corrupt_pages_is_found_by_the_scan(
        tmp_path: Path) -> None:
    write_logs(tmp_path)
    path = tmp_path / "outcomes" / "part-1.parquet"
    pq.write_table(outcomes_table(), path)
    damaged = bytearray(path.read_bytes())
    for i in range(200, 1200):  # data pages; the footer at the end stays readable
        damaged[i] ^= 0x5A
    path.write_bytes(bytes(damaged))
    message = refused(tmp_path)
    assert "part-1.parquet" in message and "cannot be decoded" in message
    assert message.isprintable()
    data = load(tmp_path, skip_bad_files=True)
    assert [Path(s.path).name for s in data.skipped_files] == ["part-1.parquet"]
    assert data.outcomes.unit.size == outcomes_table().num_rows


def test_skip_bad_files_does_not_skip_bad_rows_of_a_readable_file(tmp_path: Path) -> None:
    write_logs(tmp_path, outcomes=with_value(outcomes_table(), "value", 4, float("nan")))
    with pytest.raises(AnalysisInputError, match="row 4"):
        load(tmp_path, skip_bad_files=True)


def test_skip_bad_files_still_needs_one_readable_file(tmp_path: Path) -> None:
    write_logs(tmp_path)
    (tmp_path / "decisions" / "part-0.parquet").write_bytes(b"garbage" * 20)
    with pytest.raises(AnalysisInputError, match="decision log"):
        load(tmp_path, skip_bad_files=True)


# --------------------------------------------------------------------------- as of


def test_a_late_event_is_not_known_before_it_was_received(tmp_path: Path) -> None:
    """An event that happened before ``as_of`` but arrived after it was not there
    to be seen at ``as_of``: a reconstructed look must not count it."""
    outcomes = outcomes_table()
    as_of = dt.datetime.fromtimestamp(float(first_seen()[-1]) + 7200, tz=dt.UTC)
    late = as_of + dt.timedelta(days=3)
    received = outcomes["received_at"].to_pylist()
    received[0] = late
    write_logs(tmp_path, outcomes=with_column(
        outcomes, "received_at", pa.array(received, OUTCOME_SCHEMA.field("received_at").type)))
    assert outcomes["timestamp"][0].as_py() < as_of
    assert load(tmp_path, as_of=as_of).outcomes.unit.size == outcomes.num_rows - 1
    assert load(tmp_path, as_of=late).outcomes.unit.size == outcomes.num_rows


def test_outcome_periods_count_an_event_only_once_received() -> None:
    plan = AnalysisPlan.model_validate({**PLAN, "outcome_window_s": 3600})
    exposures = Exposures(("control", "treatment"), (5000.0, 5000.0),
                          np.array([0, 1]), np.array([100, 100]) * MICROS)
    at = np.array([200, 200, 50]) * MICROS
    received = np.array([300, 900, 60]) * MICROS
    outcomes = OutcomeRows(("converted",), np.array([0, 1, 0]), np.zeros(3, dtype=np.int64),
                           np.ones(3), at, received)
    early = outcome_periods(plan, exposures, outcomes, 500 * MICROS)
    assert early.in_window.tolist() == [True, False, False]
    assert early.in_pre.tolist() == [False, False, True]
    assert outcome_periods(plan, exposures, outcomes, 1000 * MICROS).in_window.tolist() == [
        True, True, False]
    # the event's own time still decides its window: known, but before exposure
    assert not outcome_periods(plan, exposures, outcomes, 55 * MICROS).in_pre.any()


def test_declared_schemas_name_the_required_columns() -> None:
    # the required columns the reader checks are columns of the declared schemas
    from rollout.experiments.data import DECISION_REQUIRED, OUTCOME_REQUIRED

    assert set(DECISION_REQUIRED) <= set(DECISION_SCHEMA.names)
    assert set(OUTCOME_REQUIRED) <= set(OUTCOME_SCHEMA.names)
