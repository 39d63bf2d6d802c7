"""``rampart analyze`` on bad logs and as a pipeline gate: one error line and exit
2 for every bad input, nothing recorded by a run that fails, skipped files
listed, and exit 3 when the decision matches ``--fail-on``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from serving.cli.main import main
from tests.unit.test_analysis_inputs import (
    PLAN,
    config_document,
    decisions_table,
    outcomes_table,
    with_value,
    write_logs,
)
from tests.unit.test_analysis_periods import _config as periods_config
from tests.unit.test_analysis_periods import write_alias_move

AS_OF = "2026-12-01T00:00:00Z"


def write_config(tmp: Path, plan: dict[str, Any] | None = None) -> Path:
    path = tmp / "rampart.yaml"
    path.write_text(yaml.safe_dump(config_document(tmp, plan)))
    return path


def analyze(tmp: Path, *extra: str, plan: dict[str, Any] | None = None) -> int:
    return main(["analyze", "--config", str(write_config(tmp, plan)), "--experiment", "exp",
                 "--as-of", AS_OF, *extra])


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("rampart: error: ") and "\n" not in err and "Traceback" not in err
    return err


def _text_value(table: pa.Table) -> pa.Table:
    text = pa.array([str(v) for v in table["value"].to_pylist()], pa.string())
    return table.set_column(2, "value", text)


def _int_timestamp(table: pa.Table) -> pa.Table:
    stamps = table["timestamp"].cast(pa.int64())
    schema = pa.schema([f.with_type(pa.int64()) if f.name == "timestamp" else f
                        for f in table.schema])
    return table.cast(schema).set_column(table.schema.get_field_index("timestamp"),
                                         "timestamp", stamps)


BAD_LOGS = {
    "nan value": lambda tmp: write_logs(
        tmp, outcomes=with_value(outcomes_table(), "value", 11, float("nan"))),
    "inf value": lambda tmp: write_logs(
        tmp, outcomes=with_value(outcomes_table(), "value", 11, float("inf"))),
    "text value": lambda tmp: write_logs(tmp, outcomes=_text_value(outcomes_table())),
    "int64 decision time": lambda tmp: write_logs(tmp, _int_timestamp(decisions_table())),
    "int64 outcome time": lambda tmp: write_logs(
        tmp, outcomes=_int_timestamp(outcomes_table())),
    "no decision time": lambda tmp: write_logs(
        tmp, decisions_table().drop_columns(["timestamp"])),
    "no role": lambda tmp: write_logs(tmp, decisions_table().drop_columns(["role"])),
    "no arm": lambda tmp: write_logs(tmp, decisions_table().drop_columns(["arm"])),
    "no outcome time": lambda tmp: write_logs(
        tmp, outcomes=outcomes_table().drop_columns(["timestamp"])),
    "null unit": lambda tmp: write_logs(tmp, with_value(decisions_table(), "unit_id", 3, None)),
}


@pytest.mark.parametrize("case", sorted(BAD_LOGS))
def test_a_bad_log_is_one_error_line_and_exit_2(tmp_path: Path, case: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    BAD_LOGS[case](tmp_path)
    assert analyze(tmp_path) == 2
    err = one_error_line(capsys)
    assert "part-0.parquet" in err
    # nothing was recorded by the failed run
    assert not list((tmp_path / "preregistrations").glob("*.json"))


@pytest.mark.parametrize("log", ["decisions", "outcomes"])
def test_a_corrupt_file_is_exit_2_and_skip_bad_files_lists_it(
        tmp_path: Path, log: str, capsys: pytest.CaptureFixture[str]) -> None:
    write_logs(tmp_path)
    (tmp_path / log / "part-5.parquet").write_bytes(b"PAR1 but not really" * 8)
    assert analyze(tmp_path) == 2
    assert "part-5.parquet" in one_error_line(capsys)

    assert analyze(tmp_path, "--skip-bad-files", "--json") == 0
    body = json.loads(capsys.readouterr().out)
    (skipped,) = body["skipped_files"]
    assert skipped["path"].endswith("part-5.parquet") and skipped["reason"]
    assert skipped["log"] == ("decision log" if log == "decisions" else "outcomes log")
    assert body["units"] == 400

    html = tmp_path / "report.html"
    assert analyze(tmp_path, "--skip-bad-files", "--html", str(html)) == 0
    text = capsys.readouterr().out
    assert "skipped" in text and "part-5.parquet" in text
    page = html.read_text()
    assert "id='skipped-files'" in page and "part-5.parquet" in page


def test_a_failed_run_records_no_plan_so_the_plan_can_still_be_fixed(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # no decision log yet: the run fails, after the experiment's start
    assert analyze(tmp_path) == 2
    assert "no decision log" in one_error_line(capsys)
    assert not (tmp_path / "preregistrations" / "exp.json").exists()
    # the plan is corrected and the logs arrive: the corrected plan is the first
    # one recorded, not a change after the start
    write_logs(tmp_path)
    fixed = {**PLAN, "alpha": 0.01}
    assert analyze(tmp_path, "--json", plan=fixed) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["preregistration"]["registered_after_start"] is True
    assert (tmp_path / "preregistrations" / "exp.json").exists()
    # from now on the recorded plan holds
    assert analyze(tmp_path, plan=PLAN) == 2
    assert "cannot change after the start" in one_error_line(capsys)


# control and treatment conversion rates giving each decision
RATES = {"rollback": (0.5, 0.1), "hold": (0.25, 0.25), "ship": (0.1, 0.5)}


@pytest.mark.parametrize(("decision", "fail_on", "code"), [
    ("rollback", None, 0), ("rollback", "rollback", 3), ("rollback", "hold", 3),
    ("hold", None, 0), ("hold", "rollback", 0), ("hold", "hold", 3),
    ("ship", "rollback", 0), ("ship", "hold", 0),
])
def test_fail_on_gates_the_exit_code_on_the_decision(
        tmp_path: Path, decision: str, fail_on: str | None, code: int,
        capsys: pytest.CaptureFixture[str]) -> None:
    control, treatment = RATES[decision]
    write_logs(tmp_path, outcomes=outcomes_table(control_rate=control, treatment_rate=treatment))
    extra = ("--fail-on", fail_on) if fail_on else ()
    assert analyze(tmp_path, "--json", *extra) == code
    assert json.loads(capsys.readouterr().out)["decision"]["outcome"] == decision


def test_fail_on_with_every_period_gates_on_the_latest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_alias_move(tmp_path)
    path = tmp_path / "rampart.yaml"
    path.write_text(yaml.safe_dump(periods_config(tmp_path).model_dump(mode="json")))
    base = ["analyze", "--config", str(path), "--experiment", "exp", "--as-of", AS_OF]
    # period 1 ships, period 2 (both arms on clf/2) holds
    assert main([*base, "--period", "all", "--fail-on", "hold"]) == 3
    assert main([*base, "--period", "1", "--fail-on", "hold"]) == 0
    assert main([*base, "--period", "all", "--fail-on", "rollback"]) == 0
    capsys.readouterr()


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["analyze", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--fail-on" in text and "--skip-bad-files" in text
    assert "exit codes: 0 analysed" in text and "3 the decision matched --fail-on" in text


def test_a_bad_fail_on_value_is_a_usage_error(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    write_logs(tmp_path)
    with pytest.raises(SystemExit) as exited:
        analyze(tmp_path, "--fail-on", "ship")
    assert exited.value.code == 2
    assert "--fail-on" in capsys.readouterr().err


def test_an_unreadable_store_is_still_one_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    write_logs(tmp_path)
    assert analyze(tmp_path, "--decisions", "nosuchscheme://bucket/log") == 2
    one_error_line(capsys)
    pq.read_table(tmp_path / "decisions" / "part-0.parquet")  # the real log is untouched
