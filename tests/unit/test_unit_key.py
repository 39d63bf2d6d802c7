"""The unit key: one definition, written in both logs, and analyses that read it
give exactly the figures of analyses that read the unit-id strings."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rollout.experiments.data import load_experiment, plan_metrics
from serving.cli.analyze import run_analysis
from telemetry.decision_log import DECISION_SCHEMA, DecisionRecord, conform, records_to_table
from telemetry.outcomes_log import OUTCOME_LOG_SCHEMA, validate_outcomes
from telemetry.outcomes_log import conform as conform_outcomes
from telemetry.unit_keys import unit_key, unit_key_array, with_unit_keys
from tests.unit.test_analysis import ANALYSIS, AS_OF, _config, write_experiment

IDS = ["user-1", "u", "é-日本-🙂", "x" * 256, "user-2"]


def test_the_key_is_fixed_by_its_definition() -> None:
    # Part of the log format: these values must never change.
    assert unit_key("user-1") == -8583321985082544998
    assert unit_key("u") == 635684713685137414
    for unit in IDS:
        digest = hashlib.blake2b(unit.encode("utf-8"), digest_size=8).digest()
        assert unit_key(unit) == int.from_bytes(digest, "little", signed=True)
        assert -(1 << 63) <= unit_key(unit) < (1 << 63)
    assert len({unit_key(u) for u in IDS}) == len(IDS)


def test_the_column_version_equals_the_scalar_definition() -> None:
    keys = unit_key_array(pa.array([*IDS, None])).to_pylist()
    assert keys == [unit_key(u) for u in IDS] + [None]
    assert unit_key_array([]).to_pylist() == []


def _record(i: int, unit: str | None) -> DecisionRecord:
    return DecisionRecord(f"r{i}", unit, "user_id", "exp", "exp", "control", "clf", "1",
                          "primary", 1_800_000_000.0 + i, {"f": 1.0}, 0.5, 1.0, "ok", None)


def test_decision_rows_are_keyed_where_the_writer_builds_them() -> None:
    table = records_to_table([_record(0, "user-1"), _record(1, None), _record(2, "u")])
    assert table.schema == DECISION_SCHEMA
    assert table["unit_key"].to_pylist() == [unit_key("user-1"), None, unit_key("u")]
    # a journal an older writer left behind, without the column, is keyed on replay
    old = table.drop_columns(["unit_key"])
    assert conform(old)["unit_key"].to_pylist() == table["unit_key"].to_pylist()


def test_outcome_rows_are_keyed_on_import_and_on_replay() -> None:
    table = validate_outcomes(pa.table({"unit_id": IDS, "metric": ["m"] * len(IDS),
                                        "value": [1.0] * len(IDS)}), 1_800_000_000_000_000)
    assert table.schema == OUTCOME_LOG_SCHEMA
    assert table["unit_key"].to_pylist() == [unit_key(u) for u in IDS]
    assert conform_outcomes(table.drop_columns(["unit_key"])).equals(table)


def _copy_logs(source: Path, target: Path, decisions_keyed: bool, outcomes_keyed: bool) -> None:
    """The same logs, with or without the key column in every file."""
    for log, keyed in (("decisions", decisions_keyed), ("outcomes", outcomes_keyed)):
        for path in (source / log).rglob("*.parquet"):
            table = pq.ParquetFile(path).read()
            table = with_unit_keys(table) if keyed else table.drop_columns(
                [c for c in table.column_names if c == "unit_key"])
            out = target / path.relative_to(source)
            out.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, out)


PLANS = {"segments": ANALYSIS, "no_segments": {**ANALYSIS, "segments": []}}


@pytest.mark.parametrize("plan", sorted(PLANS))
def test_the_same_log_with_and_without_keys_gives_identical_analyses(
        tmp_path: Path, plan: str) -> None:
    write_experiment(tmp_path / "written", units=3_000)
    reports: dict[tuple[bool, bool], Any] = {}
    for keys in ((True, True), (False, False), (True, False), (False, True)):
        where = tmp_path / f"{keys[0]}-{keys[1]}"
        _copy_logs(tmp_path / "written", where, *keys)
        config = _config(where, PLANS[plan])
        reports[keys] = run_analysis(config, "exp", as_of=AS_OF, now=AS_OF).to_json()
    by_strings = reports[(False, False)]
    for keys, report in reports.items():
        for entry in ("metrics", "srm", "decision", "units", "crossovers", "segments"):
            _same(report.get(entry), by_strings.get(entry), f"{keys} {entry}")
    assert by_strings["units"] == 3_000


def _same(a: Any, b: Any, where: str) -> None:
    """Equal, floats to the last bits: per-arm sums run over the units in the
    order each path found them (a hash order), so a sum may differ in its last
    bit; every count, label and decision is equal exactly."""
    if isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            _same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, list) and isinstance(b, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-15), where
    else:
        assert a == b, where


def test_keyed_logs_are_read_by_key_and_give_the_string_paths_exposures(
        tmp_path: Path) -> None:
    write_experiment(tmp_path / "written", units=2_000)
    loaded = {}
    for keyed in (True, False):
        where = tmp_path / str(keyed)
        _copy_logs(tmp_path / "written", where, keyed, keyed)
        config = _config(where)
        experiment = config.experiments[0]
        assert experiment.analysis is not None
        loaded[keyed] = load_experiment(where / "decisions", where / "outcomes", experiment,
                                        plan_metrics(experiment.analysis), AS_OF)
    by_key, by_id = loaded[True], loaded[False]
    assert by_key.units.type == pa.int64() and by_id.units.type == pa.string()
    # unit for unit, the same exposure and the same outcome rows
    position = {unit_key(u): i for i, u in enumerate(by_id.units.to_pylist())}
    order = np.array([position[k] for k in by_key.units.to_pylist()])
    assert np.array_equal(by_key.exposures.arm, by_id.exposures.arm[order])
    assert np.array_equal(by_key.exposures.exposed_at, by_id.exposures.exposed_at[order])
    assert by_key.exposures.crossovers == by_id.exposures.crossovers

    def events(data: Any, as_key: bool) -> list[tuple[Any, ...]]:
        units = data.units.to_pylist()
        names = [u if as_key else unit_key(u) for u in units]
        rows = data.outcomes
        return sorted(zip([names[u] for u in rows.unit], rows.metric.tolist(),
                          rows.value.tolist(), rows.at.tolist(), strict=True))
    assert events(by_key, True) == events(by_id, False)


def test_a_log_with_some_unkeyed_files_is_read_by_id(tmp_path: Path) -> None:
    write_experiment(tmp_path / "written", units=1_000)
    where = tmp_path / "mixed"
    _copy_logs(tmp_path / "written", where, True, True)
    # one more decision file from before the key existed
    old = next((where / "decisions").rglob("*.parquet"))
    shutil.copy(old, old.with_name("part-old.parquet"))
    table = pq.ParquetFile(old).read().drop_columns(["unit_key"])
    pq.write_table(table, old.with_name("part-old.parquet"))
    experiment = _config(where).experiments[0]
    assert experiment.analysis is not None
    data = load_experiment(where / "decisions", where / "outcomes", experiment,
                           plan_metrics(experiment.analysis), AS_OF)
    assert data.units.type == pa.string() and len(data.units) == 1_000
